"""FQ-ViT post-training quantization of stock timm ViT / DeiT models into an integer graph.

timm's Swin Transformer (v1) goes through the same functions: :mod:`sw.swin` supplies its
hooks, its supported-architecture check and its walk.

The float model is the unmodified ``timm`` module: calibration runs it with forward hooks
that feed :class:`~sw.observers.Observer` objects, and :func:`quantize` then reads its
parameters to build an :class:`~sw.graph.IntGraph`.  Nothing of the model is re-implemented.

Quantization choices (the hardware's view)
------------------------------------------
* **Weights**: int8 symmetric per output channel, ``[-127, 127]``.  A linear layer whose input
  has per-channel scales (the residual stream) folds them into the weights first.
* **Activations**: int8 with an asymmetric zero point (``real = s (q - zp)``, ``zp`` in
  ``[-128, 127]``).  Every activation entering a matmul is int8, so the array multiplies
  int8 x int8; the zero point folds into the bias (``bias = round(b / s_w) - zp sum_k W``),
  which keeps the operand width at 8 bits (a uint8 activation would need a 9-bit operand).
* **q, k, v**: symmetric (zero point 0), one scale per section, because ``q @ k^T`` and the
  attention-value product multiply them directly with no bias to fold a zero point into.
* **Power-of-Two Factor** (``ptf=True``): every LayerNorm input (the residual stream and the
  pooled vector of average-pooled models) is quantized with one zero point and per-channel
  scales ``s1 * 2**alpha_c``, ``alpha_c`` in 0..3 (K = 3).  Residual adds and LayerNorms take
  the per-channel scales as per-channel multipliers and shifts.
* **Softmax**: the scores ``q k^T / sqrt(d)`` are requantized to int16 at ``ln 2 / 2**P``
  (``P`` the largest of 6..2 for which the calibration maximum fits); Log-Int-Softmax gives
  4-bit codes (``attn_bits=4``), or 8-bit uniform probabilities (``attn_bits=8``).
* **GELU**: a 256-entry table indexed by the int8 ``fc1`` output, built by calling the
  model's own activation module.
* **Logits**: int16, symmetric.
* **Patch embedding**: an int8 matmul over ``patchify``-ed image rows; with
  ``quantize_patch_embed=False`` it stays float on the host (as in the quantized block data
  flow of seed 003) and the graph input is the quantized patch tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import intops
from .graph import IntGraph, Op, Tensor
from .observers import (OBSERVERS, Observer, PtfSearch, affine_params, ptf_factors, quantize_int8,
                        symmetric_scale)

__all__ = ["UnsupportedModelError", "create_model", "check_supported", "calibrate", "quantize",
           "quantize_timm", "quantize_input", "random_images", "layer_sqnr", "DEFAULT_CALIB_IMAGES"]

#: Random calibration images used by :func:`quantize_timm` when none are given.
DEFAULT_CALIB_IMAGES = 32
#: Calibration batch size (bounds memory; EMA / percentile observers update once per batch).
CALIB_BATCH = 8
#: PTF factor bound K (FQ-ViT).
PTF_K = 3
#: Headroom on the calibrated logit range (logits are int16, so resolution stays fine).
LOGIT_HEADROOM = 2.0


class UnsupportedModelError(ValueError):
    """The model is not a ViT / DeiT / Swin the quantizer can turn into an integer graph."""


# ----------------------------------------------------------------------------------------
# Model creation and the supported-architecture check
# ----------------------------------------------------------------------------------------

def softmax_input_frac_bits(score_absmax: float) -> int:
    """The softmax input scale ``ln 2 / 2**P``: ``P`` the largest of 6..2 for which the
    calibrated score magnitude fits 90 % of the int16 range."""
    frac = 6
    while frac > 2 and score_absmax * 2 ** frac / math.log(2.0) > 32767 * 0.9:
        frac -= 1
    return frac


def create_model(name: str, checkpoint: str | None = None, **kwargs):
    """``timm.create_model(name)`` with random weights, or weights from a timm state dict.

    Raises :class:`UnsupportedModelError` for a name timm does not know and ``ValueError``
    for a checkpoint that cannot be read or does not fit the model.
    """
    import timm
    import torch

    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc) or "unknown model" in str(exc).lower():
            raise UnsupportedModelError(f"unknown timm model {name!r}") from None
        raise
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for unreadable files
            raise ValueError(f"cannot read checkpoint {checkpoint}: {type(exc).__name__}: {exc}") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            first = str(exc).strip().splitlines()
            raise ValueError(f"checkpoint {checkpoint} does not fit {name}: "
                             f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    return model.eval()


def _is(module, *names: str) -> bool:
    return type(module).__name__ in names


def _mlp_problems(mlp, where: str) -> list[str]:
    """What the integer graph cannot take in a block's MLP (timm ``Mlp``: Linear, GELU, Linear)."""
    if not _is(mlp, "Mlp") or not _is(mlp.fc1, "Linear") or not _is(mlp.fc2, "Linear"):
        return [f"{where}.mlp: {type(mlp).__name__}"]
    problems = []
    if "GELU" not in type(mlp.act).__name__:
        problems.append(f"{where}.mlp.act: {type(mlp.act).__name__} (GELU only)")
    if not _is(mlp.norm, "Identity"):
        problems.append(f"{where}.mlp.norm: {type(mlp.norm).__name__}")
    return problems


