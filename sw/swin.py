"""FQ-ViT quantization of stock timm Swin Transformers (v1, ``timm.models.swin_transformer``).

The machinery is :mod:`sw.quantize`'s: observers fed by forward hooks on the unmodified timm
module, float64 calibration with the Power-of-Two Factor search, and the same builder
(:class:`sw.quantize._Builder`: per-channel int8 weights, zero points folded into biases,
PTF LayerNorms, dyadic requantizers, the GELU table, int16 logits).  This module adds the
Swin walk and its hooks.

Graph (every LayerNorm input PTF-quantized, as FQ-ViT does):

* stem: ``patchify`` -> ``linear`` (patch embedding) -> ``layernorm`` (``patch_embed.norm``);
* block: ``layernorm`` (norm1) -> ``window_partition`` (grid, window, shift) -> ``linear``
  qkv -> ``qk_scores`` (``windows``; params ``bias``, and ``mask`` when shifted) ->
  ``softmax`` -> ``attn_value`` (``windows``) -> ``linear`` proj -> ``window_reverse`` ->
  ``add`` -> ``layernorm`` (norm2) -> ``linear`` fc1 -> ``gelu`` -> ``linear`` fc2 -> ``add``;
* stage transition (stages 2.., timm 1.0 downsamples at the start of a stage):
  ``patch_merge`` -> ``layernorm`` (4C) -> ``linear`` reduction (zero bias);
* end: ``layernorm`` -> ``token_mean`` (all tokens) -> ``linear`` head (int16 logits).

Relative position bias: timm's gathered bias ``[H, N, N]`` rounded at the scores' scale
(int16).  Shift mask: timm's own ``attn_mask`` buffer (-100 where a query may not see a key)
at the scores' scale, clamped to int16.  The scores' observer sees ``q k^T scale + bias
(+ mask)`` with the masked entries left out (set to 0, inside every range), so the softmax
input's ``frac_bits`` covers the bias.  Window and shift are the block's own attributes
(timm uses window = grid and no shift where the window is not smaller than the grid).
"""
from __future__ import annotations

import math

import numpy as np

from . import intops
from .graph import IntGraph
from .observers import Observer  # noqa: F401  (type of the observers dict)

__all__ = ["is_swin", "check_supported_swin", "SwinRecorder", "assemble_swin"]


def _is(module, *names: str) -> bool:
    return type(module).__name__ in names


def is_swin(model) -> bool:
    """True for a timm Swin Transformer v1 model."""
    return type(model).__name__ == "SwinTransformer"


def _grid_of(blk) -> tuple[int, int]:
    return tuple(int(v) for v in blk.input_resolution)


