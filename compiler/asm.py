"""Text assembly of the instruction set: :func:`disassemble` and :func:`assemble`.

One instruction per line: the opcode name, then ``wait=`` and ``signal=`` (queue names
joined by ``|``, or ``-`` for none), then every field as ``name=value``.  Enum-valued fields
(``mem``, ``mode``, ``out_type``) print by name and accept a name or a number.  ``#`` starts a
comment; blank lines are ignored.  ``assemble(disassemble(p)) == p`` for every legal program.
"""
from __future__ import annotations

from .isa import FORMATS, Instruction, IllegalInstructionError, Opcode, Queue, check_halt

__all__ = ["disassemble", "format_instruction", "assemble", "AssemblyError"]


class AssemblyError(ValueError):
    """A line of assembly text is malformed."""


#: Enum-valued fields (from the ISA table): (opcode, field) -> enum.
_ENUMS = {(op, f.name): f.enum for op, fields in FORMATS.items() for f in fields if f.enum}


def _mask_text(mask: int) -> str:
    names = [q.name for q in Queue if (mask >> q) & 1]
    return "|".join(names) if names else "-"


def format_instruction(ins: Instruction) -> str:
    """One line of assembly for ``ins``."""
    parts = [ins.op.name]
    if ins.queue is not None:
        parts += [f"wait={_mask_text(ins.wait)}", f"signal={_mask_text(ins.signal)}"]
    for f in FORMATS[ins.op]:
        v = ins.args[f.name]
        enum = _ENUMS.get((ins.op, f.name))
        parts.append(f"{f.name}={enum(v).name if enum else v}")
    return " ".join(parts)


def disassemble(instrs: list[Instruction], with_index: bool = True) -> str:
    """The whole program as text, one line per instruction (index as a comment)."""
    width = len(str(max(len(instrs) - 1, 0)))
    lines = []
    for i, ins in enumerate(instrs):
        text = format_instruction(ins)
        lines.append(f"{text}  # {i:>{width}}" if with_index else text)
    return "\n".join(lines) + "\n"


def _parse_mask(text: str, lineno: int) -> int:
    if text == "-":
        return 0
    mask = 0
    for name in text.split("|"):
        try:
            mask |= 1 << Queue[name.upper()]
        except KeyError:
            raise AssemblyError(f"line {lineno}: unknown queue {name!r}") from None
    return mask


def assemble(text: str) -> list[Instruction]:
    """Parse assembly text into checked instructions (the program must end with HALT)."""
    instrs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, *items = line.split()
        try:
            op = Opcode[head.upper()]
        except KeyError:
            raise AssemblyError(f"line {lineno}: unknown opcode {head!r}") from None
        ins = Instruction(op)
        for item in items:
            key, sep, val = item.partition("=")
            if not sep:
                raise AssemblyError(f"line {lineno}: expected name=value, got {item!r}")
            if key in ("wait", "signal"):
                setattr(ins, key, _parse_mask(val, lineno))
                continue
            enum = _ENUMS.get((op, key))
            try:
                ins.args[key] = int(enum[val.upper()]) if enum and not val.lstrip("-").isdigit() else int(val, 0)
            except (KeyError, ValueError):
                raise AssemblyError(f"line {lineno}: bad value {val!r} for {key}") from None
        try:
            ins.check(len(instrs))
        except IllegalInstructionError as exc:
            raise AssemblyError(f"line {lineno}: {exc}") from None
        instrs.append(ins)
    try:
        check_halt(instrs)
    except IllegalInstructionError as exc:
        raise AssemblyError(str(exc)) from None
    return instrs
