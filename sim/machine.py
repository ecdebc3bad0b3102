"""The cycle-level model of the accelerator: runs a program image at instruction granularity.

Timing (docs/ISA.md, "Timing rules") is computed per instruction from the units' formulas
(:mod:`sim.units`), the four in-order queues, the dependency-token semaphores and one shared
DRAM channel; there is no per-cycle loop.  The scheduler repeatedly starts, among the four
queue heads whose tokens are available, the one that can start earliest (ties: LOAD,
MATRIX, VECTOR, STORE), which is the order a cycle-by-cycle machine would start them in.

With ``functional=True`` every instruction also runs on the data: scratchpad (int8),
accumulator memory (int32) and DRAM (bytes) are numpy arrays, and every arithmetic step is a
call into :mod:`sw.intops`, so outputs are bit-exact with :mod:`sw.executor` by construction
of the same functions.  A batch of inputs runs in one pass: every memory has the batch on
axis 0 and each instruction acts on all samples (the schedule does not depend on the data).

Malformed programs are rejected before anything runs (:func:`validate`) or, for dependency
deadlocks and semaphore overflows, as soon as the scheduler finds no runnable queue:
:class:`ProgramError` always names the instruction and the fault.
"""
from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from compiler.isa import (Instruction, MatMode, Mem, Opcode, OutType, Queue, QUEUE_OF,
                          SoftmaxMode, check_halt, IllegalInstructionError)
from compiler.program import ProgramImage
from hw.config import AcceleratorConfig
from sw import intops

from .units import UnitTimings

__all__ = ["ProgramError", "SimResult", "simulate", "validate", "TOKEN_LIMIT", "CAUSES"]

#: Largest count a dependency semaphore holds (16-bit counters).
TOKEN_LIMIT = (1 << 16) - 1
#: Words of a parameter record in the accumulator memory.
RECORD_WORDS = 4
NQ = 4
#: Stall causes: waiting for a token from a queue, or for the DRAM channel.
CAUSES = ("token:LOAD", "token:MATRIX", "token:VECTOR", "token:STORE", "dram")
_DRAM_CAUSE = 4


class ProgramError(ValueError):
    """A program cannot run: out-of-range access, unit limit, deadlock, missing HALT, ..."""


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


# ----------------------------------------------------------------------------------------
# Static checks and per-instruction timing
# ----------------------------------------------------------------------------------------

def _span(addr: int, stride: int, rows: int, width: int) -> tuple[int, int]:
    return addr, addr + (rows - 1) * stride + width


class _Checker:
    def __init__(self, cfg: AcceleratorConfig, dram_size: int):
        self.lim = {"scratchpad": cfg.scratchpad_bytes, "accumulator": cfg.accumulator_words,
                    "DRAM": dram_size}
        self.unit = {"scratchpad": "bytes", "accumulator": "words", "DRAM": "bytes"}
        self.i = 0
        self.name = ""

    def fail(self, msg: str):
        raise ProgramError(f"instruction {self.i} ({self.name}): {msg}")

    def region(self, mem: str, what: str, addr: int, stride: int, rows: int, width: int,
               write: bool = False) -> None:
        lo, hi = _span(addr, stride, rows, width)
        if hi > self.lim[mem]:
            self.fail(f"{what} reaches {mem} {self.unit[mem]} {lo}..{hi - 1}, beyond its "
                      f"{self.lim[mem]} {self.unit[mem]} (out of range by {hi - self.lim[mem]})")
        if write and rows > 1 and stride < width:
            self.fail(f"{what}: rows of {width} overlap (stride {stride})")

    def positive(self, ins: Instruction, *names: str) -> None:
        for n in names:
            if ins.args[n] < 1:
                self.fail(f"{n} must be at least 1")


