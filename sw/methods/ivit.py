"""I-ViT (Li and Gu, "I-ViT: Integer-only Quantization for Efficient Vision Transformer
Inference", ICCV 2023) as an integer graph, calibrated after training (PTQ).

The graph follows the data flow of the authors' PyTorch model (``models/vit_quant.py``):
every tensor symmetric, 8-bit activations into every matmul, a 16-bit residual stream (the
patch embedding, position embedding, ``proj`` and ``fc2`` outputs and both residual sums),
I-LayerNorm on the 16-bit stream, Shiftmax with 16-bit probabilities, ShiftGELU, dyadic
requantization everywhere.  :mod:`sw.methods.ivit_qat` fine-tunes a model through the same
ops (I-ViT is quantization-aware training); this module is the calibration both share.

Choices where the published code leaves room (see ``docs/ARCHITECTURE.md``):

* q, k and v get one scale each (the code shares one over the whole qkv output).
* The scores go to Shiftmax at I-ViT's 8-bit resolution, but with a scale ``1 / K``
  (``K = floor(127 / max|score|)``) so that the exponential's constant ``x0 = floor(-1/s)``
  is exactly ``-K``; they stay in the shared int16 score tensor, so scores beyond the
  calibrated range are not clipped.  ``K`` is capped so that a row of ``T`` equal scores,
  ``T K 2**15``, fits the 31-bit row sum.
* The GELU input likewise gets ``s = 1 / (1.702 K)``: ``x0 = -K`` exactly.
* LayerScale folds into ``proj`` / ``fc2``; a distilled model's two heads become one head.

Supported: the models :func:`sw.quantize.check_supported` accepts, with class-token (or
distillation-token) pooling, without a pre-norm.
"""
from __future__ import annotations

import math

import numpy as np

from .. import intops
from ..graph import IntGraph
from ..observers import Observer
from ..quantize import (UnsupportedModelError, _Builder, _head_params, _is, _layerscale, _bias,
                        _prefix_tokens, _Q, _scalar, _t, LOGIT_HEADROOM, calibrate, check_supported)
from .common import add_params, graph_info, quantize_symmetric, symmetric_q

__all__ = ["quantize_ivit", "check_supported_ivit", "STREAM_BITS"]

#: Bits of the residual stream (I-ViT's ``QuantAct(16)``).
STREAM_BITS = 16


def check_supported_ivit(model) -> None:
    """:func:`sw.quantize.check_supported` plus what the I-ViT graph does not cover."""
    check_supported(model)
    problems = []
    if _is(model.norm_pre, "LayerNorm"):
        problems.append("a pre-norm (norm_pre): its output would be the 16-bit stream")
    if type(model).__name__ == "VisionTransformer" and model.global_pool != "token":
        problems.append(f"global pooling {model.global_pool!r} (class-token pooling only)")
    if problems:
        raise UnsupportedModelError("unsupported model for I-ViT: " + "; ".join(problems))


class _IvitBuilder(_Builder):
    """The FQ-ViT builder's tensors and ops with I-ViT's symmetric 8- and 16-bit grids."""

    def sym(self, key: str, bits: int = 8) -> _Q:
        return symmetric_q(self.obs[key], bits)

    def ilayernorm(self, name: str, x: str, ln, out: str, shape) -> str:
        c = shape[-1]
        out_q = self.sym(out)
        gamma = _t(ln.weight) if ln.weight is not None else np.ones(c)
        beta = _t(ln.bias) if ln.bias is not None else np.zeros(c)
        try:
            mult, shift, offset = intops.ilayernorm_params(gamma, beta, float(out_q.scale), 0, c)
        except ValueError as exc:
            raise UnsupportedModelError(f"{name}: {exc}") from None
        self.tensor(out, shape, out_q)
        return self.op(name, "ilayernorm", [x], out, {}, {"mult": mult, "shift": shift, "offset": offset},
                       {"gamma": gamma, "beta": beta, "eps": float(ln.eps), "module": name})

    def add_wide(self, name: str, a: str, b: str | None, out: str, shape, const_q: _Q | None = None,
                 const=None, obs_key: str | None = None) -> str:
        d = shape[-1]
        out_q = self.sym(obs_key or out, STREAM_BITS)
        bq = const_q if b is None else self.q[b]
        try:
            ma, mb, shift = add_params(np.full(d, float(self.q[a].scale) / float(out_q.scale)),
                                       np.full(d, float(bq.scale) / float(out_q.scale)))
        except ValueError as exc:
            raise UnsupportedModelError(f"{name}: {exc}") from None
        params = {"mult_a": ma, "mult_b": mb, "shift": shift}
        meta = {}
        if b is None:
            params["const"] = const
            meta["const_scale"] = float(const_q.scale)
        self.tensor(out, shape, out_q, bits=STREAM_BITS)
        return self.op(name, "add_wide", [a] if b is None else [a, b], out, {"out_bits": STREAM_BITS},
                       params, meta)


