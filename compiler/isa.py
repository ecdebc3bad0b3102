"""The accelerator's instruction set, as one table.

Every opcode has one :class:`OpSpec` in :data:`SPECS`, and that spec is the only place the
opcode is defined:

* ``fields``: its fields in bit order after the 18-bit header, each at its stated width
  (the binary encoding, :func:`encode` / :func:`decode`, and the RTL decoder read them);
* ``queue``: the in-order queue that executes it;
* :meth:`OpSpec.check`: its constraints against a config (positive counts, the units'
  limits, mode combinations), raising :class:`Violation`;
* :meth:`OpSpec.accesses`: every memory region it reads or writes, as 2-D patterns (bounds
  checks, the cycle model's hazard checker and traffic reports read them);
* :meth:`OpSpec.timing`: its cycles on its engine, from the engine module's timing function
  in ``hw/core/`` (through :class:`hw.units.UnitTimings`);
* :meth:`OpSpec.execute`: its behaviour on the architectural state (:class:`ArchState`),
  every arithmetic step a call into :mod:`sw.intops`.

The compiler emits instructions and checks them here, the cycle model (:mod:`sim.machine`)
validates, times and executes them here, and the accelerator's decoder is generated from the
same fields.  docs/ISA.md describes the machine model and each instruction.

Encoding: every instruction is :data:`INSTR_BYTES` (32) bytes, a 256-bit little-endian word.
Bits ``[0, 8)`` hold the opcode, ``[8, 13)`` the *wait* mask and ``[13, 18)`` the *signal*
mask (one bit per queue, bit ``q`` = queue ``q`` of :class:`Queue`); the opcode's fields
follow from bit 18; the remaining bits are reserved and must be zero.  Signed fields are
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
    "MatMode", "OutType", "SoftmaxMode", "ErrorCode", "Field", "Access", "Timing", "Violation",
    "OpSpec", "Rule", "Pattern", "sel", "OPCODE_BITS", "MEMORIES", "row_elements",
    "SPECS", "FORMATS", "QUEUE_OF", "Instruction", "IllegalInstructionError", "ArchState",
    "encode", "decode", "encode_program", "decode_program", "check_halt", "check_instruction",
    "check_access",
    "SPAD_ADDR", "SPAD_STRIDE", "ACC_ADDR", "ACC_STRIDE", "DRAM_ADDR", "DRAM_STRIDE", "COUNT", "KEEP", "NO_SCORE_BIAS",
]

INSTR_BYTES = 32
INSTR_BITS = 8 * INSTR_BYTES
OPCODE_BITS = 8
#: Words of one per-channel parameter record in the parameter memory.
RECORD_WORDS = 4


class ErrorCode(enum.IntEnum):
    """Why the machine stopped (the control register ``ERROR``; :class:`ProgramError` of the
    cycle model carries the same code)."""
    NONE = 0
    ILLEGAL = 1        #: not a legal instruction word (opcode, reserved bits, enum, masks)
    RANGE = 2          #: a memory pattern outside the memory (region) it must lie in
    CONSTRAINT = 3     #: a count, alignment or unit limit the machine cannot run
    SEMAPHORE = 4      #: a dependency semaphore overflowed
    NO_HALT = 5        #: the program ended (its length) without HALT
    DEADLOCK = 6       #: every queue waits for a token nobody will give
    TOKENS = 7         #: HALT with tokens left in a semaphore
    BUS = 8            #: the memory answered with an error response


class IllegalInstructionError(ValueError):
    """A word or an instruction object is not a legal instruction."""
    code = ErrorCode.ILLEGAL


class Violation(ValueError):
    """An instruction breaks a rule of the machine (the caller names the instruction)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.CONSTRAINT):
        super().__init__(message)
        self.code = code


class Queue(enum.IntEnum):
    """The five in-order instruction queues; each owns one engine."""
    LOAD = 0      #: DMA DRAM -> scratchpad / parameter memory
    MATRIX = 1    #: the systolic array (int8 / uint8 products)
    ATTN = 2      #: the Log-Int-Softmax attention unit (codes x v, shifts and adds)
    VECTOR = 3    #: requantizer, GELU, softmax, LayerNorm, residual add
    STORE = 4     #: DMA scratchpad -> DRAM


#: Number of queues (and the width of the wait / signal masks).
NQ = len(Queue)
#: Bits of the header: opcode, wait mask, signal mask.
HEADER_BITS = OPCODE_BITS + 2 * NQ


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
    ATTNV = 10


class Mem(enum.IntEnum):
    """Destination memory of a LOAD."""
    SPAD = 0      #: int8 scratchpad, byte addresses
    PARAM = 1     #: int32 parameter-record memory, word addresses


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
#: Width of SOFTMAX's mask bounds ``keep_lo`` / ``keep_hi`` (key columns of a window).
KEEP = 12


def _f(name, bits, signed=False, enum=None) -> Field:
    return Field(name, bits, signed, enum)


#: Memory names of :class:`Access` and their element units.
MEMORIES = {"spad": "scratchpad bytes", "acc": "accumulator words", "param": "parameter words",
            "dram": "DRAM bytes"}


