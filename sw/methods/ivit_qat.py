"""Quantization-aware fine-tuning of a timm ViT through I-ViT's integer ops.

I-ViT is trained, not calibrated: its authors fine-tune a float model whose forward pass
runs their integer recipes on float tensors, with straight-through estimators for every
``floor`` and ``round`` (``quant_train.py``: 30-90 ImageNet epochs, lr 2e-7..2e-6).  Here the
forward pass of each step is the I-ViT integer graph itself, evaluated by the float64 twins
of :mod:`sw.methods.twins` (bit-exact with the integer executor), with the integer
parameters of every linear layer and LayerNorm recomputed from the live float weights:

* the output of every op is ``exact + (surrogate - surrogate.detach())``: the exact integer
  result forward, the gradient of a float surrogate backward (the float op in the output's
  integer units: ``x W^T + b``, LayerNorm, softmax, GELU, the residual sum);
* activation grids come from a calibration (:func:`sw.methods.ivit.quantize_ivit`) of the
  model at the start of every epoch (I-ViT updates them as running min / max during
  training), and the final graph is calibrated from the fine-tuned weights.

The loop is short by design (a few epochs of the digits split run in about a minute on two
cores); the QAT model depends on the machine's float kernels, so only the PTQ graphs and the
shipped model are the same everywhere.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np

from .. import intops
from ..graph import IntGraph, Op

__all__ = ["qat_ivit", "LiveGraph", "QatResult", "QAT_EPOCHS", "QAT_LR", "QAT_BATCH"]

#: Default fine-tune: epochs over the training images, AdamW learning rate, batch size.
QAT_EPOCHS = 3
QAT_LR = 1e-4
QAT_BATCH = 64
#: Intra-op threads while fine-tuning: the products are small (as :data:`sw.digits.TRAIN_THREADS`).
QAT_THREADS = 1


@dataclass
class QatResult:
    model: object                      # the fine-tuned float model (float32, eval mode)
    graph: IntGraph                    # its I-ViT graph, calibrated after the fine-tune
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def _ste(exact, surrogate):
    """``exact`` forward (bit for bit: ``surrogate - surrogate.detach()`` is exactly zero), the
    gradient of ``surrogate`` backward."""
    return exact.detach() + (surrogate - surrogate.detach())


def _get(model, path: str):
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


class LiveGraph:
    """The forward pass of an I-ViT graph with integer parameters recomputed from the live
    weights of ``model`` (same structure, activation grids fixed by the graph)."""

    def __init__(self, model, graph: IntGraph):
        if graph.info.get("method") != "ivit":
            raise ValueError("LiveGraph runs I-ViT graphs")
        self.model, self.g = model, graph

    # -- live parameters -----------------------------------------------------------------
    def _linear_weights(self, op: Op):
        import torch
        mod = op.meta["module"]
        m = self.model
        if mod == "patch_embed.proj":
            conv = m.patch_embed.proj
            w = conv.weight.reshape(conv.out_channels, -1)
            b = conv.bias if conv.bias is not None else torch.zeros(conv.out_channels, dtype=w.dtype)
        elif mod == "head":
            if type(m).__name__ == "VisionTransformerDistilled":
                w = torch.cat([m.head.weight, m.head_dist.weight], 1) / 2
                b = (m.head.bias + m.head_dist.bias) / 2
            else:
                w, b = m.head.weight, m.head.bias
        else:
            lin = _get(m, mod)
            w = lin.weight
            b = lin.bias if lin.bias is not None else torch.zeros(lin.out_features, dtype=w.dtype)
            ls = op.meta.get("layerscale")
            if ls is not None and hasattr(_get(m, ls), "gamma"):
                gamma = _get(m, ls).gamma
                w, b = w * gamma[:, None], b * gamma
        return w, b

    def _linear(self, op: Op, x):
        import torch
        from .twins import requant
        g = self.g
        t_in, t_out = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
        s_x = float(np.asarray(t_in.scale))
        s_out = np.asarray(t_out.scale, dtype=np.float64)
        w, b = self._linear_weights(op)
        wn, bn = w.detach().double().numpy() * s_x, b.detach().double().numpy()
        s_w = np.abs(wn).max(axis=1) / 127.0
        s_w = np.where(s_w > 0, s_w, 1.0)
        wq = np.clip(np.rint(wn / s_w[:, None]), -127, 127)
        bias_int = np.rint(bn / s_w)
        mult, shift = intops.dyadic(s_w / np.broadcast_to(s_out, s_w.shape))
        lo, hi = t_out.range
        with torch.no_grad():
            acc = x.detach() @ torch.from_numpy(wq).T + torch.from_numpy(bias_int)
            exact = requant(acc, mult, shift, t_out.zero_point, lo, hi)
        sur = ((x * s_x) @ w.double().T + b.double()) / torch.from_numpy(np.asarray(s_out)) + t_out.zero_point
        return _ste(exact, sur)

    def _ilayernorm(self, op: Op, x):
        import torch
        import torch.nn.functional as F
        from .twins import ilayernorm_n, ln_affine
        g = self.g
        ln = _get(self.model, op.meta["module"])
        t_in, t_out = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
        s_in, s_out = float(t_in.scale), float(t_out.scale)
        c = x.shape[-1]
        mult, shift, offset = intops.ilayernorm_params(ln.weight.detach().double().numpy(),
                                                       ln.bias.detach().double().numpy(), s_out, 0, c)
        with torch.no_grad():
            exact = ln_affine(ilayernorm_n(x.detach()), mult, shift, offset)
        sur = F.layer_norm(x * s_in, (c,), ln.weight.double(), ln.bias.double(), ln.eps) / s_out
        return _ste(exact, sur)

    # -- the forward pass ------------------------------------------------------------------
    def __call__(self, images):
        """Logits (real values) of float images ``[N, C, H, W]``."""
        import torch
        import torch.nn.functional as F
        from ..fakequant import fakequant_op
        g, m = self.g, self.model
        t_img = g.tensors["image"]
        x = torch.clamp(torch.floor(torch.as_tensor(images, dtype=torch.float64) / float(t_img.scale) + 0.5),
                        -128, 127)
        env = {"image": x}

        def sc(name):
            return float(np.asarray(g.tensors[name].scale))

        for op in g.ops:
            ins = [env[t] for t in op.inputs]
            out = op.outputs[0]
            k = op.kind
            with torch.no_grad():
                det = [t.detach() for t in ins]
            if k == "linear":
                y = self._linear(op, ins[0])
            elif k == "ilayernorm":
                y = self._ilayernorm(op, ins[0])
            elif k in ("patchify", "select_tokens"):
                if k == "patchify":
                    b, c, hh, ww = ins[0].shape
                    pp = op.attrs["patch"]
                    y = ins[0].reshape(b, c, hh // pp, pp, ww // pp, pp).permute(0, 2, 4, 1, 3, 5)
                    y = y.reshape(b, (hh // pp) * (ww // pp), c * pp * pp)
                else:
                    y = ins[0][:, list(op.attrs["indices"]), :].reshape(ins[0].shape[0], -1)
            elif k == "concat_tokens":
                parts = [getattr(m, n).reshape(-1, m.embed_dim) for n in ("cls_token", "dist_token", "reg_token")
                         if getattr(m, n, None) is not None]
                live = torch.cat(parts, 0).double() / sc(out)
                lim = 1 << (g.tensors[out].bits - 1)
                tok = _ste(torch.clamp(torch.floor(live.detach() + 0.5), -lim, lim - 1), live)
                y = torch.cat([tok.expand(ins[0].shape[0], -1, -1), ins[0]], 1)
            elif k == "add_wide":
                with torch.no_grad():
                    if len(ins) == 1:
                        pos = m.pos_embed.detach().double().reshape(-1, m.embed_dim) / op.meta["const_scale"]
                        const = torch.clamp(torch.floor(pos + 0.5), -32768, 32767)
                        live_op = Op(op.name, k, op.inputs, op.outputs, op.attrs,
                                     {**op.params, "const": const.numpy().astype(np.int64)}, op.meta)
                        exact = fakequant_op(g, live_op, *det)
                    else:
                        exact = fakequant_op(g, op, *det)
                other = (m.pos_embed.double().reshape(-1, m.embed_dim) if len(ins) == 1
                         else ins[1] * sc(op.inputs[1]))
                y = _ste(exact, (ins[0] * sc(op.inputs[0]) + other) / sc(out))
            else:
                with torch.no_grad():
                    exact = fakequant_op(g, op, *det)
                if k == "qk_scores":
                    q, kk, _ = _qkv(ins[0] * torch.from_numpy(np.asarray(g.tensors[op.inputs[0]].scale)),
                                    op.attrs["heads"], op.attrs["head_dim"])
                    sur = (q @ kk.transpose(-2, -1)) * op.meta["scale"] / sc(out)
                elif k == "shiftmax":
                    sur = torch.softmax(ins[0] * sc(op.inputs[0]), -1) * 2.0 ** (op.attrs["out_bits"] - 1)
                elif k == "attn_value_wide":
                    s_qkv = torch.from_numpy(np.asarray(g.tensors[op.inputs[1]].scale))
                    _, _, v = _qkv(ins[1] * s_qkv, op.attrs["heads"], op.attrs["head_dim"])
                    acc = (ins[0] * sc(op.inputs[0])) @ v
                    b_, h_, t_, dh_ = acc.shape
                    sur = acc.transpose(1, 2).reshape(b_, t_, h_ * dh_) / sc(out)
                elif k == "shiftgelu":
                    sur = F.gelu(ins[0] * sc(op.inputs[0])) / sc(out)
                else:
                    raise ValueError(f"op {op.name!r}: kind {k!r} is not part of an I-ViT graph")
                y = _ste(exact, sur)
            env[out] = y
        logits = env[g.outputs[0]]
        return logits * sc(g.outputs[0])


def _qkv(x, heads: int, dh: int):
    b, t, _ = x.shape
    return x.reshape(b, t, 3, heads, dh).permute(2, 0, 3, 1, 4).unbind(0)


def qat_ivit(model, train_x: np.ndarray, train_y: np.ndarray, calib_images: np.ndarray,
             epochs: int = QAT_EPOCHS, lr: float = QAT_LR, batch: int = QAT_BATCH,
             max_steps: int | None = None, seed: int = 0, observer: str = "minmax",
             progress: bool = True) -> QatResult:
    """Fine-tune a copy of ``model`` through the I-ViT integer graph and return it with its
    final graph.  ``max_steps`` stops early (a smoke test)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(QAT_THREADS)
    try:
        return _qat(model, train_x, train_y, calib_images, epochs, lr, batch, max_steps, seed, observer, progress)
    finally:
        torch.set_num_threads(threads)


def _qat(model, train_x, train_y, calib_images, epochs, lr, batch, max_steps, seed, observer, progress):
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    from .ivit import quantize_ivit

    t0 = time.perf_counter()
    net = copy.deepcopy(model).double().eval()        # eval: no dropout; the graph is inference
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)
    n = len(train_y)
    per_epoch = -(-n // batch)
    total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
    losses: list[float] = []
    step = 0
    with tqdm(total=total, desc="I-ViT QAT", unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            if step >= total:
                break
            live = LiveGraph(net, quantize_ivit(net, calib_images, observer=observer, progress=False))
            perm = torch.randperm(n, generator=order).numpy()
            for s in range(0, n, batch):
                if step >= total:
                    break
                idx = perm[s:s + batch]
                logits = live(train_x[idx])
                loss = F.cross_entropy(logits, torch.from_numpy(np.asarray(train_y[idx], np.int64)))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
    net = net.float().eval()
    graph = quantize_ivit(net, calib_images, observer=observer, progress=False)
    graph.info.update({"qat_steps": step, "qat_epochs": epochs, "qat_lr": lr})
    return QatResult(net, graph, losses, step, time.perf_counter() - t0)
