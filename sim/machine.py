"""The cycle-level model of the accelerator: runs a program image at instruction granularity.

Everything about an instruction comes from its spec in the ISA table
(:data:`compiler.isa.SPECS`): its constraints, the memory regions it touches, its cycles
(from the units' ``hw/`` timing functions) and its behaviour.  This module adds the machine
around them (docs/ISA.md, "Timing rules"): the four in-order queues, the dependency-token
semaphores and one shared DRAM channel; there is no per-cycle loop.  The scheduler
repeatedly starts, among the four queue heads whose tokens are available, the one that can
start earliest (ties: LOAD, MATRIX, VECTOR, STORE), which is the order a cycle-by-cycle
machine would start them in.

Hazards.  After scheduling, every pair of instructions of different queues that touch a
common element of the scratchpad, the accumulator memory or DRAM, at least one of them
writing it, must be ordered by the schedule: the earlier one in program order retires before
the later one starts.  Anything else (an instruction overlapping, or running ahead of, the
one that feeds it, or overwriting what another still reads) is a :class:`ProgramError`
naming both instructions, the memory, the addresses and the cycles: the RTL would compute
garbage there, whatever the data path below computes.

With ``functional=True`` every instruction also runs on the data (:meth:`OpSpec.execute`
on an :class:`~compiler.isa.ArchState`), in the order the schedule starts them, which the
hazard check proves equivalent to the hardware's overlapped execution.  A batch of inputs
runs in one pass: every memory has the batch on axis 0 (the schedule does not depend on the
data).  Malformed programs are rejected before anything runs (:func:`validate`) or, for
dependency deadlocks and semaphore overflows, as soon as the scheduler finds no runnable
queue: :class:`ProgramError` always names the instruction and the fault.
"""
from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from compiler.isa import (MEMORIES, NQ, SPECS, Access, ArchState, IllegalInstructionError,
                          Opcode, Queue, QUEUE_OF, Timing, Violation, check_halt)
from compiler.program import ProgramImage
from hw.config import AcceleratorConfig
from hw.units import UnitTimings

__all__ = ["ProgramError", "SimResult", "Plan", "simulate", "validate", "check_hazards",
           "TOKEN_LIMIT", "CAUSES"]

#: Largest count a dependency semaphore holds (16-bit counters).
TOKEN_LIMIT = (1 << 16) - 1
#: Stall causes: waiting for a token from a queue, or for the DRAM channel.
CAUSES = ("token:LOAD", "token:MATRIX", "token:VECTOR", "token:STORE", "dram")
_DRAM_CAUSE = 4


class ProgramError(ValueError):
    """A program cannot run: out-of-range access, unit limit, hazard, deadlock, missing HALT, ..."""


@dataclass
class SimResult:
    """Timing (and, in functional mode, data) of one run."""
    config: AcceleratorConfig
    cycles: int
    #: Per instruction (HALT excluded: -1): start cycle, busy-until cycle, retire cycle.
    start: np.ndarray
    busy_end: np.ndarray
    retire: np.ndarray
    #: Cycles each instruction waited after its queue was ready, and why (index into CAUSES,
    #: -1 for none).
    wait: np.ndarray
    cause: np.ndarray
    #: Final DRAM bytes and the graph outputs (with the batch on axis 0 for batched inputs).
    dram: np.ndarray | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Plan:
    """What :func:`validate` found out about every instruction (None for HALT)."""
    timing: list[Timing | None]
    accesses: list[list[Access]]


# ----------------------------------------------------------------------------------------
# Static checks and per-instruction timing
# ----------------------------------------------------------------------------------------

def _where(i: int, op: Opcode) -> str:
    return f"instruction {i} ({op.name})"


