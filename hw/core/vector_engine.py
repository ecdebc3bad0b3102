"""The vector engine: REQUANT, SOFTMAX, LAYERNORM, ADD, GELU and GELU_TABLE.

One instruction at a time.  Its memories are private (docs/ACCELERATOR.md): it reads
``vin``, ``vin2``, ``acc``, ``attn_acc`` and ``param`` and writes ``out``, ``prob`` and
``codes``, so an instruction's cycles depend on nothing but its own fields:
:func:`vector_timing` gives them exactly (start + ``done`` = the retire cycle).

Structure
---------
::

    param --records--> requantizer / LayerNorm / residual-add parameter ports
    vin   ---------------------------------------> GELU table (GELU_TABLE)

    acc | attn_acc --> requantizer --+--------------------------------> out (int8, int16)
                                     +--> GELU table ----------------> out
                                     +--> (+ bias + mask) --> Log-Int-Softmax --> codes | prob
    vin, vin2 -----> score bias (SOFTMAX: int16 low / high bytes) --^
    vin ---------------> LayerNorm ------------------------------------> out
    vin, vin2 ---------> residual add ---------------------------------> out
    vin ---------------> GELU table -----------------------------------> out

An instruction runs in two phases after its start cycle:

* *setup*, ``K`` slots of one cycle each (``K = 0`` for none), the unit writes one cycle
  after their slots: parameter records from ``param`` into the unit (``load_params = 1``;
  a record is 16 bytes, so ``S = max(1, 16 / N)`` reads of an ``N``-byte row per record,
  and the units take one record per cycle: ``K = records x S``); for SOFTMAX, its
  ``mult`` / ``shift`` written into all ``N`` lanes of a spare channel group of the
  requantizer (``K = N``), which keeps the REQUANT records the requantizer holds; for
  GELU_TABLE, the 256 table entries (``K = 256``), one ``vin`` row read every ``N`` slots.
* *stream*: from the cycle of the last unit write on, a reader issues one source row
  (``N`` elements, one beat) per cycle through a one-beat read stage that holds its data
  (read enable low) while the unit refuses it; the unit chain's output beats are written
  to the destination as they come (the writer never stalls), the last partial word of a
  row with byte enables.  The int16 path of REQUANT issues a beat every other cycle: each
  output beat is ``2 N`` bytes (lane ``l`` little endian at bytes ``2l, 2l + 1``), written
  as two words in consecutive cycles (the second one skipped when the row ends with the
  first).

SOFTMAX's score bias and mask (Swin): between the requantizer's output and the softmax
unit, lane ``l`` of a beat (key column ``j``) becomes ``clip16(score + bias + (mask_value if
j < keep_lo or j >= keep_hi))``, into a register before the softmax's input
(``SOFTMAX_INPUT_STAGES``); the key-column mask flags of the beat are themselves computed
a cycle ahead and registered.  The bias beat is the same row of ``vin``
(low bytes) and ``vin2`` (high bytes), read once the cycle after the start and then in the
cycle each beat passes to the softmax, for the next one (the read ports hold their data), so
it always matches the beat on the requantizer's output.

``retire`` pulses in the cycle after the instruction's last write (a destination word, or
the last table entry: :data:`RETIRE_CYCLES`), from a register, and the engine takes the next
instruction in that same cycle (``ready`` is ``~active``, a register too): ``busy ==
done``.  So the sequencer reads no combinational path out of the engine's datapath.

Against the composition in the ISA table (``compiler.isa``: ``P + total(rows)`` with ``P``
records at one a cycle), the RTL takes: one decode cycle more for every opcode; ``S = max(1,
16 / N)`` cycles a record (an ``N``-byte parameter row a cycle) instead of one; ``N`` setup
cycles for SOFTMAX (none in the table); for an int16 REQUANT two cycles a beat (two
scratchpad words) instead of one; for LAYERNORM one cycle more, as ``layernorm_timing``'s
latency does not count both end cycles; 257 cycles for GELU_TABLE; and the retire
register's cycle for every opcode.  :func:`vector_timing` is the RTL's.

With ``norm_lanes = L < N`` (:attr:`hw.config.AcceleratorConfig.norm_unit_lanes`) the
LayerNorm and the softmax are built ``L`` lanes wide, each behind a
:class:`hw.lane_adapter.LaneAdapter`: a beat enters the unit as ``N / L`` parts in
consecutive cycles (the first in the cycle it is taken), and the output beat is written in
the cycle of its last part.  No cycle is added, so :func:`layernorm_timing` and
:func:`softmax_timing` at ``L`` lanes (rows of ``ceil(cols / L)`` beats) are the rows'
timing, and the requantizer before the softmax is held by its ready meanwhile.  A
LAYERNORM's ``cols`` is a multiple of ``L``; a last beat with fewer parts passes only those,
and the adapter fills the output lanes of the parts it lacks with the unit's padding
(code 15 or probability 0, as an ``N``-lane softmax writes them).

Zero points (``LAYERNORM.zp_in``, ``ADD.zp_a``, ``zp_b``, ``zp_out``) are int8 in the units:
the engine passes the low 8 bits of the 16-bit fields.  The requantizer holds the records of
``ceil(max_channels / N) N`` channels: a per-channel REQUANT must not have more ``cols``.
Only vector opcodes may be sent to ``instr``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.utils import exact_log2

from compiler.isa import INSTR_BITS, RECORD_WORDS, Opcode, OutType, Timing
from hw.config import AcceleratorConfig
from hw.core.isa_layout import fields_of
from hw.core.memories import geometry
from hw.core.signatures import engine_signature, read_port_signature, write_port_signature
from hw.gelu import GELU_TABLE_ENTRIES, GeluLut, gelu_table_load_timing, gelu_timing
from hw.lane_adapter import LaneAdapter
from hw.layernorm import PtfLayerNorm, layernorm_timing
from hw.requantizer import Requantizer, requant_timing
from hw.residual_add import ResidualAdd, residual_add_timing
from hw.softmax import OUT_BITS, SCORE_BITS, LisSoftmax, SoftmaxMode, softmax_timing
from hw.timing import UnitTiming, chain
from sw.intops import LIS_ZERO_CODE

__all__ = ["VectorEngine", "vector_timing", "record_reads", "VECTOR_OPCODES", "READ_MEMORIES",
           "WRITE_MEMORIES"]

#: The opcodes the engine executes.
VECTOR_OPCODES = (Opcode.REQUANT, Opcode.SOFTMAX, Opcode.LAYERNORM, Opcode.ADD, Opcode.GELU,
                  Opcode.GELU_TABLE)
#: Memories the engine reads and writes (regions of ``AcceleratorConfig.regions``).
READ_MEMORIES = ("vin", "vin2", "acc", "attn_acc", "param")
WRITE_MEMORIES = ("out", "prob", "codes")

#: Bytes of one parameter record (four int32 words).
RECORD_BYTES = 4 * RECORD_WORDS
#: Cycles from the start (the instruction handshake) to the first setup slot or source read:
#: the fields are registered in the start cycle.
DECODE_CYCLES = 1
#: Registers between SOFTMAX's score bias / key mask and the softmax's input.
SOFTMAX_INPUT_STAGES = 1
#: Cycles from an instruction's last write to its ``retire`` pulse: the pulse is a
#: register, so the sequencer sees none of the engine's datapath within a cycle.
RETIRE_CYCLES = 1


def record_reads(config: AcceleratorConfig) -> int:
    """``S``: cycles to fetch one parameter record, ``max(1, 16 / N)`` reads of ``N`` bytes
    (for ``N > 16`` a row holds several records, but the units take one per cycle)."""
    return max(1, RECORD_BYTES // config.lanes)


def _setup_slots(config: AcceleratorConfig, op: Opcode, a: Mapping[str, int]) -> int:
    """``K``: setup cycles before the first source read (see the module docstring)."""
    if op == Opcode.SOFTMAX:
        return config.lanes
    if op == Opcode.GELU_TABLE:
        return GELU_TABLE_ENTRIES
    if op in (Opcode.REQUANT, Opcode.LAYERNORM, Opcode.ADD) and a["load_params"]:
        records = a["cols"] if op != Opcode.REQUANT or a["per_channel"] else 1
        return records * record_reads(config)
    return 0


def _both_ends(timing: UnitTiming) -> UnitTiming:
    """:func:`hw.layernorm.layernorm_timing` counts its latency from the first input beat to
    the last output beat as a difference (its tests: ``last_out - first_in == total``); the
    other units, and :class:`UnitTiming`, count both cycles.  One more cycle in that
    convention."""
    return UnitTiming(timing.latency + 1, timing.interval)


def vector_timing(config: AcceleratorConfig, op: Opcode, args: Mapping[str, int]) -> Timing:
    """Cycles of one vector instruction on :class:`VectorEngine`, from its start.

    ``op`` is a vector opcode and ``args`` its fields (``Instruction.args``).  ``done``: the
    cycle of the ``retire`` pulse (a cycle after the last write) after the start cycle;
    ``busy == done`` (the engine takes the next instruction in its retire cycle).  With ``N`` lanes,
    ``B = ceil(cols / N)`` beats a row, ``K`` setup cycles (``S = max(1, 16 / N)`` reads a
    record; records ``cols``, or 1 for a per-tensor REQUANT)::

        K = records x S if load_params else 0     (REQUANT, LAYERNORM, ADD)
        K = N                                     (SOFTMAX: its mult / shift in N lanes)

        REQUANT int8     done = 1 + K + total(rows) of requant_timing(cols)
                                [chained to gelu_timing(cols) when gelu = 1]
        REQUANT int16    done = 1 + K + requant_timing(1).latency + 2 (rows B - 1) + h
                                (h = 1 when the last beat's second word holds bytes of the
                                row, 2 v > N for v = cols - (B - 1) N; else 0)
        SOFTMAX          done = 1 + N + total(rows) of requant_timing(cols), its latency
                                + SOFTMAX_INPUT_STAGES, chained to softmax_timing(cols, mode)
        LAYERNORM        done = 1 + K + 1 + total(rows) of layernorm_timing(cols)
                                (its latency does not count both end cycles)
        ADD              done = 1 + K + total(rows) of residual_add_timing(cols)
        GELU             done = 1 + total(rows) of gelu_timing(cols)
        GELU_TABLE       done = 1 + gelu_table_load_timing().latency          (= 257, + 1)

    with ``total(rows) = latency + (rows - 1) interval`` (:meth:`UnitTiming.total`) and the
    chains of :func:`hw.timing.chain`.  The leading 1 is the decode cycle; every ``done``
    also counts the retire register (:data:`RETIRE_CYCLES`, not written above).
    """
    op = Opcode(op)
    if op not in VECTOR_OPCODES:
        raise ValueError(f"{op.name} is not a vector instruction")
    if op == Opcode.GELU_TABLE:
        done = DECODE_CYCLES + gelu_table_load_timing(config).latency + RETIRE_CYCLES
        return Timing(done, done)
    n = config.lanes
    rows, cols = args["rows"], args["cols"]
    beats = math.ceil(cols / n)
    setup = _setup_slots(config, op, args)
    if op == Opcode.REQUANT:
        row = requant_timing(config, cols)
        if args["out_type"] == OutType.INT16:
            last = cols - (beats - 1) * n            # elements of a row's last beat
            second = 1 if 2 * last > n else 0
            done = (DECODE_CYCLES + setup + requant_timing(config, 1).latency
                    + 2 * (rows * beats - 1) + second + RETIRE_CYCLES)
            return Timing(done, done)
        if args["gelu"]:
            row = chain(row, gelu_timing(config, cols), beats)
    elif op == Opcode.SOFTMAX:
        rq = requant_timing(config, cols)
        rq = UnitTiming(latency=rq.latency + SOFTMAX_INPUT_STAGES, interval=rq.interval)
        row = chain(rq, softmax_timing(config, cols, SoftmaxMode(args["mode"])), beats)
    elif op == Opcode.LAYERNORM:
        row = _both_ends(layernorm_timing(config, cols))
    elif op == Opcode.ADD:
        row = residual_add_timing(config, cols)
    else:
        row = gelu_timing(config, cols)
    done = DECODE_CYCLES + setup + row.total(rows) + RETIRE_CYCLES
    return Timing(done, done)


class VectorEngine(wiring.Component):
    """The vector engine (module docstring): one requantizer (``N`` lanes), GELU table,
    Log-Int-Softmax and PTF LayerNorm (``norm_unit_lanes`` lanes, behind lane adapters when
    fewer than ``N``) and residual add, fed from and writing to its memories.

    Parameters
    ----------
    config : AcceleratorConfig
        ``N = config.lanes``; the units' limits (``max_channels``, ``max_seq_len``).

    Members
    -------
    instr : ``In(stream.Signature(unsigned(256)))``
        Vector instructions (REQUANT, SOFTMAX, LAYERNORM, ADD, GELU, GELU_TABLE): a handshake
        is the start.  Ready when idle: from the retire cycle of the current one.
    retire : ``Out(1)``
        One pulse per instruction, a register: the cycle after its last write lands.
    busy : ``Out(1)``
        High from a start up to (not including) its retire cycle.
    vin, vin2, acc, attn_acc, param : ``Out(read_port_signature(depth, width))``
        Read ports of those memories (rows of ``N`` bytes; ``N`` int32 words for the
        accumulator memories; the parameter memory's word ``w`` is bytes ``4w .. 4w + 3``).
    out, prob, codes : ``Out(write_port_signature(depth, 8 N))``
        Write ports (byte enables) of the destination memories.

    Latency and throughput
    ----------------------
    :func:`vector_timing`, exactly: one decode cycle, the setup slots (parameter records at
    ``max(1, 16 / N)`` cycles each), then the unit chain's row timing for ``rows`` rows back
    to back, one source beat a cycle (a beat every two cycles for int16 REQUANT output).
    The engine takes the next instruction in the retire cycle of the current one.
    """

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {config!r}")
        self._config = config
        members = dict(engine_signature().members)
        for name in READ_MEMORIES:
            g = geometry(config, name)
            members[name] = Out(read_port_signature(g.depth, g.width))
        for name in WRITE_MEMORIES:
            g = geometry(config, name)
            members[name] = Out(write_port_signature(g.depth, g.width, g.granularity))
        super().__init__(members)

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        n = cfg.lanes
        lane_bits = exact_log2(n)
        step = min(n, RECORD_BYTES)                 # parameter bytes fetched per setup slot

        # ------------------------------------------------------------------ units
        # The requantizer gets one channel group more than max_channels needs: SOFTMAX puts
        # its mult / shift there and leaves the REQUANT records alone.
        rq = m.submodules.requantizer = Requantizer(
            cfg.replace(max_channels=cfg.max_channels + n), n)
        spare_group = rq.groups - 1
        gelu = m.submodules.gelu = GeluLut(cfg)
        sm = m.submodules.softmax = LisSoftmax(cfg)
        ln = m.submodules.layernorm = PtfLayerNorm(cfg)
        add = m.submodules.residual_add = ResidualAdd(cfg)
        # LayerNorm and softmax at L = norm_unit_lanes < N lanes: each behind a lane adapter
        # that passes an N-lane beat in N / L parts and gathers their output (no cycle
        # added; the unit's L-lane timing is the row's).  sm_i / sm_o and ln_i / ln_o are
        # the N-lane streams the engine drives and reads either way.
        narrow = cfg.norm_unit_lanes < n
        if narrow:
            sm_ad = m.submodules.softmax_lanes = LaneAdapter(
                n, cfg.norm_unit_lanes, SCORE_BITS, OUT_BITS, cfg.max_seq_len)
            ln_ad = m.submodules.layernorm_lanes = LaneAdapter(
                n, cfg.norm_unit_lanes, 8, 8, cfg.max_channels)
            for ad, unit in ((sm_ad, sm), (ln_ad, ln)):
                wiring.connect(m, ad.unit_i, unit.i)
                wiring.connect(m, unit.o, ad.unit_o)
            sm_i, sm_o, ln_i, ln_o = sm_ad.i, sm_ad.o, ln_ad.i, ln_ad.o
            ln_ready = ~ln_ad.held & ln.stream_ready
        else:
            sm_i, sm_o, ln_i, ln_o = sm.i, sm.o, ln.i, ln.o
            ln_ready = ln.stream_ready

        # ------------------------------------------------------------------ instruction
        ir = Signal(INSTR_BITS)
        f = {op: fields_of(op)(ir) for op in VECTOR_OPCODES}
        p = {op: fields_of(op)(self.instr.payload) for op in VECTOR_OPCODES}
        opcode = fields_of(Opcode.REQUANT)(self.instr.payload).opcode

        active = Signal()
        retire = Signal()                 # the last write: active falls
        retire_r = Signal()               # the retire pulse, a cycle later
        start = Signal()
        m.d.sync += retire_r.eq(retire)
        m.d.comb += [
            self.instr.ready.eq(~active),
            start.eq(self.instr.valid & self.instr.ready),
            self.retire.eq(retire_r),
            self.busy.eq(start | active),
        ]

        # Per-instruction registers, loaded in the start cycle (_decode).
        r = _Registers(n)
        is_rq, is_sm, is_ln, is_add, is_gelu, is_tbl = (r.flags[op] for op in VECTOR_OPCODES)
        full = Const((1 << n) - 1, n)

        # ------------------------------------------------------------------ setup slots
        slot = Signal()
        m.d.comb += slot.eq(active & (r.setup_left != 0))
        p_valid = Signal()                # a slot's unit write happens this cycle
        p_complete = Signal()             # ... and completes a parameter record
        p_slice = Signal(range(max(n // RECORD_BYTES, 1)))
        p_index = Signal(24)
        with m.If(slot):
            m.d.sync += [
                r.setup_left.eq(r.setup_left - 1),
                r.setup_index.eq(r.setup_index + 1),
                r.param_byte.eq(r.param_byte + step),
            ]
            with m.If((r.setup_left == 1) & ~is_tbl):
                m.d.sync += r.rd_go.eq(1)
        m.d.sync += [
            p_valid.eq(slot),
            p_complete.eq((r.param_byte[:4] == (RECORD_BYTES - step) % RECORD_BYTES)),
            p_index.eq(r.setup_index),
        ]
        if n > RECORD_BYTES:
            m.d.sync += p_slice.eq(r.param_byte[4:4 + exact_log2(n // RECORD_BYTES)])
        m.d.comb += [
            self.param.en.eq(slot & (is_rq | is_ln | is_add)),
            self.param.addr.eq(r.param_byte[lane_bits:]),
        ]

        # A record: 16 bytes, word k at bytes 4k .. 4k + 3.
        record = Signal(8 * RECORD_BYTES)
        if n < RECORD_BYTES:
            gathered = Signal(8 * RECORD_BYTES)
            m.d.comb += record.eq(Cat(gathered[8 * n:], self.param.data))
            with m.If(p_valid):
                m.d.sync += gathered.eq(record)
        elif n == RECORD_BYTES:
            m.d.comb += record.eq(self.param.data)
        else:
            m.d.comb += record.eq(self.param.data.word_select(p_slice, 8 * RECORD_BYTES))
        words = [record[32 * k:32 * k + 32] for k in range(RECORD_WORDS)]
        record_write = Signal()
        record_index = r.record_index
        m.d.comb += record_write.eq(p_valid & p_complete)
        with m.If(record_write):
            m.d.sync += record_index.eq(record_index + 1)

        sm_fields = f[Opcode.SOFTMAX]
        m.d.comb += [
            rq.param.en.eq((record_write & is_rq) | (p_valid & is_sm)),
            rq.param.group.eq(Mux(is_sm, spare_group, record_index >> lane_bits)),
            rq.param.lane.eq(Mux(is_sm, p_index, record_index)[:lane_bits]),
            rq.param.bias.eq(Mux(is_sm, 0, words[0])),
            rq.param.mult.eq(Mux(is_sm, sm_fields.mult, words[1][:16])),
            rq.param.shift.eq(Mux(is_sm, sm_fields.shift, words[2][:6])),
            rq.param.offset.eq(Mux(is_sm, 0, words[3])),

            ln.param.en.eq(record_write & is_ln),
            ln.param.channel.eq(record_index),
            ln.param.alpha.eq(words[0][:2]),
            ln.param.mult.eq(words[1][:16]),
            ln.param.shift.eq(words[2][:6]),
            ln.param.offset.eq(words[3]),

            add.param_write.valid.eq(record_write & is_add),
            add.param_write.payload.channel.eq(record_index),
            add.param_write.payload.mult_a.eq(words[0][:16]),
            add.param_write.payload.mult_b.eq(words[1][:16]),
            add.param_write.payload.shift.eq(words[2][:6]),

            gelu.table_write.valid.eq(p_valid & is_tbl),
            gelu.table_write.payload.addr.eq(p_index[:8]),
            gelu.table_write.payload.data.eq(self.vin.data.word_select(p_index[:lane_bits], 8)),
        ]
        if narrow:
            # A softmax row's padding lanes carry "zero attention": code 15 (LIS), probability 0.
            m.d.comb += [
                sm_ad.length.eq(sm_fields.cols),
                sm_ad.pad.eq(Mux(sm_fields.mode == SoftmaxMode.LIS, LIS_ZERO_CODE, 0)),
                ln_ad.length.eq(f[Opcode.LAYERNORM].cols),
                ln_ad.pad.eq(0),
            ]
        add_fields = f[Opcode.ADD]
        m.d.comb += [
            add.tensor_config.valid.eq(r.add_config),
            add.tensor_config.payload.channels.eq(add_fields.cols),
            add.tensor_config.payload.zp_a.eq(add_fields.zp_a[:8]),
            add.tensor_config.payload.zp_b.eq(add_fields.zp_b[:8]),
            add.tensor_config.payload.zp_out.eq(add_fields.zp_out[:8]),
        ]
        with m.If(r.add_config):
            m.d.sync += r.add_config.eq(0)

        # ------------------------------------------------------------------ reader
        take = Signal()                   # the head unit takes the presented beat
        advance = Signal()
        issue = Signal()
        hold = Signal()                   # int16 output: no issue in the cycle after one
        src_valid = Signal()
        src_beat = Signal(16)
        ready_go = Signal()               # the reader may issue, if the head unit takes
        m.d.comb += [
            advance.eq(~src_valid | take),
            ready_go.eq(active & r.rd_go & (r.rd_rows != 0) & ~hold),
            issue.eq(ready_go & advance),
        ]
        m.d.sync += hold.eq(issue & r.wide)
        with m.If(issue):
            with m.If(r.rd_beat == r.beats_m1):
                m.d.sync += [
                    r.rd_beat.eq(0),
                    r.rd_rows.eq(r.rd_rows - 1),
                    r.rd_row.eq(r.rd_row + r.rd_stride),
                    r.rd2_row.eq(r.rd2_row + r.rd2_stride),
                ]
            with m.Else():
                m.d.sync += r.rd_beat.eq(r.rd_beat + 1)
        with m.If(advance):
            m.d.sync += [src_valid.eq(issue), src_beat.eq(r.rd_beat)]

        table_read = Signal()
        m.d.comb += table_read.eq(slot & is_tbl & (r.setup_index[:lane_bits] == 0))
        src_addr = r.rd_row + r.rd_beat
        # SOFTMAX's score bias: the beat of the two byte planes (vin: low bytes, vin2: high
        # bytes, the same row of each) that matches the requantizer's output beat on the port.
        # A bias beat is read once at the start (b_prime) and then in the cycle each score
        # beat passes to the softmax, for the next one; the ports hold their data in between.
        # SOFTMAX's biased and masked scores pass a register on their way into the softmax
        # (SOFTMAX_INPUT_STAGES): a beat leaves the requantizer when that register is empty
        # or the softmax takes its beat in the same cycle.
        sm_take = Signal()
        sm_in_ready = Signal()
        sm_pipe_valid = Signal()
        sm_pipe_data = Signal(16 * n)
        b_last = Signal()
        b_next_row = Signal.like(r.b_row)
        b_next_beat = Signal.like(r.b_beat)
        b_read = Signal()
        m.d.comb += [
            sm_take.eq(is_sm & rq.o.valid & sm_in_ready),
            b_last.eq(r.b_beat == r.beats_m1),
            b_next_row.eq(Mux(b_last, r.b_row + r.wr_stride, r.b_row)),
            b_next_beat.eq(Mux(b_last, 0, r.b_beat + 1)),
            b_read.eq(is_sm & r.bias_on & (r.b_prime | sm_take)),
        ]
        b_addr = Mux(r.b_prime, r.b_row + r.b_beat, b_next_row + b_next_beat)
        with m.If(sm_take):
            m.d.sync += [r.b_row.eq(b_next_row), r.b_beat.eq(b_next_beat)]
        with m.If(r.b_prime):
            m.d.sync += r.b_prime.eq(0)
        # The read enables are ``issue`` restricted to the ops that read the port, written
        # with only the ready of the unit those ops feed: the same values, but the logic
        # before a memory's enable (it reaches every block RAM of the memory, across the die)
        # does not pass through the other units' ready (on the placed ULX3S core:
        # the LAYERNORM parameter record -> its ready -> issue -> the accumulator's CEB).
        # LayerNorm's is its ``stream_ready``, which leaves out the parameter write: the
        # engine writes its records only in setup slots, and a beat is offered (src_valid)
        # only from the cycle after the first issue, which comes at the earliest in the
        # cycle of the last record write (rd_go is set by the last slot, the write follows
        # it by a cycle), so the two never meet and stream_ready is i.ready whenever a beat
        # is offered (a beat lost to a difference would fail every bit-exact test).
        issue_rq = Signal()               # issue & (is_rq | is_sm): the requantizer's ready
        issue_vin = Signal()              # issue & (is_ln | is_add | is_gelu)
        vin_ready = Signal()              # the ready of the unit vin's ops feed
        m.d.comb += [
            vin_ready.eq(Mux(is_ln, ln_ready, Mux(is_add, add.a.ready, gelu.i.ready))),
            issue_rq.eq(ready_go & (is_rq | is_sm) & (~src_valid | rq.i.ready)),
            issue_vin.eq(ready_go & (~src_valid | vin_ready) & (is_ln | is_add | is_gelu)),
        ]
        m.d.comb += [
            self.acc.en.eq(issue_rq & ~r.from_attn),
            self.acc.addr.eq(src_addr),
            self.attn_acc.en.eq(issue_rq & is_rq & r.from_attn),
            self.attn_acc.addr.eq(src_addr),
            self.vin.en.eq(issue_vin | table_read | b_read),
            self.vin.addr.eq(Mux(is_sm, b_addr,
                                 Mux(is_tbl, r.rd_row + (r.setup_index >> lane_bits), src_addr))),
            self.vin2.en.eq((issue_vin & is_add) | b_read),
            self.vin2.addr.eq(Mux(is_sm, b_addr, r.rd2_row + r.rd_beat)),
        ]

        # ------------------------------------------------------------------ unit chain
        rq_low = Cat(rq.o.payload[16 * k:16 * k + 8] for k in range(n))
        m.d.comb += [
            take.eq(Mux(is_rq | is_sm, rq.i.ready, vin_ready)),

            rq.i.valid.eq(src_valid & (is_rq | is_sm)),
            rq.i.payload.data.eq(Mux(r.from_attn, self.attn_acc.data, self.acc.data)),
            rq.i.payload.group.eq(Mux(is_sm, spare_group, src_beat)),
            rq.i.payload.int16.eq(r.int16),
            rq.i.payload.per_tensor.eq(is_rq & ~r.per_channel),
            rq.o.ready.eq(Mux(is_sm, sm_in_ready, Mux(r.gelu_chain, gelu.i.ready, 1))),

            sm_in_ready.eq(~sm_pipe_valid | sm_i.ready),
            sm_i.valid.eq(sm_pipe_valid),
            sm.length.eq(sm_fields.cols),
            sm.frac_bits.eq(sm_fields.frac_bits),
            sm.b_int.eq(sm_fields.b_int),
            sm.c_int.eq(sm_fields.c_int),
            sm.mode.eq(sm_fields.mode),
            sm_o.ready.eq(1),

            gelu.i.valid.eq(Mux(is_gelu, src_valid, rq.o.valid & is_rq & r.gelu_chain)),
            gelu.i.payload.eq(Mux(is_gelu, self.vin.data, rq_low)),
            gelu.o.ready.eq(1),

            ln_i.valid.eq(src_valid & is_ln),
            ln_i.payload.eq(self.vin.data),
            ln.channels.eq(f[Opcode.LAYERNORM].cols),
            ln.zp_in.eq(f[Opcode.LAYERNORM].zp_in[:8]),
            ln_o.ready.eq(1),

            add.a.valid.eq(src_valid & is_add),
            add.b.valid.eq(src_valid & is_add),
            add.a.payload.eq(self.vin.data),
            add.b.payload.eq(self.vin2.data),
            add.o.ready.eq(1),
        ]

        # Score bias and mask: clip16(score + bias + (mask_value outside keep_lo..keep_hi)),
        # lane l of the beat being key column b_beat N + l (sw.intops.score_bias).  The mask
        # flags are registered: each cycle they are computed for the beat the softmax takes
        # next cycle (b_beat, or b_next_beat after a take), both compares from registers.
        # Valid from the second cycle after the start (b_beat and the fields load in the
        # start cycle); the first score beat comes N + 9 cycles after it at the earliest.
        masked = Signal(n)

        def mask_flags(beat):
            flags = []
            for lane in range(n):
                col = Cat(Const(lane, lane_bits), beat)
                flags.append((col < sm_fields.keep_lo) | (col >= sm_fields.keep_hi))
            return Cat(*flags)

        m.d.sync += masked.eq(Mux(sm_take, mask_flags(b_next_beat), mask_flags(r.b_beat)))
        biased = []
        for lane in range(n):
            score = rq.o.payload[16 * lane:16 * lane + 16].as_signed()
            bias = Mux(r.bias_on, Cat(self.vin.data[8 * lane:8 * lane + 8],
                                      self.vin2.data[8 * lane:8 * lane + 8]).as_signed(), 0)
            # The bias (block RAM data) is added last, to the registered operands' sum, and
            # the clip tests the top bits (int16 iff bits 15..18 agree) instead of two
            # compares: one carry chain and two LUTs between the block RAM and the register.
            part = Signal(signed(18), name=f"score_part_{lane}")
            total = Signal(signed(19), name=f"score_{lane}")
            m.d.comb += [
                part.eq(score + Mux(masked[lane], sm_fields.mask_value.as_signed(), 0)),
                total.eq(part + bias),
            ]
            fits = (total[15:] == 0) | (total[15:] == 0b1111)
            biased.append(Mux(fits, total[:16], Mux(total[18], 0x8000, 0x7FFF)))
        m.d.comb += sm_i.payload.eq(sm_pipe_data)
        with m.If(sm_take):
            m.d.sync += [sm_pipe_valid.eq(1), sm_pipe_data.eq(Cat(*biased))]
        with m.Elif(sm_i.ready):
            m.d.sync += sm_pipe_valid.eq(0)

        # ------------------------------------------------------------------ writer
        wr_valid = Signal()
        wr_data = Signal(8 * n)
        high_pending = Signal()           # the second word of an int16 beat is due
        high_data = Signal(8 * n)
        with m.If(is_rq):
            with m.If(r.wide):
                m.d.comb += [
                    wr_valid.eq(rq.o.valid | high_pending),
                    wr_data.eq(Mux(high_pending, high_data, rq.o.payload[:8 * n])),
                ]
            with m.Elif(r.gelu_chain):
                m.d.comb += [wr_valid.eq(gelu.o.valid), wr_data.eq(gelu.o.payload)]
            with m.Else():
                m.d.comb += [wr_valid.eq(rq.o.valid), wr_data.eq(rq_low)]
        with m.Elif(is_sm):
            m.d.comb += [wr_valid.eq(sm_o.valid), wr_data.eq(sm_o.payload)]
        with m.Elif(is_ln):
            m.d.comb += [wr_valid.eq(ln_o.valid), wr_data.eq(ln_o.payload)]
        with m.Elif(is_add):
            m.d.comb += [wr_valid.eq(add.o.valid), wr_data.eq(add.o.payload)]
        with m.Elif(is_gelu):
            m.d.comb += [wr_valid.eq(gelu.o.valid), wr_data.eq(gelu.o.payload)]

        last_word = Signal()
        m.d.comb += last_word.eq(r.wr_word == r.words_m1)
        m.d.sync += [
            high_pending.eq(r.wide & rq.o.valid & ~last_word),
            high_data.eq(rq.o.payload[8 * n:]),
        ]
        enables = Mux(last_word, r.last_mask, full)
        for port, flag in ((self.out, r.to_out), (self.prob, r.to_prob), (self.codes, r.to_codes)):
            m.d.comb += [
                port.addr.eq(r.wr_row + r.wr_word),
                port.data.eq(wr_data),
                port.en.eq(Mux(wr_valid & flag, enables, 0)),
            ]
        with m.If(wr_valid):
            with m.If(last_word):
                m.d.sync += [
                    r.wr_word.eq(0),
                    r.wr_rows.eq(r.wr_rows - 1),
                    r.wr_row.eq(r.wr_row + r.wr_stride),
                ]
            with m.Else():
                m.d.sync += r.wr_word.eq(r.wr_word + 1)

        m.d.comb += retire.eq(
            (wr_valid & last_word & (r.wr_rows == 1))
            | (p_valid & is_tbl & (p_index[:8] == GELU_TABLE_ENTRIES - 1)))
        # The start cycle loads the next instruction's registers (never the cycle of the
        # last write: the engine is ready only once idle).
        with m.If(start):
            m.d.sync += [
                ir.eq(self.instr.payload),
                active.eq(1),
                *(reg.eq(reg.init) for reg in r.cleared()),
            ]
            with m.Switch(opcode):
                for op in VECTOR_OPCODES:
                    with m.Case(op):
                        self._decode(m, op, p[op], r)
        with m.Elif(retire):
            m.d.sync += active.eq(0)
        return m

    def _decode(self, m: Module, op: Opcode, a, r: "_Registers") -> None:
        """The start-cycle register loads of instruction ``op`` with fields (a view) ``a``."""
        cfg = self._config
        n = cfg.lanes
        lane_bits = exact_log2(n)
        full = (1 << n) - 1
        sync = m.d.sync

        def row_of(addr, region):
            """Memory row of an element address of ``region`` (a multiple of N)."""
            return (addr - cfg.regions[region].base)[lane_bits:]

        def mask_of(bytes_m1):
            """Byte enables of the first ``bytes_m1 % N + 1`` bytes of a word."""
            return Const(full, n) >> (Const(n - 1, lane_bits) - bytes_m1[:lane_bits])[:lane_bits]

        sync += r.flags[op].eq(1)
        if op == Opcode.GELU_TABLE:
            sync += [r.rd_go.eq(0), r.rd_row.eq(row_of(a.src_addr, "vin")),
                     r.setup_left.eq(GELU_TABLE_ENTRIES)]
            return
        cols = a.cols
        sync += [
            r.rd_go.eq(1),
            r.rd_rows.eq(a.rows), r.wr_rows.eq(a.rows),
            r.beats_m1.eq((cols - 1) >> lane_bits),
            r.words_m1.eq((cols - 1) >> lane_bits),
            r.last_mask.eq(mask_of(cols - 1)),
        ]
        if op == Opcode.ADD:
            sync += [
                r.rd_row.eq(row_of(a.a_addr, "vin")),
                r.rd_stride.eq(a.a_stride >> lane_bits),
                r.rd2_row.eq(row_of(a.b_addr, "vin2")),
                r.rd2_stride.eq(a.b_stride >> lane_bits),
                r.add_config.eq(1),
            ]
        elif op == Opcode.REQUANT:
            attn = a.src_addr >= cfg.regions["attn_acc"].base
            sync += [
                r.from_attn.eq(attn),
                r.rd_row.eq(Mux(attn, row_of(a.src_addr, "attn_acc"), row_of(a.src_addr, "acc"))),
                r.rd_stride.eq(a.src_stride >> lane_bits),
            ]
        else:
            src = "acc" if op == Opcode.SOFTMAX else "vin"
            sync += [r.rd_row.eq(row_of(a.src_addr, src)), r.rd_stride.eq(a.src_stride >> lane_bits)]
        sync += r.wr_stride.eq(a.dst_stride >> lane_bits)
        if op == Opcode.SOFTMAX:
            lis = a.mode == SoftmaxMode.LIS
            sync += [
                r.bias_on.eq(a.bias), r.b_prime.eq(a.bias),
                r.b_row.eq(row_of(a.bias_addr, "vin")),
                r.int16.eq(1),
                r.setup_left.eq(n), r.rd_go.eq(0),
                r.last_mask.eq(full),
                r.to_codes.eq(lis), r.to_prob.eq(~lis),
                r.wr_row.eq(Mux(lis, row_of(a.dst_addr, "codes"), row_of(a.dst_addr, "prob"))),
            ]
            return
        sync += [r.to_out.eq(1), r.wr_row.eq(row_of(a.dst_addr, "out"))]
        if op == Opcode.GELU:
            return
        records = cols
        if op == Opcode.REQUANT:
            records = Mux(a.per_channel, cols, 1)
            wide = a.out_type == OutType.INT16
            sync += [r.per_channel.eq(a.per_channel), r.int16.eq(wide), r.wide.eq(wide),
                     r.gelu_chain.eq(a.gelu)]
            with m.If(wide):
                sync += [r.words_m1.eq(((cols << 1) - 1) >> lane_bits),
                         r.last_mask.eq(mask_of((cols << 1) - 1))]
        sync += r.param_byte.eq(a.param_addr << 2)
        with m.If(a.load_params):
            sync += [r.setup_left.eq(records * record_reads(cfg)), r.rd_go.eq(0)]


class _Registers:
    """The per-instruction registers of :class:`VectorEngine`."""

    def __init__(self, n: int):
        #: One flag per opcode: the instruction being executed.
        self.flags = {op: Signal(name=f"is_{op.name.lower()}") for op in VECTOR_OPCODES}
        self.per_channel = Signal()
        self.int16 = Signal()           # the requantizer clamps to int16 (REQUANT int16, SOFTMAX)
        self.wide = Signal()            # REQUANT int16 output: two words a beat
        self.gelu_chain = Signal()      # REQUANT through the GELU table
        self.from_attn = Signal()       # REQUANT reads attn_acc (else acc)
        self.to_out, self.to_prob, self.to_codes = Signal(), Signal(), Signal()
        # Reader: one source beat (a row of N elements) a cycle.
        self.rd_go = Signal()           # setup done: the reader may issue
        self.rd_rows = Signal(17)       # rows left to issue
        self.rd_beat = Signal(16)       # beat of the current row
        self.rd_row = Signal(24)        # memory row of the current source row (vin: GELU table)
        self.rd2_row = Signal(24)       # ... of the second operand (ADD b)
        self.rd_stride = Signal(16)
        self.rd2_stride = Signal(16)
        self.beats_m1 = Signal(16)      # B - 1
        # Writer: one destination word a cycle.
        self.wr_rows = Signal(17)
        self.wr_word = Signal(17)
        self.wr_row = Signal(24)
        self.wr_stride = Signal(16)
        self.words_m1 = Signal(17)      # words per destination row - 1
        self.last_mask = Signal(n)      # byte enables of a row's last word
        # Setup slots.
        self.setup_left = Signal(24)
        self.setup_index = Signal(24)
        self.param_byte = Signal(28)    # parameter memory byte address of the next slot
        self.record_index = Signal(24)  # channel of the next record written into the unit
        self.add_config = Signal()      # ADD: write the residual add's tensor config
        # SOFTMAX's score bias planes (rows dst_stride apart, the writer's wr_stride).
        self.bias_on = Signal()
        self.b_prime = Signal()         # read the first bias beat (the cycle after the start)
        self.b_row = Signal(24)         # vin / vin2 row of the current score row's bias
        self.b_beat = Signal(16)        # beat of the score row the softmax takes next

    def cleared(self) -> list[Signal]:
        """Registers every start resets before its opcode's loads."""
        return [*self.flags.values(), self.per_channel, self.int16, self.wide,
                self.gelu_chain, self.from_attn, self.to_out, self.to_prob, self.to_codes,
                self.rd_go, self.rd_rows, self.rd_beat, self.wr_rows, self.wr_word,
                self.setup_left, self.setup_index, self.record_index, self.add_config,
                self.bias_on, self.b_prime, self.b_beat]
