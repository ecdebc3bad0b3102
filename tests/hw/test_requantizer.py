"""Requantizer against sw.intops.requantize (after the linear() bias add), every output compared."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
from amaranth.hdl import Fragment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amaranth_streams import receive_jobs, run_simulation, tick_until, wait_accepted
from hw.config import AcceleratorConfig, ConfigError
from hw.requantizer import OUTPUT_BUFFER, PIPELINE_STAGES, Requantizer, requant_timing
from hw.timing import UnitTiming
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import run_cocotb
from sw import intops

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
MAX_CHANNELS = 8
#: The legal shifts, 0..63, all compared against sw.intops.requantize directly.
MAX_SHIFT = intops.REQUANT_MAX_SHIFT
#: (lanes, config): 4 lanes (2 channel groups) and 3 lanes (3 groups, the last one partial).
_FOUR = AcceleratorConfig(array_rows=4, array_cols=4, vector_lanes=4, max_channels=MAX_CHANNELS)
SETUPS = {4: _FOUR, 3: _FOUR}


class Records:
    """Per-channel parameters for every record slot (``groups * lanes`` channels)."""

    def __init__(self, bias, mult, shift, offset):
        self.bias = np.asarray(bias, dtype=np.int64)
        self.mult = np.asarray(mult, dtype=np.int64)
        self.shift = np.asarray(shift, dtype=np.int64)
        self.offset = np.asarray(offset, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.bias)

    def writes(self) -> list[dict]:
        return [{"channel": ch, "bias": int(self.bias[ch]), "mult": int(self.mult[ch]),
                 "shift": int(self.shift[ch]), "offset": int(self.offset[ch])}
                for ch in range(len(self))]


class Beat:
    """One input beat: ``lanes`` accumulators of channel group ``group``."""

    def __init__(self, accs, group: int, int16: bool = False, per_tensor: bool = False):
        self.accs = [int(v) for v in accs]
        self.group = group
        self.int16 = bool(int16)
        self.per_tensor = bool(per_tensor)

    def expected(self, records: Records) -> list[int]:
        lanes = len(self.accs)
        channels = [0] * lanes if self.per_tensor else \
            [self.group * lanes + lane for lane in range(lanes)]
        lo, hi = (intops.INT16_MIN, intops.INT16_MAX) if self.int16 else \
            (intops.INT8_MIN, intops.INT8_MAX)
        acc = np.asarray(self.accs, dtype=np.int64) + records.bias[channels]
        out = intops.requantize(acc, records.mult[channels], records.shift[channels],
                                records.offset[channels], lo, hi)
        return [int(v) for v in out]


class Job:
    """Records loaded through the write port, then beats streamed with them."""

    def __init__(self, records: Records, beats: list[Beat]):
        self.records = records
        self.beats = beats

    def expected(self) -> list[list[int]]:
        return [beat.expected(self.records) for beat in self.beats]


async def write_records(ctx, dut, records: Records) -> int:
    """Write every record through the parameter port, one a cycle; returns the cycles."""
    for write in records.writes():
        ctx.set(dut.param.en, 1)
        ctx.set(dut.param.group, write["channel"] // dut.lanes)
        ctx.set(dut.param.lane, write["channel"] % dut.lanes)
        for name in ("bias", "mult", "shift", "offset"):
            ctx.set(getattr(dut.param, name), write[name])
        await ctx.tick()
    ctx.set(dut.param.en, 0)
    return len(records.writes())


def simulate(lanes: int, jobs: list[Job], *, in_gap=0.0, out_stall=0.0, seed=0, out_pattern=None,
             scramble=0):
    """Run the jobs in order (records of a job are written once the previous job's outputs are
    all out).  Returns (output beats per job, edge of each job's first input beat, edge of
    each job's last output beat).  ``scramble``: cycles of random beats before a reset
    (:func:`run_simulation`)."""
    dut = Requantizer(SETUPS[lanes], lanes)
    outputs: list[list[list[int]]] = []
    first_in: list[int] = []
    last_out: list[int] = []

    async def driver(ctx):
        rng = random.Random(seed)
        edge = 0
        for done, job in enumerate(jobs):
            # The next job starts once every earlier one has left the unit.
            edge += await tick_until(ctx, lambda: len(outputs) >= done)
            edge += await write_records(ctx, dut, job.records)
            for k, beat in enumerate(job.beats):
                while rng.random() < in_gap:
                    ctx.set(dut.i.valid, 0)
                    ctx.set(dut.i.payload, {"data": rng.getrandbits(32 * lanes),
                                            "group": rng.randrange(dut.groups),
                                            "int16": rng.randint(0, 1),
                                            "per_tensor": rng.randint(0, 1)})
                    await ctx.tick()
                    edge += 1
                ctx.set(dut.i.payload, {"data": pack(beat.accs, 32), "group": beat.group,
                                        "int16": beat.int16, "per_tensor": beat.per_tensor})
                ctx.set(dut.i.valid, 1)
                edge += await wait_accepted(ctx, dut.i)
                if k == 0:
                    first_in.append(edge)
            ctx.set(dut.i.valid, 0)

    total_beats = sum(len(job.beats) for job in jobs)
    cycle_limit = 200 + 20 * (total_beats + sum(len(job.records) for job in jobs))

    async def monitor(ctx):
        rng = random.Random(seed + 1)
        await receive_jobs(
            ctx, dut.o, [len(job.beats) for job in jobs],
            lambda at: out_pattern(at) if out_pattern else rng.random() >= out_stall,
            lambda payload: unpack_signed(payload, 16, lanes), cycle_limit,
            "the requantizer stopped producing output", outputs, last_out,
            PIPELINE_STAGES + 3, "output beat beyond the last input beat")

    run_simulation(dut, driver, monitor, scramble=scramble, seed=seed,
                   ranges=[(dut.param.en, 0, 0)])
    return outputs, first_in, last_out


def check(lanes: int, jobs: list[Job], **kwargs):
    outputs, first_in, last_out = simulate(lanes, jobs, **kwargs)
    assert len(outputs) == len(jobs)
    for k, (job, got) in enumerate(zip(jobs, outputs)):
        expected = job.expected()
        for b, (beat, want, have) in enumerate(zip(job.beats, expected, got)):
            assert have == want, (f"job {k} beat {b} (group {beat.group}, int16={beat.int16}, "
                                  f"per_tensor={beat.per_tensor}, accs {beat.accs}): "
                                  f"got {have}, expected {want}")
        assert len(got) == len(expected)
    return first_in, last_out


def slots(lanes: int) -> int:
    return math.ceil(MAX_CHANNELS / lanes) * lanes


def random_records(rng: random.Random, count: int, shift_range=(0, MAX_SHIFT)) -> Records:
    bias = [rng.randint(INT32_MIN, INT32_MAX) if rng.random() < 0.2 else rng.randint(-5000, 5000)
            for _ in range(count)]
    mult = [rng.randint(-32768, 32767) for _ in range(count)]
    shift = [rng.randint(*shift_range) for _ in range(count)]
    offset = [rng.randint(INT32_MIN, INT32_MAX) if rng.random() < 0.1 else rng.randint(-300, 300)
              for _ in range(count)]
    return Records(bias, mult, shift, offset)


def acc_for(rng: random.Random, bias: int) -> int:
    """An int32 accumulator whose sum with ``bias`` is int32 too (linear()'s contract)."""
    lo, hi = max(INT32_MIN, INT32_MIN - bias), min(INT32_MAX, INT32_MAX - bias)
    if rng.random() < 0.5:
        return rng.randint(lo, hi)
    return max(lo, min(hi, rng.randint(-(1 << 20), 1 << 20)))


def random_beats(rng: random.Random, lanes: int, records: Records, count: int) -> list[Beat]:
    groups = slots(lanes) // lanes
    beats = []
    for _ in range(count):
        group = rng.randrange(groups)
        per_tensor = rng.random() < 0.25
        channels = [0] * lanes if per_tensor else [group * lanes + lane for lane in range(lanes)]
        accs = [acc_for(rng, int(records.bias[ch])) for ch in channels]
        beats.append(Beat(accs, group, int16=rng.random() < 0.5, per_tensor=per_tensor))
    return beats


# ---------------------------------------------------------------------------- edge cases

@pytest.mark.parametrize("lanes", sorted(SETUPS))
def test_extreme_parameters(lanes):
    """Every extreme multiplier, shift and offset against extreme and rounding-tie accumulators,
    both output ranges, per channel and per tensor."""
    count = slots(lanes)
    mults = [-32768, 32767, -1, 1, 0, 12345, -23456, 2]
    shifts = [0, 1, 2, 31, 46, 47, 48, 49, 50, MAX_SHIFT - 1, MAX_SHIFT, 15, 16]
    offsets = [INT32_MIN, INT32_MAX, 0, -128, 127, -32768, 32767, 5, 1, -1, 100, -100]
    jobs = []
    accs_list = [
        [INT32_MIN, INT32_MAX, 0, -1], [INT32_MAX, INT32_MIN, 1, 0],
        [-3, -1, 1, 3], [-5, 5, -7, 7], [1 << 30, -(1 << 30), 65535, -65536],
    ]
    for rotation in range(0, len(mults), 2):
        records = Records(
            bias=[0] * count,
            mult=[mults[(ch + rotation) % len(mults)] for ch in range(count)],
            shift=[shifts[(ch * 5 + rotation) % len(shifts)] for ch in range(count)],
            offset=[offsets[(ch * 7 + rotation) % len(offsets)] for ch in range(count)],
        )
        beats = [Beat(accs[:lanes], group, int16, per_tensor)
                 for accs in accs_list
                 for group in range(count // lanes)
                 for int16 in (False, True)
                 for per_tensor in (False, True)]
        jobs.append(Job(records, beats))
    check(lanes, jobs, out_stall=0.3, seed=lanes)


def test_bias_reaching_int32_limits():
    """acc + bias exactly at the int32 limits, and a large bias cancelling a large acc."""
    lanes = 4
    count = slots(lanes)
    records = Records(bias=[INT32_MAX, INT32_MIN, 1 << 30, -(1 << 30)] * 2,
                      mult=[1, 1, -32768, 32767] * 2, shift=[0, 0, 20, 33] * 2,
                      offset=[0, 0, 3, -3] * 2)
    assert len(records) == count
    beats = [Beat([0, 0, -(1 << 30), 1 << 30], 0), Beat([INT32_MIN, INT32_MAX, (1 << 30) - 1, -(1 << 30)], 0),
             Beat([-5, 5, INT32_MAX - (1 << 30), INT32_MIN + (1 << 30)], 1, int16=True)]
    check(lanes, [Job(records, beats)])


def test_rounding_ties_half_up():
    """(x * 1 + 2**(s-1)) >> s at exact halves, negative and positive, both ranges."""
    lanes = 4
    records = Records(bias=[0] * 8, mult=[1] * 8, shift=[1, 2, 3, 4, 1, 2, 3, 4], offset=[0] * 8)
    beats = [Beat([v, 2 * v, 4 * v, 8 * v], group, int16=int16)
             for v in (-3, -1, 1, 3, -255, 255) for group in (0, 1) for int16 in (False, True)]
    check(lanes, [Job(records, beats)])


def test_largest_shifts_bit_exact():
    """Shifts 62 and 63 (the largest legal one) against the reference: the product has at
    most 47 significant bits, so every quotient rounds to 0 and the output is the offset
    (clamped to the output range)."""
    lanes = 4
    records = Records(bias=[0, 5, -5, 1 << 20] * 2, mult=[-32768, 32767, 1, -1] * 2,
                      shift=[MAX_SHIFT] * 6 + [MAX_SHIFT - 1] * 2,
                      offset=[0, -7, 100, -100, INT32_MIN, INT32_MAX, -200, 200])
    beats = [Beat(accs, group, int16, per_tensor)
             for accs in ([INT32_MIN, INT32_MAX - 5, INT32_MIN + 5, INT32_MAX - (1 << 20)],
                          [-1, 1, 0, 3])
             for group in (0, 1) for int16 in (False, True) for per_tensor in (False, True)]
    check(lanes, [Job(records, beats)], out_stall=0.3, seed=63)


@pytest.mark.parametrize("scramble", range(3, 40, 3))
def test_beats_after_a_reset_mid_work(scramble):
    """Random beats for ``scramble`` cycles fill the pipeline and the output buffer (the
    output stalls at random); after the reset (the engine reset of a new run) the beats come
    out bit-exact and nothing else does: the reset-less stage payloads never reach an output."""
    rng = random.Random(scramble)
    records = random_records(rng, slots(4))
    check(4, [Job(records, random_beats(rng, 4, records, 12))], out_stall=0.3, seed=scramble,
          scramble=scramble)


@pytest.mark.parametrize("lanes", sorted(SETUPS))
def test_records_reloaded_between_jobs_with_long_stalls(lanes):
    rng = random.Random(2)
    jobs = []
    for _ in range(3):
        records = random_records(rng, slots(lanes), shift_range=(8, 30))
        jobs.append(Job(records, random_beats(rng, lanes, records, 12)))
    check(lanes, jobs, in_gap=0.2, out_pattern=lambda edge: (edge // 7) % 3 == 1)


def test_held_output_fills_the_buffer_and_ready_is_registered():
    """With the output held, exactly OUTPUT_BUFFER beats are accepted, then i.ready falls;
    o.ready never changes i.ready in the same cycle (it is a register, so the consumer's
    ready does not reach the source's handshake); after the release the queued beats come
    one per cycle, in order and bit-exact, and i.ready rises one cycle after the first
    take."""
    lanes = 4
    rng = random.Random(7)
    records = random_records(rng, slots(lanes), (8, 30))
    beats = random_beats(rng, lanes, records, OUTPUT_BUFFER + 6)
    expected = Job(records, beats).expected()
    dut = Requantizer(SETUPS[lanes], lanes)
    log = {}

    async def bench(ctx):
        await write_records(ctx, dut, records)
        sent, got, cycle, ready_falls = 0, [], 0, None
        first_take = ready_rises = None
        while len(got) < len(beats):
            release = cycle >= 40
            if sent < len(beats):
                b = beats[sent]
                ctx.set(dut.i.payload, {"data": pack(b.accs, 32), "group": b.group,
                                        "int16": b.int16, "per_tensor": b.per_tensor})
            ctx.set(dut.i.valid, sent < len(beats))
            # o.ready toggled within the cycle: i.ready must not follow it.
            ctx.set(dut.o.ready, 1)
            with_ready = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 0)
            assert ctx.get(dut.i.ready) == with_ready, f"cycle {cycle}: i.ready follows o.ready"
            ctx.set(dut.o.ready, release)
            in_ready, out_valid, payload = ctx.get(dut.i.ready), ctx.get(dut.o.valid), ctx.get(dut.o.payload)
            if sent < len(beats) and in_ready:
                sent += 1
            if not in_ready and ready_falls is None:
                ready_falls = sent
            if in_ready and ready_falls is not None and first_take is not None and ready_rises is None:
                ready_rises = cycle
            if release and out_valid:
                got.append((cycle, unpack_signed(payload, 16, lanes)))
                first_take = cycle if first_take is None else first_take
            await ctx.tick()
            cycle += 1
            assert cycle < 200
        log.update(ready_falls=ready_falls, got=got, first_take=first_take, ready_rises=ready_rises)

    run_simulation(dut, bench)
    assert log["ready_falls"] == OUTPUT_BUFFER
    cycles = [c for c, _ in log["got"]]
    assert cycles == list(range(40, 40 + len(beats))), "queued beats one per cycle after release"
    assert [v for _, v in log["got"]] == expected
    assert log["ready_rises"] == log["first_take"] + 1


# ---------------------------------------------------------------------------- random beats

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lanes=st.sampled_from(sorted(SETUPS)), seed=st.integers(0, 2**32 - 1),
       narrow_shifts=st.booleans(), beats=st.integers(1, 12),
       in_gap=st.sampled_from([0.0, 0.4]), out_stall=st.sampled_from([0.0, 0.4]))
def test_random_beats(lanes, seed, narrow_shifts, beats, in_gap, out_stall):
    rng = random.Random(seed)
    records = random_records(rng, slots(lanes), (10, 36) if narrow_shifts else (0, MAX_SHIFT))
    check(lanes, [Job(records, random_beats(rng, lanes, records, beats))],
          in_gap=in_gap, out_stall=out_stall, seed=seed % 1000)


# ---------------------------------------------------------------------------- timing

@pytest.mark.parametrize("lanes", sorted(SETUPS))
def test_timing_matches_requant_timing(lanes):
    """Rows of n accumulators back to back, never stalled: cycles equal requant_timing."""
    rng = random.Random(4)
    config = SETUPS[lanes]
    records = random_records(rng, slots(lanes), (8, 30))
    for n in sorted({1, lanes, lanes + 1, MAX_CHANNELS}):
        beats_per_row = math.ceil(n / lanes)
        rows = 3
        beats = [Beat([acc_for(rng, int(records.bias[g * lanes + lane])) for lane in range(lanes)], g)
                 for _ in range(rows) for g in range(beats_per_row)]
        first_in, last_out = check(lanes, [Job(records, beats)])
        timing = requant_timing(config, n, lanes)
        assert last_out[0] - first_in[0] + 1 == timing.total(rows), f"n={n}"
        single = check(lanes, [Job(records, beats[:beats_per_row])])
        assert single[1][0] - single[0][0] + 1 == timing.latency, f"n={n}"


def test_timing_formulas():
    config = AcceleratorConfig(array_cols=16)
    assert requant_timing(config, 16) == UnitTiming(latency=1 + 8, interval=1)
    assert requant_timing(config, 100) == UnitTiming(latency=7 + 8, interval=7)
    assert requant_timing(config, 100, lanes=8) == UnitTiming(latency=13 + 8, interval=13)
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError):
            requant_timing(config, bad)
    with pytest.raises(ConfigError):
        requant_timing(config, 4, lanes=0)


# ---------------------------------------------------------------------------- construction

def test_properties_and_other_sizes_elaborate():
    dut = Requantizer(SETUPS[3], 3)
    assert dut.lanes == 3 and dut.groups == 3 and dut.config is SETUPS[3]
    assert Requantizer(AcceleratorConfig()).lanes == 16
    assert Requantizer(AcceleratorConfig()).groups == 1024 // 16
    assert Requantizer(AcceleratorConfig(), lanes=5).groups == math.ceil(1024 / 5)
    for lanes in (1, 7, 64):
        Fragment.get(Requantizer(AcceleratorConfig(max_channels=8), lanes=lanes), None)
    for bad in (0, 65, 2.0, True):
        with pytest.raises(ConfigError):
            Requantizer(AcceleratorConfig(), lanes=bad)
    with pytest.raises(TypeError):
        Requantizer(None)


# ---------------------------------------------------------------------------- cocotb

def cocotb_vectors(lanes: int, seed: int) -> dict:
    rng = random.Random(seed)
    config = SETUPS[lanes]

    def encode(job: Job) -> dict:
        return {"records": job.records.writes(),
                "beats": [{"accs": b.accs, "group": b.group, "int16": int(b.int16),
                           "per_tensor": int(b.per_tensor)} for b in job.beats],
                "expected": job.expected()}

    stalled = []
    for shift_range in ((6, 40), (6, 40), (0, MAX_SHIFT)):
        records = random_records(rng, slots(lanes), shift_range)
        stalled.append(encode(Job(records, random_beats(rng, lanes, records, 40))))
    timed = []
    records = random_records(rng, slots(lanes), (8, 30))
    for n in (1, MAX_CHANNELS):
        beats_per_row, rows = math.ceil(n / lanes), 4
        beats = [Beat([acc_for(rng, int(records.bias[g * lanes + lane])) for lane in range(lanes)], g,
                      int16=rng.random() < 0.5)
                 for _ in range(rows) for g in range(beats_per_row)]
        timed.append({**encode(Job(records, beats)),
                      "total_cycles": requant_timing(config, n, lanes).total(rows)})
    groups = math.ceil(MAX_CHANNELS / lanes)
    return {"lanes": lanes, "groups": groups, "group_bits": max(groups - 1, 0).bit_length(),
            "seed": seed, "stalled": stalled, "timed": timed}


@pytest.mark.cocotb
@pytest.mark.parametrize("lanes", sorted(SETUPS))
def test_cocotb(lanes, tmp_path):
    run_cocotb(Requantizer(SETUPS[lanes], lanes), "requantizer", "cocotb_requantizer", tmp_path,
               vectors=cocotb_vectors(lanes, seed=lanes))
