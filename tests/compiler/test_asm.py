"""Assembler / disassembler: text round trip and clear errors."""
import pytest
from hypothesis import given, settings, strategies as st

from compiler.asm import AssemblyError, assemble, disassemble
from compiler.isa import Instruction, Opcode

from test_isa import instructions


@settings(max_examples=100, deadline=None)
@given(st.lists(instructions().filter(lambda i: i.op != Opcode.HALT), max_size=6))
def test_text_round_trip(body):
    prog = body + [Instruction(Opcode.HALT)]
    assert assemble(disassemble(prog)) == prog


def test_readable_text():
    text = "LOAD wait=- signal=MATRIX|STORE mem=PARAM dram_addr=0x40 dram_stride=16 dst_addr=0 " \
           "dst_stride=4 rows=1 cols=4 pad=0  # a comment\n\nHALT\n"
    prog = assemble(text)
    assert prog[0].signal == (1 << 1 | 1 << 4) and prog[0].mem == 1 and prog[0].dram_addr == 64
    assert "mem=PARAM" in disassemble(prog)


@pytest.mark.parametrize("text,match", [
    ("FROB\nHALT", "unknown opcode"),
    ("GELU_TABLE wait=- signal=- src_addr=x\nHALT", "bad value"),
    ("GELU_TABLE wait=NOWHERE signal=- src_addr=0\nHALT", "unknown queue"),
    ("GELU_TABLE wait=VECTOR signal=- src_addr=0\nHALT", "own queue"),
    ("GELU_TABLE wait=- signal=- src_addr=0", "missing halt"),
    ("GELU_TABLE wait=- signal=-\nHALT", "missing field"),
])
def test_errors(text, match):
    with pytest.raises(AssemblyError, match=match):
        assemble(text)