def check_supported(model) -> None:
    """Raise :class:`UnsupportedModelError` naming everything the quantizer cannot map.

    Swin v1 (``SwinTransformer``): :func:`sw.swin.check_supported_swin`.

    Supported: timm ``VisionTransformer`` and ``VisionTransformerDistilled`` with pre-norm
    ``Block``s (``Attention`` without q/k norm or gating, ``Mlp`` with a GELU), LayerNorm
    norms, optional LayerScale, a convolutional ``PatchEmbed`` (kernel = stride = patch),
    class / distillation / register tokens, learned absolute position embedding, class-token
    or average pooling and a linear head.
    """
    problems: list[str] = []
    kind = type(model).__name__
    from .swin import check_supported_swin, is_swin
    if is_swin(model):
        return check_supported_swin(model)
    if kind not in ("VisionTransformer", "VisionTransformerDistilled"):
        raise UnsupportedModelError(
            f"unsupported architecture {kind}: only timm VisionTransformer / "
            f"VisionTransformerDistilled (ViT, DeiT) and SwinTransformer (Swin v1) models are supported")
    pe = model.patch_embed
    if not _is(pe, "PatchEmbed"):
        problems.append(f"patch embedding {type(pe).__name__}")
    else:
        conv = pe.proj
        if not _is(conv, "Conv2d") or tuple(conv.kernel_size) != tuple(conv.stride) or \
                tuple(conv.padding) != (0, 0) or conv.groups != 1 or conv.kernel_size[0] != conv.kernel_size[1]:
            problems.append("patch embedding that is not a square kernel = stride convolution")
        if not _is(pe.norm, "Identity"):
            problems.append(f"patch embedding norm {type(pe.norm).__name__}")
        if getattr(pe, "dynamic_img_pad", False):
            problems.append("dynamic image padding")
        if not getattr(pe, "flatten", True) and not getattr(model, "dynamic_img_size", False):
            problems.append("unflattened patch embedding")
    # dynamic_img_size is fine: the graph is built for the model's native image size, at
    # which timm uses the position embedding as it is.
    if not _is(model.norm_pre, "Identity", "LayerNorm"):
        problems.append(f"norm_pre {type(model.norm_pre).__name__}")
    if getattr(model, "attn_pool", None) is not None:
        problems.append("attention pooling head")
    if kind == "VisionTransformer" and model.global_pool not in ("token", "avg"):
        problems.append(f"global pooling {model.global_pool!r} (token or avg only)")
    if getattr(model, "pos_embed", None) is None:
        problems.append("a model without position embedding")
    for nm in ("norm", "fc_norm"):
        m = getattr(model, nm, None)
        if m is not None and not _is(m, "Identity", "LayerNorm"):
            problems.append(f"final {nm} {type(m).__name__}")
    if not _is(model.head, "Linear"):
        problems.append("no linear classification head (num_classes=0?)")
    if kind == "VisionTransformerDistilled" and not _is(model.head_dist, "Linear"):
        problems.append("no linear distillation head")
    for i, blk in enumerate(model.blocks):
        where = f"blocks.{i}"
        if not _is(blk, "Block"):
            problems.append(f"{where}: block type {type(blk).__name__}")
            continue
        for nm in ("norm1", "norm2"):
            if not _is(getattr(blk, nm), "LayerNorm"):
                problems.append(f"{where}.{nm}: {type(getattr(blk, nm)).__name__}")
        for nm in ("ls1", "ls2"):
            if not _is(getattr(blk, nm), "Identity", "LayerScale"):
                problems.append(f"{where}.{nm}: {type(getattr(blk, nm)).__name__}")
        attn = blk.attn
        if not _is(attn, "Attention"):
            problems.append(f"{where}.attn: {type(attn).__name__}")
        else:
            for nm in ("q_norm", "k_norm", "norm"):
                sub = getattr(attn, nm, None)
                if sub is not None and not _is(sub, "Identity"):
                    problems.append(f"{where}.attn.{nm}: {type(sub).__name__}")
            if getattr(attn, "gate", None) is not None:
                problems.append(f"{where}.attn: gated attention")
        problems += _mlp_problems(blk.mlp, where)
    if problems:
        raise UnsupportedModelError("unsupported model: " + "; ".join(dict.fromkeys(problems)))


# ----------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------

def _prefix_tokens(model):
    """Float prefix tokens ``[P, D]`` in the model's concatenation order."""
    import torch
    parts = [getattr(model, n) for n in ("cls_token", "dist_token", "reg_token")
             if getattr(model, n, None) is not None]
    if not parts:
        return None
    return torch.cat([p.reshape(-1, p.shape[-1]) for p in parts], 0).detach().double().numpy()


