"""Integer quantization methods beside FQ-ViT: I-ViT and PTQ4ViT.

Every method is a set of integer op kinds (defined once in :mod:`sw.intops`, run by
:mod:`sw.executor`) and a calibration or training procedure that emits an
:class:`~sw.graph.IntGraph` whose ``info["method"]`` names it.  The methods share the
observers, the dyadic requantizer, the graph format, the executor, the fake-quant
interpreter (:mod:`sw.fakequant`, with the new kinds' twins in :mod:`sw.methods.twins`) and
as much of the graph as their papers allow:

=========  ============================================================================
method     what differs from FQ-ViT
=========  ============================================================================
fqvit      (:mod:`sw.quantize`) PTF LayerNorm, Log-Int-Softmax or uniform softmax, LUT GELU
ivit       (:mod:`sw.methods.ivit`, :mod:`sw.methods.ivit_qat`) symmetric grids, 16-bit
           residual stream, I-LayerNorm, Shiftmax, ShiftGELU; PTQ calibration or QAT
ptq4vit    (:mod:`sw.methods.ptq4vit`) twin-uniform softmax and GELU codes, Hessian-guided
           scale search of every matmul's operands, W8A8 or W6A6
qvit       (:mod:`sw.methods.qvit`) QAT at 2-4 bits (LSQ+, IRM, DGD); FQ-ViT's stream,
           LayerNorm, Log-Int-Softmax and GELU table; low-bit tensors declared at their width
=========  ============================================================================
"""
from __future__ import annotations

import numpy as np

from ..graph import METHODS, IntGraph

__all__ = ["METHODS", "quantize_with_method", "exact_kinds"]


def quantize_with_method(method: str, model, calib_images: np.ndarray, observer: str = "minmax",
                         attn_bits: int = 4, ptf: bool = True, quantize_patch_embed: bool = True,
                         progress: bool = True, observers=None, **options) -> IntGraph:
    """Quantize ``model`` with ``method`` (see :func:`sw.quantize.quantize`).

    I-ViT ignores ``attn_bits`` and ``ptf`` (its softmax and stream are its own) and needs
    the patch embedding in the graph.  PTQ4ViT takes ``ptf`` (its residual stream and
    LayerNorm are FQ-ViT's), ``quantize_patch_embed`` and the options of
    :func:`sw.methods.ptq4vit.quantize_ptq4vit` (``bits``, ``labels``, search sizes).
    """
    if method == "fqvit":
        from ..quantize import quantize
        return quantize(model, calib_images, observer, attn_bits, ptf, quantize_patch_embed, progress,
                        observers, **options)
    if method == "ivit":
        if not quantize_patch_embed:
            raise ValueError("I-ViT graphs keep the patch embedding in the graph (16-bit stream)")
        from .ivit import quantize_ivit
        return quantize_ivit(model, calib_images, observer=observer, progress=progress,
                             observers=observers, **options)
    if method == "ptq4vit":
        from .ptq4vit import quantize_ptq4vit
        return quantize_ptq4vit(model, calib_images, observer=observer, ptf=ptf,
                                quantize_patch_embed=quantize_patch_embed, progress=progress,
                                observers=observers, **options)
    if method == "qvit":
        from .qvit import quantize_qvit
        options.pop("ptf", None)
        res = quantize_qvit(model, calib_images, observer=observer, progress=progress, **options)
        return res.graph
    raise ValueError(f"unknown quantization method {method!r}; choose from {', '.join(METHODS)}")


def exact_kinds() -> tuple[str, ...]:
    """Op kinds whose fake-quant twin is bit-exact with the integer executor by design: all
    but FQ-ViT's and PTQ4ViT's float LayerNorm and softmax twins."""
    from ..fakequant import EXACT_KINDS as FQ
    from .twins import EXACT_KINDS as NEW
    return tuple(FQ) + tuple(NEW)
