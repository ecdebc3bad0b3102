"""Shared fixtures: simple stand-in unit timings whose cycle counts are easy to compute by hand.

The data path does not depend on unit timing, so the bit-exactness tests may use them too;
`test_machine.py::test_real_unit_timings_bit_exact` runs with the hw/ formulas.
"""
import pytest

from hand_timings import HAND_FORMULAS
from hw.units import UnitTimings


@pytest.fixture
def hand_timings():
    """``hand_timings(config)`` -> UnitTimings using :data:`HAND_FORMULAS`."""
    return lambda config: UnitTimings(config, HAND_FORMULAS)
