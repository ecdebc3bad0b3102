"""``vitamin evaluate`` and ``vitamin quantize --calib-dir`` on generated image folders; the
fast / reference executor switch of ``vitamin run`` and ``vitamin accuracy``."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from sw.graph import IntGraph

MODEL = "test_vit"       # a timm-registered 6-block ViT at 160 x 160 with an ImageNet-1k head


def _write_images(folder, n, seed):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = rng.integers(120, 260, size=2)
        path = folder / f"img{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _one_line_error(argv, capsys, match):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and match in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    for c in ("a", "b"):
        _write_images(root / c, 3, seed=len(c) + ord(c))
    path = tmp_path_factory.mktemp("q") / "m.npz"
    assert main(["quantize", "--model", MODEL, "--calib-dir", str(root), "--n-calib", "4", "-o", str(path)]) == 0
    return path


def _independent_logits(graph, paths):
    """Integer (reference executor), fake-quant and float logits, preprocessed here with
    PIL and timm's transform, without sw.imagefolder or sw.evaluate."""
    import timm
    import torch
    from timm.data import create_transform, resolve_data_config

    from sw.executor import execute
    from sw.fakequant import fakequant_execute
    from sw.quantize import quantize_input
    torch.manual_seed(graph.info["seed"])
    model = timm.create_model(MODEL, pretrained=False).eval()
    tf = create_transform(**resolve_data_config({}, model=model))
    x = np.stack([tf(Image.open(p).convert("RGB")).numpy() for p in paths])
    xq = quantize_input(x, graph)
    with torch.no_grad():
        fl = model(torch.from_numpy(x)).numpy()
    return {"integer": execute(graph, xq)["logits"], "fakequant": fakequant_execute(graph, xq)["logits"],
            "float": fl}


def test_calib_dir_is_recorded(graph_file):
    g = IntGraph.load(graph_file)
    assert g.info["calibration"]["images"] == 4 and g.info["model"] == MODEL