def validate(image: ProgramImage, timings: UnitTimings | None = None) -> Plan:
    """Check every instruction against the ISA table, the config and the memory sizes.

    Returns each instruction's :class:`~compiler.isa.Timing` and memory accesses.
    """
    cfg = image.config
    instrs = image.instructions
    try:
        check_halt(instrs)
    except IllegalInstructionError as exc:
        raise ProgramError(str(exc)) from None
    ut = timings or UnitTimings(cfg)
    limits = {"spad": cfg.scratchpad_bytes, "acc": cfg.accumulator_words, "dram": image.dram_size}
    plan = Plan([], [])
    for i, ins in enumerate(instrs):
        try:
            ins.check(i)
        except IllegalInstructionError as exc:
            raise ProgramError(str(exc)) from None
        spec, a = SPECS[ins.op], ins.args
        try:
            spec.check(cfg, a)
            accesses = spec.accesses(cfg, a)
            for acc in accesses:
                _check_bounds(acc, limits[acc.mem])
            timing = spec.timing(cfg, a, ut) if ins.op != Opcode.HALT else None
        except Violation as exc:
            raise ProgramError(f"{_where(i, ins.op)}: {exc}") from None
        plan.timing.append(timing)
        plan.accesses.append(accesses)
    return plan


def _check_bounds(acc: Access, limit: int) -> None:
    unit = MEMORIES[acc.mem]
    if acc.hi > limit:
        raise Violation(f"{acc.what} reaches {unit} {acc.lo}..{acc.hi - 1}, beyond its "
                        f"{limit} {unit.split()[-1]} (out of range by {acc.hi - limit})")
    if acc.write and acc.rows > 1 and acc.stride < acc.width:
        raise Violation(f"{acc.what}: rows of {acc.width} overlap (stride {acc.stride})")


# ----------------------------------------------------------------------------------------
# Hazards
# ----------------------------------------------------------------------------------------

def check_hazards(image: ProgramImage, plan: Plan, start: np.ndarray, retire: np.ndarray) -> None:
    """Raise :class:`ProgramError` for the first pair of instructions of different queues
    that touch a common element (one of them writing) without the earlier one (in program
    order) retiring before the later one starts.

    Queues retire in order, so for each instruction ``j`` the earlier instructions of
    another queue still unretired at ``start[j]`` form one run of that queue, found by two
    binary searches (all at once, with numpy).  Each candidate pair is screened by the
    bounding spans of its writes and accesses per memory; only a pair whose spans meet is
    compared pattern by pattern.
    """
    instrs = image.instructions
    n = len(instrs)
    queue = np.array([-1 if QUEUE_OF[ins.op] is None else int(QUEUE_OF[ins.op]) for ins in instrs])
    spans = np.array([_spans(acc) for acc in plan.accesses], dtype=np.int64).reshape(n, 12)
    index = np.arange(n)
    pairs_i, pairs_j = [], []
    for q in range(NQ):
        members = index[queue == q]                      # program order = retire order
        if not len(members):
            continue
        others = index[(queue >= 0) & (queue != q)]
        first = np.searchsorted(retire[members], start[others], side="right")
        last = np.searchsorted(members, others, side="left")
        count = np.maximum(last - first, 0)
        total = int(count.sum())
        if not total:
            continue
        js = np.repeat(others, count)
        ramp = np.arange(total) - np.repeat(np.cumsum(count) - count, count)
        pairs_i.append(members[np.repeat(first, count) + ramp])
        pairs_j.append(js)
    if not pairs_i:
        return
    pi, pj = np.concatenate(pairs_i), np.concatenate(pairs_j)
    a, b = spans[pi], spans[pj]
    meet = np.zeros(len(pi), dtype=bool)
    for base in (0, 4, 8):
        meet |= (a[:, base] < b[:, base + 3]) & (b[:, base + 2] < a[:, base + 1])
        meet |= (b[:, base] < a[:, base + 3]) & (a[:, base + 2] < b[:, base + 1])
    pi, pj = pi[meet], pj[meet]
    for k in np.lexsort((pi, pj)):                      # the first hazard in program order
        i, j = int(pi[k]), int(pj[k])
        clash = _conflict(plan.accesses[i], plan.accesses[j])
        if clash is not None:
            raise ProgramError(_hazard_message(image, i, j, *clash, start, retire))


_MEM_INDEX = {"spad": 0, "acc": 1, "dram": 2}
_NONE_LO, _NONE_HI = 1 << 62, -1


def _spans(accesses: list[Access]) -> list[int]:
    """Per memory, the bounding span of the writes and of all accesses:
    ``[w_lo, w_hi, a_lo, a_hi] * 3`` (empty spans for what the instruction does not touch)."""
    out = [_NONE_LO, _NONE_HI] * 6
    for acc in accesses:
        base = 4 * _MEM_INDEX[acc.mem]
        if acc.write:
            out[base] = min(out[base], acc.lo)
            out[base + 1] = max(out[base + 1], acc.hi)
        out[base + 2] = min(out[base + 2], acc.lo)
        out[base + 3] = max(out[base + 3], acc.hi)
    return out


