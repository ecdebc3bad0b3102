"""Timing of a hardware unit, as the cycle model consumes it.

Every unit module in :mod:`hw` exposes a ``<unit>_timing(config, ...)`` function returning a
:class:`UnitTiming` for one *job* (a matmul tile, a LayerNorm row, a softmax row, ...).  The
formulas are the ones the unit's docstring states and its tests measure on the RTL.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnitTiming:
    """Cycle counts of one job on one unit.

    ``latency``: cycles from the job's first input beat entering the unit to its last output
    beat leaving it, when the output is never stalled.  ``interval``: cycles from the start
    of one job to the earliest start of the next (the unit's occupancy per job).
    """
    latency: int
    interval: int

    def __post_init__(self) -> None:
        if self.interval < 1 or self.latency < 1:
            raise ValueError(f"latency and interval must be >= 1, got {self}")

    def total(self, jobs: int) -> int:
        """Cycles to run ``jobs`` identical jobs back to back: ``latency + (jobs - 1) * interval``."""
        if jobs < 1:
            return 0
        return self.latency + (jobs - 1) * self.interval
