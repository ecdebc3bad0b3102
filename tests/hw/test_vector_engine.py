"""VectorEngine against the ISA table: every byte it writes against ``SPECS[op].execute`` on
an ``ArchState`` with the same memory contents and unit state, every start and retire cycle
against ``vector_timing``.

A harness connects the engine to the region memories of ``hw.core.memories.build_memories``
(filled with the model's contents by backdoor writes before the run).  Random instruction sequences of
every vector opcode run back to back or with gaps; records loaded with ``load_params = 1``
are reused later with ``load_params = 0`` (a SOFTMAX in between must not disturb the
requantizer's), GELU tables are loaded and then used, alone and chained after REQUANT.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import pytest
from amaranth import Elaboratable, Module

from amaranth_streams import run_simulation
from compiler.isa import (NO_SCORE_BIAS, RECORD_WORDS, SPECS, ArchState, Instruction, Opcode, OutType,
                          SoftmaxMode, Timing, encode)
from hw.config import AcceleratorConfig
from hw.core.memories import build_memories, geometry
from hw.core.vector_engine import (READ_MEMORIES, WRITE_MEMORIES, VectorEngine, record_reads,
                                   vector_timing)
from sw import intops


def make_config(n: int, **changes) -> AcceleratorConfig:
    """A small machine of width ``n``: regions of a few KiB, short unit buffers."""
    return AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n, scratchpad_kib=16,
                             accumulator_kib=4, param_kib=16, max_channels=max(64, 20 * n),
                             max_seq_len=max(64, 8 * n)).replace(**changes)


# ---------------------------------------------------------------------------------- harness

class Harness(Elaboratable):
    """The engine wired to its memories (one read or write port each)."""

    def __init__(self, config: AcceleratorConfig):
        self.config = config
        self.engine = VectorEngine(config)
        self.memories = build_memories(config)

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        for name in READ_MEMORIES:
            m.submodules[name] = memory = self.memories[name]
            port, bus = memory.read_port(), getattr(engine, name)
            m.d.comb += [port.addr.eq(bus.addr), port.en.eq(bus.en), bus.data.eq(port.data)]
        for name in WRITE_MEMORIES:
            m.submodules[name] = memory = self.memories[name]
            port, bus = memory.write_port(granularity=8), getattr(engine, name)
            m.d.comb += [port.addr.eq(bus.addr), port.data.eq(bus.data), port.en.eq(bus.en)]
        for name, memory in self.memories.items():         # the other engines' memories
            if name not in READ_MEMORIES + WRITE_MEMORIES:
                m.submodules[name] = memory
        return m


def region_rows(config: AcceleratorConfig, state: ArchState, name: str) -> list[int]:
    """The memory rows of region ``name`` holding the model's contents."""
    g = geometry(config, name)
    n = config.lanes
    region = config.regions[name]
    if region.space == "spad":
        raw = state.spad[0, region.base:region.end].astype(np.uint8).tobytes()
        chunk = n
    elif region.space == "acc":
        raw = state.acc[0, region.base:region.end].astype("<i4").tobytes()
        chunk = 4 * n
    else:
        raw = state.param[0, region.base:region.end].astype("<i4").tobytes()
        chunk = n
    assert len(raw) == g.depth * chunk
    return [int.from_bytes(raw[k:k + chunk], "little") for k in range(0, len(raw), chunk)]


