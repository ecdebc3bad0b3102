"""SystolicArray against sw.intops (linear, attn_value_uniform), every result compared."""
from __future__ import annotations

import random

import numpy as np
import pytest
from amaranth.hdl import Const, Fragment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amaranth_streams import expect_no_beats, run_simulation, wait_accepted
from hw.config import AcceleratorConfig, ConfigError
from hw.processing_element import PRODUCT_BITS, ProcessingElement, psum_bits
from hw.systolic_array import StreamMode, SystolicArray, matmul_timing
from hw.timing import UnitTiming
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import run_cocotb
from sw import intops

SIZES = [(2, 2), (4, 4)]


def config_of(rows: int, cols: int, lut_mult_cols: int = 0, dsp_pack: int = 1) -> AcceleratorConfig:
    return AcceleratorConfig(array_rows=rows, array_cols=cols, vector_lanes=rows,
                             lut_mult_cols=lut_mult_cols, dsp_pack=dsp_pack)


class Tile:
    """One job: mode, stationary ``weights[R, C]`` and streaming ``rows[m, R]``."""

    def __init__(self, mode: StreamMode, weights, rows):
        self.mode = mode
        self.weights = np.asarray(weights, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)

    @property
    def m(self) -> int:
        return len(self.rows)

    def expected(self) -> list[list[int]]:
        if self.mode == StreamMode.INT8:
            out = intops.linear(self.rows, self.weights.T)
        else:
            out = intops.attn_value_uniform(self.rows, self.weights)
        return [[int(v) for v in row] for row in out]

    def row_bytes(self, i: int, rng: random.Random) -> list[int]:
        return [int(v) for v in self.rows[i]]


def random_tile(rng: np.random.Generator, rows: int, cols: int, mode: StreamMode, m: int) -> Tile:
    weights = rng.integers(-128, 128, (rows, cols))
    if mode == StreamMode.INT8:
        acts = rng.integers(-128, 128, (m, rows))
    else:
        acts = rng.integers(0, 256, (m, rows))
    return Tile(mode, weights, acts)


