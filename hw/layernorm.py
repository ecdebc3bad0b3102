"""PTF LayerNorm unit: integer LayerNorm of int8 rows, bit-exact to ``sw.intops.ptf_layernorm``.

A row (one token, ``C`` channels) streams in as ``C / L`` beats of ``L`` int8 lanes.  The
*statistics pass* shifts every element onto the common PTF scale (``xs = (x - zp_in) <<
alpha``), stores ``xs`` in a row memory and accumulates ``S = sum xs`` and ``sum xs**2``.
A per-row *finish* stage turns those into the mean ``mu`` and ``Q = sum (xs - mu)**2``
(as ``sum xs**2 - mu * (2 S - C mu)``, the same integer), then a sequential square root
(:class:`hw.integer_sqrt.IntegerSqrt`) and divider (:class:`hw.integer_divider.IntegerDivider`)
give ``factor = 2**35 // isqrt(Q << 8)``.  The *normalize pass* reads the row back,
computes ``n = ((xs - mu) * factor) >> 8`` and requantizes it per channel.

Rows overlap: the row memory has :data:`ROW_SLOTS` row slots, so while one row is being
normalized, the next waits for (or is in) its square root and division and the one after
it streams in.  Four slots are what it takes for the slot reuse never to be the bottleneck
(see :func:`layernorm_timing`).
"""
from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, signed, unsigned
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
    "PtfLayerNorm", "layernorm_timing", "layernorm_beats", "ROW_SLOTS", "MAX_CHANNELS_LIMIT",
]

#: Most channels the integer reference's widths allow (the row sum is 24-bit signed).
MAX_CHANNELS_LIMIT = 4096
#: Row slots of the row memory (rows in flight between the two passes).
ROW_SLOTS = 4

# Widths of the reference (sw.intops module docstring), for up to 4096 channels.
_SHIFTED_BITS = 12                                       # xs = (x - zp) << alpha, signed
_SUM_BITS = 24                                           # S, signed
_SUM_SQUARES_BITS = 35                                   # sum xs**2 <= 4096 * 2040**2, unsigned
_MEAN_BITS = 14                                          # mu, signed (enough for |xs - mu| < 2**12)
_SPREAD_BITS = ceil_log2(MAX_CHANNELS_LIMIT + 1) + _MEAN_BITS + 1   # 2 S - C mu, signed
_CENTRED_BITS = 13                                       # d = xs - mu, signed
_Q_BITS = 44 - 2 * intops.LN_SQRT_FRAC                   # Q, unsigned
_RADICAND_BITS = _Q_BITS + 2 * intops.LN_SQRT_FRAC       # Q << 8
_ROOT_BITS = _RADICAND_BITS // 2                         # k = isqrt(Q << 8)
_FACTOR_LOG2 = 31 + intops.LN_SQRT_FRAC                  # factor = 2**35 // k
_FACTOR_BITS = 32                                        # k >= 16 whenever k != 0
_NORM_BITS = 32 - intops.LN_NORM_SHIFT + 1               # n, signed
_MEAN_MULT_BITS = intops.LN_MEAN_SHIFT + 1               # ln_mean_mult(1) = 2**24
_REQUANT_PRODUCT_BITS = _NORM_BITS + intops.REQUANT_MULT_BITS

#: Root and quotient bits computed per cycle by the square root and the divider.
SQRT_STEPS_PER_CYCLE = 2
DIVIDER_STEPS_PER_CYCLE = 2
#: Cycles from accepting a beat to its row sums being accumulated (xs, lane sums, accumulate).
_STATS_PIPELINE = 3
#: States of the finish stage per row: mean, 2 S - C mu, Q << 8, hand-over to the square root.
_FINISH_STATES = 4
#: Cycles the finish stage is claimed per row, from the row's last beat accepted to its
#: radicand accepted by the square root (inclusive), when the square root is free.
_FINISH_CYCLES = _STATS_PIPELINE + _FINISH_STATES
#: Cycles from reading a beat of the row memory to its output beat being valid.
_NORMALIZE_PIPELINE = 4


