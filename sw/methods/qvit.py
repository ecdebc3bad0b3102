"""Q-ViT: 2-4 bit quantization-aware training with IRM and DGD, exported to the integer graph.

Q-ViT (Li et al., NeurIPS 2022) trains a fully quantized ViT at 2, 3 or 4 bits:

* **LSQ+ quantizers** (:class:`LsqPlus`) on the weights (per output channel, symmetric) and
  on the input of every linear layer (per tensor, learnable scale and offset) and on both
  operands of both attention matmuls (q, k, v per tensor, symmetric: the integer
  ``qk_scores`` / ``attn_value`` ops take zero-point-free operands; the attention
  probabilities are FQ-ViT's 4-bit Log-Int-Softmax codes whatever the width).  Rounding
  uses a straight-through estimator; the scale's gradient is scaled by
  ``1 / sqrt(n Q_p)`` as in LSQ.  The patch embedding and the head stay at 8 bits (MinMax
  per output channel, the FQ-ViT rule) as in the paper.
* **IRM** (:class:`Irm`): a learnable per-channel affine of q and of k before their
  quantizers, ``q~ = (q - mu + beta) / gamma * sqrt(sigma^2 + eps)`` with ``mu``, ``sigma``
  the float model's statistics and ``gamma`` kept positive; it starts as the identity.
  At export it folds exactly into the qkv weights and biases (:func:`fold_irm`).
* **DGD**: the float model as teacher; the loss is the cross-entropy plus ``lam`` times
  the mean over layers and heads of ``||G_s - G_t||_F`` for ``G = q q^T`` and ``k k^T`` with
  rows L2-normalised (student: its quantized q~, k~).

The residual stream, LayerNorm, softmax and GELU, which Q-ViT keeps in float, become
FQ-ViT's integer ops at export (:func:`export_qvit`): the PTF 8-bit stream, the integer
LayerNorm (its output at the next linear's low width), Log-Int-Softmax and the GELU table
(its output at the width of ``fc2``'s input).  Low-bit tensors are declared at their width
(``bits`` 2-4, stored in int8; the executor range-checks them) and low-bit weights carry
``weight_bits``.  The accelerator refuses these graphs (:func:`compiler.lower.check_accelerator_ops`).
"""
from __future__ import annotations

import copy
import math
import time
import types
from dataclasses import dataclass, field

import numpy as np

from .. import intops
from ..graph import IntGraph

__all__ = ["LsqPlus", "Irm", "prepare_qvit", "train_qvit", "export_qvit", "fold_irm", "calibrate_qvit",
           "build_graph", "default_calib_images", "save_qvit", "load_qvit",
           "quantize_qvit", "fakequant_logits", "QvitResult", "QVIT_BITS", "QVIT_EPOCHS", "QVIT_LR",
           "QVIT_BATCH", "QVIT_LAMBDA"]

QVIT_BITS = (2, 3, 4)
QVIT_EPOCHS = 6
QVIT_LR = 1e-3
QVIT_BATCH = 64
QVIT_LAMBDA = 1.0
#: Bits of the patch embedding and the head (the paper's first and last layers).
EDGE_BITS = 8


def _torch():
    import torch
    return torch


def round_ste(x):
    return x + (x.round() - x).detach()


def grad_scale(x, g: float):
    return (x - x * g).detach() + x * g


def _mse_clip(x: np.ndarray, lo_q: int, hi_q: int, symmetric: bool, axis=None):
    """Scale (and zero point) minimising the quantization MSE over clip ratios of the range."""
    x = np.asarray(x, np.float64)
    best = None
    for r in np.linspace(0.3, 1.0, 15):
        if symmetric:
            m = np.abs(x).max(axis=axis, keepdims=axis is not None) * r
            s = np.maximum(m / hi_q, 1e-8)
            z = np.zeros_like(s)
        else:
            lo, hi = x.min() * r, x.max() * r
            s = np.maximum((hi - lo) / (hi_q - lo_q), 1e-8)
            z = np.clip(np.round(lo_q - lo / s), lo_q, hi_q)
        q = np.clip(np.round(x / s + z), lo_q, hi_q)
        err = ((s * (q - z) - x) ** 2).mean(axis=axis)
        if best is None:
            best = [s, z, err]
        else:
            better = err < best[2]
            if axis is None:
                if better:
                    best = [s, z, err]
            else:
                bm = better.reshape(best[0].shape)
                best[0] = np.where(bm, s, best[0])
                best[1] = np.where(bm, z, best[1])
                best[2] = np.minimum(err, best[2])
    return best[0], best[1]


