"""Integer reference executor: batching, input checks, overflow detection, op dispatch."""
from __future__ import annotations

import numpy as np
import pytest

from compiler.testgraphs import random_image, tiny_vit
from sw import intops
from sw.executor import OP_RUNNERS, execute
from sw.graph import OP_SCHEMA


def test_every_op_kind_has_a_runner():
    assert set(OP_RUNNERS) == set(OP_SCHEMA)


@pytest.mark.parametrize("kw", [{}, {"pool": "mean"}, {"softmax_mode": "uniform"}, {"prefix_tokens": 2}])
def test_batch_equals_one_at_a_time(kw):
    g = tiny_vit(seed=2, depth=2, **kw)
    x = np.stack([random_image(g, s) for s in range(5)])
    batch = execute(g, x)["logits"]
    single = np.concatenate([execute(g, x[i:i + 1])["logits"] for i in range(5)])
    assert np.array_equal(batch, single)
    assert batch.dtype == np.int64 and batch.shape == (5, 10)


def test_keep_returns_every_tensor_with_declared_widths():
    g = tiny_vit(seed=3)
    env = execute(g, random_image(g)[None], keep=True)
    assert set(env) == set(g.tensors)
    for name, t in g.tensors.items():
        lo, hi = t.range
        assert env[name].min() >= lo and env[name].max() <= hi, name


def test_matches_a_hand_written_first_layer():
    """The executor's first linear equals patchify + linear + requantize done by hand."""
    g = tiny_vit(seed=4)
    x = random_image(g, 1)[None]
    env = execute(g, x, keep=True)
    op = g.op("patch_embed.proj")
    rows = intops.patchify(x.astype(np.int64), g.op("patch_embed.patchify").attrs["patch"])
    acc = rows @ op.params["weight"].astype(np.int64).T + op.params["bias"]
    m, s = op.params["mult"].astype(np.int64), op.params["shift"].astype(np.int64)
    want = np.clip(((acc * m + (1 << (s - 1))) >> s) + op.attrs["zp_out"], -128, 127)
    assert np.array_equal(env["patch_embed.out"], want)


def test_input_checks():
    g = tiny_vit()
    x = random_image(g)[None]
    with pytest.raises(ValueError, match="shape"):
        execute(g, x[:, :, :4])
    with pytest.raises(TypeError):
        execute(g, x.astype(np.float32))
    with pytest.raises(intops.IntegerOverflowError):
        execute(g, x.astype(np.int64) * 2)
    with pytest.raises(ValueError, match="missing"):
        execute(g, {"nope": x})


def test_overflow_raises_instead_of_wrapping():
    g = tiny_vit()
    op = g.op("patch_embed.proj")
    op.params["bias"] = np.full_like(op.params["bias"], intops.INT32_MAX)
    x = np.full((1,) + g.tensors[g.inputs[0]].shape, 127, dtype=np.int8)
    op.params["weight"] = np.full_like(op.params["weight"], 127)
    with pytest.raises(intops.IntegerOverflowError):
        execute(g, x)
