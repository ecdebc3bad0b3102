"""The accelerator's instruction set: opcodes, fields, binary encoding and decoding.

Every instruction is :data:`INSTR_BYTES` (32) bytes, a 256-bit little-endian word.  Bits
``[0, 8)`` hold the opcode, ``[8, 12)`` the *wait* mask and ``[12, 16)`` the *signal* mask
(one bit per queue, bit ``q`` = queue ``q`` of :class:`Queue`); the opcode's fields follow
from bit 16 in the order of :data:`FORMATS`, each at its stated width; the remaining bits are
reserved and must be zero.  Signed fields are two's complement.  docs/ISA.md describes what
each instruction does and its exact timing rule.

The decoder rejects any word that is not a legal instruction (unknown opcode, a reserved bit
set, a field value outside its legal set, a wait or signal on the instruction's own queue)
with :class:`IllegalInstructionError` naming the instruction index and the fault.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "INSTR_BYTES", "INSTR_BITS", "HEADER_BITS", "Queue", "Opcode", "Mem", "MatMode", "OutType",
    "SoftmaxMode", "Field", "FORMATS", "QUEUE_OF", "Instruction", "IllegalInstructionError",
    "encode", "decode", "encode_program", "decode_program", "check_halt",
]

INSTR_BYTES = 32
INSTR_BITS = 8 * INSTR_BYTES
HEADER_BITS = 16


class IllegalInstructionError(ValueError):
    """A word or an instruction object is not a legal instruction."""


class Queue(enum.IntEnum):
    """The four in-order instruction queues; each owns one engine."""
    LOAD = 0      #: DMA DRAM -> scratchpad / accumulator memory
    MATRIX = 1    #: the systolic array
    VECTOR = 2    #: requantizer, GELU, softmax, LayerNorm, residual add
    STORE = 3     #: DMA scratchpad -> DRAM


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


class MatMode(enum.IntEnum):
    """What the array's streaming operand holds (the stationary operand is always int8)."""
    INT8 = 0      #: signed 8-bit activations (linear layers, q @ k^T)
    UINT8 = 1     #: unsigned 8-bit uniform softmax probabilities (attention x V)
    LIS = 2       #: 4-bit log2 codes in a byte each; weight 2**(15 - code), 0 for code 15


class OutType(enum.IntEnum):
    """Element type a REQUANT writes to the scratchpad."""
    INT8 = 0      #: one byte per element, clamp to [-128, 127]
    INT16 = 1     #: two bytes per element (little endian), clamp to [-32768, 32767]


class SoftmaxMode(enum.IntEnum):
    LIS = 0       #: 4-bit log2 codes (one per byte), pad code 15
    UNIFORM = 1   #: 8-bit probabilities, pad value 0


