"""The fast executor against the reference executor: every integer of every tensor, the same
errors, and the fused kernels against sw.intops on their own (edge cases included).  Graphs
of every method: FQ-ViT (the hand-built test graphs, random timm models, the digits ViT,
DeiT-Tiny), I-ViT and PTQ4ViT (random timm models, the digits ViT, DeiT-Tiny)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from compiler.testgraphs import random_image, tiny_vit
from sw import executor, fastkernels, intops
from sw.executor import execute
from sw.fastexec import FAST_KINDS, FastExecutor, execute_fast
from sw.graph import OP_SCHEMA, IntGraph, Op, Tensor


def assert_same_tensors(graph, x, threads=(1, 2), all_fast=False):
    """Every tensor (keep) and the outputs (no keep, which fuses linear + GELU) are equal.
    ``all_fast``: also no fast kernel handed any call to the reference op."""
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
        if all_fast:
            assert not fe.declined, dict(fe.declined)
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
    assert_same_tensors(g, _batch(g, 5), all_fast=True)


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


# ------------------------------------------------------------------------------ every method
#: The settings compared: (method, quantize keyword arguments).  PTQ4ViT's search runs with a
#: small grid (its result is a graph like any other).
METHOD_SETTINGS = {
    "fqvit-4": ("fqvit", dict(attn_bits=4)),
    "fqvit-8": ("fqvit", dict(attn_bits=8)),
    "ivit": ("ivit", {}),
    "ptq4vit-8": ("ptq4vit", dict(bits=8, eq_n=6, rounds=1, max_rows=128, max_attn_rows=64)),
    "ptq4vit-6": ("ptq4vit", dict(bits=6, eq_n=6, rounds=1, max_rows=128, max_attn_rows=64)),
}

#: The op kinds each method's graphs must run on fast kernels.
METHOD_KINDS = {
    "fqvit": {"linear", "qk_scores", "softmax", "attn_value", "layernorm", "add", "gelu"},
    "ivit": {"linear", "qk_scores", "ilayernorm", "add_wide", "shiftmax", "attn_value_wide", "shiftgelu"},
    "ptq4vit": {"linear", "qk_scores", "layernorm", "add", "twin_softmax", "attn_value_twin", "twin_gelu",
                "linear_twin"},
}


def method_graph(setting, model, calib, labels=None):
    from sw.quantize import quantize
    method, kw = METHOD_SETTINGS[setting]
    if method == "ptq4vit" and labels is not None:
        kw = {**kw, "labels": labels}
    return quantize(model, calib, method=method, progress=False, **kw)


def assert_method_fast(g, setting):
    """Every op of the method's kinds has a fast kernel."""
    method = METHOD_SETTINGS[setting][0]
    fe = FastExecutor(g)
    kinds = {o.kind for o in g.ops}
    assert METHOD_KINDS[method] <= kinds
    assert {o.kind for o in g.ops if o.name in fe.fused_ops} == kinds & set(FAST_KINDS) == METHOD_KINDS[method]


#: Small timm models: (class name, keyword arguments).
TIMM_VARIANTS = {
    "vit": ("vit", {}),
    "distilled": ("distilled", {}),
    "avg_fc_norm": ("vit", {"global_pool": "avg"}),
    "avg_no_cls": ("vit", {"class_token": False, "global_pool": "avg", "fc_norm": False}),
    "reg_layerscale": ("vit", {"no_embed_class": True, "init_values": 0.1, "reg_tokens": 2}),
    "rect_no_qkv_bias": ("vit", {"img_size": (16, 12), "qkv_bias": False}),
    "pre_norm": ("vit", {"pre_norm": True}),
}


