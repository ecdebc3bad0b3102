"""PTF LayerNorm unit: integer LayerNorm of int8 rows, bit-exact to ``sw.intops.ptf_layernorm``.

A row (one token, ``C`` channels) streams in as ``C / L`` beats of ``L`` int8 lanes.  The
*statistics pass* shifts every element onto the common PTF scale (``xs = (x - zp_in) <<
alpha``), stores ``xs`` in a row memory and accumulates ``S = sum xs`` and ``sum xs**2``.
A per-row *finish* stage forms the exact ``V = C sum xs**2 - S**2`` (``C**2`` times the
variance: no rounded mean), shifts it by an even amount to 35 or 36 bits, and a sequential
square root (:class:`hw.integer_sqrt.IntegerSqrt`) and divider
(:class:`hw.integer_divider.IntegerDivider`) give the row factor
``F = (2**34 - 1) // isqrt(Vn)``.  The *normalize pass* reads the row back and computes
``n = (xs (C F) - S F + 2**(r-1)) >> r``, which is ``((C xs - S) F + 2**(r-1)) >> r``, with
the row constants ``C F`` and ``2**(r-1) - S F`` registered ahead of the row's beats, then
applies the per-channel affine with one rounding:
``y = clamp((((n mult) >> (shift - 16)) + K + 2**15) >> 16)``.

Rows overlap: the row memory has :data:`ROW_SLOTS` row slots, so while one row is being
normalized, the next waits for (or is in) its square root and division and the one after
it streams in.  Four slots are what it takes for the slot reuse never to be the bottleneck
(see :func:`layernorm_timing`).
"""
from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from hw.config import AcceleratorConfig, ConfigError
from hw.integer_divider import IntegerDivider, integer_divider_timing
from hw.integer_sqrt import IntegerSqrt, integer_sqrt_timing
from hw.timing import UnitTiming
from sw import intops

__all__ = [
    "PtfLayerNorm", "layernorm_timing", "layernorm_beats", "channels_ok", "ROW_SLOTS",
    "MAX_CHANNELS_LIMIT",
]

#: Most channels the integer reference's widths allow (the row sum is 24-bit signed).
MAX_CHANNELS_LIMIT = intops.LN_MAX_CHANNELS
#: Row slots of the row memory (rows in flight between the two passes).
ROW_SLOTS = 4

# Widths of the reference (sw.intops module docstring), for up to 4096 channels.
_SHIFTED_BITS = 12                                       # xs = (x - zp) << alpha, signed
_SUM_BITS = 24                                           # S, signed
_SUM_SQUARES_BITS = 35                                   # sum xs**2 <= 4096 * 2040**2, unsigned
_CHANNEL_BITS = ceil_log2(MAX_CHANNELS_LIMIT + 1)        # C, unsigned
_VAR_BITS = 47                                           # V = C sum xs**2 - S**2, unsigned
_RADICAND_BITS = 2 * intops.LN_ROOT_BITS                 # Vn, V shifted by an even amount
_PAIRS = (_VAR_BITS + 1) // 2                            # bit pairs of V
_ROOT_BITS = intops.LN_ROOT_BITS                         # k = isqrt(Vn) >= 2**17 when V > 0
_DIVIDEND_BITS = intops.LN_FACTOR_BITS + intops.LN_ROOT_BITS   # 2**34 - 1
_FACTOR_BITS = intops.LN_FACTOR_BITS + 1                 # F < 2**17
_EXP_BITS = 6                                            # e in -6..18, signed
#: ``r = _R_BASE - e``: the normalize shift.
_R_BASE = intops.LN_FACTOR_BITS + intops.LN_ROOT_BITS - intops.LN_NORM_BITS
_CF_BITS = _CHANNEL_BITS + _FACTOR_BITS                  # C F, unsigned
_SF_BITS = _SUM_BITS + _FACTOR_BITS                      # S F, signed
_P1_BITS = _SHIFTED_BITS + _CF_BITS + 2                  # xs C F - S F + half, signed
_NORM_BITS = 21                                          # n, signed
_AFFINE_BITS = _NORM_BITS + intops.REQUANT_MULT_BITS     # n * mult, signed

