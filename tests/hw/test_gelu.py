"""GeluLut against sw.intops.gelu_lut: every output lane of every beat compared."""
from __future__ import annotations

import gc
import random

import numpy as np
import pytest
from amaranth.hdl import Fragment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amaranth_streams import expect_no_beats, receive_beats, run_simulation
from hw.config import AcceleratorConfig
from hw.gelu import (GELU_PIPELINE_DEPTH, GELU_TABLE_ENTRIES, GeluLut, gelu_table_load_timing,
                     gelu_timing)
from hw.timing import UnitTiming
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import run_cocotb
from sw import intops

int8s = st.integers(intops.INT8_MIN, intops.INT8_MAX)


def config(lanes: int) -> AcceleratorConfig:
    return AcceleratorConfig(array_rows=lanes, array_cols=lanes, vector_lanes=lanes)


class Step:
    """One input beat, optionally preceded by table writes (each held until accepted) and
    accompanied by one write presented in the beat's first cycle (which the beat sees only
    if the write is accepted in an earlier cycle than the beat)."""

    def __init__(self, xs, writes_before=(), concurrent_write=None):
        self.xs = [int(v) for v in xs]
        self.writes_before = [(int(a), int(d)) for a, d in writes_before]
        self.concurrent_write = concurrent_write


def simulate(lanes: int, table, steps: list[Step], *, in_gap=0.0, out_stall=0.0, seed=0):
    """Load ``table``, then run ``steps``.  Returns ``(got, expected, first_in, last_out)``:
    output beats, golden beats (sw.intops.gelu_lut with the table each beat saw) and the
    edges of the first input and last output handshakes."""
    dut = GeluLut(config(lanes))
    expected: list[list[int]] = []
    got: list[list[int]] = []
    edges = {}
    model = np.zeros(GELU_TABLE_ENTRIES, dtype=np.int64)

    async def write(ctx, addr, data):
        nonlocal edge
        ctx.set(dut.table_write.valid, 1)
        ctx.set(dut.table_write.payload, {"addr": addr, "data": data})
        while True:
            _, _, ready = await ctx.tick().sample(dut.table_write.ready)
            edge += 1
            if ready:
                break
        ctx.set(dut.table_write.valid, 0)
        model[addr] = data

    edge = 0

    async def driver(ctx):
        nonlocal edge
        rng = random.Random(seed)
        for addr, value in enumerate(table):
            await write(ctx, addr, value)
        edge = 0
        for step in steps:
            for addr, value in step.writes_before:
                await write(ctx, addr, value)
            while rng.random() < in_gap:
                ctx.set(dut.i.payload, rng.getrandbits(8 * lanes))
                await ctx.tick()
                edge += 1
            ctx.set(dut.i.payload, pack(step.xs, 8))
            ctx.set(dut.i.valid, 1)
            # The beat sees the concurrent write only if the write is accepted in an
            # earlier cycle than the beat (the write waits while beats are in flight).
            pending = step.concurrent_write
            if pending is not None:
                ctx.set(dut.table_write.valid, 1)
                ctx.set(dut.table_write.payload, {"addr": pending[0], "data": pending[1]})
            seen = None
            while seen is None or pending is not None:
                _, _, beat_ready, write_ready = await ctx.tick().sample(
                    dut.i.ready, dut.table_write.ready)
                edge += 1
                if seen is None and beat_ready:
                    seen = model.copy()
                    edges.setdefault("first_in", edge)
                    ctx.set(dut.i.valid, 0)
                if pending is not None and write_ready:
                    model[pending[0]] = pending[1]
                    pending = None
                    ctx.set(dut.table_write.valid, 0)
            expected.append([int(v) for v in intops.gelu_lut(np.array(step.xs), seen)])

    async def monitor(ctx):
        rng = random.Random(seed + 1)
        for _ in range(GELU_TABLE_ENTRIES):
            await ctx.tick()
        limit = 100 + 20 * len(steps) + sum(len(s.writes_before) for s in steps)
        beats, edges["last_out"] = await receive_beats(
            ctx, dut.o, len(steps), lambda _edge: rng.random() >= out_stall,
            lambda payload: unpack_signed(payload, 8, lanes), 0, limit,
            "GeluLut stopped producing output")
        got.extend(beats)
        ctx.set(dut.o.ready, 1)
        await expect_no_beats(ctx, dut.o, GELU_PIPELINE_DEPTH + 3,
                              "an output beat without an input beat")

    run_simulation(dut, driver, monitor)
    return got, expected, edges["first_in"], edges["last_out"]


def check(lanes, table, steps, **kwargs):
    got, expected, first_in, last_out = simulate(lanes, table, steps, **kwargs)
    assert len(got) == len(steps)
    for k, (have, want) in enumerate(zip(got, expected)):
        assert have == want, f"beat {k} (x = {steps[k].xs}): got {have}, expected {want}"
    return first_in, last_out


def random_table(rng: random.Random) -> list[int]:
    return [rng.randint(intops.INT8_MIN, intops.INT8_MAX) for _ in range(GELU_TABLE_ENTRIES)]


# ---------------------------------------------------------------------------- Amaranth sim

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lanes=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**16),
       data=st.data(), in_gap=st.sampled_from([0.0, 0.3]), out_stall=st.sampled_from([0.0, 0.4]))