def _conflict(earlier: list[Access], later: list[Access]):
    for a in earlier:
        for b in later:
            if (a.write or b.write) and a.overlaps(b):
                return a, b
    return None


def _hazard_message(image, i, j, a: Access, b: Access, start, retire) -> str:
    ins_i, ins_j = image.instructions[i], image.instructions[j]
    verb = {True: "writes", False: "reads"}
    unit = MEMORIES[a.mem]
    lo, hi = max(a.lo, b.lo), min(a.hi, b.hi)
    when = ("before it starts" if start[j] < start[i] else "while it runs")
    return (f"hazard: {_where(j, ins_j.op)} {verb[b.write]} {unit} {b.lo}..{b.hi - 1} "
            f"({b.what}) from cycle {int(start[j])}, {when}: {_where(i, ins_i.op)} "
            f"{verb[a.write]} {unit} {a.lo}..{a.hi - 1} ({a.what}) in cycles "
            f"{int(start[i])}..{int(retire[i])} (shared elements within {lo}..{hi - 1}); "
            f"a dependency token between them is missing")


# ----------------------------------------------------------------------------------------
# Scheduler
# ----------------------------------------------------------------------------------------

def simulate(image: ProgramImage, inputs: dict[str, np.ndarray] | None = None,
             functional: bool = True, timings: UnitTimings | None = None,
             progress=None, hazards: bool = True) -> SimResult:
    """Run ``image``; with ``functional``, on ``inputs`` (integer arrays by graph input name).

    Each input is one sample of the tensor's shape, or a batch ``[B, *shape]``: the data
    path then runs all ``B`` samples in one pass (the timing does not depend on the data)
    and :attr:`SimResult.outputs` / :attr:`SimResult.dram` carry the batch on axis 0.
    ``progress``: optional callable ``progress(n)`` called with instructions done so far.
    ``hazards``: check that the schedule orders every pair of conflicting accesses
    (:func:`check_hazards`; on by default).
    """
    cfg = image.config
    plan = validate(image, timings)
    instrs = image.instructions
    n = len(instrs)
    state = None
    batched = False
    if functional:
        samples, batched = _input_samples(image, dict(inputs or {}))
        batch = len(next(iter(samples.values()))) if samples else 1
        dram = np.repeat(image.initial_dram()[None], batch, axis=0)
        for t in image.inputs:
            for b in range(batch):
                t.write(dram[b], samples[t.name][b])
        state = ArchState(cfg, dram)

    queues = [[] for _ in range(NQ)]
    for i, ins in enumerate(instrs):
        q = QUEUE_OF[ins.op]
        if q is not None:
            queues[q].append(i)
    ptr = [0] * NQ
    ready = [0] * NQ              # earliest start of the queue's next instruction
    last_retire = [0] * NQ
    sem = [[deque() for _ in range(NQ)] for _ in range(NQ)]
    chan_free = 0
    start = np.full(n, -1, dtype=np.int64)
    busy_end = np.full(n, -1, dtype=np.int64)
    retire = np.full(n, -1, dtype=np.int64)
    wait = np.zeros(n, dtype=np.int64)
    cause = np.full(n, -1, dtype=np.int8)
    order = []                    # instructions in the order they start
    waits_of = [[s for s in range(NQ) if (ins.wait >> s) & 1] for ins in instrs]
    sig_of = [[d for d in range(NQ) if (ins.signal >> d) & 1] for ins in instrs]

    while True:
        best = None
        for q in range(NQ):
            if ptr[q] == len(queues[q]):
                continue
            i = queues[q][ptr[q]]
            t, why = ready[q], -1
            ok = True
            for s in waits_of[i]:
                tokens = sem[s][q]
                if not tokens:
                    ok = False
                    break
                if tokens[0] > t:
                    t, why = tokens[0], s
            if not ok:
                continue
            if plan.timing[i].channel and chan_free > t:
                t, why = chan_free, _DRAM_CAUSE
            if best is None or t < best[0]:
                best = (t, q, i, why)
        if best is None:
            if all(ptr[q] == len(queues[q]) for q in range(NQ)):
                break
            raise ProgramError(_deadlock_message(instrs, queues, ptr, sem, waits_of))
        t, q, i, why = best
        for s in waits_of[i]:
            sem[s][q].popleft()
        tm = plan.timing[i]
        wait[i] = t - ready[q]
        cause[i] = why
        if tm.channel:
            chan_free = t + tm.channel
        busy, done = t + tm.busy, t + tm.done
        ready[q] = busy
        done = max(done, last_retire[q])
        last_retire[q] = done
        start[i], busy_end[i], retire[i] = t, busy, done
        for d in sig_of[i]:
            tokens = sem[q][d]
            tokens.append(done)
            if len(tokens) > TOKEN_LIMIT:
                raise ProgramError(f"{_where(i, instrs[i].op)}: semaphore "
                                   f"{Queue(q).name}->{Queue(d).name} exceeds {TOKEN_LIMIT} tokens")
        ptr[q] += 1
        order.append(i)
    left = [(Queue(s).name, Queue(d).name, len(sem[s][d])) for s in range(NQ) for d in range(NQ)
            if sem[s][d]]
    if left:
        raise ProgramError("program ends with unconsumed tokens: " +
                           ", ".join(f"{s}->{d}: {k}" for s, d, k in left))
    if hazards:
        check_hazards(image, plan, start, retire)
    cycles = int(retire.max()) if n > 1 else 0
    result = SimResult(cfg, cycles, start, busy_end, retire, wait, cause)
    if state is not None:
        # The data path runs the instructions in the order the schedule started them.  Its
        # matrix products are small: one BLAS thread runs them fastest, and several threads
        # on a busy machine run them far slower.
        with _one_blas_thread():
            for done_count, i in enumerate(order, 1):
                ins = instrs[i]
                try:
                    SPECS[ins.op].execute(state, ins.args)
                except Violation as exc:
                    raise ProgramError(f"{_where(i, ins.op)}: {exc}") from None
                if progress is not None and done_count % 4096 == 0:
                    progress(done_count)
        dram = state.dram
        result.outputs = {t.name: np.stack([t.read(d) for d in dram]) for t in image.outputs}
        if not batched:
            dram = dram[0]
            result.outputs = {k: v[0] for k, v in result.outputs.items()}
        result.dram = dram
    return result


