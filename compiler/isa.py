"""The accelerator's instruction set, as one table.

Every opcode has one :class:`OpSpec` in :data:`SPECS`, and that spec is the only place the
opcode is defined:

* ``fields``: its fields in bit order after the 16-bit header, each at its stated width
  (the binary encoding, :func:`encode` / :func:`decode`, and the RTL decoder read them);
* ``queue``: the in-order queue that executes it;
* :meth:`OpSpec.check`: its constraints against a config (positive counts, the units'
  limits, mode combinations), raising :class:`Violation`;
* :meth:`OpSpec.accesses`: every memory region it reads or writes, as 2-D patterns (bounds
  checks, the cycle model's hazard checker and traffic reports read them);
* :meth:`OpSpec.timing`: its cycles, from the ``hw/`` timing functions of the units it uses
  (through :class:`hw.units.UnitTimings`);
* :meth:`OpSpec.execute`: its behaviour on the architectural state (:class:`ArchState`),
  every arithmetic step a call into :mod:`sw.intops`.

The compiler emits instructions and checks them here, the cycle model (:mod:`sim.machine`)
validates, times and executes them here, and the accelerator's decoder is generated from the
same fields.  docs/ISA.md describes the machine model and each instruction.

Encoding: every instruction is :data:`INSTR_BYTES` (32) bytes, a 256-bit little-endian word.
Bits ``[0, 8)`` hold the opcode, ``[8, 12)`` the *wait* mask and ``[12, 16)`` the *signal*
mask (one bit per queue, bit ``q`` = queue ``q`` of :class:`Queue`); the opcode's fields
follow from bit 16; the remaining bits are reserved and must be zero.  Signed fields are
two's complement.  The decoder rejects any word that is not a legal instruction (unknown
opcode, a reserved bit set, a field value outside its legal set, a wait or signal on the
instruction's own queue) with :class:`IllegalInstructionError` naming the instruction index.
"""
from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

import numpy as np

from hw.config import AcceleratorConfig
from hw.softmax import SoftmaxMode
from hw.systolic_array import StreamMode as MatMode
from sw import intops

__all__ = [
    "INSTR_BYTES", "INSTR_BITS", "HEADER_BITS", "NQ", "RECORD_WORDS", "Queue", "Opcode", "Mem",
    "MatMode", "OutType", "SoftmaxMode", "Field", "Access", "Timing", "Violation", "OpSpec",
    "SPECS", "FORMATS", "QUEUE_OF", "Instruction", "IllegalInstructionError", "ArchState",
    "encode", "decode", "encode_program", "decode_program", "check_halt",
    "SPAD_ADDR", "SPAD_STRIDE", "ACC_ADDR", "ACC_STRIDE", "DRAM_ADDR", "DRAM_STRIDE", "COUNT",
]

INSTR_BYTES = 32
INSTR_BITS = 8 * INSTR_BYTES
HEADER_BITS = 16
#: Words of one per-channel parameter record in the accumulator memory.
RECORD_WORDS = 4


class IllegalInstructionError(ValueError):
    """A word or an instruction object is not a legal instruction."""


class Violation(ValueError):
    """An instruction breaks a constraint of the machine (the caller names the instruction)."""


class Queue(enum.IntEnum):
    """The four in-order instruction queues; each owns one engine."""
    LOAD = 0      #: DMA DRAM -> scratchpad / accumulator memory
    MATRIX = 1    #: the systolic array
    VECTOR = 2    #: requantizer, GELU, softmax, LayerNorm, residual add
    STORE = 3     #: DMA scratchpad -> DRAM


#: Number of queues (and the width of the wait / signal masks).
NQ = len(Queue)


class Opcode(enum.IntEnum):
    HALT = 0
    LOAD = 1
    STORE = 2
    MATMUL = 3
    REQUANT = 4
    SOFTMAX = 5
    LAYERNORM = 6
    ADD = 7
    GELU = 8
    GELU_TABLE = 9


class Mem(enum.IntEnum):
    """Destination memory of a LOAD."""
    SPAD = 0      #: int8 scratchpad, byte addresses
    ACC = 1       #: int32 accumulator memory, word addresses


class OutType(enum.IntEnum):
    """Element type a REQUANT writes to the scratchpad."""
    INT8 = 0      #: one byte per element, clamp to [-128, 127]
    INT16 = 1     #: two bytes per element (little endian), clamp to [-32768, 32767]