def test_random_beats_and_stalls(lanes, seed, data, in_gap, out_stall):
    table = data.draw(st.lists(int8s, min_size=256, max_size=256), label="table")
    beats = data.draw(st.lists(st.lists(int8s, min_size=lanes, max_size=lanes),
                               min_size=1, max_size=12), label="beats")
    check(lanes, table, [Step(xs) for xs in beats], in_gap=in_gap, out_stall=out_stall, seed=seed)


def test_extremes_everywhere():
    """Inputs -128 and 127 in every lane, table entries -128 and 127 at both ends."""
    table = [intops.INT8_MAX - k for k in range(GELU_TABLE_ENTRIES)]
    steps = [Step([intops.INT8_MIN] * 4), Step([intops.INT8_MAX] * 4),
             Step([intops.INT8_MIN, intops.INT8_MAX, 0, -1]), Step([-1, 0, 1, intops.INT8_MAX])]
    check(4, table, steps, out_stall=0.5, seed=3)


def test_every_entry_is_reachable():
    """All 256 inputs, 4 per beat, through a table of distinct-ish values."""
    rng = random.Random(7)
    table = random_table(rng)
    xs = list(range(intops.INT8_MIN, intops.INT8_MAX + 1))
    rng.shuffle(xs)
    check(4, table, [Step(xs[k:k + 4]) for k in range(0, 256, 4)], out_stall=0.2, in_gap=0.2)


def test_table_reload_between_beats():
    """Entries rewritten between beats (and while earlier beats are still in the pipeline
    or stalled at the output) change only the beats accepted after the write."""
    rng = random.Random(11)
    table = random_table(rng)
    steps = []
    for k in range(16):
        xs = [rng.choice([intops.INT8_MIN, intops.INT8_MAX, 0, rng.randint(-128, 127)])
              for _ in range(2)]
        writes = [(x + 128, rng.randint(-128, 127)) for x in xs] if k % 2 else []
        steps.append(Step(xs, writes_before=writes))
    check(2, table, steps, out_stall=0.5, seed=5)


def test_write_in_the_accepting_cycle_is_not_seen():
    """A write presented in the same cycle as the beat: the beat sees the old entry, whether
    both are accepted in that cycle or an output stall holds the beats in flight (the write
    then waits for them to drain, after the beat is accepted)."""
    rng = random.Random(13)
    table = random_table(rng)
    steps = [Step([x, x], concurrent_write=(x + 128, -table[x + 128] - 1))
             for x in (intops.INT8_MIN, intops.INT8_MAX, 5, -7, 0, 100)]
    check(2, table, steps)                                   # always accepted at once
    check(2, table, steps, out_stall=0.6, seed=2)            # sometimes delayed


@pytest.mark.parametrize("lanes", [2, 4])
def test_measured_timing_matches_formula(lanes):
    """Back-to-back beats, no stalls: first input to last output == gelu_timing latency."""
    rng = random.Random(lanes)
    n = 9 * lanes - 1                                         # last beat partly used
    beats = [[rng.randint(-128, 127) for _ in range(lanes)] for _ in range(-(-n // lanes))]
    first_in, last_out = check(lanes, random_table(rng), [Step(xs) for xs in beats])
    timing = gelu_timing(config(lanes), n)
    assert last_out - first_in + 1 == timing.latency
    assert timing.interval == len(beats)


def test_timing_formulas():
    assert gelu_timing(config(4), 1) == UnitTiming(latency=3, interval=1)
    assert gelu_timing(config(4), 4) == UnitTiming(latency=3, interval=1)
    assert gelu_timing(config(4), 197 * 3072) == UnitTiming(latency=151298, interval=151296)
    assert gelu_table_load_timing(config(4)) == UnitTiming(latency=256, interval=256)
    with pytest.raises(ValueError):
        gelu_timing(config(4), 0)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_parameters():
    with pytest.raises(TypeError):
        GeluLut(4)
    gc.collect()                                              # the half-built object, now


def test_component_shape():
    dut = GeluLut(config(8))
    Fragment.get(dut, None)
    assert dut.lanes == 8
    assert dut.i.payload.shape().width == 64
    assert dut.o.payload.shape().width == 64


# ---------------------------------------------------------------------------- cocotb

@pytest.mark.cocotb
def test_cocotb(tmp_path):
    """Generated Verilog with random valid/ready stalls, table reloads, and a stall-free job
    whose cycle count must equal gelu_timing."""
    lanes = 4
    rng = random.Random(2024)
    tables = [random_table(rng) for _ in range(2)]
    tables[1][0], tables[1][255] = intops.INT8_MIN, intops.INT8_MAX
    jobs = []
    for table, n in ((tables[0], 4 * 24), (tables[1], 4 * 20 - 2)):
        xs = [rng.randint(-128, 127) for _ in range(n)]
        xs[:8] = [intops.INT8_MIN] * 4 + [intops.INT8_MAX] * 4
        padded = xs + [0] * (-n % lanes)
        expected = intops.gelu_lut(np.array(padded), np.array(table))
        timing = gelu_timing(config(lanes), n)
        jobs.append({"table": table, "xs": padded, "expected": [int(v) for v in expected],
                     "latency": timing.latency, "load_cycles": gelu_table_load_timing(
                         config(lanes)).latency})
    run_cocotb(GeluLut(config(lanes)), "gelu_lut", "cocotb_gelu", tmp_path,
               vectors={"lanes": lanes, "jobs": jobs})
