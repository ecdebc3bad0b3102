"""Packing of lane values into flat stream payload words and back.

Shared by the Amaranth-simulation tests (``test_*.py``) and the cocotb modules
(``cocotb_*.py``, run in the simulator's own Python process); plain Python only.
Lane ``k`` occupies bits ``[width*k, width*(k+1))`` of the word.
"""
from __future__ import annotations


def pack(values, width: int) -> int:
    """The word holding ``values`` as ``width``-bit two's-complement lanes, lane 0 lowest."""
    return sum((int(v) & ((1 << width) - 1)) << (width * k) for k, v in enumerate(values))


def unpack(word: int, width: int, count: int) -> list[int]:
    """The ``count`` lowest ``width``-bit lanes of ``word`` as unsigned integers."""
    return [(word >> (width * k)) & ((1 << width) - 1) for k in range(count)]


def unpack_signed(word: int, width: int, count: int) -> list[int]:
    """The ``count`` lowest ``width``-bit lanes of ``word`` as two's-complement integers."""
    return [v - (1 << width) if v >> (width - 1) else v for v in unpack(word, width, count)]