def validate(image: ProgramImage, timings: UnitTimings | None = None) -> list[tuple]:
    """Check every instruction against the config and memory sizes.

    Returns per instruction (None for HALT) the scheduler's timing tuple
    ``(kind, occupancy, completion)``: for ``"dma"`` the channel beats and the DRAM latency,
    for ``"matmul"`` ``J x interval`` and ``(J - 1) x interval + latency``, for ``"vector"``
    0 and the instruction's cycles.
    """
    cfg = image.config
    instrs = image.instructions
    try:
        check_halt(instrs)
    except IllegalInstructionError as exc:
        raise ProgramError(str(exc)) from None
    ut = timings or UnitTimings(cfg)
    ck = _Checker(cfg, image.dram_size)
    R, C = cfg.array_rows, cfg.array_cols
    bw = cfg.dram_bytes_per_cycle
    out = []
    for i, ins in enumerate(instrs):
        ck.i, ck.name = i, ins.op.name
        try:
            ins.check(i)
        except IllegalInstructionError as exc:
            raise ProgramError(str(exc)) from None
        a = ins.args
        op = ins.op
        if op == Opcode.HALT:
            out.append(None)
            continue
        if op in (Opcode.LOAD, Opcode.STORE):
            ck.positive(ins, "rows", "cols")
            acc = op == Opcode.LOAD and a["mem"] == Mem.ACC
            row_bytes = a["cols"] * (4 if acc else 1)
            ck.region("DRAM", "DRAM side", a["dram_addr"], a["dram_stride"], a["rows"], row_bytes,
                      write=op == Opcode.STORE)
            if op == Opcode.LOAD:
                if acc and a["pad"]:
                    ck.fail("zero padding is only for scratchpad loads")
                ck.region("accumulator" if acc else "scratchpad", "destination", a["dst_addr"],
                          a["dst_stride"], a["rows"], a["cols"] + a["pad"], write=True)
                row_bytes += a["pad"]
            else:
                ck.region("scratchpad", "source", a["src_addr"], a["src_stride"], a["rows"], a["cols"])
            beats = a["rows"] * -(-row_bytes // bw)
            out.append(("dma", beats, cfg.dram_latency_cycles))
        elif op == Opcode.MATMUL:
            ck.positive(ins, "m", "n_tiles", "k_tiles")
            m, nt, kt = a["m"], a["n_tiles"], a["k_tiles"]
            ck.region("scratchpad", "streaming operand", a["a_addr"], a["a_stride"], m, kt * R)
            if a["transpose"]:
                ck.region("scratchpad", "stationary operand", a["w_addr"], a["w_stride"], nt * C, kt * R)
            else:
                ck.region("scratchpad", "stationary operand", a["w_addr"], a["w_stride"], kt * R, nt * C)
            ck.region("accumulator", "output", a["acc_addr"], a["acc_stride"], m, nt * C, write=True)
            t = ut.matmul(m)
            jobs = nt * kt
            out.append(("matmul", jobs * t.interval, (jobs - 1) * t.interval + t.latency))
        else:
            if op != Opcode.GELU_TABLE:
                ck.positive(ins, "rows", "cols")
            out.append(("vector", 0, _vector_cycles(ins, cfg, ut, ck)))
    return out


def _vector_cycles(ins: Instruction, cfg: AcceleratorConfig, ut: UnitTimings, ck: _Checker) -> int:
    a = ins.args
    op = ins.op
    if op == Opcode.GELU_TABLE:
        ck.region("scratchpad", "table", a["src_addr"], 0, 1, 256)
        return ut.gelu_table().latency
    rows, cols = a["rows"], a["cols"]
    params = 0
    if op == Opcode.REQUANT:
        eb = 2 if a["out_type"] == OutType.INT16 else 1
        ck.region("accumulator", "source", a["src_addr"], a["src_stride"], rows, cols)
        ck.region("scratchpad", "destination", a["dst_addr"], a["dst_stride"], rows, cols * eb, True)
        records = cols if a["per_channel"] else 1
        ck.region("accumulator", "parameters", a["param_addr"], 0, 1, records * RECORD_WORDS)
        if a["gelu"] and a["out_type"] != OutType.INT8:
            ck.fail("GELU applies to int8 outputs only")
        t = ut.requant(cols)
        if a["gelu"]:
            g = ut.gelu(cols)
            lat, iv = t.latency + g.latency, max(t.interval, g.interval)
        else:
            lat, iv = t.latency, t.interval
        params = records if a["load_params"] else 0
    elif op == Opcode.SOFTMAX:
        if cols > cfg.max_seq_len:
            ck.fail(f"softmax row of {cols} exceeds max_seq_len {cfg.max_seq_len}")
        if a["dst_cols"] < cols:
            ck.fail(f"dst_cols {a['dst_cols']} < cols {cols}")
        if not 2 <= a["frac_bits"] <= 6:
            ck.fail(f"frac_bits {a['frac_bits']} outside 2..6")
        ck.region("accumulator", "source", a["src_addr"], a["src_stride"], rows, cols)
        ck.region("scratchpad", "destination", a["dst_addr"], a["dst_stride"], rows, a["dst_cols"], True)
        t = ut.requant(cols)
        s = ut.softmax(cols, "lis" if a["mode"] == SoftmaxMode.LIS else "uniform")
        lat, iv = t.latency + s.latency, max(t.interval, s.interval)
    elif op == Opcode.LAYERNORM:
        if cols % cfg.vector_lanes or cols > cfg.max_channels:
            ck.fail(f"LayerNorm of {cols} channels: needs a multiple of vector_lanes "
                    f"({cfg.vector_lanes}) up to max_channels ({cfg.max_channels})")
        ck.region("scratchpad", "source", a["src_addr"], a["src_stride"], rows, cols)
        ck.region("scratchpad", "destination", a["dst_addr"], a["dst_stride"], rows, cols, True)
        ck.region("accumulator", "parameters", a["param_addr"], 0, 1, cols * RECORD_WORDS)
        t = ut.layernorm(cols)
        lat, iv = t.latency, t.interval
        params = cols if a["load_params"] else 0
    elif op == Opcode.ADD:
        if cols % cfg.vector_lanes or cols > cfg.max_channels:
            ck.fail(f"residual add of {cols} channels: needs a multiple of vector_lanes "
                    f"({cfg.vector_lanes}) up to max_channels ({cfg.max_channels})")
        ck.region("scratchpad", "operand a", a["a_addr"], a["a_stride"], rows, cols)
        ck.region("scratchpad", "operand b", a["b_addr"], a["b_stride"], rows, cols)
        ck.region("scratchpad", "destination", a["dst_addr"], a["dst_stride"], rows, cols, True)
        ck.region("accumulator", "parameters", a["param_addr"], 0, 1, cols * RECORD_WORDS)
        t = ut.add(cols)
        lat, iv = t.latency, t.interval
        params = cols if a["load_params"] else 0
    elif op == Opcode.GELU:
        ck.region("scratchpad", "source", a["src_addr"], a["src_stride"], rows, cols)
        ck.region("scratchpad", "destination", a["dst_addr"], a["dst_stride"], rows, cols, True)
        t = ut.gelu(cols)
        lat, iv = t.latency, t.interval
    else:                                                   # pragma: no cover - decoder guards
        ck.fail("unknown vector opcode")
    return params + (rows - 1) * iv + lat


# ----------------------------------------------------------------------------------------
# Functional execution
# ----------------------------------------------------------------------------------------

def _view(mem: np.ndarray, addr: int, stride: int, rows: int, cols: int) -> np.ndarray:
    """The 2-D pattern ``rows x cols`` at ``addr``, rows ``stride`` elements apart, of every
    sample of a batched memory ``mem`` ``[B, size]``: a writeable ``[B, rows, cols]`` view.

    Patterns were bounds-checked by :func:`validate`; numpy checks them against the buffer
    again when it builds the view.
    """
    item = mem.itemsize
    return np.ndarray((mem.shape[0], rows, cols), mem.dtype, buffer=mem, offset=addr * item,
                      strides=(mem.strides[0], stride * item, item))


def _shared(a: np.ndarray) -> np.ndarray | None:
    """``a[0]`` when every sample of ``a`` (``[B, ...]``) holds the same values, else None."""
    return a[0] if a.shape[0] == 1 or bool((a == a[:1]).all()) else None


def _per_sample(fn, shared: np.ndarray, batched: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """``fn(x, operand)`` for a batch ``x`` = ``batched`` [B, ...]: one call when the operand
    is the same for every sample (weights, tables), else one call per sample."""
    if shared is not None:
        return fn(batched, shared)
    return np.stack([fn(batched[b], operand[b]) for b in range(batched.shape[0])])


class _Data:
    """Memories and unit state of the functional model, for a batch of ``B`` inputs.

    Every memory has the batch on axis 0 (``[B, size]``) and every instruction acts on all
    samples at once: the program's timing does not depend on the data, so one schedule
    serves the whole batch.
    """

    def __init__(self, image: ProgramImage, dram: np.ndarray):
        cfg = image.config
        self.cfg = cfg
        batch = dram.shape[0]
        self.spad = np.zeros((batch, cfg.scratchpad_bytes), dtype=np.int8)
        self.acc = np.zeros((batch, cfg.accumulator_words), dtype=np.int64)
        self.dram = dram
        self.requant_params = None
        self.ln_params = None
        self.add_params = None
        self.gelu_table = None

    def records(self, addr: int, n: int) -> np.ndarray:
        """``[B, n, RECORD_WORDS]`` parameter records (a copy)."""
        return self.acc[:, addr:addr + n * RECORD_WORDS].reshape(-1, n, RECORD_WORDS).copy()

    def run(self, ins: Instruction, index: int) -> None:
        a = ins.args
        op = ins.op
        R, C = self.cfg.array_rows, self.cfg.array_cols
        if op == Opcode.LOAD:
            rows, cols = a["rows"], a["cols"]
            if a["mem"] == Mem.ACC:
                raw = _view(self.dram, a["dram_addr"], a["dram_stride"], rows, 4 * cols)
                words = np.ascontiguousarray(raw).view("<i4")
                _view(self.acc, a["dst_addr"], a["dst_stride"], rows, cols)[...] = words
            else:
                raw = _view(self.dram, a["dram_addr"], a["dram_stride"], rows, cols)
                dst = _view(self.spad, a["dst_addr"], a["dst_stride"], rows, cols + a["pad"])
                dst[..., :cols] = raw.view(np.int8)
                dst[..., cols:] = 0
        elif op == Opcode.STORE:
            src = _view(self.spad, a["src_addr"], a["src_stride"], a["rows"], a["cols"])
            _view(self.dram, a["dram_addr"], a["dram_stride"], a["rows"], a["cols"])[...] = \
                src.view(np.uint8)
        elif op == Opcode.MATMUL:
            self._matmul(a, R, C)
        elif op == Opcode.REQUANT:
            self._requant(a, index)
        elif op == Opcode.SOFTMAX:
            x = _view(self.acc, a["src_addr"], a["src_stride"], a["rows"], a["cols"])
            s = intops.requantize(x, a["mult"], a["shift"], 0, intops.INT16_MIN, intops.INT16_MAX)
            lis = a["mode"] == SoftmaxMode.LIS
            fn = intops.lis_softmax if lis else intops.uniform_softmax
            p = fn(s, a["frac_bits"], a["b_int"], a["c_int"])
            dst = _view(self.spad, a["dst_addr"], a["dst_stride"], a["rows"], a["dst_cols"])
            dst[..., :a["cols"]] = p.astype(np.uint8).view(np.int8)
            dst[..., a["cols"]:] = intops.LIS_ZERO_CODE if lis else 0
        elif op == Opcode.LAYERNORM:
            if a["load_params"]:
                self.ln_params = self.records(a["param_addr"], a["cols"])
            p = self._params(self.ln_params, a["cols"], index, "LayerNorm")
            x = _view(self.spad, a["src_addr"], a["src_stride"], a["rows"], a["cols"])
            y = intops.ptf_layernorm(x, a["zp_in"], p[..., 0], p[..., 1], p[..., 2], p[..., 3])
            _view(self.spad, a["dst_addr"], a["dst_stride"], a["rows"], a["cols"])[...] = y
        elif op == Opcode.ADD:
            if a["load_params"]:
                self.add_params = self.records(a["param_addr"], a["cols"])
            p = self._params(self.add_params, a["cols"], index, "residual add")
            x = _view(self.spad, a["a_addr"], a["a_stride"], a["rows"], a["cols"])
            y = _view(self.spad, a["b_addr"], a["b_stride"], a["rows"], a["cols"])
            z = intops.residual_add(x, y, a["zp_a"], a["zp_b"], p[..., 0], p[..., 1], p[..., 2],
                                    a["zp_out"])
            _view(self.spad, a["dst_addr"], a["dst_stride"], a["rows"], a["cols"])[...] = z
        elif op == Opcode.GELU:
            x = _view(self.spad, a["src_addr"], a["src_stride"], a["rows"], a["cols"])
            _view(self.spad, a["dst_addr"], a["dst_stride"], a["rows"], a["cols"])[...] = \
                self._gelu(x, index)
        elif op == Opcode.GELU_TABLE:
            self.gelu_table = self.spad[:, a["src_addr"]:a["src_addr"] + 256].astype(np.int64)

    def _params(self, p, cols: int, index: int, unit: str) -> np.ndarray:
        """The unit's first ``cols`` records, ``[B, 1, cols, RECORD_WORDS]`` (broadcast over rows)."""
        if p is None or p.shape[1] < cols:
            raise ProgramError(f"instruction {index}: {unit} parameters for {cols} channels "
                               "were never loaded (load_params=0)")
        return p[:, None, :cols]

    def _gelu(self, x: np.ndarray, index: int) -> np.ndarray:
        if self.gelu_table is None:
            raise ProgramError(f"instruction {index}: GELU before any GELU_TABLE")
        return _per_sample(intops.gelu_lut, _shared(self.gelu_table), x, self.gelu_table)

    def _matmul(self, a: dict, R: int, C: int) -> None:
        m, nt, kt = a["m"], a["n_tiles"], a["k_tiles"]
        K, N = kt * R, nt * C
        stream = _view(self.spad, a["a_addr"], a["a_stride"], m, K)
        if a["transpose"]:
            stat = _view(self.spad, a["w_addr"], a["w_stride"], N, K).swapaxes(1, 2)   # [B, K, N]
        else:
            stat = _view(self.spad, a["w_addr"], a["w_stride"], K, N)
        mode = a["mode"]
        if mode == MatMode.INT8:
            prod = _per_sample(lambda x, w: intops.linear(x, w.T), _shared(stat), stream, stat)
        elif mode == MatMode.UINT8:
            prod = intops.attn_value_uniform(stream.view(np.uint8), stat)
        else:
            prod = intops.attn_value_lis(stream.view(np.uint8), stat)
        acc = _view(self.acc, a["acc_addr"], a["acc_stride"], m, N)
        if a["accumulate"]:
            prod = intops.check_range(acc + prod, intops.INT32_MIN, intops.INT32_MAX,
                                      "accumulator")
        acc[...] = prod

    def _requant(self, a: dict, index: int) -> None:
        rows, cols = a["rows"], a["cols"]
        if a["load_params"]:
            self.requant_params = self.records(a["param_addr"], cols if a["per_channel"] else 1)
        p = self.requant_params
        if p is None or (a["per_channel"] and p.shape[1] < cols):
            raise ProgramError(f"instruction {index}: requantizer parameters were never loaded")
        p = p[:, None, :cols] if a["per_channel"] else p[:, None, :1]
        x = _view(self.acc, a["src_addr"], a["src_stride"], rows, cols)
        x = intops.check_range(x + p[..., 0], intops.INT32_MIN, intops.INT32_MAX,
                               "biased accumulator")
        if a["out_type"] == OutType.INT16:
            y = intops.requantize(x, p[..., 1], p[..., 2], p[..., 3], intops.INT16_MIN,
                                  intops.INT16_MAX)
            raw = y.astype("<i2").view(np.int8).reshape(-1, rows, 2 * cols)
            _view(self.spad, a["dst_addr"], a["dst_stride"], rows, 2 * cols)[...] = raw
            return
        y = intops.requantize(x, p[..., 1], p[..., 2], p[..., 3])
        if a["gelu"]:
            y = self._gelu(y, index)
        _view(self.spad, a["dst_addr"], a["dst_stride"], rows, cols)[...] = y


# ----------------------------------------------------------------------------------------
# Scheduler
# ----------------------------------------------------------------------------------------

def simulate(image: ProgramImage, inputs: dict[str, np.ndarray] | None = None,
             functional: bool = True, timings: UnitTimings | None = None,
             progress=None) -> SimResult:
    """Run ``image``; with ``functional``, on ``inputs`` (integer arrays by graph input name).

    Each input is one sample of the tensor's shape, or a batch ``[B, *shape]``: the data
    path then runs all ``B`` samples in one pass (the timing does not depend on the data)
    and :attr:`SimResult.outputs` / :attr:`SimResult.dram` carry the batch on axis 0.
    ``progress``: optional callable ``progress(n)`` called with instructions done so far.
    """
    cfg = image.config
    plan = validate(image, timings)
    instrs = image.instructions
    n = len(instrs)
    data = None
    batched = False
    if functional:
        samples, batched = _input_samples(image, dict(inputs or {}))
        batch = len(next(iter(samples.values()))) if samples else 1
        dram = np.repeat(image.initial_dram()[None], batch, axis=0)
        for t in image.inputs:
            for b in range(batch):
                t.write(dram[b], samples[t.name][b])
        data = _Data(image, dram)

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
    dma = (Queue.LOAD, Queue.STORE)

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
            if q in dma and chan_free > t:
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
        kind, occ, lat = plan[i]
        wait[i] = t - ready[q]
        cause[i] = why
        if kind == "dma":
            chan_free = t + occ
            busy = t + occ
            done = busy + lat
            ready[q] = busy
        elif kind == "matmul":
            busy = t + occ
            done = t + lat
            ready[q] = busy
        else:
            busy = done = t + lat
            ready[q] = done
        done = max(done, last_retire[q])
        last_retire[q] = done
        start[i], busy_end[i], retire[i] = t, busy, done
        for d in sig_of[i]:
            tokens = sem[q][d]
            tokens.append(done)
            if len(tokens) > TOKEN_LIMIT:
                raise ProgramError(f"instruction {i} ({instrs[i].op.name}): semaphore "
                                   f"{Queue(q).name}->{Queue(d).name} exceeds {TOKEN_LIMIT} tokens")
        ptr[q] += 1
        order.append(i)
    left = [(Queue(s).name, Queue(d).name, len(sem[s][d])) for s in range(NQ) for d in range(NQ)
            if sem[s][d]]
    if left:
        raise ProgramError("program ends with unconsumed tokens: " +
                           ", ".join(f"{s}->{d}: {k}" for s, d, k in left))
    cycles = int(retire.max()) if n > 1 else 0
    result = SimResult(cfg, cycles, start, busy_end, retire, wait, cause)
    if data is not None:
        # The data path runs the instructions in the order the schedule started them, which
        # honours every dependency.  Its matrix products are small: one BLAS thread runs
        # them fastest, and several threads on a busy machine run them far slower.
        with _one_blas_thread():
            for done_count, i in enumerate(order, 1):
                data.run(instrs[i], i)
                if progress is not None and done_count % 4096 == 0:
                    progress(done_count)
        dram = data.dram
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