def row_elements(config, mem: str) -> int:
    """Elements of memory ``mem`` in one row of its on-chip block RAM (``N`` bytes of the
    scratchpad, ``N`` words of the accumulator, ``N / 4`` parameter words, at least 1; 1 for
    DRAM): the unit of the hazard rule (docs/ISA.md, "Hazards").  A block RAM row being
    written by one port reads undefined on the other in that cycle, so two queues may not
    share a row at all, not only an element."""
    n = config.lanes
    return {"spad": n, "acc": n, "param": max(n // 4, 1), "dram": 1}[mem]


class Access:
    """A 2-D pattern of one memory: ``rows`` rows of ``width`` elements from ``addr``, rows
    ``stride`` elements apart (bytes for ``spad`` / ``dram``, 32-bit words for ``acc``);
    ``lo`` / ``hi``: the first element and one past the last."""

    __slots__ = ("mem", "addr", "stride", "rows", "width", "write", "what", "regions", "lo", "hi")

    def __init__(self, mem: str, addr: int, stride: int, rows: int, width: int, write: bool,
                 what: str, regions: tuple[str, ...] = ()):
        self.mem, self.addr, self.stride, self.rows, self.width = mem, addr, stride, rows, width
        #: The on-chip regions (:attr:`hw.config.AcceleratorConfig.regions`) the pattern may
        #: lie in, whole, one of them (empty for DRAM).
        self.write, self.what, self.regions = write, what, regions
        self.lo = addr
        self.hi = addr + (rows - 1) * stride + width

    def __repr__(self) -> str:
        return (f"Access({self.mem!r}, {self.addr}, {self.stride}, {self.rows}, {self.width}, "
                f"{self.write}, {self.what!r})")

    def __eq__(self, other) -> bool:
        return isinstance(other, Access) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def overlaps(self, other: "Access", unit: int = 1) -> bool:
        """Whether the two patterns (of the same memory) share an element, or with ``unit``
        > 1 a block of ``unit`` elements (a memory row: :func:`row_elements`): every interval
        of elements widened to whole blocks."""
        if (self.mem != other.mem or -(-self.hi // unit) <= other.lo // unit
                or -(-other.hi // unit) <= self.lo // unit):
            return False
        a_flat = self.rows == 1 or self.stride <= self.width
        b_flat = other.rows == 1 or other.stride <= other.width
        if a_flat and b_flat:
            return True                                  # both contiguous spans
        if unit == 1 and self.stride == other.stride and not a_flat and not b_flat:
            # Rows of pitch s: x = a + r s + c = b + t s + d has a solution iff some multiple
            # m s with m = r - t lies strictly between (b - a) - wa and (b - a) + wb.
            s, delta = self.stride, other.addr - self.addr
            m_lo = max((delta - self.width) // s + 1, 1 - other.rows)
            m_hi = min(-((-(delta + other.width)) // s) - 1, self.rows - 1)
            return m_lo <= m_hi
        a0, a1 = self._intervals()
        b0, b1 = other._intervals()
        a0, a1, b0, b1 = a0 // unit, -(-a1 // unit), b0 // unit, -(-b1 // unit)
        # An interval of b overlaps some interval of a iff a's first start at or after b's
        # end differs from a's first end after b's start (both lists sorted; widened to
        # blocks they stay sorted, with ties, which the search allows).
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
    """Cycles of one instruction on a compute engine, from its start: ``busy``, after which
    the engine can start the next instruction; ``done``, to its retire pulse (its last
    write).  The DMA engines' timing carries more (:class:`hw.core.dma.LoadTiming`,
    :class:`hw.core.dma.StoreTiming`)."""
    busy: int
    done: int


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

    Every memory has the batch on axis 0 (``[B, size]``): the scratchpad (int8, all its
    regions at their addresses), the accumulator memories (int32, held in int64 and
    range-checked on every write), the parameter-record memory (int32) and DRAM (bytes).
    Unit registers: the parameter records each vector unit holds and the GELU table.  Timing
    never depends on the data, so one schedule serves the whole batch.
    """

    def __init__(self, config: AcceleratorConfig, dram: np.ndarray):
        batch = dram.shape[0]
        self.config = config
        self.spad = np.zeros((batch, config.scratchpad_bytes), dtype=np.int8)
        self.acc = np.zeros((batch, config.accumulator_words), dtype=np.int64)
        self.param = np.zeros((batch, config.param_words), dtype=np.int64)
        self.dram = dram
        self.params: dict[str, np.ndarray] = {}
        self.gelu_table: np.ndarray | None = None

    def view(self, mem: str, addr: int, stride: int, rows: int, cols: int) -> np.ndarray:
        return _view(getattr(self, mem), addr, stride, rows, cols)

    def load_params(self, unit: str, addr: int, n: int) -> None:
        """Copy ``n`` parameter records from the parameter memory into ``unit``."""
        self.params[unit] = self.param[:, addr:addr + n * RECORD_WORDS].reshape(-1, n, RECORD_WORDS).copy()

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
#
# An opcode's rules and memory patterns are expressions of its fields, written once and
# evaluated twice: on a dict of ints (the compiler and the cycle model) and on the fields of
# an instruction word in Amaranth (the accelerator's decoder, hw/core/decoder.py).  They use
# only what both understand: ``a["field"]``, arithmetic, comparisons, ``&`` / ``|`` and
# :func:`sel`.

def sel(cond, then, otherwise):
    """``then if cond else otherwise``, for ints and for Amaranth values alike."""
    if isinstance(cond, (bool, int, np.integer)):
        return then if cond else otherwise
    from amaranth import Mux
    return Mux(cond, then, otherwise)


@dataclass(frozen=True)
class Rule:
    """A condition every instruction of the opcode must meet: ``ok(cfg, a)``; otherwise the
    machine stops with ``code`` and the model says ``message(cfg, a)``."""
    ok: object
    message: object
    code: ErrorCode = ErrorCode.CONSTRAINT


@dataclass(frozen=True)
class Pattern:
    """A memory pattern of the opcode (an :class:`Access` once evaluated): expressions of
    the fields for its address, stride, rows and width, and ``when`` it applies."""
    mem: str
    addr: object
    stride: object
    rows: object
    width: object
    write: bool
    what: str
    regions: tuple[str, ...] = ()
    when: object = None


def _field(name):
    return lambda cfg, a: a[name]


def positive(*names: str) -> list[Rule]:
    return [Rule(lambda cfg, a, n=n: a[n] >= 1, lambda cfg, a, n=n: f"{n} must be at least 1")
            for n in names]


def aligned(*names: str) -> list[Rule]:
    """Compute engines move whole ``N``-element rows: these addresses and strides are
    multiples of ``N``."""
    return [Rule(lambda cfg, a, n=n: a[n] % cfg.lanes == 0,
                 lambda cfg, a, n=n: f"{n} = {a[n]} is not a multiple of the datapath width {cfg.lanes}")
            for n in names]


def int8_values(*names: str) -> list[Rule]:
    """Zero points of int8 tensors: the units hold them in 8 bits."""
    return [Rule(lambda cfg, a, n=n: (a[n] >= -128) & (a[n] <= 127),
                 lambda cfg, a, n=n: f"{n} = {a[n]} is outside the int8 range -128..127")
            for n in names]


def _unit_rule(unit: str, ok, explain) -> Rule:
    """A hardware unit's own rule: ``ok(cfg, value)`` decides, ``explain(cfg, value)`` (the
    unit's validation, raising ``ValueError``) words the message."""
    def message(cfg, a):
        try:
            explain(cfg, a)
        except ValueError as exc:
            return f"{unit}: {exc}"
        return f"{unit}: rejected"
    return Rule(ok, message)


#: Where each kind of operand lives (regions of hw.config.SPAD_REGIONS / ACC_REGIONS).
LOAD_REGIONS = ("act", "weight", "value", "vin", "vin2", "copy")


class OpSpec:
    """The definition of one opcode (see the module docstring)."""
    op: Opcode
    queue: Queue | None
    fields: tuple[Field, ...] = ()

    def rules(self, cfg: AcceleratorConfig) -> list[Rule]:
        return []

    def patterns(self, cfg: AcceleratorConfig) -> list[Pattern]:
        return []

    def check(self, cfg: AcceleratorConfig, a: dict) -> None:
        """Raise :class:`Violation` unless the instruction meets every rule (its memory
        patterns are checked against their regions separately, from :meth:`accesses`)."""
        for rule in self._of(cfg)[1]:
            if not rule.ok(cfg, a):
                raise Violation(rule.message(cfg, a), rule.code)

    def accesses(self, cfg: AcceleratorConfig, a: dict) -> list[Access]:
        """The memory patterns that apply to this instruction, evaluated."""
        return [Access(p.mem, p.addr(cfg, a), p.stride(cfg, a), p.rows(cfg, a), p.width(cfg, a),
                       p.write, p.what, p.regions)
                for p in self._of(cfg)[2] if p.when is None or p.when(cfg, a)]

    _memo: tuple | None = None

    def _of(self, cfg: AcceleratorConfig) -> tuple:
        """``(cfg, rules, patterns)`` for ``cfg``; the last config's are kept on the spec,
        so that a run does not hash the config for every instruction."""
        memo = self._memo
        if memo is None or memo[0] is not cfg:
            memo = self._memo = (cfg, _rules_of(self, cfg), _patterns_of(self, cfg))
        return memo

    def timing(self, cfg: AcceleratorConfig, a: dict, ut) -> Timing:
        raise NotImplementedError

    def execute(self, st: ArchState, a: dict) -> None:
        raise NotImplementedError


@functools.lru_cache(maxsize=None)
def _rules_of(spec: OpSpec, cfg: AcceleratorConfig) -> tuple[Rule, ...]:
    return tuple(spec.rules(cfg))


@functools.lru_cache(maxsize=None)
def _patterns_of(spec: OpSpec, cfg: AcceleratorConfig) -> tuple[Pattern, ...]:
    return tuple(spec.patterns(cfg))


class Halt(OpSpec):
    """End of the program: exactly one, the last instruction."""
    op, queue = Opcode.HALT, None

    def timing(self, cfg, a, ut) -> Timing:
        return Timing(0, 0)

    def execute(self, st, a) -> None:
        pass


class Load(OpSpec):
    """DRAM -> a scratchpad region written by the DMA (``pad`` zero bytes after each row)
    or -> the parameter memory (int32 little endian, ``pad = 0``).  Byte-granular on both
    sides."""
    op, queue = Opcode.LOAD, Queue.LOAD
    fields = (_f("mem", 1, enum=Mem), _f("dram_addr", DRAM_ADDR), _f("dram_stride", DRAM_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT), _f("pad", COUNT))

    def rules(self, cfg):
        return positive("rows", "cols") + [
            Rule(lambda cfg, a: (a["mem"] == Mem.SPAD) | (a["pad"] == 0),
                 lambda cfg, a: "zero padding is only for scratchpad loads")]

    def patterns(self, cfg):
        spad = lambda cfg, a: a["mem"] == Mem.SPAD
        param = lambda cfg, a: a["mem"] == Mem.PARAM
        return [
            Pattern("dram", _field("dram_addr"), _field("dram_stride"), _field("rows"),
                    lambda cfg, a: sel(a["mem"] == Mem.PARAM, 4 * a["cols"], a["cols"]), False,
                    "DRAM side"),
            Pattern("spad", _field("dst_addr"), _field("dst_stride"), _field("rows"),
                    lambda cfg, a: a["cols"] + a["pad"], True, "destination", LOAD_REGIONS, spad),
            Pattern("param", _field("dst_addr"), _field("dst_stride"), _field("rows"),
                    _field("cols"), True, "destination", ("param",), param)]

    def timing(self, cfg, a, ut):
        """:class:`hw.core.dma.LoadTiming` (the LOAD engine adds its read channel and depth)."""
        return ut.dma_load(a)

    def execute(self, st, a) -> None:
        rows, cols = a["rows"], a["cols"]
        if a["mem"] == Mem.PARAM:
            raw = st.view("dram", a["dram_addr"], a["dram_stride"], rows, 4 * cols)
            st.view("param", a["dst_addr"], a["dst_stride"], rows, cols)[...] = \
                np.ascontiguousarray(raw).view("<i4")
        else:
            raw = st.view("dram", a["dram_addr"], a["dram_stride"], rows, cols)
            dst = st.view("spad", a["dst_addr"], a["dst_stride"], rows, cols + a["pad"])
            dst[..., :cols] = raw.view(np.int8)
            dst[..., cols:] = 0


class Store(OpSpec):
    """A scratchpad region read by the DMA -> DRAM (byte-granular)."""
    op, queue = Opcode.STORE, Queue.STORE
    fields = (_f("src_addr", SPAD_ADDR), _f("src_stride", SPAD_STRIDE),
              _f("dram_addr", DRAM_ADDR), _f("dram_stride", DRAM_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT))

    def rules(self, cfg):
        return positive("rows", "cols")

    def patterns(self, cfg):
        return [Pattern("spad", _field("src_addr"), _field("src_stride"), _field("rows"),
                        _field("cols"), False, "source", ("out", "copy")),
                Pattern("dram", _field("dram_addr"), _field("dram_stride"), _field("rows"),
                        _field("cols"), True, "DRAM side")]

    def timing(self, cfg, a, ut):
        """:class:`hw.core.dma.StoreTiming` (the STORE engine adds its depth)."""
        return ut.dma_store(a)

    def execute(self, st, a) -> None:
        src = st.view("spad", a["src_addr"], a["src_stride"], a["rows"], a["cols"])
        st.view("dram", a["dram_addr"], a["dram_stride"], a["rows"], a["cols"])[...] = src.view(np.uint8)


class _Tiles(OpSpec):
    """``A[out] = X W`` in ``n_tiles x k_tiles`` tiles of ``N x N``, ``k`` innermost, on a
    tile engine: ``m`` streaming rows of ``K = k_tiles N`` elements, a stationary
    ``K x (n_tiles N)`` operand, results summed over ``k`` in the engine's accumulation
    buffer and written once."""
    #: (streaming regions, stationary regions, output regions)
    stream_regions: tuple[str, ...] = ()
    stationary_regions: tuple[str, ...] = ()
    out_regions: tuple[str, ...] = ()

    def rules(self, cfg):
        return positive("m", "n_tiles", "k_tiles") + aligned(
            "a_addr", "a_stride", "w_addr", "w_stride", "acc_addr", "acc_stride") + [
            Rule(lambda cfg, a: a["m"] <= cfg.max_tile_rows,
                 lambda cfg, a: f"m = {a['m']} streaming rows exceed max_tile_rows {cfg.max_tile_rows}")]

    def _stationary(self, cfg) -> tuple:
        """(rows, width) expressions of the stationary operand."""
        return (lambda cfg, a: a["k_tiles"] * cfg.lanes, lambda cfg, a: a["n_tiles"] * cfg.lanes)

    def patterns(self, cfg):
        rows, width = self._stationary(cfg)
        return [Pattern("spad", _field("a_addr"), _field("a_stride"), _field("m"),
                        lambda cfg, a: a["k_tiles"] * cfg.lanes, False, "streaming operand",
                        self.stream_regions),
                Pattern("spad", _field("w_addr"), _field("w_stride"), rows, width, False,
                        "stationary operand", self.stationary_regions),
                Pattern("acc", _field("acc_addr"), _field("acc_stride"), _field("m"),
                        lambda cfg, a: a["n_tiles"] * cfg.lanes, True, "output", self.out_regions)]

    #: The tile engine that runs the opcode (:func:`hw.core.tile_engine.tile_timing`).
    engine_kind = ""

    def timing(self, cfg, a, ut) -> Timing:
        return ut.tile(a, self.engine_kind)

    def _operands(self, st, a):
        n = st.config.lanes
        m, K, N = a["m"], a["k_tiles"] * n, a["n_tiles"] * n
        stream = st.view("spad", a["a_addr"], a["a_stride"], m, K)
        if a.get("transpose"):
            stat = st.view("spad", a["w_addr"], a["w_stride"], N, K).swapaxes(1, 2)   # [B, K, N]
        else:
            stat = st.view("spad", a["w_addr"], a["w_stride"], K, N)
        return stream, stat, st.view("acc", a["acc_addr"], a["acc_stride"], m, N)


class Matmul(_Tiles):
    """On the systolic array: int8 or uint8 (8-bit softmax probabilities) streaming rows
    times an int8 stationary operand, stored ``[K, N]`` or (``transpose``) ``[N, K]``."""
    op, queue = Opcode.MATMUL, Queue.MATRIX
    fields = (_f("mode", 1, enum=MatMode), _f("transpose", 1),
              _f("m", COUNT), _f("n_tiles", COUNT), _f("k_tiles", COUNT),
              _f("a_addr", SPAD_ADDR), _f("a_stride", SPAD_STRIDE),
              _f("w_addr", SPAD_ADDR), _f("w_stride", SPAD_STRIDE),
              _f("acc_addr", ACC_ADDR), _f("acc_stride", ACC_STRIDE))
    stream_regions = ("act", "prob")
    stationary_regions = ("weight",)
    out_regions = ("acc",)
    engine_kind = "matrix"

    def _stationary(self, cfg) -> tuple:
        return (lambda cfg, a: sel(a["transpose"], a["n_tiles"], a["k_tiles"]) * cfg.lanes,
                lambda cfg, a: sel(a["transpose"], a["k_tiles"], a["n_tiles"]) * cfg.lanes)

    def execute(self, st, a) -> None:
        stream, stat, acc = self._operands(st, a)
        if a["mode"] == MatMode.INT8:
            acc[...] = _per_sample(lambda x, w: intops.linear(x, w.T), stream, stat)
        else:
            acc[...] = intops.attn_value_uniform(stream.view(np.uint8), stat)


class AttnV(_Tiles):
    """On the Log-Int-Softmax attention unit: 4-bit codes (one a byte) times int8 ``v``
    stored ``[K, N]``: ``sum_i v[i, :] << (15 - code_i)``, shifts and adds only."""
    op, queue = Opcode.ATTNV, Queue.ATTN
    fields = (_f("m", COUNT), _f("n_tiles", COUNT), _f("k_tiles", COUNT),
              _f("a_addr", SPAD_ADDR), _f("a_stride", SPAD_STRIDE),
              _f("w_addr", SPAD_ADDR), _f("w_stride", SPAD_STRIDE),
              _f("acc_addr", ACC_ADDR), _f("acc_stride", ACC_STRIDE))
    stream_regions = ("codes",)
    stationary_regions = ("value",)
    out_regions = ("attn_acc",)
    engine_kind = "attn"

    def execute(self, st, a) -> None:
        stream, stat, acc = self._operands(st, a)
        acc[...] = intops.attn_value_lis(stream.view(np.uint8), stat)


def _records_rule() -> Rule:
    return Rule(lambda cfg, a: a["param_addr"] % RECORD_WORDS == 0,
                lambda cfg, a: f"param_addr = {a['param_addr']} is not a multiple of {RECORD_WORDS}")


class Requant(OpSpec):
    """Accumulator rows -> int8 (optionally through the GELU table) or int16 scratchpad rows."""
    op, queue = Opcode.REQUANT, Queue.VECTOR
    fields = (_f("src_addr", ACC_ADDR), _f("src_stride", ACC_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT), _f("param_addr", ACC_ADDR),
              _f("load_params", 1), _f("per_channel", 1), _f("out_type", 1, enum=OutType),
              _f("gelu", 1))

    def rules(self, cfg):
        records = lambda cfg: -(-cfg.max_channels // cfg.lanes) * cfg.lanes
        return positive("rows", "cols") + aligned("src_addr", "src_stride", "dst_addr", "dst_stride") + [
            Rule(lambda cfg, a: (a["gelu"] == 0) | (a["out_type"] == OutType.INT8),
                 lambda cfg, a: "GELU applies to int8 outputs only"),
            Rule(lambda cfg, a: (a["per_channel"] == 0) | (a["cols"] <= records(cfg)),
                 lambda cfg, a: f"per-channel requantization of {a['cols']} channels exceeds the "
                                f"requantizer's {records(cfg)} records"),
            _records_rule()]

    @staticmethod
    def _records(a):
        return sel(a["per_channel"], a["cols"], 1)

    def patterns(self, cfg):
        return [Pattern("acc", _field("src_addr"), _field("src_stride"), _field("rows"),
                        _field("cols"), False, "source", ("acc", "attn_acc")),
                Pattern("param", _field("param_addr"), lambda cfg, a: 0, lambda cfg, a: 1,
                        lambda cfg, a: self._records(a) * RECORD_WORDS, False, "parameters",
                        ("param",), lambda cfg, a: a["load_params"] == 1),
                Pattern("spad", _field("dst_addr"), _field("dst_stride"), _field("rows"),
                        # Two products selected, not a product of a selection: the decoder
                        # derives its logic from this expression (a constant factor is a shift).
                        lambda cfg, a: sel(a["out_type"] == OutType.INT16, a["cols"] * 2, a["cols"]),
                        True,
                        "destination", ("out",))]

    def timing(self, cfg, a, ut) -> Timing:
        return ut.vector(self.op, a)

    def execute(self, st, a) -> None:
        rows, cols = a["rows"], a["cols"]
        records = self._records(a)
        if a["load_params"]:
            st.load_params("requantizer", a["param_addr"], records)
        p = st.unit_params("requantizer", records, "requantizer")
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
    """Score rows of the matrix products -> int16 (plus Swin's score bias and shift mask,
    saturating) -> Log-Int-Softmax codes (for ATTNV) or 8-bit probabilities (for MATMUL),
    ``ceil(cols / N) N`` per row, the tail padded with the zero-attention value.

    Score bias (``bias = 1``): an int16 matrix of ``rows x cols`` split into two byte planes,
    the low bytes in ``vin`` at ``bias_addr`` and the high bytes (signed) in ``vin2`` at the
    same offset from that region's base, rows ``dst_stride`` bytes apart.  Mask: column
    ``j`` outside ``keep_lo <= j < keep_hi`` gets ``mask_value`` (0 or negative) added.
    Both follow the score requantization: ``clip16(requant(acc) + bias + mask)``
    (:func:`sw.intops.score_bias`)."""
    op, queue = Opcode.SOFTMAX, Queue.VECTOR
    fields = (_f("src_addr", ACC_ADDR), _f("src_stride", ACC_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT),
              _f("mode", 1, enum=SoftmaxMode), _f("frac_bits", 3), _f("b_int", 16, signed=True),
              _f("c_int", 16), _f("mult", 16, signed=True), _f("shift", 6),
              _f("bias", 1), _f("bias_addr", SPAD_ADDR), _f("keep_lo", KEEP),
              _f("keep_hi", KEEP), _f("mask_value", 16, signed=True))

    @staticmethod
    def dst_cols(cfg, a):
        """Bytes written per destination row: ``cols`` rounded up to whole ``N``-byte words."""
        b = cfg.lanes.bit_length() - 1
        return ((a["cols"] + cfg.lanes - 1) >> b) << b

    @staticmethod
    def bias_hi_addr(cfg, a):
        """Address of the bias's high-byte plane in ``vin2``: ``bias_addr``'s offset in ``vin``."""
        return a["bias_addr"] - cfg.regions["vin"].base + cfg.regions["vin2"].base

    def rules(self, cfg):
        from hw.softmax import length_ok
        codes, prob = cfg.regions["codes"], cfg.regions["prob"]
        inside = lambda r, x: (x >= r.base) & (x < r.base + r.size)
        return positive("rows", "cols") + aligned("src_addr", "src_stride", "dst_addr", "dst_stride") + [
            Rule(lambda cfg, a: (a["frac_bits"] >= 2) & (a["frac_bits"] <= 6),
                 lambda cfg, a: f"frac_bits {a['frac_bits']} outside 2..6"),
            Rule(lambda cfg, a: length_ok(cfg, a["cols"]),
                 lambda cfg, a: f"softmax row of {a['cols']} exceeds max_seq_len {cfg.max_seq_len} "
                                f"by {a['cols'] - cfg.max_seq_len}"),
            Rule(lambda cfg, a: sel(a["mode"] == SoftmaxMode.LIS, inside(prob, a["dst_addr"]) == 0,
                                    inside(codes, a["dst_addr"]) == 0),
                 lambda cfg, a: "LIS codes go to the codes memory, UNIFORM probabilities to prob"),
            Rule(lambda cfg, a: a["mask_value"] <= 0,
                 lambda cfg, a: f"mask_value {a['mask_value']} must be 0 or negative"),
            Rule(lambda cfg, a: (a["bias"] == 0) | (a["bias_addr"] % cfg.lanes == 0),
                 lambda cfg, a: f"bias_addr = {a['bias_addr']} is not a multiple of the datapath "
                                f"width {cfg.lanes}")]

    def patterns(self, cfg):
        with_bias = lambda cfg, a: a["bias"] == 1
        return [Pattern("acc", _field("src_addr"), _field("src_stride"), _field("rows"),
                        _field("cols"), False, "source", ("acc",)),
                Pattern("spad", _field("dst_addr"), _field("dst_stride"), _field("rows"),
                        self.dst_cols, True, "destination", ("codes", "prob")),
                Pattern("spad", _field("bias_addr"), _field("dst_stride"), _field("rows"),
                        self.dst_cols, False, "score bias (low bytes)", ("vin",), with_bias),
                Pattern("spad", self.bias_hi_addr, _field("dst_stride"), _field("rows"),
                        self.dst_cols, False, "score bias (high bytes)", ("vin2",), with_bias)]

    def timing(self, cfg, a, ut) -> Timing:
        return ut.vector(self.op, a)

    def execute(self, st, a) -> None:
        rows, cols = a["rows"], a["cols"]
        x = st.view("acc", a["src_addr"], a["src_stride"], rows, cols)
        s = intops.requantize(x, a["mult"], a["shift"], 0, intops.INT16_MIN, intops.INT16_MAX)
        bias = mask = None
        if a["bias"]:
            lo = st.view("spad", a["bias_addr"], a["dst_stride"], rows, cols).view(np.uint8)
            hi = st.view("spad", self.bias_hi_addr(st.config, a), a["dst_stride"], rows, cols)
            bias = hi.astype(np.int64) * 256 + lo                       # [B, rows, cols]
        j = np.arange(cols)
        if a["mask_value"] and ((j < a["keep_lo"]) | (j >= a["keep_hi"])).any():
            mask = np.where((j < a["keep_lo"]) | (j >= a["keep_hi"]), a["mask_value"], 0)
            mask = np.broadcast_to(mask, (1, rows, cols))
        if bias is not None or mask is not None:
            def biased(sc, b):
                sc3 = sc.reshape((-1, 1, 1, rows, cols))
                return intops.score_bias(sc3, None if b is None else b.reshape(1, rows, cols),
                                         mask).reshape(sc.shape)
            s = biased(s, None) if bias is None else _per_sample(biased, s, bias)
        lis = a["mode"] == SoftmaxMode.LIS
        fn = intops.lis_softmax if lis else intops.uniform_softmax
        p = fn(s, a["frac_bits"], a["b_int"], a["c_int"])
        dst = st.view("spad", a["dst_addr"], a["dst_stride"], rows, self.dst_cols(st.config, a))
        dst[..., :cols] = p.astype(np.uint8).view(np.int8)
        dst[..., cols:] = intops.LIS_ZERO_CODE if lis else 0


#: SOFTMAX fields of a row without Swin's score bias and mask.
NO_SCORE_BIAS = dict(bias=0, bias_addr=0, keep_lo=0, keep_hi=0, mask_value=0)


class _RowWise(OpSpec):
    """A vector instruction over ``rows x cols`` int8 scratchpad rows."""
    #: scratchpad operands read (field prefix, regions) and the unit (records) it uses.
    operands: tuple[tuple[str, tuple[str, ...]], ...] = (("src", ("vin",)),)
    unit: str | None = None

    def rules(self, cfg):
        rules = positive("rows", "cols") + aligned(
            "dst_addr", "dst_stride", *(f"{o}_{k}" for o, _ in self.operands for k in ("addr", "stride")))
        return rules + ([_records_rule()] if self.unit is not None else [])

    def patterns(self, cfg):
        out = [Pattern("spad", _field(f"{o}_addr"), _field(f"{o}_stride"), _field("rows"),
                       _field("cols"), False, "source" if o == "src" else f"operand {o}", regions)
               for o, regions in self.operands]
        if self.unit is not None:
            out.append(Pattern("param", _field("param_addr"), lambda cfg, a: 0, lambda cfg, a: 1,
                               lambda cfg, a: a["cols"] * RECORD_WORDS, False, "parameters",
                               ("param",), lambda cfg, a: a["load_params"] == 1))
        out.append(Pattern("spad", _field("dst_addr"), _field("dst_stride"), _field("rows"),
                           _field("cols"), True, "destination", ("out",)))
        return out


class LayerNorm(_RowWise):
    """``sw.intops.ptf_layernorm`` of each row, the LayerNorm records per channel."""
    op, queue = Opcode.LAYERNORM, Queue.VECTOR
    fields = (_f("src_addr", SPAD_ADDR), _f("src_stride", SPAD_STRIDE),
              _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
              _f("rows", COUNT), _f("cols", COUNT), _f("param_addr", ACC_ADDR), _f("load_params", 1),
              _f("zp_in", 16, signed=True))
    unit = "layernorm"

    def rules(self, cfg):
        from hw.layernorm import channels_ok, layernorm_beats
        return super().rules(cfg) + [_unit_rule(
            "LayerNorm", lambda cfg, a: channels_ok(cfg, a["cols"]),
            lambda cfg, a: layernorm_beats(cfg, a["cols"]))] + int8_values("zp_in")

    def timing(self, cfg, a, ut) -> Timing:
        return ut.vector(self.op, a)

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
    operands = (("a", ("vin",)), ("b", ("vin2",)))
    unit = "residual_add"

    def rules(self, cfg):
        from hw.residual_add import channels_ok, residual_add_param_load_timing
        return super().rules(cfg) + [_unit_rule(
            "residual add", lambda cfg, a: channels_ok(cfg, a["cols"]),
            lambda cfg, a: residual_add_param_load_timing(cfg, a["cols"]))] + int8_values(
            "zp_a", "zp_b", "zp_out")

    def timing(self, cfg, a, ut) -> Timing:
        return ut.vector(self.op, a)

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
        return ut.vector(self.op, a)

    def execute(self, st, a) -> None:
        x = st.view("spad", a["src_addr"], a["src_stride"], a["rows"], a["cols"])
        st.view("spad", a["dst_addr"], a["dst_stride"], a["rows"], a["cols"])[...] = st.gelu(x)


class GeluTable(OpSpec):
    """Load the 256-byte GELU table at ``S[src_addr]`` (entry ``i``: output for input ``i - 128``)."""
    op, queue = Opcode.GELU_TABLE, Queue.VECTOR
    fields = (_f("src_addr", SPAD_ADDR),)

    def rules(self, cfg):
        return aligned("src_addr")

    def patterns(self, cfg):
        return [Pattern("spad", _field("src_addr"), lambda cfg, a: 0, lambda cfg, a: 1,
                        lambda cfg, a: 256, False, "table", ("vin",))]

    def timing(self, cfg, a, ut) -> Timing:
        return ut.vector(self.op, a)

    def execute(self, st, a) -> None:
        st.gelu_table = st.spad[:, a["src_addr"]:a["src_addr"] + 256].astype(np.int64)


#: The table: one spec per opcode.
SPECS: dict[Opcode, OpSpec] = {spec.op: spec for spec in (
    Halt(), Load(), Store(), Matmul(), AttnV(), Requant(), Softmax(), LayerNorm(), Add(), Gelu(),
    GeluTable())}
assert set(SPECS) == set(Opcode)
for _spec in SPECS.values():
    assert HEADER_BITS + sum(f.bits for f in _spec.fields) <= INSTR_BITS, _spec.op

#: Fields of every opcode, in bit order after the 18-bit header.
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
        wait, signal = self.wait, self.signal
        for mask, what in ((wait, "wait"), (signal, "signal")):
            if not isinstance(mask, int) or not 0 <= mask < (1 << NQ):
                raise IllegalInstructionError(
                    f"{where}{self.op.name}: {what} mask {mask!r} is not {NQ} bits")
        q = QUEUE_OF[self.op]
        if q is None and (wait or signal):
            raise IllegalInstructionError(f"{where}HALT cannot wait or signal")
        if q is not None and ((wait >> q) & 1 or (signal >> q) & 1):
            raise IllegalInstructionError(
                f"{where}{self.op.name} waits on or signals its own queue ({q.name})")
        args = self.args
        names = _FIELD_NAMES[self.op]
        if args.keys() != names:
            name = self.op.name
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
                    f"{where}{self.op.name}.{field_name} = {v!r} is outside {lo}..{hi}")


def encode(ins: Instruction) -> bytes:
    """The 32-byte encoding of a legal instruction."""
    ins.check()
    word = int(ins.op) | (ins.wait << OPCODE_BITS) | (ins.signal << (OPCODE_BITS + NQ))
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
    code = word & ((1 << OPCODE_BITS) - 1)
    try:
        op = Opcode(code)
    except ValueError:
        raise IllegalInstructionError(f"{where}unknown opcode {code}") from None
    mask = (1 << NQ) - 1
    ins = Instruction(op, (word >> OPCODE_BITS) & mask, (word >> (OPCODE_BITS + NQ)) & mask)
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


# ----------------------------------------------------------------------------------------
# The decoder's verdict on one instruction
# ----------------------------------------------------------------------------------------

def check_access(acc: Access, cfg: AcceleratorConfig, dram_size: int) -> None:
    """Raise :class:`Violation` (``RANGE``) unless the pattern lies in one of its regions
    (DRAM: below ``dram_size``), and (``CONSTRAINT``) if a written pattern's rows overlap."""
    unit = MEMORIES[acc.mem]
    if acc.mem == "dram":
        if acc.hi > dram_size:
            raise Violation(f"{acc.what} reaches {unit} {acc.lo}..{acc.hi - 1}, beyond its "
                            f"{dram_size} bytes (out of range by {acc.hi - dram_size})", ErrorCode.RANGE)
    else:
        regions = cfg.regions
        lo, hi = acc.lo, acc.hi
        for r in acc.regions:
            reg = regions[r]
            if reg.base <= lo and hi <= reg.end:
                break
        else:
            where = ", ".join(f"{r} {regions[r].base}..{regions[r].end - 1}" for r in acc.regions)
            raise Violation(f"{acc.what} reaches {unit} {acc.lo}..{acc.hi - 1}, outside the "
                            f"{' / '.join(acc.regions)} region{'s' if len(acc.regions) > 1 else ''} "
                            f"({where})", ErrorCode.RANGE)
    if acc.write and acc.rows > 1 and acc.stride < acc.width:
        raise Violation(f"{acc.what}: rows of {acc.width} overlap (stride {acc.stride})")


def check_instruction(cfg: AcceleratorConfig, ins: "Instruction | bytes", index: int, last: bool,
                      dram_size: int) -> tuple["Instruction | None", list[Access]]:
    """The decoder's verdict on instruction ``index`` of a program (``last``: it is the
    program's last instruction): the instruction and its memory patterns, or
    :class:`Violation` with the code the accelerator stops with.

    ``ins`` is an :class:`Instruction` or its 32-byte word.  The checks and their priority
    are the hardware decoder's (``hw/core/decoder.py``): ``ILLEGAL`` (not a legal word; a
    HALT that is not last), ``NO_HALT`` (the last instruction is not a HALT), then the
    opcode's rules in table order, then its patterns in table order (``RANGE``, overlapping
    written rows).
    """
    try:
        if isinstance(ins, (bytes, bytearray)):
            ins = decode(bytes(ins), index)
        else:
            ins.check(index)
    except IllegalInstructionError as exc:
        raise Violation(str(exc), ErrorCode.ILLEGAL) from None
    op = ins.op
    if (op == Opcode.HALT) != last:
        where = f"instruction {index} ({op.name})"
        if last:
            raise Violation(f"{where}: the program ends without HALT (missing halt)",
                            ErrorCode.NO_HALT)
        raise Violation(f"{where}: HALT before the end of the program", ErrorCode.ILLEGAL)
    spec = SPECS[op]
    try:
        spec.check(cfg, ins.args)
        accesses = spec.accesses(cfg, ins.args)
        for acc in accesses:
            check_access(acc, cfg, dram_size)
    except Violation as exc:
        raise Violation(f"instruction {index} ({op.name}): {exc}", exc.code) from None
    return ins, accesses