class LsqPlus(_torch().nn.Module):
    """LSQ+ fake quantizer on the signed ``bits``-bit grid ``[-2^(b-1), 2^(b-1) - 1]``.

    ``x^ = s (clamp(round(x / s) + z) - z)`` with learnable ``s > 0`` and, unless
    ``symmetric``, a learnable offset ``beta`` whose zero point ``z = round(-beta / s)`` is
    rounded with a straight-through estimator (so the exported integer zero point is exact).
    ``channels``: one scale per output channel (weights, axis 0).
    """

    def __init__(self, bits: int, symmetric: bool = False, channels: int | None = None):
        torch = _torch()
        super().__init__()
        self.bits, self.symmetric = int(bits), bool(symmetric)
        self.qmin, self.qmax = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        shape = (channels, 1) if channels else ()
        self.s = torch.nn.Parameter(torch.ones(shape))
        self.beta = None if symmetric else torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("ready", torch.zeros((), dtype=torch.bool))

    def init_from(self, x) -> None:
        torch = _torch()
        xn = x.detach().double().cpu().numpy()
        per_ch = self.s.dim() > 0
        if per_ch:
            xn = xn.reshape(xn.shape[0], -1)
        s, z = _mse_clip(xn, self.qmin, self.qmax, self.symmetric, axis=1 if per_ch else None)
        with torch.no_grad():
            self.s.copy_(torch.as_tensor(np.reshape(s, self.s.shape), dtype=self.s.dtype))
            if self.beta is not None:
                self.beta.copy_(torch.as_tensor(float(-z * s), dtype=self.beta.dtype))
            self.ready.fill_(True)

    def scale(self):
        return self.s.abs() + 1e-8

    def zero_point(self, s):
        if self.beta is None:
            return 0.0
        torch = _torch()
        return torch.clamp(round_ste(-self.beta / s), self.qmin, self.qmax)

    def forward(self, x):
        torch = _torch()
        if not bool(self.ready):
            self.init_from(x)
        n = x[0].numel() if self.s.dim() > 0 else x.numel()
        s = grad_scale(self.scale(), 1.0 / math.sqrt(max(n, 1) * self.qmax))
        z = self.zero_point(s)
        q = torch.clamp(round_ste(x / s + z), self.qmin, self.qmax)
        return (q - z) * s

    def integer(self, x) -> np.ndarray:
        """The integer codes of ``x`` (export)."""
        with _torch().no_grad():
            s = self.scale()
            z = self.zero_point(s)
            return _torch().clamp(_torch().round(x / s + z), self.qmin, self.qmax).double().numpy()

    def export(self) -> tuple[np.ndarray | float, int]:
        with _torch().no_grad():
            s = self.scale()
            z = self.zero_point(s)
            s = s.detach().double().numpy()
            return (s.reshape(-1) if s.ndim else float(s)), int(np.asarray(z))


class Irm(_torch().nn.Module):
    """Information Rectification: ``(x - mu + beta) / gamma * sqrt(var + eps)`` per channel,
    ``gamma`` kept positive, identity at initialisation (``gamma = sqrt(var + eps)``,
    ``beta = mu``).  Equivalent to ``a x + c`` (:meth:`affine`)."""

    def __init__(self, mu, var, eps: float = 1e-5):
        torch = _torch()
        super().__init__()
        mu = torch.as_tensor(mu, dtype=torch.float32)
        std = torch.sqrt(torch.as_tensor(var, dtype=torch.float32) + eps)
        self.register_buffer("mu", mu.clone())
        self.register_buffer("std", std.clone())
        self.gamma = torch.nn.Parameter(std.clone())
        self.beta = torch.nn.Parameter(mu.clone())

    def affine(self):
        a = self.std / self.gamma.abs().clamp_min(1e-4)
        return a, (self.beta - self.mu) * a

    def forward(self, x):                        # x [..., channels]
        a, c = self.affine()
        return x * a + c


class QLinear(_torch().nn.Linear):
    """A linear layer whose input and weights pass LSQ+ quantizers (the input's grid is
    skipped with ``act=None``)."""

    @classmethod
    def wrap(cls, lin, wbits: int, abits: int | None, symmetric_weights: bool = True):
        new = cls.__new__(cls)
        new.__dict__ = lin.__dict__.copy()
        new.__class__ = cls
        new.w_q = LsqPlus(wbits, True, lin.out_features)
        new.act_q = None if abits is None else LsqPlus(abits, False)
        return new

    def forward(self, x):
        import torch.nn.functional as F
        xq = x if self.act_q is None else self.act_q(x)
        return F.linear(xq, self.w_q(self.weight), self.bias)


def _minmax_fq(w, bits: int = EDGE_BITS):
    """8-bit symmetric MinMax fake quantization per output channel (the FQ-ViT weight rule)."""
    torch = _torch()
    w2 = w.reshape(w.shape[0], -1)
    hi = (1 << (bits - 1)) - 1
    s = (w2.detach().abs().amax(1, keepdim=True) / hi).clamp_min(1e-12)
    return (w2 + (torch.clamp(torch.round(w2 / s), -hi, hi) * s - w2).detach()).reshape(w.shape)


