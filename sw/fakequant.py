"""Fake-quantized float model of an integer graph (torch, float64).

Every op dequantizes its inputs with the tensors' scales and zero points, computes in float
what the float model computes (float LayerNorm with gamma / beta / eps, float exponential
and ``log2`` for the softmax, the exact GELU), and rounds its output onto the output
tensor's integer grid.  This is the "quantize, compute in float, dequantize" model the
public FQ-ViT / PTQ4ViT code evaluates, and the baseline the integer executor is compared
with.

Where the two are designed to be identical they are bit-exact: ``linear`` (integer
weights, float64 matmul of integers, then the dyadic ``mult * 2**-shift`` and half-up
rounding, all exact in float64), ``patchify``, ``concat_tokens`` and ``select_tokens``.
Elsewhere the integer executor approximates the float op (integer 1/sqrt, the polynomial
exponential, dyadic residual scales) and the two may differ by a rounding step.
"""
from __future__ import annotations

import numpy as np
import torch

from . import intops
from .graph import IntGraph, Op

__all__ = ["fakequant_execute", "fakequant_op", "EXACT_KINDS"]

#: Op kinds for which the fake-quant model and the integer executor must agree bit for bit.
EXACT_KINDS = ("patchify", "linear", "concat_tokens", "select_tokens")


def _f(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=torch.float64)


def _scale(graph: IntGraph, name: str) -> torch.Tensor:
    return _f(graph.tensors[name].scale)


def _deq(graph: IntGraph, name: str, q: torch.Tensor) -> torch.Tensor:
    t = graph.tensors[name]
    return (q - t.zero_point) * _scale(graph, name)


def _quant(graph: IntGraph, name: str, y: torch.Tensor) -> torch.Tensor:
    """Round ``y`` half up onto the tensor's grid and clamp to its width."""
    t = graph.tensors[name]
    lo, hi = t.range
    return torch.clamp(torch.floor(y / _scale(graph, name) + 0.5) + t.zero_point, lo, hi)


def _qkv(x: torch.Tensor, heads: int, dh: int):
    b, t, _ = x.shape
    return x.reshape(b, t, 3, heads, dh).permute(2, 0, 3, 1, 4).unbind(0)


def fakequant_op(graph: IntGraph, op: Op, *inputs: torch.Tensor) -> torch.Tensor:
    """One op: float64 tensors holding integers in, float64 tensor holding integers out."""
    a, p, m = op.attrs, op.params, op.meta
    out = op.outputs[0]
    k = op.kind
    if k == "patchify":
        return _f(intops.patchify(inputs[0].numpy().astype(np.int64), a["patch"]))
    if k == "concat_tokens":
        tok = _f(p["tokens"]).expand(inputs[0].shape[0], -1, -1)
        return torch.cat([tok, inputs[0]], dim=1)
    if k == "select_tokens":
        return inputs[0][:, list(a["indices"]), :].reshape(inputs[0].shape[0], -1)
    if k == "linear":
        acc = inputs[0] @ _f(p["weight"]).T + _f(p["bias"])      # the bias folds the zero point
        y = torch.floor(acc * _f(p["mult"]) * torch.pow(2.0, -_f(p["shift"])) + 0.5) + a["zp_out"]
        lo, hi = graph.tensors[out].range
        return torch.clamp(y, lo, hi)
    if k == "add":
        x = _deq(graph, op.inputs[0], inputs[0])
        if len(inputs) == 2:
            other = _deq(graph, op.inputs[1], inputs[1])
        else:
            other = (_f(p["const"]) - a["zp_b"]) * _f(m["const_scale"])
        return _quant(graph, out, x + other)
    if k == "layernorm":
        x = _deq(graph, op.inputs[0], inputs[0])
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + float(m["eps"])) * _f(m["gamma"]) + _f(m["beta"])
        return _quant(graph, out, y)
    if k == "qk_scores":
        x = _deq(graph, op.inputs[0], inputs[0])
        q, kk, _ = _qkv(x, a["heads"], a["head_dim"])
        return _quant(graph, out, (q @ kk.transpose(-2, -1)) * float(m["scale"]))
    if k == "softmax":
        prob = torch.softmax(_deq(graph, op.inputs[0], inputs[0]), dim=-1)
        if a["mode"] == "lis":
            code = torch.round(-torch.log2(torch.clamp(prob, min=1e-300)))
            return torch.clamp(code, 0, intops.LIS_ZERO_CODE)
        return torch.clamp(torch.round(prob * 256), 0, 255)
    if k == "attn_value":
        codes, qkv = inputs
        _, _, v = _qkv(_deq(graph, op.inputs[1], qkv), a["heads"], a["head_dim"])
        if a["mode"] == "lis":
            w = torch.where(codes < intops.LIS_ZERO_CODE, torch.pow(2.0, -codes), torch.zeros_like(codes))
        else:
            w = codes / 256.0
        y = w @ v                                             # [B, H, T, dh]
        b, h, t, dh = y.shape
        return _quant(graph, out, y.transpose(1, 2).reshape(b, t, h * dh))
    if k == "gelu":
        x = _deq(graph, op.inputs[0], inputs[0])
        approx = m.get("approximate", "none")
        return _quant(graph, out, torch.nn.functional.gelu(x, approximate=str(approx)))
    if k == "token_mean":
        x = _deq(graph, op.inputs[0], inputs[0])[:, a["start"]:, :]
        return _quant(graph, out, x.mean(dim=1))
    raise ValueError(f"op {op.name!r}: no fake-quant form for kind {k!r}")


def fakequant_execute(graph: IntGraph, inputs: np.ndarray, keep: bool = False):
    """Run the fake-quant model on the graph's integer input (batch on axis 0).

    Returns the outputs (or every tensor with ``keep``) as int64 numpy arrays on the same
    integer grids as :func:`sw.executor.execute`, so the two compare directly.
    """
    env = {graph.inputs[0]: _f(np.asarray(inputs, dtype=np.int64))}
    with torch.no_grad():
        for op in graph.ops:
            env[op.outputs[0]] = fakequant_op(graph, op, *(env[t] for t in op.inputs))
    names = graph.tensors if keep else graph.outputs
    return {n: env[n].numpy().astype(np.int64) for n in names if n in env}


def dequantize(graph: IntGraph, name: str, q: np.ndarray) -> np.ndarray:
    """Real values of integer tensor ``name``."""
    t = graph.tensors[name]
    return (np.asarray(q, dtype=np.float64) - t.zero_point) * np.asarray(t.scale, dtype=np.float64)

