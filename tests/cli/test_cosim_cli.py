"""``vitamin cosim``: a compiled model on the core's RTL, checked and reported; user errors."""
from __future__ import annotations

import re

import pytest

from cli.main import main
from compiler.testgraphs import tiny_vit

SMALL = ["--config", "tiny", "--set", "array_rows=2", "--set", "instr_buffer=64",
         "--set", "scratchpad_kib=64", "--set", "accumulator_kib=16"]


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cosim") / "tiny.npz"
    tiny_vit(seed=5, depth=1).save(path)
    return path


@pytest.mark.cocotb
def test_tiny_vit_on_icarus_with_waves(graph_file, tmp_path, capsys):
    """Icarus build, FST waveforms moved to the asked path, every check printed and passed."""
    waves = tmp_path / "run.fst"
    assert main(["cosim", str(graph_file), *SMALL, "--sim", "icarus", "--waves", str(waves)]) == 0
    out = capsys.readouterr().out
    assert "output logits (10,): every integer equal to the integer executor's" in out
    assert "final DRAM" in out and "equal to the cycle model's" in out
    rtl, model = map(lambda s: int(s.replace(",", "")),
                     re.search(r"cycles RTL ([\d,]+), model ([\d,]+) \(\+0\)", out).groups())
    assert rtl == model > 1000
    busy = re.findall(r"(LOAD|MATRIX|ATTN|VECTOR|STORE) ([\d,]+)/([\d,]+)", out)
    assert len(busy) == 5 and all(a == b for _, a, b in busy)
    assert out.rstrip().endswith("PASS")
    assert waves.is_file() and waves.stat().st_size > 10_000
    assert waves.read_bytes()[:1] == b"\x00"                    # an FST header block


@pytest.mark.parametrize("argv, message", [
    (["--waves", "x.gtkw"], "--waves x.gtkw: the file must end in .fst or .vcd"),
    (["--sim", "icarus", "--waves", "x.vcd"], "--sim icarus writes FST waveforms"),
    (["--images", "0"], "--images must be at least 1"),
    (["--set", "array_rows=3"], "array_rows must be a power of two"),
])
def test_user_errors_are_one_line(graph_file, argv, message, capsys):
    assert main(["cosim", str(graph_file), *SMALL, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_missing_graph_is_one_line(tmp_path, capsys):
    assert main(["cosim", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "none.npz" in err and "\n" not in err
