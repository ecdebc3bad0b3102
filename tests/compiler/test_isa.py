"""Encoder/decoder: round trips with every field at its extremes, and rejection of bad words."""
import pytest
from hypothesis import given, settings, strategies as st

from compiler.isa import (FORMATS, INSTR_BYTES, IllegalInstructionError, Instruction, Opcode,
                          QUEUE_OF, decode, decode_program, encode, encode_program)


def _masks(op):
    q = QUEUE_OF[op]
    if q is None:
        return st.just(0)
    return st.integers(0, 15).filter(lambda m: not (m >> q) & 1)


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
    other = 0 if q is None else 0xF & ~(1 << q)
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


def test_enum_beyond_last_value_rejected():
    args = {f.name: 0 for f in FORMATS[Opcode.MATMUL]}
    word = _word(Instruction(Opcode.MATMUL, 0, 0, args)) | (3 << 16)   # mode = 3
    with pytest.raises(IllegalInstructionError, match="mode = 3"):
        decode(word.to_bytes(INSTR_BYTES, "little"))


def test_wait_on_own_queue_rejected():
    args = {f.name: 0 for f in FORMATS[Opcode.LOAD]}
    word = _word(Instruction(Opcode.LOAD, 0, 0, args)) | (1 << 8)      # wait on LOAD
    with pytest.raises(IllegalInstructionError, match="own queue"):
        decode(word.to_bytes(INSTR_BYTES, "little"))


def test_halt_with_tokens_rejected():
    with pytest.raises(IllegalInstructionError, match="HALT"):
        decode((1 << 12).to_bytes(INSTR_BYTES, "little"))


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
