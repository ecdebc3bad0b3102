"""ResidualAdd against sw.intops.residual_add: every output lane of every beat compared."""
from __future__ import annotations

import gc
import random

import numpy as np
import pytest
from amaranth.hdl import Fragment
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amaranth_streams import receive_jobs, run_simulation, tick_until
from hw.config import AcceleratorConfig
from hw.residual_add import (RESIDUAL_ADD_PIPELINE_DEPTH, ResidualAdd,
                             residual_add_param_load_timing, residual_add_timing)
from hw.timing import UnitTiming
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import run_cocotb
from sw import intops

I8_MIN, I8_MAX = intops.INT8_MIN, intops.INT8_MAX
M_MIN, M_MAX = intops.INT16_MIN, intops.INT16_MAX
#: The legal shifts, 0..63, all compared against sw.intops.residual_add directly.
MAX_SHIFT = intops.REQUANT_MAX_SHIFT
#: lanes -> max_channels of the simulated configs (parameter memories of 4 or 8 rows).
MAX_CHANNELS = {2: 8, 4: 16, 8: 16}


def config(lanes: int) -> AcceleratorConfig:
    return AcceleratorConfig(array_rows=lanes, array_cols=lanes, vector_lanes=lanes,
                             max_channels=MAX_CHANNELS[lanes])


class Job:
    """One tensor: per-channel parameters, zero points and ``rows x C`` inputs ``a``, ``b``."""

    def __init__(self, a, b, mult_a, mult_b, shift, zp_a, zp_b, zp_out, abort_after_beats=None):
        self.a = np.asarray(a, dtype=np.int64)
        self.b = np.asarray(b, dtype=np.int64)
        self.mult_a = np.asarray(mult_a, dtype=np.int64)
        self.mult_b = np.asarray(mult_b, dtype=np.int64)
        self.shift = np.asarray(shift, dtype=np.int64)
        self.zp_a, self.zp_b, self.zp_out = int(zp_a), int(zp_b), int(zp_out)
        #: Stream only this many beats (a tensor abandoned mid-row), or all of them.
        self.abort_after_beats = abort_after_beats

    @property
    def channels(self) -> int:
        return self.a.shape[1]

    def expected(self) -> np.ndarray:
        return intops.residual_add(self.a, self.b, self.zp_a, self.zp_b, self.mult_a,
                                   self.mult_b, self.shift, self.zp_out)

    def beats(self, lanes: int, which: np.ndarray) -> list[list[int]]:
        flat = which.reshape(-1)
        beats = [[int(v) for v in flat[k:k + lanes]] for k in range(0, flat.size, lanes)]
        return beats[:self.abort_after_beats]

    def param_writes(self) -> list[dict]:
        return [{"channel": c, "mult_a": int(self.mult_a[c]), "mult_b": int(self.mult_b[c]),
                 "shift": int(self.shift[c])} for c in range(self.channels)]

    def tensor_config(self) -> dict:
        return {"channels": self.channels, "zp_a": self.zp_a, "zp_b": self.zp_b,
                "zp_out": self.zp_out}


