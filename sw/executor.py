"""The integer reference executor: runs an :class:`~sw.graph.IntGraph` with integers only.

Every op is one call into :mod:`sw.intops`, so the arithmetic is defined in exactly one
place.  Arrays carry the batch on axis 0.  Every intermediate is range-checked by the op
functions (:class:`~sw.intops.IntegerOverflowError` instead of silent wrapping), and every
op output is checked against its tensor's declared width.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from . import intops
from .graph import IntGraph, Op


def _qkv_split(qkv: np.ndarray, heads: int, head_dim: int):
    """``[B, T, 3D]`` -> three ``[B, H, T, dh]`` arrays (timm's q | k | v column order)."""
    b, t, _ = qkv.shape
    x = qkv.reshape(b, t, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
    return x[0], x[1], x[2]


def run_patchify(op: Op, x):
    return intops.patchify(x, op.attrs["patch"])


def run_linear(op: Op, x):
    p, a = op.params, op.attrs
    if "weight_bits" in a:                   # low-bit weights (Q-ViT) stored in int8
        intops.check_range(p["weight"], *_signed_range(a["weight_bits"]), f"{op.name} weight")
    acc = intops.linear(x, p["weight"], p["bias"])
    return intops.requantize(acc, p["mult"], p["shift"], a["zp_out"], *_guaranteed_range(op))


def run_concat_tokens(op: Op, x):
    tokens = np.broadcast_to(op.params["tokens"].astype(np.int64), (x.shape[0],) + op.params["tokens"].shape)
    return np.concatenate([tokens, x], axis=1)


def run_add(op: Op, a, b=None):
    p, at = op.params, op.attrs
    if b is None:
        b = p["const"][None]
    return intops.residual_add(a, b, at["zp_a"], at["zp_b"], p["mult_a"], p["mult_b"], p["shift"], at["zp_out"])


def run_layernorm(op: Op, x):
    p, a = op.params, op.attrs
    return intops.ptf_layernorm(x, a["zp_in"], p["alpha"], p["mult"], p["shift"], p["offset"],
                                *_guaranteed_range(op))


def _windows(op: Op) -> int:
    """The number of attention windows of an attention op (Swin; 1 for a ViT)."""
    return int(op.attrs.get("windows", 1))


def _per_window(x: np.ndarray, nw: int) -> np.ndarray:
    """``[B, nW*N, ...]`` -> ``[B*nW, N, ...]``: each window an independent sequence."""
    b, t = x.shape[:2]
    if t % nw:
        raise ValueError(f"{t} tokens do not split into {nw} windows")
    return x.reshape((b * nw, t // nw) + x.shape[2:])


def _heads_to_tokens(acc: np.ndarray, batch: int) -> np.ndarray:
    """``[B*nW, H, N, dh]`` per-head outputs -> ``[B, nW*N, H*dh]`` (heads concatenated)."""
    bw, h, n, dh = acc.shape
    return acc.transpose(0, 2, 1, 3).reshape(batch, (bw // batch) * n, h * dh)


def run_qk_scores(op: Op, qkv):
    a, p = op.attrs, op.params
    nw = _windows(op)
    q, k, _ = _qkv_split(_per_window(qkv, nw), a["heads"], a["head_dim"])
    acc = intops.int_matmul(q, np.swapaxes(k, -1, -2), "q @ k^T")          # [B*nW, H, N, N]
    s = intops.requantize(acc, p["mult"], p["shift"], 0, intops.INT16_MIN, intops.INT16_MAX)
    if "bias" in p or "mask" in p:
        s = intops.score_bias(s.reshape((qkv.shape[0], nw) + s.shape[1:]), p.get("bias"), p.get("mask"))
    return s.reshape((qkv.shape[0], nw * a["heads"]) + s.shape[-2:])


def run_softmax(op: Op, x):
    a = op.attrs
    fn = intops.lis_softmax if a["mode"] == "lis" else intops.uniform_softmax
    return fn(x, a["frac_bits"], a["b_int"], a["c_int"])


def run_attn_value(op: Op, codes, qkv):
    a = op.attrs
    nw = _windows(op)
    _, _, v = _qkv_split(_per_window(qkv, nw), a["heads"], a["head_dim"])
    fn = intops.attn_value_lis if a["mode"] == "lis" else intops.attn_value_uniform
    acc = fn(codes.reshape(v.shape[:2] + codes.shape[-2:]), v)              # [B*nW, H, N, dh]
    acc = _heads_to_tokens(acc, qkv.shape[0])
    return intops.requantize(acc, op.params["mult"], op.params["shift"], a["zp_out"],
                             *_signed_range(a.get("out_bits", 8)))


def run_gelu(op: Op, x):
    return intops.gelu_lut(x, op.params["table"])


def run_window_partition(op: Op, x):
    a = op.attrs
    return intops.window_partition(x, a["grid"], a["window"], a["shift"])


def run_window_reverse(op: Op, x):
    a = op.attrs
    return intops.window_reverse(x, a["grid"], a["window"], a["shift"])


def run_patch_merge(op: Op, x):
    return intops.patch_merge(x, op.attrs["grid"])


def run_select_tokens(op: Op, x):
    idx = list(op.attrs["indices"])
    return x[:, idx, :].reshape(x.shape[0], -1)


def run_token_mean(op: Op, x):
    p, a = op.params, op.attrs
    return intops.token_mean(x, a["zp_in"], p["mult"], p["shift"], a["zp_out"], a["start"])


# -- I-ViT (sw/methods/ivit.py) --------------------------------------------------------

def run_ilayernorm(op: Op, x):
    p = op.params
    return intops.ilayernorm(x, p["mult"], p["shift"], p["offset"])


def run_add_wide(op: Op, a, b=None):
    p = op.params
    if b is None:
        b = p["const"][None]
    return intops.residual_add_wide(a, b, p["mult_a"], p["mult_b"], p["shift"], *_guaranteed_range(op))


def run_shiftmax(op: Op, x):
    a = op.attrs
    return intops.shiftmax(x, a["x0"], a["n"], a["out_bits"])


def run_attn_value_wide(op: Op, probs, qkv):
    a = op.attrs
    _, _, v = _qkv_split(_per_window(qkv, _windows(op)), a["heads"], a["head_dim"])
    acc = intops.attn_value_wide(probs.reshape(v.shape[:2] + probs.shape[-2:]), v)
    acc = _heads_to_tokens(acc, qkv.shape[0])
    return intops.requantize(acc, op.params["mult"], op.params["shift"], a["zp_out"])


def run_shiftgelu(op: Op, x):
    a = op.attrs
    return intops.shiftgelu(x, a["x0"], a["n"], op.params["mult"], op.params["shift"], a["zp_out"])


# -- PTQ4ViT (sw/methods/ptq4vit.py) ----------------------------------------------------

def run_twin_softmax(op: Op, x):
    a = op.attrs
    return intops.twin_softmax(x, a["frac_bits"], a["b_int"], a["c_int"], a["m"], a["bits"])


def run_attn_value_twin(op: Op, codes, qkv):
    a = op.attrs
    _, _, v = _qkv_split(_per_window(qkv, _windows(op)), a["heads"], a["head_dim"])
    acc = intops.attn_value_twin(codes.reshape(v.shape[:2] + codes.shape[-2:]), v, a["m"], a["bits"])
    acc = _heads_to_tokens(acc, qkv.shape[0])
    return intops.requantize(acc, op.params["mult"], op.params["shift"], a["zp_out"], *_guaranteed_range(op))


def run_twin_gelu(op: Op, x):
    return intops.gelu_lut(x, op.params["table"])


def run_linear_twin(op: Op, x):
    p, a = op.params, op.attrs
    acc = intops.linear_twin(x, p["weight"], p["bias"], a["m"], a["bits"])
    return intops.requantize(acc, p["mult"], p["shift"], a["zp_out"], *_guaranteed_range(op))


#: The function that runs each op kind.
OP_RUNNERS: dict[str, Callable] = {
    "patchify": run_patchify, "linear": run_linear, "concat_tokens": run_concat_tokens,
    "add": run_add, "layernorm": run_layernorm, "qk_scores": run_qk_scores,
    "softmax": run_softmax, "attn_value": run_attn_value, "gelu": run_gelu,
    "select_tokens": run_select_tokens, "token_mean": run_token_mean,
    "window_partition": run_window_partition, "window_reverse": run_window_reverse,
    "patch_merge": run_patch_merge,
    "ilayernorm": run_ilayernorm, "add_wide": run_add_wide, "shiftmax": run_shiftmax,
    "attn_value_wide": run_attn_value_wide, "shiftgelu": run_shiftgelu,
    "twin_softmax": run_twin_softmax, "attn_value_twin": run_attn_value_twin,
    "twin_gelu": run_twin_gelu, "linear_twin": run_linear_twin,
}


def _signed_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _guaranteed_range(op: Op) -> tuple[int, int] | None:
    """The output range an op's arithmetic clamps to, or None when it follows the data."""
    if op.kind in ("linear", "linear_twin", "attn_value_twin", "add_wide"):
        return _signed_range(op.attrs["out_bits"])
    if op.kind == "qk_scores":
        return intops.INT16_MIN, intops.INT16_MAX
    if op.kind == "softmax":
        return (0, intops.LIS_ZERO_CODE) if op.attrs["mode"] == "lis" else (0, 255)
    if op.kind == "layernorm":
        return _signed_range(op.attrs.get("out_bits", 8))
    if op.kind == "attn_value":
        return _signed_range(op.attrs.get("out_bits", 8))
    if op.kind in ("add", "gelu", "token_mean", "ilayernorm", "attn_value_wide", "shiftgelu"):
        return intops.INT8_MIN, intops.INT8_MAX
    if op.kind == "shiftmax":
        return 0, (1 << (op.attrs["out_bits"] - 1)) - 1
    if op.kind == "twin_softmax":
        return 0, (1 << op.attrs["bits"]) - 1
    return None


def run_op(graph: IntGraph, op: Op, *inputs: np.ndarray) -> np.ndarray:
    """Run one op on batched integer inputs and check its output against its tensor's width.

    Ops that clamp their result are checked once, by comparing the clamp range with the
    tensor's declared width; the others (data movement) are checked value by value.
    """
    out = OP_RUNNERS[op.kind](op, *inputs)
    lo, hi = graph.tensors[op.outputs[0]].range
    clamp = _guaranteed_range(op)
    if clamp is None or clamp[0] < lo or clamp[1] > hi:
        intops.check_range(out, lo, hi, f"{op.name} output")
    return out.astype(_storage_dtype(lo, hi), copy=False)


def _storage_dtype(lo: int, hi: int) -> np.dtype:
    """The narrowest numpy integer type holding ``[lo, hi]``: tensors are stored at their
    declared width (which also lets the next op skip re-checking their range)."""
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        if np.iinfo(dt).min <= lo and hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def input_env(graph: IntGraph, inputs) -> dict[str, np.ndarray]:
    """The graph inputs, checked (names, integer dtype, per-sample shape, declared range)
    and stored at their declared width: the executors' starting environment.  ``inputs``
    is the array of the single graph input or a dict by input name (batch on axis 0)."""
    if not isinstance(inputs, dict):
        if len(graph.inputs) != 1:
            raise ValueError(f"graph has inputs {graph.inputs}: pass a dict")
        inputs = {graph.inputs[0]: inputs}
    env: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        if name not in inputs:
            raise ValueError(f"missing graph input {name!r}")
        x = np.asarray(inputs[name])
        t = graph.tensors[name]
        if x.dtype.kind not in "iu":
            raise TypeError(f"input {name!r} must be an integer array, got {x.dtype}")
        if tuple(x.shape[1:]) != tuple(t.shape):
            raise ValueError(f"input {name!r} has shape {tuple(x.shape[1:])} per sample; "
                             f"the model expects {tuple(t.shape)}")
        lo, hi = t.range
        intops.check_range(x, lo, hi, f"input {name!r}")
        env[name] = x.astype(_storage_dtype(lo, hi))
    return env


def execute(graph: IntGraph, inputs: np.ndarray | dict[str, np.ndarray], keep: bool = False,
            fast: bool = False):
    """Run ``graph`` on integer inputs (batch on axis 0).

    ``inputs`` is the array of the single graph input or a dict by input name.  Returns the
    graph outputs as a dict of int64 arrays, or every tensor when ``keep`` is true.
    ``fast``: compute the same integers with the fused kernels of :mod:`sw.fastexec`.
    """
    if fast:
        from .fastexec import execute_fast
        return execute_fast(graph, inputs, keep)
    env = input_env(graph, inputs)
    last_use = {}
    for i, op in enumerate(graph.ops):
        for t in op.inputs:
            last_use[t] = i
    for i, op in enumerate(graph.ops):
        env[op.outputs[0]] = run_op(graph, op, *(env[t] for t in op.inputs))
        if not keep:
            for t in op.inputs:
                if last_use[t] == i and t not in graph.outputs:
                    del env[t]
    names = env if keep else graph.outputs
    return {name: env[name].astype(np.int64) for name in names}