def _lis_fq(p):
    """FQ-ViT's 4-bit log2 attention codes on float probabilities (code 15 = zero), STE."""
    torch = _torch()
    code = torch.clamp(torch.round(-torch.log2(p.detach().clamp_min(1e-30))), 0, intops.LIS_ZERO_CODE)
    ph = torch.where(code < intops.LIS_ZERO_CODE, torch.pow(2.0, -code), torch.zeros_like(p))
    return p + (ph - p).detach()


def _attn_forward(self, x, attn_mask=None, **_):
    """Q-ViT attention: IRM on q and k, LSQ+ on q, k, v, LIS codes, quantized proj input.
    In the exact forward (:class:`_Exact`) q, k, v, the codes and the context take the
    integer graph's values."""
    torch = _torch()
    b, t, c = x.shape
    h, dh = self.num_heads, self.head_dim
    p = self.qvit_prefix
    qkv = self.qkv(x).reshape(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)                                     # [B, H, T, dh]
    if self.use_irm:
        q = self.irm_q(q.transpose(1, 2).reshape(b, t, c)).reshape(b, t, h, dh).transpose(1, 2)
        k = self.irm_k(k.transpose(1, 2).reshape(b, t, c)).reshape(b, t, h, dh).transpose(1, 2)
    q, k, v = self.quant_q(q), self.quant_k(k), self.quant_v(v)
    exact = self.qvit_exact
    if exact.on:
        qe, ke, ve = exact.value(f"{p}.attn.qkv.out").reshape(b, t, 3, h, dh).permute(2, 0, 3, 1, 4).unbind(0)
        q, k, v = _pin(q, qe), _pin(k, ke), _pin(v, ve)
    self._qk = (q, k)
    scores = (q * self.scale) @ k.transpose(-2, -1)
    if self.record_scores:
        self.scores_absmax = max(getattr(self, "scores_absmax", 0.0), float(scores.detach().abs().max()))
    attn = _lis_fq(scores.softmax(-1))
    if exact.on:
        attn = _pin(attn, exact.value(f"{p}.attn.probs"))
    out = (attn @ v).transpose(1, 2).reshape(b, t, c)
    if exact.on:
        out = _pin(out, exact.value(f"{p}.attn.out"))
    return self.proj_drop(self.proj(out))


class _Exact:
    """The integer graph whose values the network's forward takes (``graph``; None: the
    float fake-quant forward) and, during a forward, that graph's tensors on the batch."""

    def __init__(self):
        self.graph: IntGraph | None = None
        self.env: dict | None = None
        self._cache: dict = {}

    @property
    def on(self) -> bool:
        return self.env is not None

    def run(self, images) -> None:
        """Run the graph on ``images`` (float, the network's input): the twins of
        :func:`sw.fakequant.fakequant_execute` with the executor's integer LayerNorm and
        softmax, bit for bit the integer executor's tensors."""
        from ..fakequant import fakequant_execute
        from ..quantize import quantize_input
        x = quantize_input(images.detach().double().cpu().numpy(), self.graph)
        self.env = fakequant_execute(self.graph, x, keep=True, integer_nonlinear=True)
        self._cache = {}

    def value(self, name: str):
        """Tensor ``name`` of the graph as real values (attention codes as ``2**-code``)."""
        torch = _torch()
        if name not in self._cache:
            codes = self.env[name].astype(np.float64)
            t = self.graph.tensors[name]
            if t.scale is None:                              # Log-Int-Softmax codes
                v = np.where(codes < intops.LIS_ZERO_CODE, 2.0 ** -codes, 0.0)
            else:
                v = (codes - t.zero_point) * np.asarray(t.scale, np.float64)
            self._cache[name] = torch.from_numpy(v)
        return self._cache[name]

    def clear(self) -> None:
        self.env, self._cache = None, {}

    def __deepcopy__(self, memo):
        new = _Exact()
        new.graph = self.graph
        return new


def _pin(y, v):
    """``y`` whose value is ``v`` exactly, with ``y``'s gradient (straight-through)."""
    return v.to(y.dtype).reshape(y.shape) + (y - y.detach())


def _exact_out_hook(mod, _args, y):
    ex = mod.qvit_exact
    return _pin(y, ex.value(mod.qvit_key)) if ex.on else None


def _qvit_forward(self, x):
    """The network's forward; with a graph (:class:`_Exact`) every quantized tensor takes
    that integer graph's value on this batch and the float network's gradient."""
    ex = self.qvit_exact
    if ex.graph is None:
        return type(self).forward(self, x)
    ex.run(x)
    try:
        return type(self).forward(self, x)
    finally:
        ex.clear()


