"""Quantized timm Swin Transformers: the graph's op sequence and attributes against timm's
blocks, reference executor == fast executor == fake-quant twins on every tensor, float vs
integer SQNR, and the refusals."""
from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from sw import intops
from sw.executor import execute
from sw.fakequant import EXACT_KINDS, fakequant_execute, fakequant_op
from sw.fastexec import FastExecutor
from sw.graph import IntGraph
from sw.quantize import (UnsupportedModelError, check_supported, create_model, layer_sqnr, quantize,
                         quantize_input, random_images)

pytest.importorskip("timm.models.swin_transformer")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The float models are tiny: one torch thread is faster than two on a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

#: Small random Swin models: (timm kwargs, quantize kwargs).
SHAPES = {
    # 16 x 16 grid, window 4 (16 windows, shifted blocks) then 8 x 8 (4 windows, shifted)
    "sq32-w4": (dict(img_size=32, patch_size=2, window_size=4, embed_dim=32, depths=(2, 2), num_heads=(2, 4)),
                dict(attn_bits=4)),
    # rectangular grid and window, three stages, uniform softmax, no qkv bias
    "rect-w3x4": (dict(img_size=(24, 64), patch_size=2, window_size=(3, 4), embed_dim=16, depths=(2, 2, 2),
                       num_heads=(1, 2, 2), qkv_bias=False), dict(attn_bits=8, observer="ema")),
    # window >= grid (timm: window = grid, no shift), patch embedding kept on the host
    "win-ge-grid": (dict(img_size=16, patch_size=2, window_size=8, embed_dim=24, depths=(2, 1), num_heads=(2, 3)),
                    dict(attn_bits=4, quantize_patch_embed=False)),
}


def _model(kwargs, seed=0):
    torch.manual_seed(seed)
    return create_model("swin_tiny_patch4_window7_224", num_classes=10, drop_path_rate=0.0, **kwargs)


@pytest.fixture(scope="module", params=list(SHAPES), ids=list(SHAPES))
def swin(request):
    mk, qk = SHAPES[request.param]
    model = _model(mk)
    images = random_images(model, 8, seed=1)
    g = quantize(model, images, progress=False, **qk)
    return request.param, model, g, random_images(model, 3, seed=2)


# ----------------------------------------------------------------------------------------
# The graph
# ----------------------------------------------------------------------------------------

BLOCK = ("layernorm window_partition linear qk_scores softmax attn_value linear window_reverse add "
         "layernorm linear gelu linear add")


def _expected_kinds(model, host_patch_embed: bool) -> list[str]:
    kinds = [] if host_patch_embed else ["patchify", "linear"]
    kinds += ["layernorm"]
    for s, stage in enumerate(model.layers):
        if s > 0:
            kinds += ["patch_merge", "layernorm", "linear"]
        kinds += BLOCK.split() * len(stage.blocks)
    return kinds + ["layernorm", "token_mean", "linear"]


def test_op_sequence_is_the_contract(swin):
    name, model, g, _ = swin
    assert [o.kind for o in g.ops] == _expected_kinds(model, not g.info["quantize_patch_embed"])
    assert g.info["family"] == "swin" and g.info["method"] == "fqvit"
    assert g.op("pool").attrs["start"] == 0
    assert g.tensors["logits"].bits == 16
    red = g.op("layers.1.downsample.reduction")                 # timm: no bias, only the folded zero point
    zp = g.tensors[red.inputs[0]].zero_point
    assert np.array_equal(red.params["bias"], -zp * red.params["weight"].astype(np.int64).sum(1))


def test_window_attrs_bias_and_mask_follow_timm(swin):
    _, model, g, _ = swin
    shifted = 0
    for s, stage in enumerate(model.layers):
        for j, blk in enumerate(stage.blocks):
            p = f"layers.{s}.blocks.{j}"
            geo = {"grid": list(blk.input_resolution), "window": list(blk.window_size),
                   "shift": list(blk.shift_size)}
            assert g.op(f"{p}.window_partition").attrs == geo
            assert g.op(f"{p}.window_reverse").attrs == geo
            qk, av = g.op(f"{p}.attn.qk"), g.op(f"{p}.attn.av")
            n = blk.window_size[0] * blk.window_size[1]
            nw = blk.input_resolution[0] * blk.input_resolution[1] // n
            assert qk.attrs["windows"] == av.attrs["windows"] == nw
            assert "windows" not in g.op(f"{p}.attn.softmax").attrs
            s_scores = g.tensors[f"{p}.attn.scores"].scale
            bias = blk.attn._get_rel_pos_bias().detach().double().numpy()[0]
            assert qk.params["bias"].dtype == np.int16
            assert np.array_equal(qk.params["bias"], np.rint(bias / s_scores))
            if any(blk.shift_size):
                shifted += 1
                mask = blk.attn_mask.double().numpy()
                want = np.clip(np.rint(mask / s_scores), -32768, 0)
                assert np.array_equal(qk.params["mask"], want) and (want < 0).any()
            else:
                assert "mask" not in qk.params
    if max(model.layers[0].blocks[0].input_resolution) > max(model.layers[0].blocks[0].window_size):
        assert shifted > 0
    else:
        assert shifted == 0                       # window >= grid: timm does not shift