def _recorder(model, sink, only=None, **kwargs):
    """The forward hooks of ``model``'s family: :class:`_Recorder` (ViT, DeiT) or
    :class:`sw.swin.SwinRecorder`."""
    from .swin import SwinRecorder, is_swin
    if is_swin(model):
        return SwinRecorder(model, sink, only, **kwargs)
    return _Recorder(model, sink, only)


class _Recorder:
    """Forward hooks on a timm ViT that hand named float activations to a callback.

    ``only``: record just these names (hooks for the others are not installed; the ``qkv``
    hook, which derives q, k, v and the scores, is never among them).
    :attr:`stream_keys` names the LayerNorm inputs that :meth:`_Builder.stream` quantizes
    with Power-of-Two Factors.
    """

    def __init__(self, model, sink: Callable[[str, np.ndarray], None], only=None):
        self.model, self.sink, self.handles = model, sink, []
        self.stream_keys: set[str] = set()
        m = model

        def out(mod, key, fn=None, stream=False):
            if stream:
                self.stream_keys.add(key)
            if only is not None and key not in only:
                return
            def hook(_m, _inp, y):
                self.emit(key, y if fn is None else fn(y))
            self.handles.append(mod.register_forward_hook(hook))

        def inp(mod, key, stream=False):
            if stream:
                self.stream_keys.add(key)
            if only is not None and key not in only:
                return
            def hook(_m, args):
                self.emit(key, args[0])
            self.handles.append(mod.register_forward_pre_hook(hook))

        out(m.patch_embed, "patch_embed.out")
        out(m.pos_drop, "pos_embed.out", stream=True)
        if _is(m.norm_pre, "LayerNorm"):
            out(m.norm_pre, "norm_pre.out", stream=True)
        for i, blk in enumerate(m.blocks):
            p = f"blocks.{i}"
            out(blk.norm1, f"{p}.norm1.out")
            out(blk.attn.qkv, f"{p}.attn.qkv", lambda y, p=p, a=blk.attn: self._qkv(p, a, y))
            inp(blk.attn.proj, f"{p}.attn.out")
            out(blk.ls1, f"{p}.attn.proj.out")
            inp(blk.norm2, f"{p}.res1", stream=True)
            out(blk.norm2, f"{p}.norm2.out")
            out(blk.mlp.fc1, f"{p}.mlp.fc1.out")
            out(blk.mlp.act, f"{p}.mlp.act.out")
            out(blk.ls2, f"{p}.mlp.fc2.out")
            out(blk, f"{p}.res2", stream=True)
        if not _is(m.norm, "Identity"):
            out(m.norm, "norm.out")
        if getattr(m, "fc_norm", None) is not None and not _is(m.fc_norm, "Identity"):
            inp(m.fc_norm, "pooled", stream=True)
            out(m.fc_norm, "fc_norm.out")
        elif type(m).__name__ == "VisionTransformer" and m.global_pool == "avg":
            inp(m.head, "pooled")

    def _qkv(self, p, attn, y):
        b, t, _ = y.shape
        h, dh = attn.num_heads, attn.head_dim
        q, k, v = y.reshape(b, t, 3, h, dh).permute(2, 0, 3, 1, 4).unbind(0)
        self.emit(f"{p}.attn.q", q)
        self.emit(f"{p}.attn.k", k)
        self.emit(f"{p}.attn.v", v)
        self.emit(f"{p}.attn.scores", (q * attn.scale) @ k.transpose(-2, -1))
        return None

    def emit(self, key, y):
        if y is not None:
            self.sink(key, y.detach().double().numpy())

    def close(self):
        for h in self.handles:
            h.remove()


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_images(model_or_shape, n: int, seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """``n`` seeded random images: uniform pixels in [0, 1], normalized with the model's
    mean / std (or ``mean`` / ``std`` when given a shape ``(C, H, W)``).  Float32 ``[n, C, H, W]``."""
    if isinstance(model_or_shape, tuple):
        shape = model_or_shape
    else:
        m = model_or_shape
        c = m.patch_embed.proj.in_channels
        shape = (c, *m.patch_embed.img_size)
        cfg = getattr(m, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    c = shape[0]
    mean = np.resize(np.asarray(mean, np.float32), c).reshape(c, 1, 1)
    std = np.resize(np.asarray(std, np.float32), c).reshape(c, 1, 1)
    px = np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)
    return (px - mean) / std


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)


