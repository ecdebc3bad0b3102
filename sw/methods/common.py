"""Helpers the integer methods share: symmetric grids of any width, residual-add constants,
graph metadata, and the dequantization of any graph tensor (twin codes included)."""
from __future__ import annotations

import numpy as np

from .. import intops
from ..graph import IntGraph
from ..quantize import IMAGENET_MEAN, IMAGENET_STD, _Q

__all__ = ["symmetric_q", "quantize_symmetric", "add_params", "graph_info", "dequantize"]


def symmetric_q(obs, bits: int = 8) -> _Q:
    """Symmetric grid (zero point 0) of ``bits`` bits covering the observer's range."""
    lo, hi = obs.range(symmetric=True)
    return _Q(max(-lo, hi, 1e-12) / ((1 << (bits - 1)) - 1), 0)


def quantize_symmetric(x, scale, bits: int) -> np.ndarray:
    """Round half up onto a symmetric ``bits``-bit grid and clamp (build time)."""
    lim = 1 << (bits - 1)
    return np.clip(np.floor(np.asarray(x, np.float64) / scale + 0.5), -lim, lim - 1).astype(np.int64)


def add_params(ra, rb) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel ``(mult_a, mult_b, shift)`` of a residual add whose two inputs are
    ``ra`` and ``rb`` times the output step: the largest shift keeping both 16-bit multipliers
    in range (the rule of :meth:`sw.quantize._Builder.add`)."""
    ra, rb = np.asarray(ra, np.float64), np.asarray(rb, np.float64)
    big = np.maximum(np.maximum(ra, rb), 1e-30)
    shift = np.clip(np.floor(np.log2(32767.0 / big)), 0, intops.REQUANT_MAX_SHIFT).astype(np.int64)
    over = np.maximum(np.rint(ra * 2.0 ** shift), np.rint(rb * 2.0 ** shift)) > 32767
    shift = np.where(over, shift - 1, shift)
    ma = np.rint(ra * 2.0 ** shift).astype(np.int64)
    mb = np.rint(rb * 2.0 ** shift).astype(np.int64)
    if shift.min() < 0 or max(ma.max(), mb.max()) > 32767:
        raise ValueError("residual scales too far apart for 16-bit multipliers")
    return ma, mb, shift


def graph_info(model, method: str, observer: str, input_q: _Q, **extra) -> dict:
    """The ``info`` block of a graph (the fields FQ-ViT graphs carry, plus ``method``)."""
    conv = model.patch_embed.proj
    hh, ww = model.patch_embed.img_size
    cin = conv.in_channels
    cfg = getattr(model, "pretrained_cfg", None) or {}
    head = model.head
    info = {"model": cfg.get("architecture", type(model).__name__), "method": method,
            "image_shape": [cin, hh, ww], "patch": conv.kernel_size[0],
            "num_classes": int(head.out_features),
            "prefix_tokens": sum(int(getattr(model, n).shape[1]) for n in ("cls_token", "dist_token", "reg_token")
                                 if getattr(model, n, None) is not None),
            "observer": observer,
            "mean": [float(v) for v in np.resize(cfg.get("mean", IMAGENET_MEAN), cin)],
            "std": [float(v) for v in np.resize(cfg.get("std", IMAGENET_STD), cin)],
            "input_scale": float(np.asarray(input_q.scale)), "input_zero_point": int(input_q.zp)}
    info.update(extra)
    return info


def dequantize(graph: IntGraph, name: str, q: np.ndarray) -> np.ndarray:
    """Real values of graph tensor ``name`` holding integers ``q``: ``scale (q - zp)``, or the
    twin decoding for tensors written by ``twin_softmax`` / ``twin_gelu``."""
    t = graph.tensors[name]
    prod = graph.producer().get(name)
    q = np.asarray(q, np.int64)
    scale = np.asarray(t.scale, dtype=np.float64)
    if prod is not None and prod.kind == "twin_softmax":
        return intops.twin_decode_softmax(q, prod.attrs["m"], prod.attrs["bits"]) * scale
    if prod is not None and prod.kind == "twin_gelu":
        return np.where(q > 0, q * 2.0 ** prod.attrs["m"], q) * scale
    return (q - t.zero_point) * scale