def simulate(rows: int, cols: int, tiles: list[Tile], *, weight_gap=0.0, act_gap=0.0,
             out_stall=0.0, seed=0, out_pattern=None, lut_mult_cols=0, dsp_pack=1,
             scramble=0):
    """Run ``tiles`` back to back (after ``scramble`` cycles of random inputs and a reset:
    :func:`run_simulation`).  Returns ``(results per tile, edges)`` where ``edges`` has
    the clock edges of each tile's first weight beat, first streaming row and last result."""
    dut = SystolicArray(config_of(rows, cols, lut_mult_cols, dsp_pack))
    results: list[list[list[int]]] = []
    edges = {"first_weight": [], "first_row": [], "last_result": []}

    def gaps(rng, probability):
        count = 0
        while rng.random() < probability:
            count += 1
        return count

    async def weight_driver(ctx):
        rng = random.Random(seed)
        edge = 0
        for tile in tiles:
            for r in range(rows):
                for _ in range(gaps(rng, weight_gap)):
                    ctx.set(dut.weights.valid, 0)
                    ctx.set(dut.weights.payload, {"data": rng.getrandbits(8 * cols),
                                                  "mode": rng.choice(list(StreamMode))})
                    await ctx.tick()
                    edge += 1
                ctx.set(dut.weights.payload, {"data": pack(tile.weights[r], 8), "mode": tile.mode})
                ctx.set(dut.weights.valid, 1)
                edge += await wait_accepted(ctx, dut.weights)
                if r == 0:
                    edges["first_weight"].append(edge)
        ctx.set(dut.weights.valid, 0)

    async def act_driver(ctx):
        rng = random.Random(seed + 1)
        edge = 0
        for tile in tiles:
            for i in range(tile.m):
                for _ in range(gaps(rng, act_gap)):
                    ctx.set(dut.activations.valid, 0)
                    ctx.set(dut.activations.payload, {"data": rng.getrandbits(8 * rows),
                                                      "last": rng.randint(0, 1)})
                    await ctx.tick()
                    edge += 1
                ctx.set(dut.activations.payload, {"data": pack(tile.row_bytes(i, rng), 8),
                                                  "last": i == tile.m - 1})
                ctx.set(dut.activations.valid, 1)
                edge += await wait_accepted(ctx, dut.activations)
                if i == 0:
                    edges["first_row"].append(edge)
        ctx.set(dut.activations.valid, 0)

    cycle_limit = 200 + 20 * sum(rows + tile.m for tile in tiles)

    async def monitor(ctx):
        rng = random.Random(seed + 2)
        edge = 0
        for tile in tiles:
            got = []
            while len(got) < tile.m:
                ready = out_pattern(edge) if out_pattern else rng.random() >= out_stall
                ctx.set(dut.results.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(dut.results.valid,
                                                               dut.results.payload)
                edge += 1
                assert edge < cycle_limit, "the array stopped producing results"
                if valid and ready:
                    got.append(unpack_signed(payload.data, 32, cols))
                    assert payload.last == (len(got) == tile.m), f"wrong last flag at row {len(got)}"
            results.append(got)
            edges["last_result"].append(edge)
        ctx.set(dut.results.ready, 1)
        await expect_no_beats(ctx, dut.results, rows + cols + 4, "result beat beyond the last tile")

    run_simulation(dut, weight_driver, act_driver, monitor, scramble=scramble, seed=seed)
    return results, edges


def check(rows: int, cols: int, tiles: list[Tile], **kwargs):
    results, edges = simulate(rows, cols, tiles, **kwargs)
    assert len(results) == len(tiles)
    for k, (tile, got) in enumerate(zip(tiles, results)):
        assert got == tile.expected(), (f"tile {k} ({tile.mode.name}, m={tile.m}): got {got}, "
                                        f"expected {tile.expected()}")
    return edges


def constant_tile(rows: int, cols: int, mode: StreamMode, weight: int, act: int, m: int) -> Tile:
    return Tile(mode, np.full((rows, cols), weight), np.full((m, rows), act))


# ---------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("rows,cols", SIZES)
def test_extreme_operands_back_to_back(rows, cols):
    """Largest magnitudes of every mode, tiles back to back with every mode switch."""
    tiles = [
        constant_tile(rows, cols, StreamMode.INT8, -128, -128, rows),
        constant_tile(rows, cols, StreamMode.INT8, 127, -128, rows + 1),
        constant_tile(rows, cols, StreamMode.INT8, -128, 127, 2),
        constant_tile(rows, cols, StreamMode.UINT8, -128, 255, rows),
        constant_tile(rows, cols, StreamMode.UINT8, 127, 255, 1),
        constant_tile(rows, cols, StreamMode.INT8, 127, 127, 1),
    ]
    check(rows, cols, tiles)


@pytest.mark.parametrize("rows,cols", SIZES)
def test_distinct_entries_with_stalls(rows, cols):
    """Every weight and operand different (catches transposed or shifted lanes), all modes,
    random input gaps and output stalls."""
    tiles = []
    for mode, offset in ((StreamMode.INT8, -60), (StreamMode.UINT8, 100)):
        weights = np.arange(rows * cols).reshape(rows, cols) * 7 - 50
        m = rows + 2
        acts = np.arange(m * rows).reshape(m, rows) * 3 + offset
        tiles.append(Tile(mode, weights, acts))
    check(rows, cols, tiles, weight_gap=0.3, act_gap=0.3, out_stall=0.4, seed=3)


@pytest.mark.parametrize("rows,cols", [(2, 2), (4, 4)])
def test_long_output_stalls(rows, cols):
    """Results held for long stretches: the array freezes and loses nothing."""
    rng = np.random.default_rng(5)
    tiles = [random_tile(rng, rows, cols, mode, m)
             for mode, m in ((StreamMode.INT8, 7), (StreamMode.UINT8, 2), (StreamMode.UINT8, 5))]
    check(rows, cols, tiles, out_pattern=lambda edge: (edge // 9) % 3 == 2)


@pytest.mark.parametrize("scramble", range(3, 40, 4))
@pytest.mark.parametrize("lut_mult_cols,dsp_pack", [(0, 1), (0, 2), (2, 1)])
def test_tiles_after_a_reset_mid_work(lut_mult_cols, dsp_pack, scramble):
    """Random inputs for ``scramble`` cycles leave weights half loaded, a tile half streamed
    and partial sums in flight; after the reset (the engine reset of a new run) the tiles
    come out bit-exact and nothing else does: the reset-less operands, weights, products
    and partial sums never reach a result."""
    rng = np.random.default_rng(scramble)
    tiles = [random_tile(rng, 4, 4, mode, m)
             for mode, m in ((StreamMode.INT8, 1), (StreamMode.UINT8, 6), (StreamMode.INT8, 4))]
    check(4, 4, tiles, weight_gap=0.2, act_gap=0.2, out_stall=0.3, seed=scramble,
          scramble=scramble, lut_mult_cols=lut_mult_cols, dsp_pack=dsp_pack)


@pytest.mark.parametrize("rows,cols", SIZES)
def test_short_tiles_wait_for_weights(rows, cols):
    """Tiles of fewer rows than R: the next tile's weight preload binds, results stay exact."""
    rng = np.random.default_rng(rows * 10 + cols)
    tiles = [random_tile(rng, rows, cols, mode, 1) for mode in
             (StreamMode.INT8, StreamMode.UINT8, StreamMode.UINT8, StreamMode.INT8)]
    check(rows, cols, tiles, out_stall=0.2, seed=11)


@pytest.mark.parametrize("rows,cols", [(8, 8), (16, 16)])
def test_larger_arrays(rows, cols):
    """Larger and non-square arrays: every mode with stalls, then stall-free timing."""
    rng = np.random.default_rng(rows * cols)
    tiles = [random_tile(rng, rows, cols, mode, m) for mode, m in (
        (StreamMode.INT8, rows + 2), (StreamMode.UINT8, 3), (StreamMode.UINT8, rows),
        (StreamMode.INT8, rows + 1))]
    check(rows, cols, tiles, weight_gap=0.2, act_gap=0.2, out_stall=0.3, seed=1)
    tiles = [random_tile(rng, rows, cols, mode, rows) for mode in StreamMode]
    edges = check(rows, cols, tiles)
    total = edges["last_result"][-1] - edges["first_weight"][0] + 1
    assert total == matmul_timing(config_of(rows, cols), rows).total(len(tiles))


def extreme_tiles(rows: int, cols: int) -> list[Tile]:
    """The extreme operands of every mode, as full, two-row and one-row tiles."""
    return [
        constant_tile(rows, cols, StreamMode.INT8, -128, -128, rows),
        constant_tile(rows, cols, StreamMode.INT8, 127, -128, 2),
        constant_tile(rows, cols, StreamMode.INT8, -128, 127, 1),
        constant_tile(rows, cols, StreamMode.UINT8, -128, 255, rows),
        constant_tile(rows, cols, StreamMode.UINT8, 127, 255, 1),
    ]


@pytest.mark.parametrize("rows,cols,lut", [(2, 2, 1), (4, 4, 4), (8, 8, 6)])
def test_lut_multiplier_columns(rows, cols, lut):
    """Columns mapped to shift-and-add LUT multipliers (``lut_mult_cols``) give the same
    results as the inferred ones: extreme operands of every mode, distinct entries, stalls,
    and the same timing."""
    check(rows, cols, extreme_tiles(rows, cols), lut_mult_cols=lut)
    rng = np.random.default_rng(rows + lut)
    tiles = [random_tile(rng, rows, cols, mode, m) for mode, m in (
        (StreamMode.INT8, rows + 2), (StreamMode.UINT8, 3), (StreamMode.UINT8, rows))]
    check(rows, cols, tiles, weight_gap=0.2, act_gap=0.2, out_stall=0.3, seed=2, lut_mult_cols=lut)
    tiles = [random_tile(rng, rows, cols, mode, rows) for mode in StreamMode]
    edges = check(rows, cols, tiles, lut_mult_cols=lut)
    total = edges["last_result"][-1] - edges["first_weight"][0] + 1
    assert total == matmul_timing(config_of(rows, cols, lut), rows).total(len(tiles))


def test_shift_add_product_exhaustive():
    """Every 9-bit x 8-bit signed operand pair: the LUT multiplier equals ``a * b``."""
    from amaranth import Module, Signal, signed
    from amaranth.sim import Simulator
    from hw.processing_element import shift_add_product
    a, b = Signal(signed(9)), Signal(signed(8))
    p = Signal(signed(PRODUCT_BITS))
    m = Module()
    m.d.comb += p.eq(shift_add_product(a, b))
    sim = Simulator(m)
    bad = []

    async def bench(ctx):
        for x in range(-256, 256, 1):
            for y in (-128, -127, -1, 0, 1, 2, 3, 85, 126, 127, *range(-100, 100, 7)):
                ctx.set(a, x)
                ctx.set(b, y)
                if ctx.get(p) != x * y:
                    bad.append((x, y, ctx.get(p)))

    sim.add_testbench(bench)
    sim.run()
    assert not bad, bad[:5]


# ---------------------------------------------------------------------------- DSP packing

@pytest.mark.parametrize("rows,cols,lut", [(2, 2, 0), (4, 4, 0), (4, 4, 2), (8, 8, 2)])
def test_packed_pairs(rows, cols, lut):
    """``dsp_pack = 2`` (two columns' products on one multiplier) gives the reference's
    results: extreme operands of every mode back to back (one-row tiles swap the packed
    weights every cycle), distinct entries with stalls, and the same timing."""
    tiles = [
        *extreme_tiles(rows, cols),
        constant_tile(rows, cols, StreamMode.UINT8, -1, 255, 1),
        constant_tile(rows, cols, StreamMode.INT8, -1, -128, 1),
    ]
    check(rows, cols, tiles, lut_mult_cols=lut, dsp_pack=2)
    rng = np.random.default_rng(rows + lut + 100)
    tiles = [random_tile(rng, rows, cols, mode, m) for mode, m in (
        (StreamMode.INT8, rows + 2), (StreamMode.UINT8, 1), (StreamMode.INT8, 1),
        (StreamMode.UINT8, 3), (StreamMode.UINT8, rows))]
    check(rows, cols, tiles, weight_gap=0.2, act_gap=0.2, out_stall=0.3, seed=3,
          lut_mult_cols=lut, dsp_pack=2)
    tiles = [random_tile(rng, rows, cols, mode, m) for mode, m in (
        (StreamMode.INT8, rows), (StreamMode.UINT8, rows), (StreamMode.INT8, 1), (StreamMode.UINT8, 2))]
    packed = check(rows, cols, tiles, lut_mult_cols=lut, dsp_pack=2)
    assert packed == check(rows, cols, tiles, lut_mult_cols=lut)


@pytest.mark.parametrize("rows,cols,lut", [(2, 2, 0), (4, 4, 0), (4, 4, 2)])
def test_packed_array_cycle_exact(rows, cols, lut):
    """The packed and the unpacked array side by side on the same random inputs every
    cycle (valid, data, mode, last and results.ready drawn afresh each cycle, so tiles of
    every length, swaps back to back and stalls): every output is equal in every cycle."""
    from amaranth import Module
    from amaranth.sim import Simulator
    top = Module()
    top.submodules.plain = plain = SystolicArray(config_of(rows, cols, lut))
    top.submodules.packed = packed = SystolicArray(config_of(rows, cols, lut, dsp_pack=2))
    sim = Simulator(top)
    sim.add_clock(1e-6)
    seen = {"results": 0}

    async def bench(ctx):
        rng = random.Random(rows * 10 + lut)
        for cycle in range(1500):
            inputs = [
                (lambda d: d.weights.valid, rng.random() < 0.7),
                (lambda d: d.weights.payload, {"data": rng.getrandbits(8 * cols),
                                               "mode": rng.choice(list(StreamMode))}),
                (lambda d: d.activations.valid, rng.random() < 0.8),
                (lambda d: d.activations.payload, {"data": rng.getrandbits(8 * rows),
                                                   "last": rng.random() < 0.3}),
                (lambda d: d.results.ready, rng.random() < 0.8),
            ]
            for port, value in inputs:
                ctx.set(port(plain), value)
                ctx.set(port(packed), value)
            for port in (lambda d: d.weights.ready, lambda d: d.activations.ready,
                         lambda d: d.results.valid, lambda d: d.results.payload.data,
                         lambda d: d.results.payload.last):
                assert ctx.get(port(plain)) == ctx.get(port(packed)), f"cycle {cycle}"
            seen["results"] += ctx.get(plain.results.valid)
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    assert seen["results"] > 200


def test_packed_product_fields():
    """``split_packed_product`` of ``a * pack_weights(w_hi, w_lo)`` is ``(a * w_hi, a * w_lo)``
    for every 9-bit ``a`` and edge and spread values of both 8-bit weights."""
    from amaranth import Module, Signal, signed
    from amaranth.sim import Simulator
    from hw.processing_element import PACKED_WEIGHT_BITS, pack_weights, split_packed_product
    values = (-128, -127, -65, -64, -2, -1, 0, 1, 2, 63, 64, 85, 126, 127, -100, -37, 29)
    m = Module()
    a = Signal(signed(9))
    lanes = []
    for w_hi in values:
        for w_lo in values:
            packed = Signal(signed(PACKED_WEIGHT_BITS))
            hi, lo = Signal(signed(PRODUCT_BITS)), Signal(signed(PRODUCT_BITS))
            m.d.comb += packed.eq(pack_weights(Const(w_hi, signed(8)), Const(w_lo, signed(8))))
            p_hi, p_lo = split_packed_product(a * packed)
            m.d.comb += [hi.eq(p_hi), lo.eq(p_lo)]
            lanes.append((w_hi, w_lo, hi, lo))
    sim = Simulator(m)
    bad = []

    async def bench(ctx):
        for x in range(-256, 256):
            ctx.set(a, x)
            for w_hi, w_lo, hi, lo in lanes:
                if (ctx.get(hi), ctx.get(lo)) != (x * w_hi, x * w_lo):
                    bad.append((x, w_hi, w_lo, ctx.get(hi), ctx.get(lo)))

    sim.add_testbench(bench)
    sim.run()
    assert not bad, bad[:5]


def test_dsp_pack_config():
    with pytest.raises(ConfigError, match="dsp_pack"):
        config_of(4, 4, dsp_pack=3)
    with pytest.raises(ConfigError, match="lut_mult_cols even"):
        config_of(4, 4, lut_mult_cols=1, dsp_pack=2)
    assert config_of(4, 4, lut_mult_cols=1).dsp_pack == 1


# ---------------------------------------------------------------------------- random tiles

@st.composite
def tile_streams(draw):
    rows, cols = draw(st.sampled_from(SIZES))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    count = draw(st.integers(1, 4))
    tiles = [random_tile(rng, rows, cols, draw(st.sampled_from(list(StreamMode))),
                         draw(st.integers(1, 2 * rows + 1)))
             for _ in range(count)]
    return rows, cols, tiles


@pytest.mark.parametrize("dsp_pack", [1, 2])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=tile_streams(), weight_gap=st.sampled_from([0.0, 0.5]),
       act_gap=st.sampled_from([0.0, 0.5]), out_stall=st.sampled_from([0.0, 0.5]),
       seed=st.integers(0, 1000))
def test_random_tiles(dsp_pack, stream, weight_gap, act_gap, out_stall, seed):
    """Random tile streams, one product per PE and two per packed pair."""
    rows, cols, tiles = stream
    check(rows, cols, tiles, weight_gap=weight_gap, act_gap=act_gap, out_stall=out_stall,
          seed=seed, dsp_pack=dsp_pack)


# ---------------------------------------------------------------------------- timing

@pytest.mark.parametrize("rows,cols", SIZES)
def test_timing_matches_matmul_timing(rows, cols):
    """Stall-free tiles back to back: measured cycles equal matmul_timing's formulas."""
    rng = np.random.default_rng(7)
    config = config_of(rows, cols)
    for m in sorted({1, rows - 1, rows, rows + 3}):
        jobs = 3
        tiles = [random_tile(rng, rows, cols, mode, m)
                 for mode in (StreamMode.INT8, StreamMode.UINT8, StreamMode.INT8)[:jobs]]
        edges = check(rows, cols, tiles)
        timing = matmul_timing(config, m)
        single = edges["last_result"][0] - edges["first_weight"][0] + 1
        assert single == timing.latency, f"m={m}: tile latency {single} != {timing.latency}"
        total = edges["last_result"][-1] - edges["first_weight"][0] + 1
        assert total == timing.total(jobs), f"m={m}: {jobs} tiles took {total} != {timing.total(jobs)}"
        starts = edges["first_row"]
        assert [b - a for a, b in zip(starts, starts[1:])] == [timing.interval] * (jobs - 1)
        streaming = edges["last_result"][0] - edges["first_row"][0] + 1
        assert streaming == m + rows + cols + 1


def test_timing_formulas():
    config = config_of(16, 16)
    assert matmul_timing(config, 40) == UnitTiming(latency=40 + 32 + 16 + 1, interval=40)
    assert matmul_timing(config, 5).latency == 5 + 2 * 16 + 16 + 1
    assert matmul_timing(config, 5).interval == 16
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError):
            matmul_timing(config, bad)
    with pytest.raises(TypeError):
        matmul_timing({"array_rows": 4}, 4)


# ---------------------------------------------------------------------------- construction

def test_properties_and_large_sizes_elaborate():
    dut = SystolicArray(config_of(4, 4))
    assert (dut.rows, dut.cols) == (4, 4)
    assert dut.config.array_rows == 4
    assert dut.weights.payload.shape().size == 8 * 4 + 1
    assert dut.activations.payload.shape().size == 8 * 4 + 1
    assert dut.results.payload.shape().size == 32 * 4 + 1
    for rows, cols in ((32, 32), (64, 64)):
        Fragment.get(SystolicArray(config_of(rows, cols)), None)
    with pytest.raises(TypeError):
        SystolicArray(None)


def test_processing_element_widths():
    assert PRODUCT_BITS == 17
    assert psum_bits(1) == 17 and psum_bits(2) == 18 and psum_bits(16) == 21 and psum_bits(17) == 22
    # Worst case of R products fits: R * 255 * 128 <= 2**(psum_bits - 1).
    for rows in (2, 3, 16, 64, 512):
        assert rows * 255 * 128 <= 1 << (psum_bits(rows) - 1)
    with pytest.raises(ValueError):
        psum_bits(0)
    with pytest.raises(ValueError):
        ProcessingElement(PRODUCT_BITS - 1)


# ---------------------------------------------------------------------------- cocotb

def cocotb_vectors(rows: int, cols: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def encode(tiles):
        return [{"mode": int(t.mode.value), "weights": t.weights.tolist(), "rows": t.rows.tolist(),
                 "expected": t.expected()} for t in tiles]

    modes = list(StreamMode)
    stalled = [random_tile(rng, rows, cols, modes[k % 2], int(rng.integers(1, 2 * rows + 2)))
               for k in range(12)]
    stalled.append(constant_tile(rows, cols, StreamMode.INT8, -128, -128, 3))
    stalled.append(constant_tile(rows, cols, StreamMode.UINT8, -128, 255, 2))
    timed = []
    for m in (1, rows, rows + 5):
        tiles = [random_tile(rng, rows, cols, modes[k % 2], m) for k in range(4)]
        timed.append({"tiles": encode(tiles), "total_cycles": matmul_timing(config_of(rows, cols), m).total(4)})
    return {"rows": rows, "cols": cols, "seed": seed, "stalled": encode(stalled), "timed": timed}


@pytest.mark.cocotb
@pytest.mark.parametrize("rows,cols", [(4, 4), (2, 2)])
def test_cocotb(rows, cols, tmp_path):
    run_cocotb(SystolicArray(config_of(rows, cols)), "systolic_array", "cocotb_systolic_array",
               tmp_path, vectors=cocotb_vectors(rows, cols, seed=rows * 100 + cols))


@pytest.mark.cocotb
def test_cocotb_packed(tmp_path):
    """The packed array (``dsp_pack = 2``) through the Verilog simulator, same vectors and
    same cycle counts as the unpacked one."""
    run_cocotb(SystolicArray(config_of(4, 4, dsp_pack=2)), "systolic_array",
               "cocotb_systolic_array", tmp_path, vectors=cocotb_vectors(4, 4, seed=404))
