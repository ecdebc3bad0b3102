"""Residual add of two int8 streams with per-channel requantizer multipliers.

The golden model is :func:`sw.intops.residual_add`:
``t = (a - zp_a) * mult_a[c] + (b - zp_b) * mult_b[c]`` (26 bits), then
``clamp(((t + 2**(shift[c]-1)) >> shift[c]) + zp_out, -128, 127)``.
"""
from __future__ import annotations

import math

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from hw.config import AcceleratorConfig
from hw.timing import UnitTiming
from sw.intops import INT8_MAX, INT8_MIN, REQUANT_MULT_BITS

__all__ = ["ResidualAdd", "residual_add_timing", "residual_add_param_load_timing", "channels_ok",
           "RESIDUAL_ADD_PIPELINE_DEPTH"]

#: Register stages between an accepted input beat and its output beat.
RESIDUAL_ADD_PIPELINE_DEPTH = 5
#: Width of the shift field (0..63, :data:`sw.intops.REQUANT_MAX_SHIFT`).
SHIFT_BITS = 6
#: ``(q - zp) * mult``: 9-bit difference times 16-bit multiplier.
PRODUCT_BITS = 9 + REQUANT_MULT_BITS
#: Sum of the two products.
SUM_BITS = PRODUCT_BITS + 1
#: Shifts from ``SUM_BITS`` on all round every sum to 0, so a stored shift saturates there.
STORED_SHIFT_BITS = ceil_log2(SUM_BITS + 1)

#: Per-channel parameters as stored (one entry per channel).
CHANNEL_PARAMS_LAYOUT = data.StructLayout({
    "mult_a": signed(REQUANT_MULT_BITS),
    "mult_b": signed(REQUANT_MULT_BITS),
    "shift": unsigned(STORED_SHIFT_BITS),
})


def _check(config: AcceleratorConfig) -> tuple[int, int]:
    """``(lanes, parameter memory depth)`` of a config, validated."""
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"an AcceleratorConfig is required, got {config!r}")
    lanes = config.vector_lanes
    if config.max_channels < lanes:
        raise ValueError(f"max_channels ({config.max_channels}) must be at least "
                         f"vector_lanes ({lanes}) for the residual add")
    return lanes, config.max_channels // lanes


