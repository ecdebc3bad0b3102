"""Requantizer: int32 accumulators to int8 or int16, bit-exact to ``sw.intops.requantize``.

Each lane computes, with its channel's parameters,
``clamp(((acc + bias) * mult + 2**(shift-1)) >> shift) + offset, lo, hi)``: the bias add of
:func:`sw.intops.linear` followed by :func:`sw.intops.requantize`, with ``[lo, hi]`` the
int8 or the int16 range chosen per beat (int16 for ``q @ k^T`` scores feeding the softmax
and for logits).

Parameter memory layout
-----------------------
Channel ``ch`` of a row is lane ``ch mod L`` of beat (channel group) ``ch div L``.  One
:class:`~amaranth.lib.memory.Memory` word per channel group holds the ``L`` lanes' records
``(bias int32, mult int16, shift 0..63, offset int32)``; the depth is
``ceil(max_channels / L)`` groups.  The write port writes one record (one lane of one
group) per cycle.  A per-tensor requantization either writes equal records everywhere or
sends beats with ``per_tensor`` set, which makes every lane use the record of channel 0
(group 0, lane 0), so one record write suffices.

Widths: ``acc + bias`` is 33-bit signed, its product with ``mult`` 49-bit signed
(``|product| <= 2**47``).  For ``shift >= 49`` the rounded quotient is 0 exactly as for
``shift = 49``, so the shifter is 50 bits wide with shifts clipped to 49.
"""
from __future__ import annotations

import math

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import AcceleratorConfig, ConfigError
from hw.timing import UnitTiming
from sw import intops

__all__ = ["Requantizer", "requant_timing", "REQUANT_RECORD", "PIPELINE_STAGES",
           "OUTPUT_BUFFER"]

#: Register stages from an accepted beat to its output beat: parameter read, the read
#: records registered, bias add, multiply, rounding add, shift, offset add, clamp (into the
#: output buffer).
PIPELINE_STAGES = 8

#: Beats the unit holds at most, in the pipeline and in its output buffer together: ``i.ready``
#: is low while this many are accepted and not taken.  At least ``PIPELINE_STAGES + 1`` so
#: that a consumer that never stalls never sees ``i.ready`` low; 16, one LUT-RAM deep on ECP5.
OUTPUT_BUFFER = 16

#: Bits of one input lane (int32 accumulator) and one output lane (int16, int8 sign-extended).
ACC_BITS = 32
OUT_BITS = 16

_BIASED_BITS = ACC_BITS + 1
_PRODUCT_BITS = _BIASED_BITS + intops.REQUANT_MULT_BITS
#: Every shift at or above this gives the same (zero) quotient of a ``_PRODUCT_BITS`` product.
_SHIFT_CLIP = _PRODUCT_BITS
_ROUNDED_BITS = _PRODUCT_BITS + 1

#: One channel's parameters, as stored in the parameter memory.
REQUANT_RECORD = data.StructLayout({
    "bias": signed(ACC_BITS),
    "mult": signed(intops.REQUANT_MULT_BITS),
    "shift": unsigned(6),
    "offset": signed(ACC_BITS),
})


def _lanes_of(config, lanes) -> int:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, got {config!r}")
    if lanes is None:
        return config.array_cols
    if isinstance(lanes, bool) or not isinstance(lanes, int) or not 1 <= lanes <= 64:
        raise ConfigError(f"lanes must be an integer in 1..64, got {lanes!r}")
    return lanes


def requant_timing(config: AcceleratorConfig, n: int, lanes: int | None = None) -> UnitTiming:
    """Timing of one row of ``n`` accumulators on ``Requantizer(config, lanes)``.

    With ``L = lanes`` (default ``config.array_cols``) and ``B = ceil(n / L)`` beats::

        latency  = B + 8        (first input beat accepted to last output beat, both counted)
        interval = B

    i.e. one beat per cycle with an 8-stage pipeline (:data:`PIPELINE_STAGES`); rows follow
    each other without a gap.
    """
    lanes = _lanes_of(config, lanes)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (accumulators in the row) must be a positive integer, got {n!r}")
    beats = math.ceil(n / lanes)
    return UnitTiming(latency=beats + PIPELINE_STAGES, interval=beats)


