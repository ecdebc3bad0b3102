"""Instruction emission with automatic dependency tokens, and on-chip memory allocation.

Every instruction declares the buffers it reads and writes.  A :class:`Buffer` remembers,
per queue, the last instruction that wrote it and the last that accessed it; emitting an
instruction computes its true dependencies (read after write, write after read, write
after write) and turns those on other queues into tokens: the producer instruction gets a
*signal* bit towards the consumer's queue and the consumer a *wait* bit.  Instructions
retire in order within a queue, so waiting for the newest producer of a queue covers all
older ones, and a dependency already covered by an earlier wait costs nothing.  Because a
token is only ever requested by a later instruction from an earlier one, the tokens of each
queue pair are signalled and taken in the same order and always balance; and because every
wait points backwards in program order, a compiled program cannot deadlock.

:class:`Allocator` hands out scratchpad / accumulator regions next-fit (so consecutive
buffers land in different places and their loads overlap the computation on the previous
ones).  A freed region keeps the access history of what lived there, so a new buffer's first
write waits only for the instructions that really used those addresses.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from .isa import NQ, Instruction, Opcode, QUEUE_OF

__all__ = ["Buffer", "Allocator", "Emitter", "CompileError", "NONE"]

#: "No instruction" in a per-queue history.
NONE = -1


class CompileError(ValueError):
    """A graph cannot be compiled for a config (something does not fit, or is unsupported)."""


class UnsupportedOpsError(CompileError):
    """The graph holds ops (or op parameters) that the accelerator does not run yet."""


def _merge(a: list[int], b: list[int]) -> list[int]:
    return [max(x, y) for x, y in zip(a, b)]


@dataclass(eq=False)
class Buffer:
    """A region of one memory (``"spad"`` bytes, ``"acc"`` words or ``"dram"`` bytes)."""
    mem: str
    addr: int
    size: int
    what: str = ""
    #: Newest writer per queue (instruction index or NONE).
    written: list[int] = field(default_factory=lambda: [NONE] * NQ)
    #: Newest accessor (reader or writer) per queue.
    accessed: list[int] = field(default_factory=lambda: [NONE] * NQ)

    @property
    def end(self) -> int:
        return self.addr + self.size


class Allocator:
    """Next-fit allocator of one on-chip memory (addresses ``base .. base + capacity``) with
    per-region access history."""

    def __init__(self, mem: str, capacity: int, align: int, base: int = 0):
        self.mem, self.capacity, self.align, self.base = mem, capacity, align, base
        #: Free pieces, sorted by address: [lo, hi, history].
        self.free_pieces: list[list] = [[base, base + capacity, [NONE] * NQ]]
        self.cursor = base
        self.live: set[Buffer] = set()

    @property
    def free_bytes(self) -> int:
        """Free space, in the memory's units (bytes or words)."""
        return sum(hi - lo for lo, hi, _ in self.free_pieces)

    def aligned(self, size: int) -> int:
        """The space :meth:`alloc` takes for a request of ``size``: whole alignment units."""
        return max(1, -(-size // self.align) * self.align)

    def need(self, sizes) -> int:
        """The space buffers of ``sizes`` take together, alignment included."""
        return sum(self.aligned(s) for s in sizes)

    def fits(self, sizes) -> bool:
        """Whether buffers of ``sizes``, aligned as :meth:`alloc` aligns them, fit in the free
        space together.  A capacity answer: where :meth:`alloc` puts each buffer (and whether
        fragmentation would defeat it) is decided when they are allocated."""
        return self.need(sizes) <= self.free_bytes

    def _runs(self):
        """Maximal runs of adjacent free pieces: (first index, last index, lo, hi)."""
        pieces = self.free_pieces
        runs = []
        if not pieces:
            return runs
        start, run_lo, prev_hi = 0, pieces[0][0], pieces[0][1]
        for i in range(1, len(pieces)):
            lo, hi, _ = pieces[i]
            if lo != prev_hi:
                runs.append((start, i - 1, run_lo, prev_hi))
                start, run_lo = i, lo
            prev_hi = hi
        runs.append((start, len(pieces) - 1, run_lo, prev_hi))
        return runs

    def alloc(self, size: int, what: str) -> Buffer:
        size = self.aligned(size)
        runs = self._runs()
        order = [r for r in runs if r[3] > self.cursor] + [r for r in runs if r[3] <= self.cursor]
        for first, last, lo, hi in order:
            start = max(lo, self.cursor) if lo < self.cursor < hi else lo
            start = -(-start // self.align) * self.align
            if start + size > hi and start != lo:
                start = lo
            if start + size <= hi:
                return self._take(first, last, start, size, what)
        largest = max((r[3] - r[2] for r in runs), default=0)
        raise CompileError(
            f"{self.mem} allocation of {size} for {what} failed: the largest free run is "
            f"{largest} of {self.capacity} (short by {size - largest})")

    def _take(self, first: int, last: int, start: int, size: int, what: str) -> Buffer:
        end = start + size
        history = [NONE] * NQ
        kept = []
        for piece in self.free_pieces[first:last + 1]:
            lo, hi, hist = piece
            if hi <= start or lo >= end:
                kept.append(piece)
                continue
            history = _merge(history, hist)
            if lo < start:
                kept.append([lo, start, hist])
            if hi > end:
                kept.append([end, hi, hist])
        self.free_pieces[first:last + 1] = kept
        self.cursor = end if end < self.base + self.capacity else self.base
        # A new buffer is written before it is read: its first writer waits for everything
        # that used these addresses before, and its readers wait for that writer.
        buf = Buffer(self.mem, start, size, what, [NONE] * NQ, list(history))
        self.live.add(buf)
        return buf

    def free_runs(self) -> list[tuple[int, int]]:
        """``(lo, hi)`` of every maximal free run, by address."""
        return [(lo, hi) for _, _, lo, hi in self._runs()]

    def alloc_at(self, start: int, size: int, what: str) -> Buffer | None:
        """A buffer of ``size`` at exactly ``start`` (aligned), or None if that space is not free."""
        size = self.aligned(size)
        for first, last, lo, hi in self._runs():
            if lo <= start and start + size <= hi:
                return self._take(first, last, start, size, what)
        return None

    def free(self, buf: Buffer) -> None:
        self.live.discard(buf)
        i = bisect.bisect_left(self.free_pieces, buf.addr, key=lambda piece: piece[0])
        self.free_pieces.insert(i, [buf.addr, buf.end, list(buf.accessed)])


class Emitter:
    """Builds the instruction list, computing dependency tokens from buffer accesses."""

    def __init__(self):
        self.instrs: list[Instruction] = []
        self.instr_op: list[int] = []
        self.instr_macs: list[int] = []
        #: last_waited[src][dst]: newest instruction of queue src some dst instruction waited on.
        self.last_waited = [[NONE] * NQ for _ in range(NQ)]
        self.op_index = 0

    def emit(self, op: Opcode, args: dict, reads=(), writes=(), macs: int = 0) -> int:
        q = QUEUE_OF[op]
        deps = [NONE] * NQ
        for b in reads:
            deps = _merge(deps, b.written)
        for b in writes:
            deps = _merge(deps, b.accessed)
        wait = 0
        for src in range(NQ):
            if src == q or deps[src] == NONE or deps[src] <= self.last_waited[src][q]:
                continue
            self.instrs[deps[src]].signal |= 1 << q
            self.last_waited[src][q] = deps[src]
            wait |= 1 << src
        index = len(self.instrs)
        ins = Instruction(op, wait, 0, dict(args))
        ins.check(index)
        self.instrs.append(ins)
        self.instr_op.append(self.op_index)
        self.instr_macs.append(macs)
        for b in reads:
            b.accessed[q] = index
        for b in writes:
            b.written[q] = index
            b.accessed[q] = index
        return index

    def halt(self) -> None:
        self.instrs.append(Instruction(Opcode.HALT))
        self.instr_op.append(self.op_index)
        self.instr_macs.append(0)