def check_supported_swin(model) -> None:
    """Raise :class:`~sw.quantize.UnsupportedModelError` naming everything the quantizer
    cannot map in a timm ``SwinTransformer``.

    Supported: a square kernel = stride convolutional patch embedding with a LayerNorm (or
    none), stages of ``SwinTransformerBlock`` (LayerNorm norms, ``WindowAttention``, a GELU
    ``Mlp``) with ``PatchMerging`` between them, every token grid a multiple of its window
    (timm pads otherwise) and even where it is merged, a fixed image size (the precomputed
    shift masks), the final LayerNorm, average pooling and a linear head.
    """
    from .quantize import UnsupportedModelError, _mlp_problems
    problems: list[str] = []
    m = model
    pe = m.patch_embed
    if not _is(pe, "PatchEmbed"):
        problems.append(f"patch embedding {type(pe).__name__}")
    else:
        conv = pe.proj
        if not _is(conv, "Conv2d") or tuple(conv.kernel_size) != tuple(conv.stride) or \
                tuple(conv.padding) != (0, 0) or conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]:
            problems.append("patch embedding that is not a square kernel = stride convolution")
        if not _is(pe.norm, "Identity", "LayerNorm"):
            problems.append(f"patch embedding norm {type(pe.norm).__name__}")
        if getattr(pe, "dynamic_img_pad", False):
            problems.append("dynamic image padding")
        else:
            hh, ww = pe.img_size
            p = conv.kernel_size[0]
            if hh % p or ww % p:
                problems.append(f"image {hh}x{ww} not a multiple of the patch {p} (timm pads)")
    if getattr(m, "dynamic_img_size", False):
        problems.append("dynamic image size (shift masks computed per input)")
    for s, stage in enumerate(m.layers):
        ds = stage.downsample
        if _is(ds, "PatchMerging"):
            h, w = (int(v) for v in stage.input_resolution)
            if h % 2 or w % 2:
                problems.append(f"layers.{s}: patch merging of an odd {h}x{w} grid (timm pads)")
            if not _is(ds.norm, "LayerNorm") or not _is(ds.reduction, "Linear"):
                problems.append(f"layers.{s}.downsample: {type(ds.norm).__name__} / {type(ds.reduction).__name__}")
        elif not _is(ds, "Identity"):
            problems.append(f"layers.{s}.downsample: {type(ds).__name__}")
        for j, blk in enumerate(stage.blocks):
            where = f"layers.{s}.blocks.{j}"
            if not _is(blk, "SwinTransformerBlock"):
                problems.append(f"{where}: block type {type(blk).__name__}")
                continue
            (h, w), (wh, ww) = _grid_of(blk), tuple(blk.window_size)
            if h % wh or w % ww:
                problems.append(f"{where}: a {h}x{w} grid is not a multiple of the {wh}x{ww} window (timm pads)")
            if getattr(blk, "dynamic_mask", False) or (any(blk.shift_size) and blk.attn_mask is None):
                problems.append(f"{where}: dynamic shift mask")
            for nm in ("norm1", "norm2"):
                if not _is(getattr(blk, nm), "LayerNorm"):
                    problems.append(f"{where}.{nm}: {type(getattr(blk, nm)).__name__}")
            if not _is(blk.attn, "WindowAttention"):
                problems.append(f"{where}.attn: {type(blk.attn).__name__}")
            problems += _mlp_problems(blk.mlp, where)
    if not _is(m.norm, "LayerNorm"):
        problems.append(f"final norm {type(m.norm).__name__}")
    head = m.head
    if not _is(head, "ClassifierHead") or not _is(getattr(head, "fc", None), "Linear"):
        problems.append("no linear classification head (num_classes=0?)")
    elif getattr(m, "global_pool", "avg") != "avg":
        problems.append(f"global pooling {m.global_pool!r} (avg only)")
    if problems:
        raise UnsupportedModelError("unsupported model: " + "; ".join(dict.fromkeys(problems)))


# ----------------------------------------------------------------------------------------
# Calibration hooks
# ----------------------------------------------------------------------------------------

def _tokens(y):
    """``[B, H, W, C]`` grids and ``[B*nW, N, C]`` windows -> ``[B, T, C]`` token rows (the
    batch size is recovered by the caller's reshape)."""
    return y.reshape(y.shape[0], -1, y.shape[-1]) if y.ndim == 4 else y