def calibrate(model, images: np.ndarray, observer: str = "minmax", batch: int = CALIB_BATCH,
              progress: bool = True) -> dict[str, Observer]:
    """Run the float model on ``images`` and return an observer per activation name.

    Two passes over the images: the first feeds every observer; the second, once the ranges
    are final, runs the Power-of-Two Factor search (:class:`~sw.observers.PtfSearch`) of
    every LayerNorm input over all calibration rows (``Observer.ptf``).

    The model runs in float64 for calibration (converted in place and restored to its own
    dtype afterwards, which is exact for float32 weights): float32 kernels differ between
    CPUs in their last bits, and a scale that moved by one float32 ulp could move a rounded
    weight or multiplier; in float64 the same calibration gives the same integer graph on
    every machine.
    """
    import torch
    if observer not in OBSERVERS:
        raise ValueError(f"unknown calibration method {observer!r}; choose from {', '.join(OBSERVERS)}")
    images = np.asarray(images, dtype=np.float32)
    _check_image_shape(model, images)
    observers: dict[str, Observer] = {}

    def sink(key, y):
        if key not in observers:
            observers[key] = Observer(observer, seed=len(observers))
        observers[key].observe(y)

    def run(rec: _Recorder, desc: str, first: bool) -> None:
        model.eval()
        try:
            with torch.no_grad(), _progress(len(images), desc, progress) as bar:
                for i in range(0, len(images), batch):
                    x = torch.from_numpy(images[i:i + batch]).double()
                    logits = model(x)
                    if first:
                        sink("image", x.double().numpy().transpose(0, 2, 3, 1))
                        sink("logits", logits.double().numpy())
                    bar.update(len(x))
        finally:
            rec.close()

    dtype = next(model.parameters()).dtype
    model.to(torch.float64)
    try:
        rec = _recorder(model, sink)
        run(rec, "calibrating", True)
        searches = {k: PtfSearch(observers[k], PTF_K) for k in rec.stream_keys if k in observers}
        run(_recorder(model, lambda k, y: searches[k].observe(y), only=set(searches)),
            "calibrating (PTF)", False)
    finally:
        model.to(dtype)
    for k, search in searches.items():
        observers[k].ptf = search
    return observers


def _check_image_shape(model, images: np.ndarray) -> None:
    want = (model.patch_embed.proj.in_channels, *model.patch_embed.img_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(want):
        raise ValueError(f"images of shape {tuple(images.shape)}; the model expects [N, {', '.join(map(str, want))}]")


# ----------------------------------------------------------------------------------------
# Graph construction
# ----------------------------------------------------------------------------------------

@dataclass
class _Q:
    """Quantization of one activation: ``real = scale (q - zp)``; ``scale`` scalar or per
    channel; ``alpha`` the PTF factors when ``scale = s1 * 2**alpha``."""
    scale: float | np.ndarray
    zp: int = 0
    alpha: np.ndarray | None = None

    def vec(self, n: int) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.scale, dtype=np.float64), (n,)).copy()

    def meta(self):
        s = np.asarray(self.scale, dtype=np.float64)
        return float(s) if s.ndim == 0 else [float(v) for v in s]


def _t(v) -> np.ndarray:
    return np.asarray(v.detach().double().cpu().numpy() if hasattr(v, "detach") else v, dtype=np.float64)


def _scalar(v) -> np.ndarray:
    return np.asarray(v, dtype=np.int64).reshape(())