class ResidualAdd(wiring.Component):
    """Residual add of ``L = config.vector_lanes`` int8 lanes per beat, bit-exact to
    :func:`sw.intops.residual_add`.

    A tensor is a sequence of rows of ``C`` channels, ``C / L`` beats per row; lane ``k`` of
    beat ``j`` of a row is channel ``j L + k``.  Per-channel ``mult_a``, ``mult_b`` (int16) and
    ``shift`` (0..63) live in a memory of ``floor(max_channels / L)`` rows of ``L`` entries
    (37 bits each: a shift is stored saturated at 26, which, like any larger shift, rounds
    every 26-bit sum to 0), written one channel at a time through ``param_write``.  The per-tensor
    registers ``channels`` (``C``, a multiple of ``L``, at most ``max_channels``), ``zp_a``,
    ``zp_b`` and ``zp_out`` (int8) are written together through ``tensor_config``, which
    also restarts the channel count at channel 0.  After reset ``C = L * floor(max_channels / L)``
    and all zero points are 0.  Write the parameters and the tensor config only while no beat
    is in flight.

    Each lane computes ``(a - zp_a) * mult_a`` and ``(b - zp_b) * mult_b`` (two 9 x 16-bit
    multiplies), adds them (26 bits), rounds half up while shifting right
    (``((t >> (shift - 1)) + 1) >> 1``, which equals ``(t + 2**(shift-1)) >> shift``; ``t``
    itself for ``shift = 0``), adds ``zp_out`` and clamps to int8.

    Parameters
    ----------
    config : :class:`hw.config.AcceleratorConfig`
        Uses ``vector_lanes`` (``L``) and ``max_channels``.

    Members
    -------
    a : ``In(stream.Signature(unsigned(8 * L)))``
        Residual input beats: lane ``k`` (int8) in bits ``[8k, 8k + 8)``.
    b : ``In(stream.Signature(unsigned(8 * L)))``
        Branch input beats, same packing; a beat is taken only together with one of ``a``.
    o : ``Out(stream.Signature(unsigned(8 * L)))``
        Sum beats, same packing.
    param_write : ``In(stream.Signature(StructLayout({"channel", "mult_a", "mult_b", "shift"})))``
        Per-channel parameter writes, always ready (one per cycle).
    tensor_config : ``In(stream.Signature(StructLayout({"channels", "zp_a", "zp_b", "zp_out"})))``
        Per-tensor register writes, always ready; also resets the channel position to 0.

    Latency and throughput
    ----------------------
    One beat per cycle while ``o`` is not stalled; the output of the beat accepted in cycle
    ``t`` is valid in cycle ``t + 5`` (``RESIDUAL_ADD_PIPELINE_DEPTH = 5``: parameter read,
    parameters and zero-point-subtracted operands registered, multiply, add and shift,
    round and clamp).  A job of ``n`` elements is ``B = ceil(n / L)`` beats: LATENCY
    ``B + 5`` cycles, THROUGHPUT ``L`` elements per cycle
    (interval ``B``).  Loading ``C`` channels of parameters takes ``C`` cycles.  A stalled
    output holds the whole pipeline, ``a.ready`` and ``b.ready`` included.
    """

    def __init__(self, config: AcceleratorConfig):
        self._lanes, self._depth = _check(config)
        self._max_channels = self._lanes * self._depth
        width = 8 * self._lanes
        self._param_write_layout = data.StructLayout({
            "channel": unsigned(ceil_log2(self._max_channels)),
            "mult_a": signed(REQUANT_MULT_BITS),
            "mult_b": signed(REQUANT_MULT_BITS),
            "shift": unsigned(SHIFT_BITS),
        })
        self._tensor_config_layout = data.StructLayout({
            "channels": unsigned(ceil_log2(self._max_channels + 1)),
            "zp_a": signed(8),
            "zp_b": signed(8),
            "zp_out": signed(8),
        })
        super().__init__({
            "a": In(stream.Signature(unsigned(width))),
            "b": In(stream.Signature(unsigned(width))),
            "o": Out(stream.Signature(unsigned(width))),
            "param_write": In(stream.Signature(self._param_write_layout)),
            "tensor_config": In(stream.Signature(self._tensor_config_layout)),
        })

    @property
    def lanes(self) -> int:
        """Elements per beat (``L``)."""
        return self._lanes

    @property
    def max_channels(self) -> int:
        """Largest channel count ``C`` the parameter memory holds (a multiple of ``L``)."""
        return self._max_channels

    def elaborate(self, platform):
        m = Module()
        lanes = self._lanes
        lane_bits = exact_log2(lanes)

        # ---------------------------------------------------------------- configuration
        channels = Signal(self._tensor_config_layout.members["channels"], init=self._max_channels)
        zp_a = Signal(signed(8))
        zp_b = Signal(signed(8))
        zp_out = Signal(signed(8))
        row_beat = Signal(range(max(self._depth, 2)))

        m.d.comb += [
            self.param_write.ready.eq(1),
            self.tensor_config.ready.eq(1),
        ]

        params = Memory(shape=data.ArrayLayout(CHANNEL_PARAMS_LAYOUT, lanes), depth=self._depth,
                        init=[])
        m.submodules.params = params
        write = params.write_port(granularity=1)
        pw = self.param_write.payload
        stored_shift = Mux(pw.shift > SUM_BITS, SUM_BITS, pw.shift)
        m.d.comb += write.addr.eq(pw.channel >> lane_bits)
        for lane in range(lanes):
            m.d.comb += [
                write.data[lane].mult_a.eq(pw.mult_a),
                write.data[lane].mult_b.eq(pw.mult_b),
                write.data[lane].shift.eq(stored_shift),
                write.en[lane].eq(self.param_write.valid & (pw.channel[:lane_bits] == lane)
                                  if lane_bits else self.param_write.valid),
            ]

        # ---------------------------------------------------------------- handshake
        advance = ~self.o.valid | self.o.ready
        accept = self.a.valid & self.b.valid & advance
        m.d.comb += [
            self.a.ready.eq(advance & self.b.valid),
            self.b.ready.eq(advance & self.a.valid),
        ]
        valid = [Signal(name=f"valid_{stage}") for stage in range(1, RESIDUAL_ADD_PIPELINE_DEPTH)]
        with m.If(advance):
            m.d.sync += [
                valid[0].eq(self.a.valid & self.b.valid),
                *(valid[s].eq(valid[s - 1]) for s in range(1, len(valid))),
                self.o.valid.eq(valid[-1]),
            ]

        with m.If(self.tensor_config.valid):
            tc = self.tensor_config.payload
            m.d.sync += [
                channels.eq(tc.channels),
                zp_a.eq(tc.zp_a),
                zp_b.eq(tc.zp_b),
                zp_out.eq(tc.zp_out),
                row_beat.eq(0),
            ]
        with m.Elif(accept):
            row_beats = channels >> lane_bits
            m.d.sync += row_beat.eq(Mux(row_beat + 1 >= row_beats, 0, row_beat + 1))

        # Stage 0 -> 1: read this beat's channel parameters, register the operands.
        read = params.read_port()
        m.d.comb += [read.addr.eq(row_beat), read.en.eq(advance)]

        for lane in range(lanes):
            # The lanes' pipeline registers are reset-less (only ``valid`` is reset): they
            # need no reset net and pack with any neighbour.
            a1 = Signal(signed(8), name=f"a1_{lane}", reset_less=True)
            b1 = Signal(signed(8), name=f"b1_{lane}", reset_less=True)
            a2 = Signal(signed(9), name=f"a2_{lane}", reset_less=True)
            b2 = Signal(signed(9), name=f"b2_{lane}", reset_less=True)
            params2 = Signal(CHANNEL_PARAMS_LAYOUT, name=f"params2_{lane}", reset_less=True)
            prod_a = Signal(signed(PRODUCT_BITS), name=f"prod_a_{lane}", reset_less=True)
            prod_b = Signal(signed(PRODUCT_BITS), name=f"prod_b_{lane}", reset_less=True)
            shift2 = Signal(unsigned(STORED_SHIFT_BITS), name=f"shift2_{lane}", reset_less=True)
            shifted = Signal(signed(SUM_BITS), name=f"shifted_{lane}", reset_less=True)
            rounds = Signal(name=f"rounds_{lane}", reset_less=True)
            shift_less_one = Signal(unsigned(STORED_SHIFT_BITS), name=f"shift_less_one_{lane}")
            total = Signal(signed(SUM_BITS), name=f"total_{lane}")
            rounded = Signal(signed(SUM_BITS + 1), name=f"rounded_{lane}")
            out = self.o.payload.word_select(lane, 8)
            lane_params = read.data[lane]
            m.d.comb += [
                total.eq(prod_a + prod_b),
                shift_less_one.eq(shift2 - 1),
                rounded.eq(Mux(rounds, (shifted + 1) >> 1, shifted) + zp_out),
            ]
            with m.If(advance):
                m.d.sync += [
                    # Stage 1: operands (the parameters arrive from the memory's read port).
                    a1.eq(self.a.payload.word_select(lane, 8)),
                    b1.eq(self.b.payload.word_select(lane, 8)),
                    # Stage 2: the parameters registered after the block RAM, the zero
                    # points subtracted (the multipliers' inputs come from registers).
                    a2.eq(a1 - zp_a),
                    b2.eq(b1 - zp_b),
                    params2.eq(lane_params),
                    # Stage 3: the two multiplies.
                    prod_a.eq(a2 * params2.mult_a),
                    prod_b.eq(b2 * params2.mult_b),
                    shift2.eq(params2.shift),
                    # Stage 4: add, shift right by shift - 1 (the rounding bit stays).
                    shifted.eq(Mux(shift2 == 0, total, total >> shift_less_one)),
                    rounds.eq(shift2 != 0),
                    # Stage 5: drop the rounding bit, add the output zero point, clamp.
                    out.eq(Mux(rounded > INT8_MAX, INT8_MAX,
                               Mux(rounded < INT8_MIN, INT8_MIN, rounded))),
                ]
        return m


