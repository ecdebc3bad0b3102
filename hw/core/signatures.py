"""Interface signatures shared by the core's components.

Memory ports follow :mod:`amaranth.lib.memory` (synchronous read: ``data`` is valid the
cycle after ``en``), seen from the engine that drives them.  An engine's instruction port is
a stream of raw instruction words (:data:`compiler.isa.INSTR_BITS` bits; fields through
:func:`hw.core.isa_layout.fields_of`): a transfer is the instruction's *start*.
"""
from __future__ import annotations

from amaranth import unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from compiler.isa import INSTR_BITS

__all__ = ["read_port_signature", "write_port_signature", "engine_signature"]


def read_port_signature(depth: int, width: int) -> wiring.Signature:
    """A synchronous read port of a ``depth x width`` memory, driven by its reader:
    ``data`` holds the word at ``addr`` the cycle after ``en``."""
    return wiring.Signature({
        "addr": Out(range(max(depth, 2))),
        "en": Out(1),
        "data": In(width),
    })


def write_port_signature(depth: int, width: int, granularity: int = 8) -> wiring.Signature:
    """A write port of a ``depth x width`` memory, driven by its writer: ``en`` holds one bit
    per ``granularity`` bits of ``data`` (byte enables for the scratchpad, word enables for
    the accumulator and parameter memories); the word is written at the end of the cycle."""
    if width % granularity:
        raise ValueError(f"width {width} is not a multiple of the granularity {granularity}")
    return wiring.Signature({
        "addr": Out(range(max(depth, 2))),
        "data": Out(width),
        "en": Out(width // granularity),
    })


def engine_signature() -> wiring.Signature:
    """The core's side of an engine: instructions in, retirements and activity out.

    ``instr``: a word offered when its queue's head has its tokens; the engine takes it
    (``ready``) when it can start it.  ``retire``: high for one cycle per instruction, in
    order, in the cycle its last write has landed, at the earliest the cycle after its start
    (the core counts its signal tokens from the next cycle).  ``busy``: high from the cycle
    after an instruction's start until the engine can take the next one (informative: the
    core's busy counters count the cycles with an instruction in flight, start to retire).
    """
    return wiring.Signature({
        "instr": In(stream.Signature(unsigned(INSTR_BITS))),
        "retire": Out(1),
        "busy": Out(1),
    })