def small_timm(variant, seed, image, patch, heads, head_dim, depth, mlp_ratio):
    import torch
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer
    cls, kw = TIMM_VARIANTS[variant]
    torch.manual_seed(seed)
    cfg = dict(img_size=image, patch_size=patch, embed_dim=heads * head_dim, depth=depth, num_heads=heads,
               mlp_ratio=mlp_ratio, num_classes=7)
    cls = VisionTransformerDistilled if cls == "distilled" else VisionTransformer
    return cls(**{**cfg, **kw}).eval()


@given(seed=st.integers(0, 2 ** 16), setting=st.sampled_from(sorted(METHOD_SETTINGS)),
       variant=st.sampled_from(sorted(TIMM_VARIANTS)), image=st.sampled_from([8, 16]),
       patch=st.sampled_from([4, 8]), heads=st.sampled_from([1, 2, 3]), head_dim=st.sampled_from([4, 8, 16]),
       depth=st.integers(1, 2), mlp_ratio=st.sampled_from([1.0, 2.0, 4.0]), batch=st.integers(1, 4),
       threads=st.integers(1, 3))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_method_graphs_bit_exact(seed, setting, variant, image, patch, heads, head_dim, depth,
                                        mlp_ratio, batch, threads):
    """Random small timm models of every variant FQ-ViT takes, quantized by every method."""
    from hypothesis import assume
    from sw.quantize import UnsupportedModelError, quantize_input, random_images
    if variant == "rect_no_qkv_bias":
        patch = 4
    model = small_timm(variant, seed, image, patch, heads, head_dim, depth, mlp_ratio)
    images = random_images(model, 6 + batch, seed=seed)
    try:
        g = method_graph(setting, model, images[:6])
    except UnsupportedModelError:
        assume(False)                                # I-ViT takes class-token models only
    assert_method_fast(g, setting)
    assert_same_tensors(g, quantize_input(images[6:], g), threads=(threads,))


def test_every_method_setting_is_drawn():
    """I-ViT refuses some variants: the random test above still meets every method on the
    plain ViT (so an assume() cannot hide a method)."""
    from sw.quantize import quantize_input, random_images
    for setting in METHOD_SETTINGS:
        model = small_timm("vit", 1, 16, 4, 2, 8, 2, 2.0)
        images = random_images(model, 9, seed=2)
        g = method_graph(setting, model, images[:6])
        assert_method_fast(g, setting)
        assert_same_tensors(g, quantize_input(images[6:], g), all_fast=True)


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
       shift=st.integers(intops.LN_OFFSET_FRAC, 40), out_bits=st.sampled_from([8, 6]))
@settings(max_examples=120, deadline=None)
def test_layernorm_kernel_is_intops(data, c, zp, shift, out_bits):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    rows = 6
    x = rng.integers(-128, 128, size=(rows, c)).astype(np.int8)
    x[0] = x[0, 0]                                           # a zero-variance row
    x[1] = np.where(np.arange(c) % 2, 127, -128)             # the largest variance
    alpha = rng.integers(0, 4, size=c)
    mult = rng.integers(intops.INT16_MIN, intops.INT16_MAX + 1, size=c)
    offset = rng.integers(-(1 << 28), 1 << 28, size=c)
    shifts = np.full(c, shift)
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    try:
        want = intops.ptf_layernorm(x, zp, alpha, mult, shifts, offset, lo, hi)
    except intops.IntegerOverflowError:
        want = None
    out = np.empty(x.shape, np.int8)
    bad = fastkernels.layernorm_rows(x, zp, alpha.astype(np.int64), mult.astype(np.int64),
                                     (shifts - intops.LN_OFFSET_FRAC).astype(np.int64),
                                     offset.astype(np.int64), lo, hi, out)
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


