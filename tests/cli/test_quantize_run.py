"""``vitamin quantize`` and ``vitamin run``: outputs, and one-line errors for bad input."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from cli.main import main
from sw.graph import IntGraph

MODEL = "test_vit"       # a timm-registered 6-block ViT at 160 x 160: fast to calibrate


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("q") / "m.npz"
    assert main(["quantize", "--model", MODEL, "--n-calib", "2", "--calib", "ema", "-o", str(path)]) == 0
    return path


def test_quantize_writes_a_loadable_graph(graph_file):
    g = IntGraph.load(graph_file)
    assert g.info["model"] == MODEL and g.info["observer"] == "ema" and g.info["attn_bits"] == 4


def test_run_prints_top5_of_a_random_image(graph_file, capsys):
    assert main(["run", str(graph_file)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("image 0:") and out[-1].count("class ") == 5


def test_run_accepts_float_and_uint8_images(graph_file, tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "f.npy", rng.normal(size=(2, 3, 160, 160)).astype(np.float32))
    np.save(tmp_path / "u.npy", rng.integers(0, 256, size=(3, 160, 160, 3)).astype(np.uint8))
    assert main(["run", str(graph_file), "--images", str(tmp_path / "f.npy"), "--top", "3"]) == 0
    assert main(["run", str(graph_file), "--images", str(tmp_path / "u.npy")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("image")]
    assert len(lines) == 5 and lines[0].count("class ") == 3


def _one_line_error(argv, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and match in err[0], err
    return err[0]


def test_quantize_errors(tmp_path, capsys):
    out = tmp_path / "x.npz"
    _one_line_error(["quantize", "--model", "not_a_model", "-o", str(out)], capsys, "unknown timm model")
    _one_line_error(["quantize", "--model", "resnet18", "-o", str(out)], capsys, "unsupported architecture ResNet")
    _one_line_error(["quantize", "--model", MODEL, "--checkpoint", str(tmp_path / "none.pth"), "-o", str(out)],
                    capsys, "cannot read checkpoint")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_run_errors(graph_file, tmp_path, capsys):
    _one_line_error(["run", str(tmp_path / "none.npz")], capsys, "no such file")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(graph_file.read_bytes()[:5000])
    _one_line_error(["run", str(bad)], capsys, "not a readable integer-graph file")
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 32, 32), np.float32))
    _one_line_error(["run", str(graph_file), "--images", str(tmp_path / "small.npy")], capsys, "expects")
    np.save(tmp_path / "int.npy", np.zeros((1, 3, 160, 160), np.int32))
    _one_line_error(["run", str(graph_file), "--images", str(tmp_path / "int.npy")], capsys, "float")
    (tmp_path / "junk.npy").write_bytes(b"junk")
    _one_line_error(["run", str(graph_file), "--images", str(tmp_path / "junk.npy")], capsys, "cannot read")


def test_errors_from_the_console_script_have_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cli.main", "run", str(tmp_path / "missing.npz")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_float_patch_embedding_and_8bit_softmax_round_trip(tmp_path, capsys):
    path = tmp_path / "f.npz"
    assert main(["quantize", "--model", MODEL, "--n-calib", "2", "--attn-bits", "8", "--no-ptf",
                 "--float-patch-embed", "-o", str(path)]) == 0
    g = IntGraph.load(path)
    assert g.inputs == ["patch_embed.out"] and "patch_weight" in g.host and not g.info["ptf"]
    assert {o.attrs["mode"] for o in g.ops if o.kind == "softmax"} == {"uniform"}
    assert main(["run", str(path), "--top", "2"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].count("class ") == 2
