"""Fake-quant twins (torch, float64) of the I-ViT and PTQ4ViT op kinds.

Each twin computes in float64 on tensors that hold integers, independently of
:mod:`sw.intops` (torch floor divisions and power-of-two scalings, exact below ``2**53``).

* I-ViT's ops are integer recipes in the authors' own fake-quant code, so every I-ViT twin
  reproduces the integer executor bit for bit by design (:data:`EXACT_KINDS`).  The same
  functions, with straight-through gradients, are the forward pass of the QAT fine-tune
  (:mod:`sw.methods.ivit_qat`).
* PTQ4ViT's reference code is fake-quant only; its twins here follow it: float softmax
  (with the polynomial exponential, as :mod:`sw.fakequant` does for FQ-ViT) rounded onto the
  twin grids, float GELU rounded onto the twin grids (bit-exact with the executor's table by
  design, as FQ-ViT's GELU), and the twin products decoded in float (exact).
"""
from __future__ import annotations

import torch

from .. import intops
from ..graph import IntGraph, Op

__all__ = ["EXACT_KINDS", "twin_op", "shift_exp", "shiftmax", "shift_sigmoid", "ilayernorm_n",
           "ln_affine", "requant", "floor_div"]

#: New op kinds whose twin is bit-exact with the integer executor by design.
EXACT_KINDS = ("ilayernorm", "add_wide", "shiftmax", "attn_value_wide", "shiftgelu",
               "attn_value_twin", "twin_gelu", "linear_twin")

_F64 = torch.float64


def _f(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=_F64)


def floor_div(a: torch.Tensor, b) -> torch.Tensor:
    """``floor(a / b)`` of integer-valued float64 tensors (exact below ``2**53``)."""
    return torch.div(a, _f(b) if not isinstance(b, torch.Tensor) else b, rounding_mode="floor")


def requant(acc: torch.Tensor, mult, shift, zp: int, lo: int, hi: int) -> torch.Tensor:
    """``clamp(floor(acc mult 2**-shift + 1/2) + zp)``: the dyadic requantizer."""
    y = torch.floor(acc * _f(mult) * torch.pow(2.0, -_f(shift)) + 0.5) + zp
    return torch.clamp(y, lo, hi)


# ------------------------------------------------------------------------------ I-ViT
def shift_exp(x: torch.Tensor, x0: int, n: int) -> torch.Tensor:
    """I-ViT's ``int_exp_shift``: ``floor((r / 2 - x0) 2**(n - q))`` (see :func:`sw.intops.shift_exp`)."""
    xp = x + torch.floor(x / 2) - torch.floor(x / 16)
    xp = torch.clamp(xp, min=float(n * x0))
    q = floor_div(xp, float(x0))
    r = xp - q * x0
    return torch.floor((r / 2 - x0) * torch.pow(2.0, n - q))


def shiftmax(x: torch.Tensor, x0: int, n: int, out_bits: int) -> torch.Tensor:
    e = shift_exp(x - x.amax(dim=-1, keepdim=True), x0, n)
    total = e.sum(dim=-1, keepdim=True)
    if float(total.max()) > intops.IVIT_DIVIDEND:
        raise intops.IntegerOverflowError("Shiftmax row sum exceeds 2**31 - 1")
    factor = floor_div(torch.full_like(total, float(intops.IVIT_DIVIDEND)), total)
    return torch.floor(e * factor / 2.0 ** (32 - out_bits))


def shift_sigmoid(x: torch.Tensor, x0: int, n: int) -> torch.Tensor:
    m = torch.clamp(x, min=0)
    e1 = shift_exp(x - m, x0, n)
    total = e1 + shift_exp(-m, x0, n)
    factor = floor_div(torch.full_like(total, float(intops.IVIT_DIVIDEND)), total)
    return torch.floor(e1 * factor / 2.0 ** (32 - intops.IVIT_SIGMOID_BITS))


def ilayernorm_n(x: torch.Tensor) -> torch.Tensor:
    """I-LayerNorm up to the normalised value ``n`` (rounded mean, Newton root, divide)."""
    c = x.shape[-1]
    s = x.sum(dim=-1, keepdim=True)
    y = x - floor_div(2 * s + c, float(2 * c))
    v = (y * y).sum(dim=-1, keepdim=True)
    k = torch.full_like(v, float(intops.ILN_SQRT_START))
    for _ in range(intops.ILN_SQRT_STEPS):
        k = torch.floor((k + floor_div(v, k)) / 2)
    factor = floor_div(torch.full_like(k, float(intops.IVIT_DIVIDEND)), k)
    return torch.floor(y * factor / 2)