@dataclass(frozen=True)
class Field:
    """One instruction field: ``bits`` wide, signed or not, optional legal-value limit."""
    name: str
    bits: int
    signed: bool = False
    #: Largest legal value (inclusive) when smaller than the width allows (enum fields).
    limit: int | None = None

    @property
    def lo(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        top = (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1
        return top if self.limit is None else min(top, self.limit)


def _f(name, bits, signed=False, limit=None):
    return Field(name, bits, signed, limit)


SPAD_ADDR, SPAD_STRIDE, ACC_ADDR, ACC_STRIDE, DRAM_ADDR, DRAM_STRIDE, COUNT = 24, 16, 24, 16, 32, 32, 16

#: Fields of every opcode, in bit order after the 16-bit header.
FORMATS: dict[Opcode, tuple[Field, ...]] = {
    Opcode.HALT: (),
    Opcode.LOAD: (
        _f("mem", 1), _f("dram_addr", DRAM_ADDR), _f("dram_stride", DRAM_STRIDE),
        _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
        _f("rows", COUNT), _f("cols", COUNT), _f("pad", COUNT)),
    Opcode.STORE: (
        _f("src_addr", SPAD_ADDR), _f("src_stride", SPAD_STRIDE),
        _f("dram_addr", DRAM_ADDR), _f("dram_stride", DRAM_STRIDE),
        _f("rows", COUNT), _f("cols", COUNT)),
    Opcode.MATMUL: (
        _f("mode", 2, limit=max(MatMode)), _f("transpose", 1), _f("accumulate", 1),
        _f("m", COUNT), _f("n_tiles", COUNT), _f("k_tiles", COUNT),
        _f("a_addr", SPAD_ADDR), _f("a_stride", SPAD_STRIDE),
        _f("w_addr", SPAD_ADDR), _f("w_stride", SPAD_STRIDE),
        _f("acc_addr", ACC_ADDR), _f("acc_stride", ACC_STRIDE)),
    Opcode.REQUANT: (
        _f("src_addr", ACC_ADDR), _f("src_stride", ACC_STRIDE),
        _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
        _f("rows", COUNT), _f("cols", COUNT), _f("param_addr", ACC_ADDR),
        _f("load_params", 1), _f("per_channel", 1), _f("out_type", 1, limit=max(OutType)),
        _f("gelu", 1)),
    Opcode.SOFTMAX: (
        _f("src_addr", ACC_ADDR), _f("src_stride", ACC_STRIDE),
        _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
        _f("rows", COUNT), _f("cols", COUNT), _f("dst_cols", COUNT),
        _f("mode", 1), _f("frac_bits", 3), _f("b_int", 16, signed=True), _f("c_int", 16),
        _f("mult", 16, signed=True), _f("shift", 6)),
    Opcode.LAYERNORM: (
        _f("src_addr", SPAD_ADDR), _f("src_stride", SPAD_STRIDE),
        _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
        _f("rows", COUNT), _f("cols", COUNT), _f("param_addr", ACC_ADDR), _f("load_params", 1),
        _f("zp_in", 16, signed=True)),
    Opcode.ADD: (
        _f("a_addr", SPAD_ADDR), _f("a_stride", SPAD_STRIDE),
        _f("b_addr", SPAD_ADDR), _f("b_stride", SPAD_STRIDE),
        _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
        _f("rows", COUNT), _f("cols", COUNT), _f("param_addr", ACC_ADDR), _f("load_params", 1),
        _f("zp_a", 16, signed=True), _f("zp_b", 16, signed=True), _f("zp_out", 16, signed=True)),
    Opcode.GELU: (
        _f("src_addr", SPAD_ADDR), _f("src_stride", SPAD_STRIDE),
        _f("dst_addr", SPAD_ADDR), _f("dst_stride", SPAD_STRIDE),
        _f("rows", COUNT), _f("cols", COUNT)),
    Opcode.GELU_TABLE: (_f("src_addr", SPAD_ADDR),),
}

#: The queue that executes each opcode (HALT ends the program and belongs to none).
QUEUE_OF: dict[Opcode, Queue | None] = {
    Opcode.HALT: None, Opcode.LOAD: Queue.LOAD, Opcode.STORE: Queue.STORE,
    Opcode.MATMUL: Queue.MATRIX, Opcode.REQUANT: Queue.VECTOR, Opcode.SOFTMAX: Queue.VECTOR,
    Opcode.LAYERNORM: Queue.VECTOR, Opcode.ADD: Queue.VECTOR, Opcode.GELU: Queue.VECTOR,
    Opcode.GELU_TABLE: Queue.VECTOR,
}

for _op, _fields in FORMATS.items():
    assert HEADER_BITS + sum(f.bits for f in _fields) <= INSTR_BITS, _op

_FIELD_INDEX = {op: {f.name: f for f in fs} for op, fs in FORMATS.items()}
#: Per opcode: the field names, and ``(name, lo, hi)`` of every field (for fast checks).
_FIELD_NAMES = {op: set(fs) for op, fs in _FIELD_INDEX.items()}
_FIELD_BOUNDS = {op: tuple((f.name, f.lo, f.hi) for f in fs) for op, fs in FORMATS.items()}


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

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["args"][name]
        except KeyError:
            raise AttributeError(name) from None

    def check(self, index: int | None = None) -> None:
        """Raise :class:`IllegalInstructionError` unless every field is legal."""
        where = "" if index is None else f"instruction {index}: "
        if not isinstance(self.op, Opcode):
            raise IllegalInstructionError(f"{where}unknown opcode {self.op!r}")
        name = self.op.name
        for mask, what in ((self.wait, "wait"), (self.signal, "signal")):
            if not isinstance(mask, int) or not 0 <= mask < 16:
                raise IllegalInstructionError(f"{where}{name}: {what} mask {mask!r} is not 4 bits")
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
            if (type(v) is not int and (isinstance(v, bool) or not isinstance(v, int))) \
                    or not lo <= v <= hi:
                raise IllegalInstructionError(
                    f"{where}{name}.{field_name} = {v!r} is outside {lo}..{hi}")


def encode(ins: Instruction) -> bytes:
    """The 32-byte encoding of a legal instruction."""
    ins.check()
    word = int(ins.op) | (ins.wait << 8) | (ins.signal << 12)
    pos = HEADER_BITS
    for f in FORMATS[ins.op]:
        word |= (ins.args[f.name] & ((1 << f.bits) - 1)) << pos
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
