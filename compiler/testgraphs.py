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

__all__ = ["tiny_vit", "tiny_swin", "swin_tiny_shaped", "shift_mask", "random_image"]


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


def shift_mask(grid, window, shift, value: int) -> np.ndarray:
    """Swin's shifted-window attention mask, int16 ``[nW, N, N]``: ``value`` where query and
    key come from different regions of the rolled grid (timm's ``img_mask`` slices), else 0."""
    h, w = grid
    wh, ww = window
    sh, sw = shift
    labels = np.zeros((h, w), dtype=np.int64)
    cnt = 0
    for hs in ((0, h - wh), (h - wh, h - sh), (h - sh, h)):
        for ws in ((0, w - ww), (w - ww, w - sw), (w - sw, w)):
            labels[hs[0]:hs[1], ws[0]:ws[1]] = cnt
            cnt += 1
    win = intops.window_partition(labels.reshape(1, h * w, 1), grid, window, (0, 0))[0, :, 0]
    win = win.reshape(-1, wh * ww)
    return np.where(win[:, :, None] != win[:, None, :], value, 0).astype(np.int16)


def tiny_swin(seed: int = 0, image: int = 16, patch: int = 2, channels: int = 3, dim: int = 8,
              depths=(2,), heads=(2,), window: int = 4, mlp_ratio: int = 2, classes: int = 10,
              softmax_mode: str = "lis", head_bits: int = 16, shift: str = "odd",
              bias: bool = True) -> IntGraph:
    """A random Swin Transformer with the op sequence of the quantized timm Swin.

    Stem ``patchify -> linear -> layernorm``; per block: ``layernorm -> window_partition
    (grid, window, shift) -> linear qkv -> qk_scores (windows, relative position bias, the
    shift mask in shifted blocks) -> softmax -> attn_value -> linear proj -> window_reverse
    -> add -> layernorm -> fc1 -> gelu -> fc2 -> add``, odd blocks of a stage shifted by half
    a window (unless the window covers the grid); between stages ``patch_merge -> layernorm
    (4C) -> linear`` (no bias) to ``2C``; ``layernorm -> token_mean -> linear`` head.
    ``window`` is capped at each stage's grid, as timm does.  ``shift``: which blocks of a
    stage are shifted by half a window (``"odd"``, as Swin; ``"all"``; ``"none"``), never
    when the window covers the grid.
    """
    if shift not in ("odd", "all", "none"):
        raise ValueError(f"shift must be odd, all or none, got {shift!r}")
    if len(depths) != len(heads):
        raise ValueError("depths and heads need one entry per stage")
    rng = np.random.default_rng(seed)
    tensors: dict[str, Tensor] = {}
    ops: list[Op] = []

    def tensor(name, shape, bits=8, signed=True):
        tensors[name] = Tensor(name, tuple(shape), bits, signed, 1.0, int(rng.integers(-8, 9)))
        return name

    def zp(name):
        return tensors[name].zero_point

    def linear(name, x, k, n, out, out_bits=8, with_bias=True):
        w = rng.integers(-40, 41, size=(n, k)).astype(np.int8)
        b = rng.integers(-2000, 2001, size=n) if with_bias else np.zeros(n, dtype=np.int64)
        ratio = 45.0 / (math.sqrt(k) * 40 * 50)
        mult, shift_ = intops.dyadic(ratio * rng.uniform(0.7, 1.3, size=n))
        ops.append(Op(name, "linear", [x], [out], {"zp_out": zp(out), "out_bits": out_bits},
                      {"weight": w, "bias": b.astype(np.int32), "mult": mult.astype(np.int16),
                       "shift": shift_}))

    def layernorm(name, x, c, out):
        mult, shift_, offset = intops.ln_params(35 * rng.uniform(0.5, 1.5, size=c),
                                                rng.uniform(-20, 20, size=c), 1.0, zp(out))
        ops.append(Op(name, "layernorm", [x], [out], {"zp_in": zp(x)},
                      {"alpha": rng.integers(0, 4, size=c), "mult": mult, "shift": shift_,
                       "offset": offset}))

    def add(name, a, b, d, out):
        ops.append(Op(name, "add", [a, b], [out], {"zp_a": zp(a), "zp_b": zp(b), "zp_out": zp(out)},
                      {"mult_a": rng.integers(1200, 2800, size=d),
                       "mult_b": rng.integers(1200, 2800, size=d), "shift": np.full(d, 12)}))

    side = image // patch
    img = tensor("image", (channels, image, image))
    pat = tensor("patches", (side * side, channels * patch * patch))
    ops.append(Op("patch_embed.patchify", "patchify", [img], [pat], {"patch": patch}))
    emb = tensor("patch_embed.proj.out", (side * side, dim))
    linear("patch_embed.proj", pat, channels * patch * patch, dim, emb)
    x = tensor("patch_embed.norm.out", (side * side, dim))
    layernorm("patch_embed.norm", emb, dim, x)
    grid, C = [side, side], dim
    for s, (depth, H) in enumerate(zip(depths, heads)):
        if s > 0:
            p = f"layers.{s}.downsample"
            grid = [grid[0] // 2, grid[1] // 2]
            T = grid[0] * grid[1]
            mg = tensor(f"{p}.merge.out", (T, 4 * C))
            ops.append(Op(f"{p}.merge", "patch_merge", [x], [mg], {"grid": [2 * grid[0], 2 * grid[1]]}))
            nm = tensor(f"{p}.norm.out", (T, 4 * C))
            layernorm(f"{p}.norm", mg, 4 * C, nm)
            x = tensor(f"{p}.reduction.out", (T, 2 * C))
            linear(f"{p}.reduction", nm, 4 * C, 2 * C, x, with_bias=False)
            C *= 2
        T = grid[0] * grid[1]
        win = [min(window, grid[0]), min(window, grid[1])]
        N = win[0] * win[1]
        nW = T // N
        dh = C // H
        for b in range(depth):
            p = f"layers.{s}.blocks.{b}"
            shifted = shift == "all" or (shift == "odd" and b % 2 == 1)
            sh = [w // 2 if shifted and w < g else 0 for w, g in zip(win, grid)]
            wattrs = {"grid": list(grid), "window": list(win), "shift": sh}
            n1 = tensor(f"{p}.norm1.out", (T, C))
            layernorm(f"{p}.norm1", x, C, n1)
            xw = tensor(f"{p}.attn.windows", (T, C))
            tensors[xw].zero_point = zp(n1)
            ops.append(Op(f"{p}.attn.partition", "window_partition", [n1], [xw], dict(wattrs)))
            qkv = tensor(f"{p}.attn.qkv.out", (T, 3 * C))
            linear(f"{p}.attn.qkv", xw, C, 3 * C, qkv)
            sc = tensor(f"{p}.attn.scores", (nW * H, N, N), bits=16)
            fb = 4
            m, sf = _dyadic_scalar(2 ** fb / (dh * 40.0) * 4)
            params = {"mult": m, "shift": sf}
            if bias:
                params["bias"] = rng.integers(-120, 121, size=(H, N, N)).astype(np.int16)
            if any(sh):
                params["mask"] = shift_mask(grid, win, sh, int(rng.integers(-32768, -3000)))
            ops.append(Op(f"{p}.attn.qk", "qk_scores", [qkv], [sc],
                          {"heads": H, "head_dim": dh, "windows": nW}, params))
            pr = tensor(f"{p}.attn.probs", (nW * H, N, N), bits=8, signed=False)
            b_int, c_int = intops.lis_exp_constants(fb)
            ops.append(Op(f"{p}.attn.softmax", "softmax", [sc], [pr],
                          {"mode": softmax_mode, "frac_bits": fb, "b_int": b_int, "c_int": c_int,
                           "windows": nW}))
            ao = tensor(f"{p}.attn.out", (T, C))
            ratio = 1.5 / 2 ** 15 if softmax_mode == "lis" else 1.5 / 256
            m, sf = _dyadic_scalar(ratio)
            ops.append(Op(f"{p}.attn.av", "attn_value", [pr, qkv], [ao],
                          {"heads": H, "head_dim": dh, "mode": softmax_mode, "zp_out": zp(ao),
                           "windows": nW}, {"mult": m, "shift": sf}))
            pj = tensor(f"{p}.attn.proj.out", (T, C))
            linear(f"{p}.attn.proj", ao, C, C, pj)
            rv = tensor(f"{p}.attn.reverse.out", (T, C))
            tensors[rv].zero_point = zp(pj)
            ops.append(Op(f"{p}.attn.reverse", "window_reverse", [pj], [rv], dict(wattrs)))
            r1 = tensor(f"{p}.res1", (T, C))
            add(f"{p}.add1", x, rv, C, r1)
            n2 = tensor(f"{p}.norm2.out", (T, C))
            layernorm(f"{p}.norm2", r1, C, n2)
            hid = C * mlp_ratio
            f1 = tensor(f"{p}.mlp.fc1.out", (T, hid))
            linear(f"{p}.mlp.fc1", n2, C, hid, f1)
            ge = tensor(f"{p}.mlp.act.out", (T, hid))
            ops.append(Op(f"{p}.mlp.act", "gelu", [f1], [ge], {},
                          {"table": np.clip(np.arange(-128, 128) // 2 + rng.integers(-3, 4, 256), -128, 127).astype(np.int8)}))
            f2 = tensor(f"{p}.mlp.fc2.out", (T, C))
            linear(f"{p}.mlp.fc2", ge, hid, C, f2)
            r2 = tensor(f"{p}.res2", (T, C))
            add(f"{p}.add2", r1, f2, C, r2)
            x = r2
    nf = tensor("norm.out", (T, C))
    layernorm("norm", x, C, nf)
    pooled = tensor("pooled", (C,))
    mult, shift_ = intops.dyadic(np.full(C, 1.0 / T))
    ops.append(Op("pool", "token_mean", [nf], [pooled], {"start": 0, "zp_in": zp(nf), "zp_out": zp(pooled)},
                  {"mult": mult, "shift": shift_}))
    logits = tensor("logits", (classes,), bits=head_bits)
    linear("head", pooled, C, classes, logits, out_bits=head_bits)
    g = IntGraph(tensors, ops, [img], [logits], {"model": "tiny_swin", "seed": seed})
    g.validate()
    return g


def swin_tiny_shaped(seed: int = 0, depths=(2, 2, 6, 2)) -> IntGraph:
    """A random graph of swin_tiny_patch4_window7_224's shape (224 x 224 image, patch 4,
    96 channels, depths 2-2-6-2, heads 3-6-12-24, window 7, 1000 classes)."""
    return tiny_swin(seed, image=224, patch=4, channels=3, dim=96, depths=depths,
                     heads=(3, 6, 12, 24)[:len(depths)], window=7, mlp_ratio=4, classes=1000)


def random_image(graph: IntGraph, seed: int = 0) -> np.ndarray:
    """A random int8 input of the graph's (single) input shape."""
    t = graph.tensors[graph.inputs[0]]
    return np.random.default_rng(seed).integers(-128, 128, size=t.shape).astype(np.int8)