def _param_write_signature(groups: int, lanes: int) -> wiring.Signature:
    return wiring.Signature({
        "en": Out(1),
        "group": Out(range(groups)),
        "lane": Out(range(lanes)),
        "bias": Out(signed(ACC_BITS)),
        "mult": Out(signed(intops.REQUANT_MULT_BITS)),
        "shift": Out(range(intops.REQUANT_MAX_SHIFT + 1)),
        "offset": Out(signed(ACC_BITS)),
    })


class Requantizer(wiring.Component):
    """Per-channel requantizer of ``L`` int32 lanes per beat.

    Parameters
    ----------
    config : AcceleratorConfig
        Uses ``max_channels`` (channels whose records the memory holds) and, by default,
        ``array_cols`` for the lane count: the requantizer sits after the systolic array.
    lanes : int, optional
        ``L``, lanes per beat, 1..64 (default ``config.array_cols``).

    Members
    -------
    i : ``In(stream.Signature(StructLayout({"data": unsigned(32 L), "group": range(G),
    "int16": 1, "per_tensor": 1})))``
        Accumulators: lane ``l`` (bits ``32l .. 32l+31``, two's complement) is channel
        ``group * L + l``.  ``int16`` selects the int16 output range (else int8);
        ``per_tensor`` applies channel 0's record to every lane.
    o : ``Out(stream.Signature(unsigned(16 L)))``
        Results, one beat per input beat in order: lane ``l`` (bits ``16l .. 16l+15``) is
        the int16 result, or the int8 result sign-extended to 16 bits.
    param : ``In(Signature(en, group, lane, bias, mult, shift, offset))``
        Record write port: when ``en`` is high, lane ``lane`` of group ``group`` gets
        ``bias`` (int32), ``mult`` (int16), ``shift`` (0..63) and ``offset`` (int32).  A
        record written in cycle ``t`` applies to beats accepted after cycle ``t``; records
        must not change while beats using them are in flight.  Writes are never refused.

    ``G = ceil(max_channels / L)`` channel groups.

    Notes
    -----
    LATENCY: a beat accepted in cycle ``t`` leaves in cycle ``t + 8`` when ``o.ready`` is
    high (later beats queue behind a held one); a row of ``n`` accumulators takes
    ``ceil(n / L) + 8`` cycles, both ends counted.  THROUGHPUT: one beat (``L``
    accumulators) per cycle.  Both are :func:`requant_timing`.

    The pipeline never stops: its last stage loads the output register (``o``) when that is
    empty or taken, and otherwise queues in an output buffer (a LUT-RAM FIFO, which then
    feeds the output register first); ``i.ready`` is a register, high while fewer than
    :data:`OUTPUT_BUFFER` beats are accepted and not yet taken (credits).  So ``o.ready``
    reaches only the output register's enable and the buffer's ports, never ``i.ready`` or
    the pipeline's registers (which have no enable).  A consumer that takes every beat as
    it comes sees exactly the behaviour of a pipeline stalled by a held output beat; one
    that holds beats lets up to :data:`OUTPUT_BUFFER` in before ``i.ready`` falls, and gets
    the queued beats one per cycle afterwards.
    """

    def __init__(self, config: AcceleratorConfig, lanes: int | None = None):
        self._lanes = _lanes_of(config, lanes)
        self._config = config
        self._groups = math.ceil(config.max_channels / self._lanes)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "data": unsigned(ACC_BITS * self._lanes),
                "group": range(self._groups),
                "int16": 1,
                "per_tensor": 1,
            }))),
            "o": Out(stream.Signature(unsigned(OUT_BITS * self._lanes))),
            "param": In(_param_write_signature(self._groups, self._lanes)),
        })

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def lanes(self) -> int:
        """``L``: accumulators per beat."""
        return self._lanes

    @property
    def groups(self) -> int:
        """``G``: channel groups (words) of the parameter memory, ``ceil(max_channels / L)``."""
        return self._groups

    def elaborate(self, platform):
        m = Module()
        lanes = self._lanes

        m.submodules.records = records = Memory(
            shape=data.ArrayLayout(REQUANT_RECORD, lanes), depth=self._groups, init=[])
        record_write = records.write_port(granularity=1)
        record_read = records.read_port()

        m.d.comb += [
            record_write.addr.eq(self.param.group),
            record_write.en.eq(self.param.en << self.param.lane),
        ]
        for lane in range(lanes):
            m.d.comb += [
                record_write.data[lane].bias.eq(self.param.bias),
                record_write.data[lane].mult.eq(self.param.mult),
                record_write.data[lane].shift.eq(self.param.shift),
                record_write.data[lane].offset.eq(self.param.offset),
            ]

        # Credits: beats accepted and not yet taken from the output register.  i.ready is their
        # registered "fewer than OUTPUT_BUFFER", so it does not depend on o.ready this cycle.
        in_flight = Signal(range(OUTPUT_BUFFER + 1))
        ready = Signal(init=1)
        accept = Signal()
        take = Signal()
        m.d.comb += [
            accept.eq(self.i.valid & ready),
            take.eq(self.o.valid & self.o.ready),
            self.i.ready.eq(ready),
            record_read.en.eq(1),
            record_read.addr.eq(Mux(self.i.payload.per_tensor, 0, self.i.payload.group)),
        ]
        with m.If(accept & ~take):
            m.d.sync += [in_flight.eq(in_flight + 1), ready.eq(in_flight < OUTPUT_BUFFER - 1)]
        with m.Elif(take & ~accept):
            m.d.sync += [in_flight.eq(in_flight - 1), ready.eq(1)]

        # Beats that wait behind a held output beat (at most OUTPUT_BUFFER - 1 of them).
        m.submodules.out_buffer = out_buffer = SyncFIFO(width=OUT_BITS * lanes,
                                                        depth=OUTPUT_BUFFER)

        # The valid bits are reset; the payload registers are not (nothing reads them
        # without their valid), so they need no reset net and pack with any neighbour.
        def stage(name, shape):
            return [Signal(shape, name=f"{name}_{lane}", reset_less=True)
                    for lane in range(lanes)]

        def flag():
            return Signal(reset_less=True)

        # Stage 1: the accepted beat waits for its records.
        s1_valid = Signal()
        s1_acc = stage("s1_acc", signed(ACC_BITS))
        s1_int16 = flag()
        s1_per_tensor = flag()
        # Stage 1b: the records registered.
        s1b_valid = Signal()
        s1b_acc = stage("s1b_acc", signed(ACC_BITS))
        s1b_records = Signal.like(record_read.data, reset_less=True)
        s1b_int16 = flag()
        s1b_per_tensor = flag()
        # Stage 2: bias added.
        s2_valid = Signal()
        s2_biased = stage("s2_biased", signed(_BIASED_BITS))
        s2_record = stage("s2_record", REQUANT_RECORD)
        s2_int16 = flag()
        # Stage 3: multiplied; the rounding term 2**(shift-1) (0 for shift 0) decoded.
        s3_valid = Signal()
        s3_product = stage("s3_product", signed(_PRODUCT_BITS))
        s3_half = stage("s3_half", unsigned(_SHIFT_CLIP))
        s3_shift = stage("s3_shift", range(_SHIFT_CLIP + 1))
        s3_offset = stage("s3_offset", signed(ACC_BITS))
        s3_int16 = flag()
        # Stage 4: rounding term added (round half up).
        s4_valid = Signal()
        s4_rounding = stage("s4_rounding", signed(_ROUNDED_BITS))
        s4_shift = stage("s4_shift", range(_SHIFT_CLIP + 1))
        s4_offset = stage("s4_offset", signed(ACC_BITS))
        s4_int16 = flag()
        # Stage 5: arithmetic shift.
        s5_valid = Signal()
        s5_rounded = stage("s5_rounded", signed(_ROUNDED_BITS))
        s5_offset = stage("s5_offset", signed(ACC_BITS))
        s5_int16 = flag()
        # Stage 6: offset added.
        s6_valid = Signal()
        s6_sum = stage("s6_sum", signed(_ROUNDED_BITS + 1))
        s6_int16 = flag()
        # Stage 7 (the output register, or the buffer behind it): clamped.
        out_lanes = stage("out", signed(OUT_BITS))

        # Every stage moves every cycle (no enable).
        m.d.sync += [
            s1_valid.eq(accept),
            s1_int16.eq(self.i.payload.int16),
            s1_per_tensor.eq(self.i.payload.per_tensor),
            s1b_valid.eq(s1_valid),
            s1b_int16.eq(s1_int16),
            s1b_per_tensor.eq(s1_per_tensor),
            s1b_records.eq(record_read.data),
            s2_valid.eq(s1b_valid),
            s2_int16.eq(s1b_int16),
            s3_valid.eq(s2_valid),
            s3_int16.eq(s2_int16),
            s4_valid.eq(s3_valid),
            s4_int16.eq(s3_int16),
            s5_valid.eq(s4_valid),
            s5_int16.eq(s4_int16),
            s6_valid.eq(s5_valid),
            s6_int16.eq(s5_int16),
        ]
        lo = Mux(s6_int16, intops.INT16_MIN, intops.INT8_MIN)
        hi = Mux(s6_int16, intops.INT16_MAX, intops.INT8_MAX)
        for lane in range(lanes):
            record = Mux(s1b_per_tensor, s1b_records[0], s1b_records[lane])
            record = REQUANT_RECORD(record)
            shift = Mux(s2_record[lane].shift > _SHIFT_CLIP, _SHIFT_CLIP,
                        s2_record[lane].shift)
            y = s6_sum[lane]
            m.d.sync += [
                s1_acc[lane].eq(self.i.payload.data[ACC_BITS * lane:ACC_BITS * (lane + 1)]),
                s1b_acc[lane].eq(s1_acc[lane]),
                s2_biased[lane].eq(s1b_acc[lane] + record.bias),
                s2_record[lane].eq(record),
                s3_product[lane].eq(s2_biased[lane] * s2_record[lane].mult),
                s3_half[lane].eq(((1 << shift) >> 1)[:_SHIFT_CLIP]),
                s3_shift[lane].eq(shift),
                s3_offset[lane].eq(s2_record[lane].offset),
                s4_rounding[lane].eq(s3_product[lane] + s3_half[lane]),
                s4_shift[lane].eq(s3_shift[lane]),
                s4_offset[lane].eq(s3_offset[lane]),
                s5_rounded[lane].eq(s4_rounding[lane] >> s4_shift[lane]),
                s5_offset[lane].eq(s4_offset[lane]),
                s6_sum[lane].eq(s5_rounded[lane] + s5_offset[lane]),
            ]
            m.d.comb += out_lanes[lane].eq(Mux(y < lo, lo, Mux(y > hi, hi, y)))

        # The output register ``head`` (o) loads when empty or taken: from the buffer if it
        # holds beats (then the clamped beat, if any, joins the buffer's tail), else the
        # clamped beat directly.  A consumer that never stalls never uses the buffer.  The
        # credits keep the buffer from overflowing (its w_rdy is never low when written).
        head_valid = Signal()
        head = Signal(OUT_BITS * lanes, reset_less=True)
        load = Signal()
        m.d.comb += [
            load.eq(~head_valid | self.o.ready),
            out_buffer.r_en.eq(load),
            out_buffer.w_data.eq(Cat(out_lanes)),
            out_buffer.w_en.eq(s6_valid & (out_buffer.r_rdy | ~load)),
            self.o.valid.eq(head_valid),
            self.o.payload.eq(head),
        ]
        with m.If(load):
            m.d.sync += [
                head_valid.eq(out_buffer.r_rdy | s6_valid),
                head.eq(Mux(out_buffer.r_rdy, out_buffer.r_data, Cat(out_lanes))),
            ]
        return m
