"""`vitamin simulate --board`: the board's recorded fit, clock and bandwidth."""
from __future__ import annotations

import json

from cli.main import main
from compiler.testgraphs import tiny_vit
from hw.config import load_config


def test_simulate_on_a_board(tmp_path, capsys):
    graph = tmp_path / "g.npz"
    tiny_vit(depth=1, image=8, dim=16).save(graph)
    rec = tmp_path / "ulx3s-85f" / "fitted.json"
    rec.parent.mkdir()
    rec.write_text(json.dumps({"board": "ulx3s-85f", "config": load_config("tiny").to_dict(),
                               "clock_mhz": 70.0, "clock_source": "achieved (nextpnr)",
                               "build": None}))
    assert main(["simulate", "--board", "ulx3s-85f", "--build-dir", str(tmp_path),
                 "--graph", str(graph), "--timing-only"]) == 0
    out = capsys.readouterr().out
    # 140 MB/s at 70 MHz: 2 bytes per cycle; the board's memory latency.
    assert "board ulx3s-85f: 70 MHz (achieved (nextpnr) clock" in out and "= 2 B/cycle" in out
    assert "DRAM 2 B/cycle latency 32" in out and "70 MHz" in out


def test_simulate_board_errors(tmp_path, capsys):
    assert main(["simulate", "--board", "nope", "--build-dir", str(tmp_path)]) == 2
    assert "unknown board" in capsys.readouterr().err
    assert main(["simulate", "--board", "ulx3s-85f", "--config", "tiny"]) == 2
    assert "--board chooses the config" in capsys.readouterr().err