def simulate(lanes: int, jobs: list[Job], *, in_gap=0.0, out_stall=0.0, seed=0, scramble=0):
    """Run the jobs in order; each job's parameters and tensor config are written once the
    previous job's outputs are all out.  Returns ``(outputs per job, edge of each job's
    first input handshake, edge of each job's last output handshake)``.  ``scramble``: cycles
    of random inputs before a reset (:func:`run_simulation`)."""
    dut = ResidualAdd(config(lanes))
    outputs: list[list[list[int]]] = []
    first_in: list[int] = []
    last_out: list[int] = []

    async def driver(ctx):
        rng = random.Random(seed)
        edge = 0
        for done, job in enumerate(jobs):
            # The next job starts once every earlier one has left the unit.
            edge += await tick_until(ctx, lambda: len(outputs) >= done)
            for write in job.param_writes():
                ctx.set(dut.param_write.valid, 1)
                ctx.set(dut.param_write.payload, write)
                _, _, ready = await ctx.tick().sample(dut.param_write.ready)
                assert ready
                edge += 1
            ctx.set(dut.param_write.valid, 0)
            ctx.set(dut.tensor_config.valid, 1)
            ctx.set(dut.tensor_config.payload, job.tensor_config())
            await ctx.tick()
            edge += 1
            ctx.set(dut.tensor_config.valid, 0)
            beats_a, beats_b = job.beats(lanes, job.a), job.beats(lanes, job.b)
            next_a = next_b = 0
            while next_a < len(beats_a) or next_b < len(beats_b):
                # The two inputs arrive independently, each with its own random gaps.
                offer_a = next_a < len(beats_a) and rng.random() >= in_gap
                offer_b = next_b < len(beats_b) and rng.random() >= in_gap
                ctx.set(dut.a.valid, offer_a)
                ctx.set(dut.b.valid, offer_b)
                ctx.set(dut.a.payload, pack(beats_a[next_a], 8) if offer_a
                        else rng.getrandbits(8 * lanes))
                ctx.set(dut.b.payload, pack(beats_b[next_b], 8) if offer_b
                        else rng.getrandbits(8 * lanes))
                _, _, ready_a, ready_b = await ctx.tick().sample(dut.a.ready, dut.b.ready)
                edge += 1
                assert ready_a == ready_b or not (offer_a and offer_b)
                took_a, took_b = offer_a and ready_a, offer_b and ready_b
                assert took_a == took_b, "one input taken without the other"
                if took_a and next_a == 0:
                    first_in.append(edge)
                next_a += took_a
                next_b += took_b
            ctx.set(dut.a.valid, 0)
            ctx.set(dut.b.valid, 0)

    total_beats = sum(len(job.beats(lanes, job.a)) for job in jobs)
    limit = 200 + 20 * total_beats + sum(job.channels for job in jobs)

    async def monitor(ctx):
        rng = random.Random(seed + 1)
        await receive_jobs(
            ctx, dut.o, [len(job.beats(lanes, job.a)) for job in jobs],
            lambda _edge: rng.random() >= out_stall,
            lambda payload: unpack_signed(payload, 8, lanes), limit,
            "ResidualAdd stopped producing output", outputs, last_out,
            RESIDUAL_ADD_PIPELINE_DEPTH + 3, "an output beat without an input beat")

    run_simulation(dut, driver, monitor, scramble=scramble, seed=seed)
    return outputs, first_in, last_out


def check(lanes: int, jobs: list[Job], **kwargs):
    outputs, first_in, last_out = simulate(lanes, jobs, **kwargs)
    assert len(outputs) == len(jobs)
    for k, (job, got) in enumerate(zip(jobs, outputs)):
        want = job.beats(lanes, job.expected())
        assert len(got) == len(want)
        for b, (have, expected) in enumerate(zip(got, want)):
            assert have == expected, (
                f"job {k} beat {b} (a {job.beats(lanes, job.a)[b]}, b {job.beats(lanes, job.b)[b]}): "
                f"got {have}, expected {expected}")
    return first_in, last_out


def random_job(rng: random.Random, lanes: int, rows: int, channels: int | None = None,
               shift_range=(0, MAX_SHIFT)) -> Job:
    if channels is None:
        channels = lanes * rng.randint(1, MAX_CHANNELS[lanes] // lanes)

    def mults():
        return [rng.choice([M_MIN, M_MAX, 0, rng.randint(-300, 300)]) if rng.random() < 0.2
                else rng.randint(M_MIN, M_MAX) for _ in range(channels)]

    def shifts():
        # Mostly shifts that leave a few significant bits, some anywhere in the range.
        lo, hi = shift_range
        return [rng.randint(lo, hi) if rng.random() < 0.2 else rng.randint(max(lo, 8), min(hi, 24))
                for _ in range(channels)]

    return Job(a=[[rng.randint(I8_MIN, I8_MAX) for _ in range(channels)] for _ in range(rows)],
               b=[[rng.randint(I8_MIN, I8_MAX) for _ in range(channels)] for _ in range(rows)],
               mult_a=mults(), mult_b=mults(), shift=shifts(),
               zp_a=rng.randint(I8_MIN, I8_MAX), zp_b=rng.randint(I8_MIN, I8_MAX),
               zp_out=rng.randint(I8_MIN, I8_MAX))


# ---------------------------------------------------------------------------- Amaranth sim

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lanes=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**16),
       rows=st.lists(st.integers(1, 3), min_size=1, max_size=2),
       in_gap=st.sampled_from([0.0, 0.3]), out_stall=st.sampled_from([0.0, 0.4]))
