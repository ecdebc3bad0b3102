"""The DMA engine: DRAM <-> scratchpad / accumulator memory, in rows of a 2-D pattern.

Timing (what the cycle model uses; the engine's RTL lives with the accelerator top): the
engine moves ``dram_bytes_per_cycle`` bytes per cycle of the shared DRAM channel, a row of
``row_bytes`` bytes in ``ceil(row_bytes / dram_bytes_per_cycle)`` beats; requests are
pipelined, so rows follow each other beat after beat, and a row's data arrive
``dram_latency_cycles`` after its request.
"""
from __future__ import annotations

import math

from hw.config import AcceleratorConfig
from hw.timing import UnitTiming

__all__ = ["dma_timing"]


def dma_timing(config: AcceleratorConfig, row_bytes: int) -> UnitTiming:
    """Timing of one row of ``row_bytes`` bytes.

    ``B = ceil(row_bytes / dram_bytes_per_cycle)`` beats::

        latency  = B + dram_latency_cycles     (request of the first beat to the last beat in)
        interval = B                           (the channel is held B cycles per row)

    so ``n`` rows hold the channel ``n B`` cycles and are complete ``n B + dram_latency_cycles``
    cycles after the first request.
    """
    if isinstance(row_bytes, bool) or not isinstance(row_bytes, int) or row_bytes < 1:
        raise ValueError(f"row_bytes must be a positive integer, got {row_bytes!r}")
    beats = math.ceil(row_bytes / config.dram_bytes_per_cycle)
    return UnitTiming(latency=beats + config.dram_latency_cycles, interval=beats)
