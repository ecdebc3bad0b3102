"""PTQ4ViT (Yuan et al., "PTQ4ViT: Post-Training Quantization for Vision Transformers with
Twin Uniform Quantization", ECCV 2022) as an integer graph.

Two ideas, as in the authors' code (``quant_layers/``, ``utils/quant_calib.py``), with
constants checked against it:

* **Twin uniform quantization** of the post-softmax values (two ranges, steps ``1/L`` and
  ``2**-m / L`` with ``L = 2**(k-1) - 1``, ``m`` searched over ``0..19``; the code's MSB
  selects the range) and of the post-GELU values (negative values at a small step, positive
  values at a searched step ``2**m`` times larger).  Here the two steps are always a power of
  two apart, so the integer executor multiplies twin codes with integer products and a shift
  (:func:`sw.intops.attn_value_twin`, :func:`sw.intops.linear_twin`).
* **Hessian-guided scale search**: for every matmul, the steps of its two operands are
  searched alternately (3 rounds) over ``init * (0.01 + 1.19 i / 100)``, ``i = 0..100``
  (``init = max|x| / L``), minimising ``sum (g (O - O_hat))**2`` with ``g`` the gradient of
  the task loss with respect to the matmul's output ``O``.  The loss is the cross-entropy
  against the labels, or against the float model's own predictions when no labels are given
  (random-weight models).

Everything the paper's code keeps in float (the residual stream, LayerNorm, the GELU input,
the patch embedding input) is integer here and shared with FQ-ViT (PTF-quantized stream,
integer LayerNorm, a 256-entry GELU table indexed by the int8 ``fc1`` output, which holds
the twin codes).  ``bits=6`` gives W6A6: 6-bit weights and 6-bit inputs of every matmul
(``a_bit``, ``A_bit``, ``B_bit`` of the paper), the tensors above staying 8-bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .. import intops
from ..graph import IntGraph
from ..observers import Observer
from ..quantize import (UnsupportedModelError, _Builder, _Q, _assemble, _bias, _is, _layerscale, _scalar,
                        _t, calibrate, check_supported, softmax_input_frac_bits)

__all__ = ["quantize_ptq4vit", "hessian_search", "SearchResult", "EQ_ALPHA", "EQ_BETA", "EQ_N",
           "SEARCH_ROUNDS", "SPLIT_CANDIDATES", "GELU_MIN", "BITS", "MAX_ROWS", "MAX_ATTN_ROWS"]

#: Candidate grid of every searched step: ``init * (EQ_ALPHA + i (EQ_BETA - EQ_ALPHA) / EQ_N)``.
EQ_ALPHA, EQ_BETA, EQ_N = 0.01, 1.2, 100
#: Alternating search rounds (operand A, then operand B, in every round).
SEARCH_ROUNDS = 3
#: Post-softmax split candidates ``2**-m``, ``m = 0 .. SPLIT_CANDIDATES - 1``.
SPLIT_CANDIDATES = 20
#: ``|min GELU(x)|``: the negative post-GELU range (the code's fixed negative step is this / 128).
GELU_MIN = 0.16997124254703522
#: Bit widths: W8A8 and W6A6.
BITS = (8, 6)
#: Token rows kept per linear layer for the search, and query rows (images x tokens) kept
#: per attention matmul: the paper's code searches on every token of 32 images on a GPU;
#: on a CPU the search keeps a seeded subset (all of the digits' 128 x 17 rows nearly).
MAX_ROWS = 2048
MAX_ATTN_ROWS = 512
#: Intra-op threads of the search: its products are small, and one thread per process is
#: the fastest on a machine whose cores are shared (``pytest -n 2``, two cores).
SEARCH_THREADS = 1


@dataclass
class SearchResult:
    """Steps chosen by the Hessian-guided search.

    ``act``: step of every searched activation tensor (by graph tensor name);
    ``wfactor``: per output channel, the weight step over ``max|w| / L_w`` (by linear op name);
    ``split``: ``m`` of every twin softmax (by op name); ``gelu``: ``(step_pos, m)`` of every
    twin GELU (by op name).
    """
    bits: int
    act: dict[str, float] = field(default_factory=dict)
    wfactor: dict[str, np.ndarray] = field(default_factory=dict)
    split: dict[str, int] = field(default_factory=dict)
    gelu: dict[str, tuple[float, int]] = field(default_factory=dict)


def _levels(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def candidates(n: int = EQ_N) -> np.ndarray:
    """The multipliers of the initial step tried by the search (PTQ4ViT's ``eq`` grid)."""
    return np.array([EQ_ALPHA + i * (EQ_BETA - EQ_ALPHA) / n for i in range(n + 1)])


def attn_split_max(tokens: int, bits: int) -> int:
    """Largest twin-softmax ``m`` whose attention x V accumulator fits 32 bits for rows of
    ``tokens``: the decoded row sum is below ``2**m (2 L + T / 2)``, times ``|v| <= 128``."""
    lv = _levels(bits)
    bound = (1 << 24) / (2 * lv + tokens / 2)
    return int(min(SPLIT_CANDIDATES - 1, math.floor(math.log2(bound))))


def gelu_m(step_pos: float, fan_in: int, bits: int) -> int:
    """``m`` of a twin GELU with positive step ``step_pos``: the small step ``step_pos / 2**m``
    is the power-of-two fraction nearest above ``GELU_MIN / L`` (so the negative range covers
    ``[min GELU, 0]`` in ``L`` levels), lowered until the twin linear's accumulator
    ``K L_w L (2**m + 1)`` fits 32 bits."""
    lv = _levels(bits)
    m = max(0, int(math.floor(math.log2(step_pos * lv / GELU_MIN)))) if step_pos > 0 else 0
    while m > 0 and fan_in * lv * lv * ((1 << m) + 1) >= 1 << 31:
        m -= 1
    return m


# ----------------------------------------------------------------------------------------
# Calibration data: float inputs, outputs and output gradients of every matmul
# ----------------------------------------------------------------------------------------

def _collect(model, images: np.ndarray, labels, max_rows: int, max_attn_rows: int, seed: int, progress: bool):
    """Run the float model (float64) forward and backward over ``images`` and keep, for every
    linear layer, a seeded subset of token rows of (input, output, output gradient), and for
    every attention, a subset of images of q, k, v, the probabilities and the gradients of
    the scores and of attention x V."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    m = model
    n_img = len(images)
    rng = np.random.default_rng(seed)
    conv = m.patch_embed.proj
    p = conv.kernel_size[0]
    T = m.patch_embed.num_patches + sum(int(getattr(m, a).shape[1]) for a in ("cls_token", "dist_token", "reg_token")
                                        if getattr(m, a, None) is not None)
    n_patch = m.patch_embed.num_patches

    def pick(rows_per_img: int) -> np.ndarray:
        total = n_img * rows_per_img
        return np.sort(rng.choice(total, min(max_rows, total), replace=False))

    block_rows = pick(T)
    patch_rows = pick(n_patch)
    att_imgs = np.sort(rng.choice(n_img, min(max(1, max_attn_rows // T), n_img), replace=False))
    data: dict[str, dict[str, list]] = {}
    state = {"start": 0, "end": 0}

    def put(name, key, value):
        data.setdefault(name, {}).setdefault(key, []).append(value.detach().double().cpu())

    def rows_of(t, sel, per_img):
        s, e = state["start"], state["end"]
        local = sel[(sel >= s * per_img) & (sel < e * per_img)] - s * per_img
        return t.reshape(-1, t.shape[-1])[torch.from_numpy(local)]

    def imgs_of(t):
        s, e = state["start"], state["end"]
        local = att_imgs[(att_imgs >= s) & (att_imgs < e)] - s
        return t[torch.from_numpy(local)]

    handles = []

    def linear_hook(name, sel, per_img):
        def hook(mod, args, out):
            x = args[0]
            put(name, "x", rows_of(x, sel, per_img))
            put(name, "y", rows_of(out, sel, per_img))
            out.register_hook(lambda g: put(name, "g", rows_of(g, sel, per_img)))
        return hook

    def conv_hook(mod, args, out):
        img = args[0]
        b, c, h, w = img.shape
        rows = img.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, c * p * p)
        put("patch_embed.proj", "x", rows_of(rows, patch_rows, n_patch))
        put("patch_embed.proj", "y", rows_of(out.flatten(2).transpose(1, 2), patch_rows, n_patch))
        out.register_hook(lambda g: put("patch_embed.proj", "g",
                                        rows_of(g.flatten(2).transpose(1, 2), patch_rows, n_patch)))

    handles.append(conv.register_forward_hook(conv_hook))
    for i, blk in enumerate(m.blocks):
        pre = f"blocks.{i}"
        for sub, mod in (("attn.qkv", blk.attn.qkv), ("attn.proj", blk.attn.proj),
                         ("mlp.fc1", blk.mlp.fc1), ("mlp.fc2", blk.mlp.fc2)):
            handles.append(mod.register_forward_hook(linear_hook(f"{pre}.{sub}", block_rows, T)))

        def qkv_hook(mod, args, out, pre=pre, attn=blk.attn):
            b, t, _ = out.shape
            q, k, v = out.reshape(b, t, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            for key, val in (("q", q), ("k", k), ("v", v)):
                put(f"{pre}.attn", key, imgs_of(val))

        def drop_hook(mod, args, out, pre=pre):
            put(f"{pre}.attn", "P", imgs_of(out))
            out.register_hook(lambda g: put(f"{pre}.attn", "gP", imgs_of(g)))

        def proj_pre(mod, args, pre=pre, attn=blk.attn):
            x = args[0]
            x.register_hook(lambda g: put(f"{pre}.attn", "gO", imgs_of(
                g.reshape(g.shape[0], g.shape[1], attn.num_heads, attn.head_dim).transpose(1, 2))))

        handles.append(blk.attn.qkv.register_forward_hook(qkv_hook))
        handles.append(blk.attn.attn_drop.register_forward_hook(drop_hook))
        handles.append(blk.attn.proj.register_forward_pre_hook(proj_pre))

    heads = [m.head] + ([m.head_dist] if type(m).__name__ == "VisionTransformerDistilled" else [])

    def head_hook(idx):
        def hook(mod, args, out):
            put("head", f"x{idx}", args[0])
        return hook

    for i, hd in enumerate(heads):
        handles.append(hd.register_forward_hook(head_hook(i)))

    dtype = next(m.parameters()).dtype
    fused = [blk.attn.fused_attn for blk in m.blocks]
    grads = [prm.requires_grad for prm in m.parameters()]
    m.to(torch.float64)
    m.eval()
    for blk in m.blocks:
        blk.attn.fused_attn = False
    for prm in m.parameters():
        prm.requires_grad_(False)
    try:
        batch = 8
        with tqdm(total=n_img, desc="PTQ4ViT gradients", unit="img", disable=not progress, leave=False) as bar:
            for s in range(0, n_img, batch):
                state["start"], state["end"] = s, min(n_img, s + batch)
                x = torch.from_numpy(np.asarray(images[s:s + batch], np.float64)).requires_grad_(True)
                logits = m(x)
                tgt = (torch.from_numpy(np.asarray(labels[s:s + batch], np.int64)) if labels is not None
                       else logits.argmax(-1))
                put("head", "y", logits)
                logits.register_hook(lambda g: put("head", "g", g))
                F.cross_entropy(logits, tgt, reduction="sum").backward()
                bar.update(len(x))
    finally:
        for h in handles:
            h.remove()
        m.to(dtype)
        for blk, f in zip(m.blocks, fused):
            blk.attn.fused_attn = f
        for prm, g in zip(m.parameters(), grads):
            prm.requires_grad_(g)
    out = {}
    for name, d in data.items():
        out[name] = {k: torch.cat(v, 0) for k, v in d.items()}
    if "x1" in out["head"]:
        out["head"]["x"] = torch.cat([out["head"].pop("x0"), out["head"].pop("x1")], -1)
    else:
        out["head"]["x"] = out["head"].pop("x0")
    return out


# ----------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------

def _fq(x, step, lo: int, hi: int):
    """Uniform fake quantization (round half up), step scalar or broadcasting."""
    import torch
    return torch.clamp(torch.floor(x / step + 0.5), lo, hi) * step


def _fq_w(w, step, lw: int):
    return _fq(w, step[:, None], -lw, lw)


def _err(y, y_hat, g, dims=None):
    """The Hessian-guided metric ``sum (g (y - y_hat))**2`` (over ``dims``, or everything)."""
    e = (g * (y - y_hat)) ** 2
    return e.sum() if dims is None else e.sum(dims)


def _search_linear(d, w, b, a_bits, w_bits, cands, rounds, quant_in=None, search_input=True):
    """Alternating search of the per-channel weight steps and the input step of one linear
    layer.  ``quant_in(x, c)`` overrides the input fake quantization at candidate ``c`` (the
    twin GELU grid); ``search_input=False`` keeps the input grid fixed (``c = 1``).

    Weights are per output channel here (PTQ4ViT's code: one step per tensor, or per q / k /
    v section); the metric is a sum over output channels, so every channel's step is searched
    on its own term of the same metric."""
    import torch
    x, y, g = d["x"], d["y"], d["g"]
    w = torch.as_tensor(w, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    lw, la = _levels(w_bits), _levels(a_bits)
    w_init = w.abs().amax(1).clamp(min=1e-12) / lw
    a_init = float(x.abs().max().clamp(min=1e-12)) / la
    if quant_in is None:
        def quant_in(xx, c):
            return _fq(xx, a_init * c, -la - 1, la)
    wf = torch.ones(w.shape[0], dtype=torch.float64)
    ac = 1.0
    for _ in range(rounds):
        xq = quant_in(x, ac)
        errs = torch.stack([_err(y, xq @ _fq_w(w, w_init * c, lw).T + b, g, 0) for c in cands])
        wf = torch.as_tensor(cands, dtype=torch.float64)[errs.argmin(0)]
        if search_input:
            wq = _fq_w(w, w_init * wf, lw)
            errs = torch.stack([_err(y, quant_in(x, c) @ wq.T + b, g, (0, 1)) for c in cands])
            ac = float(cands[int(errs.argmin())])
    return wf.numpy(), ac, a_init


def hessian_search(model, images: np.ndarray, labels=None, bits: int = 8, rounds: int = SEARCH_ROUNDS,
                   eq_n: int = EQ_N, max_rows: int = MAX_ROWS, max_attn_rows: int = MAX_ATTN_ROWS, seed: int = 0,
                   image_grid: tuple[float, int] | None = None, progress: bool = True) -> SearchResult:
    """The Hessian-guided search of every matmul's operand steps (see the module docstring).

    ``image_grid``: the image's ``(scale, zero point)`` in the graph (the patch embedding's
    input is not searched, as in the paper's code, but quantized as the graph does).
    """
    import torch
    if bits not in BITS:
        raise ValueError(f"PTQ4ViT bit width must be one of {BITS}")
    threads = torch.get_num_threads()
    torch.set_num_threads(SEARCH_THREADS)
    try:
        return _search(model, images, labels, bits, rounds, eq_n, max_rows, max_attn_rows, seed, image_grid,
                       progress)
    finally:
        torch.set_num_threads(threads)


def _search(model, images, labels, bits, rounds, eq_n, max_rows, max_attn_rows, seed, image_grid, progress):
    import torch
    from tqdm.auto import tqdm
    data = _collect(model, images, labels, max_rows, max_attn_rows, seed, progress)
    cands = candidates(eq_n)
    res = SearchResult(bits)
    m = model
    jobs = ["patch_embed"] + [f"blocks.{i}" for i in range(len(m.blocks))] + ["head"]
    with torch.no_grad(), tqdm(jobs, desc="PTQ4ViT search", disable=not progress, leave=False) as bar:
        for job in bar:
            if job == "patch_embed":
                conv = m.patch_embed.proj
                w = _t(conv.weight).reshape(conv.out_channels, -1)
                bias = _t(conv.bias) if conv.bias is not None else np.zeros(conv.out_channels)
                s_img, zp_img = image_grid if image_grid is not None else (None, 0)

                def img_q(x, c):
                    if s_img is None:
                        return x
                    return (torch.clamp(torch.floor(x / s_img + 0.5) + zp_img, -128, 127) - zp_img) * s_img
                wf, _, _ = _search_linear(data["patch_embed.proj"], w, bias, 8, bits, cands, rounds,
                                          quant_in=img_q, search_input=False)
                res.wfactor["patch_embed.proj"] = wf
            elif job == "head":
                hw_, hb = _head_weight(m)
                wf, ac, a0 = _search_linear(data["head"], hw_, hb, bits, bits, cands, rounds)
                res.wfactor["head"] = wf
                res.act[_head_input(m)] = ac * a0
            else:
                _search_block(res, data, m.blocks[int(job.split(".")[1])], job, bits, cands, rounds)
    return res


def _head_weight(m):
    from ..quantize import _head_params
    return _head_params(m)


def _head_input(m) -> str:
    """The graph tensor feeding the head (whose step the head's search sets)."""
    if type(m).__name__ == "VisionTransformerDistilled" or m.global_pool == "token":
        return "norm.out"
    return "fc_norm.out" if not _is(m.fc_norm, "Identity") else "pooled"


def _search_block(res: SearchResult, data, blk, p: str, bits: int, cands, rounds: int) -> None:
    import torch
    from .twins import twin_decode_softmax, twin_softmax_codes
    la = _levels(bits)
    attn = blk.attn
    # linear layers with a uniform input
    for sub, mod, key in (("attn.qkv", attn.qkv, "norm1.out"), ("attn.proj", attn.proj, "attn.out"),
                          ("mlp.fc1", blk.mlp.fc1, "norm2.out")):
        d = data[f"{p}.{sub}"]
        bias = _t(mod.bias) if mod.bias is not None else np.zeros(mod.out_features)
        wf, ac, a0 = _search_linear(d, _t(mod.weight), bias, bits, bits, cands, rounds)
        res.wfactor[f"{p}.{sub}"] = wf
        if sub != "attn.proj":
            res.act[f"{p}.{key}"] = ac * a0
        else:
            res.act[f"{p}.attn.out"] = ac * a0
    # fc2 on twin GELU codes
    d = data[f"{p}.mlp.fc2"]
    fc2 = blk.mlp.fc2
    k_in = fc2.in_features
    pos0 = float(d["x"].max().clamp(min=1e-12)) / la

    def twin_in(x, c):
        sp = pos0 * c
        mm = gelu_m(sp, k_in, bits)
        sn = sp / 2.0 ** mm
        return torch.where(x > 0, torch.clamp(torch.floor(x / sp + 0.5), 0, la) * sp,
                           torch.clamp(torch.floor(x / sn + 0.5), -la, 0) * sn)
    bias = _t(fc2.bias) if fc2.bias is not None else np.zeros(fc2.out_features)
    wf, ac, _ = _search_linear(d, _t(fc2.weight), bias, bits, bits, cands, rounds, quant_in=twin_in)
    res.wfactor[f"{p}.mlp.fc2"] = wf
    res.gelu[f"{p}.mlp.act"] = (pos0 * ac, gelu_m(pos0 * ac, k_in, bits))

    # q @ k^T: steps of q and k, metric on the scores
    a = data[f"{p}.attn"]
    q, k, v, P, gP, gO = a["q"], a["k"], a["v"], a["P"], a["gP"], a["gO"]
    scale = float(attn.scale)
    S = (q * scale) @ k.transpose(-2, -1)
    gS = P * (gP - (gP * P).sum(-1, keepdim=True))        # softmax backward
    q0 = float(q.abs().max().clamp(min=1e-12)) / la
    k0 = float(k.abs().max().clamp(min=1e-12)) / la
    cq = ck = 1.0
    for _ in range(rounds):
        kq = _fq(k, k0 * ck, -la - 1, la)
        errs = [float(_err(S, (_fq(q, q0 * c, -la - 1, la) * scale) @ kq.transpose(-2, -1), gS))
                for c in cands]
        cq = float(cands[int(np.argmin(errs))])
        qq = _fq(q, q0 * cq, -la - 1, la) * scale
        errs = [float(_err(S, qq @ _fq(k, k0 * c, -la - 1, la).transpose(-2, -1), gS)) for c in cands]
        ck = float(cands[int(np.argmin(errs))])
    res.act[f"{p}.attn.q"] = q0 * cq
    res.act[f"{p}.attn.k"] = k0 * ck

    # attention x V: the twin split of the probabilities and the step of v
    O = P @ v
    T = P.shape[-1]
    splits = list(range(attn_split_max(T, bits) + 1))
    v0 = float(v.abs().max().clamp(min=1e-12)) / la
    cv, split = 1.0, 0
    for _ in range(rounds):
        vq = _fq(v, v0 * cv, -la - 1, la)
        errs = [float(_err(O, (twin_decode_softmax(twin_softmax_codes(P, s, bits), s, bits)
                               / (la * 2.0 ** s)) @ vq, gO)) for s in splits]
        split = splits[int(np.argmin(errs))]
        pq = twin_decode_softmax(twin_softmax_codes(P, split, bits), split, bits) / (la * 2.0 ** split)
        errs = [float(_err(O, pq @ _fq(v, v0 * c, -la - 1, la), gO)) for c in cands]
        cv = float(cands[int(np.argmin(errs))])
    res.act[f"{p}.attn.v"] = v0 * cv
    res.split[f"{p}.attn.softmax"] = split


# ----------------------------------------------------------------------------------------
# The graph
# ----------------------------------------------------------------------------------------

class _PtqBuilder(_Builder):
    """FQ-ViT's builder with the searched steps and the twin ops."""

    def __init__(self, obs, ptf, search: SearchResult, lowbit: set[str]):
        super().__init__(obs, ptf)
        self.search = search
        self.bits = search.bits
        self.lowbit = lowbit

    def symmetric(self, key: str) -> _Q:
        if key in self.search.act:
            return _Q(self.search.act[key], 0)
        return super().symmetric(key)

    def affine(self, key: str) -> _Q:
        if key in self.search.act:
            return _Q(self.search.act[key], 0)
        return super().affine(key)

    def _weights(self, name, x, weight, bias):
        xq = self.q[x]
        w = _t(weight)
        n, k = w.shape
        b = np.zeros(n) if bias is None else _t(bias)
        w_eff = w * xq.vec(k)[None, :]
        lw = _levels(self.bits)
        factor = self.search.wfactor.get(name, np.ones(n))
        s_w = np.abs(w_eff).max(axis=1) * factor / lw
        s_w = np.where(s_w > 0, s_w, 1.0)
        wq = np.clip(np.floor(w_eff / s_w[:, None] + 0.5), -lw, lw).astype(np.int64)
        bias_int = np.rint(b / s_w).astype(np.int64) - xq.zp * wq.sum(axis=1)
        if np.abs(bias_int).max(initial=0) >= 2 ** 31:
            raise UnsupportedModelError(f"{name}: folded bias does not fit int32")
        return wq, bias_int, s_w

    def linear(self, name: str, x: str, weight, bias, out: str, out_q: _Q, shape, out_bits: int = 8) -> str:
        if out in self.lowbit:
            out_bits = self.bits
        wq, bias_int, s_w = self._weights(name, x, weight, bias)
        mult, shift = intops.dyadic(s_w / out_q.vec(wq.shape[0]))
        self.tensor(out, shape, out_q, bits=out_bits)
        return self.op(name, "linear", [x], out, {"zp_out": int(out_q.zp), "out_bits": out_bits},
                       {"weight": wq.astype(np.int8), "bias": bias_int.astype(np.int32),
                        "mult": mult, "shift": shift}, {"weight_scale": s_w})

    def linear_twin(self, name: str, x: str, m: int, weight, bias, out: str, out_q: _Q, shape) -> str:
        wq, bias_int, s_w = self._weights(name, x, weight, bias)
        mult, shift = intops.dyadic(s_w / out_q.vec(wq.shape[0]))
        self.tensor(out, shape, out_q)
        return self.op(name, "linear_twin", [x], out,
                       {"zp_out": int(out_q.zp), "out_bits": 8, "m": int(m), "bits": self.bits},
                       {"weight": wq.astype(np.int8), "bias": bias_int.astype(np.int32),
                        "mult": mult, "shift": shift}, {"weight_scale": s_w})

    def layernorm(self, name: str, x: str, ln, out: str, out_q: _Q, shape) -> str:
        r = super().layernorm(name, x, ln, out, out_q, shape)
        if out in self.lowbit:
            self.ops[-1].attrs["out_bits"] = self.bits
            self.tensors[out].bits = self.bits
        return r


def _block(B: _PtqBuilder, p: str, blk, x: str, T: int, d: int, attn_bits: int) -> str:
    import torch
    from .twins import twin_signed_codes
    attn = blk.attn
    h, dh = attn.num_heads, attn.head_dim
    bits, lv = B.bits, _levels(B.bits)
    n1 = B.layernorm(f"{p}.norm1", x, blk.norm1, f"{p}.norm1.out", B.affine(f"{p}.norm1.out"), (T, d))
    sq, sk, sv = (float(B.symmetric(f"{p}.attn.{s}").scale) for s in "qkv")
    qkv = B.linear(f"{p}.attn.qkv", n1, attn.qkv.weight, attn.qkv.bias, f"{p}.attn.qkv.out",
                   _Q(np.repeat([sq, sk, sv], d), 0), (T, 3 * d))

    smax = max(abs(v) for v in B.obs[f"{p}.attn.scores"].range())
    frac = softmax_input_frac_bits(smax)
    s_scores = math.log(2.0) / 2 ** frac
    m_, s_ = intops.dyadic(sq * sk * float(attn.scale) / s_scores)
    sc = B.tensor(f"{p}.attn.scores", (h, T, T), _Q(s_scores, 0), bits=16)
    B.op(f"{p}.attn.qk", "qk_scores", [qkv], sc, {"heads": h, "head_dim": dh},
         {"mult": _scalar(m_), "shift": _scalar(s_)}, {"scale": float(attn.scale)})
    split = B.search.split[f"{p}.attn.softmax"]
    b_int, c_int = intops.lis_exp_constants(frac)
    step_p = 1.0 / (lv * 2.0 ** split)
    pr = B.tensor(f"{p}.attn.probs", (h, T, T), _Q(step_p, 0), bits=bits, signed=False)
    B.op(f"{p}.attn.softmax", "twin_softmax", [sc], pr,
         {"frac_bits": frac, "b_int": b_int, "c_int": c_int, "m": split, "bits": bits})
    ctx_q = B.affine(f"{p}.attn.out")
    m_, s_ = intops.dyadic(sv * step_p / float(ctx_q.scale))
    ctx = B.tensor(f"{p}.attn.out", (T, d), ctx_q, bits=bits)
    B.op(f"{p}.attn.av", "attn_value_twin", [pr, qkv], ctx,
         {"heads": h, "head_dim": dh, "zp_out": 0, "m": split, "bits": bits, "out_bits": bits},
         {"mult": _scalar(m_), "shift": _scalar(s_)})

    g1 = _layerscale(blk.ls1, d)
    pj = B.linear(f"{p}.attn.proj", ctx, _t(attn.proj.weight) * g1[:, None], _bias(attn.proj, d) * g1,
                  f"{p}.attn.proj.out", B.affine(f"{p}.attn.proj.out"), (T, d))
    r1 = B.add(f"{p}.add1", x, pj, f"{p}.res1", B.stream(f"{p}.res1"), (T, d))

    n2 = B.layernorm(f"{p}.norm2", r1, blk.norm2, f"{p}.norm2.out", B.affine(f"{p}.norm2.out"), (T, d))
    hid = blk.mlp.fc1.out_features
    f1 = B.linear(f"{p}.mlp.fc1", n2, blk.mlp.fc1.weight, blk.mlp.fc1.bias, f"{p}.mlp.fc1.out",
                  B.affine(f"{p}.mlp.fc1.out"), (T, hid))
    step_pos, gm = B.search.gelu[f"{p}.mlp.act"]
    step_neg = step_pos / 2.0 ** gm
    iq = B.q[f1]
    codes = np.arange(-128, 128)
    with torch.no_grad():
        y = blk.mlp.act(torch.from_numpy((codes - iq.zp) * float(iq.scale)))
        table = twin_signed_codes(y, step_neg, gm, bits).numpy().astype(np.int8)
    act_out = f"{p}.mlp.act.out"
    B.tensor(act_out, (T, hid), _Q(step_neg, 0), bits=bits)
    act = blk.mlp.act
    B.op(f"{p}.mlp.act", "twin_gelu", [f1], act_out, {"m": gm, "bits": bits}, {"table": table},
         {"approximate": "tanh" if "Tanh" in type(act).__name__ else str(getattr(act, "approximate", "none")),
          "step_pos": step_pos})
    g2 = _layerscale(blk.ls2, d)
    f2 = B.linear_twin(f"{p}.mlp.fc2", act_out, gm, _t(blk.mlp.fc2.weight) * g2[:, None],
                       _bias(blk.mlp.fc2, d) * g2, f"{p}.mlp.fc2.out", B.affine(f"{p}.mlp.fc2.out"), (T, d))
    return B.add(f"{p}.add2", r1, f2, f"{p}.res2", B.stream(f"{p}.res2"), (T, d))


def quantize_ptq4vit(model, calib_images: np.ndarray, bits: int = 8, labels=None, observer: str = "minmax",
                     ptf: bool = True, quantize_patch_embed: bool = True, progress: bool = True,
                     observers: dict[str, Observer] | None = None, search: SearchResult | None = None,
                     rounds: int = SEARCH_ROUNDS, eq_n: int = EQ_N, max_rows: int = MAX_ROWS,
                     max_attn_rows: int = MAX_ATTN_ROWS, seed: int = 0) -> IntGraph:
    """PTQ4ViT integer graph of a timm ViT / DeiT at W``bits``A``bits`` (8 or 6).

    ``labels``: labels of ``calib_images`` for the Hessian's task loss (default: the float
    model's predictions).  ``observer`` quantizes the tensors PTQ4ViT does not search (the
    residual stream, with ``ptf``, and the ``proj``, ``fc1`` and ``fc2`` outputs); ``rounds``,
    ``eq_n``, ``max_rows``, ``max_attn_rows`` size the search; ``search`` reuses a previous
    :func:`hessian_search` of the same model and bit width.
    """
    check_supported(model)
    if bits not in BITS:
        raise ValueError(f"PTQ4ViT bit width must be one of {BITS}")
    if observers is None:
        observers = calibrate(model, calib_images, observer, progress=progress)
    if search is None:
        from ..observers import affine_params
        image_grid = affine_params(*observers["image"].range()) if quantize_patch_embed else None
        search = hessian_search(model, calib_images, labels, bits, rounds, eq_n, max_rows, max_attn_rows,
                                seed, image_grid, progress)
    if search.bits != bits:
        raise ValueError("the search result is for another bit width")
    lowbit: set[str] = set()
    if bits < 8:
        lowbit = {k for k in search.act if not k.endswith((".attn.q", ".attn.k", ".attn.v"))}
        lowbit |= {f"blocks.{i}.attn.qkv.out" for i in range(len(model.blocks))}
    B = _PtqBuilder(observers, ptf, search, lowbit)
    g = _assemble(model, B, observers, 8, ptf, quantize_patch_embed, _block, "ptq4vit")
    g.info.update({"bits": bits, "attn_bits": bits, "hessian_labels": "given" if labels is not None else "float predictions"})
    return g