# ----------------------------------------------------------------------------------------
# Fields, accesses, timing
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One instruction field: ``bits`` wide, signed or not; an enum field's legal values are
    its enum's."""
    name: str
    bits: int
    signed: bool = False
    enum: type | None = None

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        top = (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1
        return top if self.enum is None else min(top, max(int(v) for v in self.enum))


SPAD_ADDR, SPAD_STRIDE, ACC_ADDR, ACC_STRIDE, DRAM_ADDR, DRAM_STRIDE, COUNT = 24, 16, 24, 16, 32, 32, 16


def _f(name, bits, signed=False, enum=None) -> Field:
    return Field(name, bits, signed, enum)


#: Memory names of :class:`Access` and their element units.
MEMORIES = {"spad": "scratchpad bytes", "acc": "accumulator words", "dram": "DRAM bytes"}


class Access:
    """A 2-D pattern of one memory: ``rows`` rows of ``width`` elements from ``addr``, rows
    ``stride`` elements apart (bytes for ``spad`` / ``dram``, 32-bit words for ``acc``);
    ``lo`` / ``hi``: the first element and one past the last."""

    __slots__ = ("mem", "addr", "stride", "rows", "width", "write", "what", "lo", "hi")

    def __init__(self, mem: str, addr: int, stride: int, rows: int, width: int, write: bool,
                 what: str):
        self.mem, self.addr, self.stride, self.rows, self.width = mem, addr, stride, rows, width
        self.write, self.what = write, what
        self.lo = addr
        self.hi = addr + (rows - 1) * stride + width

    def __repr__(self) -> str:
        return (f"Access({self.mem!r}, {self.addr}, {self.stride}, {self.rows}, {self.width}, "
                f"{self.write}, {self.what!r})")

    def __eq__(self, other) -> bool:
        return isinstance(other, Access) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def overlaps(self, other: "Access") -> bool:
        """Whether the two patterns (of the same memory) share an element."""
        if self.mem != other.mem or self.hi <= other.lo or other.hi <= self.lo:
            return False
        a_flat = self.rows == 1 or self.stride <= self.width
        b_flat = other.rows == 1 or other.stride <= other.width
        if a_flat and b_flat:
            return True                                  # both contiguous spans
        if self.stride == other.stride and not a_flat and not b_flat:
            # Rows of pitch s: x = a + r s + c = b + t s + d has a solution iff some multiple
            # m s with m = r - t lies strictly between (b - a) - wa and (b - a) + wb.
            s, delta = self.stride, other.addr - self.addr
            m_lo = max((delta - self.width) // s + 1, 1 - other.rows)
            m_hi = min(-((-(delta + other.width)) // s) - 1, self.rows - 1)
            return m_lo <= m_hi
        a0, a1 = self._intervals()
        b0, b1 = other._intervals()
        # An interval of b overlaps some interval of a iff a's first start at or after b's
        # end differs from a's first end after b's start (both lists are sorted).
        starts = np.searchsorted(a0, b1, side="left")
        ends = np.searchsorted(a1, b0, side="right")
        return bool(np.any(starts > ends))

    def _intervals(self) -> tuple[np.ndarray, np.ndarray]:
        if self.stride >= self.width:
            lo = self.addr + self.stride * np.arange(self.rows, dtype=np.int64)
            return lo, lo + self.width
        return np.array([self.lo]), np.array([self.hi])


@dataclass(frozen=True)
class Timing:
    """Cycles of one instruction from its start: ``busy``, after which its queue may start
    the next instruction; ``done``, its completion; ``channel``, cycles it holds the DRAM
    channel (DMA instructions only)."""
    busy: int
    done: int
    channel: int = 0


# ----------------------------------------------------------------------------------------
# Architectural state (the functional model's memories and unit registers)
# ----------------------------------------------------------------------------------------

def _view(mem: np.ndarray, addr: int, stride: int, rows: int, cols: int) -> np.ndarray:
    """The pattern ``rows x cols`` at ``addr`` (rows ``stride`` elements apart) of every
    sample of a batched memory ``[B, size]``: a writeable ``[B, rows, cols]`` view.  Patterns
    are bounds-checked before anything runs; numpy checks them again here."""
    item = mem.itemsize
    return np.ndarray((mem.shape[0], rows, cols), mem.dtype, buffer=mem, offset=addr * item,
                      strides=(mem.strides[0], stride * item, item))


def _shared(a: np.ndarray) -> np.ndarray | None:
    """``a[0]`` when every sample of ``a`` (``[B, ...]``) holds the same values, else None."""
    return a[0] if a.shape[0] == 1 or bool((a == a[:1]).all()) else None


def _per_sample(fn, batched: np.ndarray, operand: np.ndarray) -> np.ndarray:
    """``fn(x, operand)`` over a batch: one call when the operand is the same for every
    sample (weights, tables), else one call per sample."""
    shared = _shared(operand)
    if shared is not None:
        return fn(batched, shared)
    return np.stack([fn(batched[b], operand[b]) for b in range(batched.shape[0])])


class ArchState:
    """Memories and unit registers of the machine, for a batch of ``B`` inputs.

    Every memory has the batch on axis 0 (``[B, size]``): scratchpad int8, accumulator
    memory int32 (held in int64, range-checked on every write), DRAM bytes.  Unit registers:
    the parameter records each vector unit holds and the GELU table.  Timing never depends on
    the data, so one schedule serves the whole batch.
    """

    def __init__(self, config: AcceleratorConfig, dram: np.ndarray):
        batch = dram.shape[0]
        self.config = config
        self.spad = np.zeros((batch, config.scratchpad_bytes), dtype=np.int8)
        self.acc = np.zeros((batch, config.accumulator_words), dtype=np.int64)
        self.dram = dram
        self.params: dict[str, np.ndarray] = {}
        self.gelu_table: np.ndarray | None = None

    def view(self, mem: str, addr: int, stride: int, rows: int, cols: int) -> np.ndarray:
        return _view(getattr(self, mem), addr, stride, rows, cols)

    def load_params(self, unit: str, addr: int, n: int) -> None:
        """Copy ``n`` parameter records from the accumulator memory into ``unit``."""
        self.params[unit] = self.acc[:, addr:addr + n * RECORD_WORDS].reshape(-1, n, RECORD_WORDS).copy()

    def unit_params(self, unit: str, n: int, what: str) -> np.ndarray:
        """The first ``n`` records ``unit`` holds, ``[B, 1, n, RECORD_WORDS]``."""
        p = self.params.get(unit)
        if p is None or p.shape[1] < n:
            raise Violation(f"{what} parameters for {n} channels were never loaded (load_params=0)")
        return p[:, None, :n]

    def gelu(self, x: np.ndarray) -> np.ndarray:
        if self.gelu_table is None:
            raise Violation("GELU before any GELU_TABLE")
        return _per_sample(intops.gelu_lut, x, self.gelu_table)


# ----------------------------------------------------------------------------------------
# The opcodes
# ----------------------------------------------------------------------------------------

def _positive(a: dict, *names: str) -> None:
    for n in names:
        if a[n] < 1:
            raise Violation(f"{n} must be at least 1")


@functools.lru_cache(maxsize=4096)
def _unit_error(check, *args) -> str | None:
    try:
        check(*args)
    except ValueError as exc:
        return str(exc)
    return None


def _unit_rule(unit: str, check, *args) -> None:
    """Run a hardware unit's own validation (cached per argument); its ``ValueError``
    becomes a :class:`Violation`."""
    error = _unit_error(check, *args)
    if error is not None:
        raise Violation(f"{unit}: {error}")


def _dma(ut, rows: int, row_bytes: int) -> Timing:
    """``rows`` DMA rows back to back: the channel (and the queue) are busy ``rows`` row
    intervals; the last data arrive one row latency after the last row's request."""
    row = ut.dma(row_bytes)
    busy = rows * row.interval
    return Timing(busy, row.total(rows), busy)


def _vector_rows(a: dict, records: int, row) -> Timing:
    """``records`` loaded one per cycle, then ``rows`` rows through a unit of timing ``row``."""
    cycles = (records if a.get("load_params") else 0) + row.total(a["rows"])
    return Timing(cycles, cycles)


class OpSpec:
    """The definition of one opcode (see the module docstring)."""
    op: Opcode
    queue: Queue | None
    fields: tuple[Field, ...] = ()
    #: Fields that must be at least 1.
    positive: tuple[str, ...] = ()

    def check(self, cfg: AcceleratorConfig, a: dict) -> None:
        """Raise :class:`Violation` unless the instruction can run on ``cfg`` (its memory
        patterns are bounds-checked separately, from :meth:`accesses`)."""
        _positive(a, *self.positive)

    def accesses(self, cfg: AcceleratorConfig, a: dict) -> list[Access]:
        return []

    def timing(self, cfg: AcceleratorConfig, a: dict, ut) -> Timing:
        raise NotImplementedError

    def execute(self, st: ArchState, a: dict) -> None:
        raise NotImplementedError


class Halt(OpSpec):
    """End of the program: exactly one, the last instruction."""
    op, queue = Opcode.HALT, None

    def timing(self, cfg, a, ut) -> Timing:
        return Timing(0, 0)

    def execute(self, st, a) -> None:
        pass


class Load(OpSpec):
    """DRAM -> scratchpad (``pad`` zero bytes after each row) or -> accumulator memory
    (int32 little endian, ``pad = 0``)."""
    op, queue = Opcode.LOAD, Queue.LOAD
    fields = (_f("mem", 1, enum=Mem), _f("dram_addr", DRAM_ADDR), _f("dram_stride", DRAM_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT), _f("pad", COUNT))
    positive = ("rows", "cols")

    def check(self, cfg, a) -> None:
        super().check(cfg, a)
        if a["mem"] == Mem.ACC and a["pad"]:
            raise Violation("zero padding is only for scratchpad loads")

    def accesses(self, cfg, a) -> list[Access]:
        acc = a["mem"] == Mem.ACC
        return [Access("dram", a["dram_addr"], a["dram_stride"], a["rows"],
                       a["cols"] * (4 if acc else 1), False, "DRAM side"),
                Access("acc" if acc else "spad", a["dst_addr"], a["dst_stride"], a["rows"],
                       a["cols"] + a["pad"], True, "destination")]

    def timing(self, cfg, a, ut) -> Timing:
        return _dma(ut, a["rows"], 4 * a["cols"] if a["mem"] == Mem.ACC else a["cols"] + a["pad"])

    def execute(self, st, a) -> None:
        rows, cols = a["rows"], a["cols"]
        if a["mem"] == Mem.ACC:
            raw = st.view("dram", a["dram_addr"], a["dram_stride"], rows, 4 * cols)
            st.view("acc", a["dst_addr"], a["dst_stride"], rows, cols)[...] = \
                np.ascontiguousarray(raw).view("<i4")
        else:
            raw = st.view("dram", a["dram_addr"], a["dram_stride"], rows, cols)
            dst = st.view("spad", a["dst_addr"], a["dst_stride"], rows, cols + a["pad"])
            dst[..., :cols] = raw.view(np.int8)
            dst[..., cols:] = 0


class Store(OpSpec):
    """Scratchpad -> DRAM."""
    op, queue = Opcode.STORE, Queue.STORE
    fields = (_f("src_addr", SPAD_ADDR), _f("src_stride", SPAD_STRIDE),
              _f("dram_addr", DRAM_ADDR), _f("dram_stride", DRAM_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT))
    positive = ("rows", "cols")

    def accesses(self, cfg, a) -> list[Access]:
        return [Access("spad", a["src_addr"], a["src_stride"], a["rows"], a["cols"], False, "source"),
                Access("dram", a["dram_addr"], a["dram_stride"], a["rows"], a["cols"], True, "DRAM side")]

    def timing(self, cfg, a, ut) -> Timing:
        return _dma(ut, a["rows"], a["cols"])

    def execute(self, st, a) -> None:
        src = st.view("spad", a["src_addr"], a["src_stride"], a["rows"], a["cols"])
        st.view("dram", a["dram_addr"], a["dram_stride"], a["rows"], a["cols"])[...] = src.view(np.uint8)


class Matmul(OpSpec):
    """``A[acc] (+)= X W`` on the systolic array, ``n_tiles x k_tiles`` tiles, k innermost."""
    op, queue = Opcode.MATMUL, Queue.MATRIX
    fields = (_f("mode", 2, enum=MatMode), _f("transpose", 1), _f("accumulate", 1),
              _f("m", COUNT), _f("n_tiles", COUNT), _f("k_tiles", COUNT),
              _f("a_addr", SPAD_ADDR), _f("a_stride", SPAD_STRIDE),
              _f("w_addr", SPAD_ADDR), _f("w_stride", SPAD_STRIDE),
              _f("acc_addr", ACC_ADDR), _f("acc_stride", ACC_STRIDE))
    positive = ("m", "n_tiles", "k_tiles")

    def accesses(self, cfg, a) -> list[Access]:
        R, C = cfg.array_rows, cfg.array_cols
        m, K, N = a["m"], a["k_tiles"] * R, a["n_tiles"] * C
        stat = (N, K) if a["transpose"] else (K, N)
        out = [Access("spad", a["a_addr"], a["a_stride"], m, K, False, "streaming operand"),
               Access("spad", a["w_addr"], a["w_stride"], *stat, False, "stationary operand")]
        if a["accumulate"]:
            out.append(Access("acc", a["acc_addr"], a["acc_stride"], m, N, False, "accumulated output"))
        out.append(Access("acc", a["acc_addr"], a["acc_stride"], m, N, True, "output"))
        return out

    def timing(self, cfg, a, ut) -> Timing:
        t = ut.systolic_array(a["m"])
        jobs = a["n_tiles"] * a["k_tiles"]
        return Timing(jobs * t.interval, (jobs - 1) * t.interval + t.latency)

    def execute(self, st, a) -> None:
        cfg = st.config
        m, K, N = a["m"], a["k_tiles"] * cfg.array_rows, a["n_tiles"] * cfg.array_cols
        stream = st.view("spad", a["a_addr"], a["a_stride"], m, K)
        if a["transpose"]:
            stat = st.view("spad", a["w_addr"], a["w_stride"], N, K).swapaxes(1, 2)   # [B, K, N]
        else:
            stat = st.view("spad", a["w_addr"], a["w_stride"], K, N)
        mode = MatMode(a["mode"])
        if mode == MatMode.INT8:
            prod = _per_sample(lambda x, w: intops.linear(x, w.T), stream, stat)
        elif mode == MatMode.UINT8:
            prod = intops.attn_value_uniform(stream.view(np.uint8), stat)
        else:
            prod = intops.attn_value_lis(stream.view(np.uint8), stat)
        acc = st.view("acc", a["acc_addr"], a["acc_stride"], m, N)
        if a["accumulate"]:
            prod = intops.check_range(acc + prod, intops.INT32_MIN, intops.INT32_MAX, "accumulator")
        acc[...] = prod


class Requant(OpSpec):
    """Accumulator rows -> int8 (optionally through the GELU table) or int16 scratchpad rows."""
    op, queue = Opcode.REQUANT, Queue.VECTOR
    fields = (_f("src_addr", ACC_ADDR), _f("src_stride", ACC_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT), _f("param_addr", ACC_ADDR),
              _f("load_params", 1), _f("per_channel", 1), _f("out_type", 1, enum=OutType),
              _f("gelu", 1))
    positive = ("rows", "cols")

    def check(self, cfg, a) -> None:
        super().check(cfg, a)
        if a["gelu"] and a["out_type"] != OutType.INT8:
            raise Violation("GELU applies to int8 outputs only")

    @staticmethod
    def _records(a) -> int:
        return a["cols"] if a["per_channel"] else 1

    def accesses(self, cfg, a) -> list[Access]:
        eb = 2 if a["out_type"] == OutType.INT16 else 1
        out = [Access("acc", a["src_addr"], a["src_stride"], a["rows"], a["cols"], False, "source")]
        if a["load_params"]:
            out.append(Access("acc", a["param_addr"], 0, 1, self._records(a) * RECORD_WORDS,
                              False, "parameters"))
        out.append(Access("spad", a["dst_addr"], a["dst_stride"], a["rows"], a["cols"] * eb,
                          True, "destination"))
        return out

    def timing(self, cfg, a, ut) -> Timing:
        row = ut.requantizer(a["cols"])
        if a["gelu"]:
            row = ut.chain(row, ut.gelu(a["cols"]), a["cols"])
        return _vector_rows(a, self._records(a), row)

    def execute(self, st, a) -> None:
        rows, cols = a["rows"], a["cols"]
        if a["load_params"]:
            st.load_params("requantizer", a["param_addr"], self._records(a))
        p = st.unit_params("requantizer", self._records(a), "requantizer")
        x = st.view("acc", a["src_addr"], a["src_stride"], rows, cols)
        x = intops.check_range(x + p[..., 0], intops.INT32_MIN, intops.INT32_MAX, "biased accumulator")
        if a["out_type"] == OutType.INT16:
            y = intops.requantize(x, p[..., 1], p[..., 2], p[..., 3], intops.INT16_MIN, intops.INT16_MAX)
            raw = y.astype("<i2").view(np.int8).reshape(-1, rows, 2 * cols)
            st.view("spad", a["dst_addr"], a["dst_stride"], rows, 2 * cols)[...] = raw
            return
        y = intops.requantize(x, p[..., 1], p[..., 2], p[..., 3])
        if a["gelu"]:
            y = st.gelu(y)
        st.view("spad", a["dst_addr"], a["dst_stride"], rows, cols)[...] = y


class Softmax(OpSpec):
    """Accumulator score rows -> int16 -> LIS codes or uniform probabilities (scratchpad)."""
    op, queue = Opcode.SOFTMAX, Queue.VECTOR
    fields = (_f("src_addr", ACC_ADDR), _f("src_stride", ACC_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT), _f("dst_cols", COUNT),
              _f("mode", 1, enum=SoftmaxMode), _f("frac_bits", 3), _f("b_int", 16, signed=True),
              _f("c_int", 16), _f("mult", 16, signed=True), _f("shift", 6))
    positive = ("rows", "cols")

    def check(self, cfg, a) -> None:
        super().check(cfg, a)
        if a["dst_cols"] < a["cols"]:
            raise Violation(f"dst_cols {a['dst_cols']} < cols {a['cols']}")
        if not 2 <= a["frac_bits"] <= 6:
            raise Violation(f"frac_bits {a['frac_bits']} outside 2..6")
        if a["cols"] > cfg.max_seq_len:
            raise Violation(f"softmax row of {a['cols']} exceeds max_seq_len {cfg.max_seq_len} "
                            f"by {a['cols'] - cfg.max_seq_len}")

    def accesses(self, cfg, a) -> list[Access]:
        return [Access("acc", a["src_addr"], a["src_stride"], a["rows"], a["cols"], False, "source"),
                Access("spad", a["dst_addr"], a["dst_stride"], a["rows"], a["dst_cols"], True,
                       "destination")]

    def timing(self, cfg, a, ut) -> Timing:
        row = ut.chain(ut.requantizer(a["cols"]),
                       ut.softmax(a["cols"], SoftmaxMode(a["mode"])), a["cols"])
        return _vector_rows(a, 0, row)

    def execute(self, st, a) -> None:
        x = st.view("acc", a["src_addr"], a["src_stride"], a["rows"], a["cols"])
        s = intops.requantize(x, a["mult"], a["shift"], 0, intops.INT16_MIN, intops.INT16_MAX)
        lis = a["mode"] == SoftmaxMode.LIS
        fn = intops.lis_softmax if lis else intops.uniform_softmax
        p = fn(s, a["frac_bits"], a["b_int"], a["c_int"])
        dst = st.view("spad", a["dst_addr"], a["dst_stride"], a["rows"], a["dst_cols"])
        dst[..., :a["cols"]] = p.astype(np.uint8).view(np.int8)
        dst[..., a["cols"]:] = intops.LIS_ZERO_CODE if lis else 0


class _RowWise(OpSpec):
    """A vector instruction over ``rows x cols`` int8 scratchpad rows."""
    positive = ("rows", "cols")
    #: scratchpad operands read (field prefixes) and the unit (records) it uses.
    operands: tuple[str, ...] = ("src",)
    unit: str | None = None

    def accesses(self, cfg, a) -> list[Access]:
        out = [Access("spad", a[f"{o}_addr"], a[f"{o}_stride"], a["rows"], a["cols"], False,
                      "source" if o == "src" else f"operand {o}") for o in self.operands]
        if self.unit is not None and a["load_params"]:
            out.append(Access("acc", a["param_addr"], 0, 1, a["cols"] * RECORD_WORDS, False,
                              "parameters"))
        out.append(Access("spad", a["dst_addr"], a["dst_stride"], a["rows"], a["cols"], True,
                          "destination"))
        return out


class LayerNorm(_RowWise):
    """``sw.intops.ptf_layernorm`` of each row, the LayerNorm records per channel."""
    op, queue = Opcode.LAYERNORM, Queue.VECTOR
    fields = (_f("src_addr", SPAD_ADDR), _f("src_stride", SPAD_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT), _f("param_addr", ACC_ADDR), _f("load_params", 1),
              _f("zp_in", 16, signed=True))
    unit = "layernorm"

    def check(self, cfg, a) -> None:
        super().check(cfg, a)
        from hw.layernorm import layernorm_beats
        _unit_rule("LayerNorm", layernorm_beats, cfg, a["cols"])

    def timing(self, cfg, a, ut) -> Timing:
        return _vector_rows(a, a["cols"], ut.layernorm(a["cols"]))

    def execute(self, st, a) -> None:
        if a["load_params"]:
            st.load_params("layernorm", a["param_addr"], a["cols"])
        p = st.unit_params("layernorm", a["cols"], "LayerNorm")
        x = st.view("spad", a["src_addr"], a["src_stride"], a["rows"], a["cols"])
        st.view("spad", a["dst_addr"], a["dst_stride"], a["rows"], a["cols"])[...] = \
            intops.ptf_layernorm(x, a["zp_in"], p[..., 0], p[..., 1], p[..., 2], p[..., 3])


class Add(_RowWise):
    """``sw.intops.residual_add`` of two int8 row patterns (``b_stride = 0`` broadcasts one row)."""
    op, queue = Opcode.ADD, Queue.VECTOR
    fields = (_f("a_addr", SPAD_ADDR), _f("a_stride", SPAD_STRIDE),
              _f("b_addr", SPAD_ADDR), _f("b_stride", SPAD_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT), _f("param_addr", ACC_ADDR), _f("load_params", 1),
              _f("zp_a", 16, signed=True), _f("zp_b", 16, signed=True), _f("zp_out", 16, signed=True))
    operands = ("a", "b")
    unit = "residual_add"

    def check(self, cfg, a) -> None:
        super().check(cfg, a)
        from hw.residual_add import residual_add_param_load_timing
        _unit_rule("residual add", residual_add_param_load_timing, cfg, a["cols"])

    def timing(self, cfg, a, ut) -> Timing:
        return _vector_rows(a, a["cols"], ut.residual_add(a["cols"]))

    def execute(self, st, a) -> None:
        if a["load_params"]:
            st.load_params("residual_add", a["param_addr"], a["cols"])
        p = st.unit_params("residual_add", a["cols"], "residual add")
        x = st.view("spad", a["a_addr"], a["a_stride"], a["rows"], a["cols"])
        y = st.view("spad", a["b_addr"], a["b_stride"], a["rows"], a["cols"])
        st.view("spad", a["dst_addr"], a["dst_stride"], a["rows"], a["cols"])[...] = \
            intops.residual_add(x, y, a["zp_a"], a["zp_b"], p[..., 0], p[..., 1], p[..., 2], a["zp_out"])


class Gelu(_RowWise):
    """``table[x + 128]`` elementwise, with the table the last GELU_TABLE loaded."""
    op, queue = Opcode.GELU, Queue.VECTOR
    fields = (_f("src_addr", SPAD_ADDR), _f("src_stride", SPAD_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT))

    def timing(self, cfg, a, ut) -> Timing:
        return _vector_rows(a, 0, ut.gelu(a["cols"]))

    def execute(self, st, a) -> None:
        x = st.view("spad", a["src_addr"], a["src_stride"], a["rows"], a["cols"])
        st.view("spad", a["dst_addr"], a["dst_stride"], a["rows"], a["cols"])[...] = st.gelu(x)


class GeluTable(OpSpec):
    """Load the 256-byte GELU table at ``S[src_addr]`` (entry ``i``: output for input ``i - 128``)."""
    op, queue = Opcode.GELU_TABLE, Queue.VECTOR
    fields = (_f("src_addr", SPAD_ADDR),)

    def accesses(self, cfg, a) -> list[Access]:
        return [Access("spad", a["src_addr"], 0, 1, 256, False, "table")]

    def timing(self, cfg, a, ut) -> Timing:
        cycles = ut.gelu_table().latency
        return Timing(cycles, cycles)

    def execute(self, st, a) -> None:
        st.gelu_table = st.spad[:, a["src_addr"]:a["src_addr"] + 256].astype(np.int64)


#: The table: one spec per opcode.
SPECS: dict[Opcode, OpSpec] = {spec.op: spec for spec in (
    Halt(), Load(), Store(), Matmul(), Requant(), Softmax(), LayerNorm(), Add(), Gelu(), GeluTable())}
assert set(SPECS) == set(Opcode)
for _spec in SPECS.values():
    assert HEADER_BITS + sum(f.bits for f in _spec.fields) <= INSTR_BITS, _spec.op

#: Fields of every opcode, in bit order after the 16-bit header.
FORMATS: dict[Opcode, tuple[Field, ...]] = {op: spec.fields for op, spec in SPECS.items()}
#: The queue that executes each opcode (HALT ends the program and belongs to none).
QUEUE_OF: dict[Opcode, Queue | None] = {op: spec.queue for op, spec in SPECS.items()}

_FIELD_NAMES = {op: {f.name for f in fs} for op, fs in FORMATS.items()}
_FIELD_BOUNDS = {op: tuple((f.name, f.lo, f.hi) for f in fs) for op, fs in FORMATS.items()}


# ----------------------------------------------------------------------------------------
# Instructions and their encoding
# ----------------------------------------------------------------------------------------

@dataclass
class Instruction:
    """One instruction: opcode, dependency masks and its fields by name.

    ``wait`` bit ``q``: before starting, take one token from the semaphore ``q -> own queue``.
    ``signal`` bit ``q``: when retired, add one token to the semaphore ``own queue -> q``.
    """
    op: Opcode
    wait: int = 0
    signal: int = 0
    args: dict[str, int] = field(default_factory=dict)

    @property
    def queue(self) -> Queue | None:
        return QUEUE_OF[self.op]

    @property
    def spec(self) -> OpSpec:
        return SPECS[self.op]

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["args"][name]
        except KeyError:
            raise AttributeError(name) from None

    def check(self, index: int | None = None) -> None:
        """Raise :class:`IllegalInstructionError` unless every field is legal (encodable)."""
        where = "" if index is None else f"instruction {index}: "
        if not isinstance(self.op, Opcode):
            raise IllegalInstructionError(f"{where}unknown opcode {self.op!r}")
        name = self.op.name
        for mask, what in ((self.wait, "wait"), (self.signal, "signal")):
            if not isinstance(mask, int) or not 0 <= mask < (1 << NQ):
                raise IllegalInstructionError(f"{where}{name}: {what} mask {mask!r} is not {NQ} bits")
        q = self.queue
        if q is None and (self.wait or self.signal):
            raise IllegalInstructionError(f"{where}HALT cannot wait or signal")
        if q is not None and ((self.wait >> q) & 1 or (self.signal >> q) & 1):
            raise IllegalInstructionError(
                f"{where}{name} waits on or signals its own queue ({q.name})")
        args = self.args
        names = _FIELD_NAMES[self.op]
        if args.keys() != names:
            unknown = sorted(set(args) - names)
            missing = sorted(names - set(args))
            raise IllegalInstructionError(
                f"{where}{name}: unknown field(s) {unknown}, missing field(s) {missing}")
        for field_name, lo, hi in _FIELD_BOUNDS[self.op]:
            v = args[field_name]
            if v.__class__ is not int or v < lo or v > hi:      # bool and IntEnum values too
                if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
                    continue                                    # an IntEnum member
                raise IllegalInstructionError(
                    f"{where}{name}.{field_name} = {v!r} is outside {lo}..{hi}")


def encode(ins: Instruction) -> bytes:
    """The 32-byte encoding of a legal instruction."""
    ins.check()
    word = int(ins.op) | (ins.wait << 8) | (ins.signal << 12)
    pos = HEADER_BITS
    for f in FORMATS[ins.op]:
        word |= (int(ins.args[f.name]) & ((1 << f.bits) - 1)) << pos
        pos += f.bits
    return word.to_bytes(INSTR_BYTES, "little")


def decode(raw: bytes, index: int | None = None) -> Instruction:
    """Decode one 32-byte word; :class:`IllegalInstructionError` if it is not legal."""
    where = "" if index is None else f"instruction {index}: "
    if len(raw) != INSTR_BYTES:
        raise IllegalInstructionError(f"{where}an instruction is {INSTR_BYTES} bytes, got {len(raw)}")
    word = int.from_bytes(raw, "little")
    code = word & 0xFF
    try:
        op = Opcode(code)
    except ValueError:
        raise IllegalInstructionError(f"{where}unknown opcode {code}") from None
    ins = Instruction(op, (word >> 8) & 0xF, (word >> 12) & 0xF)
    pos = HEADER_BITS
    for f in FORMATS[op]:
        v = (word >> pos) & ((1 << f.bits) - 1)
        if f.signed and v >> (f.bits - 1):
            v -= 1 << f.bits
        ins.args[f.name] = v
        pos += f.bits
    if word >> pos:
        raise IllegalInstructionError(f"{where}{op.name}: reserved bits {pos}..{INSTR_BITS - 1} are not zero")
    ins.check(index)
    return ins


def encode_program(instrs: list[Instruction]) -> bytes:
    """Concatenated encodings."""
    return b"".join(encode(i) for i in instrs)


def decode_program(raw: bytes) -> list[Instruction]:
    """Decode a whole program binary; it must end with exactly one HALT."""
    if len(raw) % INSTR_BYTES:
        raise IllegalInstructionError(
            f"program size {len(raw)} bytes is not a multiple of {INSTR_BYTES}")
    instrs = [decode(raw[i:i + INSTR_BYTES], i // INSTR_BYTES) for i in range(0, len(raw), INSTR_BYTES)]
    check_halt(instrs)
    return instrs


def check_halt(instrs: list[Instruction]) -> None:
    """A program ends with one HALT and has no other."""
    if not instrs or instrs[-1].op != Opcode.HALT:
        raise IllegalInstructionError("program does not end with HALT (missing halt)")
    for i, ins in enumerate(instrs[:-1]):
        if ins.op == Opcode.HALT:
            raise IllegalInstructionError(f"instruction {i}: HALT before the end of the program")