def _one_blas_thread():
    """A context that limits the BLAS library to one thread (if threadpoolctl is there)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _input_samples(image: ProgramImage, inputs: dict) -> tuple[dict[str, np.ndarray], bool]:
    """Inputs as ``[B, *shape]`` arrays (checked against shape and element type), and whether
    they came batched."""
    samples, batch, batched = {}, None, False
    for t in image.inputs:
        if t.name not in inputs:
            raise ProgramError(f"missing input {t.name!r}")
        x = np.asarray(inputs[t.name])
        if x.dtype.kind not in "iu":
            raise ProgramError(f"input {t.name!r} must be an integer array, got {x.dtype}")
        if tuple(x.shape) == tuple(t.shape):
            x = x[None]
        elif tuple(x.shape[1:]) == tuple(t.shape):
            batched = True
        else:
            raise ProgramError(f"input {t.name!r} has shape {tuple(x.shape)}; the program "
                               f"expects {tuple(t.shape)} or a batch [B, {', '.join(map(str, t.shape))}]")
        if batch is not None and x.shape[0] != batch:
            raise ProgramError(f"inputs hold different batch sizes ({batch} and {x.shape[0]})")
        batch = x.shape[0]
        info = np.iinfo(t.dtype)
        if x.size and (int(x.min()) < info.min or int(x.max()) > info.max):
            raise ProgramError(f"input {t.name!r} holds values in [{int(x.min())}, {int(x.max())}], "
                               f"outside {t.dtype.name} [{info.min}, {info.max}]")
        samples[t.name] = x
    return samples, batched


def _deadlock_message(instrs, queues, ptr, sem, waits_of) -> str:
    parts = []
    for q in range(NQ):
        if ptr[q] == len(queues[q]):
            continue
        i = queues[q][ptr[q]]
        missing = [Queue(s).name for s in waits_of[i] if not sem[s][q]]
        parts.append(f"{Queue(q).name} at instruction {i} ({instrs[i].op.name}) waits for a "
                     f"token from {', '.join(missing)}")
    return "dependency deadlock: " + "; ".join(parts)
