"""Small random integer ViT graphs built directly through the IR, for tests and demos.

:func:`tiny_vit` returns an :class:`~sw.graph.IntGraph` with the op sequence of a timm ViT
(patch embedding, class token, position embedding, pre-norm blocks with multi-head
attention and a GELU MLP, final norm, class-token or mean pooling, head) and random integer
parameters scaled so that activations spread over the int8 range instead of saturating.
Options cover the variants the quantizer produces: a graph input that is already the patch
tokens (patch embedding kept in float on the host), the position embedding added before the
prefix tokens are concatenated (timm's ``no_embed_class``), distilled two-token pooling
(``select_tokens`` of tokens 0 and 1 into one head) and mean pooling followed by a norm.
"""
from __future__ import annotations

import math

import numpy as np

from sw import intops
from sw.graph import IntGraph, Op, Tensor

__all__ = ["tiny_vit", "random_image"]


def _dyadic_scalar(ratio: float) -> tuple[np.ndarray, np.ndarray]:
    mult, shift = intops.dyadic(ratio)
    return np.asarray(mult, dtype=np.int64).reshape(()), np.asarray(shift, dtype=np.int64).reshape(())


def tiny_vit(seed: int = 0, image: int = 8, patch: int = 4, channels: int = 3, dim: int = 16,
             heads: int = 2, depth: int = 1, mlp_ratio: int = 2, classes: int = 10,
             softmax_mode: str = "lis", pool: str = "token", prefix_tokens: int = 1,
             head_bits: int = 16, embed: str = "image", pos_first: bool = False,
             fc_norm: bool = False) -> IntGraph:
    """A random tiny ViT: ``(image / patch)**2 + prefix_tokens`` tokens of ``dim`` channels.

    ``pool``: ``"token"`` (token 0 into the head), ``"distilled"`` (tokens 0 and 1 flattened
    into one head of ``2 dim`` inputs; needs ``prefix_tokens >= 2``) or ``"mean"`` (mean of
    the patch tokens, followed by a LayerNorm when ``fc_norm``).  ``embed``: ``"image"`` (the
    graph input is the int8 image, patchified and embedded by a linear layer) or
    ``"tokens"`` (the graph input is the int8 patch tokens ``[(image / patch)**2, dim]``).
    ``pos_first``: add the position embedding to the patch tokens before the prefix tokens
    are concatenated.
    """
    if pool not in ("token", "distilled", "mean"):
        raise ValueError(f"pool must be token, distilled or mean, got {pool!r}")
    if pool == "distilled" and prefix_tokens < 2:
        raise ValueError("distilled pooling needs two prefix tokens")
    if embed not in ("image", "tokens"):
        raise ValueError(f"embed must be image or tokens, got {embed!r}")
    rng = np.random.default_rng(seed)
    tensors: dict[str, Tensor] = {}
    ops: list[Op] = []

    def tensor(name, shape, bits=8, signed=True):
        tensors[name] = Tensor(name, tuple(shape), bits, signed, 1.0, int(rng.integers(-8, 9)))
        return name

    def zp(name):
        return tensors[name].zero_point

    def linear(name, x, k, n, out, out_bits=8, gelu_next=False):
        w = rng.integers(-40, 41, size=(n, k)).astype(np.int8)
        bias = rng.integers(-2000, 2001, size=n).astype(np.int32)
        ratio = 45.0 / (math.sqrt(k) * 40 * 50)
        mult, shift = intops.dyadic(ratio * rng.uniform(0.7, 1.3, size=n))
        ops.append(Op(name, "linear", [x], [out], {"zp_out": zp(out), "out_bits": out_bits},
                      {"weight": w, "bias": bias, "mult": mult.astype(np.int16), "shift": shift}))

    def layernorm(name, x, c, out):
        mult, shift, offset = intops.ln_params(35 * rng.uniform(0.5, 1.5, size=c),
                                               rng.uniform(-20, 20, size=c), 1.0, zp(out))
        ops.append(Op(name, "layernorm", [x], [out], {"zp_in": zp(x)},
                      {"alpha": rng.integers(0, 4, size=c), "mult": mult, "shift": shift,
                       "offset": offset}))

    def add(name, a, b, d, out, const=None):
        shift = np.full(d, 12)
        params = {"mult_a": rng.integers(1200, 2800, size=d), "mult_b": rng.integers(1200, 2800, size=d),
                  "shift": shift}
        inputs = [a] if const is not None else [a, b]
        if const is not None:
            params["const"] = const
        ops.append(Op(name, "add", inputs, [out],
                      {"zp_a": zp(a), "zp_b": zp(b) if b else 0, "zp_out": zp(out)}, params))

    n_side = image // patch
    tokens = n_side * n_side
    T = tokens + prefix_tokens
    if embed == "image":
        img = tensor("image", (channels, image, image))
        pat = tensor("patches", (tokens, channels * patch * patch))
        ops.append(Op("patch_embed.patchify", "patchify", [img], [pat], {"patch": patch}))
        emb = tensor("patch_embed.out", (tokens, dim))
        linear("patch_embed.proj", pat, channels * patch * patch, dim, emb)
    else:
        img = emb = tensor("patch_tokens", (tokens, dim))
    x = emb
    if pos_first:
        pos = tensor("pos_embed.out", (tokens, dim))
        add("pos_embed", x, None, dim, pos, const=rng.integers(-50, 51, size=(tokens, dim)).astype(np.int8))
        x = pos
    if prefix_tokens:
        cat = tensor("tokens", (T, dim))
        tensors[cat].zero_point = zp(x)
        ops.append(Op("cls_token", "concat_tokens", [x], [cat], {},
                      {"tokens": rng.integers(-60, 61, size=(prefix_tokens, dim)).astype(np.int8)}))
        x = cat
    if not pos_first:
        pos = tensor("pos_embed.out", (T, dim))
        add("pos_embed", x, None, dim, pos, const=rng.integers(-50, 51, size=(T, dim)).astype(np.int8))
        x = pos
    dh = dim // heads
    for b in range(depth):
        p = f"blocks.{b}"
        n1 = tensor(f"{p}.norm1.out", (T, dim))
        layernorm(f"{p}.norm1", x, dim, n1)
        qkv = tensor(f"{p}.attn.qkv.out", (T, 3 * dim))
        linear(f"{p}.attn.qkv", n1, dim, 3 * dim, qkv)
        sc = tensor(f"{p}.attn.scores", (heads, T, T), bits=16)
        fb = 4
        m, s = _dyadic_scalar(2 ** fb / (dh * 40.0) * 4)
        ops.append(Op(f"{p}.attn.qk", "qk_scores", [qkv], [sc], {"heads": heads, "head_dim": dh},
                      {"mult": m, "shift": s}))
        pr = tensor(f"{p}.attn.probs", (heads, T, T), bits=8, signed=False)
        b_int, c_int = intops.lis_exp_constants(fb)
        ops.append(Op(f"{p}.attn.softmax", "softmax", [sc], [pr],
                      {"mode": softmax_mode, "frac_bits": fb, "b_int": b_int, "c_int": c_int}))
        ao = tensor(f"{p}.attn.out", (T, dim))
        ratio = 1.5 / 2 ** 15 if softmax_mode == "lis" else 1.5 / 256
        m, s = _dyadic_scalar(ratio)
        ops.append(Op(f"{p}.attn.av", "attn_value", [pr, qkv], [ao],
                      {"heads": heads, "head_dim": dh, "mode": softmax_mode, "zp_out": zp(ao)},
                      {"mult": m, "shift": s}))
        pj = tensor(f"{p}.attn.proj.out", (T, dim))
        linear(f"{p}.attn.proj", ao, dim, dim, pj)
        r1 = tensor(f"{p}.res1", (T, dim))
        add(f"{p}.add1", x, pj, dim, r1)
        n2 = tensor(f"{p}.norm2.out", (T, dim))
        layernorm(f"{p}.norm2", r1, dim, n2)
        hid = dim * mlp_ratio
        f1 = tensor(f"{p}.mlp.fc1.out", (T, hid))
        linear(f"{p}.mlp.fc1", n2, dim, hid, f1)
        ge = tensor(f"{p}.mlp.act.out", (T, hid))
        ops.append(Op(f"{p}.mlp.act", "gelu", [f1], [ge], {},
                      {"table": np.clip(np.arange(-128, 128) // 2 + rng.integers(-3, 4, 256), -128, 127).astype(np.int8)}))
        f2 = tensor(f"{p}.mlp.fc2.out", (T, dim))
        linear(f"{p}.mlp.fc2", ge, hid, dim, f2)
        r2 = tensor(f"{p}.res2", (T, dim))
        add(f"{p}.add2", r1, f2, dim, r2)
        x = r2
    nf = tensor("norm.out", (T, dim))
    layernorm("norm", x, dim, nf)
    if pool == "token":
        pooled = tensor("pooled", (dim,))
        ops.append(Op("pool", "select_tokens", [nf], [pooled], {"indices": [0]}))
    elif pool == "distilled":
        pooled = tensor("pooled", (2 * dim,))
        ops.append(Op("pool", "select_tokens", [nf], [pooled], {"indices": [0, 1]}))
    else:
        pooled = tensor("pooled", (dim,))
        mult, shift = intops.dyadic(np.full(dim, 1.0 / (T - prefix_tokens)))
        ops.append(Op("pool", "token_mean", [nf], [pooled],
                      {"start": prefix_tokens, "zp_in": zp(nf), "zp_out": zp(pooled)},
                      {"mult": mult, "shift": shift}))
        if fc_norm:
            normed = tensor("fc_norm.out", (dim,))
            layernorm("fc_norm", pooled, dim, normed)
            pooled = normed
    logits = tensor("logits", (classes,), bits=head_bits)
    linear("head", pooled, tensors[pooled].shape[0], classes, logits, out_bits=head_bits)
    g = IntGraph(tensors, ops, [img], [logits], {"model": "tiny_vit", "seed": seed})
    g.validate()
    return g


def random_image(graph: IntGraph, seed: int = 0) -> np.ndarray:
    """A random int8 input of the graph's (single) input shape."""
    t = graph.tensors[graph.inputs[0]]
    return np.random.default_rng(seed).integers(-128, 128, size=t.shape).astype(np.int8)
