"""Weight-stationary systolic MatMul array: ``R x C`` processing elements, int32 results.

Dataflow (weight stationary)
----------------------------
A *tile* is a stationary int8 operand ``W[R, C]`` (``R`` along the reduction axis, one
column per output) and ``m`` streaming rows ``a[0..R-1]``; for each streaming row the array
emits ``out[c] = sum_r a[r] * W[r, c]``, exact, as ``C`` int32 values.  PE ``(r, c)``
(:class:`hw.processing_element.ProcessingElement`) holds ``W[r, c]``.  Streaming operands
enter at the left of each PE row and move one PE right per cycle; partial sums enter at the
top of each column as 0 and move one PE down per cycle, each PE adding its term.  Row ``r``
of the streaming input is delayed ``r`` cycles on the way in (input skew) and column ``c`` of
the results ``C - 1 - c`` cycles on the way out (output de-skew), so every streaming row
meets ``W[r, c]`` on the diagonal wavefront ``r + c`` and its ``C`` results leave together.

The streaming operand is read per tile in one of two :class:`StreamMode` forms (golden
model in brackets):

* ``INT8``: signed int8, e.g. linear layers and ``q @ k^T`` (:func:`sw.intops.linear`,
  :func:`sw.intops.int_matmul`);
* ``UINT8``: unsigned 0..255, the 8-bit uniform softmax probabilities times ``V``
  (:func:`sw.intops.attn_value_uniform`).

The Log-Int-Softmax attention's shifts and adds run on a unit of their own
(:mod:`hw.lis_attention`), beside the array: each PE is one 9 x 8-bit multiplier and an
adder.  Partial sums are ``17 + ceil(log2 R)`` bits, exact for both modes, and
sign-extended to 32 bits at the output.  K-chunks longer than ``R`` are added by the tile
engine's accumulation buffer, not here.

Double-buffered stationary operand
----------------------------------
Each PE has a shadow register for the next tile's element.  The next tile's ``R`` weight
beats may start in the cycle the current tile's first streaming row is accepted; they reach
column ``c`` ``c`` cycles late (a weight skew matching the streaming skew), so each shadow
register is overwritten only after the current tile's first row has copied it into the
stationary register.  The next tile's first row carries a swap flag along the same wavefront.
Tiles therefore follow each other with no bubble and no drain: one streaming row per cycle
whenever every tile has ``m >= R`` rows.

Stalls
------
A result beat held by the consumer (``results.valid & ~results.ready``) stops the whole
array for that cycle: every register has one global clock enable, ``~results.valid |
results.ready``, and neither input stream is accepted while it is low.  Nothing is lost or
duplicated; input gaps (``valid`` low) travel through the array as bubbles.
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.hdl import EnableInserter
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import AcceleratorConfig
from hw.processing_element import STREAM_OPERAND, PackedPair, ProcessingElement, psum_bits
from hw.timing import UnitTiming

__all__ = ["SystolicArray", "StreamMode", "matmul_timing"]

#: Bits of one int32 result lane.
RESULT_BITS = 32


class StreamMode(enum.IntEnum, shape=1):
    """How a tile's streaming operand bytes are read (the ISA's ``MATMUL.mode``)."""
    INT8 = 0
    UINT8 = 1


def _check_config(config) -> AcceleratorConfig:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, got {config!r}")
    return config


def matmul_timing(config: AcceleratorConfig, m: int) -> UnitTiming:
    """Timing of one tile of ``m`` streaming rows on :class:`SystolicArray`.

    With ``R = config.array_rows`` and ``C = config.array_cols``::

        latency  = R + m + R + C + 1 = m + 2 R + C + 1
        interval = max(m, R)

    ``latency`` counts, both ends included, the cycles from the tile's first weight beat
    accepted to its last result beat valid, results never stalled and inputs never starved:
    ``R`` weight beats, then ``m`` streaming rows, each leaving ``R + C + 1`` cycles after it
    is accepted (the processing elements' registered products add the 1; the streaming part
    alone, first row in to last result out, is ``m + R + C + 1``).
    ``interval``: a tile's weight beats start in the cycle the previous tile's first row is
    accepted, so tile starts are ``max(m, R)`` apart and ``J`` tiles back to back take
    ``latency + (J - 1) * interval`` cycles.
    """
    config = _check_config(config)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m (streaming rows of a tile) must be a positive integer, got {m!r}")
    rows, cols = config.array_rows, config.array_cols
    return UnitTiming(latency=m + 2 * rows + cols + 1, interval=max(m, rows))


class SystolicArray(wiring.Component):
    """Weight-stationary ``R x C`` systolic array for int8 x {int8, uint8} tiles.

    Parameters
    ----------
    config : AcceleratorConfig
        Uses ``array_rows`` (``R``, the reduction length of a tile) and ``array_cols``
        (``C``, output columns).

    Members
    -------
    weights : ``In(stream.Signature(StructLayout({"data": unsigned(8 C), "mode": StreamMode})))``
        Stationary operand, ``R`` beats per tile: beat ``r`` carries row ``W[r, :]``, lane
        ``c`` (bits ``8c .. 8c+7``, two's complement) being ``W[r, c]``.  ``mode`` is the
        tile's streaming-operand form, taken from the tile's last weight beat.  ``ready``
        depends on ``activations.valid``: the next tile's first weight beat is accepted in
        the same cycle as the current tile's first row.
    activations : ``In(stream.Signature(StructLayout({"data": unsigned(8 R), "last": 1})))``
        Streaming rows, lane ``r`` (bits ``8r .. 8r+7``) being ``a[r]``, read per the tile's
        mode; ``last`` marks the tile's final row.  A tile's first row is accepted only once
        all ``R`` of its weight beats are.
    results : ``Out(stream.Signature(StructLayout({"data": unsigned(32 C), "last": 1})))``
        One beat per streaming row, in order: lane ``c`` (bits ``32c .. 32c+31``, two's
        complement) is ``out[c]``; ``last`` copies the row's ``last``.

    Notes
    -----
    LATENCY: a streaming row accepted in cycle ``t`` gives its result beat in cycle
    ``t + R + C + 1`` (results not stalled); a tile's first weight beat to its last result
    beat is ``m + 2 R + C + 1`` cycles, both ends counted.  THROUGHPUT: one streaming row per cycle;
    tiles start every ``max(m, R)`` cycles (the next tile's ``R`` weight beats hide behind
    the current tile's rows).  Both are :func:`matmul_timing`.  Any ``R, C >= 2`` build.
    With ``config.dsp_pack == 2`` each pair of DSP columns ``(2k, 2k + 1)`` is a
    :class:`hw.processing_element.PackedPair` (one multiplier per pair and PE row); results,
    latency and throughput are unchanged, cycle for cycle.
    """

    def __init__(self, config: AcceleratorConfig):
        self._config = _check_config(config)
        rows, cols = config.array_rows, config.array_cols
        super().__init__({
            "weights": In(stream.Signature(data.StructLayout({
                "data": unsigned(8 * cols), "mode": StreamMode}))),
            "activations": In(stream.Signature(data.StructLayout({
                "data": unsigned(8 * rows), "last": 1}))),
            "results": Out(stream.Signature(data.StructLayout({
                "data": unsigned(RESULT_BITS * cols), "last": 1}))),
        })

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def rows(self) -> int:
        """``R``: reduction length of a tile (weight beats per tile, lanes per streaming row)."""
        return self._config.array_rows

    @property
    def cols(self) -> int:
        """``C``: output columns (lanes per weight beat and per result beat)."""
        return self._config.array_cols

    def elaborate(self, platform):
        top = Module()
        m = Module()        # everything in here runs under the global clock enable
        rows, cols = self.rows, self.cols
        width = psum_bits(rows)

        advance = Signal()
        top.d.comb += advance.eq(~self.results.valid | self.results.ready)

        # ------------------------------------------------------------------ tile control
        shadow_full = Signal()          # all R weight beats of the next tile are in
        shadow_mode = Signal(StreamMode)
        active_mode = Signal(StreamMode)
        weight_row = Signal(range(rows))
        in_tile = Signal()              # a tile's first row is accepted, its last is not

        accept_act = Signal()
        first_row = Signal()            # the accepted row starts a tile: swap
        accept_weight = Signal()
        m.d.comb += [
            self.activations.ready.eq(advance & (in_tile | shadow_full)),
            accept_act.eq(self.activations.valid & self.activations.ready),
            first_row.eq(accept_act & ~in_tile),
            self.weights.ready.eq(advance & (~shadow_full | first_row)),
            accept_weight.eq(self.weights.valid & self.weights.ready),
        ]
        with m.If(accept_act):
            m.d.sync += in_tile.eq(~self.activations.payload.last)
        with m.If(first_row):
            m.d.sync += [
                active_mode.eq(shadow_mode),
                shadow_full.eq(0),
            ]
        with m.If(accept_weight):
            m.d.sync += [
                shadow_mode.eq(self.weights.payload.mode),
                weight_row.eq(Mux(weight_row == rows - 1, 0, weight_row + 1)),
            ]
            with m.If(weight_row == rows - 1):
                m.d.sync += shadow_full.eq(1)

        # ------------------------------------------------------------------ input skews
        # Streaming rows: one register stage converting bytes to PE operands, then row r
        # delayed r more cycles.  A row accepted in cycle t meets PE (r, c) in t + 1 + r + c.
        # The operand values, like every data register of the array, are reset-less: only
        # the flags (swap, weight writes, valid) take the reset (docs/HARDWARE.md, "Resets").
        # Each row also gives its first PE the swap flag of the next cycle (``swap_next``:
        # the input of the row's last swap register), from which the PEs copy their shadow
        # elements a cycle ahead (hw.processing_element).
        tile_mode = Mux(first_row, shadow_mode, active_mode)
        operands = []
        for r in range(rows):
            byte = self.activations.payload.data[8 * r:8 * r + 8]
            value = Signal(signed(9), name=f"operand_{r}_value", reset_less=True)
            swap = Signal(name=f"operand_{r}_swap")
            swap_next = first_row
            m.d.sync += [
                value.eq(Mux(tile_mode == StreamMode.INT8, byte.as_signed(), byte)),
                swap.eq(first_row),
            ]
            for stage in range(r):
                d_value = Signal(signed(9), name=f"operand_{r}_value_skew_{stage}", reset_less=True)
                d_swap = Signal(name=f"operand_{r}_swap_skew_{stage}")
                m.d.sync += [d_value.eq(value), d_swap.eq(swap)]
                value, swap, swap_next = d_value, d_swap, swap
            operand = Signal(STREAM_OPERAND, name=f"operand_{r}")
            m.d.comb += [operand.value.eq(value), operand.swap.eq(swap)]
            operands.append((operand, swap_next))

        # Weight rows: one register stage, then column c delayed c more cycles, so a beat
        # accepted in cycle t writes the shadow registers of column c at the end of t + 1 + c.
        # (No earlier than the current tile's swap there, which is at t0 + 1 + r + c with
        # t0 <= t - r for the beat of row r.)
        # With dsp_pack = 2 the second column of a packed pair gets one skew stage fewer:
        # its weight runs one cycle early inside the PackedPair.
        dsp_cols = cols - self._config.lut_mult_cols
        packed = self._config.dsp_pack == 2
        weight_writes = []
        for c in range(cols):
            write = Signal(name=f"weight_write_{c}")
            row = Signal(range(rows), name=f"weight_row_{c}", reset_less=True)
            value = Signal(signed(8), name=f"weight_{c}", reset_less=True)
            m.d.sync += [
                write.eq(accept_weight),
                row.eq(weight_row),
                value.eq(self.weights.payload.data[8 * c:8 * c + 8]),
            ]
            for stage in range(c - 1 if packed and c < dsp_cols and c % 2 else c):
                d_write = Signal(name=f"weight_write_{c}_skew_{stage}")
                d_row = Signal(range(rows), name=f"weight_row_{c}_skew_{stage}", reset_less=True)
                d_value = Signal(signed(8), name=f"weight_{c}_skew_{stage}", reset_less=True)
                m.d.sync += [d_write.eq(write), d_row.eq(row), d_value.eq(value)]
                write, row, value = d_write, d_row, d_value
            weight_writes.append((write, row, value))

        # ------------------------------------------------------------------ PE grid
        psums = [0] * cols
        for r in range(rows):
            act, swap_next = operands[r]
            for c in range(cols):
                if packed and c < dsp_cols:
                    if c % 2:
                        continue
                    pair = PackedPair(width)
                    m.submodules[f"pe_{r}_{c}_{c + 1}"] = pair
                    write, row, value = weight_writes[c]
                    m.d.comb += [
                        pair.act_in.eq(act),
                        pair.swap_next.eq(swap_next),
                        pair.psum_in_0.eq(psums[c]),
                        pair.psum_in_1.eq(psums[c + 1]),
                        pair.weight_write.eq(write & (row == r)),
                        pair.weight_0.eq(value),
                        pair.weight_1.eq(weight_writes[c + 1][2]),
                    ]
                    act, swap_next = pair.act_out, pair.swap_ahead
                    psums[c], psums[c + 1] = pair.psum_out_0, pair.psum_out_1
                    continue
                pe = ProcessingElement(width, lut_multiplier=c >= dsp_cols)
                m.submodules[f"pe_{r}_{c}"] = pe
                write, row, value = weight_writes[c]
                m.d.comb += [
                    pe.act_in.eq(act),
                    pe.swap_next.eq(swap_next),
                    pe.psum_in.eq(psums[c]),
                    pe.weight_write.eq(write & (row == r)),
                    pe.weight.eq(value),
                ]
                act, swap_next = pe.act_out, pe.swap_ahead
                psums[c] = pe.psum_out

        # ------------------------------------------------------------------ output de-skew
        # Column c's sum leaves the last PE row in t + R + 2 + c (the PEs' registered products
        # add one cycle); delay it C - 1 - c cycles.
        for c in range(cols):
            column = psums[c]
            for stage in range(cols - 1 - c):
                delayed = Signal(signed(width), name=f"result_{c}_deskew_{stage}",
                                 reset_less=True)
                m.d.sync += delayed.eq(column)
                column = delayed
            m.d.comb += self.results.payload.data[RESULT_BITS * c:RESULT_BITS * (c + 1)].eq(column)

        # valid and last of each accepted row, delayed R + C + 1 cycles.
        valid, last = accept_act, self.activations.payload.last
        for stage in range(rows + cols + 1):
            d_valid = Signal(name=f"valid_delay_{stage}")
            d_last = Signal(name=f"last_delay_{stage}", reset_less=True)
            m.d.sync += [d_valid.eq(valid), d_last.eq(last)]
            valid, last = d_valid, d_last
        m.d.comb += [
            self.results.valid.eq(valid),
            self.results.payload.last.eq(last),
        ]

        top.submodules.array = EnableInserter(advance)(m)
        return top