def ln_affine(n: torch.Tensor, mult, shift, offset, lo: int = -128, hi: int = 127) -> torch.Tensor:
    """``floor((floor(n mult / 2**(shift - 16)) + K + 2**15) / 2**16)``, clamped."""
    frac = intops.LN_OFFSET_FRAC
    y = torch.floor(n * _f(mult) * torch.pow(2.0, -(_f(shift) - frac)))
    y = torch.floor((y + _f(offset) + 2.0 ** (frac - 1)) / 2.0 ** frac)
    return torch.clamp(y, lo, hi)


def _qkv(x: torch.Tensor, heads: int, dh: int):
    b, t, _ = x.shape
    return x.reshape(b, t, 3, heads, dh).permute(2, 0, 3, 1, 4).unbind(0)


def _heads_out(acc: torch.Tensor) -> torch.Tensor:
    b, h, t, dh = acc.shape
    return acc.transpose(1, 2).reshape(b, t, h * dh)


# ------------------------------------------------------------------------------ PTQ4ViT
def twin_softmax_codes(p: torch.Tensor, m: int, bits: int) -> torch.Tensor:
    """Float probabilities onto unsigned twin codes (round half up in the chosen range)."""
    lv = intops.twin_levels(bits)
    high = p >= 2.0 ** -m
    u_hi = torch.clamp(torch.floor(p * lv + 0.5), 0, lv) + (1 << (bits - 1))
    u_lo = torch.clamp(torch.floor(p * lv * 2.0 ** m + 0.5), 0, lv)
    return torch.where(high, u_hi, u_lo)


def twin_decode_softmax(codes: torch.Tensor, m: int, bits: int) -> torch.Tensor:
    half = 1 << (bits - 1)
    return torch.where(codes >= half, (codes - half) * 2.0 ** m, codes)


def twin_signed_codes(y: torch.Tensor, step_lo: float, m: int, bits: int) -> torch.Tensor:
    """Float values onto signed twin codes: positive at ``step_lo 2**m``, others at ``step_lo``."""
    lv = intops.twin_levels(bits)
    pos = torch.clamp(torch.floor(y / (step_lo * 2.0 ** m) + 0.5), 0, lv)
    neg = torch.clamp(torch.floor(y / step_lo + 0.5), -lv, 0)
    return torch.where(y > 0, pos, neg)


# ------------------------------------------------------------------------------ dispatch
def twin_op(graph: IntGraph, op: Op, *inputs: torch.Tensor) -> torch.Tensor:
    """The fake-quant form of one I-ViT / PTQ4ViT op (float64 tensors holding integers)."""
    from ..fakequant import _poly_softmax
    a, p = op.attrs, op.params
    out = graph.tensors[op.outputs[0]]
    lo, hi = out.range
    k = op.kind
    if k == "ilayernorm":
        return ln_affine(ilayernorm_n(inputs[0]), p["mult"], p["shift"], p["offset"])
    if k == "add_wide":
        other = inputs[1] if len(inputs) == 2 else _f(p["const"])
        acc = inputs[0] * _f(p["mult_a"]) + other * _f(p["mult_b"])
        return requant(acc, 1, p["shift"], 0, lo, hi)
    if k == "shiftmax":
        return shiftmax(inputs[0], int(a["x0"]), int(a["n"]), int(a["out_bits"]))
    if k == "attn_value_wide":
        _, _, v = _qkv(inputs[1], a["heads"], a["head_dim"])
        return requant(_heads_out(inputs[0] @ v), p["mult"], p["shift"], a["zp_out"], lo, hi)
    if k == "shiftgelu":
        x = inputs[0]
        return requant(x * shift_sigmoid(x, int(a["x0"]), int(a["n"])), p["mult"], p["shift"],
                       a["zp_out"], lo, hi)
    if k == "twin_softmax":
        s_in = float(graph.tensors[op.inputs[0]].scale)
        prob = _poly_softmax(inputs[0] * s_in)
        return twin_softmax_codes(prob, int(a["m"]), int(a["bits"]))
    if k == "attn_value_twin":
        _, _, v = _qkv(inputs[1], a["heads"], a["head_dim"])
        w = twin_decode_softmax(inputs[0], int(a["m"]), int(a["bits"]))
        return requant(_heads_out(w @ v), p["mult"], p["shift"], a["zp_out"], lo, hi)
    if k == "twin_gelu":
        t_in = graph.tensors[op.inputs[0]]
        x = (inputs[0] - t_in.zero_point) * float(t_in.scale)
        approx = op.meta.get("approximate", "none")
        y = torch.nn.functional.gelu(x, approximate=str(approx))
        return twin_signed_codes(y, float(out.scale), int(a["m"]), int(a["bits"]))
    if k == "linear_twin":
        x = inputs[0]
        dec = torch.where(x > 0, x * 2.0 ** int(a["m"]), x)
        acc = dec @ _f(p["weight"]).T + _f(p["bias"])
        return requant(acc, p["mult"], p["shift"], a["zp_out"], lo, hi)
    raise ValueError(f"op {op.name!r}: no fake-quant form for kind {k!r}")