def test_random_tensors_and_stalls(lanes, seed, rows, in_gap, out_stall):
    rng = random.Random(seed)
    jobs = [random_job(rng, lanes, r) for r in rows]
    check(lanes, jobs, in_gap=in_gap, out_stall=out_stall, seed=seed)


@pytest.mark.parametrize("scramble", range(2, 16, 2))
def test_beats_after_a_reset_mid_work(scramble):
    """Random operands, parameter writes and tensor configs for ``scramble`` cycles; after the
    reset (the engine reset of a new run) a job comes out bit-exact and nothing else does:
    the lanes' reset-less registers never reach an output."""
    rng = random.Random(scramble)
    check(4, [random_job(rng, 4, 3)], out_stall=0.3, seed=scramble, scramble=scramble)


def test_extremes_everywhere():
    """-128/127 inputs and zero points, -32768/32767 multipliers, shifts 0, 1, 62 and 63:
    the largest sums, saturation on both sides, and rounding of exact halves."""
    lanes = 4
    jobs = []
    for zp_a, zp_b, zp_out in ((I8_MIN, I8_MAX, I8_MIN), (I8_MAX, I8_MIN, I8_MAX), (0, 0, 0)):
        a = [[I8_MIN, I8_MAX, I8_MIN, I8_MAX] * 4, [I8_MAX, I8_MIN, 0, -1] * 4]
        b = [[I8_MAX, I8_MIN, I8_MIN, I8_MAX] * 4, [1, 0, I8_MAX, I8_MIN] * 4]
        mult_a = [M_MIN, M_MAX, M_MIN, M_MAX, 1, -1, 0, M_MAX] * 2
        mult_b = [M_MIN, M_MIN, M_MAX, M_MAX, 1, 1, M_MIN, 0] * 2
        shift = [0] * 4 + [1] * 4 + [MAX_SHIFT - 1, MAX_SHIFT] * 2 + [16, 17, 24, 25]
        jobs.append(Job(a, b, mult_a, mult_b, shift, zp_a, zp_b, zp_out))
    check(lanes, jobs, out_stall=0.4, in_gap=0.2, seed=9)


def test_rounding_ties():
    """Sums that sit exactly halfway between two outputs round up (towards +infinity)."""
    # (a - 0) * 1 + 0 with shift 1: a / 2, ties at every odd a, negative and positive.
    a = np.arange(-9, 7).reshape(2, 8)
    job = Job(a, np.zeros_like(a), [1] * 8, [0] * 8, [1] * 8, 0, 0, 0)
    check(2, [job], seed=4)


def test_largest_shifts_bit_exact():
    """Shifts 62 and 63 (the largest legal one) on random tensors, against the reference: the
    26-bit sum is far below ``2**61`` in magnitude, so every output is ``zp_out``."""
    rng = random.Random(63)
    job = random_job(rng, 2, rows=2, channels=8)
    job = Job(job.a, job.b, job.mult_a, job.mult_b, [MAX_SHIFT] * 6 + [MAX_SHIFT - 1] * 2,
              job.zp_a, job.zp_b, job.zp_out)
    check(2, [job], out_stall=0.3, seed=1)


def test_channel_position_restarts_with_each_tensor():
    """Tensors of different channel counts back to back, several rows each: the parameters of
    channel c are applied to lane c mod L of beat c div L of every row."""
    rng = random.Random(21)
    jobs = [random_job(rng, 4, rows=3, channels=c) for c in (16, 4, 8, 12)]
    check(4, jobs, out_stall=0.3, in_gap=0.3, seed=2)


def test_tensor_config_restarts_a_row_left_unfinished():
    """A tensor abandoned after 3 of its 4 beats per row: the next tensor config starts the
    next tensor at channel 0."""
    rng = random.Random(23)
    abandoned = random_job(rng, 4, rows=1, channels=16)
    abandoned.abort_after_beats = 3
    jobs = [abandoned, random_job(rng, 4, rows=2, channels=16)]
    check(4, jobs, out_stall=0.3, seed=3)