def span_rows(config: AcceleratorConfig, name: str, lo: int, hi: int) -> range:
    """Rows of scratchpad region ``name`` covering bytes ``[lo, hi)``."""
    base, n = config.regions[name].base, config.lanes
    return range((lo - base) // n, (hi - 1 - base) // n + 1)


# ---------------------------------------------------------------------------------- programs

@dataclass
class Step:
    """One instruction, its expected timing and the destination bytes it leaves."""
    ins: Instruction
    timing: Timing
    region: str | None                          # the destination region (None: GELU_TABLE)
    lo: int                                     # destination span [lo, hi) (scratchpad bytes)
    hi: int
    expected: np.ndarray | None                 # the model's bytes of the span after it ran
    gap: int = 0                                # cycles after the previous retire it is offered


@dataclass
class Program:
    config: AcceleratorConfig
    state: ArchState                            # the model after the last step
    init: dict[str, list[int]]                  # memory rows before the run
    steps: list[Step] = field(default_factory=list)


def _spread(rng: np.random.Generator, peak: np.ndarray, target: float):
    """mult / shift scaling ``peak`` to about ``target`` (outputs spread, rarely saturated)."""
    ratio = target / np.maximum(peak, 1) * rng.uniform(0.6, 1.3, size=np.shape(peak))
    return intops.dyadic(ratio)


class ProgramBuilder:
    """Random legal vector instructions, executed on the model as they are made."""

    def __init__(self, config: AcceleratorConfig, seed: int):
        self.cfg = config
        self.n = config.lanes
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.state = ArchState(config, np.zeros((1, 64), dtype=np.uint8))
        regions = config.regions
        st = self.state
        # Random bytes everywhere, destinations too (a stray or missing byte write shows).
        for name in ("vin", "vin2", *WRITE_MEMORIES):
            r = regions[name]
            st.spad[0, r.base:r.end] = self.np_rng.integers(-128, 128, r.size)
        acc, attn = regions["acc"], regions["attn_acc"]
        st.acc[0, acc.base:acc.end] = self.np_rng.integers(-(1 << 15), 1 << 15, acc.size)
        st.acc[0, attn.base:attn.end] = self.np_rng.integers(-(1 << 22), 1 << 22, attn.size)
        # Swin's score bias: int16 values, low bytes in vin and high bytes in vin2 at the same
        # offsets, in the upper half of the offsets both regions have.
        common = min(regions["vin"].size, regions["vin2"].size)
        self.bias_area = (common // 2 // self.n * self.n, common)
        lo, hi = self.bias_area
        # (their own generators: the other instructions' draws stay as they were)
        self.bias_rng = random.Random(seed + 1)
        g = np.random.default_rng(seed + 1)
        values = g.integers(-300, 301, hi - lo)
        values[g.random(hi - lo) < 0.1] = g.choice([-32768, 32767, -20000, 25000])
        st.spad[0, regions["vin"].base + lo:regions["vin"].base + hi] = \
            (values & 0xFF).astype(np.uint8).view(np.int8)
        st.spad[0, regions["vin2"].base + lo:regions["vin2"].base + hi] = (values >> 8).astype(np.int8)
        # Two GELU tables at the start of vin (their bytes are inputs of other ops too).
        self.tables = [regions["vin"].base, regions["vin"].base + 256]
        for base in self.tables:
            table = np.arange(-128, 128) // 2 + self.np_rng.integers(-3, 4, 256)
            st.spad[0, base:base + 256] = np.clip(table, -128, 127)
        self.param_next = 0                     # next free parameter word
        #: What the requantizer's records were made for (accumulator region, int16 output).
        self.tuned = {"attn": False, "wide": False}
        self.init = {name: region_rows(config, st, name) for name in READ_MEMORIES + WRITE_MEMORIES}
        self.steps: list[Step] = []

    # -------------------------------------------------------------- placement
    def stride(self, width: int) -> int:
        n = self.n
        return n * (math.ceil(width / n) + self.rng.randint(0, 2))

    def place(self, region: str, rows: int, stride: int, width: int) -> int:
        r = self.cfg.regions[region]
        extent = (rows - 1) * stride + width
        slots = (r.size - extent) // self.n + 1
        assert slots >= 1, (region, rows, stride, width)
        return r.base + self.n * self.rng.randrange(slots)

    def pattern(self, region: str, rows: int, width: int, stride: int | None = None):
        stride = self.stride(width) if stride is None else stride
        return self.place(region, rows, stride, width), stride

    def records(self, values: np.ndarray) -> int:
        """Write ``[count, 4]`` records at the next free parameter words; their address."""
        count = values.shape[0]
        addr = self.param_next
        assert addr + RECORD_WORDS * count <= self.cfg.param_words, "parameter memory full"
        self.state.param[0, addr:addr + RECORD_WORDS * count] = values.reshape(-1)
        self.param_next += RECORD_WORDS * count
        raw = self.state.param[0].astype("<i4").tobytes()
        n = self.n
        for row in range(4 * addr // n, -(-4 * self.param_next // n)):
            self.init["param"][row] = int.from_bytes(raw[row * n:(row + 1) * n], "little")
        return addr

    def held(self, unit: str) -> int:
        p = self.state.params.get(unit)
        return 0 if p is None else p.shape[1]

    def load(self, unit: str, count: int, load: bool | None) -> bool:
        if load is None:
            load = self.held(unit) < count or self.rng.random() < 0.5
        assert load or self.held(unit) >= count
        return load

    # -------------------------------------------------------------- opcodes
    def requant(self, cols=None, rows=None, load=None, per_channel=None, out_type=None,
                gelu=None, attn=None) -> dict:
        rng, n = self.rng, self.n
        cols = cols or rng.choice([rng.randint(1, 3 * n), n, 2 * n + rng.randint(1, n)])
        rows = rows or rng.randint(1, 4)
        per_channel = rng.random() < 0.6 if per_channel is None else per_channel
        if load is False and per_channel:
            cols = min(cols, self.held("requantizer"))
        count = cols if per_channel else 1
        load = self.load("requantizer", count, load)
        if not load:
            # Records reused: the same kind of accumulators (and output) they were made for.
            attn = self.tuned["attn"] if attn is None else attn
            if out_type is None and self.tuned["wide"]:
                out_type = OutType.INT16
        attn = rng.random() < 0.3 if attn is None else attn
        if out_type is None:
            out_type = OutType.INT16 if rng.random() < 0.3 else OutType.INT8
        if gelu is None:
            gelu = out_type == OutType.INT8 and self.state.gelu_table is not None and rng.random() < 0.4
        src, src_stride = self.pattern("attn_acc" if attn else "acc", rows, cols)
        width = cols * (2 if out_type == OutType.INT16 else 1)
        dst, dst_stride = self.pattern("out", rows, width)
        param_addr = 0
        if load:
            x = self.state.view("acc", src, src_stride, rows, cols)[0]
            bias = self.np_rng.integers(-2000, 2001, count)
            biased = np.abs(x + (bias if per_channel else bias[0]))
            peak = biased.max(axis=0) if per_channel else np.array([biased.max()])
            wide = out_type == OutType.INT16
            mult, shift = _spread(self.np_rng, peak, 20000 if wide else 100)
            offset = self.np_rng.integers(-8, 9, count)
            param_addr = self.records(np.stack([bias, mult, shift, offset], axis=1))
            self.tuned = {"attn": attn, "wide": wide}
        return dict(src_addr=src, src_stride=src_stride, dst_addr=dst, dst_stride=dst_stride,
                    rows=rows, cols=cols, param_addr=param_addr, load_params=int(load),
                    per_channel=int(per_channel), out_type=int(out_type), gelu=int(gelu))

    def softmax(self, cols=None, rows=None, mode=None, bias=None, mask=None) -> dict:
        rng, n = self.rng, self.n
        cols = cols or rng.randint(1, min(self.cfg.max_seq_len, 4 * n))
        rows = rows or rng.randint(1, 4)
        mode = rng.choice(list(SoftmaxMode)) if mode is None else mode
        frac_bits = rng.randint(2, 6)
        b_int, c_int = intops.lis_exp_constants(frac_bits)
        src, src_stride = self.pattern("acc", rows, cols)
        x = self.state.view("acc", src, src_stride, rows, cols)[0]
        mult, shift = _spread(self.np_rng, np.array(np.abs(x).max()),
                              rng.choice([3, 6, 12]) << frac_bits)
        dst_cols = math.ceil(cols / n) * n
        dst, dst_stride = self.pattern("codes" if mode == SoftmaxMode.LIS else "prob", rows, dst_cols)
        extra = dict(NO_SCORE_BIAS)
        bias = self.bias_rng.random() < 0.5 if bias is None else bias
        mask = self.bias_rng.random() < 0.5 if mask is None else mask
        if bias:
            # Swin's score bias, from the bias area (int16: low bytes in vin, high in vin2).
            vin = self.cfg.regions["vin"]
            extent = (rows - 1) * dst_stride + dst_cols
            lo, hi = self.bias_area
            slots = (hi - lo - extent) // n + 1
            if slots >= 1:
                extra.update(bias=1, bias_addr=vin.base + lo + n * self.bias_rng.randrange(slots))
        if mask:
            lo = self.bias_rng.randint(0, cols)
            extra.update(keep_lo=lo, keep_hi=self.bias_rng.randint(lo, cols + 2),
                         mask_value=self.bias_rng.choice([-1, -300, -20000, -32768]))
        return dict(src_addr=src, src_stride=src_stride, dst_addr=dst, dst_stride=dst_stride,
                    rows=rows, cols=cols, mode=int(mode), frac_bits=frac_bits,
                    b_int=b_int, c_int=c_int, mult=int(mult), shift=int(shift), **extra)

    def channels(self) -> int:
        return self.n * self.rng.randint(1, min(self.cfg.max_channels // self.n, 4))

    def layernorm(self, cols=None, rows=None, load=None) -> dict:
        rng = self.rng
        cols = cols or self.channels()
        if load is False:
            cols = min(cols, self.held("layernorm"))
        rows = rows or rng.randint(1, 4)
        load = self.load("layernorm", cols, load)
        src, src_stride = self.pattern("vin", rows, cols)
        dst, dst_stride = self.pattern("out", rows, cols)
        param_addr = 0
        if load:
            g = self.np_rng
            mult, shift, offset = intops.ln_params(35 * g.uniform(0.5, 1.5, cols),
                                                   g.uniform(-20, 20, cols), 1.0,
                                                   rng.randint(-8, 8))
            alpha = g.integers(0, 4, cols)
            param_addr = self.records(np.stack([alpha, mult, shift, offset], axis=1))
        return dict(src_addr=src, src_stride=src_stride, dst_addr=dst, dst_stride=dst_stride,
                    rows=rows, cols=cols, param_addr=param_addr, load_params=int(load),
                    zp_in=rng.randint(-8, 8))

    def add(self, cols=None, rows=None, load=None, broadcast=None) -> dict:
        rng = self.rng
        cols = cols or self.channels()
        if load is False:
            cols = min(cols, self.held("residual_add"))
        rows = rows or rng.randint(1, 4)
        load = self.load("residual_add", cols, load)
        broadcast = rng.random() < 0.3 if broadcast is None else broadcast
        a, a_stride = self.pattern("vin", rows, cols)
        b, b_stride = self.pattern("vin2", 1, cols, 0) if broadcast else \
            self.pattern("vin2", rows, cols)
        dst, dst_stride = self.pattern("out", rows, cols)
        param_addr = 0
        if load:
            g = self.np_rng
            shift = np.full(cols, rng.randint(12, 13))
            param_addr = self.records(np.stack([g.integers(1200, 2800, cols),
                                                g.integers(1200, 2800, cols), shift,
                                                np.zeros(cols, dtype=np.int64)], axis=1))
        return dict(a_addr=a, a_stride=a_stride, b_addr=b, b_stride=b_stride, dst_addr=dst,
                    dst_stride=dst_stride, rows=rows, cols=cols, param_addr=param_addr,
                    load_params=int(load), zp_a=rng.randint(-8, 8), zp_b=rng.randint(-8, 8),
                    zp_out=rng.randint(-8, 8))

    def gelu(self, cols=None, rows=None) -> dict:
        rng, n = self.rng, self.n
        cols = cols or rng.randint(1, 3 * n)
        rows = rows or rng.randint(1, 4)
        src, src_stride = self.pattern("vin", rows, cols)
        dst, dst_stride = self.pattern("out", rows, cols)
        return dict(src_addr=src, src_stride=src_stride, dst_addr=dst, dst_stride=dst_stride,
                    rows=rows, cols=cols)

    def gelu_table(self, table=None) -> dict:
        return dict(src_addr=self.rng.choice(self.tables) if table is None else self.tables[table])

    MAKERS = {Opcode.REQUANT: "requant", Opcode.SOFTMAX: "softmax", Opcode.LAYERNORM: "layernorm",
              Opcode.ADD: "add", Opcode.GELU: "gelu", Opcode.GELU_TABLE: "gelu_table"}

    # -------------------------------------------------------------- sequence
    def emit(self, op: Opcode, gap: int = 0, **choices) -> Step:
        args = getattr(self, self.MAKERS[op])(**choices)
        ins = Instruction(op, args=args)
        encode(ins)                                     # legal fields
        spec = SPECS[op]
        spec.check(self.cfg, args)
        writes = []
        for access in spec.accesses(self.cfg, args):
            region = next(name for name in access.regions
                          if self.cfg.regions[name].base <= access.lo
                          and access.hi <= self.cfg.regions[name].end)
            if access.write:
                writes.append((region, access.lo, access.hi))
        spec.execute(self.state, args)
        if writes:
            (region, lo, hi), = writes
            expected = self.state.spad[0, lo:hi].copy()
        else:
            region, lo, hi, expected = None, 0, 0, None
        step = Step(ins, vector_timing(self.cfg, op, args), region, lo, hi, expected, gap)
        self.steps.append(step)
        return step

    def random(self, count: int, gaps: float = 0.3) -> None:
        """``count`` random instructions; each offered ``gap`` cycles after the previous
        retire (0: back to back) with probability ``gaps``."""
        ops = [Opcode.REQUANT, Opcode.SOFTMAX, Opcode.LAYERNORM, Opcode.ADD, Opcode.GELU,
               Opcode.GELU_TABLE]
        weights = [4, 3, 3, 3, 2, 1]
        for _ in range(count):
            op = self.rng.choices(ops, weights)[0]
            if op == Opcode.GELU and self.state.gelu_table is None:
                op = Opcode.GELU_TABLE
            gap = self.rng.randint(1, 6) if self.rng.random() < gaps else 0
            self.emit(op, gap)

    def program(self) -> Program:
        return Program(self.cfg, self.state, self.init, self.steps)


# ---------------------------------------------------------------------------------- running

@dataclass
class Run:
    starts: list[int]
    retires: list[int]
    busy: set[int]
    spans: list[np.ndarray | None]              # destination span after each retire
    final: dict[str, list[int]]                 # destination memory rows at the end


def simulate(program: Program, first_offer: int = 2) -> Run:
    cfg = program.config
    n = cfg.lanes
    dut = Harness(cfg)
    engine = dut.engine
    steps = program.steps
    words = [int.from_bytes(encode(step.ins), "little") for step in steps]
    limit = first_offer + sum(step.timing.done + step.gap for step in steps) + 50
    run = Run([], [], set(), [], {})

    def read_span(ctx, step):
        memory = dut.memories[step.region]
        rows = span_rows(cfg, step.region, step.lo, step.hi)
        raw = b"".join(ctx.get(memory.data[row]).to_bytes(n, "little") for row in rows)
        skip = step.lo - (cfg.regions[step.region].base + rows.start * n)
        return np.frombuffer(raw[skip:skip + step.hi - step.lo], dtype=np.int8).copy()

    async def bench(ctx):
        for name, rows in program.init.items():
            memory = dut.memories[name]
            for row, value in enumerate(rows):
                if value:
                    ctx.set(memory.data[row], value)
        offer_at = first_offer
        index = 0
        cycle = 0
        while len(run.retires) < len(steps):
            offering = index < len(steps) and offer_at is not None and cycle >= offer_at
            ctx.set(engine.instr.valid, offering)
            if offering:
                ctx.set(engine.instr.payload, words[index])
            *_, ready, retire, busy = await ctx.tick().sample(
                engine.instr.ready, engine.retire, engine.busy)
            if busy:
                run.busy.add(cycle)
            if offering and ready:
                run.starts.append(cycle)
                index += 1
                # The next one is offered at once (taken in the retire cycle) or after a gap.
                offer_at = cycle + 1 if index < len(steps) and steps[index].gap == 0 else None
            if retire:
                done = len(run.retires)
                run.retires.append(cycle)
                run.spans.append(read_span(ctx, steps[done]) if steps[done].region else None)
                if index == done + 1 < len(steps) and offer_at is None:
                    offer_at = cycle + steps[index].gap
            cycle += 1
            assert cycle < limit, f"stopped: {len(run.starts)} started, {len(run.retires)} retired"
        for _ in range(10):                             # nothing after the last retire
            *_, retire, busy = await ctx.tick().sample(engine.retire, engine.busy)
            assert not retire and not busy, "retire or busy after the last instruction"
        for name in WRITE_MEMORIES:
            memory = dut.memories[name]
            run.final[name] = [ctx.get(memory.data[row]) for row in range(memory.depth)]

    run_simulation(dut, bench)
    return run


def describe(step: Step) -> str:
    return f"{step.ins.op.name} {step.ins.args}"


def check(program: Program, run: Run) -> None:
    cfg = program.config
    steps = program.steps
    assert len(run.starts) == len(run.retires) == len(steps)
    for k, step in enumerate(steps):
        start, retire = run.starts[k], run.retires[k]
        assert retire - start == step.timing.done, (
            f"instruction {k} {describe(step)}: retired {retire - start} cycles after its start, "
            f"vector_timing says {step.timing.done}")
        if k:
            offered = run.retires[k - 1] + step.gap
            assert start == offered, (
                f"instruction {k} started in cycle {start}, offered from {offered} "
                f"(previous retire {run.retires[k - 1]})")
        if step.region is not None:
            got, want = run.spans[k], step.expected
            bad = np.flatnonzero(got != want)
            assert bad.size == 0, (
                f"instruction {k} {describe(step)}: {bad.size} wrong bytes in {step.region} "
                f"from {step.lo + bad[0]}: got {got[bad[:8]].tolist()}, "
                f"expected {want[bad[:8]].tolist()}")
    busy = set().union(*(range(s, r) for s, r in zip(run.starts, run.retires)))
    assert run.busy == busy, f"busy in {sorted(run.busy ^ busy)[:10]} (symmetric difference)"
    assert sum(step.timing.busy for step in steps) == len(run.busy)
    for name in WRITE_MEMORIES:
        assert run.final[name] == region_rows(cfg, program.state, name), \
            f"{name} differs from the model after the run (a write outside the patterns?)"


def run_random(n: int, seed: int, count: int, **changes) -> Program:
    builder = ProgramBuilder(make_config(n, **changes), seed)
    # Coverage first: a table, requantizer records loaded then reused across a SOFTMAX,
    # REQUANT chained with GELU, int16 output, a broadcast ADD.
    builder.emit(Opcode.GELU_TABLE, table=0)
    builder.emit(Opcode.REQUANT, load=True, per_channel=True, out_type=OutType.INT8, gelu=False,
                 cols=2 * n + 1)
    builder.emit(Opcode.SOFTMAX, gap=2)
    builder.emit(Opcode.REQUANT, load=False, per_channel=True, out_type=OutType.INT16)
    builder.emit(Opcode.REQUANT, load=False, out_type=OutType.INT8, gelu=True)
    builder.emit(Opcode.ADD, load=True, broadcast=True)
    builder.random(count)
    program = builder.program()
    check(program, simulate(program))
    return program


# ---------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("n, seed", [(2, 1), (4, 2), (8, 3)])
def test_random_sequences(n, seed):
    run_random(n, seed, count=14)


def mode_grid(builder: ProgramBuilder) -> None:
    """Every opcode in every mode: rows back to back and single, records loaded and reused,
    int16 rows ending in either word of their last beat, both softmax modes up to
    ``max_seq_len``, with and without the score bias and mask, LayerNorm rows short and long (around ``B = 18`` where its interval
    becomes ``B``), broadcast ADD."""
    cfg, n = builder.cfg, builder.n
    emit = builder.emit
    emit(Opcode.GELU_TABLE, table=1)
    partial = [1, n // 2, n // 2 + 1, n, n + 1, 2 * n - 1, 3 * n + n // 2]
    k = 0
    for out in ("int8", "gelu", "int16"):
        for per_channel, load in ((True, True), (True, False), (False, True), (False, False)):
            emit(Opcode.REQUANT, gap=k % 3, cols=partial[k % len(partial)], rows=1 + 2 * (k % 2),
                 load=load, per_channel=per_channel, attn=k % 3 == 1,
                 out_type=OutType.INT16 if out == "int16" else OutType.INT8, gelu=out == "gelu")
            k += 1
    for cols in partial:
        emit(Opcode.REQUANT, cols=cols, rows=2, load=False, per_channel=False,
             out_type=OutType.INT16, gelu=False)
    for mode in SoftmaxMode:
        for rows, cols in ((1, 1), (2, n + 1), (5, 2 * n), (3, cfg.max_seq_len)):
            emit(Opcode.SOFTMAX, gap=rows % 2, mode=mode, rows=rows, cols=cols)
        # Swin's score bias (saturating int16) and shift mask, alone and together.
        for bias, mask in ((True, False), (False, True), (True, True)):
            emit(Opcode.SOFTMAX, mode=mode, rows=3, cols=2 * n + 1, bias=bias, mask=mask)
    for beats in (1, 2, 17, 18, 19):
        if beats * n <= cfg.max_channels:
            emit(Opcode.LAYERNORM, cols=beats * n, rows=1 + beats % 3, load=True)
            emit(Opcode.LAYERNORM, cols=beats * n, rows=4, load=False)
    for broadcast in (True, False):
        for cols, rows in ((n, 3), (3 * n, 1)):
            emit(Opcode.ADD, gap=rows - 1, cols=cols, rows=rows, load=True, broadcast=broadcast)
            emit(Opcode.ADD, cols=cols, rows=rows + 1, load=False, broadcast=broadcast)
    for cols in (1, n + 1, 3 * n):
        emit(Opcode.GELU, cols=cols, rows=1 + cols % 3)
    emit(Opcode.GELU_TABLE, table=0)
    emit(Opcode.GELU, cols=2 * n, rows=2)
    # The requantizer's records survive the softmaxes above.
    emit(Opcode.REQUANT, cols=builder.held("requantizer"), rows=2, load=False, per_channel=True,
         out_type=OutType.INT8, gelu=False)


@pytest.mark.parametrize("n", [2, 4, 8])
def test_every_mode(n):
    builder = ProgramBuilder(make_config(n), seed=10 + n)
    mode_grid(builder)
    program = builder.program()
    check(program, simulate(program))


@pytest.mark.parametrize("n, lanes", [(4, 2), (8, 4), (8, 2), (16, 4)])
def test_every_mode_narrow_units(n, lanes):
    """LayerNorm and softmax ``L < N`` lanes wide behind their lane adapters
    (``norm_lanes``): the same grid, bit-exact and cycle-exact against ``vector_timing`` with
    the units' ``L``-lane timing, plus LayerNorm rows of an odd number of ``L``-lane parts
    (a last beat the adapter passes in part) and softmax rows ending in every part of a beat."""
    # N = 16: the grid's records take more than 16 KiB of parameters.
    builder = ProgramBuilder(make_config(n, norm_lanes=lanes, param_kib=max(16, 2 * n)),
                             seed=40 + n + lanes)
    mode_grid(builder)
    for cols in (n + lanes, 3 * lanes, 2 * n - lanes):
        builder.emit(Opcode.LAYERNORM, cols=cols, rows=3, load=True)
    for cols in range(n + 1, 2 * n + 1):
        builder.emit(Opcode.SOFTMAX, mode=SoftmaxMode(cols % 2), rows=2, cols=cols)
    program = builder.program()
    check(program, simulate(program))


def test_wide_datapath():
    """N = 16: a parameter record is exactly one row."""
    run_random(16, seed=16, count=8)


@pytest.mark.slow
def test_wider_than_a_record():
    """N = 32: two records a parameter row (a record is a half-row slice)."""
    builder = ProgramBuilder(make_config(32, scratchpad_kib=32), seed=32)
    builder.emit(Opcode.REQUANT, load=True, per_channel=True, cols=3 * 16 + 5)
    builder.emit(Opcode.LAYERNORM, load=True, cols=64)
    builder.emit(Opcode.ADD, load=True, cols=96)
    builder.random(6)
    program = builder.program()
    check(program, simulate(program))


def test_timing_formulas():
    """vector_timing by hand, N = 4: 1 decode cycle, K setup cycles (a record is 4 reads of
    4 bytes; SOFTMAX writes its mult / shift into 4 lanes), then the rows, then ``R = 1``
    for the retire register."""
    R = 1
    cfg = make_config(4)
    assert record_reads(cfg) == 4 and record_reads(make_config(16)) == record_reads(make_config(32)) == 1

    def done(op, **a):
        t = vector_timing(cfg, op, a)
        assert t.busy == t.done
        return t.done

    rq = dict(load_params=0, per_channel=1, out_type=0, gelu=0)
    # B = 2 beats, requantizer 2 + 8 then 2 a row; 6 records of 4 reads.
    assert done(Opcode.REQUANT, **{**rq, "load_params": 1}, rows=3, cols=6) == 1 + 24 + 10 + 2 * 2 + R
    # int16: a beat every 2 cycles, first output 9 cycles after its input; cols 6 ends a row
    # with a first word (4 bytes of the last beat), cols 7 with a second one.
    assert done(Opcode.REQUANT, **{**rq, "out_type": 1}, rows=3, cols=6) == 1 + 9 + 2 * 5 + R
    assert done(Opcode.REQUANT, **{**rq, "out_type": 1}, rows=3, cols=7) == 1 + 9 + 2 * 5 + 1 + R
    # GELU chained: two more cycles (its input register and table read); one per-tensor record.
    assert done(Opcode.REQUANT, **{**rq, "gelu": 1, "per_channel": 0, "load_params": 1},
                rows=2, cols=4) == 1 + 4 + 10 + 2 + R
    # Softmax rows of B = 3: requantizer 11 and the input register 1 chained to 3 B + 15 + 3
    # (LIS) / 3 B + 41 + 3 (UNIFORM), intervals B + 4 and 27.
    sm = dict(rows=3, cols=9, mode=SoftmaxMode.LIS)
    assert done(Opcode.SOFTMAX, **sm) == 1 + 4 + (11 + 1 + 27 - 3) + 2 * 7 + R
    assert done(Opcode.SOFTMAX, **{**sm, "mode": SoftmaxMode.UNIFORM}) == 1 + 4 + (11 + 1 + 53 - 3) + 2 * 27 + R
    # LayerNorm B = 2: its latency 2 B + 41 plus the end cycle its formula does not count.
    assert done(Opcode.LAYERNORM, rows=2, cols=8, load_params=1) == 1 + 32 + (45 + 1) + 18 + R
    assert done(Opcode.ADD, rows=3, cols=8, load_params=0) == 1 + 7 + 2 * 2 + R
    assert done(Opcode.GELU, rows=2, cols=5) == 1 + 3 + 3 + R
    assert done(Opcode.GELU_TABLE) == 257 + R
    with pytest.raises(ValueError, match="not a vector instruction"):
        vector_timing(cfg, Opcode.MATMUL, {})


@pytest.mark.slow
@pytest.mark.parametrize("n, seed", [(2, 21), (4, 22), (8, 23), (16, 24)])
def test_long_random_sequences(n, seed):
    run_random(n, seed, count=60)
