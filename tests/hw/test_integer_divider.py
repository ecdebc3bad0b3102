# amaranth: UnusedElaboratable=no
"""IntegerDivider against Python integer division (Amaranth simulation and cocotb)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amaranth_streams import run_simulation, stream_through
from hw.integer_divider import IntegerDivider, integer_divider_timing
from hw.layernorm import DIVIDER_STEPS_PER_CYCLE
from sim.cocotb_runner import run_cocotb
from sw import intops


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


# ---------------------------------------------------------------------------- cocotb

#: (dividend_width, divisor_width, steps_per_cycle) of the cocotb runs: the LayerNorm's
#: divider, and an odd dividend width computing one quotient bit per cycle (divisor
#: narrower) and three (padding digits, divisor wider than the dividend).
COCOTB_SHAPES = [(intops.LN_FACTOR_BITS + intops.LN_ROOT_BITS, intops.LN_ROOT_BITS,
                  DIVIDER_STEPS_PER_CYCLE), (13, 9, 1), (13, 16, 3)]


def powers_and_neighbours(width: int, neighbours=(-1, 1)) -> list[int]:
    return [(1 << k) + d for k in range(width) for d in (0, *neighbours)]


def edge_pairs(dividend_width: int, divisor_width: int) -> list[tuple[int, int]]:
    """Divisor 0 (all-ones quotient) and 1, all-ones operands, divisors above, equal to and
    just below the dividend, every power of two and the value below it as dividend, every
    power of two and both its neighbours as divisor, and extremes back to back."""
    top_a, top_b = (1 << dividend_width) - 1, (1 << divisor_width) - 1
    pairs = [(0, 0), (1, 0), (top_a, 0), (top_a >> 1, 0),
             (0, 1), (1, 1), (top_a, 1), (top_a - 1, 1),
             (top_a, top_b), (top_a, top_b - 1), (top_b, top_b), (top_b - 1, top_b), (0, top_b),
             (top_a, top_a), (top_a - 1, top_a), (top_a, top_a + 1), (top_a, 2), (top_a, 3)]
    divisors = powers_and_neighbours(divisor_width) + [top_b]
    # Every dividend power of two (and the all-ones value below it) against a divisor
    # cycling through the divisor powers and their neighbours.
    pairs += [(n, divisors[k % len(divisors)])
              for k, n in enumerate(powers_and_neighbours(dividend_width, neighbours=(-1,)))]
    # The largest quotient of every divisor power (and neighbour): all-ones dividend.
    pairs += [(top_a, d) for d in divisors]
    # Divisor just above, equal to and just below the dividend.
    pairs += [((1 << j) + e, 1 << j) for j in range(divisor_width) for e in (-1, 0, 1)]
    pairs = list(dict.fromkeys(pairs))
    pairs += [(top_a, 0), (0, top_b), (top_a, 1), (0, 0), (top_a, 1), (top_a, 0)]
    return [(n, d) for n, d in pairs if 0 <= n <= top_a and 0 <= d <= top_b]


def random_pairs(rng: random.Random, dividend_width: int, divisor_width: int,
                 count: int) -> list[tuple[int, int]]:
    """Uniform operands, operands of random bit lengths, and dividends at a multiple of the
    divisor or one below it."""
    top_a, top_b = (1 << dividend_width) - 1, (1 << divisor_width) - 1
    pairs = []
    for _ in range(count):
        kind = rng.randrange(3)
        if kind == 0:
            pairs.append((rng.randint(0, top_a), rng.randint(0, top_b)))
        elif kind == 1:
            pairs.append((rng.getrandbits(rng.randint(1, dividend_width)),
                          rng.getrandbits(rng.randint(1, divisor_width))))
        else:
            d = rng.getrandbits(rng.randint(1, divisor_width)) or 1
            q = rng.randint(0, top_a // d)
            pairs.append((max(0, q * d - rng.randint(0, 1)), d))
    return pairs


@pytest.mark.cocotb
@pytest.mark.parametrize("dividend_width, divisor_width, steps", COCOTB_SHAPES)
def test_cocotb(dividend_width, divisor_width, steps, tmp_path):
    """Generated Verilog: edge and random operands under random stalls and back to back,
    every quotient against Python ``//``, latency and interval against
    integer_divider_timing."""
    rng = random.Random(dividend_width * 100 + divisor_width * 10 + steps)
    pairs = (edge_pairs(dividend_width, divisor_width)
             + random_pairs(rng, dividend_width, divisor_width, 40))
    timing = integer_divider_timing(dividend_width, steps)
    dut = IntegerDivider(dividend_width, divisor_width, steps)
    vectors = {"fields": {name: [field.offset, field.width]
                          for name, field in dut.i.payload.shape()},
               "pairs": pairs, "expected": expected(pairs, dividend_width),
               "latency": timing.latency, "interval": timing.interval, "seed": steps}
    run_cocotb(dut, "integer_divider", "cocotb_integer_divider", tmp_path, vectors=vectors)
