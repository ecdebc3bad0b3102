"""Log-Int-Softmax unit: int16 score rows in, 4-bit log2 codes (or uint8 probabilities) out.

The golden model is :mod:`sw.intops`: :func:`~sw.intops.softmax_exp_rows` (row max,
:func:`~sw.intops.int_exp`, 43-bit row sum), then :func:`~sw.intops.lis_codes` (mode
``LIS``, :func:`~sw.intops.lis_softmax`) or the reciprocal-and-multiply of
:func:`~sw.intops.uniform_softmax` (mode ``UNIFORM``).  Every output integer matches them.
"""
from __future__ import annotations

import math
import operator
from functools import reduce

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import AcceleratorConfig
from hw.integer_divider import IntegerDivider, integer_divider_timing
from hw.timing import UnitTiming
from sw.intops import (INT16_MIN, LIS_CODE_BITS, LIS_EXP_N, LIS_SQRT2_Q16, LIS_ZERO_CODE,
                       UNIFORM_RECIP_BITS, lis_exp_constants)

__all__ = ["LisSoftmax", "SoftmaxMode", "softmax_timing", "fill_max_delay", "length_ok", "SOFTMAX_MAX_ROW"]

#: Width of one input score (int16).
SCORE_BITS = 16
#: Width of one output lane (a 4-bit code zero-extended, or a uint8 probability).
OUT_BITS = 8
#: Width of the exponential polynomial ``(r + b_int) * r + c_int``.
POLY_BITS = 16
#: Width of ``e = poly << (LIS_EXP_N - q)``.
EXP_BITS = POLY_BITS + LIS_EXP_N
#: Width of the row sum of ``e`` (the golden model's 43 bits).
SUM_BITS = 43
#: Longest row whose sum is guaranteed to fit ``SUM_BITS``: ``2**(SUM_BITS - EXP_BITS)``.
SOFTMAX_MAX_ROW = 1 << (SUM_BITS - EXP_BITS)
#: Width of ``es = (e * LIS_SQRT2_Q16) >> 16``.
ES_BITS = EXP_BITS + 1
#: Width of the row reciprocal ``2**UNIFORM_RECIP_BITS // sum``.
INV_BITS = UNIFORM_RECIP_BITS + 1
#: ``e * inv <= 2**UNIFORM_RECIP_BITS`` because ``e <= sum``: the product and its rounding
#: term fit this width.
UNIFORM_PRODUCT_BITS = UNIFORM_RECIP_BITS + 1
#: Right shift of ``e * inv`` that leaves an 8-bit probability.
UNIFORM_SHIFT = UNIFORM_RECIP_BITS - OUT_BITS
#: Largest ``frac_bits`` the exponential supports (its clip point is ``-(LIS_EXP_N << frac_bits)``).
MAX_FRAC_BITS = 6
#: Bits of the row reciprocal that can be non-zero: a row's sum is at least its largest
#: element's ``e = c_int << LIS_EXP_N`` (``x - max = 0``), and ``c_int`` is smallest at
#: ``frac_bits = 2`` (92), so ``inv = 2**48 // sum < 2**27``.
INV_MULT_BITS = max(((1 << UNIFORM_RECIP_BITS) // (lis_exp_constants(f)[1] << LIS_EXP_N))
                    .bit_length() for f in range(2, MAX_FRAC_BITS + 1))
#: ``e * inv`` is computed as partial products ``e * inv[k]`` of ``INV_CHUNK``-bit chunks of
#: ``inv``'s low ``INV_MULT_BITS`` bits, registered, then summed in the next stage (the
#: whole 31 x 49-bit product in one stage was the vector engine's critical path on ECP5: six
#: MULT18X18Ds and their adders, 58.88 MHz).  17 bits: an unsigned chunk fits a
#: MULT18X18D's signed 18-bit port.
INV_CHUNK = 17

#: Most compare levels of the row-max tree between two registers.
MAX_TREE_STAGES = 4


def _tree_stages(lanes: int) -> list[int]:
    """Compare levels of each registered stage of the row-max tree over ``lanes`` lanes:
    one level a stage, or evenly grouped into ``MAX_TREE_STAGES`` stages for wider beats."""
    levels = (lanes - 1).bit_length()
    if levels == 0:
        return []
    stages = min(levels, MAX_TREE_STAGES)
    return [levels // stages + (1 if k < levels % stages else 0) for k in range(stages)]


def fill_max_delay(lanes: int) -> int:
    """Cycles from a row's last accepted beat to its row max being usable by the exponential
    pass, beyond the one the unpipelined max took: the masked-beat register, the tree's
    stages and the running-max register, less that one cycle."""
    return len(_tree_stages(lanes)) + 1


#: Cycles from the cycle after a row's last exponential read to the cycle its sum is visible.
EXP_SUM_DELAY = 7
#: Quotient bits per cycle of the row reciprocal's divider.
RECIP_STEPS_PER_CYCLE = 2
#: Cycles from a row's sum being visible to the row being ready to drain, per mode: one
#: leading-one detection (``LIS``), or the divider's latency plus the cycle that stores its
#: quotient (``UNIFORM``).
LIS_PREPARE_CYCLES = 1
UNIFORM_PREPARE_CYCLES = integer_divider_timing(INV_BITS, RECIP_STEPS_PER_CYCLE).latency + 1
#: Cycles from a drain read to its output beat being valid.
DRAIN_DELAY = 7


class SoftmaxMode(enum.IntEnum, shape=1):
    """What the unit outputs per element."""
    #: 4-bit codes of :func:`sw.intops.lis_softmax` (attention ``2**-code``, 15 = zero).
    LIS = 0
    #: uint8 probabilities of :func:`sw.intops.uniform_softmax` (scale ``2**-8``).
    UNIFORM = 1


class _BankState(enum.Enum, shape=2):
    """Life cycle of one bank of the exponential buffer."""
    FREE = 0
    FILLING = 1
    SUMMED = 2
    READY = 3


def _prepare_cycles(mode: SoftmaxMode) -> int:
    return LIS_PREPARE_CYCLES if mode == SoftmaxMode.LIS else UNIFORM_PREPARE_CYCLES


def _interval_overhead(mode: SoftmaxMode) -> int:
    """``ceil(G / 2)``: half of a row's exponential-buffer hold time beyond its ``2 B`` beats."""
    return (EXP_SUM_DELAY + _prepare_cycles(mode) + 1) // 2


def _row_interval(beats: int, mode: SoftmaxMode) -> int:
    """Cycles between the exponential passes of consecutive rows of ``beats`` beats."""
    return max(beats + _interval_overhead(mode), _prepare_cycles(mode))


def _check_config(config) -> AcceleratorConfig:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"an AcceleratorConfig is required, got {config!r}")
    if config.max_seq_len > SOFTMAX_MAX_ROW:
        raise ValueError(f"max_seq_len must be <= {SOFTMAX_MAX_ROW} (the row sum is {SUM_BITS} "
                         f"bits wide), got {config.max_seq_len}")
    return config


#: Bits per group of :func:`_bit_length`'s detector (one LUT4 per output of a group).
_LOD_GROUP = 4


def _bit_length(m: Module, value, width: int, name: str):
    """``int.bit_length`` of an unsigned ``width``-bit value: a leading-one detector.

    Flat rather than a halving search, whose steps each wait for the one before: every
    group of :data:`_LOD_GROUP` bits gives, at once, whether it is nonzero and its own
    length; the highest nonzero group (a prefix OR over the groups) selects its offset plus
    that length, an OR of one-hot terms.  For the 43-bit row sum, 11 cells on Yosys's
    longest path where the search had 20 (the unit's routed critical path on the ECP5,
    docs/BOARDS.md).
    """
    groups = []
    for lo in range(0, width, _LOD_GROUP):
        part = value[lo:min(lo + _LOD_GROUP, width)]
        nz = Signal(name=f"{name}_nz{lo}")
        local = Signal(range(len(part) + 1), name=f"{name}_len{lo}")
        m.d.comb += nz.eq(part != 0)
        for k in range(len(part)):                   # the top set bit of the group is k
            with m.If(part[k]):
                m.d.comb += local.eq(k + 1)
        groups.append((lo, nz, local))
    length = Signal(range(width + 1), name=f"{name}_bits")
    terms = []
    for j, (lo, nz, local) in enumerate(groups):
        higher = [h for _, h, _ in groups[j + 1:]]
        top = Signal(name=f"{name}_top{lo}")
        m.d.comb += top.eq(nz & ~Cat(*higher).any() if higher else nz)
        terms.append(Mux(top, lo + local, 0))
    m.d.comb += length.eq(reduce(operator.or_, terms))      # one term is nonzero
    return length


class _Stage:
    """A pipeline register: ``valid`` is reset, the payload fields are reset-less.

    Nothing reads a payload field without its ``valid``, so the payload needs no reset
    (docs/HARDWARE.md, "Resets").  Fields are read and assigned as on a struct view:
    ``stage.valid``, ``stage.x[lane]``.
    """

    def __init__(self, name: str, fields: dict):
        self.valid = Signal(name=f"{name}_valid")
        self._payload = Signal(data.StructLayout(fields), name=name, reset_less=True)

    def __getattr__(self, field):
        return getattr(self._payload, field)


def _pick(m: Module, bank, banks, name: str):
    """A signal equal to ``banks[bank]`` for a one-bit ``bank``."""
    picked = Signal(banks[0].shape(), name=name)
    m.d.comb += picked.eq(Mux(bank, banks[1].as_value(), banks[0].as_value()))
    return picked


class LisSoftmax(wiring.Component):
    """Softmax of int16 rows of ``N`` scores, ``L = config.norm_unit_lanes`` per beat.

    Three passes per row, each a pipeline stage working on its own row, with a two-bank
    row buffer between consecutive passes (up to four rows in the buffers):

    1. *fill*: input beats are written to the score buffer while the row max is tracked;
    2. *exponential*: the row is read back, ``e = int_exp(x - max)`` computed per element,
       written to the exponential buffer and summed into the 43-bit row sum;
    3. *prepare* then *drain*: once per row, ``bit_length(sum)`` (``LIS``) or the reciprocal
       ``2**48 // sum`` by a :class:`hw.integer_divider.IntegerDivider` with
       ``RECIP_STEPS_PER_CYCLE = 2`` quotient bits per cycle (``UNIFORM``); then the row is
       read back and each element turned into its code ``lis_codes(e, sum)`` (two
       leading-one detectors, a shift and a compare) or its probability
       ``min((e * inv + 2**39) >> 40, 255)``.  No per-element divider.

    Parameters
    ----------
    config : :class:`hw.config.AcceleratorConfig`
        Uses ``norm_unit_lanes`` (``L``: ``norm_lanes``, or ``vector_lanes`` when that is 0)
        and ``max_seq_len`` (longest row, at most
        ``SOFTMAX_MAX_ROW = 4096`` so that the row sum fits 43 bits).

    Members
    -------
    i : ``In(stream.Signature(unsigned(16 * L)))``
        Scores, int16 lane ``k`` in bits ``[16k, 16k + 16)``.  A row is ``B = ceil(N / L)``
        beats; element ``j`` of the row is lane ``j % L`` of beat ``j // L``.  The padding
        lanes of a partial last beat are ignored (any value).
    o : ``Out(stream.Signature(unsigned(8 * L)))``
        ``B`` beats per row, in row order, lane ``k`` in bits ``[8k, 8k + 8)``: the code
        (0..15, upper four bits zero) in ``LIS`` mode, the probability (0..255) in
        ``UNIFORM`` mode.  Padding lanes carry the "zero attention" value: code 15 in
        ``LIS`` mode, probability 0 in ``UNIFORM`` mode.
    length : ``In(range(max_seq_len + 1))``
        Row length ``N``, ``1 <= N <= max_seq_len``.
    frac_bits, b_int, c_int : ``In(range(8))``, ``In(16)``, ``In(16)``
        Input scale ``ln(2) / 2**frac_bits`` (``frac_bits`` in 2..6) and the exponential's
        constants, ``(b_int, c_int) = sw.intops.lis_exp_constants(frac_bits)``.
    mode : ``In(SoftmaxMode)``
        ``LIS`` or ``UNIFORM``.

    ``length``, ``frac_bits``, ``b_int``, ``c_int`` and ``mode`` are sampled with the first
    beat of each row and apply to that whole row, so consecutive rows may differ.  Out of
    range values give unspecified results (the golden model raises on them).

    Latency and throughput
    ----------------------
    For rows of ``B = ceil(N / L)`` beats, input beats back to back and the output never
    stalled, a row's passes take: fill ``B`` cycles, its row max usable ``D`` cycles later
    than the cycle after the last beat (``D = fill_max_delay(L)``: the masked beat's
    register, one register per stage of the max tree (one compare level a stage, at most
    ``MAX_TREE_STAGES = 4`` stages) and the running max's: ``D = 3`` for ``L = 4``, ``5``
    for ``L = 16``); exponential ``B`` reads, its sum
    visible ``EXP_SUM_DELAY = 7`` cycles after the last; prepare ``R = 1`` cycle (``LIS``)
    or ``R = 27`` (``UNIFORM``: 25 divider cycles, the operand and the result cycles);
    drain ``B`` reads, each output beat ``DRAIN_DELAY = 7`` cycles after its read.  With
    ``G = 7 + R`` (8 or 34):

    * LATENCY (first input beat to last output beat, both cycles counted):
      ``3 B + G + 7 + D``, i.e. ``3 B + 15 + D`` (``LIS``) and ``3 B + 41 + D`` (``UNIFORM``);
    * interval between rows: ``max(B + ceil(G / 2), R)``, i.e. ``B + 4`` (``LIS``) and
      ``max(B + 17, 27)`` (``UNIFORM``).  THROUGHPUT ``L * B / interval`` elements per
      cycle (``L N / (B + 4)`` in ``LIS`` mode).

    The interval is set by the two-bank exponential buffer: a row holds its bank from the
    first read of its exponential pass to the last read of its drain, ``2 B + G`` cycles,
    so two rows cannot take less than ``2 B + G``.  (The row max's delay ``D`` does not
    change the interval: a later row's fill ends ``2 (interval - B) >= 8`` cycles before its
    exponential pass is due, and ``D <= 5``.)  Left free, the schedule would alternate
    intervals of ``B`` and ``B + G``; instead the exponential pass starts a row at most
    every ``max(B + ceil(G / 2), R)`` cycles, which spreads the cost evenly: row ``k``'s
    last output beat comes exactly ``latency + k * interval - 1`` cycles after row 0's
    first input beat.  The first two rows' inputs are accepted back to back (``B`` cycles
    apart, into free buffers), later rows' inputs one interval apart.  These figures hold
    for consecutive rows of one length and one mode.  An output stall holds the drain
    pipeline (``o.ready`` low never loses a beat) and, once the buffers are full, the
    input.  See :func:`softmax_timing`.

    Storage: the score buffer is ``2 * 2**ceil(log2(ceil(max_seq_len / L)))`` words of
    ``16 L`` bits, the exponential buffer as many words of ``31 L`` bits.
    """

    def __init__(self, config: AcceleratorConfig):
        config = _check_config(config)
        self._lanes = config.norm_unit_lanes
        self._max_seq_len = config.max_seq_len
        super().__init__({
            "i": In(stream.Signature(unsigned(SCORE_BITS * self._lanes))),
            "o": Out(stream.Signature(unsigned(OUT_BITS * self._lanes))),
            "length": In(range(self._max_seq_len + 1)),
            "frac_bits": In(range(MAX_FRAC_BITS + 2)),
            "b_int": In(16),
            "c_int": In(POLY_BITS),
            "mode": In(SoftmaxMode),
        })

    @property
    def lanes(self) -> int:
        """Elements per beat (``L``)."""
        return self._lanes

    @property
    def max_seq_len(self) -> int:
        """Longest row the buffers hold."""
        return self._max_seq_len

    @property
    def max_beats(self) -> int:
        """Beats of the longest row: ``ceil(max_seq_len / L)``."""
        return math.ceil(self._max_seq_len / self._lanes)

    def elaborate(self, platform):
        m = Module()
        lanes = self._lanes
        lane_bits = (lanes - 1).bit_length()
        beat_shape = range(self.max_beats)
        beat_bits = (self.max_beats - 1).bit_length()
        depth = 2 << beat_bits

        def wire(shape, value, name):
            """A combinational signal named ``name`` driven by ``value``."""
            signal = Signal(shape, name=name)
            m.d.comb += signal.eq(value)
            return signal

        def beats_of(length):
            """Index of the last beat of a row of ``length`` elements."""
            return (length - 1) >> lane_bits

        def lane_mask(length, is_last_beat):
            """Lanes holding elements: all but the padding of a partial last beat."""
            tail = (length - 1)[:lane_bits]
            return Cat(~is_last_beat | (lane <= tail) for lane in range(lanes))

        # ------------------------------------------------------------ buffers and row state
        x_mem = Memory(shape=unsigned(SCORE_BITS * lanes), depth=depth, init=[])
        e_mem = Memory(shape=unsigned(EXP_BITS * lanes), depth=depth, init=[])
        m.submodules.score_buffer = x_mem
        m.submodules.exp_buffer = e_mem
        x_write = x_mem.write_port()
        x_read = x_mem.read_port()
        e_write = e_mem.write_port()
        e_read = e_mem.read_port()

        # A row's last beat index and its exponential pass's interval less one (``gap``) are
        # computed from the length and mode when its first beat is accepted, so the
        # exponential pass loads its interval counter from a register.
        max_interval = max(_row_interval(self.max_beats, mode) for mode in SoftmaxMode)
        score_row_layout = data.StructLayout({
            "length": self.length.shape(), "frac_bits": self.frac_bits.shape(),
            "b_int": self.b_int.shape(), "c_int": self.c_int.shape(),
            "mode": SoftmaxMode, "max": signed(SCORE_BITS),
            "last_beat": beat_shape, "gap": range(max_interval),
        })
        exp_row_layout = data.StructLayout({
            "length": self.length.shape(), "last_beat": beat_shape,
            "mode": SoftmaxMode, "sum": unsigned(SUM_BITS),
            "sum_bits": range(SUM_BITS + 1), "inv": unsigned(INV_MULT_BITS),
        })
        # A bank's row fields are written before its flags (score_full, score_maxed,
        # exp_state) let anything read them: they are reset-less, the flags are reset.
        score_rows = [Signal(score_row_layout, name=f"score_row_{b}", reset_less=True)
                      for b in range(2)]
        score_full = [Signal(name=f"score_full_{b}") for b in range(2)]
        # The bank's row max is written (FILL_MAX_DELAY cycles after score_full).
        score_maxed = [Signal(name=f"score_maxed_{b}") for b in range(2)]
        exp_rows = [Signal(exp_row_layout, name=f"exp_row_{b}", reset_less=True)
                    for b in range(2)]
        exp_state = [Signal(_BankState, name=f"exp_state_{b}") for b in range(2)]

        def state_of(bank):
            return Mux(bank, exp_state[1].as_value(), exp_state[0].as_value())

        # _row_interval - 1 in hardware for a row of self.length (B - 1 = its last beat
        # index): LIS (B - 1) + overhead (its 1-cycle floor never binds), UNIFORM
        # max((B - 1) + overhead, floor - 1), the max decided on B - 1 against a constant,
        # beside the adds (one carry chain after B - 1, not four in a row).
        in_last_beat = wire(beat_shape, beats_of(self.length), "in_last_beat")
        uniform_overhead = _interval_overhead(SoftmaxMode.UNIFORM)
        uniform_floor = _prepare_cycles(SoftmaxMode.UNIFORM)
        in_gap = Mux(self.mode == SoftmaxMode.LIS,
                     in_last_beat + _interval_overhead(SoftmaxMode.LIS),
                     Mux(in_last_beat > uniform_floor - 1 - uniform_overhead,
                         in_last_beat + uniform_overhead, uniform_floor - 1))

        # ------------------------------------------------------------ pass 1: fill + row max
        fill_bank = Signal()
        fill_beat = Signal(beat_shape)
        fill_max = Signal(signed(SCORE_BITS))
        fill_row = _pick(m, fill_bank, score_rows, "fill_row")
        fill_first = wire(1, fill_beat == 0, "fill_first")
        fill_length = wire(self.length.shape(), Mux(fill_first, self.length, fill_row.length),
                           "fill_length")
        fill_last = wire(1, fill_beat == beats_of(fill_length), "fill_last")
        fill_mask = wire(lanes, lane_mask(fill_length, fill_last), "fill_mask")
        accept = self.i.valid & self.i.ready

        # The row max is pipelined (FILL_MAX_DELAY cycles after a row's last accepted beat):
        # the masked beat is registered, the lanes are reduced by a tree with a register
        # after each of its stages, and the running row max is one compare a cycle.
        masked = _Stage("masked", {
            "first": 1, "last": 1, "bank": 1,
            "x": data.ArrayLayout(signed(SCORE_BITS), lanes),
        })
        m.d.sync += [masked.valid.eq(accept), masked.first.eq(fill_first),
                     masked.last.eq(fill_last), masked.bank.eq(fill_bank)]
        for lane in range(lanes):
            m.d.sync += masked.x[lane].eq(
                Mux(fill_mask[lane], self.i.payload.word_select(lane, SCORE_BITS).as_signed(),
                    INT16_MIN))
        flags = {"valid": masked.valid, "first": masked.first, "last": masked.last,
                 "bank": masked.bank}
        candidates = [masked.x[lane] for lane in range(lanes)]
        for stage, levels in enumerate(_tree_stages(lanes)):
            for level in range(levels):
                candidates = [wire(signed(SCORE_BITS), Mux(a > b, a, b), f"max_s{stage}_{level}_{n}")
                              for n, (a, b) in enumerate(zip(candidates[::2], candidates[1::2]))]
            regs = [Signal(signed(SCORE_BITS), name=f"max_r{stage}_{n}", reset_less=True)
                    for n in range(len(candidates))]
            m.d.sync += [r.eq(c) for r, c in zip(regs, candidates)]
            new_flags = {k: Signal(name=f"max_r{stage}_{k}", reset_less=k != "valid")
                         for k in flags}
            m.d.sync += [new_flags[k].eq(v) for k, v in flags.items()]
            candidates, flags = regs, new_flags
        beat_max = candidates[0]
        row_max = Signal(signed(SCORE_BITS))
        m.d.comb += [
            row_max.eq(Mux(flags["first"] | (beat_max > fill_max), beat_max, fill_max)),
            self.i.ready.eq(~Mux(fill_bank, score_full[1], score_full[0])),
            x_write.addr.eq(Cat(fill_beat, fill_bank)),
            x_write.data.eq(self.i.payload),
            x_write.en.eq(accept),
        ]
        with m.If(flags["valid"]):
            m.d.sync += fill_max.eq(row_max)
        with m.If(accept):
            with m.If(fill_last):
                m.d.sync += [fill_beat.eq(0), fill_bank.eq(~fill_bank)]
            with m.Else():
                m.d.sync += fill_beat.eq(fill_beat + 1)
        for bank in range(2):
            with m.If(accept & (fill_bank == bank)):
                with m.If(fill_first):
                    m.d.sync += [
                        score_rows[bank].length.eq(self.length),
                        score_rows[bank].frac_bits.eq(self.frac_bits),
                        score_rows[bank].b_int.eq(self.b_int),
                        score_rows[bank].c_int.eq(self.c_int),
                        score_rows[bank].mode.eq(self.mode),
                        score_rows[bank].last_beat.eq(in_last_beat),
                        score_rows[bank].gap.eq(in_gap),
                    ]
                with m.If(fill_last):
                    m.d.sync += score_full[bank].eq(1)
            with m.If(flags["valid"] & flags["last"] & (flags["bank"] == bank)):
                m.d.sync += [score_rows[bank].max.eq(row_max), score_maxed[bank].eq(1)]

        # ------------------------------------------------------------ pass 2: exp + row sum
        exp_bank = Signal()
        exp_beat = Signal(beat_shape)
        exp_gap = Signal(range(max_interval))
        exp_row = _pick(m, exp_bank, score_rows, "exp_row")
        exp_start = wire(1, (exp_beat == 0) & Mux(exp_bank, score_maxed[1], score_maxed[0])
                     & (state_of(exp_bank) == _BankState.FREE) & (exp_gap == 0), "exp_start")
        exp_issue = wire(1, exp_start | (exp_beat != 0), "exp_issue")
        exp_last = wire(1, exp_beat == exp_row.last_beat, "exp_last")
        m.d.comb += [x_read.addr.eq(Cat(exp_beat, exp_bank)), x_read.en.eq(1)]

        with m.If(exp_start):
            m.d.sync += exp_gap.eq(exp_row.gap)
        with m.Elif(exp_gap != 0):
            m.d.sync += exp_gap.eq(exp_gap - 1)
        with m.If(exp_issue):
            with m.If(exp_last):
                m.d.sync += [exp_beat.eq(0), exp_bank.eq(~exp_bank)]
            with m.Else():
                m.d.sync += exp_beat.eq(exp_beat + 1)
        for bank in range(2):
            with m.If(exp_issue & exp_last & (exp_bank == bank)):
                m.d.sync += [score_full[bank].eq(0), score_maxed[bank].eq(0)]
            with m.If(exp_start & (exp_bank == bank)):
                m.d.sync += [
                    exp_state[bank].eq(_BankState.FILLING),
                    exp_rows[bank].length.eq(exp_row.length),
                    exp_rows[bank].last_beat.eq(exp_row.last_beat),
                    exp_rows[bank].mode.eq(exp_row.mode),
                ]

        # Stage "read": the score word arrives from memory; the row's parameters travel along.
        read_stage = _Stage("read_stage", {
            "last": 1, "bank": 1, "beat": beat_shape, "mask": lanes,
            "max": signed(SCORE_BITS), "frac_bits": self.frac_bits.shape(),
            "b_int": self.b_int.shape(), "c_int": self.c_int.shape(),
        })
        m.d.sync += [
            read_stage.valid.eq(exp_issue), read_stage.last.eq(exp_last),
            read_stage.bank.eq(exp_bank), read_stage.beat.eq(exp_beat),
            read_stage.mask.eq(lane_mask(exp_row.length, exp_last)),
            read_stage.max.eq(exp_row.max), read_stage.frac_bits.eq(exp_row.frac_bits),
            read_stage.b_int.eq(exp_row.b_int), read_stage.c_int.eq(exp_row.c_int),
        ]

        # Stage "load": the score word registered (the block RAM's output is slow), the row's
        # parameters along with it.
        load_stage = _Stage("load_stage", {
            "last": 1, "bank": 1, "beat": beat_shape, "mask": lanes,
            "max": signed(SCORE_BITS), "frac_bits": self.frac_bits.shape(),
            "b_int": self.b_int.shape(), "c_int": self.c_int.shape(),
            "x": unsigned(SCORE_BITS * lanes),
        })
        m.d.sync += [
            load_stage.valid.eq(read_stage.valid), load_stage.last.eq(read_stage.last),
            load_stage.bank.eq(read_stage.bank), load_stage.beat.eq(read_stage.beat),
            load_stage.mask.eq(read_stage.mask), load_stage.max.eq(read_stage.max),
            load_stage.frac_bits.eq(read_stage.frac_bits),
            load_stage.b_int.eq(read_stage.b_int), load_stage.c_int.eq(read_stage.c_int),
            load_stage.x.eq(x_read.data),
        ]

        # Stage "split": x - max = -(q * 2**frac_bits + r_mag), clipped at -(15 << frac_bits).
        mag_shape = unsigned((LIS_EXP_N << MAX_FRAC_BITS).bit_length())
        split_stage = _Stage("split_stage", {
            "last": 1, "bank": 1, "beat": beat_shape, "mask": lanes,
            "b_int": self.b_int.shape(), "c_int": self.c_int.shape(),
            "q": data.ArrayLayout(range(LIS_EXP_N + 1), lanes),
            "r_mag": data.ArrayLayout(unsigned(MAX_FRAC_BITS), lanes),
        })
        clip = Signal(mag_shape)
        m.d.comb += clip.eq(Const(LIS_EXP_N, 4) << load_stage.frac_bits)
        m.d.sync += [
            split_stage.valid.eq(load_stage.valid), split_stage.last.eq(load_stage.last),
            split_stage.bank.eq(load_stage.bank), split_stage.beat.eq(load_stage.beat),
            split_stage.mask.eq(load_stage.mask),
            split_stage.b_int.eq(load_stage.b_int), split_stage.c_int.eq(load_stage.c_int),
        ]
        for lane in range(lanes):
            x = load_stage.x.word_select(lane, SCORE_BITS).as_signed()
            below_max = Signal(unsigned(SCORE_BITS + 1), name=f"below_max_{lane}")
            mag = Signal(mag_shape, name=f"exp_mag_{lane}")
            m.d.comb += [
                below_max.eq(load_stage.max - x),
                mag.eq(Mux(below_max > clip, clip, below_max)),
            ]
            m.d.sync += [
                split_stage.q[lane].eq(mag >> load_stage.frac_bits),
                split_stage.r_mag[lane].eq(mag & ((Const(1, 1) << load_stage.frac_bits) - 1)),
            ]

        # Stage "product": r_mag * (b_int - r_mag), registered apart from the subtraction
        # from c_int (subtract, multiply and subtract in one stage was 28 logic levels, the
        # core's slowest path on ECP5 with the LayerNorm's).
        product_stage = _Stage("product_stage", {
            "last": 1, "bank": 1, "beat": beat_shape, "mask": lanes,
            "q": data.ArrayLayout(range(LIS_EXP_N + 1), lanes),
            "c_int": POLY_BITS,
            "product": data.ArrayLayout(unsigned(POLY_BITS), lanes),
        })
        m.d.sync += [
            product_stage.valid.eq(split_stage.valid), product_stage.last.eq(split_stage.last),
            product_stage.bank.eq(split_stage.bank), product_stage.beat.eq(split_stage.beat),
            product_stage.mask.eq(split_stage.mask), product_stage.q.eq(split_stage.q),
            product_stage.c_int.eq(split_stage.c_int),
        ]
        for lane in range(lanes):
            r_mag = split_stage.r_mag[lane]
            m.d.sync += product_stage.product[lane].eq(r_mag * (split_stage.b_int - r_mag))

        # Stage "poly": (r + b_int) * r + c_int = c_int - r_mag * (b_int - r_mag).
        poly_stage = _Stage("poly_stage", {
            "last": 1, "bank": 1, "beat": beat_shape, "mask": lanes,
            "q": data.ArrayLayout(range(LIS_EXP_N + 1), lanes),
            "poly": data.ArrayLayout(unsigned(POLY_BITS), lanes),
        })
        m.d.sync += [
            poly_stage.valid.eq(product_stage.valid), poly_stage.last.eq(product_stage.last),
            poly_stage.bank.eq(product_stage.bank), poly_stage.beat.eq(product_stage.beat),
            poly_stage.mask.eq(product_stage.mask), poly_stage.q.eq(product_stage.q),
        ]
        for lane in range(lanes):
            m.d.sync += poly_stage.poly[lane].eq(
                product_stage.c_int - product_stage.product[lane])

        # Stage "exp": e = poly << (15 - q); padding lanes get e = 0.
        exp_stage = _Stage("exp_stage", {
            "last": 1, "bank": 1, "beat": beat_shape,
            "e": data.ArrayLayout(unsigned(EXP_BITS), lanes),
        })
        m.d.sync += [
            exp_stage.valid.eq(poly_stage.valid), exp_stage.last.eq(poly_stage.last),
            exp_stage.bank.eq(poly_stage.bank), exp_stage.beat.eq(poly_stage.beat),
        ]
        for lane in range(lanes):
            shift = (LIS_EXP_N - poly_stage.q[lane]).as_unsigned()
            m.d.sync += exp_stage.e[lane].eq(
                Mux(poly_stage.mask[lane], poly_stage.poly[lane] << shift, 0))

        # Write e to the exponential buffer; the beat's sum is registered ("sum" stage), then
        # accumulated into the row sum.
        sum_stage = _Stage("sum_stage", {
            "last": 1, "bank": 1, "beat_sum": unsigned(EXP_BITS + lane_bits)})
        m.d.sync += [
            sum_stage.valid.eq(exp_stage.valid), sum_stage.last.eq(exp_stage.last),
            sum_stage.bank.eq(exp_stage.bank),
            sum_stage.beat_sum.eq(sum(exp_stage.e[lane] for lane in range(lanes))),
        ]
        sum_acc = Signal(SUM_BITS)
        row_sum = Signal(SUM_BITS)
        m.d.comb += [
            e_write.addr.eq(Cat(exp_stage.beat, exp_stage.bank)),
            e_write.data.eq(exp_stage.e.as_value()),
            e_write.en.eq(exp_stage.valid),
            row_sum.eq(sum_acc + sum_stage.beat_sum),
        ]
        with m.If(sum_stage.valid):
            m.d.sync += sum_acc.eq(Mux(sum_stage.last, 0, row_sum))
        for bank in range(2):
            with m.If(sum_stage.valid & sum_stage.last & (sum_stage.bank == bank)):
                m.d.sync += [exp_rows[bank].sum.eq(row_sum),
                             exp_state[bank].eq(_BankState.SUMMED)]

        # ------------------------------------------------------------ prepare: per-row constants
        m.submodules.reciprocal = reciprocal = IntegerDivider(INV_BITS, SUM_BITS,
                                                              RECIP_STEPS_PER_CYCLE)
        prep_bank = Signal()
        prep_waiting = Signal()
        prep_row = _pick(m, prep_bank, exp_rows, "prep_row")
        prep_summed = (state_of(prep_bank) == _BankState.SUMMED) & ~prep_waiting
        prep_lis = prep_summed & (prep_row.mode == SoftmaxMode.LIS)
        prep_uniform = prep_waiting & reciprocal.o.valid
        m.d.comb += [
            reciprocal.i.payload.dividend.eq(1 << UNIFORM_RECIP_BITS),
            reciprocal.i.payload.divisor.eq(prep_row.sum),
            reciprocal.i.valid.eq(prep_summed & (prep_row.mode == SoftmaxMode.UNIFORM)),
            reciprocal.o.ready.eq(prep_waiting),
        ]
        with m.If(reciprocal.i.valid & reciprocal.i.ready):
            m.d.sync += prep_waiting.eq(1)
        with m.If(prep_uniform):
            m.d.sync += prep_waiting.eq(0)
        with m.If(prep_lis | prep_uniform):
            m.d.sync += prep_bank.eq(~prep_bank)
        # One leading-one detector per bank, on the stored sums, and the bank's length picked
        # after them: the 43-bit bank mux ahead of one detector was the unit's critical path.
        bank_sum_bits = [_bit_length(m, exp_rows[bank].sum, SUM_BITS, f"row_sum_{bank}")
                         for bank in range(2)]
        prep_sum_bits = Mux(prep_bank, bank_sum_bits[1], bank_sum_bits[0])
        for bank in range(2):
            with m.If(prep_bank == bank):
                with m.If(prep_lis):
                    m.d.sync += exp_rows[bank].sum_bits.eq(prep_sum_bits)
                with m.If(prep_uniform):
                    m.d.sync += exp_rows[bank].inv.eq(reciprocal.o.payload)
                with m.If(prep_lis | prep_uniform):
                    m.d.sync += exp_state[bank].eq(_BankState.READY)

        # ------------------------------------------------------------ pass 3: drain
        # The drain pipeline moves whenever its output register is empty or being emptied.
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        drain_bank = Signal()
        drain_beat = Signal(beat_shape)
        drain_row = _pick(m, drain_bank, exp_rows, "drain_row")
        drain_issue = wire(1, advance & (state_of(drain_bank) == _BankState.READY), "drain_issue")
        drain_last = wire(1, drain_beat == drain_row.last_beat, "drain_last")
        m.d.comb += [e_read.addr.eq(Cat(drain_beat, drain_bank)), e_read.en.eq(advance)]
        with m.If(drain_issue):
            with m.If(drain_last):
                m.d.sync += [drain_beat.eq(0), drain_bank.eq(~drain_bank)]
            with m.Else():
                m.d.sync += drain_beat.eq(drain_beat + 1)
        for bank in range(2):
            with m.If(drain_issue & drain_last & (drain_bank == bank)):
                m.d.sync += exp_state[bank].eq(_BankState.FREE)

        # The drain pipeline, every stage held while the output is refused: "fetch" (the
        # exponential word arrives), "scale" (e registered), "mult" (es = e * sqrt2 >> 16
        # and the partial products e * inv[k]), "product" (e * inv), "bits" (bit_length(es),
        # the rounded probability), "shift" (diff = sum_bits - bit_length(es), es << diff),
        # then the output register.
        chunks = -(-INV_MULT_BITS // INV_CHUNK)
        row_constants = {"mode": SoftmaxMode, "sum": unsigned(SUM_BITS),
                         "sum_bits": range(SUM_BITS + 1), "inv": unsigned(INV_MULT_BITS)}
        fetch_stage = _Stage("fetch_stage", {**row_constants})
        scale_stage = _Stage("scale_stage", {
            **row_constants, "e": data.ArrayLayout(unsigned(EXP_BITS), lanes)})
        mult_stage = _Stage("mult_stage", {
            "mode": SoftmaxMode, "sum": unsigned(SUM_BITS),
            "sum_bits": range(SUM_BITS + 1),
            "es": data.ArrayLayout(unsigned(ES_BITS), lanes),
            "partial": data.ArrayLayout(data.ArrayLayout(unsigned(EXP_BITS + INV_CHUNK), chunks),
                                        lanes),
        })
        product_stage = _Stage("product_stage", {
            "mode": SoftmaxMode, "sum": unsigned(SUM_BITS),
            "sum_bits": range(SUM_BITS + 1),
            "es": data.ArrayLayout(unsigned(ES_BITS), lanes),
            "product": data.ArrayLayout(unsigned(UNIFORM_PRODUCT_BITS), lanes),
        })
        bits_stage = _Stage("bits_stage", {
            "mode": SoftmaxMode, "sum": unsigned(SUM_BITS),
            "sum_bits": range(SUM_BITS + 1),
            "es": data.ArrayLayout(unsigned(ES_BITS), lanes),
            "es_bits": data.ArrayLayout(range(ES_BITS + 1), lanes),
            "prob": data.ArrayLayout(unsigned(OUT_BITS), lanes),
        })
        shift_stage = _Stage("shift_stage", {
            "mode": SoftmaxMode, "sum": unsigned(SUM_BITS),
            "zero": lanes, "negative": lanes,
            "diff": data.ArrayLayout(unsigned(LIS_CODE_BITS), lanes),
            "shifted": data.ArrayLayout(unsigned(ES_BITS + (1 << LIS_CODE_BITS) - 1), lanes),
            "prob": data.ArrayLayout(unsigned(OUT_BITS), lanes),
        })
        with m.If(advance):
            m.d.sync += [
                fetch_stage.valid.eq(drain_issue), fetch_stage.mode.eq(drain_row.mode),
                fetch_stage.sum.eq(drain_row.sum), fetch_stage.sum_bits.eq(drain_row.sum_bits),
                fetch_stage.inv.eq(drain_row.inv),
                scale_stage.valid.eq(fetch_stage.valid), scale_stage.mode.eq(fetch_stage.mode),
                scale_stage.sum.eq(fetch_stage.sum), scale_stage.inv.eq(fetch_stage.inv),
                scale_stage.sum_bits.eq(fetch_stage.sum_bits),
                mult_stage.valid.eq(scale_stage.valid), mult_stage.mode.eq(scale_stage.mode),
                mult_stage.sum.eq(scale_stage.sum), mult_stage.sum_bits.eq(scale_stage.sum_bits),
                product_stage.valid.eq(mult_stage.valid), product_stage.mode.eq(mult_stage.mode),
                product_stage.sum.eq(mult_stage.sum), product_stage.sum_bits.eq(mult_stage.sum_bits),
                product_stage.es.eq(mult_stage.es),
                bits_stage.valid.eq(product_stage.valid), bits_stage.mode.eq(product_stage.mode),
                bits_stage.sum.eq(product_stage.sum), bits_stage.sum_bits.eq(product_stage.sum_bits),
                bits_stage.es.eq(product_stage.es),
                shift_stage.valid.eq(bits_stage.valid), shift_stage.mode.eq(bits_stage.mode),
                shift_stage.sum.eq(bits_stage.sum), shift_stage.prob.eq(bits_stage.prob),
                self.o.valid.eq(shift_stage.valid),
            ]
            for lane in range(lanes):
                e = scale_stage.e[lane]
                m.d.sync += [
                    scale_stage.e[lane].eq(e_read.data.word_select(lane, EXP_BITS)),
                    mult_stage.es[lane].eq((e * LIS_SQRT2_Q16) >> 16),
                    # e * inv <= 2**48 (e <= sum): the sum of the partials, truncated to
                    # UNIFORM_PRODUCT_BITS, is exact (inv's bits from INV_MULT_BITS are 0).
                    product_stage.product[lane].eq(sum(
                        mult_stage.partial[lane][k] << (INV_CHUNK * k) for k in range(chunks))),
                ]
                for k in range(chunks):
                    m.d.sync += mult_stage.partial[lane][k].eq(
                        e * scale_stage.inv[INV_CHUNK * k:INV_CHUNK * (k + 1)])

        for lane in range(lanes):
            es = product_stage.es[lane]
            es_bits = _bit_length(m, es, ES_BITS, f"es_{lane}")
            rounded = Signal(UNIFORM_PRODUCT_BITS - UNIFORM_SHIFT, name=f"prob_{lane}")
            m.d.comb += rounded.eq((product_stage.product[lane] + (1 << (UNIFORM_SHIFT - 1)))
                                   >> UNIFORM_SHIFT)
            diff = Signal(signed(8), name=f"code_diff_{lane}")
            m.d.comb += diff.eq(bits_stage.sum_bits - bits_stage.es_bits[lane])
            code = Signal(LIS_CODE_BITS, name=f"code_{lane}")
            m.d.comb += code.eq(Mux(shift_stage.zero[lane], LIS_ZERO_CODE,
                                    Mux(shift_stage.negative[lane], 0,
                                        shift_stage.diff[lane]
                                        + (shift_stage.shifted[lane] <= shift_stage.sum))))
            with m.If(advance):
                m.d.sync += [
                    bits_stage.es_bits[lane].eq(es_bits),
                    bits_stage.prob[lane].eq(Mux(rounded > 255, 255, rounded)),
                    shift_stage.zero[lane].eq((bits_stage.es[lane] == 0)
                                              | (diff >= LIS_ZERO_CODE)),
                    shift_stage.negative[lane].eq(diff < 0),
                    shift_stage.diff[lane].eq(diff[:LIS_CODE_BITS]),
                    shift_stage.shifted[lane].eq(bits_stage.es[lane] << diff[:LIS_CODE_BITS]),
                    self.o.payload.word_select(lane, OUT_BITS).eq(
                        Mux(shift_stage.mode == SoftmaxMode.LIS, code, shift_stage.prob[lane])),
                ]
        return m


def length_ok(config: AcceleratorConfig, length):
    """Whether the unit runs rows of ``length`` scores, ``1 .. max_seq_len``: an int (a bool
    results) or an Amaranth value (a 1-bit value: the accelerator's decoder checks it)."""
    return (length >= 1) & (length <= config.max_seq_len)


def softmax_timing(config: AcceleratorConfig, length: int,
                   mode: SoftmaxMode | str = SoftmaxMode.LIS) -> UnitTiming:
    """Timing of one softmax row of ``length`` elements on :class:`LisSoftmax`.

    With ``B = ceil(length / L)`` beats, ``R = 1`` (``LIS``) or ``R = 27`` (``UNIFORM``)
    prepare cycles, ``G = 7 + R`` and the row max's delay ``D = fill_max_delay(L)``:
    LATENCY ``3 B + G + 7 + D`` cycles (first input beat to last output beat, both
    counted), interval ``max(B + ceil(G / 2), R)``: ``3 B + 15 + D`` and ``B + 4`` (``LIS``),
    ``3 B + 41 + D`` and ``max(B + 17, 27)`` (``UNIFORM``).  ``mode`` is a
    :class:`SoftmaxMode` or ``"lis"`` / ``"uniform"``.
    """
    config = _check_config(config)
    if isinstance(mode, str):
        try:
            mode = SoftmaxMode[mode.upper()]
        except KeyError:
            raise ValueError(f"mode must be 'lis' or 'uniform', got {mode!r}") from None
    if not isinstance(mode, SoftmaxMode):
        raise ValueError(f"mode must be a SoftmaxMode, got {mode!r}")
    if isinstance(length, bool) or not isinstance(length, int) \
            or not 1 <= length <= config.max_seq_len:
        raise ValueError(f"length must be an integer in 1..{config.max_seq_len}, got {length!r}")
    beats = math.ceil(length / config.norm_unit_lanes)
    prepare = _prepare_cycles(mode)
    latency = 3 * beats + EXP_SUM_DELAY + prepare + DRAIN_DELAY + fill_max_delay(config.norm_unit_lanes)
    return UnitTiming(latency=latency, interval=_row_interval(beats, mode))
