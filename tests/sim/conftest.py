"""Shared fixtures of the cycle-model tests."""
import pytest

from hw.units import UnitTimings


@pytest.fixture
def unit_timings():
    """``unit_timings(config)`` -> the engines' timing functions for ``config``, one cache
    per config (the data path does not depend on them)."""
    cache = {}

    def get(config):
        if config not in cache:
            cache[config] = UnitTimings(config)
        return cache[config]
    return get