@pytest.mark.parametrize("setting", ["ivit", "ptq4vit-8", "ptq4vit-6"])
def test_digits_vit_methods_bit_exact(digits, setting):
    from sw.quantize import quantize_input
    model, split = digits
    g = method_graph(setting, model, split.train_x[:64], labels=split.train_y[:64])
    assert_method_fast(g, setting)
    x = quantize_input(split.test_x, g)
    assert_same_tensors(g, x[:24], all_fast=True)
    fe = FastExecutor(g)
    np.testing.assert_array_equal(fe.run(x)["logits"], execute(g, x)["logits"])     # the whole test split
    assert not fe.declined


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["fqvit-4", "ivit", "ptq4vit-8"])
def test_deit_tiny_bit_exact(setting):
    import torch
    from sw.quantize import create_model, quantize_input, random_images
    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224")
    images = random_images(model, 4, seed=5)
    g = method_graph(setting, model, images[:2])
    fe = FastExecutor(g)
    assert len(fe.fused_ops) >= len(g.ops) - 3                   # all but patchify, concat, select
    assert_method_fast(g, setting)
    assert_same_tensors(g, quantize_input(images[1:], g), threads=(2,), all_fast=True)


# ------------------------------------------------------------------------------ kernels of I-ViT and PTQ4ViT
@given(data=st.data(), n_cols=st.integers(1, 300), x0=st.integers(-3000, -1), n=st.integers(0, 30),
       out_bits=st.integers(2, 16), spread=st.sampled_from([3, 100, 5000, 32767]))
@settings(max_examples=150, deadline=None)
def test_shiftmax_kernel_is_intops(data, n_cols, x0, n, out_bits, spread):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.integers(-spread, spread + 1, size=(4, n_cols)).clip(-32768, 32767).astype(np.int16)
    x[0, :] = x[0, 0]                                         # a row of equal scores
    try:
        want = intops.shiftmax(x, x0, n, out_bits)
    except intops.IntegerOverflowError:                       # the row sum beyond 2**31 - 1
        want = None
    out = np.empty(x.shape, np.int32)
    w = np.empty(x.shape, np.float32)
    bad, wmax = fastkernels.shiftmax_rows(x, x0, n, out_bits, out, w)
    assert (bad > 0) == (want is None)
    if want is not None:
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(w, want)
        assert wmax == int(want.sum(axis=1).max())


@given(data=st.data(), c=st.sampled_from([1, 2, 3, 16, 64, 192, 768]), shift=st.integers(intops.LN_OFFSET_FRAC, 50),
       spread=st.sampled_from([1, 40, 3000, 32767]))
@settings(max_examples=120, deadline=None)
def test_ilayernorm_kernel_is_intops(data, c, shift, spread):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.integers(-spread, spread + 1, size=(6, c)).clip(-32768, 32767).astype(np.int16)
    x[0] = x[0, 0]                                           # zero variance
    x[1] = np.where(np.arange(c) % 2, 32767, -32768)         # the largest variance
    x[2] = 0
    x[2, 0] = -spread                                        # one outlier, negative mean
    mult = rng.integers(intops.INT16_MIN, intops.INT16_MAX + 1, size=c)
    offset = rng.integers(-(1 << 28), 1 << 28, size=c)
    shifts = np.full(c, shift)
    try:
        want = intops.ilayernorm(x, mult, shifts, offset)
    except intops.IntegerOverflowError:
        want = None
    out = np.empty(x.shape, np.int8)
    bad = fastkernels.ilayernorm_rows(x, mult.astype(np.int64), (shifts - intops.LN_OFFSET_FRAC).astype(np.int64),
                                      offset.astype(np.int64), intops.ILN_SQRT_STEPS, intops.ILN_SQRT_START, out)
    assert (bad > 0) == (want is None)
    if want is not None:
        np.testing.assert_array_equal(out, want)


@given(data=st.data(), n_cols=st.integers(1, 300), frac_bits=st.integers(2, 6), m=st.integers(0, 20),
       bits=st.integers(2, 8), spread=st.sampled_from([4, 64, 1000, 32767]))