class _Builder:
    """Emits ops and tensors while walking the model."""

    def __init__(self, obs: dict[str, Observer], ptf: bool):
        self.obs, self.ptf = obs, ptf
        self.tensors: dict[str, Tensor] = {}
        self.ops: list[Op] = []
        self.q: dict[str, _Q] = {}

    # -- activation quantization from observers
    def affine(self, key: str) -> _Q:
        s, zp = affine_params(*self.obs[key].range())
        return _Q(s, zp)

    def symmetric(self, key: str) -> _Q:
        return _Q(symmetric_scale(*self.obs[key].range(symmetric=True)), 0)

    def stream(self, key: str) -> _Q:
        """PTF quantization of a LayerNorm input (per-tensor 8-bit when PTF is off)."""
        o = self.obs[key]
        if self.ptf:
            s1, zp, alpha = ptf_factors(o, PTF_K)
        else:
            s1, zp = affine_params(*o.range())
            alpha = np.zeros(len(o.ch_lo), dtype=np.int64)
        return _Q(s1 * (2.0 ** alpha), zp, alpha)

    def tensor(self, name: str, shape, q: _Q | None, bits: int = 8, signed: bool = True) -> str:
        self.tensors[name] = Tensor(name, tuple(int(v) for v in shape), bits, signed,
                                    None if q is None else q.meta(), 0 if q is None else int(q.zp))
        if q is not None:
            self.q[name] = q
        return name

    def op(self, name, kind, inputs, output, attrs=None, params=None, meta=None) -> str:
        self.ops.append(Op(name, kind, list(inputs), [output], attrs or {}, params or {}, meta or {}))
        return output

    # -- ops
    def linear(self, name: str, x: str, weight, bias, out: str, out_q: _Q, shape, out_bits: int = 8) -> str:
        """int8 linear with the input's (per-channel) scale folded into the weights."""
        xq = self.q[x]
        w = _t(weight)
        n, k = w.shape
        b = np.zeros(n) if bias is None else _t(bias)
        w_eff = w * xq.vec(k)[None, :]
        s_w = np.abs(w_eff).max(axis=1) / 127.0
        s_w = np.where(s_w > 0, s_w, 1.0)
        wq = np.clip(np.rint(w_eff / s_w[:, None]), -127, 127).astype(np.int64)
        bias_int = np.rint(b / s_w).astype(np.int64) - xq.zp * wq.sum(axis=1)
        if np.abs(bias_int).max(initial=0) >= 2 ** 31:
            raise UnsupportedModelError(f"{name}: folded bias does not fit int32")
        mult, shift = intops.dyadic(s_w / out_q.vec(n))
        self.tensor(out, shape, out_q, bits=out_bits)
        return self.op(name, "linear", [x], out, {"zp_out": int(out_q.zp), "out_bits": out_bits},
                       {"weight": wq.astype(np.int8), "bias": bias_int.astype(np.int32),
                        "mult": mult, "shift": shift},
                       {"weight_scale": s_w})

    def add(self, name: str, a: str, b: str | None, out: str, out_q: _Q, shape,
            const_q: _Q | None = None, const=None) -> str:
        aq = self.q[a]
        bq = const_q if b is None else self.q[b]
        d = shape[-1]
        so = out_q.vec(d)
        ra, rb = aq.vec(d) / so, bq.vec(d) / so
        big = np.maximum(np.maximum(ra, rb), 1e-30)
        shift = np.clip(np.floor(np.log2(32767.0 / big)), 0, intops.REQUANT_MAX_SHIFT).astype(np.int64)
        ma, mb = np.rint(ra * 2.0 ** shift), np.rint(rb * 2.0 ** shift)
        over = np.maximum(ma, mb) > 32767
        shift = np.where(over, shift - 1, shift)
        ma, mb = np.rint(ra * 2.0 ** shift).astype(np.int64), np.rint(rb * 2.0 ** shift).astype(np.int64)
        if shift.min() < 0 or max(ma.max(), mb.max()) > 32767:
            raise UnsupportedModelError(f"{name}: residual scales too far apart for 16-bit multipliers")
        params = {"mult_a": ma, "mult_b": mb, "shift": shift}
        if b is None:
            params["const"] = const
        self.tensor(out, shape, out_q)
        meta = {"const_scale": float(bq.scale)} if b is None else {}
        return self.op(name, "add", [a] if b is None else [a, b], out,
                       {"zp_a": int(aq.zp), "zp_b": int(bq.zp), "zp_out": int(out_q.zp)}, params, meta)

    def layernorm(self, name: str, x: str, ln, out: str, out_q: _Q, shape) -> str:
        xq = self.q[x]
        c = shape[-1]
        alpha = xq.alpha if xq.alpha is not None else np.zeros(c, np.int64)
        if xq.alpha is None and np.ptp(xq.vec(c)) > 0:
            raise AssertionError(f"{name}: LayerNorm input must be PTF-quantized")
        gamma = _t(ln.weight) if ln.weight is not None else np.ones(c)
        beta = _t(ln.bias) if ln.bias is not None else np.zeros(c)
        so = out_q.vec(c)                      # per channel when the output is PTF-quantized
        try:
            mult, shift, offset = intops.ln_params(gamma, beta, so, int(out_q.zp))
        except ValueError as exc:
            raise UnsupportedModelError(f"{name}: {exc}") from None
        self.tensor(out, shape, out_q)
        return self.op(name, "layernorm", [x], out,
                       {"zp_in": int(xq.zp)},
                       {"alpha": np.asarray(alpha, np.int64), "mult": mult, "shift": shift, "offset": offset},
                       {"gamma": gamma, "beta": beta, "eps": float(ln.eps)})


def _head_params(model):
    """Head weight and bias over the pooled vector (distilled: both heads averaged)."""
    if type(model).__name__ == "VisionTransformerDistilled":
        w = np.concatenate([_t(model.head.weight), _t(model.head_dist.weight)], axis=1) / 2
        b = (_t(model.head.bias) + _t(model.head_dist.bias)) / 2
        return w, b
    return _t(model.head.weight), _t(model.head.bias)


def quantize(model, calib_images: np.ndarray, observer: str = "minmax", attn_bits: int = 4,
             ptf: bool = True, quantize_patch_embed: bool = True, progress: bool = True,
             observers: dict[str, Observer] | None = None, method: str = "fqvit",
             **method_options) -> IntGraph:
    """Post-training quantization of a timm ViT / DeiT / Swin into an :class:`IntGraph`.

    Parameters
    ----------
    model : timm VisionTransformer, VisionTransformerDistilled or SwinTransformer (float,
        eval mode; Swin with FQ-ViT only)
    calib_images : float array ``[N, C, H, W]``, normalized as the model expects
    observer : ``minmax`` | ``ema`` | ``percentile`` | ``omse``
    attn_bits : 4 (Log-Int-Softmax codes) or 8 (uniform 8-bit softmax)
    ptf : Power-of-Two Factor on every LayerNorm input (else per-tensor 8-bit)
    quantize_patch_embed : int8 patch embedding in the graph (else float on the host)
    observers : reuse a previous :func:`calibrate` result (same observer kind)
    method : ``fqvit`` (this module), ``ivit`` or ``ptq4vit`` (:mod:`sw.methods`, which
        takes ``method_options`` and documents which of the arguments above apply)
    """
    from .swin import assemble_swin, is_swin
    if is_swin(model) and method != "fqvit":
        raise UnsupportedModelError(f"Swin models are quantized with FQ-ViT only; {method} is not supported on Swin")
    if method != "fqvit":
        from .methods import quantize_with_method
        return quantize_with_method(method, model, calib_images, observer=observer, attn_bits=attn_bits,
                                    ptf=ptf, quantize_patch_embed=quantize_patch_embed,
                                    progress=progress, observers=observers, **method_options)
    if method_options:
        raise TypeError(f"options {sorted(method_options)} do not apply to FQ-ViT")
    check_supported(model)
    if attn_bits not in (4, 8):
        raise ValueError("attn_bits must be 4 (Log-Int-Softmax) or 8 (uniform softmax)")
    if observers is None:
        observers = calibrate(model, calib_images, observer, progress=progress)
    if is_swin(model):
        return assemble_swin(model, _Builder(observers, ptf), observers, attn_bits, ptf, quantize_patch_embed)
    return _assemble(model, _Builder(observers, ptf), observers, attn_bits, ptf, quantize_patch_embed,
                     _block, "fqvit")


