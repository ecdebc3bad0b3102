"""Field views of instruction words, generated from the ISA table (:mod:`compiler.isa`).

The decoder and every engine read fields through these layouts, so the RTL cannot disagree
with the encoder: ``fields_of(Opcode.MATMUL)`` is a ``data.FlexibleLayout`` over the whole
256-bit word with each field at the bit offset the table gives it (signed fields as signed
shapes), plus the header (``opcode``, ``wait``, ``signal``).
"""
from __future__ import annotations

from functools import lru_cache

from amaranth import signed, unsigned
from amaranth.lib import data

from compiler.isa import FORMATS, HEADER_BITS, INSTR_BITS, NQ, OPCODE_BITS, Opcode

__all__ = ["fields_of", "header_layout", "field_offsets"]


def header_layout() -> data.FlexibleLayout:
    """The header of every instruction word."""
    return data.FlexibleLayout(INSTR_BITS, {
        "opcode": data.Field(unsigned(OPCODE_BITS), 0),
        "wait": data.Field(unsigned(NQ), OPCODE_BITS),
        "signal": data.Field(unsigned(NQ), OPCODE_BITS + NQ),
    })


def field_offsets(op: Opcode) -> dict[str, tuple[int, int, bool]]:
    """``name -> (offset, bits, signed)`` of every field of ``op``."""
    out, pos = {}, HEADER_BITS
    for f in FORMATS[op]:
        out[f.name] = (pos, f.bits, f.signed)
        pos += f.bits
    return out


@lru_cache(maxsize=None)
def fields_of(op: Opcode) -> data.FlexibleLayout:
    """The header and the fields of ``op`` over a whole instruction word."""
    fields = {name: data.Field(signed(bits) if sign else unsigned(bits), offset)
              for name, (offset, bits, sign) in field_offsets(op).items()}
    fields.update({name: field for name, field in header_layout()})
    return data.FlexibleLayout(INSTR_BITS, fields)