def _install_exact(m) -> None:
    """Hooks that pin the network's tensors to the graph's (names as :class:`sw.quantize._Recorder`)."""
    ex = _Exact()
    m.qvit_exact = ex
    points = [(m.pos_drop, "pos_embed.out", False)]
    for i, blk in enumerate(m.blocks):
        p = f"blocks.{i}"
        blk.attn.qvit_prefix, blk.attn.qvit_exact = p, ex
        points += [(blk.norm1, f"{p}.norm1.out", False), (blk.ls1, f"{p}.attn.proj.out", False),
                   (blk.norm2, f"{p}.res1", True), (blk.norm2, f"{p}.norm2.out", False),
                   (blk.mlp.fc1, f"{p}.mlp.fc1.out", False), (blk.mlp.act, f"{p}.mlp.act.out", False),
                   (blk.ls2, f"{p}.mlp.fc2.out", False), (blk, f"{p}.res2", False)]
    points += [(m.norm, "norm.out", False), (m.head, "logits", False)]
    for mod, key, is_input in points:
        mod.qvit_exact = ex
        if is_input:
            mod.qvit_in_key = key
            mod.register_forward_pre_hook(_exact_in_hook_named)
        else:
            mod.qvit_key = key
            mod.register_forward_hook(_exact_out_hook)
    m.forward = types.MethodType(_qvit_forward, m)


def _exact_in_hook_named(mod, args):
    ex = mod.qvit_exact
    return (_pin(args[0], ex.value(mod.qvit_in_key)),) + tuple(args[1:]) if ex.on else None


def _get_qk(model):
    return [blk.attn._qk for blk in model.blocks]


def _teacher_qk(teacher, images):
    """The float model's q and k per block ``[B, H, T, dh]`` (and its logits)."""
    torch = _torch()
    got = []
    hooks = []
    for blk in teacher.blocks:
        a = blk.attn

        def hook(_m, _i, y, a=a):
            b, t, _ = y.shape
            q, k, _v = y.reshape(b, t, 3, a.num_heads, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
            got.append((q, k))
        hooks.append(a.qkv.register_forward_hook(hook))
    try:
        with torch.no_grad():
            logits = teacher(images)
    finally:
        for hk in hooks:
            hk.remove()
    return got, logits


def _sim(x):
    """Row-L2-normalised ``x x^T`` per head."""
    g = x @ x.transpose(-2, -1)
    return g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def dgd_loss(student_qk, teacher_qk):
    """Mean over layers, heads and the batch of the Frobenius distances of the q and of the
    k similarity matrices (their sum), divided by ``sqrt(T)``: the root-mean-square distance
    of one row, between 0 and 2 whatever the number of tokens ``T``."""
    torch = _torch()
    terms = []
    for (qs, ks), (qt, kt) in zip(student_qk, teacher_qk):
        for s_, t_ in ((qs, qt), (ks, kt)):
            terms.append(torch.linalg.matrix_norm(_sim(s_) - _sim(t_)).mean() / math.sqrt(s_.shape[-2]))
    return torch.stack(terms).mean() * 2


def prepare_qvit(model, bits: int, calib_images: np.ndarray, irm: bool = True):
    """A fake-quant Q-ViT copy of the float timm ``model`` at ``bits`` (2-4); quantizers are
    initialised on ``calib_images`` (MSE-optimal clipping), IRM from the float q / k statistics."""
    torch = _torch()
    if bits not in QVIT_BITS:
        raise ValueError(f"Q-ViT bits must be one of {QVIT_BITS}, not {bits}")
    from ..quantize import check_supported
    check_supported(model)
    m = copy.deepcopy(model).float().eval()
    x = torch.as_tensor(np.asarray(calib_images, np.float32))
    teacher_qk, _ = _teacher_qk(m, x)
    for blk, (q, k) in zip(m.blocks, teacher_qk):
        a = blk.attn
        if not _is_identity(a.q_norm) or not _is_identity(a.k_norm):
            raise ValueError("Q-ViT export needs attention without q/k norms")
        a.qkv = QLinear.wrap(a.qkv, bits, bits)
        a.proj = QLinear.wrap(a.proj, bits, bits)
        blk.mlp.fc1 = QLinear.wrap(blk.mlp.fc1, bits, bits)
        blk.mlp.fc2 = QLinear.wrap(blk.mlp.fc2, bits, bits)
        c = a.num_heads * a.head_dim
        qs = q.transpose(1, 2).reshape(-1, c)
        ks = k.transpose(1, 2).reshape(-1, c)
        a.irm_q = Irm(qs.mean(0), qs.var(0))
        a.irm_k = Irm(ks.mean(0), ks.var(0))
        a.use_irm = bool(irm)
        a.quant_q, a.quant_k, a.quant_v = LsqPlus(bits, True), LsqPlus(bits, True), LsqPlus(bits, True)
        a.record_scores = False
        a.forward = types.MethodType(_attn_forward, a)
    # 8-bit edges: MinMax per output channel on the weights (patch embedding, head)
    m.patch_embed.proj.__class__ = _EdgeConv
    m.head.__class__ = _EdgeLinear
    m.qvit_bits = bits
    m.qvit_irm = bool(irm)
    _install_exact(m)
    with torch.no_grad():                       # quantizers initialise on the first batch
        m(x)
    return m


class _EdgeConv(_torch().nn.Conv2d):
    """The patch embedding with 8-bit MinMax weights (``weight`` stays the float weight)."""

    def forward(self, x):
        return self._conv_forward(x, _minmax_fq(self.weight), self.bias)


class _EdgeLinear(_torch().nn.Linear):
    """The head with 8-bit MinMax weights (``weight`` stays the float weight)."""

    def forward(self, x):
        import torch.nn.functional as F
        return F.linear(x, _minmax_fq(self.weight), self.bias)


def _is_identity(mod) -> bool:
    return type(mod).__name__ == "Identity"


@dataclass
class QvitResult:
    model: object                     # the fake-quant network (eval mode)
    graph: IntGraph | None
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0


def default_calib_images(train_x: np.ndarray, seed: int = 0, n: int = 256) -> np.ndarray:
    """The ``n`` training images (seeded draw) that initialise the quantizers and calibrate
    the FQ-ViT parts of the graph, during training and at export."""
    torch = _torch()
    idx = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(seed + 1))[:n].numpy()
    return np.asarray(train_x, np.float32)[idx]


