"""The fast executor against the reference executor: every integer of every tensor, the same
errors, and the fused kernels against sw.intops on their own (edge cases included)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from compiler.testgraphs import random_image, tiny_vit
from sw import executor, fastkernels, intops
from sw.executor import execute
from sw.fastexec import FAST_KINDS, FastExecutor, execute_fast
from sw.graph import OP_SCHEMA, IntGraph, Op, Tensor


def assert_same_tensors(graph, x, threads=(1, 2)):
    """Every tensor (keep) and the outputs (no keep, which fuses linear + GELU) are equal."""
    ref = execute(graph, x, keep=True)
    for n in threads:
        fe = FastExecutor(graph, threads=n)
        got = fe.run(x, keep=True)
        assert set(got) == set(ref)
        for name in ref:
            assert got[name].dtype == np.int64
            np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{name} (threads={n})")
        out = fe.run(x)
        assert set(out) == set(graph.outputs)
        for name in graph.outputs:
            np.testing.assert_array_equal(out[name], ref[name], err_msg=f"{name} (threads={n}, no keep)")
    return ref


def assert_same_error(graph, x, threads=(1, 2)):
    with pytest.raises(intops.IntegerOverflowError) as want:
        execute(graph, x)
    for n in threads:
        for keep in (False, True):
            with pytest.raises(intops.IntegerOverflowError) as got:
                FastExecutor(graph, threads=n).run(x, keep=keep)
            assert str(got.value) == str(want.value)
    return str(want.value)


def _batch(graph, n, seed=0):
    return np.stack([random_image(graph, seed + i) for i in range(n)])


# ------------------------------------------------------------------------------ whole graphs
VARIANTS = [
    dict(),
    dict(softmax_mode="uniform"),
    dict(pool="mean", fc_norm=True),
    dict(pool="distilled", prefix_tokens=2),
    dict(embed="tokens", pos_first=True),
    dict(pos_first=True, pool="mean", fc_norm=True, prefix_tokens=0),
    dict(image=12, patch=3, dim=20, heads=5, mlp_ratio=3, classes=7, head_bits=8),
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_tiny_vits_bit_exact(kw):
    g = tiny_vit(seed=7, depth=2, **kw)
    fe = FastExecutor(g)
    kinds = {o.kind for o in g.ops if o.name in fe.fused_ops}
    assert kinds == {o.kind for o in g.ops} & set(FAST_KINDS)     # every kernel is exercised
    assert_same_tensors(g, _batch(g, 5))


@given(seed=st.integers(0, 2 ** 16), image=st.sampled_from([8, 12, 16]), patch=st.sampled_from([2, 4]),
       heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4, 8]), depth=st.integers(1, 2),
       mlp_ratio=st.integers(1, 4), mode=st.sampled_from(["lis", "uniform"]),
       pool=st.sampled_from(["token", "distilled", "mean"]), prefix=st.integers(0, 3),
       embed=st.sampled_from(["image", "tokens"]), pos_first=st.booleans(), fc_norm=st.booleans(),
       batch=st.integers(1, 5), threads=st.integers(1, 3))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_graphs_bit_exact(seed, image, patch, heads, head_dim, depth, mlp_ratio, mode, pool,
                                 prefix, embed, pos_first, fc_norm, batch, threads):
    if pool == "distilled":
        prefix = max(prefix, 2)
    if pool != "mean" and prefix == 0:
        prefix = 1
    g = tiny_vit(seed=seed, image=image, patch=patch, dim=heads * head_dim, heads=heads, depth=depth,
                 mlp_ratio=mlp_ratio, softmax_mode=mode, pool=pool, prefix_tokens=prefix, embed=embed,
                 pos_first=pos_first, fc_norm=fc_norm and pool == "mean")
    assert_same_tensors(g, _batch(g, batch, seed), threads=(threads,))


@pytest.mark.parametrize("k,wmax,parts", [(1032, 127, 1), (1033, 127, 2), (3000, 127, 3), (5000, 3, 1),
                                           (64, 0, 1)])
def test_long_reductions_are_split_exactly(k, wmax, parts):
    """A linear layer whose K * 128 * max|W| reaches 2**24 runs as several float32 products
    whose sum is the exact integer product (one float32 product would round)."""
    rng = np.random.default_rng(k)
    n, t = 24, 6
    w = rng.integers(-wmax, wmax + 1, size=(n, k)).astype(np.int8)
    w[: n // 2] = rng.integers(wmax // 2, wmax + 1, size=(n // 2, k))     # large, one-signed rows
    mult, shift = intops.dyadic(rng.uniform(0.5, 2, size=n) / (max(wmax, 1) * 128 * np.sqrt(k) / 100))
    tensors = {"x": Tensor("x", (t, k), 8, True, 1.0, 0), "y": Tensor("y", (t, n), 16, True, 1.0, 0)}
    op = Op("fc", "linear", ["x"], ["y"], {"zp_out": 5, "out_bits": 16},
            {"weight": w, "bias": rng.integers(-5000, 5000, size=n).astype(np.int32),
             "mult": mult.astype(np.int16), "shift": shift})
    g = IntGraph(tensors, [op], ["x"], ["y"])
    g.validate()
    x = rng.integers(-128, 128, size=(3, t, k)).astype(np.int8)
    x[0] = 127
    x[1, :3] = rng.integers(100, 128, size=(3, k))
    fe = FastExecutor(g)
    assert fe.fused_ops == ["fc"]
    got = fe._fast["fc"].products(x.reshape(-1, k))
    assert got.shape == (parts, 3 * t, n)
    want = x.reshape(-1, k).astype(np.int64) @ w.T.astype(np.int64)
    np.testing.assert_array_equal(got.astype(np.int64).sum(axis=0), want)
    assert_same_tensors(g, x)


def test_switch_in_execute():
    g = tiny_vit(seed=3)
    x = _batch(g, 3)
    np.testing.assert_array_equal(execute(g, x, fast=True)["logits"], execute(g, x)["logits"])
    np.testing.assert_array_equal(execute_fast(g, x, threads=2)["logits"], execute(g, x)["logits"])


def test_input_checks_as_the_reference():
    g = tiny_vit()
    x = random_image(g)[None]
    fe = FastExecutor(g)
    with pytest.raises(ValueError, match="shape"):
        fe.run(x[:, :, :4])
    with pytest.raises(TypeError):
        fe.run(x.astype(np.float32))
    with pytest.raises(intops.IntegerOverflowError):
        fe.run(x.astype(np.int64) * 2)
    with pytest.raises(ValueError, match="missing"):
        fe.run({"nope": x})


# ------------------------------------------------------------------------------ errors
def test_linear_accumulator_overflow_is_the_reference_error():
    g = tiny_vit(seed=1)
    op = g.op("patch_embed.proj")
    op.params["weight"] = np.full_like(op.params["weight"], 127)
    op.params["bias"] = np.full_like(op.params["bias"], intops.INT32_MAX - 1000)
    x = _batch(g, 4)
    x[2] = 127                                           # one image overflows, in the second slice
    assert "accumulator" in assert_same_error(g, x)
    x[2] = 0
    op.params["bias"][:] = 0                             # now it fits
    assert_same_tensors(g, x)


def test_softmax_polynomial_overflow_is_the_reference_error():
    g = tiny_vit(seed=2)
    g.op("blocks.0.attn.softmax").attrs["c_int"] = 70000     # exp polynomial beyond 16 bits
    assert "exp polynomial" in assert_same_error(g, _batch(g, 3))


def test_layernorm_shifted_input_overflow_is_the_reference_error():
    g = tiny_vit(seed=2)
    g.op("blocks.0.norm1").attrs["zp_in"] = -1000           # (x - zp) << alpha beyond 12 bits
    assert "layernorm shifted input" in assert_same_error(g, _batch(g, 3))


def test_lis_code_out_of_range_is_the_reference_error():
    g = tiny_vit(seed=4)
    g.op("blocks.0.attn.softmax").attrs["mode"] = "uniform"  # 8-bit probabilities read as codes
    assert "LIS code" in assert_same_error(g, _batch(g, 3))


def test_output_narrower_than_its_clamp_is_checked():
    g = tiny_vit(seed=5, head_bits=16)
    g.tensors["logits"].bits = 4                             # the head clamps to int16
    assert "head output" in assert_same_error(g, _batch(g, 3))


def test_parameters_failing_intops_checks_run_the_reference():
    g = tiny_vit(seed=6)
    g.op("blocks.0.mlp.fc1").params["mult"] = g.op("blocks.0.mlp.fc1").params["mult"].astype(np.int64) * 4 + 40000
    fe = FastExecutor(g)
    assert "blocks.0.mlp.fc1" not in fe.fused_ops
    assert_same_error(g, _batch(g, 2))


# ------------------------------------------------------------------------------ fallbacks
def test_an_unknown_op_kind_runs_the_reference(monkeypatch):
    monkeypatch.setitem(OP_SCHEMA, "negate", ((1,), (), ()))
    monkeypatch.setitem(executor.OP_RUNNERS, "negate", lambda op, x: np.clip(-x.astype(np.int64), -128, 127))
    g = tiny_vit(seed=8)
    i = next(k for k, o in enumerate(g.ops) if o.name == "blocks.0.norm1")
    src = g.ops[i].inputs[0]
    g.tensors["neg"] = Tensor("neg", g.tensors[src].shape, 8, True, 1.0, 0)
    g.ops.insert(i, Op("neg", "negate", [src], ["neg"]))
    for o in g.ops[i + 1:]:
        o.inputs = ["neg" if t == src and o.kind == "layernorm" else t for t in o.inputs]
    g.validate()
    fe = FastExecutor(g)
    assert "neg" not in fe.fused_ops and "blocks.0.norm1" in fe.fused_ops
    assert_same_tensors(g, _batch(g, 3))


def test_an_op_with_an_unknown_attribute_runs_the_reference():
    g = tiny_vit(seed=9)
    g.op("blocks.0.attn.qkv").attrs["rounding"] = "to-nearest-even"   # e.g. added by a later method
    g.op("blocks.0.attn.softmax").attrs["mode"] = "shiftmax"
    fe = FastExecutor(g)
    assert "blocks.0.attn.qkv" not in fe.fused_ops and "blocks.0.attn.softmax" not in fe.fused_ops
    assert "blocks.0.attn.proj" in fe.fused_ops


# ------------------------------------------------------------------------------ kernels alone
@given(acc=st.lists(st.integers(intops.INT32_MIN, intops.INT32_MAX), min_size=1, max_size=40),
       mult=st.integers(intops.INT16_MIN, intops.INT16_MAX), shift=st.integers(0, fastkernels.FLOAT_MAX_SHIFT),
       offset=st.integers(-300, 300), chunks=st.integers(1, 3))
@settings(max_examples=300, deadline=None)
def test_float_requantization_is_intops_requantize(acc, mult, shift, offset, chunks):
    acc = np.array(acc, np.int64)
    want = intops.requantize(acc, mult, shift, offset, intops.INT16_MIN, intops.INT16_MAX)
    # the accumulator split into float32-exact parts, plus a bias, as the linear kernel sees it
    parts = np.zeros((chunks, 1, len(acc)), np.float32)
    rest = acc.copy()
    for c in range(chunks - 1):
        parts[c, 0] = part = np.clip(rest, -(1 << 23), (1 << 23) - 1)
        rest -= part
    bias = rest.astype(np.float64)                        # |bias| < 2**32: exact
    out = np.empty((1, len(acc)), np.int16)
    scale = np.full(len(acc), np.ldexp(float(mult), -shift))
    assert fastkernels.requantize_rows(parts, bias, scale, float(offset), -32768.0, 32767.0, out) == 0
    np.testing.assert_array_equal(out[0], want)


def test_float_requantization_ties_and_extremes():
    accs = np.array([intops.INT32_MIN, intops.INT32_MAX, 0, 1, -1, 3, -3, 5, -5, 1 << 30, -(1 << 30)], np.int64)
    for mult in (intops.INT16_MIN, intops.INT16_MAX, 1, -1, 3):
        for shift in (0, 1, 2, 31, 45, 46, 47, 48, 51, 52):
            want = intops.requantize(accs, mult, shift, 0, intops.INT16_MIN, intops.INT16_MAX)
            out = np.empty((1, len(accs)), np.int16)
            fastkernels.requantize_rows(_f32_exact(accs), np.zeros(len(accs)),
                                        np.full(len(accs), np.ldexp(float(mult), -shift)), 0.0,
                                        -32768.0, 32767.0, out)
            np.testing.assert_array_equal(out[0], want, err_msg=f"mult {mult} shift {shift}")
    # an accumulator outside int32 is reported
    out = np.empty((1, 1), np.int8)
    assert fastkernels.requantize_rows(np.full((2, 1, 1), 2.0 ** 23, np.float32) * 200, np.zeros(1),
                                       np.ones(1), 0.0, -128.0, 127.0, out) == 1


def _f32_exact(acc: np.ndarray) -> np.ndarray:
    """``acc`` as a sum of float32-exact parts ``[n_parts, 1, N]``."""
    parts, rest = [], acc.astype(np.int64)
    while rest.any() or not parts:
        part = np.clip(rest, -(1 << 23), (1 << 23) - 1)
        parts.append(part)
        rest = rest - part
    return np.stack(parts).astype(np.float32)[:, None, :]


@given(data=st.data(), n=st.integers(1, 300), frac_bits=st.integers(2, 6), lis=st.booleans(),
       spread=st.sampled_from([4, 64, 1000, 32767]))
@settings(max_examples=150, deadline=None)
def test_softmax_kernel_is_intops(data, n, frac_bits, lis, spread):
    rows = data.draw(st.integers(1, 4))
    seed = data.draw(st.integers(0, 2 ** 32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.integers(-spread, spread + 1, size=(rows, n)).clip(-32768, 32767).astype(np.int16)
    if data.draw(st.booleans()):
        x[:, :: max(1, n // 3)] = 32767                       # ties at the maximum
    b_int, c_int = intops.lis_exp_constants(frac_bits)
    want = (intops.lis_softmax if lis else intops.uniform_softmax)(x, frac_bits, b_int, c_int)
    out = np.empty(x.shape, np.uint8)
    w = np.empty(x.shape, np.float32)
    bad, wmax = fastkernels.softmax_rows(x, frac_bits, b_int, c_int, lis, out, w)
    assert bad == 0
    np.testing.assert_array_equal(out, want)
    weights = np.where(want < 15, 2.0 ** (15 - want.astype(np.int64)), 0) if lis else want
    np.testing.assert_array_equal(w, weights)
    assert wmax == int(weights.sum(axis=1).max())


def test_lis_codes_at_every_boundary():
    """Exponentials right at the code boundaries ``(e sqrt 2) << k == total``, and 0."""
    totals, es = [], []
    for total in (1, 2, 3, 1000, 65537, (1 << 31) - 1, 1 << 35, (1 << 43) - 1):
        for k in range(17):
            for d in (-2, -1, 0, 1, 2):
                e_ = ((total >> k) << 16) // intops.LIS_SQRT2_Q16 + d
                if 0 <= e_ <= total and e_ < 1 << 31:
                    totals.append(total)
                    es.append(e_)
    e_arr, t_arr = np.array(es, np.int64), np.array(totals, np.int64)
    want = intops.lis_codes(e_arr, t_arr)
    assert set(want.tolist()) == set(range(16))                   # every code occurs
    out = np.empty((len(es), 1), np.uint8)
    fastkernels.lis_codes_rows(e_arr.astype(np.int32)[:, None], t_arr, out)
    np.testing.assert_array_equal(out[:, 0], want)


@given(data=st.data(), c=st.sampled_from([1, 2, 3, 16, 64, 192, 768]), zp=st.integers(-128, 127),
       shift=st.integers(intops.LN_OFFSET_FRAC, 40))
@settings(max_examples=120, deadline=None)
def test_layernorm_kernel_is_intops(data, c, zp, shift):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    rows = 6
    x = rng.integers(-128, 128, size=(rows, c)).astype(np.int8)
    x[0] = x[0, 0]                                           # a zero-variance row
    x[1] = np.where(np.arange(c) % 2, 127, -128)             # the largest variance
    alpha = rng.integers(0, 4, size=c)
    mult = rng.integers(intops.INT16_MIN, intops.INT16_MAX + 1, size=c)
    offset = rng.integers(-(1 << 28), 1 << 28, size=c)
    shifts = np.full(c, shift)
    try:
        want = intops.ptf_layernorm(x, zp, alpha, mult, shifts, offset)
    except intops.IntegerOverflowError:
        want = None
    out = np.empty(x.shape, np.int8)
    bad = fastkernels.layernorm_rows(x, zp, alpha.astype(np.int64), mult.astype(np.int64),
                                     (shifts - intops.LN_OFFSET_FRAC).astype(np.int64),
                                     offset.astype(np.int64), out)
    assert (bad > 0) == (want is None)
    if want is not None:
        np.testing.assert_array_equal(out, want)


# ------------------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def digits():
    from sw.digits import load_or_train
    return load_or_train(seed=0, progress=False)


@pytest.mark.parametrize("attn_bits,ptf", [(8, False), (8, True), (4, False), (4, True)])
def test_digits_vit_bit_exact(digits, attn_bits, ptf):
    from sw.quantize import quantize, quantize_input
    model, split = digits
    g = quantize(model, split.train_x[:64], attn_bits=attn_bits, ptf=ptf, progress=False)
    assert_same_tensors(g, quantize_input(split.test_x[:24], g))
    if attn_bits == 4 and ptf:                                   # the default: the whole test split
        x = quantize_input(split.test_x, g)
        np.testing.assert_array_equal(FastExecutor(g).run(x)["logits"], execute(g, x)["logits"])


@pytest.mark.slow
def test_deit_tiny_bit_exact():
    import torch
    from sw.quantize import create_model, quantize, quantize_input, random_images
    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224")
    images = random_images(model, 4, seed=5)
    g = quantize(model, images[:2], progress=False)
    fe = FastExecutor(g)
    assert len(fe.fused_ops) >= len(g.ops) - 3                   # all but patchify, concat, select
    assert_same_tensors(g, quantize_input(images[1:], g), threads=(2,))
