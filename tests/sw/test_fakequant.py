"""The fake-quant torch model against the integer executor, on the digits ViT."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sw.executor import execute
from sw.fakequant import EXACT_KINDS, fakequant_execute, fakequant_op
from sw.quantize import quantize, quantize_input


@pytest.fixture(scope="module")
def digits():
    from sw.digits import load_or_train
    model, split = load_or_train(seed=0, progress=False)
    return model, split


@pytest.fixture(scope="module", params=[(4, True), (8, False)], ids=["8-8-4-ptf-lis", "8-8-8"])
def quantized(request, digits):
    model, split = digits
    attn_bits, ptf = request.param
    g = quantize(model, split.train_x[:128], attn_bits=attn_bits, ptf=ptf, progress=False)
    return g, quantize_input(split.test_x, g)


def test_labels_agree_on_at_least_99_percent(quantized, digits):
    g, x = quantized
    _, split = digits
    lab_int = execute(g, x)["logits"].argmax(1)
    lab_fq = fakequant_execute(g, x)["logits"].argmax(1)
    assert len(lab_int) == len(split.test_y) > 400
    assert np.mean(lab_int == lab_fq) >= 0.99


def test_designed_ops_bit_exact_and_others_close(quantized):
    """Fed the executor's own inputs, every op of an exact kind reproduces every integer;
    the float LayerNorm and softmax stay close to their integer versions."""
    g, x = quantized
    env = execute(g, x, keep=True)
    seen = set()
    for op in g.ops:
        ins = [torch.as_tensor(env[t], dtype=torch.float64) for t in op.inputs]
        got = fakequant_op(g, op, *ins).numpy().astype(np.int64)
        want = env[op.outputs[0]]
        assert got.shape == want.shape
        if op.kind in EXACT_KINDS:
            assert np.array_equal(got, want), op.name
            seen.add(op.kind)
        elif op.kind == "layernorm":
            # The integer LayerNorm keeps the mean exact and adds beta before its one
            # rounding: it differs from float LayerNorm only where the float result lies
            # within a few 1e-4 of a rounding boundary (and by the float model's eps).
            assert np.abs(got - want).max() <= 1, op.name
            assert np.mean(got == want) >= 0.999, op.name
        else:
            assert op.kind == "softmax"
            assert np.mean(got == want) >= 0.9, op.name
    # the digits ViT pools the class token and has no Swin data movement
    assert seen == set(EXACT_KINDS) - {"token_mean", "window_partition", "window_reverse", "patch_merge"}


def test_integer_top1_close_to_fp32(quantized, digits):
    """A regression guard (the measured gaps are in docs/ACCURACY.md; the target is 1 point,
    which one seed's minmax 8/8/4 misses by half a test image)."""
    from sw.digits import evaluate_float
    g, x = quantized
    model, split = digits
    fp32 = np.mean(evaluate_float(model, split.test_x) == split.test_y)
    integer = np.mean(execute(g, x)["logits"].argmax(1) == split.test_y)
    assert integer >= fp32 - 0.015