def _assemble(model, B: _Builder, observers: dict[str, Observer], attn_bits: int, ptf: bool,
              quantize_patch_embed: bool, block: Callable, method: str) -> IntGraph:
    """The graph of ``model`` from builder ``B``: patch and position embedding, ``block`` for
    every transformer block, final norm, pooling and head (shared by FQ-ViT and PTQ4ViT)."""
    m = model
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
    host: dict[str, np.ndarray] = {}
    pw = _t(conv.weight).reshape(d, -1)
    pb = _t(conv.bias) if conv.bias is not None else np.zeros(d)

    # patch tokens
    pe_lo, pe_hi = observers["patch_embed.out"].range()
    if prefix is not None and not no_embed_class:   # prefix tokens share the patch tokens' grid
        pe_lo, pe_hi = min(pe_lo, float(prefix.min())), max(pe_hi, float(prefix.max()))
    pe_q = _Q(*affine_params(pe_lo, pe_hi))
    if quantize_patch_embed:
        img_q = B.affine("image")
        x = B.tensor("image", (cin, hh, ww), img_q)
        inputs = [x]
        pat = B.tensor("patches", (n_patch, cin * p * p), img_q)
        B.op("patch_embed.patchify", "patchify", [x], pat, {"patch": p})
        x = B.linear("patch_embed.proj", pat, pw, pb, "patch_embed.out", pe_q, (n_patch, d))
    else:
        x = B.tensor("patch_embed.out", (n_patch, d), pe_q)
        inputs = [x]
        host = {"patch_weight": pw, "patch_bias": pb}

    # prefix tokens and position embedding
    stream_q = B.stream("pos_embed.out")
    pos = _t(m.pos_embed).reshape(-1, d)
    pos_obs = Observer("minmax")
    pos_obs.observe(pos)
    pos_q = _Q(*affine_params(*pos_obs.range()))
    pos_int = quantize_int8(pos, pos_q.scale, pos_q.zp)

    def concat(src, q):
        vals = quantize_int8(prefix, q.vec(d), q.zp)
        B.tensor("tokens", (T, d), q)
        return B.op("prefix_tokens", "concat_tokens", [src], "tokens", {}, {"tokens": vals})

    if no_embed_class:
        x = B.add("pos_embed", x, None, "pos_embed.out" if prefix is None else "pos_embed.sum",
                  stream_q, (n_patch, d), pos_q, pos_int)
        if prefix is not None:
            x = concat(x, stream_q)
    else:
        if prefix is not None:
            x = concat(x, pe_q)
        x = B.add("pos_embed", x, None, "pos_embed.out", stream_q, (T, d), pos_q, pos_int)

    # pre-norm of CLIP-style ViTs: its output is the residual stream, so PTF-quantized
    if _is(m.norm_pre, "LayerNorm"):
        x = B.layernorm("norm_pre", x, m.norm_pre, "norm_pre.out", B.stream("norm_pre.out"), (T, d))

    # transformer blocks
    for i, blk in enumerate(m.blocks):
        x = block(B, f"blocks.{i}", blk, x, T, d, attn_bits)

    # final norm, pooling, head
    if not _is(m.norm, "Identity"):
        x = B.layernorm("norm", x, m.norm, "norm.out", B.affine("norm.out"), (T, d))
    if distilled or m.global_pool == "token":
        idx = [0, 1] if distilled else [0]
        pooled_shape = (len(idx) * d,)
        xq = B.q[x]
        B.tensor("pooled", pooled_shape, _Q(np.tile(xq.vec(d), len(idx)), xq.zp))
        x = B.op("pool", "select_tokens", [x], "pooled", {"indices": idx})
    else:
        xq = B.q[x]
        has_fc_norm = not _is(m.fc_norm, "Identity")
        pq = B.stream("pooled") if has_fc_norm else B.affine("pooled")
        mult, shift = intops.dyadic(xq.vec(d) / (n_patch * pq.vec(d)))
        B.tensor("pooled", (d,), pq)
        x = B.op("pool", "token_mean", [x], "pooled",
                 {"start": n_prefix, "zp_in": int(xq.zp), "zp_out": int(pq.zp)},
                 {"mult": mult, "shift": shift})
        if has_fc_norm:
            x = B.layernorm("fc_norm", x, m.fc_norm, "fc_norm.out", B.affine("fc_norm.out"), (d,))
    hw_, hb = _head_params(m)
    lo, hi = observers["logits"].range(symmetric=True)
    logit_q = _Q(max(hi, 1e-6) * LOGIT_HEADROOM / 32767.0, 0)
    x = B.linear("head", x, hw_, hb, "logits", logit_q, (hw_.shape[0],), out_bits=16)

    cfg = getattr(m, "pretrained_cfg", None) or {}
    info = {"model": cfg.get("architecture", type(m).__name__), "method": method,
            "image_shape": [cin, hh, ww], "patch": p, "num_classes": int(hw_.shape[0]),
            "prefix_tokens": n_prefix, "observer": next(iter(observers.values())).method,
            "attn_bits": attn_bits, "ptf": bool(ptf), "quantize_patch_embed": bool(quantize_patch_embed),
            "mean": [float(v) for v in np.resize(cfg.get("mean", IMAGENET_MEAN), cin)],
            "std": [float(v) for v in np.resize(cfg.get("std", IMAGENET_STD), cin)],
            "input_scale": float(B.q[inputs[0]].scale), "input_zero_point": int(B.q[inputs[0]].zp)}
    g = IntGraph(B.tensors, B.ops, inputs, ["logits"], info, host)
    g.validate()
    return g


