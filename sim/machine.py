"""The cycle-level model of the accelerator: runs a program image at instruction granularity.

Everything about an instruction comes from its spec in the ISA table
(:data:`compiler.isa.SPECS`): the decoder's verdict (:func:`compiler.isa.check_instruction`),
the memory regions it touches, its engine timing and its behaviour.  The machine around the
engines is the RTL sequencer's (``hw/core/sequencer.py``), modelled event by event in
:mod:`sim.schedule` with the engines of :mod:`sim.engines`: segment fetches, the decoder's
latency, the queue FIFOs, the dependency-token semaphores, the end of the run and the error
it stops with.  The model predicts the RTL's cycle counter exactly at a fixed DRAM latency
with no back-pressure (docs/ACCELERATOR.md).

Hazards.  After scheduling, every pair of instructions of different queues that touch a
common row of the scratchpad, the accumulator or the parameter memory (a block RAM row,
:func:`compiler.isa.row_elements`) or a common byte of DRAM, at least one of them writing
it, must be ordered by the schedule: the earlier one in program order retires before
the later one starts.  Anything else (an instruction overlapping, or running ahead of, the
one that feeds it, or overwriting what another still reads) is a :class:`ProgramError`
naming both instructions, the memory, the addresses and the cycles: the RTL would compute
garbage there, whatever the data path below computes.

With ``functional=True`` every instruction also runs on the data (:meth:`OpSpec.execute`
on an :class:`~compiler.isa.ArchState`), in the order the schedule starts them, which the
hazard check proves equivalent to the hardware's overlapped execution.  A batch of inputs
runs in one pass: every memory has the batch on axis 0 (the schedule does not depend on the
data).  A program the machine stops on raises :class:`ProgramError` with the machine's
error code and instruction index.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from compiler.isa import (MEMORIES, NQ, SPECS, Access, ArchState, ErrorCode, Opcode,
                          QUEUE_OF, Violation, check_instruction, row_elements)
from compiler.program import ProgramImage
from hw.config import AcceleratorConfig
from hw.units import UnitTimings

from .engines import engine_models
from .schedule import CAUSES, TOKEN_LIMIT, Schedule, schedule

__all__ = ["ProgramError", "SimResult", "Plan", "simulate", "validate", "check_hazards",
           "run_words", "TOKEN_LIMIT", "CAUSES"]


class ProgramError(ValueError):
    """A program cannot run: out-of-range access, unit limit, hazard, deadlock, missing HALT, ...

    ``code``: the :class:`~compiler.isa.ErrorCode` the accelerator stops with for the same
    program (``None`` for faults only the model sees: hazards and bad inputs); ``index``:
    the instruction it stops at, if any.
    """

    def __init__(self, message: str, code: ErrorCode | None = None, index: int | None = None):
        super().__init__(message)
        self.code, self.index = code, index


@dataclass
class SimResult:
    """Timing (and, in functional mode, data) of one run."""
    config: AcceleratorConfig
    cycles: int
    #: Per instruction (HALT excluded: -1): start cycle, busy-until cycle, retire cycle.
    start: np.ndarray
    busy_end: np.ndarray
    retire: np.ndarray
    #: Cycles each instruction waited after its engine was ready, and why (index into
    #: CAUSES, -1 for none).
    wait: np.ndarray
    cause: np.ndarray
    #: The sequencer's schedule (fetches, pushes, per-engine busy cycles).
    schedule: Schedule | None = None
    #: Final DRAM bytes and the graph outputs (with the batch on axis 0 for batched inputs).
    dram: np.ndarray | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Plan:
    """What the decoder's checks found out about every instruction: its memory patterns."""
    accesses: list[list[Access]]


# ----------------------------------------------------------------------------------------
# Static checks and per-instruction timing
# ----------------------------------------------------------------------------------------

def _where(i: int, op: Opcode) -> str:
    return f"instruction {i} ({op.name})"


def validate(image: ProgramImage, timings: UnitTimings | None = None) -> Plan:
    """Check every instruction as the decoder does; raise :class:`ProgramError` with the
    first verdict that is not legal (whether the machine would get there or stop earlier,
    e.g. in a deadlock, :func:`simulate` tells)."""
    n = len(image.instructions)
    plan = Plan([])
    if n == 0:
        raise ProgramError("empty program (missing halt)", ErrorCode.NO_HALT, 0)
    for i, ins in enumerate(image.instructions):
        try:
            plan.accesses.append(check_instruction(image.config, ins, i, i == n - 1, image.dram_size)[1])
        except Violation as exc:
            raise ProgramError(str(exc), exc.code, i) from None
    return plan


# ----------------------------------------------------------------------------------------
# Hazards
# ----------------------------------------------------------------------------------------