def train_qvit(model, train_x: np.ndarray, train_y: np.ndarray, bits: int = 4, irm: bool = True,
               dgd: bool = True, lam: float = QVIT_LAMBDA, epochs: int = QVIT_EPOCHS, lr: float = QVIT_LR,
               batch: int = QVIT_BATCH, seed: int = 0, calib_images: np.ndarray | None = None,
               max_steps: int | None = None, observer: str = "minmax", progress: bool = True):
    """Q-ViT QAT of a copy of the float ``model``; returns ``(qmodel, losses, steps)``.

    Every step runs the current integer graph (:func:`build_graph`: the network's
    quantizers, the FQ-ViT parts calibrated at the start of the epoch) on the batch and
    pins the network's tensors to its values (straight-through gradients): the network
    trains on the integers it will compute.  ``qmodel`` ends with the exported graph
    (:func:`export_qvit`) as its forward.  Deterministic per ``seed`` on one machine (one
    intra-op thread while training)."""
    torch = _torch()
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        order = torch.Generator().manual_seed(seed)
        teacher = copy.deepcopy(model).float().eval()
        if calib_images is None:
            calib_images = default_calib_images(train_x, seed)
        qm = prepare_qvit(model, bits, calib_images, irm=irm)
        params = [p for p in qm.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        n = len(train_y)
        per_epoch = -(-n // batch)
        total = epochs * per_epoch if max_steps is None else min(max_steps, epochs * per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / max(total, 1))))
        tx, ty = torch.as_tensor(np.asarray(train_x, np.float32)), torch.as_tensor(np.asarray(train_y, np.int64))
        losses: list[float] = []
        step = 0
        desc = f"Q-ViT W{bits}A{bits}" + (" IRM" if irm else "") + (" DGD" if dgd else "")
        with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:
            while step < total:
                obs = calibrate_qvit(qm, calib_images, observer)
                qm.train()
                for mod in qm.modules():        # no dropout / drop-path: the graph is inference
                    if isinstance(mod, torch.nn.Dropout) or type(mod).__name__ == "DropPath":
                        mod.eval()
                perm = torch.randperm(n, generator=order)
                for s in range(0, n, batch):
                    if step >= total:
                        break
                    idx = perm[s:s + batch]
                    xb, yb = tx[idx], ty[idx]
                    qm.qvit_exact.graph = build_graph(qm, obs)
                    logits = qm(xb)
                    loss = F.cross_entropy(logits, yb)
                    if dgd:
                        tqk, _ = _teacher_qk(teacher, xb)
                        loss = loss + lam * dgd_loss(_get_qk(qm), tqk)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    losses.append(float(loss.detach()))
                    step += 1
                    bar.update()
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
        qm.eval()
        for blk in qm.blocks:
            blk.attn._qk = None
        export_qvit(qm, calib_images, observer)
        return qm, losses, step
    finally:
        torch.set_num_threads(threads)