#: Root and quotient bits computed per cycle by the square root and the divider.
SQRT_STEPS_PER_CYCLE = 2
DIVIDER_STEPS_PER_CYCLE = 2
#: Cycles from accepting a beat to its row sums being accumulated (xs, lane sums, accumulate).
_STATS_PIPELINE = 3
#: States of the finish stage per row after the sums are latched: the two products of V,
#: V, its normalising shift, the hand-over of the shifted radicand.
_FINISH_STATES = 4
#: Cycles the finish stage is claimed per row, from the row's last beat accepted to its
#: radicand accepted by the square root (inclusive), when the square root is free.
_FINISH_CYCLES = _STATS_PIPELINE + _FINISH_STATES
#: Cycles from reading a beat of the row memory to its output beat being valid (memory
#: read, the read data registered, the two partial products of ``xs C F``, their sum
#: ``- S F``, ``>> r``, ``* mult``, the shift and offset, the clamp).
_NORMALIZE_PIPELINE = 8
#: ``xs C F`` is two products registered apart, ``xs (C F)[:17]`` and ``xs (C F)[17:]``:
#: each fits one 18x18 multiplier block, whose output then goes to a register instead of
#: through the carry chains of their sum (on the placed ULX3S core the multiplier block sat
#: 63 tiles from its operand and 81 from the adder: 21.4 ns, the slowest endpoints).
_CF_SPLIT = 17
#: ``n * mult`` likewise: ``n[:17] * mult`` and ``n[17:] * mult``, each one multiplier
#: block with a register after it, added in the next stage with the shift and offset (on
#: the placed ULX3S core the block of one 21 x 16-bit product sat 45 tiles from ``n`` and
#: 49 from the carry chain that summed its two halves: 20.43 ns, the routed critical path).
_NORM_SPLIT = 17


def channels_ok(config: AcceleratorConfig, channels):
    """Whether the unit runs rows of ``channels`` channels: a multiple of its lanes ``L``
    (``config.norm_unit_lanes``) in ``L .. max_channels``.  ``channels`` may be an int (a bool results) or an
    Amaranth value (a 1-bit value results: the accelerator's decoder checks it)."""
    lanes = config.norm_unit_lanes
    return (channels % lanes == 0) & (channels >= lanes) & (channels <= config.max_channels)


def layernorm_beats(config: AcceleratorConfig, channels: int) -> int:
    """Beats per row, ``C / L``; raises ``ValueError`` for a channel count the unit cannot run.

    ``channels`` must be a multiple of the unit's lanes ``L = config.norm_unit_lanes`` with
    ``L <= channels <= config.max_channels``.
    """
    lanes = config.norm_unit_lanes
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise ValueError(f"channels must be an integer, got {channels!r}")
    if not channels_ok(config, channels):
        raise ValueError(f"channels must be a multiple of the LayerNorm's lanes ({lanes}) in "
                         f"{lanes}..{config.max_channels} (max_channels), got {channels}")
    return channels // lanes


def layernorm_timing(config: AcceleratorConfig, channels: int) -> UnitTiming:
    """Timing of one row of ``channels`` channels on :class:`PtfLayerNorm`.

    With ``B = C / L`` beats per row, ``R = 10`` and ``V = 18`` the latencies of the square
    root and of the divider (:func:`integer_sqrt_timing`, :func:`integer_divider_timing`)::

        latency  = 2 B + R + V + 13         = 2 B + 41
        interval = max(B, 7, R, V)          = max(B, 18)

    ``latency``: cycles from the row's first input beat accepted to its last output beat
    valid (input never starved, output never stalled).  ``interval``: cycles between the
    first beats of back-to-back rows in steady state; ``7`` is the finish stage's occupancy.
    The row-slot reuse never binds: a slot is held ``2 B + R + V + 8`` cycles, at most
    ``ROW_SLOTS * interval`` for every ``B``.  ``n`` rows streamed back to back take exactly
    ``latency + (n - 1) * interval`` cycles from the first input beat to the last output beat
    (the input may run ahead by a few rows at the start; the total is unchanged).
    """
    beats = layernorm_beats(config, channels)
    sqrt = integer_sqrt_timing(_RADICAND_BITS, SQRT_STEPS_PER_CYCLE)
    divide = integer_divider_timing(_DIVIDEND_BITS, DIVIDER_STEPS_PER_CYCLE)
    latency = (beats - 1) + (_FINISH_CYCLES - 1) + sqrt.latency + divide.latency \
        + beats + _NORMALIZE_PIPELINE
    interval = max(beats, _FINISH_CYCLES, sqrt.interval, divide.interval)
    return UnitTiming(latency=latency, interval=interval)