def test_graph_round_trips(swin, tmp_path):
    _, _, g, images = swin
    g.save(tmp_path / "s.npz")
    h = IntGraph.load(tmp_path / "s.npz")
    x = quantize_input(images, g)
    assert np.array_equal(execute(g, x)["logits"], execute(h, x)["logits"])


# ----------------------------------------------------------------------------------------
# Executors
# ----------------------------------------------------------------------------------------

def test_fast_executor_equals_reference_every_tensor(swin):
    _, _, g, images = swin
    x = quantize_input(images, g)
    ref = execute(g, x, keep=True)
    fe = FastExecutor(g, threads=2)
    got = fe.run(x, keep=True)
    assert set(got) == set(ref)
    for k in ref:
        assert np.array_equal(got[k], ref[k]), k
    assert not fe.declined
    attention = {o.name for o in g.ops if o.kind in ("qk_scores", "softmax", "attn_value")}
    assert attention <= set(fe.fused_ops)
    assert np.array_equal(fe.run(x)["logits"], ref["logits"])           # outputs only, fused GELU


def test_fakequant_twins(swin):
    """Fed the executor's own inputs, every op of an exact kind reproduces every integer
    (windows, bias, mask, data movement); LayerNorm and softmax stay close."""
    _, _, g, images = swin
    env = execute(g, quantize_input(images, g), keep=True)
    seen = set()
    for op in g.ops:
        ins = [torch.as_tensor(env[t], dtype=torch.float64) for t in op.inputs]
        got = fakequant_op(g, op, *ins).numpy().astype(np.int64)
        want = env[op.outputs[0]]
        assert got.shape == want.shape, op.name
        if op.kind in EXACT_KINDS:
            assert np.array_equal(got, want), op.name
            seen.add(op.kind)
        elif op.kind == "layernorm":
            assert np.abs(got - want).max() <= 1 and np.mean(got == want) >= 0.99, op.name
        else:
            assert op.kind == "softmax"
            assert np.mean(got == want) >= 0.9, op.name
    assert {"window_partition", "window_reverse", "patch_merge", "qk_scores", "attn_value", "token_mean"} <= seen
    fq = fakequant_execute(g, quantize_input(images, g))["logits"]
    assert fq.shape == env["logits"].shape


def test_sqnr_is_sane(swin):
    _, model, g, images = swin
    res = dict(layer_sqnr(model, g, images))
    assert "logits" in res and any(k.endswith("attn.scores") for k in res)
    assert res["logits"] > 20
    for k, v in res.items():
        assert v > (8 if k.endswith("attn.scores") else 18), (k, v)


def test_overflow_is_an_error(swin):
    _, _, g, images = swin
    g = copy.deepcopy(g)
    x = quantize_input(images, g)
    head = g.op("head")
    head.params["bias"] = np.full_like(head.params["bias"], np.iinfo(np.int32).max)
    with pytest.raises(intops.IntegerOverflowError):
        execute(g, x)
    with pytest.raises(intops.IntegerOverflowError):
        execute(g, x, fast=True)


# ----------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------

def test_unsupported_variants_are_refused_in_one_line():
    with pytest.raises(UnsupportedModelError, match=r"not a multiple of the 3x4 window \(timm pads\)") as e:
        check_supported(_model(dict(img_size=(24, 48), patch_size=2, window_size=(3, 4), embed_dim=16,
                                    depths=(2, 2, 2), num_heads=(1, 2, 2))))
    assert "\n" not in str(e.value)
    with pytest.raises(UnsupportedModelError, match="odd"):
        check_supported(_model(dict(img_size=28, patch_size=2, window_size=7, embed_dim=16, depths=(1, 1, 1),
                                    num_heads=(1, 2, 2))))
    with pytest.raises(UnsupportedModelError, match="dynamic"):
        check_supported(_model(dict(img_size=32, patch_size=2, window_size=4, embed_dim=16, depths=(2,),
                                    num_heads=(1,), strict_img_size=False)))
    with pytest.raises(UnsupportedModelError, match="unsupported architecture SwinTransformerV2"):
        torch.manual_seed(0)
        check_supported(create_model("swinv2_tiny_window8_256", img_size=64, window_size=4, embed_dim=16,
                                     depths=(1, 1), num_heads=(1, 1)))
    with pytest.raises(UnsupportedModelError, match="unknown timm model"):
        create_model("swin_nonexistent_patch4")


@pytest.mark.parametrize("method", ["ivit", "ptq4vit"])
def test_other_methods_refuse_swin(method):
    model = _model(SHAPES["sq32-w4"][0])
    with pytest.raises(UnsupportedModelError, match=f"FQ-ViT only; {method}"):
        quantize(model, random_images(model, 2), method=method, progress=False)


def test_mask_excluded_from_score_calibration():
    """The shifted blocks' scores observer sees no -100: the softmax input keeps P = 6."""
    model = _model(SHAPES["sq32-w4"][0])
    g = quantize(model, random_images(model, 4, seed=1), progress=False)
    for o in g.ops:
        if o.kind == "softmax":
            assert o.attrs["frac_bits"] == 6, o.name
    assert re.search("mask", " ".join(k for o in g.ops for k in o.params))