@settings(max_examples=150, deadline=None)
def test_twin_softmax_kernel_is_intops(data, n_cols, frac_bits, m, bits, spread):
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    x = rng.integers(-spread, spread + 1, size=(4, n_cols)).clip(-32768, 32767).astype(np.int16)
    x[0] = 7                                                  # equal scores: the largest row sum
    b_int, c_int = intops.lis_exp_constants(frac_bits)
    want = intops.twin_softmax(x, frac_bits, b_int, c_int, m, bits)
    out = np.empty(x.shape, np.uint8)
    w = np.empty(x.shape, np.float32)
    bad, wmax = fastkernels.twin_softmax_rows(x, frac_bits, b_int, c_int, m, bits, out, w)
    assert bad == 0
    np.testing.assert_array_equal(out, want)
    dec = intops.twin_decode_softmax(want, m, bits)
    np.testing.assert_array_equal(w, dec)
    assert wmax == int(dec.sum(axis=1).max())
    # the split weights of the two ranges add up to the same decoding
    hi, lo = np.empty(x.shape, np.float32), np.empty(x.shape, np.float32)
    assert fastkernels.twin_weights(want, m, bits, hi, lo)[0] == 0
    np.testing.assert_array_equal(hi.astype(np.int64) * 2 ** m + lo.astype(np.int64), dec)


def test_twin_softmax_rows_past_the_rounding_shift_run_the_reference():
    """Row sums from 2**39 (many equal scores) would shift by more than 62 bits: the kernel
    reports them instead of computing them; 2**38 still computes."""
    b_int, c_int = intops.lis_exp_constants(6)
    x = np.zeros((1, 300), np.int16)                          # 300 (c_int << 15) < 2**38
    out = np.empty(x.shape, np.uint8)
    bad, _ = fastkernels.twin_softmax_rows(x, 6, b_int, c_int, 4, 8, out, np.empty((0, 0), np.float32))
    assert bad == 0
    np.testing.assert_array_equal(out, intops.twin_softmax(x, 6, b_int, c_int, 4, 8))
    x = np.zeros((1, 1500), np.int16)
    out = np.empty(x.shape, np.uint8)
    bad, _ = fastkernels.twin_softmax_rows(x, 6, b_int, c_int, 4, 8, out, np.empty((0, 0), np.float32))
    assert bad == 1


def _linear_twin_graph(rng, k, n, m, bits, bias_hi=5000):
    levels = (1 << (bits - 1)) - 1
    w = rng.integers(-127, 128, size=(n, k)).astype(np.int8)
    mult, shift = intops.dyadic(rng.uniform(0.5, 2, size=n) / (levels * 128 * np.sqrt(k) * 2 ** m / 50))
    tensors = {"x": Tensor("x", (5, k), 8, True, 1.0, 0), "y": Tensor("y", (5, n), 8, True, 1.0, 0)}
    op = Op("fc2", "linear_twin", ["x"], ["y"], {"zp_out": 3, "out_bits": 8, "m": m, "bits": bits},
            {"weight": w, "bias": rng.integers(-bias_hi, bias_hi, size=n).astype(np.int32),
             "mult": mult.astype(np.int16), "shift": shift})
    g = IntGraph(tensors, [op], ["x"], ["y"])
    g.validate()
    return g, levels


@pytest.mark.parametrize("k,m,bits", [(16, 0, 8), (768, 3, 8), (3000, 2, 8), (200, 12, 6), (64, 5, 2)])
def test_linear_twin_is_intops(k, m, bits):
    """Two exact products (positive and negative codes), split along K where one would round."""
    rng = np.random.default_rng(k + m)
    g, levels = _linear_twin_graph(rng, k, 24, m, bits)
    x = rng.integers(-levels, levels + 1, size=(4, 5, k)).astype(np.int8)
    if m <= 3:                                     # one-signed extreme rows (fit in int32 for small m)
        x[0] = levels
        x[1] = -levels
    fe = FastExecutor(g)
    assert fe.fused_ops == ["fc2"]
    assert_same_tensors(g, x, all_fast=True)


