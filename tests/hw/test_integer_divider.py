# amaranth: UnusedElaboratable=no
"""IntegerDivider against Python integer division (Amaranth simulation)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amaranth_streams import run_simulation, stream_through
from hw.integer_divider import IntegerDivider, integer_divider_timing


def simulate(dut: IntegerDivider, pairs, *, in_gap=0.0, out_stall=0.0, seed=0):
    """Stream ``(dividend, divisor)`` pairs; return quotients and (accept, result) cycles."""
    rng = random.Random(seed)
    payloads = [{"dividend": a, "divisor": b} for a, b in pairs]
    result = {}

    async def testbench(ctx):
        quotients, accepted, delivered, _ = await stream_through(
            ctx, dut, payloads, rng, in_gap=in_gap, out_stall=out_stall, cycle=0,
            cycle_limit=200 * (len(pairs) + 1), stopped_message="no result", idle_payload=None)
        result["run"] = quotients, accepted, delivered

    run_simulation(dut, testbench)
    return result["run"]


def expected(pairs, dividend_width):
    return [a // b if b else (1 << dividend_width) - 1 for a, b in pairs]


@settings(max_examples=30, deadline=None)
@given(data=st.data(), widths=st.sampled_from([(36, 22), (8, 8), (5, 9)]),
       steps=st.sampled_from([1, 2, 3]), in_gap=st.sampled_from([0.0, 0.4]),
       out_stall=st.sampled_from([0.0, 0.6]))
def test_random_divisions(data, widths, steps, in_gap, out_stall):
    dividend_width, divisor_width = widths
    pair = st.tuples(st.integers(0, (1 << dividend_width) - 1),
                     st.integers(0, (1 << divisor_width) - 1))
    pairs = data.draw(st.lists(pair, min_size=1, max_size=8))
    quotients, _, _ = simulate(IntegerDivider(dividend_width, divisor_width, steps), pairs,
                               in_gap=in_gap, out_stall=out_stall,
                               seed=data.draw(st.integers(0, 1000)))
    assert quotients == expected(pairs, dividend_width)


def test_layernorm_reciprocals():
    """``2**35 // k`` for the roots the LayerNorm produces, extremes included."""
    top = (1 << 22) - 1
    pairs = [(1 << 35, k) for k in (1, 15, 16, 17, 1000, 65536, top - 1, top, 0)]
    quotients, _, _ = simulate(IntegerDivider(36, 22, 2), pairs, out_stall=0.3, seed=2)
    assert quotients == expected(pairs, 36)


@pytest.mark.parametrize("dividend_width, steps", [(36, 2), (8, 1), (10, 3)])
def test_timing(dividend_width, steps):
    timing = integer_divider_timing(dividend_width, steps)
    pairs = [(200, 7), (255, 1), (3, 5), (100, 0)]
    quotients, accepted, delivered = simulate(IntegerDivider(dividend_width, 8, steps), pairs)
    assert quotients == expected(pairs, dividend_width)
    assert [d - a for a, d in zip(accepted, delivered)] == [timing.latency] * 4
    assert [b - a for a, b in zip(accepted, accepted[1:])] == [timing.interval] * 3
    assert timing.latency == -(-dividend_width // steps) + 1


@pytest.mark.parametrize("widths, steps", [((0, 4), 1), ((4, 0), 1), ((129, 4), 1),
                                           ((8, 4), 0), ((8, 4), 9), ((8, 4.0), 1)])
def test_rejects_bad_parameters(widths, steps):
    with pytest.raises(ValueError):
        IntegerDivider(*widths, steps)