def residual_add_timing(config: AcceleratorConfig, n: int) -> UnitTiming:
    """Timing of a residual add of ``n`` elements on :class:`ResidualAdd`.

    With ``B = ceil(n / L)`` beats: LATENCY ``B + 5`` cycles (first input handshake to last
    output handshake, both cycles counted), interval ``B`` cycles (THROUGHPUT ``L`` elements
    per cycle).
    """
    lanes, _ = _check(config)
    if n < 1:
        raise ValueError(f"a residual add job needs at least one element, got {n}")
    beats = math.ceil(n / lanes)
    return UnitTiming(latency=beats + RESIDUAL_ADD_PIPELINE_DEPTH, interval=beats)


def channels_ok(config: AcceleratorConfig, channels):
    """Whether the unit runs rows of ``channels`` channels: a multiple of ``vector_lanes`` in
    ``vector_lanes .. L * (max_channels // L)``.  An int (a bool results) or an Amaranth
    value (a 1-bit value: the accelerator's decoder checks it)."""
    lanes, depth = _check(config)
    return (channels % lanes == 0) & (channels >= lanes) & (channels <= lanes * depth)


def residual_add_param_load_timing(config: AcceleratorConfig, channels: int) -> UnitTiming:
    """Timing of loading the parameters of ``channels`` channels: one write per cycle.

    LATENCY ``C`` cycles, interval ``C`` cycles (``C = channels``, a multiple of ``L`` and at
    most ``max_channels``).
    """
    lanes, depth = _check(config)
    if not channels_ok(config, channels):
        raise ValueError(f"channels must be a multiple of vector_lanes ({lanes}) in "
                         f"{lanes}..{lanes * depth} (max_channels), "
                         f"got {channels}")
    return UnitTiming(latency=channels, interval=channels)