def _block(B: _Builder, p: str, blk, x: str, T: int, d: int, attn_bits: int) -> str:
    attn = blk.attn
    h, dh = attn.num_heads, attn.head_dim
    n1 = B.layernorm(f"{p}.norm1", x, blk.norm1, f"{p}.norm1.out", B.affine(f"{p}.norm1.out"), (T, d))

    # qkv: symmetric, one scale per section
    sq, sk, sv = (B.symmetric(f"{p}.attn.{s}").scale for s in "qkv")
    qkv_q = _Q(np.repeat([sq, sk, sv], d), 0)
    qkv = B.linear(f"{p}.attn.qkv", n1, attn.qkv.weight, attn.qkv.bias, f"{p}.attn.qkv.out", qkv_q, (T, 3 * d))

    # scores at ln2 / 2**P, P as large as the calibrated range allows
    smax = max(abs(v) for v in B.obs[f"{p}.attn.scores"].range())
    frac = softmax_input_frac_bits(smax)
    s_scores = math.log(2.0) / 2 ** frac
    m_, s_ = intops.dyadic(sq * sk * float(attn.scale) / s_scores)
    sc = B.tensor(f"{p}.attn.scores", (h, T, T), _Q(s_scores, 0), bits=16)
    B.op(f"{p}.attn.qk", "qk_scores", [qkv], sc, {"heads": h, "head_dim": dh},
         {"mult": _scalar(m_), "shift": _scalar(s_)}, {"scale": float(attn.scale)})
    mode = "lis" if attn_bits == 4 else "uniform"
    b_int, c_int = intops.lis_exp_constants(frac)
    pr = B.tensor(f"{p}.attn.probs", (h, T, T), None, bits=8, signed=False)
    B.op(f"{p}.attn.softmax", "softmax", [sc], pr,
         {"mode": mode, "frac_bits": frac, "b_int": b_int, "c_int": c_int})
    ctx_q = B.affine(f"{p}.attn.out")
    acc_scale = sv * (2.0 ** -intops.LIS_SHIFT_BASE if mode == "lis" else 2.0 ** -8)
    m_, s_ = intops.dyadic(acc_scale / ctx_q.scale)
    ctx = B.tensor(f"{p}.attn.out", (T, d), ctx_q)
    B.op(f"{p}.attn.av", "attn_value", [pr, qkv], ctx,
         {"heads": h, "head_dim": dh, "mode": mode, "zp_out": int(ctx_q.zp)},
         {"mult": _scalar(m_), "shift": _scalar(s_)})

    g1 = _layerscale(blk.ls1, d)
    pj = B.linear(f"{p}.attn.proj", ctx, _t(attn.proj.weight) * g1[:, None],
                  _bias(attn.proj, d) * g1, f"{p}.attn.proj.out", B.affine(f"{p}.attn.proj.out"), (T, d))
    r1 = B.add(f"{p}.add1", x, pj, f"{p}.res1", B.stream(f"{p}.res1"), (T, d))

    n2 = B.layernorm(f"{p}.norm2", r1, blk.norm2, f"{p}.norm2.out", B.affine(f"{p}.norm2.out"), (T, d))
    hid = blk.mlp.fc1.out_features
    f1 = B.linear(f"{p}.mlp.fc1", n2, blk.mlp.fc1.weight, blk.mlp.fc1.bias, f"{p}.mlp.fc1.out",
                  B.affine(f"{p}.mlp.fc1.out"), (T, hid))
    ge = _gelu(B, f"{p}.mlp.act", blk.mlp.act, f1, f"{p}.mlp.act.out", (T, hid))
    g2 = _layerscale(blk.ls2, d)
    f2 = B.linear(f"{p}.mlp.fc2", ge, _t(blk.mlp.fc2.weight) * g2[:, None], _bias(blk.mlp.fc2, d) * g2,
                  f"{p}.mlp.fc2.out", B.affine(f"{p}.mlp.fc2.out"), (T, d))
    return B.add(f"{p}.add2", r1, f2, f"{p}.res2", B.stream(f"{p}.res2"), (T, d))