def test_linear_twin_errors_are_the_reference_errors():
    rng = np.random.default_rng(3)
    g, levels = _linear_twin_graph(rng, 768, 16, 12, 8)
    x = np.full((2, 5, 768), levels, np.int8)
    g.op("fc2").params["weight"][:] = 127
    assert "twin linear accumulator" in assert_same_error(g, x)        # (pos << m) beyond int32
    g, levels = _linear_twin_graph(rng, 32, 16, 2, 6)
    x = rng.integers(-levels, levels + 1, size=(2, 5, 32)).astype(np.int8)
    x[1, 0, 0] = levels + 1                                            # not a 6-bit twin code
    assert "twin linear input" in assert_same_error(g, x)


def _tiny_method_graph(setting, seed=1):
    from sw.quantize import quantize_input, random_images
    model = small_timm("vit", seed, 16, 4, 2, 8, 2, 2.0)
    images = random_images(model, 9, seed=2)
    g = method_graph(setting, model, images[:6])
    return g, quantize_input(images[6:], g)


def test_twin_attention_with_large_m_splits_the_product(monkeypatch):
    """With a large m the combined twin weights (mag << m) are too large for one exact
    float32 product: one product per range, combined in float64."""
    g, x = _tiny_method_graph("ptq4vit-8")
    for op in g.ops:
        if op.kind in ("twin_softmax", "attn_value_twin"):
            op.attrs["m"] = 14
    calls = []
    real = fastkernels.requantize_heads_twin
    monkeypatch.setattr(fastkernels, "requantize_heads_twin", lambda *a: calls.append(1) or real(*a))
    assert_same_tensors(g, x, all_fast=True)
    assert calls


def test_attention_weights_from_codes_when_the_softmax_runs_the_reference():
    """An attention x V whose softmax ran the reference makes its weights from the codes."""
    for setting in ("fqvit-4", "fqvit-8", "ivit", "ptq4vit-8", "ptq4vit-6"):
        g, x = _tiny_method_graph(setting)
        for op in g.ops:
            if op.kind in ("softmax", "shiftmax", "twin_softmax"):
                op.attrs["unknown"] = 1                            # the kernel does not take it
        fe = FastExecutor(g)
        assert any(o.kind.startswith("attn_value") and o.name in fe.fused_ops for o in g.ops)
        assert_same_tensors(g, x, all_fast=True)


def test_shiftgelu_table_is_intops():
    g, x = _tiny_method_graph("ivit")
    fe = FastExecutor(g)
    for op in g.ops:
        if op.kind == "shiftgelu":
            a, p = op.attrs, op.params
            codes = np.arange(-128, 128)
            want = intops.shiftgelu(codes, a["x0"], a["n"], p["mult"], p["shift"], a["zp_out"])
            np.testing.assert_array_equal(fe._fast[op.name].table, want)


def test_ivit_overflows_are_the_reference_errors():
    g, x = _tiny_method_graph("ivit")
    g.op("blocks.0.attn.softmax").attrs["n"] = 30                # row sums beyond 2**31 - 1
    assert "Shiftmax row sum" in assert_same_error(g, x)
    g, x = _tiny_method_graph("ivit")
    op = g.op("blocks.0.mlp.act")
    op.attrs.update(x0=-1000, n=30)                               # e(0) + e(0) beyond 2**31 - 1
    assert "blocks.0.mlp.act" not in FastExecutor(g).fused_ops
    assert "ShiftGELU sum" in assert_same_error(g, x)


def test_twin_attention_accumulator_overflow_is_the_reference_error():
    g, x = _tiny_method_graph("ptq4vit-8")
    for op in g.ops:
        if op.kind in ("twin_softmax", "attn_value_twin"):
            op.attrs["m"] = 20                                     # (acc_hi << 20) beyond int32
    assert "twin attention x V accumulator" in assert_same_error(g, x)
