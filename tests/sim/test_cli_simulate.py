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


def test_simulate_swin_graph(tmp_path, capsys):
    """A tiny Swin: Swin's block names in the report, bit-exact, and the config widened for
    the patch merging's 4C-channel LayerNorm when the units are narrower (unless pinned)."""
    from compiler.testgraphs import tiny_swin
    graph = tmp_path / "s.npz"
    tiny_swin(image=16, patch=2, dim=8, depths=(2, 2), heads=(2, 4), window=4).save(graph)
    argv = ["simulate", "--graph", str(graph), "--config", "tiny", "--check",
            "--set", "max_channels=16"]
    assert main(argv) == 2                       # pinned: the 32-channel LayerNorm cannot run
    assert "max_channels" in capsys.readouterr().err
    argv = ["simulate", "--graph", str(graph), "--config", "tiny", "--check"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for text in ("one transformer block (layers.1.blocks.0)", "bit-exact with sw.executor",
                 "layers.1.downsample"):
        assert text in out, text


def test_widen_rows():
    from cli.compile import widen_rows
    from compiler.testgraphs import tiny_swin
    from hw.config import AcceleratorConfig
    g = tiny_swin(image=16, patch=2, dim=8, depths=(1, 1), heads=(2, 2), window=4)
    cfg = AcceleratorConfig(array_rows=4, array_cols=4, vector_lanes=4, max_channels=16)
    wide, note = widen_rows(g, cfg)
    assert wide.max_channels == 32 and "layers.1.downsample.norm, 32 channels" in note
    assert widen_rows(g, cfg, ["max_channels=16"]) == (cfg, None)
    assert widen_rows(g, wide) == (wide, None)
