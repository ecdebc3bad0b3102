"""``vitamin quantize`` / ``run`` / ``accuracy`` on Swin: swin_tiny with random weights, the
tiny digits Swin, and one-line refusals."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from cli.main import main
from sw.graph import IntGraph

SWIN_T = "swin_tiny_patch4_window7_224"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The float models are tiny: one torch thread is faster than two on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def swin_tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("swin") / "swin_t.npz"
    assert main(["quantize", "--model", SWIN_T, "--n-calib", "2", "-o", str(path)]) == 0
    return path


def test_quantize_swin_tiny_writes_the_graph(swin_tiny_file, capsys):
    g = IntGraph.load(swin_tiny_file)
    assert g.info["model"] == SWIN_T and g.info["family"] == "swin" and g.info["attn_bits"] == 4
    kinds = Counter(o.kind for o in g.ops)
    # 12 blocks (2 + 2 + 6 + 2), 3 patch mergings, the stem and the head
    assert kinds["window_partition"] == kinds["window_reverse"] == kinds["qk_scores"] == 12
    assert kinds["patch_merge"] == 3 and kinds["token_mean"] == 1 and kinds["patchify"] == 1
    assert kinds["layernorm"] == 1 + 2 * 12 + 3 + 1
    assert kinds["linear"] == 1 + 4 * 12 + 3 + 1
    assert sum("mask" in o.params for o in g.ops) == 5       # odd blocks of stages 1-3; stage 4 is one window
    assert g.op("layers.3.blocks.1.window_partition").attrs["shift"] == [0, 0]


def test_run_swin_tiny_batch(swin_tiny_file, tmp_path, capsys):
    import numpy as np
    np.save(tmp_path / "imgs.npy", np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32))
    assert main(["run", str(swin_tiny_file), "--images", str(tmp_path / "imgs.npy")]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("image")]
    assert len(lines) == 2


def _one_line_error(argv, capsys, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0] and match in err[0], err


def test_swin_refusals(tmp_path, capsys):
    out = tmp_path / "x.npz"
    _one_line_error(["quantize", "--model", "swinv2_tiny_window8_256", "-o", str(out)], capsys,
                    "unsupported architecture SwinTransformerV2")
    _one_line_error(["quantize", "--model", "swin_nonexistent_patch4", "-o", str(out)], capsys, "unknown timm model")
    _one_line_error(["quantize", "--model", SWIN_T, "--method", "ivit", "-o", str(out)], capsys, "FQ-ViT only")
    _one_line_error(["accuracy", "--model", "swin", "--method", "ivit"], capsys, "FQ-ViT only")
    assert not out.exists()


def test_accuracy_table_of_the_digits_swin(capsys):
    assert main(["accuracy", "--model", "swin", "--calib", "minmax"]) == 0
    out = capsys.readouterr().out
    rows = [ln for ln in out.splitlines() if ln.startswith("minmax")]
    assert len(rows) == 4 and "tiny Swin, digits test split" in out
    for row in rows:
        fp32, fq, integer = (float(c) for c in row.split()[-5:-2])
        assert 85.0 < fp32 <= 100.0 and abs(integer - fp32) < 5.0 and abs(fq - fp32) < 5.0