def fakequant_logits(qmodel, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Logits of the QAT network (with its graph, :func:`export_qvit`: the integer graph's
    logits in real units, bit for bit)."""
    torch = _torch()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch):
            out.append(qmodel(torch.as_tensor(np.asarray(images[s:s + batch], np.float32))).double().numpy())
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------
# IRM folding and integer export
# ---------------------------------------------------------------------------------------

def _qkv_affine(attn):
    """Per-output-channel ``(a, c)`` of the IRM over the qkv output (v: identity)."""
    c = attn.num_heads * attn.head_dim
    if getattr(attn, "use_irm", False):
        aq, cq = (t.detach().double().numpy() for t in attn.irm_q.affine())
        ak, ck = (t.detach().double().numpy() for t in attn.irm_k.affine())
    else:
        aq = ak = np.ones(c)
        cq = ck = np.zeros(c)
    return np.concatenate([aq, ak, np.ones(c)]), np.concatenate([cq, ck, np.zeros(c)])


def fold_irm(qmodel):
    """A copy of ``qmodel`` with every IRM folded into its qkv weights and biases (and the
    IRM switched off): ``W' = a W``, ``b' = a b + c``.  The weight quantizer's scale is
    multiplied by ``a`` too, so the quantized weights are ``a`` times the old ones: the
    fake-quant network computes the same function."""
    torch = _torch()
    m = copy.deepcopy(qmodel)
    for blk in m.blocks:
        a_ = blk.attn
        if not getattr(a_, "use_irm", False):
            continue
        a, c = _qkv_affine(a_)
        lin = a_.qkv
        with torch.no_grad():
            at = torch.as_tensor(a, dtype=lin.weight.dtype)
            lin.weight.mul_(at[:, None])
            b = lin.bias if lin.bias is not None else torch.zeros(lin.out_features)
            lin.bias = torch.nn.Parameter(b * at + torch.as_tensor(c, dtype=b.dtype))
            lin.w_q.s.copy_(lin.w_q.scale() * at[:, None])
        a_.use_irm = False
    return m


def _lowbit_linear(B, name: str, x: str, lin, out: str, out_q, shape, out_bits: int,
                   a=None, c=None, gamma=None) -> str:
    """A linear whose integer weights are the LSQ+ codes of ``lin`` (``weight_bits`` wide),
    with the per-channel affine ``a y + c`` (IRM) and layer scale ``gamma`` folded into the
    requantizer and the bias."""
    from ..quantize import UnsupportedModelError
    wq = lin.w_q
    w = lin.weight.detach()
    w_int = wq.integer(w).astype(np.int64)
    s_w = np.asarray(wq.export()[0], np.float64)
    n = w_int.shape[0]
    bias = np.zeros(n) if lin.bias is None else lin.bias.detach().double().numpy()
    a = np.ones(n) if a is None else np.asarray(a, np.float64)
    c = np.zeros(n) if c is None else np.asarray(c, np.float64)
    if gamma is not None:
        a, c = a * gamma, c * gamma
    if np.any(a <= 0):
        raise UnsupportedModelError(f"{name}: a non-positive per-channel factor cannot fold into the scale")
    xq = B.q[x]
    s_x = float(np.asarray(xq.scale))
    s_acc = s_x * s_w * a
    bias_int = np.rint((a * bias + c) / s_acc).astype(np.int64) - int(xq.zp) * w_int.sum(axis=1)
    if np.abs(bias_int).max(initial=0) >= 2 ** 31:
        raise UnsupportedModelError(f"{name}: folded bias does not fit int32")
    mult, shift = intops.dyadic(s_acc / out_q.vec(n))
    B.tensor(out, shape, out_q, bits=out_bits)
    return B.op(name, "linear", [x], out,
                {"zp_out": int(out_q.zp), "out_bits": out_bits, "weight_bits": wq.bits},
                {"weight": w_int.astype(np.int8), "bias": bias_int.astype(np.int32), "mult": mult, "shift": shift},
                {"weight_scale": s_acc / s_x})


def _qvit_block(B, p: str, blk, x: str, T: int, d: int, attn_bits: int) -> str:
    import torch
    from ..quantize import _Q, _layerscale, _scalar, softmax_input_frac_bits
    attn = blk.attn
    bits = attn.qkv.w_q.bits
    h, dh = attn.num_heads, attn.head_dim

    def q_of(lsq):
        s, z = lsq.export()
        return _Q(s, z)

    def low_ln(name, src, ln, out, lsq):
        y = B.layernorm(name, src, ln, out, q_of(lsq), (T, d))
        B.tensors[out].bits = bits
        B.ops[-1].attrs["out_bits"] = bits
        return y

    n1 = low_ln(f"{p}.norm1", x, blk.norm1, f"{p}.norm1.out", attn.qkv.act_q)
    sq, sk, sv = (float(attn.quant_q.export()[0]), float(attn.quant_k.export()[0]),
                  float(attn.quant_v.export()[0]))
    qkv_q = _Q(np.repeat([sq, sk, sv], d), 0)
    a, c = _qkv_affine(attn)
    qkv = _lowbit_linear(B, f"{p}.attn.qkv", n1, attn.qkv, f"{p}.attn.qkv.out", qkv_q, (T, 3 * d), bits, a, c)

    smax = float(getattr(attn, "scores_absmax", 0.0)) or 64.0
    frac = softmax_input_frac_bits(smax)
    s_scores = math.log(2.0) / 2 ** frac
    m_, s_ = intops.dyadic(sq * sk * float(attn.scale) / s_scores)
    sc = B.tensor(f"{p}.attn.scores", (h, T, T), _Q(s_scores, 0), bits=16)
    B.op(f"{p}.attn.qk", "qk_scores", [qkv], sc, {"heads": h, "head_dim": dh},
         {"mult": _scalar(m_), "shift": _scalar(s_)}, {"scale": float(attn.scale)})
    b_int, c_int = intops.lis_exp_constants(frac)
    pr = B.tensor(f"{p}.attn.probs", (h, T, T), None, bits=8, signed=False)
    B.op(f"{p}.attn.softmax", "softmax", [sc], pr, {"mode": "lis", "frac_bits": frac, "b_int": b_int, "c_int": c_int})
    ctx_q = q_of(attn.proj.act_q)
    m_, s_ = intops.dyadic(sv * 2.0 ** -intops.LIS_SHIFT_BASE / ctx_q.scale)
    ctx = B.tensor(f"{p}.attn.out", (T, d), ctx_q, bits=bits)
    B.op(f"{p}.attn.av", "attn_value", [pr, qkv], ctx,
         {"heads": h, "head_dim": dh, "mode": "lis", "zp_out": int(ctx_q.zp), "out_bits": bits},
         {"mult": _scalar(m_), "shift": _scalar(s_)})

    pj = _lowbit_linear(B, f"{p}.attn.proj", ctx, attn.proj, f"{p}.attn.proj.out",
                        B.affine(f"{p}.attn.proj.out"), (T, d), 8, gamma=_layerscale(blk.ls1, d))
    r1 = B.add(f"{p}.add1", x, pj, f"{p}.res1", B.stream(f"{p}.res1"), (T, d))

    n2 = low_ln(f"{p}.norm2", r1, blk.norm2, f"{p}.norm2.out", blk.mlp.fc1.act_q)
    hid = blk.mlp.fc1.out_features
    f1 = _lowbit_linear(B, f"{p}.mlp.fc1", n2, blk.mlp.fc1, f"{p}.mlp.fc1.out",
                        B.affine(f"{p}.mlp.fc1.out"), (T, hid), 8)
    # GELU table: 8-bit input codes -> the fc2 input's low-bit grid
    iq, oq = B.q[f1], q_of(blk.mlp.fc2.act_q)
    codes = np.arange(-128, 128)
    with torch.no_grad():
        y = blk.mlp.act(torch.from_numpy((codes - iq.zp) * float(iq.scale))).numpy()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    table = np.clip(np.floor(y / oq.scale + 0.5) + oq.zp, lo, hi).astype(np.int8)
    ge = B.tensor(f"{p}.mlp.act.out", (T, hid), oq, bits=bits)
    B.op(f"{p}.mlp.act", "gelu", [f1], ge, {}, {"table": table}, {"approximate": "none"})
    f2 = _lowbit_linear(B, f"{p}.mlp.fc2", ge, blk.mlp.fc2, f"{p}.mlp.fc2.out",
                        B.affine(f"{p}.mlp.fc2.out"), (T, d), 8, gamma=_layerscale(blk.ls2, d))
    return B.add(f"{p}.add2", r1, f2, f"{p}.res2", B.stream(f"{p}.res2"), (T, d))


def calibrate_qvit(qmodel, calib_images: np.ndarray, observer: str = "minmax") -> dict:
    """FQ-ViT's observers (residual stream with PTF, 8-bit linear outputs, logits) and the
    score ranges, from the float fake-quant forward of ``qmodel`` (float64: the same on
    every machine)."""
    from ..quantize import calibrate
    ex = qmodel.qvit_exact
    graph, ex.graph = ex.graph, None
    was_training = qmodel.training
    for blk in qmodel.blocks:
        blk.attn.record_scores, blk.attn.scores_absmax = True, 0.0
    try:
        return calibrate(qmodel, np.asarray(calib_images, np.float32), observer, progress=False)
    finally:
        for blk in qmodel.blocks:
            blk.attn.record_scores = False
        ex.graph = graph
        qmodel.train(was_training)


def build_graph(qmodel, obs: dict) -> IntGraph:
    """The integer graph of ``qmodel`` on the calibration ``obs`` (:func:`calibrate_qvit`)."""
    from ..quantize import _assemble, _Builder
    # _assemble quantizes the edge weights with the 8-bit MinMax rule the network trained with
    g = _assemble(qmodel, _Builder(obs, True), obs, 4, True, True, _qvit_block, "qvit")
    g.info.update({"bits": int(qmodel.qvit_bits), "edge_bits": EDGE_BITS})
    return g


def export_qvit(qmodel, calib_images: np.ndarray, observer: str = "minmax", progress: bool = False,
                **info) -> IntGraph:
    """The integer graph of a trained Q-ViT network: FQ-ViT's stream, LayerNorm, softmax and
    GELU table calibrated on ``calib_images`` through the fake-quant network (float64), the
    learned low-bit grids everywhere else (IRM folded into the qkv requantizers).  The
    graph also becomes ``qmodel``'s forward (:func:`fakequant_logits`).  Deterministic: the
    same network gives the same graph."""
    torch = _torch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = build_graph(qmodel, calibrate_qvit(qmodel, calib_images, observer))
    finally:
        torch.set_num_threads(threads)
    g.info.update(info)
    qmodel.qvit_exact.graph = g
    return g


def quantize_qvit(model, calib_images: np.ndarray | None = None, bits: int = 4, irm: bool = True,
                  dgd: bool = True, lam: float = QVIT_LAMBDA, epochs: int = QVIT_EPOCHS, lr: float = QVIT_LR,
                  seed: int = 0, train_x=None, train_y=None, max_steps: int | None = None,
                  observer: str = "minmax", progress: bool = True) -> QvitResult:
    """Train (:func:`train_qvit`) and export (:func:`export_qvit`).  Without ``train_x`` the
    digits training split of ``seed`` is used (the only labelled data shipped); without
    ``calib_images``, :func:`default_calib_images`."""
    t0 = time.perf_counter()
    if train_x is None:
        from ..digits import load_digits_split
        split = load_digits_split(seed)
        train_x, train_y = split.train_x, split.train_y
    if calib_images is None:
        calib_images = default_calib_images(train_x, seed)
    qm, losses, steps = train_qvit(model, train_x, train_y, bits, irm, dgd, lam, epochs, lr,
                                   seed=seed, calib_images=calib_images, max_steps=max_steps,
                                   observer=observer, progress=progress)
    g = qm.qvit_exact.graph
    g.info.update(irm=bool(irm), dgd=bool(dgd), dgd_lambda=float(lam), qat_epochs=epochs, qat_steps=steps,
                  qat_lr=lr, seed=seed)
    return QvitResult(qm, g, losses, steps, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------
# Checkpoints (the trained network; its graph is re-exported from it, deterministically)
# ---------------------------------------------------------------------------------------

#: The shipped W4A4 Q-ViT (IRM and DGD) of the seed-0 digits ViT (``python -m
#: sw.methods.qvit --export``): tests check its export without training.
SHIPPED_QVIT = __import__("pathlib").Path(__file__).resolve().parent.parent / "data" / "qvit_digits_w4a4_seed0.npz"


def save_qvit(qmodel, path, **meta) -> None:
    """Write the trained network's state and its recipe (``meta``) as an ``.npz`` (atomically)."""
    import io
    import json
    from ..graph import atomic_write_bytes
    meta = {"bits": int(qmodel.qvit_bits), "irm": bool(qmodel.qvit_irm), **meta}
    arrays = {f"w/{k}": v.detach().cpu().numpy() for k, v in qmodel.state_dict().items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_qvit(path, model=None, calib_images: np.ndarray | None = None, observer: str = "minmax"):
    """``(qmodel, graph, meta)`` of a checkpoint written by :func:`save_qvit`: the network on
    the float ``model`` (default: the digits ViT of the checkpoint's ``base_seed``) and its
    export on ``calib_images`` (default: :func:`default_calib_images` of the digits training
    split of ``seed``, as training used)."""
    import json
    torch = _torch()
    with np.load(path) as f:
        meta = json.loads(bytes(f["meta"]).decode())
        state = {k[2:]: torch.from_numpy(f[k].copy()) for k in f.files if k.startswith("w/")}
    if model is None or calib_images is None:
        from ..digits import load_or_train
        base, split = load_or_train(seed=int(meta.get("base_seed", 0)), progress=False)
        model = base if model is None else model
        if calib_images is None:
            calib_images = default_calib_images(split.train_x, int(meta.get("seed", 0)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        qm = prepare_qvit(model, int(meta["bits"]), calib_images[:8], irm=bool(meta["irm"]))
        qm.load_state_dict(state)
        qm.eval()
    finally:
        torch.set_num_threads(threads)
    g = export_qvit(qm, calib_images, observer, **{k: v for k, v in meta.items() if k != "base_seed"})
    return qm, g, meta


def _main() -> None:
    import argparse
    ap = argparse.ArgumentParser(description="Train the shipped W4A4 Q-ViT of the seed-0 digits ViT and write it.")
    ap.add_argument("--export", default=str(SHIPPED_QVIT), metavar="FILE.npz")
    args = ap.parse_args()
    from ..digits import load_or_train
    model, split = load_or_train(seed=0)
    res = quantize_qvit(model, bits=4, seed=0, train_x=split.train_x, train_y=split.train_y)
    save_qvit(res.model, args.export, dgd=True, dgd_lambda=QVIT_LAMBDA, epochs=QVIT_EPOCHS, seed=0, base_seed=0)
    print(f"wrote {args.export}")


if __name__ == "__main__":
    _main()
