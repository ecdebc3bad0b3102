"""Shared fixtures: simple stand-in unit timings whose cycle counts are easy to compute by hand.

The data path does not depend on unit timing, so the bit-exactness tests may use them too;
`test_machine.py::test_real_unit_timings_bit_exact` runs with the hw/ formulas.
"""
import pytest

from hw.timing import UnitTiming
from sim.units import UnitTimings


def _beats(c, n):
    return -(-n // c.vector_lanes)


#: latency / interval of one job on each unit, as simple formulas.
HAND_FORMULAS = {
    "matmul": lambda c, m: UnitTiming(m + 5, m + 1),
    "requant": lambda c, n: UnitTiming(_beats(c, n) + 3, _beats(c, n)),
    "gelu": lambda c, n: UnitTiming(_beats(c, n) + 1, _beats(c, n)),
    "gelu_table": lambda c: UnitTiming(256, 256),
    "softmax": lambda c, n, mode: UnitTiming(3 * _beats(c, n) + 8, _beats(c, n) + 3),
    "layernorm": lambda c, n: UnitTiming(2 * _beats(c, n) + 40, max(_beats(c, n), 19)),
    "add": lambda c, n: UnitTiming(_beats(c, n) + 2, _beats(c, n)),
}


@pytest.fixture
def hand_timings():
    """``hand_timings(config)`` -> UnitTimings using :data:`HAND_FORMULAS`."""
    return lambda config: UnitTimings(config, HAND_FORMULAS)