def layernorm_beats(config: AcceleratorConfig, channels: int) -> int:
    """Beats per row, ``C / L``; raises ``ValueError`` for a channel count the unit cannot run.

    ``channels`` must be a multiple of ``config.vector_lanes`` with
    ``vector_lanes <= channels <= config.max_channels``.
    """
    lanes = config.vector_lanes
    if isinstance(channels, bool) or not isinstance(channels, int):
        raise ValueError(f"channels must be an integer, got {channels!r}")
    if not lanes <= channels <= config.max_channels or channels % lanes:
        raise ValueError(f"channels must be a multiple of vector_lanes ({lanes}) in "
                         f"{lanes}..{config.max_channels} (max_channels), got {channels}")
    return channels // lanes


def layernorm_timing(config: AcceleratorConfig, channels: int) -> UnitTiming:
    """Timing of one row of ``channels`` channels on :class:`PtfLayerNorm`.

    With ``B = C / L`` beats per row, ``R = 12`` and ``V = 19`` the latencies of the square
    root and of the divider (:func:`integer_sqrt_timing`, :func:`integer_divider_timing`)::

        latency  = 2 B + R + V + 9          = 2 B + 40
        interval = max(B, 7, R, V)          = max(B, 19)

    ``latency``: cycles from the row's first input beat accepted to its last output beat
    valid (input never starved, output never stalled).  ``interval``: cycles between the
    first beats of back-to-back rows in steady state; ``7`` is the finish stage's occupancy.
    The row-slot reuse never binds: a slot is held ``2 B + R + V + 6`` cycles, at most
    ``ROW_SLOTS * interval`` for every ``B``.  ``n`` rows streamed back to back take exactly
    ``latency + (n - 1) * interval`` cycles from the first input beat to the last output beat
    (the input may run ahead by a few rows at the start; the total is unchanged).
    """
    beats = layernorm_beats(config, channels)
    sqrt = integer_sqrt_timing(_RADICAND_BITS, SQRT_STEPS_PER_CYCLE)
    divide = integer_divider_timing(_FACTOR_LOG2 + 1, DIVIDER_STEPS_PER_CYCLE)
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
        Uses ``vector_lanes`` (``L``, lanes per beat) and ``max_channels`` (row capacity,
        ``L <= max_channels <= 4096``: the reference's widths hold up to 4096 channels).

    Members
    -------
    i : ``In(stream.Signature(unsigned(8 * L)))``
        Input rows, ``C / L`` beats each; lane ``j`` of beat ``b`` (bits ``8j..8j+7``,
        two's complement) is channel ``b * L + j``.
    o : ``Out(stream.Signature(unsigned(8 * L)))``
        Output rows, same packing, int8.  ``o.ready`` may be low at any time.
    param : ``In(Signature(en, channel, alpha, mult, shift, offset))``
        Per-channel parameter write port: when ``en`` is high, channel ``channel`` gets PTF
        factor ``alpha`` (0..3) and requantizer ``mult`` (int16), ``shift`` (0..63) and
        ``offset`` (int32).  No beat is accepted in a cycle that writes; parameters must not
        change while rows using them are in flight.
    channels : ``In(range(max_channels + 1))``
        ``C``: a multiple of ``L`` in ``L..max_channels`` (:func:`layernorm_beats` checks it;
        other values give meaningless rows).
    zp_in : ``In(signed(8))``
        Input zero point.
    mean_mult : ``In(unsigned(25))``
        :func:`sw.intops.ln_mean_mult` of ``C``.

    ``channels``, ``zp_in`` and ``mean_mult`` are per-tensor registers of the caller: they
    must stay constant while rows are in flight.

    Notes
    -----
    With ``B = C / L``:
    LATENCY (first input beat accepted -> last output beat valid, no stalls): ``2 B + 40``.
    THROUGHPUT: one row every ``max(B, 19)`` cycles, i.e. one beat per cycle once
    ``B >= 19``.  Both are :func:`layernorm_timing`.
    """

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {config!r}")
        lanes = config.vector_lanes
        if not lanes <= config.max_channels <= MAX_CHANNELS_LIMIT:
            raise ConfigError(f"PtfLayerNorm needs vector_lanes ({lanes}) <= max_channels <= "
                              f"{MAX_CHANNELS_LIMIT}, got max_channels={config.max_channels}")
        self._config = config
        super().__init__({
            "i": In(stream.Signature(unsigned(8 * lanes))),
            "o": Out(stream.Signature(unsigned(8 * lanes))),
            "param": In(_param_write_signature(config.max_channels)),
            "channels": In(range(config.max_channels + 1)),
            "zp_in": In(signed(8)),
            "mean_mult": In(unsigned(_MEAN_MULT_BITS)),
        })

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def lanes(self) -> int:
        """``L``: channels per beat."""
        return self._config.vector_lanes

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

        last_beat = Signal(range(depth))
        m.d.comb += last_beat.eq((self.channels >> lane_bits) - 1)
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
        m.d.comb += self.i.ready.eq(primed & ~self.param.en
                                    & (~in_first | (rows_in_flight < ROW_SLOTS))
                                    & (~in_last | ~finish_claimed))
        accept = self.i.valid & self.i.ready
        in_beat_next = Mux(accept, Mux(in_last, 0, in_beat + 1), in_beat)
        m.d.comb += alpha_rd.addr.eq(in_beat_next)
        m.d.sync += in_beat.eq(in_beat_next)
        with m.If(accept & in_last):
            m.d.sync += [
                in_slot.eq(in_slot + 1),
                finish_claimed.eq(1),
            ]

        # Stage 1: shifted inputs, registered with their row-memory address.
        shifted = Signal(data.ArrayLayout(signed(_SHIFTED_BITS), lanes))
        shifted_valid = Signal()
        shifted_first = Signal()
        shifted_last = Signal()
        shifted_addr = Signal(range(ROW_SLOTS * depth))
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
        beat_sum = Signal(signed(_SHIFTED_BITS + lane_bits))
        beat_sum_squares = Signal(unsigned(2 * _SHIFTED_BITS - 2 + lane_bits))
        beat_valid = Signal()
        beat_first = Signal()
        beat_last = Signal()
        m.d.sync += [
            beat_sum.eq(sum(shifted[lane] for lane in range(lanes))),
            beat_sum_squares.eq(sum(shifted[lane] * shifted[lane] for lane in range(lanes))),
            beat_valid.eq(shifted_valid),
            beat_first.eq(shifted_first),
            beat_last.eq(shifted_last),
        ]

        # Stage 3: row accumulators; the last beat hands the row's sums to the finish stage.
        row_sum = Signal(signed(_SUM_BITS))
        row_sum_squares = Signal(unsigned(_SUM_SQUARES_BITS))
        row_sum_next = Mux(beat_first, 0, row_sum) + beat_sum
        row_sum_squares_next = Mux(beat_first, 0, row_sum_squares) + beat_sum_squares
        with m.If(beat_valid):
            m.d.sync += [
                row_sum.eq(row_sum_next),
                row_sum_squares.eq(row_sum_squares_next),
            ]

        # ------------------------------------------------------------------ finish stage
        fin_sum = Signal(signed(_SUM_BITS))
        fin_sum_squares = Signal(unsigned(_SUM_SQUARES_BITS))
        fin_mean = Signal(signed(_MEAN_BITS))
        fin_spread = Signal(signed(_SPREAD_BITS))                       # 2 S - C mu
        fin_slot = Signal(range(ROW_SLOTS))
        radicand = Signal(_RADICAND_BITS)
        row_means = Array(Signal(signed(_MEAN_BITS), name=f"row_mean_{slot}")
                          for slot in range(ROW_SLOTS))

        m.submodules.sqrt = sqrt = IntegerSqrt(_RADICAND_BITS, SQRT_STEPS_PER_CYCLE)
        m.d.comb += sqrt.i.payload.eq(radicand)
        with m.FSM(name="finish"):
            with m.State("IDLE"):
                with m.If(beat_valid & beat_last):
                    m.d.sync += [
                        fin_sum.eq(row_sum_next),
                        fin_sum_squares.eq(row_sum_squares_next),
                    ]
                    m.next = "MEAN"
            with m.State("MEAN"):
                rounded = fin_sum * self.mean_mult + (1 << (intops.LN_MEAN_SHIFT - 1))
                m.d.sync += fin_mean.eq(rounded >> intops.LN_MEAN_SHIFT)
                m.next = "SPREAD"
            with m.State("SPREAD"):
                m.d.sync += [
                    fin_spread.eq((fin_sum << 1) - self.channels * fin_mean),
                    row_means[fin_slot].eq(fin_mean),
                ]
                m.next = "SQUARES"
            with m.State("SQUARES"):
                centred_squares = fin_sum_squares - fin_mean * fin_spread
                m.d.sync += radicand.eq(centred_squares[:_Q_BITS] << (2 * intops.LN_SQRT_FRAC))
                m.next = "OFFER"
            with m.State("OFFER"):
                m.d.comb += sqrt.i.valid.eq(1)
                with m.If(sqrt.i.ready):
                    m.d.sync += [
                        finish_claimed.eq(0),
                        fin_slot.eq(fin_slot + 1),
                    ]
                    m.next = "IDLE"

        # ------------------------------------------------------------------ 1 / sqrt
        m.submodules.divider = divider = IntegerDivider(_FACTOR_LOG2 + 1, _ROOT_BITS,
                                                        DIVIDER_STEPS_PER_CYCLE)
        # A zero root (Q = 0) gets the divider's all-ones quotient instead of the reference's
        # factor 0; it only ever multiplies centred values that are all 0, so n = 0 either way.
        m.d.comb += [
            divider.i.valid.eq(sqrt.o.valid),
            divider.i.payload.dividend.eq(1 << _FACTOR_LOG2),
            divider.i.payload.divisor.eq(sqrt.o.payload),
            sqrt.o.ready.eq(divider.i.ready),
        ]

        # ------------------------------------------------------------------ normalize pass
        advance = ~self.o.valid | self.o.ready          # the whole pipeline moves together
        out_active = Signal()
        out_beat = Signal(range(depth))
        out_slot = Signal(range(ROW_SLOTS))
        next_out_slot = Signal(range(ROW_SLOTS))
        out_mean = Signal(signed(_MEAN_BITS))
        out_factor = Signal(_FACTOR_BITS)
        issue = out_active & advance
        issue_last = issue & (out_beat == last_beat)
        m.d.comb += divider.o.ready.eq(~out_active | issue_last)
        with m.If(issue):
            m.d.sync += out_beat.eq(Mux(issue_last, 0, out_beat + 1))
            with m.If(issue_last):
                m.d.sync += out_active.eq(0)
        with m.If(divider.o.valid & divider.o.ready):
            m.d.sync += [
                out_active.eq(1),
                out_slot.eq(next_out_slot),
                next_out_slot.eq(next_out_slot + 1),
                out_mean.eq(row_means[next_out_slot]),
                out_factor.eq(divider.o.payload[:_FACTOR_BITS]),
            ]

        claim = accept & in_first
        m.d.sync += rows_in_flight.eq(rows_in_flight + claim - issue_last)

        m.d.comb += [
            row_rd.addr.eq(out_slot * depth + out_beat),
            row_rd.en.eq(advance),
            requant_rd.addr.eq(out_beat),
            requant_rd.en.eq(advance),
        ]

        # Stage 1 (memory read in flight): mean and factor of the beat being read.
        read_valid = Signal()
        read_mean = Signal(signed(_MEAN_BITS))
        read_factor = Signal(_FACTOR_BITS)
        # Stage 2: normalised values n and the channels' requantizer parameters.
        norm_valid = Signal()
        norm = Signal(data.ArrayLayout(signed(_NORM_BITS), lanes))
        norm_params = Signal(data.ArrayLayout(_REQUANT_PARAMS, lanes))
        # Stage 3: n * mult.
        prod_valid = Signal()
        prod = Signal(data.ArrayLayout(signed(_REQUANT_PRODUCT_BITS), lanes))
        prod_params = Signal(data.ArrayLayout(_REQUANT_PARAMS, lanes))
        with m.If(advance):
            m.d.sync += [
                read_valid.eq(issue),
                read_mean.eq(out_mean),
                read_factor.eq(out_factor),
                norm_valid.eq(read_valid),
                norm_params.eq(requant_rd.data),
                prod_valid.eq(norm_valid),
                prod_params.eq(norm_params),
                self.o.valid.eq(prod_valid),
            ]
            for lane in range(lanes):
                centred = (row_rd.data[lane] - read_mean)[:_CENTRED_BITS].as_signed()
                scaled = (centred * read_factor) >> intops.LN_NORM_SHIFT
                params = prod_params[lane]
                shift = params.shift
                rounded = Mux(shift == 0, prod[lane],
                              ((prod[lane] >> (shift - 1)[:6]) + 1) >> 1)
                shifted_out = rounded + params.offset
                clamped = Mux(shifted_out > intops.INT8_MAX, intops.INT8_MAX,
                              Mux(shifted_out < intops.INT8_MIN, intops.INT8_MIN, shifted_out))
                m.d.sync += [
                    norm[lane].eq(scaled),
                    prod[lane].eq(norm[lane] * norm_params[lane].mult),
                    self.o.payload[8 * lane:8 * lane + 8].eq(clamped),
                ]
        return m
