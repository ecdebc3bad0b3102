"""Unit timing lookup: the hw formulas, cached; overrides; a clear error for a missing unit."""
import pytest

from hw import units
from hw.config import AcceleratorConfig
from hw.dma import dma_timing
from hw.layernorm import layernorm_timing
from hw.timing import UnitTiming, chain
from hw.units import UnitSpec, UnitTimings, UnitTimingUnavailable


def test_uses_the_hw_formula_and_caches():
    cfg = AcceleratorConfig()
    t = UnitTimings(cfg)
    assert t.layernorm(384) == layernorm_timing(cfg, 384)
    assert t.dma(100) == dma_timing(cfg, 100) == UnitTiming(7 + cfg.dram_latency_cycles, 7)
    calls = []
    t2 = UnitTimings(cfg, {"gelu": lambda c, n: calls.append(n) or UnitTiming(n, n)})
    assert t2.gelu(5) == UnitTiming(5, 5) and t2.gelu(5) == UnitTiming(5, 5)
    assert calls == [5]


def test_unknown_override_is_refused():
    with pytest.raises(KeyError, match="matmul"):
        UnitTimings(AcceleratorConfig(), {"matmul": lambda c, m: UnitTiming(1, 1)})


def test_chain_counts_the_passed_beats_once():
    # A requantizer (latency B + 5) feeding a softmax row (3 B + 8) of B = 4 beats: the
    # softmax's first input beat is the requantizer's first output beat, cycle 6.
    first, second = UnitTiming(4 + 5, 4), UnitTiming(3 * 4 + 8, 4 + 3)
    assert chain(first, second, 4) == UnitTiming(5 + 3 * 4 + 8, 7)
    cfg = AcceleratorConfig(vector_lanes=4)
    assert UnitTimings(cfg).chain(first, second, 13) == UnitTiming(9 + 20 - 4, 7)
    with pytest.raises(ValueError):
        chain(first, second, 0)


def test_missing_unit(monkeypatch):
    broken = UnitSpec("residual_add", "hw.no_such_unit", "ResidualAdd", {"residual_add": "add_timing"})
    monkeypatch.setitem(units.TIMINGS, "residual_add", broken)
    with pytest.raises(UnitTimingUnavailable, match="hw.no_such_unit.add_timing is not available"):
        UnitTimings(AcceleratorConfig()).residual_add(16)


def test_load_imports_every_unit(monkeypatch):
    assert set(UnitTimings(AcceleratorConfig()).load()._funcs) == set(units.TIMINGS)
    broken = UnitSpec("gelu", "hw.no_such_unit", "GeluLut", {"gelu": "gelu_timing"})
    monkeypatch.setitem(units.TIMINGS, "gelu", broken)
    with pytest.raises(UnitTimingUnavailable, match="hw.no_such_unit.gelu_timing"):
        UnitTimings(AcceleratorConfig()).load()
