"""`vitamin simulate` on a small graph: report, bit-exact check, trace, plot, JSON."""
import json

from cli.main import main
from compiler.testgraphs import tiny_vit


def test_simulate_graph(tmp_path, capsys):
    graph = tmp_path / "g.npz"
    tiny_vit(depth=2, image=12, dim=16).save(graph)
    argv = ["simulate", "--graph", str(graph), "--config", "tiny", "--check",
            "--trace", str(tmp_path / "t.json"), "--plot", str(tmp_path / "b.png"),
            "--json", str(tmp_path / "r.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in ("whole model:", "one transformer block (blocks.1)", "MAC utilization",
                 "tile-mapping bound", "bit-exact with sw.executor", "per instruction class",
                 "per layer", "stall cycles per queue"):
        assert text in out, text
    rep = json.loads((tmp_path / "r.json").read_text())
    assert sum(rep["array_breakdown"].values()) == rep["cycles"] or \
        abs(sum(rep["array_breakdown"].values()) - rep["cycles"]) < 0.1
    assert (tmp_path / "b.png").stat().st_size > 1000
    assert json.loads((tmp_path / "t.json").read_text())["traceEvents"]


def test_timing_only_program(tmp_path, capsys):
    graph = tmp_path / "g.npz"
    tiny_vit().save(graph)
    assert main(["compile", str(graph), "--config", "tiny", "-o", str(tmp_path / "p")]) == 0
    assert main(["simulate", "--program", str(tmp_path / "p"), "--timing-only"]) == 0
    assert "timing only" in capsys.readouterr().out
    assert main(["simulate", "--program", str(tmp_path / "p"), "--set", "array_rows=2"]) == 2
