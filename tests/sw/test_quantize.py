"""FQ-ViT post-training quantization of stock timm models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from sw import intops
from sw.executor import execute
from sw.graph import IntGraph
from sw.quantize import (UnsupportedModelError, calibrate, check_supported, create_model, layer_sqnr,
                         quantize, quantize_input, random_images)

SMALL = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10)
VARIANTS = {
    "vit": (VisionTransformer, {}),
    "distilled": (VisionTransformerDistilled, {}),
    "avg_fc_norm": (VisionTransformer, {"global_pool": "avg"}),
    "avg_no_cls": (VisionTransformer, {"class_token": False, "global_pool": "avg", "fc_norm": False}),
    "no_embed_class_layerscale_reg": (VisionTransformer, {"no_embed_class": True, "init_values": 0.1, "reg_tokens": 2}),
    "rect_no_qkv_bias": (VisionTransformer, {"img_size": (32, 24), "qkv_bias": False, "depth": 1}),
    "clip_pre_norm": (VisionTransformer, {"pre_norm": True}),
}


def _model(name, seed=0):
    cls, kw = VARIANTS[name]
    torch.manual_seed(seed)
    return cls(**{**SMALL, **kw}).eval()


def _float_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images)).double().numpy()


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("attn_bits", [4, 8])
def test_variants_quantize_and_track_the_float_model(name, attn_bits):
    model = _model(name)
    images = random_images(model, 12, seed=1)
    g = quantize(model, images, attn_bits=attn_bits, progress=False)
    kinds = [o.kind for o in g.ops]
    norms = [model.norm, model.norm_pre, getattr(model, "fc_norm", torch.nn.Identity())]
    assert kinds.count("layernorm") == 2 * len(model.blocks) + sum(not isinstance(n, torch.nn.Identity) for n in norms)
    assert {o.attrs["mode"] for o in g.ops if o.kind == "softmax"} == {"lis" if attn_bits == 4 else "uniform"}
    x = quantize_input(images, g)
    logits = execute(g, x)["logits"]
    assert logits.shape == (12, 10)
    # Every tensor up to the last block tracks the float model (random weights: >= 12 dB).
    sq = dict(layer_sqnr(model, g, images))
    assert sq["patch_embed.out"] > 30
    for k, v in sq.items():
        if k.startswith("blocks.0") and not k.endswith(("scores",)):
            assert v > 12, (k, v)


def test_distilled_head_averages_both_heads():
    model = _model("distilled")
    g = quantize(model, random_images(model, 8), progress=False)
    sel = g.op("pool")
    assert sel.attrs["indices"] == [0, 1] and g.tensors["pooled"].shape == (2 * 48,)
    head = g.op("head")
    assert head.params["weight"].shape == (10, 96) and head.attrs["out_bits"] == 16


def test_float_patch_embed_moves_the_convolution_to_the_host():
    model = _model("vit")
    images = random_images(model, 8)
    g = quantize(model, images, quantize_patch_embed=False, progress=False)
    assert g.inputs == ["patch_embed.out"] and "patch_weight" in g.host
    assert all(o.kind != "patchify" for o in g.ops)
    full = quantize(model, images, progress=False)
    # Same calibration: both versions classify the calibration images alike (random weights).
    a = execute(g, quantize_input(images, g))["logits"].argmax(1)
    b = execute(full, quantize_input(images, full))["logits"].argmax(1)
    assert np.mean(a == b) >= 0.75


def test_ptf_off_gives_zero_factors_and_on_uses_them():
    model = _model("vit")
    images = random_images(model, 8)
    obs = calibrate(model, images, progress=False)
    off = quantize(model, images, ptf=False, observers=obs, progress=False)
    on = quantize(model, images, ptf=True, observers=obs, progress=False)
    ln_off = [o.params["alpha"] for o in off.ops if o.kind == "layernorm"]
    ln_on = [o.params["alpha"] for o in on.ops if o.kind == "layernorm"]
    assert all(np.all(a == 0) for a in ln_off)
    assert any(np.any(a > 0) for a in ln_on) and all(a.max() <= 3 for a in ln_on)


def test_integer_parameters_have_hardware_widths():
    model = _model("no_embed_class_layerscale_reg")
    g = quantize(model, random_images(model, 8), observer="omse", progress=False)
    for o in g.ops:
        if o.kind == "linear":
            assert o.params["weight"].dtype == np.int8 and o.params["weight"].min() >= -127
            assert o.params["bias"].dtype == np.int32
        for k in ("mult", "mult_a", "mult_b"):
            if k in o.params:
                assert np.abs(o.params[k]).max() < 2 ** 15
        if "shift" in o.params:
            assert o.params["shift"].min() >= 0 and o.params["shift"].max() <= intops.REQUANT_MAX_SHIFT
    qkv = g.tensors["blocks.0.attn.qkv.out"]
    assert qkv.zero_point == 0          # q @ k^T and attention x V need symmetric operands


@pytest.mark.parametrize("observer", ["minmax", "ema", "percentile", "omse"])
def test_observers_all_work_and_are_deterministic(observer, tmp_path):
    model = _model("vit")
    images = random_images(model, 16, seed=2)
    g1 = quantize(model, images, observer=observer, progress=False)
    g2 = quantize(model, images, observer=observer, progress=False)
    g1.save(tmp_path / "a.npz")
    g2.save(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert IntGraph.load(tmp_path / "a.npz").info["observer"] == observer


def test_unknown_observer_and_bits_refused():
    model = _model("vit")
    with pytest.raises(ValueError, match="calibration method"):
        quantize(model, random_images(model, 2), observer="kl", progress=False)
    with pytest.raises(ValueError, match="attn_bits"):
        quantize(model, random_images(model, 2), attn_bits=6, progress=False)


def test_wrong_calibration_image_shape_refused():
    model = _model("vit")
    with pytest.raises(ValueError, match="expects"):
        quantize(model, np.zeros((2, 3, 16, 16), np.float32), progress=False)


def test_unsupported_models_name_what_is_unsupported():
    with pytest.raises(UnsupportedModelError, match="ResNet"):
        check_supported(create_model("resnet18"))
    with pytest.raises(UnsupportedModelError, match="global pooling 'map'"):
        check_supported(create_model("test_vit3"))
    with pytest.raises(UnsupportedModelError, match="unknown timm model"):
        create_model("no_such_model_xyz")
    m = _model("vit")
    m.blocks[1].mlp.act = torch.nn.ReLU()
    m.blocks[0].norm1 = torch.nn.BatchNorm1d(48)
    with pytest.raises(UnsupportedModelError, match=r"blocks\.0\.norm1: BatchNorm1d.*blocks\.1\.mlp\.act: ReLU"):
        check_supported(m)


def test_checkpoint_loading(tmp_path):
    torch.manual_seed(5)
    src = create_model("test_vit")
    torch.save(src.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(6)
    dst = create_model("test_vit", str(tmp_path / "w.pth"))
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="does not fit"):
        create_model("test_vit2", str(tmp_path / "w.pth"))
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        create_model("test_vit", str(tmp_path / "bad.pth"))


def test_quantize_input_checks_shape():
    model = _model("vit")
    g = quantize(model, random_images(model, 4), progress=False)
    with pytest.raises(ValueError, match="expects"):
        quantize_input(np.zeros((1, 3, 16, 16)), g)
    q = quantize_input(np.zeros((3, 32, 32)), g)
    assert q.shape == (1, 3, 32, 32) and q.dtype == np.int8