def test_evaluate_imagenet_style_folder(graph_file, tmp_path, capsys):
    """Images sorted into WordNet-id folders chosen from the integer model's own ranking: the
    first half labelled with their top-1 class, the rest with their third class."""
    from timm.data import ImageNetInfo
    graph = IntGraph.load(graph_file)
    paths = _write_images(tmp_path / "staging", 10, seed=5)
    logits = _independent_logits(graph, paths)
    order = np.argsort(-logits["integer"], axis=1, kind="stable")
    labels = np.where(np.arange(10) < 5, order[:, 0], order[:, 2])
    synsets = ImageNetInfo().label_names()
    data = tmp_path / "val"
    for p, lab in zip(paths, labels):
        (data / synsets[lab]).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, data / synsets[lab] / p.name)
    out = tmp_path / "res.json"
    assert main(["evaluate", str(graph_file), "--data", str(data), "--workers", "2", "--batch", "4",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "integer" in text and "top-1" in text
    rep = json.loads(out.read_text())
    assert rep["images"] == 10 and rep["executor"] == "fast" and "ImageNet" in rep["labels"]
    assert rep["results"]["integer"]["top1"] == 50.0 and rep["results"]["integer"]["top5"] == 100.0
    for m in ("fakequant", "float"):
        top = np.argsort(-logits[m], axis=1, kind="stable")
        assert rep["results"][m]["top1"] == pytest.approx(100 * np.mean(top[:, 0] == labels))
        assert rep["results"][m]["top5"] == pytest.approx(100 * np.mean((top[:, :5] == labels[:, None]).any(1)))
    # --limit: a seeded sample; the reference executor gives the same integer top-1 / top-5
    out2 = tmp_path / "ref.json"
    assert main(["evaluate", str(graph_file), "--data", str(data), "--workers", "0", "--limit", "6",
                 "--models", "integer", "--reference", "-o", str(out2)]) == 0
    ref = json.loads(out2.read_text())
    assert ref["images"] == 6 and ref["executor"] == "reference" and list(ref["results"]) == ["integer"]
    assert ref["results"]["integer"]["top5"] == 100.0


def test_class_map_file(graph_file, tmp_path, capsys):
    for c in ("cat", "dog"):
        _write_images(tmp_path / "data" / c, 2, seed=ord(c[0]))
    (tmp_path / "map.json").write_text(json.dumps({"cat": 7, "dog": 3}))
    assert main(["evaluate", str(graph_file), "--data", str(tmp_path / "data"), "--workers", "0",
                 "--class-map", str(tmp_path / "map.json"), "--models", "integer", "-o", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["images"] == 4
    (tmp_path / "map.txt").write_text("dog something\ncat other\n")
    assert main(["evaluate", str(graph_file), "--data", str(tmp_path / "data"), "--workers", "0",
                 "--class-map", str(tmp_path / "map.txt"), "--models", "integer"]) == 0
    (tmp_path / "far.json").write_text(json.dumps({"cat": 7, "dog": 1000}))
    _one_line_error(["evaluate", str(graph_file), "--data", str(tmp_path / "data"), "--workers", "0",
                     "--class-map", str(tmp_path / "far.json")], capsys, "class-count mismatch")


def test_evaluate_errors(graph_file, tmp_path, capsys):
    run = ["evaluate", str(graph_file), "--workers", "0", "--data"]
    _one_line_error(run + [str(tmp_path / "none")], capsys, "no such folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(run + [str(tmp_path / "empty")], capsys, "no class folders")
    (tmp_path / "noimg" / "n01440764").mkdir(parents=True)
    (tmp_path / "noimg" / "n01440764" / "notes.txt").write_text("x")
    _one_line_error(run + [str(tmp_path / "noimg")], capsys, "no images")
    _write_images(tmp_path / "bad" / "n01440764", 2, seed=1)
    (tmp_path / "bad" / "n01440764" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _one_line_error(run + [str(tmp_path / "bad"), "--models", "integer"], capsys, "cannot read image")
    for c in ("cat", "dog"):
        _write_images(tmp_path / "pets" / c, 1, seed=3)
    _one_line_error(run + [str(tmp_path / "pets")], capsys, "class-count mismatch")
    _one_line_error(run + [str(tmp_path / "pets"), "--limit", "0"], capsys, "--limit")
    _one_line_error(["evaluate", str(tmp_path / "none.npz"), "--data", str(tmp_path / "pets")], capsys, "no such file")


def test_quantize_calib_dir_errors(tmp_path, capsys):
    out = tmp_path / "x.npz"
    base = ["quantize", "--model", MODEL, "-o", str(out), "--calib-dir"]
    _one_line_error(base + [str(tmp_path / "none")], capsys, "no such folder")
    (tmp_path / "empty").mkdir()
    _one_line_error(base + [str(tmp_path / "empty")], capsys, "no class folders")
    (tmp_path / "bad" / "x").mkdir(parents=True)
    (tmp_path / "bad" / "x" / "a.jpg").write_bytes(b"garbage")
    _one_line_error(base + [str(tmp_path / "bad")], capsys, "cannot read image")
    assert not out.exists()


def test_run_fast_and_reference_print_the_same_classes(graph_file, capsys):
    assert main(["run", str(graph_file), "--seed", "3"]) == 0
    fast = capsys.readouterr().out.strip().splitlines()
    assert main(["run", str(graph_file), "--seed", "3", "--reference"]) == 0
    ref = capsys.readouterr().out.strip().splitlines()
    assert "(fast executor)" in fast[0] and "(reference executor)" in ref[0]
    assert fast[1:] == ref[1:] and fast[-1].startswith("image 0:")


def test_accuracy_reference_flag(monkeypatch, capsys):
    import sw.accuracy
    seen = []

    def fake_table(**kw):
        seen.append(kw["fast"])
        return sw.accuracy.AccuracyReport(97.0, 450, 128, (0,))
    monkeypatch.setattr(sw.accuracy, "accuracy_table", fake_table)
    assert main(["accuracy", "--calib", "minmax"]) == 0
    assert main(["accuracy", "--calib", "minmax", "--reference"]) == 0
    assert seen == [True, False]


def test_accuracy_method_reference_flag(monkeypatch, capsys):
    import sw.methods.accuracy as ma
    seen = []

    def fake_table(methods, **kw):
        seen.append((methods, kw["fast"]))
        return ma.MethodReport(97.0, 450, 128, (0,))
    monkeypatch.setattr(ma, "method_table", fake_table)
    assert main(["accuracy", "--method", "ptq4vit"]) == 0
    assert main(["accuracy", "--method", "ivit", "--reference"]) == 0
    assert seen == [(("ptq4vit",), True), (("ivit",), False)]