def check_hazards(image: ProgramImage, plan: Plan, start: np.ndarray, retire: np.ndarray) -> None:
    """Raise :class:`ProgramError` for the first pair of instructions of different queues
    that touch a common row of an on-chip memory or byte of DRAM (one of them writing)
    without the earlier one (in program order) retiring before the later one starts.
    On-chip the unit is a row (:func:`~compiler.isa.row_elements`), not an element: a block
    RAM row written on one port reads undefined on the other in the same cycle, and the
    builds declare it so (:func:`hw.core.core.undefined_collisions`); this rule is what
    makes that safe.

    Queues retire in order, so for each instruction ``j`` the earlier instructions of
    another queue still unretired at ``start[j]`` form one run of that queue, found by two
    binary searches (all at once, with numpy).  Each candidate pair is screened by the
    bounding spans of its writes and accesses per memory; only a pair whose spans meet is
    compared pattern by pattern.
    """
    instrs = image.instructions
    n = len(instrs)
    queue = np.array([-1 if QUEUE_OF[ins.op] is None else int(QUEUE_OF[ins.op]) for ins in instrs])
    units = {mem: row_elements(image.config, mem) for mem in _MEM_INDEX}
    spans = np.array([_spans(acc, units) for acc in plan.accesses],
                     dtype=np.int64).reshape(n, 16)
    index = np.arange(n)
    pairs_i, pairs_j = [], []
    for q in range(NQ):
        members = index[queue == q]                      # program order = retire order
        if not len(members):
            continue
        others = index[(queue >= 0) & (queue != q)]
        first = np.searchsorted(retire[members], start[others], side="left")
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
    for base in (0, 4, 8, 12):
        meet |= (a[:, base] < b[:, base + 3]) & (b[:, base + 2] < a[:, base + 1])
        meet |= (b[:, base] < a[:, base + 3]) & (a[:, base + 2] < b[:, base + 1])
    pi, pj = pi[meet], pj[meet]
    for k in np.lexsort((pi, pj)):                      # the first hazard in program order
        i, j = int(pi[k]), int(pj[k])
        clash = _conflict(plan.accesses[i], plan.accesses[j], units)
        if clash is not None:
            raise ProgramError(_hazard_message(image, i, j, *clash, start, retire, units))


_MEM_INDEX = {"spad": 0, "acc": 1, "dram": 2, "param": 3}
_NONE_LO, _NONE_HI = 1 << 62, -1


def _spans(accesses: list[Access], units: dict[str, int]) -> list[int]:
    """Per memory, the bounding span of the writes and of all accesses in units of
    ``units[mem]`` elements: ``[w_lo, w_hi, a_lo, a_hi] * 4`` (empty spans for what the
    instruction does not touch)."""
    out = [_NONE_LO, _NONE_HI] * 8
    for acc in accesses:
        base = 4 * _MEM_INDEX[acc.mem]
        u = units[acc.mem]
        lo, hi = acc.lo // u, -(-acc.hi // u)
        if acc.write:
            out[base] = min(out[base], lo)
            out[base + 1] = max(out[base + 1], hi)
        out[base + 2] = min(out[base + 2], lo)
        out[base + 3] = max(out[base + 3], hi)
    return out


def _conflict(earlier: list[Access], later: list[Access], units: dict[str, int]):
    for a in earlier:
        for b in later:
            if (a.write or b.write) and a.overlaps(b, units[a.mem]):
                return a, b
    return None


def _hazard_message(image, i, j, a: Access, b: Access, start, retire, units) -> str:
    ins_i, ins_j = image.instructions[i], image.instructions[j]
    verb = {True: "writes", False: "reads"}
    unit = MEMORIES[a.mem]
    lo, hi = max(a.lo, b.lo), min(a.hi, b.hi)
    if a.overlaps(b):
        shared = f"shared elements within {lo}..{hi - 1}"
    else:                               # only rows are shared: widen to whole rows
        u = units[a.mem]
        shared = f"shared {u}-element memory rows within {lo // u * u}..{-(-hi // u) * u - 1}"
    when = ("before it starts" if start[j] < start[i] else "while it runs")
    return (f"hazard: {_where(j, ins_j.op)} {verb[b.write]} {unit} {b.lo}..{b.hi - 1} "
            f"({b.what}) from cycle {int(start[j])}, {when}: {_where(i, ins_i.op)} "
            f"{verb[a.write]} {unit} {a.lo}..{a.hi - 1} ({a.what}) in cycles "
            f"{int(start[i])}..{int(retire[i])} ({shared}); "
            f"a dependency token between them is missing")


# ----------------------------------------------------------------------------------------
# Scheduler
# ----------------------------------------------------------------------------------------

def run_words(config: AcceleratorConfig, words: list, dram_size: int,
              timings: UnitTimings | None = None) -> tuple[Schedule, list[list[Access] | None]]:
    """The schedule of a program given as instructions or raw 32-byte words (which may be
    anything, e.g. a corrupted binary), and the memory patterns of the instructions the
    decoder passed."""
    n = len(words)
    accesses: list[list[Access] | None] = [None] * n

    def check(i):
        ins, accesses[i] = check_instruction(config, words[i], i, i == n - 1, dram_size)
        return ins

    return schedule(config, words, check, engine_models(config, timings)), accesses


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
    instrs = image.instructions
    sched, accesses = run_words(cfg, instrs, image.dram_size, timings)
    if sched.error is not None:
        code, index, message = sched.error
        raise ProgramError(message, code, index)
    start, retire = sched.start, sched.retire
    if hazards:
        check_hazards(image, Plan([a or [] for a in accesses]), start, retire)
    result = SimResult(cfg, int(sched.cycles), start, sched.busy_end, retire, sched.wait,
                       sched.cause, sched)
    if functional:
        samples, batched = _input_samples(image, dict(inputs or {}))
        batch = len(next(iter(samples.values()))) if samples else 1
        dram = np.repeat(image.initial_dram()[None], batch, axis=0)
        for t in image.inputs:
            for b in range(batch):
                t.write(dram[b], samples[t.name][b])
        state = ArchState(cfg, dram)
        # The data path runs the instructions in the order the schedule started them.  Its
        # matrix products are small: one BLAS thread runs them fastest, and several threads
        # on a busy machine run them far slower.
        with _one_blas_thread():
            for done_count, i in enumerate(sched.order, 1):
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
