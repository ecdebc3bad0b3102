"""Q-ViT (:mod:`sw.methods.qvit`): LSQ+ gradients, exact IRM folding, the mechanics of a
short QAT run, the integer export and its range checks, the QAT network computing the
integer graph bit for bit, the shipped W4A4 checkpoint's export, and the CLI's error paths.

Float32 training differs between machines, so nothing here asserts the accuracy of a
network trained in the test: accuracy is checked on the shipped checkpoint, whose export is
deterministic (float64 calibration)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cli.main import main
from sw.executor import execute
from sw.methods.qvit import (SHIPPED_QVIT, LsqPlus, fakequant_logits, fold_irm, load_qvit, prepare_qvit,
                             quantize_qvit, save_qvit)
from sw.quantize import quantize_input


@pytest.fixture(scope="module")
def digits():
    from sw.digits import load_or_train
    torch.set_num_threads(1)
    return load_or_train(seed=0, progress=False)


@pytest.fixture(scope="module")
def short_run(digits):
    model, split = digits
    return quantize_qvit(model, split.train_x[:64], bits=4, train_x=split.train_x, train_y=split.train_y,
                         max_steps=12, seed=0, progress=False), split


def test_lsq_plus_gradients():
    """Inside the range: input gradient 1, scale gradient ``(round(v) - v) g``; clipped:
    input gradient 0, scale gradient ``qmin g`` or ``qmax g`` (LSQ with ``g = 1/sqrt(n Qp)``)."""
    q = LsqPlus(2, symmetric=True)                       # grid -2..1
    with torch.no_grad():
        q.s.fill_(0.5)
        q.ready.fill_(True)
    x = torch.tensor([0.2, -0.4, 0.7, -3.0, 2.0], dtype=torch.float64, requires_grad=True)
    q.double()
    y = q(x)
    assert torch.allclose(y, torch.tensor([0.0, -0.5, 0.5, -1.0, 0.5], dtype=torch.float64))
    y.sum().backward()
    g = 1.0 / np.sqrt(5 * 1)
    v = x.detach().numpy() / 0.5
    inside = np.array([True, True, True, False, False])     # round(1.4) = 1 = qmax: not clipped
    want_s = np.where(inside, np.round(v) - v, np.where(v < 0, -2, 1)) * g
    assert np.allclose(q.s.grad.numpy(), want_s.sum())
    assert np.allclose(x.grad.numpy(), inside.astype(float))


def test_lsq_plus_offset_is_an_integer_zero_point():
    q = LsqPlus(3)
    x = torch.linspace(-0.2, 1.0, 200)
    q(x)
    s, z = q.export()
    codes = q.integer(x)
    assert codes.min() >= -4 and codes.max() <= 3 and isinstance(z, int)
    assert np.allclose(q(x).detach().numpy(), s * (codes - z), atol=1e-6)


def test_irm_folds_exactly(digits):
    model, split = digits
    qm = prepare_qvit(model, 4, split.train_x[:32]).double()
    with torch.no_grad():                                  # a non-trivial IRM
        for blk in qm.blocks:
            for irm in (blk.attn.irm_q, blk.attn.irm_k):
                irm.gamma.mul_(torch.linspace(0.6, 1.7, irm.gamma.numel(), dtype=irm.gamma.dtype))
                irm.beta.add_(0.05)
    folded = fold_irm(qm)
    assert not any(b.attn.use_irm for b in folded.blocks)
    x = torch.as_tensor(split.test_x[:16], dtype=torch.float64)
    with torch.no_grad():
        a, b = qm(x), folded(x)
    assert torch.allclose(a, b, atol=1e-9), float((a - b).abs().max())
    for b0, b1 in zip(qm.blocks, folded.blocks):          # the integer weights do not change
        lin0, lin1 = b0.attn.qkv, b1.attn.qkv
        assert np.array_equal(lin0.w_q.integer(lin0.weight), lin1.w_q.integer(lin1.weight))


def test_export_declares_low_bits_and_runs_with_range_checks(short_run):
    res, split = short_run
    g = res.graph
    assert g.info["method"] == "qvit" and g.info["bits"] == 4
    low = {n for n, t in g.tensors.items() if t.bits == 4}
    assert "blocks.0.attn.qkv.out" in low and "blocks.0.norm1.out" in low and "blocks.0.mlp.act.out" in low
    lin = [o for o in g.ops if o.kind == "linear" and "weight_bits" in o.attrs]
    assert len(lin) == 16 and all(o.params["weight"].min() >= -8 and o.params["weight"].max() <= 7 for o in lin)
    assert g.op("patch_embed.proj").attrs.get("weight_bits") is None   # 8-bit edges
    x = quantize_input(split.test_x[:32], g)
    ref = execute(g, x, keep=True)
    for name in low:
        assert ref[name].min() >= -8 and ref[name].max() <= 7
    assert np.array_equal(execute(g, x, fast=True)["logits"], ref["logits"])
    bad = copy.deepcopy(g)
    op = bad.op("blocks.0.mlp.fc2")
    w = op.params["weight"].copy()
    w[0, 0] = 9                                            # not a 4-bit weight
    op.params["weight"] = w
    with pytest.raises(Exception, match="weight"):
        execute(bad, x)


def test_short_run_mechanics(short_run):
    res, _ = short_run
    assert res.steps == 12 and len(res.losses) == 12
    assert np.all(np.isfinite(res.losses))
    assert res.graph.info["qat_steps"] == 12 and res.graph.info["irm"] and res.graph.info["dgd"]


def _logit_codes(qm, graph, images):
    return np.rint(fakequant_logits(qm, images) / float(np.asarray(graph.tensors["logits"].scale))).astype(np.int64)


def test_qat_network_computes_the_integer_graph(short_run, tmp_path):
    """The QAT network's forward is the exported integer graph bit for bit (its float64
    twins with the integer LayerNorm and softmax), and the export is a function of the
    network: a saved and reloaded checkpoint exports the same graph."""
    from sw.fakequant import fakequant_execute
    res, split = short_run
    g = res.graph
    x = quantize_input(split.test_x[:64], g)
    ref = execute(g, x, keep=True)
    assert np.array_equal(_logit_codes(res.model, g, split.test_x[:64]), ref["logits"])
    twin = fakequant_execute(g, x, keep=True, integer_nonlinear=True)
    for name in g.tensors:
        if name in ref:
            assert np.array_equal(twin[name], ref[name]), name
    path = tmp_path / "q.npz"
    save_qvit(res.model, path, seed=0, base_seed=0)
    qm, g2, meta = load_qvit(path, calib_images=split.train_x[:64])       # the run's calibration images
    assert meta["bits"] == 4 and meta["irm"]
    for op, op2 in zip(g.ops, g2.ops):
        assert op.name == op2.name and op.attrs == op2.attrs
        for k, v in op.params.items():
            assert np.array_equal(v, op2.params[k]), (op.name, k)
    assert np.array_equal(_logit_codes(qm, g2, split.test_x[:64]), ref["logits"])


def test_shipped_checkpoint(digits):
    """The shipped W4A4 network (IRM and DGD): its export runs, the QAT network and the
    integer executor agree on every digits test label, and the integer top-1 is within a
    point of FP32 (the issue's target)."""
    from sw.digits import evaluate_float
    model, split = digits
    qm, g, meta = load_qvit(SHIPPED_QVIT)
    assert meta["bits"] == 4 and meta["irm"] and meta["dgd"] and g.info["method"] == "qvit"
    lab_int = execute(g, quantize_input(split.test_x, g), fast=True)["logits"].argmax(1)
    lab_net = fakequant_logits(qm, split.test_x).argmax(1)
    assert np.mean(lab_net == lab_int) >= 0.99
    fp32 = np.mean(evaluate_float(model, split.test_x) == split.test_y)
    assert np.mean(lab_int == split.test_y) >= fp32 - 0.01


def test_cli_error_paths(short_run, tmp_path, capsys):
    from compiler.lower import UnsupportedOpsError, check_accelerator_ops
    res, _ = short_run
    with pytest.raises(UnsupportedOpsError, match="4-bit weights"):
        check_accelerator_ops(res.graph)
    path = tmp_path / "q.npz"
    res.graph.save(path)
    for argv, msg in ((["quantize", "--method", "qvit", "--bits", "8", "-o", str(path)], "2, 3 or 4 bits"),
                      (["quantize", "--method", "fqvit", "--epochs", "2", "-o", str(path)], "apply to Q-ViT"),
                      (["quantize", "--method", "qvit", "--model", "test_vit", "-o", str(path)], "digits ViT"),
                      (["compile", str(path), "-o", str(tmp_path / "p.bin")], "4-bit weights")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err