def _layerscale(ls, d: int) -> np.ndarray:
    return _t(ls.gamma) if _is(ls, "LayerScale") else np.ones(d)


def _bias(lin, d: int) -> np.ndarray:
    return _t(lin.bias) if lin.bias is not None else np.zeros(d)


def _gelu(B: _Builder, name: str, act, x: str, out: str, shape) -> str:
    """The activation as a 256-entry table: ``table[i] = q_out(act(s_in (i - 128 - zp_in)))``."""
    import torch
    iq, oq = B.q[x], B.affine(out)
    codes = np.arange(-128, 128)
    with torch.no_grad():
        y = act(torch.from_numpy((codes - iq.zp) * float(iq.scale))).numpy()
    table = quantize_int8(y, oq.scale, oq.zp)
    B.tensor(out, shape, oq)
    return B.op(name, "gelu", [x], out, {}, {"table": table},
                {"approximate": "tanh" if "Tanh" in type(act).__name__ else str(getattr(act, "approximate", "none"))})


# ----------------------------------------------------------------------------------------
# Convenience entry points
# ----------------------------------------------------------------------------------------

def quantize_timm(name: str, calib_images: np.ndarray | None = None, checkpoint: str | None = None,
                  n_calib: int = DEFAULT_CALIB_IMAGES, seed: int = 0, **kwargs) -> IntGraph:
    """:func:`create_model` + :func:`quantize`; seeded random calibration images by default."""
    import torch
    torch.manual_seed(seed)
    model = create_model(name, checkpoint)
    check_supported(model)                    # before random_images reads the patch embedding
    if calib_images is None:
        calib_images = random_images(model, n_calib, seed)
    g = quantize(model, calib_images, **kwargs)
    g.info["model"] = name
    return g


def quantize_input(images: np.ndarray, graph: IntGraph) -> np.ndarray:
    """Float images ``[N, C, H, W]`` (normalized as the model expects) -> the graph's int8
    input (the image, or the patch tokens when the patch embedding stays on the host)."""
    images = np.asarray(images, dtype=np.float64)
    want = tuple(graph.info["image_shape"])
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ValueError(f"images of shape {tuple(images.shape)}; the model expects "
                         f"[N, {', '.join(map(str, want))}]")
    t = graph.tensors[graph.inputs[0]]
    if graph.host:
        p = graph.info["patch"]
        b, c, h, w = images.shape
        rows = images.reshape(b, c, h // p, p, w // p, p).transpose(0, 2, 4, 1, 3, 5)
        rows = rows.reshape(b, (h // p) * (w // p), c * p * p)
        images = rows @ graph.host["patch_weight"].T + graph.host["patch_bias"]
    return quantize_int8(images, np.asarray(t.scale, dtype=np.float64), t.zero_point)


def layer_sqnr(model, graph: IntGraph, images: np.ndarray) -> list[tuple[str, float]]:
    """Signal-to-quantization-noise ratio (dB) of every graph tensor that has a float
    counterpart in the model: ``10 log10(sum f^2 / sum (f - deq(q))^2)`` over ``images``."""
    import torch
    from .executor import execute
    from .methods.common import dequantize       # twin codes of PTQ4ViT graphs decode too
    floats: dict[str, list[np.ndarray]] = {}
    rec = _recorder(model, lambda k, y: floats.setdefault(k, []).append(y), masked=np.nan)
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(np.asarray(images, np.float32))).double().numpy()
    finally:
        rec.close()
    ref = {k: v[0] for k, v in floats.items()}
    ref["logits"] = logits
    env = execute(graph, quantize_input(images, graph), keep=True)
    result = []
    for name, t in graph.tensors.items():
        f = ref.get(name)
        if name.endswith(".attn.qkv.out"):
            p = name[: -len(".qkv.out")]
            b = len(images)
            parts = [ref[f"{p}.{s}"] for s in "qkv"]
            f = np.stack(parts, 0).transpose(1, 3, 0, 2, 4).reshape(b, t.shape[0], -1)
        if f is None or name not in env or t.scale is None or f.shape[1:] != tuple(t.shape):
            continue
        deq = dequantize(graph, name, env[name])
        ok = np.isfinite(f)                   # Swin: scores a shifted window masks are left out
        noise = float(np.sum((f - deq)[ok] ** 2))
        result.append((name, 10 * math.log10(float(np.sum(f[ok] ** 2)) / max(noise, 1e-300))))
    return result
