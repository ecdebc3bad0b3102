# amaranth: UnusedElaboratable=no
"""IntegerSqrt against sw.intops.isqrt (Amaranth simulation and cocotb)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amaranth_streams import run_simulation, stream_through
from hw.integer_sqrt import IntegerSqrt, integer_sqrt_timing
from hw.layernorm import SQRT_STEPS_PER_CYCLE
from sim.cocotb_runner import run_cocotb
from sw import intops


def simulate(dut: IntegerSqrt, radicands, *, in_gap=0.0, out_stall=0.0, seed=0):
    """Stream ``radicands`` through ``dut``; return the roots and (accept, result) cycles."""
    rng = random.Random(seed)
    result = {}

    async def testbench(ctx):
        roots, accepted, delivered, _ = await stream_through(
            ctx, dut, radicands, rng, in_gap=in_gap, out_stall=out_stall, cycle=0,
            cycle_limit=100 * (len(radicands) + 1), stopped_message="no result")
        result["run"] = roots, accepted, delivered

    run_simulation(dut, testbench)
    return result["run"]


def expected(radicands):
    return intops.isqrt(np.array(radicands, dtype=np.int64)).tolist()


@settings(max_examples=30, deadline=None)
@given(data=st.data(), width=st.sampled_from([7, 12, 44]), steps=st.sampled_from([1, 2, 3]),
       in_gap=st.sampled_from([0.0, 0.4]), out_stall=st.sampled_from([0.0, 0.6]))
def test_random_radicands(data, width, steps, in_gap, out_stall):
    radicands = data.draw(st.lists(st.integers(0, (1 << width) - 1), min_size=1, max_size=8))
    roots, _, _ = simulate(IntegerSqrt(width, steps), radicands, in_gap=in_gap,
                           out_stall=out_stall, seed=data.draw(st.integers(0, 1000)))
    assert roots == expected(radicands)


@pytest.mark.parametrize("width, steps", [(44, 2), (9, 4), (1, 1)])
def test_edge_radicands(width, steps):
    top = (1 << width) - 1
    root_top = int(intops.isqrt(np.array([top]))[0])
    candidates = {0, 1, 2, 3, 4, top, top - 1, root_top ** 2, root_top ** 2 - 1,
                  (root_top - 1) ** 2}
    radicands = sorted(r for r in candidates if 0 <= r <= top)
    roots, _, _ = simulate(IntegerSqrt(width, steps), radicands, out_stall=0.3, seed=1)
    assert roots == expected(radicands)


@pytest.mark.parametrize("width, steps", [(44, 2), (12, 1), (9, 3)])
def test_timing(width, steps):
    timing = integer_sqrt_timing(width, steps)
    roots, accepted, delivered = simulate(IntegerSqrt(width, steps), [5, 6, 7, 8])
    assert roots == expected([5, 6, 7, 8])
    assert [d - a for a, d in zip(accepted, delivered)] == [timing.latency] * 4
    assert [b - a for a, b in zip(accepted, accepted[1:])] == [timing.interval] * 3
    assert timing.latency == -(-((width + 1) // 2) // steps) + 1


@pytest.mark.parametrize("width, steps", [(0, 1), (129, 1), (8, 0), (8, 5), (8.0, 1), (True, 1)])
def test_rejects_bad_parameters(width, steps):
    with pytest.raises(ValueError):
        IntegerSqrt(width, steps)
    with pytest.raises(ValueError):
        integer_sqrt_timing(width, steps)


# ---------------------------------------------------------------------------- cocotb

#: (width, steps_per_cycle) of the cocotb runs: the LayerNorm's square root, and an odd
#: width computing one and three root bits per cycle (three leaving padding digits).
COCOTB_SHAPES = [(2 * intops.LN_ROOT_BITS, SQRT_STEPS_PER_CYCLE), (21, 1), (21, 3)]


def edge_radicands(width: int) -> list[int]:
    """0, 1, all ones, every power of two and its neighbours, the squares of powers of two,
    of all-ones roots and of the largest root, each with its neighbours, and extremes
    back to back."""
    top = (1 << width) - 1
    root_top = int(intops.isqrt(np.array([top]))[0])
    values = [0, 1, 2, 3, top, top - 1]
    for k in range(width):
        values += [(1 << k) - 1, 1 << k, (1 << k) + 1]
    roots = [root_top, root_top - 1] + [(1 << j) + d for j in range(1, (width + 1) // 2)
                                        for d in (-1, 1)]
    for r in roots:
        values += [r * r - 1, r * r, r * r + 1]
    values = list(dict.fromkeys(v for v in values if 0 <= v <= top))
    return values + [top, 0, top, 1, 0, 0, top, top]


def random_radicands(rng: random.Random, width: int, count: int) -> list[int]:
    """Uniform radicands, radicands of random bit length, and squares with neighbours."""
    top = (1 << width) - 1
    values = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            values.append(rng.randint(0, top))
        elif kind == 1:
            values.append(rng.getrandbits(rng.randint(1, width)))
        else:
            r = rng.randint(0, int(intops.isqrt(np.array([top]))[0]))
            values.append(min(top, max(0, r * r + rng.choice((-1, 0, 1)))))
    return values


@pytest.mark.cocotb
@pytest.mark.parametrize("width, steps", COCOTB_SHAPES)
def test_cocotb(width, steps, tmp_path):
    """Generated Verilog: edge and random radicands under random stalls and back to back,
    every root against sw.intops.isqrt, latency and interval against integer_sqrt_timing."""
    rng = random.Random(width * 10 + steps)
    radicands = edge_radicands(width) + random_radicands(rng, width, 60)
    timing = integer_sqrt_timing(width, steps)
    vectors = {"width": width, "radicands": radicands, "expected": expected(radicands),
               "latency": timing.latency, "interval": timing.interval, "seed": width + steps}
    run_cocotb(IntegerSqrt(width, steps), "integer_sqrt", "cocotb_integer_sqrt", tmp_path,
               vectors=vectors)
