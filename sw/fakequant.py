"""Fake-quantized float model of an integer graph (torch, float64).

Tensors hold integers on the graph's grids; ops compute in float64.  The nonlinear ops are
computed in float: LayerNorm with float mean, variance, gamma, beta and eps; softmax with
float division and ``round(log2(1/p))`` (LIS) or ``round(256 p)``, its exponential being
I-BERT's second-order polynomial as in FQ-ViT's own fake-quant code; GELU with the exact
float function.  The integer executor replaces these with integer arithmetic (integer mean
and 1/sqrt, integer polynomial and no divide, a lookup table), so comparing the two
isolates that.

The requantizing linear steps use the graph's dyadic scales (``mult * 2**-shift``), as a
fake-quant model of a dyadic-requantizing accelerator does.  Float64 holds every product
exactly, so these ops are bit-exact with the integer executor by design (:data:`EXACT_KINDS`):
``linear``, ``add``, ``qk_scores`` (with Swin's windows, relative position bias and shift
mask), ``attn_value``, ``token_mean``, ``gelu`` (the table is the float GELU rounded onto the
same grid), ``patchify``, ``concat_tokens``, ``select_tokens``, and Swin's data movement
``window_partition``, ``window_reverse``, ``patch_merge``.  The op kinds of the other methods (I-ViT, PTQ4ViT) have their twins in
:mod:`sw.methods.twins`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import intops
from .graph import IntGraph, Op

__all__ = ["fakequant_execute", "fakequant_op", "EXACT_KINDS"]

#: Op kinds for which the fake-quant model and the integer executor must agree bit for bit.
EXACT_KINDS = ("patchify", "linear", "concat_tokens", "select_tokens", "add", "qk_scores",
               "attn_value", "token_mean", "gelu", "window_partition", "window_reverse", "patch_merge")


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


def _requant(graph: IntGraph, name: str, acc: torch.Tensor, mult, shift, zp: int) -> torch.Tensor:
    """``acc * mult * 2**-shift`` rounded half up, plus ``zp``, clamped to the tensor's width."""
    lo, hi = graph.tensors[name].range
    y = torch.floor(acc * _f(mult) * torch.pow(2.0, -_f(shift)) + 0.5) + zp
    return torch.clamp(y, lo, hi)


def _qkv(x: torch.Tensor, heads: int, dh: int):
    b, t, _ = x.shape
    return x.reshape(b, t, 3, heads, dh).permute(2, 0, 3, 1, 4).unbind(0)


def _windows(x: torch.Tensor, op: Op) -> torch.Tensor:
    """``[B, nW*N, C]`` -> ``[B*nW, N, C]`` (Swin's windows as independent sequences)."""
    nw = int(op.attrs.get("windows", 1))
    b, t, c = x.shape
    return x.reshape(b * nw, t // nw, c)


def _data_movement(fn, x: torch.Tensor, *args) -> torch.Tensor:
    return _f(fn(x.numpy().astype(np.int64), *args))


def _poly_softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax with the second-order polynomial exponential of I-BERT, in float.

    As FQ-ViT's fake-quant Log-Int-Softmax does: ``e**x = 2**-z e**r`` with
    ``r = x + z ln 2`` in ``(-ln 2, 0]`` and ``e**r ~ A r**2 + B r + 1``.  The integer
    executor evaluates the same polynomial with integer constants (:func:`sw.intops.int_exp`).
    """
    x = x - x.max(dim=-1, keepdim=True).values
    z = torch.floor(-x / math.log(2.0))
    r = x + z * math.log(2.0)
    e = (intops._EXP_A * r + intops._EXP_B) * r + 1.0
    e = e * torch.pow(2.0, -z)
    return e / e.sum(dim=-1, keepdim=True)


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
        return _requant(graph, out, acc, p["mult"], p["shift"], a["zp_out"])
    if k == "add":
        acc = (inputs[0] - a["zp_a"]) * _f(p["mult_a"])
        other = inputs[1] if len(inputs) == 2 else _f(p["const"])
        acc = acc + (other - a["zp_b"]) * _f(p["mult_b"])
        return _requant(graph, out, acc, 1, p["shift"], a["zp_out"])
    if k == "layernorm":
        x = _deq(graph, op.inputs[0], inputs[0])
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + float(m["eps"])) * _f(m["gamma"]) + _f(m["beta"])
        return _quant(graph, out, y)
    if k == "qk_scores":
        b = inputs[0].shape[0]
        q, kk, _ = _qkv(_windows(inputs[0], op), a["heads"], a["head_dim"])
        s = _requant(graph, out, q @ kk.transpose(-2, -1), p["mult"], p["shift"], 0)   # [B*nW, H, N, N]
        if "bias" in p or "mask" in p:
            nw = int(a.get("windows", 1))
            s = s.reshape((b, nw) + s.shape[1:])
            if "bias" in p:
                s = s + _f(p["bias"])
            if "mask" in p:
                s = s + _f(p["mask"])[None, :, None]
            lo, hi = graph.tensors[out].range
            s = torch.clamp(s, lo, hi)
        return s.reshape((b, -1) + s.shape[-2:])
    if k == "softmax":
        prob = _poly_softmax(_deq(graph, op.inputs[0], inputs[0]))
        if a["mode"] == "lis":
            code = torch.round(-torch.log2(torch.clamp(prob, min=1e-300)))
            return torch.clamp(code, 0, intops.LIS_ZERO_CODE)
        return torch.clamp(torch.round(prob * 256), 0, 255)
    if k == "attn_value":
        codes, qkv = inputs
        batch = qkv.shape[0]
        _, _, v = _qkv(_windows(qkv, op), a["heads"], a["head_dim"])
        codes = codes.reshape(v.shape[:2] + codes.shape[-2:])
        if a["mode"] == "lis":
            w = torch.where(codes < intops.LIS_ZERO_CODE, torch.pow(2.0, intops.LIS_SHIFT_BASE - codes),
                            torch.zeros_like(codes))
        else:
            w = codes
        acc = w @ v                                           # [B*nW, H, N, dh]
        b, h, t, dh = acc.shape
        return _requant(graph, out, acc.transpose(1, 2).reshape(batch, (b // batch) * t, h * dh),
                        p["mult"], p["shift"], a["zp_out"])
    if k == "gelu":
        x = _deq(graph, op.inputs[0], inputs[0])
        approx = m.get("approximate", "none")
        return _quant(graph, out, torch.nn.functional.gelu(x, approximate=str(approx)))
    if k == "window_partition":
        return _data_movement(intops.window_partition, inputs[0], a["grid"], a["window"], a["shift"])
    if k == "window_reverse":
        return _data_movement(intops.window_reverse, inputs[0], a["grid"], a["window"], a["shift"])
    if k == "patch_merge":
        return _data_movement(intops.patch_merge, inputs[0], a["grid"])
    if k == "token_mean":
        acc = (inputs[0][:, a["start"]:, :] - a["zp_in"]).sum(dim=1)
        return _requant(graph, out, acc, p["mult"], p["shift"], a["zp_out"])
    from .methods.twins import twin_op         # the I-ViT and PTQ4ViT op kinds
    return twin_op(graph, op, *inputs)


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