class SwinRecorder:
    """Forward hooks on a timm Swin that hand named float activations to a callback (the
    Swin counterpart of :class:`sw.quantize._Recorder`, same interface).

    Token tensors are handed over as ``[B, T, C]`` rows: grid tensors in row-major grid
    order, window tensors (``attn.out``, ``attn.proj.out``, q / k / v, the scores) in the
    graph's window order.  ``masked``: the value given to the scores a shifted window masks
    (0, inside every range, for the observers; NaN for :func:`sw.quantize.layer_sqnr`).
    """

    def __init__(self, model, sink, only=None, masked: float = 0.0):
        self.model, self.sink, self.handles = model, sink, []
        self.stream_keys: set[str] = set()
        self.masked = masked
        m = model

        def add(mod, key, pre: bool, fn=None, stream=False):
            if stream:
                self.stream_keys.add(key)
            if only is not None and key not in only:
                return
            if pre:
                def hook(_m, args):
                    self.emit(key, args[0] if fn is None else fn(args[0]))
                self.handles.append(mod.register_forward_pre_hook(hook))
            else:
                def hook(_m, _inp, y):
                    self.emit(key, y if fn is None else fn(y))
                self.handles.append(mod.register_forward_hook(hook))

        pe_norm = not _is(m.patch_embed.norm, "Identity")
        if pe_norm:
            add(m.patch_embed.norm, "patch_embed.proj.out", True, _tokens, stream=True)
        add(m.patch_embed, "patch_embed.out", False, _tokens, stream=True)
        for s, stage in enumerate(m.layers):
            if _is(stage.downsample, "PatchMerging"):
                ds = stage.downsample
                add(ds.norm, f"layers.{s}.downsample.norm.out", False, _tokens)
                add(ds.reduction, f"layers.{s}.downsample.out", False, _tokens, stream=True)
            for j, blk in enumerate(stage.blocks):
                p = f"layers.{s}.blocks.{j}"
                (h, w), (wh, ww) = _grid_of(blk), tuple(blk.window_size)
                nw = (h // wh) * (w // ww)
                win = (lambda y, nw=nw: y.reshape(-1, nw * y.shape[1], y.shape[-1]))
                add(blk.norm1, f"{p}.norm1.out", False, _tokens)
                add(blk.attn.qkv, f"{p}.attn.qkv", False, lambda y, p=p, b=blk, nw=nw: self._qkv(p, b, nw, y))
                add(blk.attn.proj, f"{p}.attn.out", True, win)
                add(blk.attn.proj, f"{p}.attn.proj.out", False, win)
                add(blk.norm2, f"{p}.res1", True, _tokens, stream=True)
                add(blk.norm2, f"{p}.norm2.out", False, _tokens)
                add(blk.mlp.fc1, f"{p}.mlp.fc1.out", False, _tokens)
                add(blk.mlp.act, f"{p}.mlp.act.out", False, _tokens)
                add(blk.mlp.fc2, f"{p}.mlp.fc2.out", False, _tokens)
                add(blk, f"{p}.res2", False, _tokens, stream=True)
        add(m.norm, "norm.out", False, _tokens)
        add(m.head.fc, "pooled", True)

    def _qkv(self, p, blk, nw, y):
        import torch
        attn = blk.attn
        bw, n, _ = y.shape
        h = attn.num_heads
        q, k, v = y.reshape(bw, n, 3, h, -1).permute(2, 0, 3, 1, 4).unbind(0)   # [B*nW, H, N, dh]
        for nm, t in (("q", q), ("k", k), ("v", v)):
            self.emit(f"{p}.attn.{nm}", t)
        s = (q * attn.scale) @ k.transpose(-2, -1) + attn._get_rel_pos_bias()
        s = s.reshape(-1, nw, h, n, n)
        if blk.attn_mask is not None and any(blk.shift_size):
            mask = blk.attn_mask.to(s.dtype).reshape(1, nw, 1, n, n)
            s = torch.where(mask != 0, torch.full_like(s, self.masked), s + mask)
        self.emit(f"{p}.attn.scores", s.reshape(-1, nw * h, n, n))
        return None

    def emit(self, key, y):
        if y is not None:
            self.sink(key, y.detach().double().numpy())

    def close(self):
        for hd in self.handles:
            hd.remove()


# ----------------------------------------------------------------------------------------
# Graph construction
# ----------------------------------------------------------------------------------------

def assemble_swin(model, B, observers, attn_bits: int, ptf: bool, quantize_patch_embed: bool) -> IntGraph:
    """The integer graph of a timm Swin from builder ``B`` (:class:`sw.quantize._Builder`)."""
    from .quantize import IMAGENET_MEAN, IMAGENET_STD, _Q, _t, UnsupportedModelError
    m = model
    conv = m.patch_embed.proj
    p = conv.kernel_size[0]
    cin = conv.in_channels
    hh, ww = (int(v) for v in m.patch_embed.img_size)
    grid = (hh // p, ww // p)
    T = grid[0] * grid[1]
    d = conv.out_channels
    host: dict[str, np.ndarray] = {}
    pw = _t(conv.weight).reshape(d, -1)
    pb = _t(conv.bias) if conv.bias is not None else np.zeros(d)
    pe_norm = not _is(m.patch_embed.norm, "Identity")
    proj_name = "patch_embed.proj.out" if pe_norm else "patch_embed.out"
    proj_q = B.stream(proj_name)
    if quantize_patch_embed:
        img_q = B.affine("image")
        x = B.tensor("image", (cin, hh, ww), img_q)
        inputs = [x]
        pat = B.tensor("patches", (T, cin * p * p), img_q)
        B.op("patch_embed.patchify", "patchify", [x], pat, {"patch": p})
        x = B.linear("patch_embed.proj", pat, pw, pb, proj_name, proj_q, (T, d))
    else:
        x = B.tensor(proj_name, (T, d), proj_q)
        inputs = [x]
        host = {"patch_weight": pw, "patch_bias": pb}
    if pe_norm:
        x = B.layernorm("patch_embed.norm", x, m.patch_embed.norm, "patch_embed.out",
                        B.stream("patch_embed.out"), (T, d))

    for s, stage in enumerate(m.layers):
        ds = stage.downsample
        if _is(ds, "PatchMerging"):
            pre = f"layers.{s}.downsample"
            xq = B.q[x]
            alpha = xq.alpha if xq.alpha is not None else np.zeros(d, np.int64)
            merged_q = _Q(np.tile(xq.vec(d), 4), xq.zp, np.tile(alpha, 4))
            T //= 4
            merged = B.tensor(f"{pre}.merged", (T, 4 * d), merged_q)
            B.op(f"{pre}.merge", "patch_merge", [x], merged, {"grid": [int(grid[0]), int(grid[1])]})
            grid = (grid[0] // 2, grid[1] // 2)
            n = B.layernorm(f"{pre}.norm", merged, ds.norm, f"{pre}.norm.out", B.affine(f"{pre}.norm.out"),
                            (T, 4 * d))
            d = ds.reduction.out_features
            x = B.linear(f"{pre}.reduction", n, ds.reduction.weight, ds.reduction.bias, f"{pre}.out",
                         B.stream(f"{pre}.out"), (T, d))
        for j, blk in enumerate(stage.blocks):
            if _grid_of(blk) != tuple(grid) or blk.dim != d:
                raise UnsupportedModelError(f"layers.{s}.blocks.{j}: grid {_grid_of(blk)} x {blk.dim} "
                                            f"where {grid} x {d} was expected")
            x = _swin_block(B, f"layers.{s}.blocks.{j}", blk, x, grid, d, attn_bits)

    x = B.layernorm("norm", x, m.norm, "norm.out", B.affine("norm.out"), (T, d))
    xq = B.q[x]
    pq = B.affine("pooled")
    mult, shift = intops.dyadic(xq.vec(d) / (T * pq.vec(d)))
    B.tensor("pooled", (d,), pq)
    x = B.op("pool", "token_mean", [x], "pooled", {"start": 0, "zp_in": int(xq.zp), "zp_out": int(pq.zp)},
             {"mult": mult, "shift": shift})
    fc = m.head.fc
    hw_, hb = _t(fc.weight), (_t(fc.bias) if fc.bias is not None else np.zeros(fc.out_features))
    from .quantize import LOGIT_HEADROOM
    lo, hi = observers["logits"].range(symmetric=True)
    logit_q = _Q(max(hi, 1e-6) * LOGIT_HEADROOM / 32767.0, 0)
    B.linear("head", x, hw_, hb, "logits", logit_q, (hw_.shape[0],), out_bits=16)

    cfg = getattr(m, "pretrained_cfg", None) or {}
    info = {"model": cfg.get("architecture", type(m).__name__), "method": "fqvit", "family": "swin",
            "image_shape": [cin, hh, ww], "patch": p, "num_classes": int(hw_.shape[0]),
            "prefix_tokens": 0, "observer": next(iter(observers.values())).method,
            "attn_bits": attn_bits, "ptf": bool(ptf), "quantize_patch_embed": bool(quantize_patch_embed),
            "mean": [float(v) for v in np.resize(cfg.get("mean", IMAGENET_MEAN), cin)],
            "std": [float(v) for v in np.resize(cfg.get("std", IMAGENET_STD), cin)],
            "input_scale": B.q[inputs[0]].meta(), "input_zero_point": int(B.q[inputs[0]].zp)}
    g = IntGraph(B.tensors, B.ops, inputs, ["logits"], info, host)
    g.validate()
    return g


def _swin_block(B, p: str, blk, x: str, grid, d: int, attn_bits: int) -> str:
    from .quantize import _Q, _bias, _gelu, _scalar, _t, UnsupportedModelError, softmax_input_frac_bits
    attn = blk.attn
    h = attn.num_heads
    adim = attn.proj.in_features
    dh = adim // h
    T = grid[0] * grid[1]
    (wh, ww), (sh, sw) = tuple(int(v) for v in blk.window_size), tuple(int(v) for v in blk.shift_size)
    n = wh * ww
    nw = T // n
    geo = {"grid": [int(grid[0]), int(grid[1])], "window": [wh, ww], "shift": [sh, sw]}

    n1 = B.layernorm(f"{p}.norm1", x, blk.norm1, f"{p}.norm1.out", B.affine(f"{p}.norm1.out"), (T, d))
    xw = B.tensor(f"{p}.attn.windows", (T, d), B.q[n1])
    B.op(f"{p}.window_partition", "window_partition", [n1], xw, dict(geo))

    sq, sk, sv = (B.symmetric(f"{p}.attn.{s}").scale for s in "qkv")
    qkv_q = _Q(np.repeat([sq, sk, sv], adim), 0)
    qkv = B.linear(f"{p}.attn.qkv", xw, attn.qkv.weight, attn.qkv.bias, f"{p}.attn.qkv.out", qkv_q, (T, 3 * adim))

    # scores (after bias and mask, masked entries left out) at ln2 / 2**P
    smax = max(abs(v) for v in B.obs[f"{p}.attn.scores"].range())
    frac = softmax_input_frac_bits(smax)
    s_scores = math.log(2.0) / 2 ** frac
    m_, s_ = intops.dyadic(sq * sk * float(attn.scale) / s_scores)
    bias_f = _t(attn._get_rel_pos_bias()).reshape(h, n, n)
    bias = np.rint(bias_f / s_scores)
    if np.abs(bias).max(initial=0) > intops.INT16_MAX:
        raise UnsupportedModelError(f"{p}.attn: relative position bias does not fit int16 at the scores' scale")
    params = {"mult": _scalar(m_), "shift": _scalar(s_), "bias": bias.astype(np.int16)}
    meta = {"scale": float(attn.scale), "bias": bias_f}
    if sh or sw:
        mask_f = _t(blk.attn_mask).reshape(nw, n, n)
        params["mask"] = np.clip(np.rint(mask_f / s_scores), intops.INT16_MIN, 0).astype(np.int16)
        meta["mask"] = mask_f
    sc = B.tensor(f"{p}.attn.scores", (nw * h, n, n), _Q(s_scores, 0), bits=16)
    B.op(f"{p}.attn.qk", "qk_scores", [qkv], sc, {"heads": h, "head_dim": dh, "windows": nw}, params, meta)
    mode = "lis" if attn_bits == 4 else "uniform"
    b_int, c_int = intops.lis_exp_constants(frac)
    pr = B.tensor(f"{p}.attn.probs", (nw * h, n, n), None, bits=8, signed=False)
    B.op(f"{p}.attn.softmax", "softmax", [sc], pr, {"mode": mode, "frac_bits": frac, "b_int": b_int, "c_int": c_int})
    ctx_q = B.affine(f"{p}.attn.out")
    acc_scale = sv * (2.0 ** -intops.LIS_SHIFT_BASE if mode == "lis" else 2.0 ** -8)
    m_, s_ = intops.dyadic(acc_scale / ctx_q.scale)
    ctx = B.tensor(f"{p}.attn.out", (T, adim), ctx_q)
    B.op(f"{p}.attn.av", "attn_value", [pr, qkv], ctx,
         {"heads": h, "head_dim": dh, "mode": mode, "zp_out": int(ctx_q.zp), "windows": nw},
         {"mult": _scalar(m_), "shift": _scalar(s_)})
    pj = B.linear(f"{p}.attn.proj", ctx, attn.proj.weight, _bias(attn.proj, d), f"{p}.attn.proj.out",
                  B.affine(f"{p}.attn.proj.out"), (T, d))
    back = B.tensor(f"{p}.attn.branch", (T, d), B.q[pj])
    B.op(f"{p}.window_reverse", "window_reverse", [pj], back, dict(geo))
    r1 = B.add(f"{p}.add1", x, back, f"{p}.res1", B.stream(f"{p}.res1"), (T, d))

    n2 = B.layernorm(f"{p}.norm2", r1, blk.norm2, f"{p}.norm2.out", B.affine(f"{p}.norm2.out"), (T, d))
    hid = blk.mlp.fc1.out_features
    f1 = B.linear(f"{p}.mlp.fc1", n2, blk.mlp.fc1.weight, blk.mlp.fc1.bias, f"{p}.mlp.fc1.out",
                  B.affine(f"{p}.mlp.fc1.out"), (T, hid))
    ge = _gelu(B, f"{p}.mlp.act", blk.mlp.act, f1, f"{p}.mlp.act.out", (T, hid))
    f2 = B.linear(f"{p}.mlp.fc2", ge, blk.mlp.fc2.weight, _bias(blk.mlp.fc2, d), f"{p}.mlp.fc2.out",
                  B.affine(f"{p}.mlp.fc2.out"), (T, d))
    return B.add(f"{p}.add2", r1, f2, f"{p}.res2", B.stream(f"{p}.res2"), (T, d))
