"""``vitamin disasm prog/program.bin``: print a program binary as assembly text."""
from __future__ import annotations

from pathlib import Path

from cli.main import UserError


def add_arguments(parser) -> None:
    parser.add_argument("program", help="program binary (program.bin) or program image folder")
    parser.add_argument("-o", "--output", default=None, help="write the text here instead of stdout")


def run(args) -> int:
    from compiler.asm import disassemble
    from compiler.isa import IllegalInstructionError, decode_program
    from sw.graph import atomic_write_bytes
    path = Path(args.program)
    if path.is_dir():
        path = path / "program.bin"
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        instrs = decode_program(path.read_bytes())
    except IllegalInstructionError as exc:
        raise UserError(f"{path}: {exc}") from None
    text = disassemble(instrs)
    if args.output:
        try:
            atomic_write_bytes(Path(args.output), text.encode())
        except OSError as exc:
            raise UserError(f"cannot write {args.output}: {exc}") from None
    else:
        print(text, end="")
    return 0
