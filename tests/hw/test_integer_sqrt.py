# amaranth: UnusedElaboratable=no
"""IntegerSqrt against sw.intops.isqrt (Amaranth simulation)."""
from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amaranth_streams import run_simulation, stream_through
from hw.integer_sqrt import IntegerSqrt, integer_sqrt_timing
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
