"""Graphs from the quantizer for timm ViT variants compile and simulate bit-exact.

Small stock timm models (random weights) of every structure the quantizer accepts: class
token, distilled, average pooling with fc_norm, no class token, position embedding before
the prefix tokens with LayerScale and registers, CLIP-style pre-norm, float patch
embedding.  Every output integer of the cycle model equals the integer executor's.
"""
import numpy as np
import pytest
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer

from compiler.lower import compile_graph
from hw.config import PRESETS
from sim.machine import simulate
from sw.executor import execute
from sw.quantize import quantize, quantize_input, random_images

SMALL = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
VARIANTS = {
    "token": (VisionTransformer, {}, {}),
    "distilled": (VisionTransformerDistilled, {}, {}),
    "avg_fc_norm": (VisionTransformer, {"global_pool": "avg"}, {}),
    "no_cls_avg": (VisionTransformer, {"class_token": False, "global_pool": "avg", "fc_norm": False}, {}),
    "deit3_like": (VisionTransformer, {"no_embed_class": True, "init_values": 0.1, "reg_tokens": 2}, {}),
    "clip_pre_norm": (VisionTransformer, {"pre_norm": True}, {}),
    "float_patch_embed_8bit_softmax": (VisionTransformer, {}, {"quantize_patch_embed": False, "attn_bits": 8}),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_bit_exact_through_the_cycle_model(name):
    cls, model_kw, quant_kw = VARIANTS[name]
    torch.manual_seed(1)
    model = cls(**{**SMALL, **model_kw}).eval()
    images = random_images(model, 6, seed=2)
    graph = quantize(model, images[:4], progress=False, **quant_kw)
    x = quantize_input(images, graph)
    ref = execute(graph, x)[graph.outputs[0]]
    got = simulate(compile_graph(graph, PRESETS["tiny"]), {graph.inputs[0]: x}).outputs[graph.outputs[0]]
    assert got.shape == ref.shape == (6, 10)
    np.testing.assert_array_equal(got, ref)