def score_k(max_score: float, tokens: int) -> int:
    """``K`` of the Shiftmax input scale ``1 / K``: I-ViT's 8-bit resolution
    (``K = floor(127 / max|score|)``, at least 1), capped so that ``T K 2**15 < 2**31``."""
    k = max(1, int(math.floor(127.0 / max(max_score, 1e-12))))
    cap = intops.IVIT_DIVIDEND // (tokens << intops.IVIT_SOFTMAX_N)
    if cap < 1:
        raise UnsupportedModelError(f"rows of {tokens} tokens are too long for Shiftmax's 31-bit row sum")
    return min(k, cap)


def gelu_k(max_in: float) -> int:
    """``K`` of the ShiftGELU input scale ``1 / (1.702 K)``, covering ``max|x|`` in 8 bits."""
    return max(1, int(math.floor(127.0 / (1.702 * max(max_in, 1e-12)))))


def quantize_ivit(model, calib_images: np.ndarray, observer: str = "minmax", progress: bool = True,
                  observers: dict[str, Observer] | None = None) -> IntGraph:
    """I-ViT integer graph of a timm ViT / DeiT, calibrated on ``calib_images`` (PTQ)."""
    check_supported_ivit(model)
    if observers is None:
        observers = calibrate(model, calib_images, observer, progress=progress)
    m = model
    B = _IvitBuilder(observers, ptf=False)
    distilled = type(m).__name__ == "VisionTransformerDistilled"
    conv = m.patch_embed.proj
    p = conv.kernel_size[0]
    cin = conv.in_channels
    hh, ww = m.patch_embed.img_size
    n_patch = (hh // p) * (ww // p)
    d = m.embed_dim
    prefix = _prefix_tokens(m)
    n_prefix = 0 if prefix is None else len(prefix)
    T = n_patch + n_prefix
    no_embed_class = bool(getattr(m, "no_embed_class", False))

    # image (symmetric int8) -> patches -> 16-bit patch tokens
    img_q = B.sym("image")
    x = B.tensor("image", (cin, hh, ww), img_q)
    pat = B.tensor("patches", (n_patch, cin * p * p), img_q)
    B.op("patch_embed.patchify", "patchify", [x], pat, {"patch": p})
    pe_obs = observers["patch_embed.out"]
    pe_max = max(abs(v) for v in pe_obs.range())
    if prefix is not None and not no_embed_class:
        pe_max = max(pe_max, float(np.abs(prefix).max()))
    pe_q = _Q(max(pe_max, 1e-12) / ((1 << (STREAM_BITS - 1)) - 1), 0)
    pw = _t(conv.weight).reshape(d, -1)
    pb = _t(conv.bias) if conv.bias is not None else np.zeros(d)
    x = B.linear("patch_embed.proj", pat, pw, pb, "patch_embed.out", pe_q, (n_patch, d), out_bits=STREAM_BITS)
    B.ops[-1].meta["module"] = "patch_embed.proj"

    # prefix tokens and position embedding (16-bit, I-ViT's qact_pos / qact1)
    pos = _t(m.pos_embed).reshape(-1, d)
    pos_q = _Q(max(float(np.abs(pos).max()), 1e-12) / ((1 << (STREAM_BITS - 1)) - 1), 0)
    pos_int = quantize_symmetric(pos, pos_q.scale, STREAM_BITS)

    def concat(src, q, shape):
        B.tensor("tokens", shape, q, bits=STREAM_BITS)
        return B.op("prefix_tokens", "concat_tokens", [src], "tokens", {},
                    {"tokens": quantize_symmetric(prefix, q.scale, STREAM_BITS)})

    if no_embed_class:
        x = B.add_wide("pos_embed", x, None, "pos_embed.out" if prefix is None else "pos_embed.sum",
                       (n_patch, d), pos_q, pos_int, obs_key="pos_embed.out")
        if prefix is not None:
            x = concat(x, B.q[x], (T, d))
    else:
        if prefix is not None:
            x = concat(x, pe_q, (T, d))
        x = B.add_wide("pos_embed", x, None, "pos_embed.out", (T, d), pos_q, pos_int)

    for i, blk in enumerate(m.blocks):
        x = _block(B, f"blocks.{i}", blk, x, T, d)

    x = B.ilayernorm("norm", x, m.norm, "norm.out", (T, d))
    idx = [0, 1] if distilled else [0]
    xq = B.q[x]
    B.tensor("pooled", (len(idx) * d,), _Q(xq.scale, 0))
    x = B.op("pool", "select_tokens", [x], "pooled", {"indices": idx})
    hw_, hb = _head_params(m)
    _, hi = observers["logits"].range(symmetric=True)
    logit_q = _Q(max(hi, 1e-6) * LOGIT_HEADROOM / 32767.0, 0)
    x = B.linear("head", x, hw_, hb, "logits", logit_q, (hw_.shape[0],), out_bits=16)
    B.ops[-1].meta["module"] = "head"

    info = graph_info(m, "ivit", next(iter(observers.values())).method, img_q,
                      stream_bits=STREAM_BITS, attn_bits=intops.IVIT_SOFTMAX_BITS, ptf=False,
                      quantize_patch_embed=True)
    g = IntGraph(B.tensors, B.ops, ["image"], ["logits"], info)
    g.validate()
    return g


def _block(B: _IvitBuilder, p: str, blk, x: str, T: int, d: int) -> str:
    attn = blk.attn
    h, dh = attn.num_heads, attn.head_dim
    n1 = B.ilayernorm(f"{p}.norm1", x, blk.norm1, f"{p}.norm1.out", (T, d))

    sq, sk, sv = (float(B.sym(f"{p}.attn.{s}").scale) for s in "qkv")
    qkv = B.linear(f"{p}.attn.qkv", n1, attn.qkv.weight, attn.qkv.bias, f"{p}.attn.qkv.out",
                   _Q(np.repeat([sq, sk, sv], d), 0), (T, 3 * d))
    B.ops[-1].meta["module"] = f"{p}.attn.qkv"

    smax = max(abs(v) for v in B.obs[f"{p}.attn.scores"].range())
    k = score_k(smax, T)
    m_, s_ = intops.dyadic(sq * sk * float(attn.scale) * k)
    sc = B.tensor(f"{p}.attn.scores", (h, T, T), _Q(1.0 / k, 0), bits=16)
    B.op(f"{p}.attn.qk", "qk_scores", [qkv], sc, {"heads": h, "head_dim": dh},
         {"mult": _scalar(m_), "shift": _scalar(s_)}, {"scale": float(attn.scale)})
    pbits = intops.IVIT_SOFTMAX_BITS
    pr = B.tensor(f"{p}.attn.probs", (h, T, T), _Q(2.0 ** -(pbits - 1), 0), bits=pbits, signed=False)
    B.op(f"{p}.attn.softmax", "shiftmax", [sc], pr, {"x0": -k, "n": intops.IVIT_SOFTMAX_N, "out_bits": pbits})
    ctx_q = B.sym(f"{p}.attn.out")
    m_, s_ = intops.dyadic(sv * 2.0 ** -(pbits - 1) / float(ctx_q.scale))
    ctx = B.tensor(f"{p}.attn.out", (T, d), ctx_q)
    B.op(f"{p}.attn.av", "attn_value_wide", [pr, qkv], ctx, {"heads": h, "head_dim": dh, "zp_out": 0},
         {"mult": _scalar(m_), "shift": _scalar(s_)})

    g1 = _layerscale(blk.ls1, d)
    pj = B.linear(f"{p}.attn.proj", ctx, _t(attn.proj.weight) * g1[:, None], _bias(attn.proj, d) * g1,
                  f"{p}.attn.proj.out", B.sym(f"{p}.attn.proj.out", STREAM_BITS), (T, d), out_bits=STREAM_BITS)
    B.ops[-1].meta.update(module=f"{p}.attn.proj", layerscale=f"{p}.ls1")
    r1 = B.add_wide(f"{p}.add1", x, pj, f"{p}.res1", (T, d))

    n2 = B.ilayernorm(f"{p}.norm2", r1, blk.norm2, f"{p}.norm2.out", (T, d))
    hid = blk.mlp.fc1.out_features
    fmax = max(abs(v) for v in B.obs[f"{p}.mlp.fc1.out"].range())
    kg = gelu_k(fmax)
    f1q = _Q(1.0 / (1.702 * kg), 0)
    f1 = B.linear(f"{p}.mlp.fc1", n2, blk.mlp.fc1.weight, blk.mlp.fc1.bias, f"{p}.mlp.fc1.out", f1q, (T, hid))
    B.ops[-1].meta["module"] = f"{p}.mlp.fc1"
    act_q = B.sym(f"{p}.mlp.act.out")
    m_, s_ = intops.dyadic(float(f1q.scale) * 2.0 ** -(intops.IVIT_SIGMOID_BITS - 1) / float(act_q.scale))
    ge = B.tensor(f"{p}.mlp.act.out", (T, hid), act_q)
    B.op(f"{p}.mlp.act", "shiftgelu", [f1], ge, {"x0": -kg, "n": intops.shiftgelu_n(-kg), "zp_out": 0},
         {"mult": _scalar(m_), "shift": _scalar(s_)})
    g2 = _layerscale(blk.ls2, d)
    f2 = B.linear(f"{p}.mlp.fc2", ge, _t(blk.mlp.fc2.weight) * g2[:, None], _bias(blk.mlp.fc2, d) * g2,
                  f"{p}.mlp.fc2.out", B.sym(f"{p}.mlp.fc2.out", STREAM_BITS), (T, d), out_bits=STREAM_BITS)
    B.ops[-1].meta.update(module=f"{p}.mlp.fc2", layerscale=f"{p}.ls2")
    return B.add_wide(f"{p}.add2", r1, f2, f"{p}.res2", (T, d))