def _param_write_signature(max_channels: int) -> wiring.Signature:
    return wiring.Signature({
        "en": Out(1),
        "channel": Out(range(max_channels)),
        "alpha": Out(2),
        "mult": Out(signed(intops.REQUANT_MULT_BITS)),
        "shift": Out(range(intops.REQUANT_MAX_SHIFT + 1)),
        "offset": Out(signed(32)),
    })


_REQUANT_PARAMS = data.StructLayout({
    "mult": signed(intops.REQUANT_MULT_BITS),
    "shift": unsigned(6),
    "offset": signed(32),
})


class PtfLayerNorm(wiring.Component):
    """Integer PTF LayerNorm, bit-exact to :func:`sw.intops.ptf_layernorm`.

    Parameters
    ----------
    config : AcceleratorConfig
        Uses ``norm_unit_lanes`` (``L``, lanes per beat: ``norm_lanes``, or ``vector_lanes``
        when that is 0) and ``max_channels`` (row capacity,
        ``L <= max_channels <= 4096``: the reference's widths hold up to 4096 channels).

    Members
    -------
    i : ``In(stream.Signature(unsigned(8 * L)))``
        Input rows, ``C / L`` beats each; lane ``j`` of beat ``b`` (bits ``8j..8j+7``,
        two's complement) is channel ``b * L + j``.
    o : ``Out(stream.Signature(unsigned(8 * L)))``
        Output rows, same packing, int8.  ``o.ready`` may be low at any time.
    stream_ready : ``Out(1)``
        ``i.ready`` without its ``~param.en`` term, for a source that never offers a beat
        in a cycle that writes a parameter (the vector engine writes its records in setup
        cycles before its first read): a ready that does not wait on the parameter write.
    param : ``In(Signature(en, channel, alpha, mult, shift, offset))``
        Per-channel parameter write port: when ``en`` is high, channel ``channel`` gets PTF
        factor ``alpha`` (0..3) and the affine of :func:`sw.intops.ln_affine`: ``mult``
        (int16), ``shift`` (16..63; smaller values give meaningless outputs) and ``offset``
        (int32, 16 fraction bits).  No beat is accepted in a cycle that writes; parameters
        must not change while rows using them are in flight.
    channels : ``In(range(max_channels + 1))``
        ``C``: a multiple of ``L`` in ``L..max_channels`` (:func:`layernorm_beats` checks it;
        other values give meaningless rows).
    zp_in : ``In(signed(8))``
        Input zero point.

    ``channels`` and ``zp_in`` are per-tensor registers of the caller: they must stay
    constant while rows are in flight, and ``channels`` must be set at least one cycle
    before a row's first beat is offered (the unit registers ``C / L - 1``).

    Notes
    -----
    With ``B = C / L``:
    LATENCY (first input beat accepted -> last output beat valid, no stalls): ``2 B + 41``.
    THROUGHPUT: one row every ``max(B, 18)`` cycles, i.e. one beat per cycle once
    ``B >= 18``.  Both are :func:`layernorm_timing`.
    """

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {config!r}")
        lanes = config.norm_unit_lanes
        if not lanes <= config.max_channels <= MAX_CHANNELS_LIMIT:
            raise ConfigError(f"PtfLayerNorm needs its lanes ({lanes}) <= max_channels <= "
                              f"{MAX_CHANNELS_LIMIT}, got max_channels={config.max_channels}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(unsigned(8 * lanes))),
            "o": Out(stream.Signature(unsigned(8 * lanes))),
            "stream_ready": Out(1),
            "param": In(_param_write_signature(config.max_channels)),
            "channels": In(range(config.max_channels + 1)),
            "zp_in": In(signed(8)),
        })

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def lanes(self) -> int:
        """``L``: channels per beat."""
        return self._config.norm_unit_lanes

    @property
    def max_beats(self) -> int:
        """Beats of the longest row, ``max_channels // L``."""
        return self._config.max_channels // self.lanes

    def elaborate(self, platform):
        m = Module()
        lanes = self.lanes
        lane_bits = exact_log2(lanes)
        depth = self.max_beats

        # ------------------------------------------------------------------ memories
        m.submodules.alpha_mem = alpha_mem = Memory(
            shape=data.ArrayLayout(unsigned(2), lanes), depth=depth, init=[])
        m.submodules.requant_mem = requant_mem = Memory(
            shape=data.ArrayLayout(_REQUANT_PARAMS, lanes), depth=depth, init=[])
        m.submodules.row_mem = row_mem = Memory(
            shape=data.ArrayLayout(signed(_SHIFTED_BITS), lanes), depth=ROW_SLOTS * depth, init=[])

        alpha_wr = alpha_mem.write_port(granularity=1)
        requant_wr = requant_mem.write_port(granularity=1)
        alpha_rd = alpha_mem.read_port(transparent_for=(alpha_wr,))
        requant_rd = requant_mem.read_port()
        row_wr = row_mem.write_port()
        row_rd = row_mem.read_port()

        param_lane = self.param.channel[:lane_bits]
        param_addr = self.param.channel[lane_bits:]
        m.d.comb += [
            alpha_wr.addr.eq(param_addr),
            alpha_wr.en.eq(self.param.en << param_lane),
            requant_wr.addr.eq(param_addr),
            requant_wr.en.eq(self.param.en << param_lane),
        ]
        for lane in range(lanes):
            m.d.comb += [
                alpha_wr.data[lane].eq(self.param.alpha),
                requant_wr.data[lane].mult.eq(self.param.mult),
                requant_wr.data[lane].shift.eq(self.param.shift),
                requant_wr.data[lane].offset.eq(self.param.offset),
            ]

        # C / L - 1, registered: ``channels`` comes from the caller's instruction register,
        # and the subtraction headed the ready -> finish -> square-root start path (placed
        # ULX3S core, 20.3 ns).  Hence ``channels`` must be set a cycle before a row's first
        # beat is offered (the vector engine sets it in the start cycle; its first beat
        # comes two cycles later at the earliest).
        last_beat = Signal(range(depth))
        m.d.sync += last_beat.eq((self.channels >> lane_bits) - 1)
        rows_in_flight = Signal(range(ROW_SLOTS + 1))     # slot claimed .. last read issued

        # ------------------------------------------------------------------ statistics pass
        # The alpha read port is addressed with the beat index of the *next* cycle, so its
        # data belongs to the beat offered now; `primed` keeps the first cycle after reset
        # (before the first read) from accepting.
        primed = Signal()
        m.d.sync += primed.eq(1)
        in_beat = Signal(range(depth))
        in_slot = Signal(range(ROW_SLOTS))
        finish_claimed = Signal()             # a row's last beat is accepted, not yet finished
        in_first = in_beat == 0
        in_last = in_beat == last_beat
        m.d.comb += [
            self.stream_ready.eq(primed & (~in_first | (rows_in_flight < ROW_SLOTS))
                                 & (~in_last | ~finish_claimed)),
            self.i.ready.eq(self.stream_ready & ~self.param.en),
        ]
        accept = self.i.valid & self.i.ready
        in_beat_next = Mux(accept, Mux(in_last, 0, in_beat + 1), in_beat)
        m.d.comb += alpha_rd.addr.eq(in_beat_next)
        m.d.sync += in_beat.eq(in_beat_next)
        with m.If(accept & in_last):
            m.d.sync += [
                in_slot.eq(in_slot + 1),
                finish_claimed.eq(1),
            ]

        # Payload registers (data, row constants, addresses of writes that their valid
        # enables) are reset-less: nothing reads them without their valid bit or state, which
        # are reset.  They need no reset net and pack with any neighbour.
        # Stage 1: shifted inputs, registered with their row-memory address.
        shifted = Signal(data.ArrayLayout(signed(_SHIFTED_BITS), lanes), reset_less=True)
        shifted_valid = Signal()
        shifted_first = Signal(reset_less=True)
        shifted_last = Signal(reset_less=True)
        shifted_addr = Signal(range(ROW_SLOTS * depth), reset_less=True)
        for lane in range(lanes):
            x = self.i.payload[8 * lane:8 * lane + 8].as_signed()
            m.d.sync += shifted[lane].eq((x - self.zp_in) << alpha_rd.data[lane])
        m.d.sync += [
            shifted_valid.eq(accept),
            shifted_first.eq(in_first),
            shifted_last.eq(in_last),
            shifted_addr.eq(in_slot * depth + in_beat),
        ]
        m.d.comb += [
            row_wr.addr.eq(shifted_addr),
            row_wr.data.eq(shifted),
            row_wr.en.eq(shifted_valid),
        ]

        # Stage 2: lane sums of xs and xs**2.
        beat_sum = Signal(signed(_SHIFTED_BITS + lane_bits), reset_less=True)
        beat_sum_squares = Signal(unsigned(2 * _SHIFTED_BITS - 2 + lane_bits), reset_less=True)
        beat_valid = Signal()
        beat_first = Signal(reset_less=True)
        beat_last = Signal(reset_less=True)
        m.d.sync += [
            beat_sum.eq(sum(shifted[lane] for lane in range(lanes))),
            beat_sum_squares.eq(sum(shifted[lane] * shifted[lane] for lane in range(lanes))),
            beat_valid.eq(shifted_valid),
            beat_first.eq(shifted_first),
            beat_last.eq(shifted_last),
        ]

        # Stage 3: row accumulators; the last beat hands the row's sums to the finish stage.
        row_sum = Signal(signed(_SUM_BITS), reset_less=True)
        row_sum_squares = Signal(unsigned(_SUM_SQUARES_BITS), reset_less=True)
        row_sum_next = Mux(beat_first, 0, row_sum) + beat_sum
        row_sum_squares_next = Mux(beat_first, 0, row_sum_squares) + beat_sum_squares
        with m.If(beat_valid):
            m.d.sync += [
                row_sum.eq(row_sum_next),
                row_sum_squares.eq(row_sum_squares_next),
            ]

        # ------------------------------------------------------------------ finish stage
        fin_sum = Signal(signed(_SUM_BITS), reset_less=True)
        fin_sum_squares = Signal(unsigned(_SUM_SQUARES_BITS), reset_less=True)
        # Partial products of V, each one multiplier: with sum xs**2 = h 2**18 + l and
        # S = a 2**12 + b (b unsigned), C sum xs**2 = (C h) 2**18 + C l and
        # S**2 = a**2 2**24 + (a b) 2**13 + b**2.
        fin_ch = Signal(unsigned(_CHANNEL_BITS + _SUM_SQUARES_BITS - 18), reset_less=True)
        fin_cl = Signal(unsigned(_CHANNEL_BITS + 18), reset_less=True)
        fin_aa = Signal(unsigned(2 * (_SUM_BITS - 12) - 1), reset_less=True)
        fin_ab = Signal(signed(_SUM_BITS), reset_less=True)
        fin_bb = Signal(unsigned(24), reset_less=True)
        fin_var = Signal(unsigned(_VAR_BITS), reset_less=True)
        fin_pairs = Signal(range(_PAIRS + 1), reset_less=True)
        fin_slot = Signal(range(ROW_SLOTS))
        row_sums = Array(Signal(signed(_SUM_BITS), name=f"row_sum_{slot}", reset_less=True)
                         for slot in range(ROW_SLOTS))
        row_exps = Array(Signal(signed(_EXP_BITS), name=f"row_exp_{slot}", reset_less=True)
                         for slot in range(ROW_SLOTS))

        # The even normalising shift e = (36 - bit_length(V)) // 2 is 18 - p, with p the number
        # of bit pairs of V up to its leading nonzero pair (0 for V = 0): the shifted radicand
        # is V << 2e for e >= 0 and V >> -2e otherwise, i.e. (V << 36) >> 2p.
        pair_any = [fin_var[2 * pair:2 * pair + 2].any() for pair in range(_PAIRS)]
        leading_pairs = Signal(range(_PAIRS + 1))
        leading = [pair_any[pair] & ~Cat(*pair_any[pair + 1:]).any() if pair + 1 < _PAIRS
                   else pair_any[pair] for pair in range(_PAIRS)]
        m.d.comb += leading_pairs.eq(
            Cat(*(Cat(*(leading[pair] for pair in range(_PAIRS) if (pair + 1) >> bit & 1)).any()
                  for bit in range(len(leading_pairs)))))
        shifted_var = Cat(Const(0, _RADICAND_BITS), fin_var) >> (fin_pairs << 1)

        m.submodules.sqrt = sqrt = IntegerSqrt(_RADICAND_BITS, SQRT_STEPS_PER_CYCLE)
        m.d.comb += sqrt.i.payload.eq(shifted_var[:_RADICAND_BITS])
        with m.FSM(name="finish"):
            with m.State("IDLE"):
                with m.If(beat_valid & beat_last):
                    m.d.sync += [
                        fin_sum.eq(row_sum_next),
                        fin_sum_squares.eq(row_sum_squares_next),
                    ]
                    m.next = "PRODUCTS"
            with m.State("PRODUCTS"):
                m.d.sync += [
                    fin_ch.eq(self.channels * fin_sum_squares[18:]),
                    fin_cl.eq(self.channels * fin_sum_squares[:18]),
                    fin_aa.eq(fin_sum[12:].as_signed() * fin_sum[12:].as_signed()),
                    fin_ab.eq(fin_sum[12:].as_signed() * fin_sum[:12]),
                    fin_bb.eq(fin_sum[:12] * fin_sum[:12]),
                    row_sums[fin_slot].eq(fin_sum),
                ]
                m.next = "VAR"
            with m.State("VAR"):
                m.d.sync += fin_var.eq((fin_ch << 18) + fin_cl - Cat(fin_bb, fin_aa)
                                       - (fin_ab << 13))
                m.next = "EXP"
            with m.State("EXP"):
                m.d.sync += fin_pairs.eq(leading_pairs)
                m.next = "OFFER"
            with m.State("OFFER"):
                # The square root registers the shifted radicand when it accepts it.
                m.d.comb += sqrt.i.valid.eq(1)
                m.d.sync += row_exps[fin_slot].eq(_RADICAND_BITS // 2 - fin_pairs)
                with m.If(sqrt.i.ready):
                    m.d.sync += [
                        finish_claimed.eq(0),
                        fin_slot.eq(fin_slot + 1),
                    ]
                    m.next = "IDLE"

        # ------------------------------------------------------------------ 1 / sqrt
        m.submodules.divider = divider = IntegerDivider(_DIVIDEND_BITS, _ROOT_BITS,
                                                        DIVIDER_STEPS_PER_CYCLE)
        m.d.comb += [
            divider.i.valid.eq(sqrt.o.valid),
            divider.i.payload.dividend.eq((1 << _DIVIDEND_BITS) - 1),
            divider.i.payload.divisor.eq(sqrt.o.payload),
            sqrt.o.ready.eq(divider.i.ready),
        ]
        # A nonzero V has a root k >= 2**17 and so a quotient below 2**17; V = 0 gives k = 0
        # and the divider's all-ones quotient, which becomes the reference's F = 0.
        quotient = divider.o.payload
        factor = Mux(quotient[_FACTOR_BITS:].any(), 0, quotient[:_FACTOR_BITS])

        # ------------------------------------------------------------------ normalize pass
        advance = ~self.o.valid | self.o.ready          # the whole pipeline moves together
        out_active = Signal()
        out_beat = Signal(range(depth))
        out_slot = Signal(range(ROW_SLOTS))
        next_out_slot = Signal(range(ROW_SLOTS))
        out_factor = Signal(unsigned(_FACTOR_BITS), reset_less=True)      # F
        out_sum = Signal(signed(_SUM_BITS), reset_less=True)              # S
        out_r = Signal(range(_R_BASE + 8), reset_less=True)               # r = 20 - e
        # ``out_beat == last_beat``, registered: the compare headed the normalize issue ->
        # divider and square-root handshakes -> square-root start path (placed ULX3S core,
        # 19.6 ns, the slowest endpoints with the softmax's polynomial).
        out_last = Signal()
        issue = out_active & advance
        issue_last = issue & out_last
        m.d.comb += divider.o.ready.eq(~out_active | issue_last)
        with m.If(issue):
            m.d.sync += [
                out_beat.eq(Mux(issue_last, 0, out_beat + 1)),
                out_last.eq(out_beat + 1 == last_beat),
            ]
            with m.If(issue_last):
                m.d.sync += out_active.eq(0)
        with m.If(divider.o.valid & divider.o.ready):
            m.d.sync += [
                out_active.eq(1),
                out_last.eq(last_beat == 0),
                out_slot.eq(next_out_slot),
                next_out_slot.eq(next_out_slot + 1),
                out_factor.eq(factor),
                out_sum.eq(row_sums[next_out_slot]),
                out_r.eq(_R_BASE - row_exps[next_out_slot]),
            ]

        claim = accept & in_first
        m.d.sync += rows_in_flight.eq(rows_in_flight + claim - issue_last)

        m.d.comb += [
            row_rd.addr.eq(out_slot * depth + out_beat),
            row_rd.en.eq(advance),
            requant_rd.addr.eq(out_beat),
            requant_rd.en.eq(advance),
        ]

        # Stage 1 (memory read in flight): the row's constants C F and S F.
        read_valid = Signal()
        read_cf = Signal(unsigned(_CF_BITS), reset_less=True)
        read_sf = Signal(signed(_SF_BITS), reset_less=True)
        read_r = Signal.like(out_r, reset_less=True)
        # Stage 1b: the row memory's data and the row's constants registered.
        x_valid = Signal()
        x_data = Signal.like(row_rd.data, reset_less=True)
        x_cf = Signal.like(read_cf, reset_less=True)
        x_const = Signal(signed(max(_SF_BITS, _R_BASE + 8) + 1),     # 2**(r-1) - S F
                         reset_less=True)
        x_r = Signal.like(out_r, reset_less=True)
        x_params = Signal(data.ArrayLayout(_REQUANT_PARAMS, lanes), reset_less=True)
        # Stage 2a: the partial products xs (C F)[:17] and xs (C F)[17:].
        pp_valid = Signal()
        pp_lo = Signal(data.ArrayLayout(signed(_SHIFTED_BITS + _CF_SPLIT + 1), lanes),
                       reset_less=True)
        pp_hi = Signal(data.ArrayLayout(signed(_SHIFTED_BITS + _CF_BITS - _CF_SPLIT + 1), lanes),
                       reset_less=True)
        pp_const = Signal.like(x_const, reset_less=True)
        pp_r = Signal.like(out_r, reset_less=True)
        pp_params = Signal(data.ArrayLayout(_REQUANT_PARAMS, lanes), reset_less=True)
        # Stage 2: p1 = xs C F - S F + 2**(r-1), and the channels' affine parameters.
        p1_valid = Signal()
        p1 = Signal(data.ArrayLayout(signed(_P1_BITS), lanes), reset_less=True)
        p1_r = Signal.like(out_r, reset_less=True)
        p1_params = Signal(data.ArrayLayout(_REQUANT_PARAMS, lanes), reset_less=True)
        # Stage 3: n = p1 >> r.
        norm_valid = Signal()
        norm = Signal(data.ArrayLayout(signed(_NORM_BITS), lanes), reset_less=True)
        norm_params = Signal(data.ArrayLayout(_REQUANT_PARAMS, lanes), reset_less=True)
        # Stage 4: n * mult as two registered partial products, n[:17] * mult and
        # n[17:] * mult (_NORM_SPLIT), each one 18x18 multiplier block; stage 5 adds them.
        prod_valid = Signal()
        prod_lo = Signal(data.ArrayLayout(signed(_NORM_SPLIT + intops.REQUANT_MULT_BITS + 1),
                                          lanes), reset_less=True)
        prod_hi = Signal(data.ArrayLayout(
            signed(_NORM_BITS - _NORM_SPLIT + intops.REQUANT_MULT_BITS), lanes), reset_less=True)
        prod_params = Signal(data.ArrayLayout(_REQUANT_PARAMS, lanes), reset_less=True)
        # Stage 5: (n * mult >> (shift - frac)) + offset + rounding, before the final shift
        # (n * mult being the sum of the two partial products).
        sum_valid = Signal()
        summed_regs = [Signal(signed(max(_AFFINE_BITS, 32) + 2), name=f"summed_{lane}",
                              reset_less=True)
                       for lane in range(lanes)]
        half = (Const(1, 1) << (read_r - 1).as_unsigned()[:len(read_r)])[:_R_BASE + 8]
        # n * mult, the sum of stage 4's partial products (outside the stall enable).
        prods = [Signal(signed(_AFFINE_BITS), name=f"prod_{lane}") for lane in range(lanes)]
        m.d.comb += [prods[lane].eq(prod_lo[lane] + (prod_hi[lane] << _NORM_SPLIT))
                     for lane in range(lanes)]
        with m.If(advance):
            m.d.sync += [
                read_valid.eq(issue),
                read_cf.eq(self.channels * out_factor),
                read_sf.eq(out_sum * out_factor),
                read_r.eq(out_r),
                x_valid.eq(read_valid),
                x_data.eq(row_rd.data),
                x_cf.eq(read_cf),
                x_const.eq(half - read_sf),
                x_r.eq(read_r),
                x_params.eq(requant_rd.data),
                pp_valid.eq(x_valid),
                pp_const.eq(x_const),
                pp_r.eq(x_r),
                pp_params.eq(x_params),
                p1_valid.eq(pp_valid),
                p1_r.eq(pp_r),
                p1_params.eq(pp_params),
                norm_valid.eq(p1_valid),
                norm_params.eq(p1_params),
                prod_valid.eq(norm_valid),
                prod_params.eq(norm_params),
                sum_valid.eq(prod_valid),
                self.o.valid.eq(sum_valid),
            ]
            for lane in range(lanes):
                params = prod_params[lane]
                scaled = prods[lane] >> (params.shift - intops.LN_OFFSET_FRAC)[:6]
                rounded = summed_regs[lane] >> intops.LN_OFFSET_FRAC
                clamped = Mux(rounded > intops.INT8_MAX, intops.INT8_MAX,
                              Mux(rounded < intops.INT8_MIN, intops.INT8_MIN, rounded))
                m.d.sync += [
                    pp_lo[lane].eq(x_data[lane] * x_cf[:_CF_SPLIT]),
                    pp_hi[lane].eq(x_data[lane] * x_cf[_CF_SPLIT:]),
                    p1[lane].eq(pp_lo[lane] + (pp_hi[lane] << _CF_SPLIT) + pp_const),
                    norm[lane].eq(p1[lane] >> p1_r),
                    prod_lo[lane].eq(norm[lane][:_NORM_SPLIT] * norm_params[lane].mult),
                    prod_hi[lane].eq(norm[lane][_NORM_SPLIT:].as_signed()
                                     * norm_params[lane].mult),
                    summed_regs[lane].eq(scaled + params.offset
                                         + (1 << (intops.LN_OFFSET_FRAC - 1))),
                    self.o.payload[8 * lane:8 * lane + 8].eq(clamped),
                ]
        return m
