"""`vitamin compile` and `vitamin disasm`."""
from cli.main import main
from compiler.asm import assemble
from compiler.program import ProgramImage
from compiler.testgraphs import tiny_vit


def test_compile_then_disasm(tmp_path, capsys):
    graph = tmp_path / "g.npz"
    tiny_vit().save(graph)
    assert main(["compile", str(graph), "--config", "tiny", "--set", "array_rows=2",
                 "-o", str(tmp_path / "prog")]) == 0
    image = ProgramImage.load(tmp_path / "prog")
    assert image.config.array_rows == image.config.array_cols == image.config.vector_lanes == 2
    assert "instructions" in capsys.readouterr().out
    assert main(["disasm", str(tmp_path / "prog" / "program.bin")]) == 0
    text = capsys.readouterr().out
    assert assemble(text) == image.instructions


def test_errors_are_one_line(tmp_path, capsys):
    graph = tmp_path / "g.npz"
    tiny_vit(image=16, dim=64).save(graph)
    assert main(["compile", str(graph), "--set", "scratchpad_kib=1", "-o", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "short by" in err and "Traceback" not in err
    (tmp_path / "bad.bin").write_bytes(b"\xee" + b"\0" * 31)
    assert main(["disasm", str(tmp_path / "bad.bin")]) == 2
    assert "unknown opcode" in capsys.readouterr().err


def test_unwritable_output_is_one_line(tmp_path, capsys):
    graph = tmp_path / "g.npz"
    tiny_vit().save(graph)
    (tmp_path / "afile").write_text("")
    assert main(["compile", str(graph), "--config", "tiny", "-o", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitamin compile: error: cannot write") and err.count("\n") == 1
