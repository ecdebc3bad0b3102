"""Encoder/decoder: round trips with every field at its extremes, and rejection of bad words."""
import pytest
from hypothesis import given, settings, strategies as st

from compiler.isa import (FORMATS, HEADER_BITS, INSTR_BYTES, NQ, OPCODE_BITS,
                          IllegalInstructionError, Instruction, Opcode, Queue, QUEUE_OF, decode,
                          decode_program, encode, encode_program)

ALL = (1 << NQ) - 1


def _masks(op):
    q = QUEUE_OF[op]
    if q is None:
        return st.just(0)
    return st.integers(0, ALL).filter(lambda m: not (m >> q) & 1)


@st.composite
def instructions(draw):
    op = draw(st.sampled_from(list(Opcode)))
    args = {}
    for f in FORMATS[op]:
        args[f.name] = draw(st.one_of(st.sampled_from([f.lo, f.hi]), st.integers(f.lo, f.hi)))
    return Instruction(op, draw(_masks(op)), draw(_masks(op)), args)


@settings(max_examples=400, deadline=None)
@given(instructions())
def test_round_trip(ins):
    raw = encode(ins)
    assert len(raw) == INSTR_BYTES
    back = decode(raw)
    assert back == ins


@pytest.mark.parametrize("op", list(Opcode))
@pytest.mark.parametrize("extreme", ["lo", "hi"])
def test_every_field_at_its_extremes(op, extreme):
    q = QUEUE_OF[op]
    other = 0 if q is None else ALL & ~(1 << q)
    args = {f.name: getattr(f, extreme) for f in FORMATS[op]}
    ins = Instruction(op, other if extreme == "hi" else 0, other if extreme == "hi" else 0, args)
    assert decode(encode(ins)) == ins


def _word(ins):
    return int.from_bytes(encode(ins), "little")


def _halt():
    return Instruction(Opcode.HALT)


def test_unknown_opcode_rejected():
    raw = (0xEE).to_bytes(INSTR_BYTES, "little")
    with pytest.raises(IllegalInstructionError, match="unknown opcode 238"):
        decode(raw)


def test_reserved_bits_rejected():
    word = _word(_halt()) | (1 << 200)
    with pytest.raises(IllegalInstructionError, match="reserved bits"):
        decode(word.to_bytes(INSTR_BYTES, "little"))


def test_every_enum_field_value_is_legal():
    """Enum fields are exactly as wide as their enums: no encoding names a missing value."""
    for fields in FORMATS.values():
        for f in fields:
            if f.enum is not None:
                assert len(f.enum) == 1 << f.bits and f.hi == (1 << f.bits) - 1, f


def test_header_layout():
    assert (OPCODE_BITS, NQ, HEADER_BITS) == (8, 5, 18)
    ins = Instruction(Opcode.ATTNV, 1 << Queue.VECTOR, 1 << Queue.STORE,
                      {f.name: 0 for f in FORMATS[Opcode.ATTNV]})
    word = _word(ins)
    assert word & 0xFF == Opcode.ATTNV
    assert (word >> 8) & 0x1F == 1 << Queue.VECTOR and (word >> 13) & 0x1F == 1 << Queue.STORE


def test_wait_on_own_queue_rejected():
    args = {f.name: 0 for f in FORMATS[Opcode.LOAD]}
    word = _word(Instruction(Opcode.LOAD, 0, 0, args)) | (1 << OPCODE_BITS)   # wait on LOAD
    with pytest.raises(IllegalInstructionError, match="own queue"):
        decode(word.to_bytes(INSTR_BYTES, "little"))


def test_halt_with_tokens_rejected():
    with pytest.raises(IllegalInstructionError, match="HALT"):
        decode((1 << (OPCODE_BITS + NQ)).to_bytes(INSTR_BYTES, "little"))


def test_encode_rejects_out_of_range_field():
    args = {f.name: 0 for f in FORMATS[Opcode.STORE]}
    args["rows"] = 1 << 16
    with pytest.raises(IllegalInstructionError, match="rows"):
        encode(Instruction(Opcode.STORE, 0, 0, args))
    args["rows"] = 1
    args["bogus"] = 1
    with pytest.raises(IllegalInstructionError, match="unknown field"):
        encode(Instruction(Opcode.STORE, 0, 0, args))


def test_wrong_length_and_program_structure():
    with pytest.raises(IllegalInstructionError, match="32 bytes"):
        decode(b"\0" * 31)
    with pytest.raises(IllegalInstructionError, match="multiple of 32"):
        decode_program(b"\0" * 40)
    gelu = Instruction(Opcode.GELU_TABLE, 0, 0, {"src_addr": 0})
    with pytest.raises(IllegalInstructionError, match="missing halt"):
        decode_program(encode_program([gelu]))
    with pytest.raises(IllegalInstructionError, match="HALT before the end"):
        decode_program(encode_program([_halt(), gelu, _halt()]))
    assert decode_program(encode_program([gelu, _halt()])) == [gelu, _halt()]
