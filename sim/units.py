"""The units' timing formulas, as the cycle model uses them.

Each formula lives next to its hardware unit in :mod:`hw` (``<unit>_timing(config, ...)``
returning :class:`hw.timing.UnitTiming`); this module only looks them up and caches the
results per argument, so a whole-model simulation evaluates each distinct job once.
"""
from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Callable

from hw.config import AcceleratorConfig
from hw.timing import UnitTiming

__all__ = ["UnitTimings", "HW_TIMING_FUNCTIONS", "UnitTimingUnavailable"]

#: unit -> (module, function name); each takes ``(config, n)`` (softmax also a mode).
HW_TIMING_FUNCTIONS: dict[str, tuple[str, str]] = {
    "matmul": ("hw.systolic_array", "matmul_timing"),
    "requant": ("hw.requantizer", "requant_timing"),
    "layernorm": ("hw.layernorm", "layernorm_timing"),
    "softmax": ("hw.softmax", "softmax_timing"),
    "gelu": ("hw.gelu", "gelu_timing"),
    "gelu_table": ("hw.gelu", "gelu_table_load_timing"),
    "add": ("hw.residual_add", "residual_add_timing"),
}


class UnitTimingUnavailable(RuntimeError):
    """A unit's timing function is not importable (its hardware module is missing)."""


def _resolve(unit: str) -> Callable:
    module, name = HW_TIMING_FUNCTIONS[unit]
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise UnitTimingUnavailable(f"{module}.{name} is not available ({exc})") from None


class UnitTimings:
    """Cached timing of one job on each unit for one config.

    ``overrides`` maps a unit name of :data:`HW_TIMING_FUNCTIONS` to a replacement function
    with the same signature (used by tests that compute cycle counts by hand).
    """

    def __init__(self, config: AcceleratorConfig, overrides: dict[str, Callable] | None = None):
        self.config = config
        self._funcs: dict[str, Callable] = dict(overrides or {})
        self._cached = lru_cache(maxsize=None)(self._compute)

    def load(self) -> "UnitTimings":
        """Import every unit's timing function now (the hardware modules take a moment to
        import); :class:`UnitTimingUnavailable` for a missing one.  Returns ``self``."""
        for unit in HW_TIMING_FUNCTIONS:
            if unit not in self._funcs:
                self._funcs[unit] = _resolve(unit)
        return self

    def _compute(self, unit: str, *args) -> UnitTiming:
        fn = self._funcs.get(unit)
        if fn is None:
            fn = self._funcs[unit] = _resolve(unit)
        t = fn(self.config, *args)
        if not isinstance(t, UnitTiming):
            raise TypeError(f"{unit} timing returned {t!r}, not a UnitTiming")
        return t

    def matmul(self, m: int) -> UnitTiming:
        return self._cached("matmul", m)

    def requant(self, n: int) -> UnitTiming:
        return self._cached("requant", n)

    def layernorm(self, channels: int) -> UnitTiming:
        return self._cached("layernorm", channels)

    def softmax(self, length: int, mode: str) -> UnitTiming:
        return self._cached("softmax", length, mode)

    def gelu(self, n: int) -> UnitTiming:
        return self._cached("gelu", n)

    def gelu_table(self) -> UnitTiming:
        return self._cached("gelu_table")

    def add(self, n: int) -> UnitTiming:
        return self._cached("add", n)
