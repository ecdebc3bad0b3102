"""Unit timing lookup: the hw formulas, cached; overrides; a clear error for a missing unit."""
import pytest

from hw.config import AcceleratorConfig
from hw.layernorm import layernorm_timing
from hw.timing import UnitTiming
from sim import units
from sim.units import UnitTimings, UnitTimingUnavailable


def test_uses_the_hw_formula_and_caches():
    cfg = AcceleratorConfig()
    t = UnitTimings(cfg)
    assert t.layernorm(384) == layernorm_timing(cfg, 384)
    calls = []
    t2 = UnitTimings(cfg, {"gelu": lambda c, n: calls.append(n) or UnitTiming(n, n)})
    assert t2.gelu(5) == UnitTiming(5, 5) and t2.gelu(5) == UnitTiming(5, 5)
    assert calls == [5]


def test_missing_unit(monkeypatch):
    monkeypatch.setitem(units.HW_TIMING_FUNCTIONS, "add", ("hw.no_such_unit", "add_timing"))
    with pytest.raises(UnitTimingUnavailable, match="hw.no_such_unit.add_timing is not available"):
        UnitTimings(AcceleratorConfig()).add(16)


def test_load_imports_every_unit(monkeypatch):
    assert set(UnitTimings(AcceleratorConfig()).load()._funcs) == set(units.HW_TIMING_FUNCTIONS)
    monkeypatch.setitem(units.HW_TIMING_FUNCTIONS, "gelu", ("hw.no_such_unit", "gelu_timing"))
    with pytest.raises(UnitTimingUnavailable, match="hw.no_such_unit.gelu_timing"):
        UnitTimings(AcceleratorConfig()).load()
