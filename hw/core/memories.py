"""The core's on-chip memories: one per region of ``AcceleratorConfig.regions``.

Every memory has one writer and one reader (docs/ACCELERATOR.md), rows of ``N`` elements:
the scratchpad regions and the parameter memory are rows of ``N`` bytes written with byte
enables (a parameter word is 4 of them), the accumulator regions rows of ``N`` int32 words
written with word enables.  Reads are synchronous (data the cycle after the address).
Engines address rows: row ``(address - region.base) // N`` of the region's memory, where
``address`` is in the memory's own unit (bytes; words for the accumulators; the parameter
memory's word ``w`` is byte ``4 w``).
"""
from __future__ import annotations

from dataclasses import dataclass

from amaranth import unsigned
from amaranth.lib.memory import Memory

from hw.config import AcceleratorConfig

__all__ = ["Geometry", "geometry", "build_memories"]


@dataclass(frozen=True)
class Geometry:
    """``depth`` rows of ``width`` bits, written ``granularity`` bits at a time."""
    name: str
    depth: int
    width: int
    granularity: int
    #: Elements (bytes or words) per row, and the region's first element address.
    row_elements: int
    base: int


def geometry(config: AcceleratorConfig, name: str) -> Geometry:
    """The shape of memory ``name`` (a region of ``config.regions``)."""
    region = config.regions[name]
    n = config.lanes
    if region.space == "spad":
        return Geometry(name, region.size // n, 8 * n, 8, n, region.base)
    if region.space == "acc":
        return Geometry(name, region.size // n, 32 * n, 32, n, region.base)
    # The parameter memory: words stored as bytes, rows of N bytes (N / 4 words, or a word
    # over 4 / N rows when N < 4).
    return Geometry(name, 4 * region.size // n, 8 * n, 8, n, 4 * region.base)


def build_memories(config: AcceleratorConfig) -> dict[str, Memory]:
    """One zero-initialised memory per region."""
    out = {}
    for name in config.regions:
        g = geometry(config, name)
        out[name] = Memory(shape=unsigned(g.width), depth=g.depth, init=[])
    return out
