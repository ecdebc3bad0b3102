"""Log-Int-Softmax attention x v: 4-bit codes times an int8 tile of v, shifts and adds only.

A *tile* is a stationary int8 operand ``v[N, N]`` (``N = config.lanes``; row ``r`` along the
reduction axis, one column per output) and ``m`` streaming rows of ``N`` Log-Int-Softmax
codes.  For each streaming row the unit emits, for every column ``c``::

    out[c] = sum_r  v[r, c] << (15 - code_r)      (a term is 0 when code_r = 15)

exact, as ``N`` int32 values: :func:`sw.intops.attn_value_lis` of one tile, bit for bit.
There is no multiplier: each of the ``N x N`` terms is a 16-position barrel shifter on an
int8 (``v << 15`` needs 23 bits) with a zero for code 15, and each column sums its ``N``
terms in a pipelined binary adder tree.  The shift amount ``15 - code`` is the code's bitwise
complement, decoded once per streaming row and shared by the ``N`` columns.

Pipeline
--------
* cycle ``t``: a streaming row is accepted; its codes (low nibbles) are registered, and on a
  tile's first row the stationary registers take the shadow registers (the double buffer);
* cycle ``t + 1``: the ``N x N`` shifters and the first level of the adder trees
  (``N / 2`` pair sums per column), registered;
* cycles ``t + 2 .. t + log2 N``: one adder level each, registered;

so the row's results are valid in cycle ``t + 1 + log2 N`` (:data:`ROW_LATENCY` of ``N``).
Partial sums grow from 23 bits by one bit per level (``23 + log2 N`` at the root, at most
29 bits for ``N = 64``) and are sign-extended to 32 bits.

Double-buffered stationary operand
----------------------------------
The next tile's ``N`` weight beats write shadow registers; they may start in the cycle the
current tile's first streaming row is accepted (that cycle's copy into the stationary
registers reads the shadow values from before the write).  A tile's first row is accepted
once all ``N`` of its weight beats are in.  Tiles therefore follow each other without a
bubble: one streaming row per cycle whenever every tile has ``m >= N`` rows, exactly like
:class:`hw.systolic_array.SystolicArray`, whose stream interface this unit shares (without
the mode field: codes are the only streaming form).

Stalls
------
A result beat held by the consumer stops the whole unit for that cycle (one global clock
enable, ``~results.valid | results.ready``); neither input is accepted while it is low.
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.hdl import EnableInserter
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import AcceleratorConfig
from hw.timing import UnitTiming
from sw.intops import LIS_CODE_BITS, LIS_SHIFT_BASE, LIS_ZERO_CODE

__all__ = ["LisAttention", "lis_attention_timing", "row_latency", "TERM_BITS", "RESULT_BITS"]

#: Bits of one result lane.
RESULT_BITS = 32
#: Width of one term ``v << (15 - code)`` of an int8 ``v``: ``8 + LIS_SHIFT_BASE`` bits signed.
TERM_BITS = 8 + LIS_SHIFT_BASE
# The shift ``LIS_SHIFT_BASE - code`` is the code's bitwise complement.
assert LIS_SHIFT_BASE == (1 << LIS_CODE_BITS) - 1 == LIS_ZERO_CODE


def _check_config(config) -> AcceleratorConfig:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, got {config!r}")
    return config


def row_latency(config: AcceleratorConfig) -> int:
    """Cycles from a streaming row accepted to its result beat valid: ``1 + log2 N`` (the
    code register, then one registered adder level each, the shifters sharing the first)."""
    return 1 + (_check_config(config).lanes - 1).bit_length()


def lis_attention_timing(config: AcceleratorConfig, m: int) -> UnitTiming:
    """Timing of one tile of ``m`` streaming rows on :class:`LisAttention`.

    With ``N = config.lanes``::

        latency  = N + m + 1 + log2 N
        interval = max(m, N)

    ``latency`` counts, both ends included, the cycles from the tile's first weight beat
    accepted to its last result beat valid, results never stalled and inputs never starved:
    ``N`` weight beats, then ``m`` streaming rows, each leaving ``1 + log2 N`` cycles after it
    is accepted (:func:`row_latency`).  ``interval``: the next tile's weight beats start in
    the cycle the current tile's first row is accepted, so tile starts are ``max(m, N)``
    apart and ``J`` tiles back to back take ``latency + (J - 1) * interval`` cycles.
    """
    config = _check_config(config)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m (streaming rows of a tile) must be a positive integer, got {m!r}")
    n = config.lanes
    return UnitTiming(latency=n + m + row_latency(config), interval=max(m, n))


class LisAttention(wiring.Component):
    """Log-Int-Softmax attention x v on one ``N x N`` tile of v: barrel shifters and
    pipelined adder trees, no multiplier.

    Parameters
    ----------
    config : AcceleratorConfig
        Uses ``lanes`` (``N``: rows and columns of a tile, codes per streaming row).

    Members
    -------
    weights : ``In(stream.Signature(StructLayout({"data": unsigned(8 N)})))``
        Stationary operand v, ``N`` beats per tile: beat ``r`` carries row ``v[r, :]``, lane
        ``c`` (bits ``8c .. 8c+7``, two's complement) being ``v[r, c]``.  ``ready`` depends
        on ``activations.valid``: the next tile's first weight beat is accepted in the same
        cycle as the current tile's first row.
    activations : ``In(stream.Signature(StructLayout({"data": unsigned(8 N), "last": 1})))``
        Streaming rows of codes, one per byte: lane ``r`` (bits ``8r .. 8r+3``, the low
        nibble; the high nibble is ignored) is ``code_r``, 15 meaning zero attention;
        ``last`` marks the tile's final row.  A tile's first row is accepted only once all
        ``N`` of its weight beats are.
    results : ``Out(stream.Signature(StructLayout({"data": unsigned(32 N), "last": 1})))``
        One beat per streaming row, in order: lane ``c`` (bits ``32c .. 32c+31``, two's
        complement) is ``sum_r v[r, c] << (15 - code_r)``; ``last`` copies the row's ``last``.

    Notes
    -----
    LATENCY: a streaming row accepted in cycle ``t`` gives its result beat in cycle
    ``t + 1 + log2 N`` (results not stalled); a tile's first weight beat to its last result
    beat is ``N + m + 1 + log2 N`` cycles, both ends counted.  THROUGHPUT: one streaming row
    per cycle; tiles start every ``max(m, N)`` cycles (the next tile's ``N`` weight beats
    hide behind the current tile's rows).  Both are :func:`lis_attention_timing`.
    """

    def __init__(self, config: AcceleratorConfig):
        self._config = _check_config(config)
        n = config.lanes
        super().__init__({
            "weights": In(stream.Signature(data.StructLayout({"data": unsigned(8 * n)}))),
            "activations": In(stream.Signature(data.StructLayout({
                "data": unsigned(8 * n), "last": 1}))),
            "results": Out(stream.Signature(data.StructLayout({
                "data": unsigned(RESULT_BITS * n), "last": 1}))),
        })

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def lanes(self) -> int:
        """``N``: tile rows and columns."""
        return self._config.lanes

    def elaborate(self, platform):
        top = Module()
        m = Module()        # everything in here runs under the global clock enable
        n = self.lanes

        advance = Signal()
        top.d.comb += advance.eq(~self.results.valid | self.results.ready)

        # ------------------------------------------------------------------ tile control
        shadow_full = Signal()          # all N weight beats of the next tile are in
        weight_row = Signal(range(n))
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
            m.d.sync += shadow_full.eq(0)
        with m.If(accept_weight):
            m.d.sync += weight_row.eq(Mux(weight_row == n - 1, 0, weight_row + 1))
            with m.If(weight_row == n - 1):
                m.d.sync += shadow_full.eq(1)

        # ------------------------------------------------------------------ stationary v
        # shadow[r][c] takes weight beat r; stationary[r][c] takes the shadow on a tile's
        # first row (reading it before any same-cycle weight write).
        # These, the codes and the adder trees are reset-less: only the tile control and the
        # valid flags take the reset (docs/HARDWARE.md, "Resets").
        shadow = [[Signal(signed(8), name=f"shadow_{r}_{c}", reset_less=True) for c in range(n)]
                  for r in range(n)]
        stationary = [[Signal(signed(8), name=f"v_{r}_{c}", reset_less=True) for c in range(n)]
                      for r in range(n)]
        beat = self.weights.payload.data
        for r in range(n):
            with m.If(accept_weight & (weight_row == r)):
                m.d.sync += [shadow[r][c].eq(beat[8 * c:8 * c + 8]) for c in range(n)]
        with m.If(first_row):
            m.d.sync += [stationary[r][c].eq(shadow[r][c]) for r in range(n) for c in range(n)]

        # ------------------------------------------------------------------ stage A: codes
        codes = [Signal(LIS_CODE_BITS, name=f"code_{r}", reset_less=True) for r in range(n)]
        valid = Signal(name="valid_codes")
        last = Signal(name="last_codes", reset_less=True)
        m.d.sync += [code.eq(self.activations.payload.data[8 * r:8 * r + LIS_CODE_BITS])
                     for r, code in enumerate(codes)]
        m.d.sync += [valid.eq(accept_act), last.eq(self.activations.payload.last)]

        # ------------------------------------------------------------------ shifters
        # term = v << (15 - code) = v << ~code, zero for code 15: one decode per row.
        shift = [Signal(LIS_CODE_BITS, name=f"shift_{r}") for r in range(n)]
        live = [Signal(name=f"live_{r}") for r in range(n)]
        for r in range(n):
            m.d.comb += [shift[r].eq(~codes[r]), live[r].eq(codes[r] != LIS_ZERO_CODE)]
        terms = []
        for c in range(n):
            column = []
            for r in range(n):
                term = Signal(signed(TERM_BITS), name=f"term_{r}_{c}")
                m.d.comb += term.eq(Mux(live[r], stationary[r][c] << shift[r], 0))
                column.append(term)
            terms.append(column)

        # ------------------------------------------------------------------ adder trees
        # One registered level per halving; the first level adds the shifters' outputs.
        level = 0
        width = TERM_BITS
        while len(terms[0]) > 1:
            width += 1
            nxt = []
            for c in range(n):
                sums = []
                for q in range(len(terms[c]) // 2):
                    s = Signal(signed(width), name=f"sum_l{level}_{q}_{c}", reset_less=True)
                    m.d.sync += s.eq(terms[c][2 * q] + terms[c][2 * q + 1])
                    sums.append(s)
                nxt.append(sums)
            terms = nxt
            d_valid = Signal(name=f"valid_l{level}")
            d_last = Signal(name=f"last_l{level}", reset_less=True)
            m.d.sync += [d_valid.eq(valid), d_last.eq(last)]
            valid, last = d_valid, d_last
            level += 1

        m.d.comb += [
            self.results.payload.data.eq(Cat(*(_sign_extend(terms[c][0], RESULT_BITS)
                                               for c in range(n)))),
            self.results.valid.eq(valid),
            self.results.payload.last.eq(last),
        ]

        top.submodules.tree = EnableInserter(advance)(m)
        return top


def _sign_extend(value, width: int):
    """The bits of signed ``value`` sign-extended to ``width`` (at least ``len(value)``)."""
    return Cat(value, value[-1].replicate(width - len(value)))
