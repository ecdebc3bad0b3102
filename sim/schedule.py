"""The machine around the engines, as the RTL's sequencer runs it (``hw/core/sequencer.py``).

:func:`schedule` computes, at instruction granularity, the cycle of every event the
sequencer's docstring defines: segment fetches, the decoder's verdicts, pushes into the
queue FIFOs, starts, busy ends and retirements, tokens, the end of the run and the error it
stops with.  The engines' own timing comes from :class:`EngineModel` objects (one per queue,
:mod:`sim.engines`), each the counterpart of an RTL engine.

Every quantity is a lower bound computed from events already known (a push needs a FIFO
slot, i.e. an earlier start; a start needs its push, its engine and its tokens, i.e. earlier
retirements), and the engines share no resource, so the schedule is found by repeatedly
dispatching and starting whatever is computable, in any order, until nothing is: either the
program has ended, or it has stopped at an error, or it is deadlocked.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from compiler.isa import NQ, ErrorCode, Instruction, QUEUE_OF, Queue
from hw.config import AcceleratorConfig
from hw.core.decoder import DECODE_LATENCY
from hw.core.sequencer import MAX_IN_FLIGHT, QUEUE_DEPTH, TOKEN_BITS, fetch_bursts

__all__ = ["EngineModel", "Schedule", "schedule", "fetch_timing", "TOKEN_LIMIT", "CAUSES",
           "CAUSE_DISPATCH", "CAUSE_IN_FLIGHT"]

#: Largest count a dependency semaphore holds.
TOKEN_LIMIT = (1 << TOKEN_BITS) - 1
#: Why a start came later than its engine was ready: a token from a queue, the instruction
#: not yet in its FIFO (dispatch), or the in-flight limit.
CAUSES = tuple(f"token:{q.name}" for q in Queue) + ("dispatch", "in flight")
CAUSE_DISPATCH = NQ
CAUSE_IN_FLIGHT = NQ + 1


class EngineModel:
    """The timing of one engine: :meth:`earliest` is the first cycle it can take its next
    instruction; :meth:`start` is called for each of its instructions in order, with the
    cycle it starts (never before :meth:`earliest`), and returns ``(busy_end, retire)``: the
    engine's ``busy`` is high in cycles ``start .. busy_end - 1`` and its ``retire`` pulse
    comes at cycle ``retire``, after the start and after the engine's previous
    retirement."""

    def reset(self) -> None:
        pass

    def earliest(self) -> int:
        raise NotImplementedError

    def start(self, index: int, ins: Instruction, t: int) -> tuple[int, int]:
        raise NotImplementedError


@dataclass
class Schedule:
    """The cycles of one run (``-1`` for what did not happen)."""
    #: Per instruction: the decoder's verdict, the push into the FIFO (HALT: its verdict),
    #: the start, the engine's busy end and the retirement.
    verdict: np.ndarray
    push: np.ndarray
    start: np.ndarray
    busy_end: np.ndarray
    retire: np.ndarray
    #: Cycles each start came after its engine was ready, and why (index into CAUSES, -1).
    wait: np.ndarray
    cause: np.ndarray
    #: Cycles of the run (``cycles`` register) when it ended normally, else None.
    cycles: int | None
    #: Cycles each engine had an instruction in flight, from a start through its retire
    #: cycle (the ``BUSY_q`` registers).
    busy: list[int]
    #: ``(first instruction, instructions, first request cycle, last beat cycle)`` per fetch.
    fetches: list[tuple[int, int, int, int]] = field(default_factory=list)
    #: The error the run stops with: (code, instruction index, message), or None.
    error: tuple[ErrorCode, int, str] | None = None
    #: Instructions in the order they started.
    order: list[int] = field(default_factory=list)


def fetch_timing(config: AcceleratorConfig, instructions: int, request: int) -> int:
    """Cycle of the last data beat of a segment fetch whose first burst is requested at
    ``request``: the first beat ``dram_latency_cycles`` later, then one beat every
    ``N / dram_bytes`` cycles (the bursts follow back to back)."""
    beats = sum(fetch_bursts(config, instructions))
    per_beat = config.lanes // config.dram_bytes
    return request + config.dram_latency_cycles + (beats - 1) * per_beat


def schedule(config: AcceleratorConfig, instructions: list, check, engines: list[EngineModel]) -> Schedule:
    """Run the sequencer over a program of ``len(instructions)`` words.

    ``check(i)`` is the decoder's verdict on instruction ``i``: the :class:`Instruction`, or
    raises :class:`compiler.isa.Violation`.  ``engines[q]`` times queue ``q``'s engine.
    """
    from compiler.isa import Violation

    n = len(instructions)
    seg = config.instr_buffer
    L = DECODE_LATENCY
    verdict = np.full(n, -1, np.int64)
    push = np.full(n, -1, np.int64)
    start = np.full(n, -1, np.int64)
    busy_end = np.full(n, -1, np.int64)
    retire = np.full(n, -1, np.int64)
    wait = np.zeros(n, np.int64)
    cause = np.full(n, -1, np.int8)
    decoded: list[Instruction | None] = [None] * n
    members: list[list[int]] = [[] for _ in range(NQ)]     # dispatched, program order
    head = [0] * NQ                                        # next of members[q] to start
    last_retire = [-1] * NQ
    busy = [0] * NQ
    sem = [[deque() for _ in range(NQ)] for _ in range(NQ)]    # token usable-from cycles
    produced = [[0] * NQ for _ in range(NQ)]
    order: list[int] = []
    fetches = []
    for e in engines:
        e.reset()

    nxt = 0                      # next instruction to take into the decoder
    take = None                  # cycle it is taken (None: a fetch is due)
    seg_last_push = -1           # last push of the previous segment
    seg_end = 0
    stop = None                  # (code, index, message, cycle) of a decoder error
    halt_v = None
    dispatching = n > 0
    if n == 0:
        stop = (ErrorCode.NO_HALT, 0, "empty program (missing halt)", 0)

    while True:
        progress = False
        # ---------------------------------------------------------------- dispatch
        while dispatching:
            if take is None:
                lq = Queue.LOAD
                if head[lq] < len(members[lq]):
                    break                                  # the LOAD queue must drain
                w = seg_last_push + 1
                if members[lq]:
                    w = max(w, int(retire[members[lq][-1]]) + 1)
                count = min(seg, n - nxt)
                request = w + 1
                last = fetch_timing(config, count, request)
                fetches.append((nxt, count, request, last))
                seg_end = nxt + count
                take = last + 2
            i = nxt
            v = take + L
            verdict[i] = v
            ins = decoded[i]
            if ins is None:                    # not yet decoded (else: held by a full FIFO)
                try:
                    ins = check(i)
                except Violation as exc:
                    stop = (ErrorCode(exc.code), i, str(exc), v)
                    dispatching = False
                    break
                decoded[i] = ins
            q = QUEUE_OF[ins.op]
            if q is None:
                halt_v = v
                push[i] = v
                dispatching = False
                break
            t = v
            if len(members[q]) >= QUEUE_DEPTH:
                j = members[q][len(members[q]) - QUEUE_DEPTH]
                if start[j] < 0:
                    break                                  # FIFO full until j starts
                t = max(t, int(start[j]) + 1)
            push[i] = t
            members[q].append(i)
            nxt += 1
            progress = True
            if nxt == seg_end:
                seg_last_push = t
                take = None
            else:
                take = t
        # ---------------------------------------------------------------- starts
        for q in range(NQ):
            mq = members[q]
            while head[q] < len(mq):
                i = mq[head[q]]
                ins = decoded[i]
                ready = engines[q].earliest()
                t, why = ready, -1
                if push[i] + 1 > t:
                    t, why = int(push[i]) + 1, CAUSE_DISPATCH
                blocked = False
                for s in range(NQ):
                    if (ins.wait >> s) & 1:
                        tokens = sem[s][q]
                        if not tokens:
                            blocked = True
                            break
                        if tokens[0] > t:
                            t, why = tokens[0], s
                if blocked:
                    break
                if head[q] >= MAX_IN_FLIGHT:
                    k = mq[head[q] - MAX_IN_FLIGHT]
                    if retire[k] + 1 > t:
                        t, why = int(retire[k]) + 1, CAUSE_IN_FLIGHT
                for s in range(NQ):
                    if (ins.wait >> s) & 1:
                        sem[s][q].popleft()
                b, r = engines[q].start(i, ins, t)
                if not (b > t and r > t and r > last_retire[q]):
                    raise AssertionError(f"engine {Queue(q).name}: instruction {i} started at {t} "
                                         f"gives busy end {b}, retire {r} (after {last_retire[q]})")
                start[i], busy_end[i], retire[i] = t, b, r
                wait[i], cause[i] = t - ready, why
                busy[q] += r - max(t, last_retire[q] + 1) + 1
                last_retire[q] = r
                for d in range(NQ):
                    if (ins.signal >> d) & 1:
                        sem[q][d].append(r + 1)
                        produced[q][d] += 1
                head[q] += 1
                order.append(i)
                progress = True
        if not progress:
            break

    error = None
    cycles = None
    overflow = _first_overflow(members, decoded, start, retire, produced)
    if stop is not None:
        error = stop[:3]
        # The RTL finds an overflow in the cycle after the retire (a register between the
        # engines' retire pulses and run control): it comes first only if that is before
        # the decoder's error.
        if overflow is not None and overflow[0] + 1 <= stop[3]:
            error = overflow[1:]
    elif overflow is not None:
        error = overflow[1:]
    elif halt_v is not None and all(head[q] == len(members[q]) for q in range(NQ)):
        end = halt_v + 1
        for q in range(NQ):
            if members[q]:
                end = max(end, int(retire[members[q][-1]]) + 1)
        left = [(Queue(s).name, Queue(d).name, len(sem[s][d])) for s in range(NQ)
                for d in range(NQ) if sem[s][d]]
        if left:
            error = (ErrorCode.TOKENS, n - 1, "program ends with unconsumed tokens: " +
                     ", ".join(f"{s}->{d}: {k}" for s, d, k in left))
        else:
            cycles = end + 1
    else:
        waiting = [(members[q][head[q]], q) for q in range(NQ) if head[q] < len(members[q])]
        oldest = min(i for i, _ in waiting) if waiting else nxt
        parts = []
        for i, q in sorted(waiting):
            ins = decoded[i]
            missing = [Queue(s).name for s in range(NQ) if (ins.wait >> s) & 1 and not sem[s][q]]
            parts.append(f"{Queue(q).name} at instruction {i} ({ins.op.name}) waits for a "
                         f"token from {', '.join(missing)}")
        if dispatching:
            parts.append(f"dispatch waits at instruction {nxt}")
        error = (ErrorCode.DEADLOCK, oldest, "dependency deadlock: " + "; ".join(parts))
    return Schedule(verdict, push, start, busy_end, retire, wait, cause, cycles, busy, fetches,
                    error, order)


def _first_overflow(members, decoded, start, retire, produced):
    """The first retirement that would take a semaphore past :data:`TOKEN_LIMIT`:
    ``(cycle, code, index, message)``, or None."""
    best = None
    for s in range(NQ):
        for d in range(NQ):
            if produced[s][d] <= TOKEN_LIMIT:
                continue
            gives = [i for i in members[s] if start[i] >= 0 and (decoded[i].signal >> d) & 1]
            takes = [i for i in members[d] if start[i] >= 0 and (decoded[i].wait >> s) & 1]
            inc = np.sort(retire[gives])
            dec = np.sort(start[takes])
            for k, r in enumerate(inc):
                # Tokens before cycle r: retirements before r minus starts before r.
                count = k - int(np.searchsorted(dec, r, side="left"))
                taken_now = bool(np.any(dec == r))
                if count == TOKEN_LIMIT and not taken_now:
                    i = gives[int(np.argsort(retire[gives], kind="stable")[k])]
                    cand = (int(r), ErrorCode.SEMAPHORE, i,
                            f"instruction {i} ({decoded[i].op.name}): semaphore "
                            f"{Queue(s).name}->{Queue(d).name} exceeds {TOKEN_LIMIT} tokens")
                    # Same cycle: the RTL reports the last pair in (s, d) order (its
                    # combinational assignments, later ones win).
                    if best is None or cand[0] <= best[0]:
                        best = cand
                    break
    return best
