"""``vitamin quantize --method``, ``vitamin run`` and ``vitamin compile`` on I-ViT and PTQ4ViT
graphs, ``vitamin accuracy --method``, and DeiT-Tiny through every method."""
from __future__ import annotations

import numpy as np
import pytest

from cli.main import main
from cli.quantize import describe
from sw.graph import IntGraph

MODEL = "test_vit"       # a timm-registered 6-block ViT at 160 x 160: fast to calibrate
TINY_SEARCH = ["--search-candidates", "4", "--search-rounds", "1", "--search-rows", "64",
               "--search-attn-rows", "101"]


@pytest.fixture(scope="module", params=["ivit", "ptq4vit"])
def graph_file(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / f"{request.param}.npz"
    extra = TINY_SEARCH if request.param == "ptq4vit" else []
    assert main(["quantize", "--model", MODEL, "--method", request.param, "--n-calib", "2",
                 "-o", str(path)] + extra) == 0
    return request.param, path


def _one_line_error(argv, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and match in err[0], err
    return err[0]


def test_quantize_run_and_compile_refusal(graph_file, capsys, tmp_path):
    method, path = graph_file
    g = IntGraph.load(path)
    assert g.info["method"] == method and g.info["model"] == MODEL
    assert describe(g).startswith("I-ViT W8/A8" if method == "ivit" else "PTQ4ViT W8/A8")
    assert main(["run", str(path), "--top", "3"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].count("class ") == 3
    kinds = ("shiftmax", "shiftgelu", "ilayernorm") if method == "ivit" else ("twin_softmax", "linear_twin")
    err = _one_line_error(["compile", str(path), "-o", str(tmp_path / "prog")], capsys, "does not run")
    assert all(k in err for k in kinds) and method in err
    assert not (tmp_path / "prog").exists()


def test_run_fast_and_reference_print_the_same_classes(graph_file, capsys):
    """vitamin run's default (fast) executor and --reference on I-ViT and PTQ4ViT graphs."""
    _, path = graph_file
    assert main(["run", str(path), "--seed", "4"]) == 0
    fast = capsys.readouterr().out.strip().splitlines()
    assert main(["run", str(path), "--seed", "4", "--reference"]) == 0
    ref = capsys.readouterr().out.strip().splitlines()
    assert "(fast executor)" in fast[0] and "(reference executor)" in ref[0]
    assert fast[1:] == ref[1:] and fast[-1].startswith("image 0:")


def test_evaluate_fast_and_reference_agree(graph_file, tmp_path, capsys):
    """vitamin evaluate on I-ViT and PTQ4ViT graphs: the fast and the reference executor give
    the same integer top-1 / top-5; the fake-quant model runs too."""
    import json
    from PIL import Image
    from timm.data import ImageNetInfo
    _, path = graph_file
    rng = np.random.default_rng(0)
    synsets = ImageNetInfo().label_names()
    for c in range(2):
        (tmp_path / "val" / synsets[c]).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, size=(170, 180, 3), dtype=np.uint8)).save(
                tmp_path / "val" / synsets[c] / f"{i}.png")
    res = {}
    for flag in ([], ["--reference"]):
        out = tmp_path / f"r{len(flag)}.json"
        models = ["integer", "fakequant"] if not flag else ["integer"]
        assert main(["evaluate", str(path), "--data", str(tmp_path / "val"), "--workers", "0",
                     "--models", *models, "-o", str(out)] + flag) == 0
        res[len(flag)] = json.loads(out.read_text())
    assert res[0]["executor"] == "fast" and res[1]["executor"] == "reference"
    for key in ("top1", "top5"):
        assert res[0]["results"]["integer"][key] == res[1]["results"]["integer"][key]
    assert res[0]["images"] == 4 and "fakequant" in res[0]["results"]


def test_quantize_option_errors(tmp_path, capsys):
    out = tmp_path / "x.npz"
    _one_line_error(["quantize", "--model", MODEL, "--method", "ivit", "--attn-bits", "8", "-o", str(out)],
                    capsys, "--attn-bits")
    _one_line_error(["quantize", "--model", MODEL, "--method", "ivit", "--no-ptf", "-o", str(out)], capsys, "--no-ptf")
    _one_line_error(["quantize", "--model", MODEL, "--bits", "6", "-o", str(out)], capsys, "PTQ4ViT")
    _one_line_error(["quantize", "--model", MODEL, "--method", "ptq4vit", "--search-rows", "0", "-o", str(out)],
                    capsys, "--search-rows")
    _one_line_error(["quantize", "--model", MODEL, "--method", "ivit", "--float-patch-embed", "-o", str(out)],
                    capsys, "patch embedding")
    assert not out.exists()


def test_fqvit_graphs_record_their_method(tmp_path):
    path = tmp_path / "f.npz"
    assert main(["quantize", "--model", MODEL, "--n-calib", "2", "-o", str(path)]) == 0
    assert IntGraph.load(path).info["method"] == "fqvit"


def test_accuracy_method_table(tmp_path, capsys):
    md = tmp_path / "m.md"
    assert main(["accuracy", "--method", "ivit", "--qat-epochs", "0", "--markdown", str(md),
                 "--save-graphs", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("I-ViT")]
    assert len(rows) == 1
    cells = rows[0].split()
    fp32, fq, integer = (float(c) for c in cells[-5:-2])
    assert 80 < fp32 <= 100 and abs(integer - fp32) <= 1.0 and fq == integer
    assert md.read_text().count("\n| I-ViT |") == 1
    saved = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert saved == ["digits_seed0_ivit_8-8.npz"]
    assert main(["run", str(tmp_path / "g" / saved[0])]) == 0
    _one_line_error(["accuracy", "--method", "ivit", "--calib", "ema"], capsys, "--calib")
    _one_line_error(["accuracy", "--qat-epochs", "2"], capsys, "--method")


@pytest.mark.parametrize("method", ["fqvit", "ivit", "ptq4vit"])
def test_deit_tiny_through_every_method(method):
    """DeiT-Tiny (random weights, two calibration images) quantizes with every method and
    the integer executor runs it; the compiler takes FQ-ViT's graph only."""
    import torch
    from compiler.lower import UnsupportedOpsError, check_accelerator_ops
    from sw.executor import execute
    from sw.quantize import create_model, quantize, quantize_input, random_images
    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224")
    images = random_images(model, 2, seed=0)
    opts = {"eq_n": 2, "rounds": 1, "max_rows": 32, "max_attn_rows": 197} if method == "ptq4vit" else {}
    g = quantize(model, images, method=method, progress=False, **opts)
    assert g.info["method"] == method and len([o for o in g.ops if "norm1" in o.name]) == 12
    logits = execute(g, quantize_input(random_images(model, 1, seed=5), g))["logits"]
    assert logits.shape == (1, 1000) and np.abs(logits).max() > 0
    if method == "fqvit":
        check_accelerator_ops(g)
    else:
        with pytest.raises(UnsupportedOpsError):
            check_accelerator_ops(g)
