"""Timing of a hardware unit, as the cycle model consumes it.

Every unit module in :mod:`hw` exposes a ``<unit>_timing(config, ...)`` function returning a
:class:`UnitTiming` for one *job* (a matmul tile, a LayerNorm row, a softmax row, a DMA row,
...).  The formulas are the ones the unit's docstring states and its tests measure on the
RTL.  :func:`chain` combines two units that feed each other directly (a requantizer into the
GELU table or the softmax).  :class:`hw.units.UnitTimings` looks them all up.
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


def chain(first: UnitTiming, second: UnitTiming, beats: int) -> UnitTiming:
    """Two units in series, the second fed beat by beat with the first's output.

    ``beats``: the beats of one job passing from the first unit to the second (the second's
    input beats).  The second starts on the first's first output beat, so those beats are
    counted once, not in both latencies::

        latency  = first.latency + second.latency - beats
        interval = max(first.interval, second.interval)
    """
    if beats < 1 or beats > min(first.latency, second.latency):
        raise ValueError(f"beats must be in 1..{min(first.latency, second.latency)}, got {beats}")
    return UnitTiming(latency=first.latency + second.latency - beats,
                      interval=max(first.interval, second.interval))