def test_stalled_output_holds_every_stage():
    """The output never ready for long stretches: no beat lost, duplicated or changed."""
    rng = random.Random(31)
    jobs = [random_job(rng, 2, rows=4, channels=8)]
    check(2, jobs, out_stall=0.8, seed=8)


@pytest.mark.parametrize("lanes", [2, 4])
def test_measured_timing_matches_formula(lanes):
    """A stall-free tensor: first input to last output == residual_add_timing latency."""
    rng = random.Random(lanes)
    job = random_job(rng, lanes, rows=3, channels=MAX_CHANNELS[lanes])
    first_in, last_out = check(lanes, [job])
    timing = residual_add_timing(config(lanes), job.a.size)
    assert last_out[0] - first_in[0] + 1 == timing.latency
    assert timing.interval == job.a.size // lanes


def test_timing_formulas():
    cfg = config(4)
    assert residual_add_timing(cfg, 4) == UnitTiming(latency=6, interval=1)
    assert residual_add_timing(cfg, 5) == UnitTiming(latency=7, interval=2)
    assert residual_add_timing(cfg, 16) == UnitTiming(latency=9, interval=4)
    assert residual_add_param_load_timing(cfg, 12) == UnitTiming(latency=12, interval=12)
    for bad in (0, 6, 20):
        with pytest.raises(ValueError):
            residual_add_param_load_timing(cfg, bad)
    with pytest.raises(ValueError):
        residual_add_timing(cfg, 0)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_bad_parameters():
    with pytest.raises(ValueError, match="max_channels"):
        ResidualAdd(AcceleratorConfig(max_channels=8))
    with pytest.raises(TypeError):
        ResidualAdd(None)
    gc.collect()                                              # the half-built objects, now


def test_component_shape():
    dut = ResidualAdd(AcceleratorConfig(array_rows=8, array_cols=8, vector_lanes=8, max_channels=100))
    Fragment.get(dut, None)
    assert dut.lanes == 8
    assert dut.max_channels == 96
    assert dut.a.payload.shape().width == dut.o.payload.shape().width == 64


# ---------------------------------------------------------------------------- cocotb

def field_offsets(view) -> dict:
    """``{name: [offset, width]}`` of a struct payload, for packing in the cocotb module."""
    return {name: [field.offset, field.width] for name, field in view.shape()}


@pytest.mark.cocotb
def test_cocotb(tmp_path):
    """Generated Verilog with random valid/ready stalls on both inputs and the output, and
    stall-free tensors whose cycle counts must equal residual_add_timing."""
    lanes = 4
    rng = random.Random(2025)
    jobs = [random_job(rng, lanes, rows=4, channels=c) for c in (16, 8, 12)]
    jobs.append(extremes_job())
    dut = ResidualAdd(config(lanes))
    vectors = {
        "lanes": lanes,
        "param_fields": field_offsets(dut.param_write.payload),
        "tensor_fields": field_offsets(dut.tensor_config.payload),
        "jobs": [{"params": job.param_writes(), "tensor": job.tensor_config(),
                  "a": [pack(beat, 8) for beat in job.beats(lanes, job.a)],
                  "b": [pack(beat, 8) for beat in job.beats(lanes, job.b)],
                  "expected": [int(v) for v in job.expected().reshape(-1)],
                  "latency": residual_add_timing(config(lanes), job.a.size).latency,
                  "param_cycles": residual_add_param_load_timing(config(lanes),
                                                                 job.channels).latency}
                 for job in jobs],
    }
    run_cocotb(dut, "residual_add", "cocotb_residual_add", tmp_path, vectors=vectors)


def extremes_job() -> Job:
    """The extreme-value tensor of the cocotb run (16 channels, 2 rows)."""
    a = [[I8_MIN, I8_MAX] * 8, [I8_MAX, I8_MIN, 0, -1] * 4]
    b = [[I8_MAX, I8_MIN, I8_MIN, I8_MAX] * 4, [1, 0, I8_MAX, I8_MIN] * 4]
    return Job(a, b, [M_MIN, M_MAX] * 8, [M_MAX, M_MIN, M_MIN, M_MAX] * 4,
               [0, 1, MAX_SHIFT, 15] * 2 + [MAX_SHIFT - 1, 1, 0, 16] * 2,
               I8_MIN, I8_MAX, I8_MAX)
