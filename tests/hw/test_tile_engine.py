"""TileEngine (MATMUL on the systolic array, ATTNV on the LIS unit) against the ISA table.

The engine runs with its region memories (``hw.core.memories.build_memories``) in a test
component; the scratchpad regions are written through the back door and every word of the
output region is compared with ``SPECS[op].execute`` on an ``ArchState`` holding the same
scratchpad, after every retirement.  Every start and retire cycle, and the ``busy`` output
in every cycle, are compared with :func:`hw.core.tile_engine.tile_timing`.
"""
from __future__ import annotations

import gc
import random
import warnings

import numpy as np
import pytest
from amaranth import Module
from amaranth.hdl import Fragment
from amaranth.lib import wiring

from amaranth_streams import run_simulation
from compiler.isa import SPECS, ArchState, Instruction, encode
from hw.config import AcceleratorConfig
from hw.core.memories import build_memories, geometry
from hw.core.signatures import engine_signature
from hw.core.tile_engine import KINDS, TileEngine, tile_timing
from hw.lis_attention import lis_attention_timing
from hw.systolic_array import matmul_timing
from lane_packing import pack, unpack_signed


def config_of(n: int, max_tile_rows: int | None = None, scratchpad_kib: int | None = None,
              accumulator_kib: int | None = None) -> AcceleratorConfig:
    """A small machine of width ``n`` (small memories keep the simulation quick)."""
    return AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n,
                             scratchpad_kib=scratchpad_kib or max(2, n // 2),
                             accumulator_kib=accumulator_kib or max(1, n // 4),
                             max_tile_rows=max_tile_rows or 2 * n + 3)


class EngineBench(wiring.Component):
    """A tile engine wired to its own region memories: ``instr``, ``retire`` and ``busy``
    are the engine's; ``memories`` maps a region name to its ``Memory`` (back door)."""

    def __init__(self, config: AcceleratorConfig, kind: str):
        self.engine = TileEngine(config, kind)
        #: Every region's memory (the engine uses its own ones).
        self.memories = build_memories(config)
        self._reads = {name: self.memories[region].read_port()
                       for name, region in self.engine.read_ports.items()}
        name, region = self.engine.write_port
        self._write = (name, self.memories[region].write_port(
            granularity=geometry(config, region).granularity))
        super().__init__(dict(engine_signature().members.items()))

    def elaborate(self, platform):
        m = Module()
        engine = m.submodules.engine = self.engine
        for region, memory in self.memories.items():
            m.submodules[region] = memory
        for name, port in self._reads.items():
            ours = getattr(engine, name)
            m.d.comb += [port.addr.eq(ours.addr), port.en.eq(ours.en), ours.data.eq(port.data)]
        name, port = self._write
        ours = getattr(engine, name)
        m.d.comb += [port.addr.eq(ours.addr), port.data.eq(ours.data), port.en.eq(ours.en)]
        m.d.comb += [
            engine.instr.valid.eq(self.instr.valid),
            engine.instr.payload.eq(self.instr.payload),
            self.instr.ready.eq(engine.instr.ready),
            self.retire.eq(engine.retire),
            self.busy.eq(engine.busy),
        ]
        return m


# ---------------------------------------------------------------------------- instructions

def _place(rng: random.Random, region, rows: int, width: int, stride: int, n: int) -> int | None:
    """A random ``N``-aligned address at which the pattern lies inside ``region``."""
    span = (rows - 1) * stride + width
    slots = (region.size - span) // n
    if slots < 0:
        return None
    return region.base + n * rng.randint(0, slots)


def _stride(rng: random.Random, width: int, n: int, written: bool) -> int:
    """A stride (a multiple of ``N``): the row width or more, or (read patterns) less."""
    choices = [width, width, width + n, width + n * rng.randint(1, 4)]
    if not written:
        choices += [0, n * rng.randint(0, width // n)]
    return rng.choice(choices)


def random_instruction(rng: random.Random, config: AcceleratorConfig, kind: str, *,
                       m: int | None = None, n_tiles: int | None = None,
                       k_tiles: int | None = None, transpose: int | None = None,
                       max_tiles: int = 3) -> Instruction:
    """A legal MATMUL / ATTNV with random shape, mode and patterns inside its regions."""
    op, stream_regions, stationary_region, out_region = KINDS[kind]
    n = config.lanes
    regions = config.regions
    for _ in range(1000):
        mm = m or rng.choice([1, 2, n - 1, n, n + 1, rng.randint(1, config.max_tile_rows)])
        mm = max(1, min(mm, config.max_tile_rows))
        nt = n_tiles or rng.randint(1, max_tiles)
        kt = k_tiles or rng.randint(1, max_tiles)
        big_k, big_n = kt * n, nt * n
        args: dict[str, int] = {"m": mm, "n_tiles": nt, "k_tiles": kt}
        trans = 0
        if kind == "matrix":
            trans = rng.randint(0, 1) if transpose is None else transpose
            args.update(mode=rng.randint(0, 1), transpose=trans)
        a_stride = _stride(rng, big_k, n, written=False)
        w_rows, w_width = (big_n, big_k) if trans else (big_k, big_n)
        w_stride = _stride(rng, w_width, n, written=False)
        acc_stride = _stride(rng, big_n, n, written=True)
        a_addr = _place(rng, regions[rng.choice(stream_regions)], mm, big_k, a_stride, n)
        w_addr = _place(rng, regions[stationary_region], w_rows, w_width, w_stride, n)
        acc_addr = _place(rng, regions[out_region], mm, big_n, acc_stride, n)
        if None in (a_addr, w_addr, acc_addr) or max(a_stride, w_stride, acc_stride) >= 1 << 16:
            continue
        args.update(a_addr=a_addr, a_stride=a_stride, w_addr=w_addr, w_stride=w_stride,
                    acc_addr=acc_addr, acc_stride=acc_stride)
        ins = Instruction(op, args=args)
        check_legal(config, ins)
        return ins
    raise AssertionError(f"no {kind} instruction fits this config")


def check_legal(config: AcceleratorConfig, ins: Instruction) -> None:
    """The instruction passes the ISA's checks and its patterns lie in their regions."""
    spec = SPECS[ins.op]
    ins.check()
    spec.check(config, ins.args)
    for access in spec.accesses(config, ins.args):
        assert any(config.regions[r].base <= access.lo and access.hi <= config.regions[r].end
                   for r in access.regions), f"{access} outside {access.regions}"
        if access.write and access.rows > 1:
            assert access.stride >= access.width


# ---------------------------------------------------------------------------- simulation

class Run:
    """What one simulation observed: start and retire cycles, ``busy`` per cycle."""

    def __init__(self):
        self.offers: list[int] = []
        self.starts: list[int] = []
        self.retires: list[int] = []
        self.busy: list[int] = []
        #: Cycles of the unit's weight-beat and streaming-row handshakes.
        self.beats: list[int] = []
        self.rows: list[int] = []


def fill_scratchpad(rng: np.random.Generator, config: AcceleratorConfig, kind: str,
                    constant: tuple[int, int] | None = None) -> np.ndarray:
    """Scratchpad bytes of the engine's source regions: random (codes 0..15, a fifth of them
    15), or ``constant = (streaming byte, stationary byte)`` everywhere."""
    spad = np.zeros(config.scratchpad_bytes, dtype=np.int64)
    _, stream_regions, stationary_region, _ = KINDS[kind]
    for name in (*stream_regions, stationary_region):
        region = config.regions[name]
        if constant is not None:
            values = np.full(region.size, constant[name == stationary_region])
        elif name == "codes":
            values = rng.integers(0, 16, region.size)
            values[rng.random(region.size) < 0.2] = 15
        else:
            values = rng.integers(-128, 128, region.size)
        spad[region.base:region.end] = values
    return spad


def golden_snapshots(config: AcceleratorConfig, kind: str, spad: np.ndarray,
                     instrs: list[Instruction]) -> list[np.ndarray]:
    """The output region's words after each instruction, by ``SPECS[op].execute``."""
    state = ArchState(config, np.zeros((1, 16), dtype=np.uint8))
    state.spad[0] = spad.astype(np.uint8).view(np.int8)
    out = config.regions[KINDS[kind][3]]
    snaps = []
    for ins in instrs:
        SPECS[ins.op].execute(state, ins.args)
        snaps.append(state.acc[0, out.base:out.end].copy())
    return snaps


def simulate(config: AcceleratorConfig, kind: str, instrs: list[Instruction],
             deltas: list[int], spad: np.ndarray, seed: int = 0, scramble: int = 0) -> Run:
    """Offer ``instrs`` in order: instruction ``i`` from ``max(start[i-1] + 1, start[i-1] +
    busy[i-1] + deltas[i])`` on (instruction 0 from ``deltas[0]``), checking every output
    word at every retirement, the unit and FIFO handshakes in every cycle.  With
    ``scramble``, random instructions (:func:`random_instruction` with one or two tiles a
    side, offered at random) run for that many cycles first and the engine is reset
    (:func:`run_simulation`); the memories are then filled again (their contents are not the
    engine's state) and the run starts."""
    dut = EngineBench(config, kind)
    engine = dut.engine
    n = config.lanes
    words = [int.from_bytes(encode(ins), "little") for ins in instrs]
    timings = [tile_timing(config, ins.args, kind) for ins in instrs]
    snaps = golden_snapshots(config, kind, spad, instrs)
    out_name = KINDS[kind][3]
    out_region = config.regions[out_name]
    out_memory = dut.memories[out_name]
    rows = out_region.size // n
    run = Run()
    rng = random.Random(seed)
    limit = 200 + sum(t.done + abs(d) for t, d in zip(timings, deltas))
    unit = engine.unit
    handshakes = [(unit.weights.valid, unit.weights.ready, "weight beat refused"),
                  (unit.activations.valid, unit.activations.ready, "streaming row refused"),
                  (engine.tiles_ahead.w_en, engine.tiles_ahead.w_rdy, "descriptor FIFO full"),
                  (engine.tiles_ahead.r_en, engine.tiles_ahead.r_rdy, "descriptor FIFO empty"),
                  (engine.tiles_out.w_en, engine.tiles_out.w_rdy, "result FIFO full"),
                  (engine.tiles_out.r_en, engine.tiles_out.r_rdy, "result FIFO empty")]
    probes = [s for h in handshakes for s in h[:2]]
    write_en = getattr(engine, engine.write_port[0]).en

    def output_words(ctx) -> np.ndarray:
        return np.array([unpack_signed(ctx.get(out_memory.data[r]), 32, n) for r in range(rows)],
                        dtype=np.int64).reshape(-1)

    async def bench(ctx):
        if scramble:
            for r in range(rows):
                ctx.set(out_memory.data[r], 0)
        for name in {*engine.read_ports.values()}:
            memory = dut.memories[name]
            region = config.regions[name]
            for r in range(region.size // n):
                ctx.set(memory.data[r], pack(spad[region.base + r * n:region.base + (r + 1) * n], 8))
        cycle = 0
        offer_at = deltas[0]
        quiet = 0
        while len(run.retires) < len(instrs) or quiet < 4 * n + 8:
            k = len(run.starts)
            offering = k < len(instrs) and cycle >= offer_at
            ctx.set(dut.instr.valid, offering)
            ctx.set(dut.instr.payload, words[k] if offering else rng.getrandbits(256))
            _, _, ready, retire, busy, wen, *seen = await ctx.tick().sample(
                dut.instr.ready, dut.retire, dut.busy, write_en, *probes)
            for (valid, ready_, what), v, r in zip(handshakes, seen[0::2], seen[1::2]):
                assert r or not v, f"cycle {cycle}: {what}"
            if seen[0] and seen[1]:
                run.beats.append(cycle)
            if seen[2] and seen[3]:
                run.rows.append(cycle)
            run.busy.append(busy)
            if offering and ready:
                run.offers.append(offer_at)
                run.starts.append(cycle)
                if k + 1 < len(instrs):
                    offer_at = max(cycle + 1, cycle + timings[k].busy + deltas[k + 1])
            if retire:
                i = len(run.retires)
                assert i < len(instrs), f"cycle {cycle}: retire pulse without an instruction"
                run.retires.append(cycle)
                got = output_words(ctx)
                want = snaps[i]
                bad = np.flatnonzero(got != want)
                assert not bad.size, (
                    f"instruction {i} {instrs[i].args}: {bad.size} output words differ after "
                    f"its retirement, first at word {out_region.base + bad[0]}: got "
                    f"{got[bad[0]]}, expected {want[bad[0]]}")
            if len(run.retires) == len(instrs):
                assert not wen or retire, f"cycle {cycle}: output write after the last retirement"
                quiet += 1
            cycle += 1
            assert cycle < limit, f"stopped: {len(run.starts)} started, {len(run.retires)} retired"

    def draw_instruction(rng):
        ins = random_instruction(rng, config, kind, max_tiles=2,
                                 m=rng.choice([1, 2, n, n + 3]))
        return int.from_bytes(encode(ins), "little")

    run_simulation(dut, bench, scramble=scramble, seed=seed,
                   draws=[(dut.instr.payload, draw_instruction)])
    check_timing(run, timings)
    return run


def check_timing(run: Run, timings) -> None:
    """Starts, retirements and ``busy`` exactly as :func:`tile_timing` predicts."""
    expect_start = None
    for i, (t, offer, start, retire) in enumerate(zip(timings, run.offers, run.starts,
                                                      run.retires)):
        want = offer if expect_start is None else max(offer, expect_start)
        assert start == want, f"instruction {i}: started in cycle {start}, expected {want}"
        assert retire - start == t.done, (f"instruction {i}: retired {retire - start} cycles "
                                          f"after its start, tile_timing says {t.done}")
        expect_start = start + t.busy
    busy = [0] * len(run.busy)
    for t, start in zip(timings, run.starts):
        for c in range(start, start + t.busy):
            busy[c] = 1
    first_bad = next((c for c, (a, b) in enumerate(zip(run.busy, busy)) if a != b), None)
    assert first_bad is None, f"busy is {run.busy[first_bad]} in cycle {first_bad}, expected {busy[first_bad]}"


def check_sequence(n: int, kind: str, seed: int, count: int, config=None, scramble: int = 0,
                   **shape) -> Run:
    config = config or config_of(n)
    rng = random.Random(seed)
    instrs = [random_instruction(rng, config, kind, **shape) for _ in range(count)]
    deltas = [rng.choice([0, 0, 0, -3, 1, 2, n - 1, n + 1, 3 * n]) for _ in range(count)]
    deltas[0] = rng.randint(0, 3)
    spad = fill_scratchpad(np.random.default_rng(seed), config, kind)
    return simulate(config, kind, instrs, deltas, spad, seed, scramble)


# ---------------------------------------------------------------------------- tests

KIND_NAMES = list(KINDS)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_random_sequences(kind, n, seed):
    """Six random instructions (every mode, transposed or not, m below / at / above N,
    strides 0 to wide, either streaming region), offered back to back, early and late."""
    check_sequence(n, kind, seed, count=6)


@pytest.mark.parametrize("scramble", range(5, 120, 6))
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_sequences_after_a_reset_mid_work(kind, scramble):
    """Random instructions run for ``scramble`` cycles (tiles half read, results in flight,
    some retired, the last one cut short), then the engine reset of a new run: the next
    instructions start, retire and write exactly as from power-up, so the reset-less
    instruction fields, tile counters, transpose banks and result registers never leak."""
    check_sequence(4, kind, scramble, count=3, scramble=scramble)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_sixteen_lanes(kind):
    """N = 16: two instructions back to back, one of them m > N with two k tiles."""
    config = config_of(16, max_tile_rows=20, scratchpad_kib=16, accumulator_kib=8)
    rng = random.Random(16)
    instrs = [random_instruction(rng, config, kind, m=18, n_tiles=1, k_tiles=2, transpose=1),
              random_instruction(rng, config, kind, m=5, n_tiles=2, k_tiles=1, transpose=0)]
    spad = fill_scratchpad(np.random.default_rng(16), config, kind)
    simulate(config, kind, instrs, [1, 0], spad)


@pytest.mark.parametrize("transpose", [0, 1])
@pytest.mark.parametrize("mode", [0, 1])
def test_every_matmul_mode_and_layout(mode, transpose):
    """Each (mode, transpose) alone and then back to back with the other layout."""
    n = 4
    config = config_of(n)
    rng = random.Random(10 * mode + transpose)
    instrs = []
    for t in (transpose, 1 - transpose, transpose):
        ins = random_instruction(rng, config, "matrix", transpose=t, m=rng.choice([3, 6]),
                                 n_tiles=2, k_tiles=2)
        ins.args["mode"] = mode
        instrs.append(ins)
    spad = fill_scratchpad(np.random.default_rng(mode + 2 * transpose), config, "matrix")
    simulate(config, "matrix", instrs, [0, 0, 5], spad)


@pytest.mark.parametrize("kind,constant", [
    ("matrix", (-128, -128)), ("matrix", (127, -128)), ("matrix", (-128, 127)),
    ("attn", (0, -128)), ("attn", (0, 127)), ("attn", (15, -128)), ("attn", (14, 127))])
def test_extreme_contents(kind, constant):
    """Every operand at an extreme (INT8 and UINT8 products of -128 / 127 bytes, every LIS
    term 2**22 in magnitude, or all zero codes) summed over three k tiles."""
    n = 4
    config = config_of(n)
    rng = random.Random(sum(constant))
    instrs = [random_instruction(rng, config, kind, k_tiles=3, n_tiles=1, m=m)
              for m in (1, n + 2)]
    spad = fill_scratchpad(np.random.default_rng(0), config, kind, constant)
    simulate(config, kind, instrs, [0, 0], spad)


@pytest.mark.parametrize("m", ["short", "square", "long"])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_back_to_back_keeps_the_unit_busy(kind, m):
    """Instructions of 3 x 3 tiles offered back to back: the unit takes a weight beat in
    every cycle (m <= N) or a streaming row in every cycle (m >= N) from the first
    instruction's first to the last one's last, with no gap between instructions; the
    descriptor FIFOs are at their fullest here."""
    n = 4
    config = config_of(n, accumulator_kib=2)
    rows = {"short": 1, "square": n, "long": n + 3}[m]
    rng = random.Random(rows)
    instrs = [random_instruction(rng, config, kind, m=rows, n_tiles=3, k_tiles=3)
              for _ in range(3)]
    spad = fill_scratchpad(np.random.default_rng(rows), config, kind)
    run = simulate(config, kind, instrs, [0, 0, 0], spad)
    for cycles in ([run.beats] if rows <= n else []) + ([run.rows] if rows >= n else []):
        assert cycles == list(range(cycles[0], cycles[0] + len(cycles))), "the unit idled"
    assert len(run.rows) == 27 * rows


def test_one_row_buffer():
    """max_tile_rows = 1: a one-row accumulation buffer, every tile one row."""
    for kind in KIND_NAMES:
        check_sequence(2, kind, seed=3, count=4, config=config_of(2, max_tile_rows=1))


def test_full_buffer():
    """m = max_tile_rows (a power of two): every row of the buffer in use."""
    for kind in KIND_NAMES:
        check_sequence(4, kind, seed=5, count=3, config=config_of(4, max_tile_rows=8), m=8)


# ---------------------------------------------------------------------------- timing

def test_tile_timing_formulas():
    config = config_of(16)
    args = {"m": 40, "n_tiles": 2, "k_tiles": 3, "transpose": 1, "mode": 0}
    unit = matmul_timing(config, 40)
    assert unit.latency == 40 + 48 + 1
    assert tile_timing(config, args) == tile_timing(config, args, "matrix")
    assert tile_timing(config, args).busy == 6 * 40
    assert tile_timing(config, args).done == 5 * 40 + unit.latency + 16 + 2
    attn = {"m": 5, "n_tiles": 1, "k_tiles": 1}
    assert tile_timing(config, attn).busy == 16
    assert tile_timing(config, attn).done == lis_attention_timing(config, 5).latency + 2 == 28
    # One tile of m rows on the matrix engine: start, decode, read, N through the transpose
    # stage, N beats, m rows, 2N + 1 through the array, one write.
    assert tile_timing(config_of(4), {"m": 3, "n_tiles": 1, "k_tiles": 1, "transpose": 0}).done \
        == 1 + 1 + 4 + 4 + 3 - 1 + 8 + 1 + 1
    for bad in ({"m": 0, "n_tiles": 1, "k_tiles": 1}, {"m": 1, "n_tiles": True, "k_tiles": 1},
                {"m": 1, "n_tiles": 1, "k_tiles": 1.0}):
        with pytest.raises(ValueError):
            tile_timing(config, bad)
    with pytest.raises(ValueError):
        tile_timing(config, attn, "vector")
    with pytest.raises(TypeError):
        tile_timing(None, attn)


def test_unit_timings_lookup():
    from hw.units import UnitTimings, unit_spec
    config = config_of(8)
    ut = UnitTimings(config)
    args = {"m": 9, "n_tiles": 2, "k_tiles": 1, "mode": 1, "transpose": 0}
    assert ut.tile(args) == tile_timing(config, args)
    assert ut.tile({"m": 3, "n_tiles": 1, "k_tiles": 2}) == \
        tile_timing(config, {"m": 3, "n_tiles": 1, "k_tiles": 2}, "attn")
    assert ut.lis_attention(3) == lis_attention_timing(config, 3)
    assert unit_spec("tile_engine").timing_function() is tile_timing
    assert not unit_spec("tile_engine").buildable


# ---------------------------------------------------------------------------- construction

@pytest.mark.parametrize("kind", KIND_NAMES)
def test_ports_follow_the_memories(kind):
    config = AcceleratorConfig()
    engine = TileEngine(config, kind)
    _, stream_regions, stationary_region, out_region = KINDS[kind]
    assert engine.read_ports == {f"rd_{r}": r for r in (*stream_regions, stationary_region)}
    assert engine.write_port == (f"wr_{out_region}", out_region)
    for name, region in engine.read_ports.items():
        g = geometry(config, region)
        port = getattr(engine, name)
        assert len(port.data) == g.width and len(port.addr) == (g.depth - 1).bit_length()
    port = getattr(engine, f"wr_{out_region}")
    g = geometry(config, out_region)
    assert len(port.data) == 32 * config.lanes and len(port.en) == config.lanes
    assert len(port.addr) == (g.depth - 1).bit_length()
    assert engine.opcode == KINDS[kind][0] and engine.kind == kind
    Fragment.get(engine, None)


def test_bad_arguments():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the half-built components are never used
        with pytest.raises(ValueError, match="kind must be one of matrix, attn"):
            TileEngine(config_of(4), "vector")
        with pytest.raises(TypeError):
            TileEngine(None, "matrix")
        gc.collect()


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_long_random_sequences(kind, n):
    """Twenty-five random instructions per width and kind, larger tile counts."""
    for seed in (11, 12):
        check_sequence(n, kind, seed, count=25, max_tiles=4)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KIND_NAMES)
def test_default_config(kind):
    """The default machine (N = 16, full-size regions: patterns anywhere in them)."""
    config = AcceleratorConfig(max_tile_rows=24)
    rng = random.Random(7)
    instrs = [random_instruction(rng, config, kind, m=m, n_tiles=2, k_tiles=2) for m in (3, 20)]
    simulate(config, kind, instrs, [0, 0], fill_scratchpad(np.random.default_rng(1), config, kind))
