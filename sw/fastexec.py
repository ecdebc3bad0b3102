"""The fast integer executor: the reference executor's results, at about the float model's speed.

:func:`sw.executor.execute` is the readable definition: one :mod:`sw.intops` call per op,
each a chain of whole-array numpy passes.  This module computes the same integers with
fused kernels (:mod:`sw.fastkernels`, numba) and exact float32 matrix products, and splits
a batch over the cores (one slice per thread; kernels and BLAS release the GIL, BLAS runs
single-threaded meanwhile):

* **Matrix products** of small integers run as float32 BLAS products, exact because every
  partial sum is an integer below ``2**24`` in magnitude whatever the summation order.  A
  linear layer whose ``K * 128 * max|W|`` reaches that bound is split along ``K`` into
  chunks that stay below it; the requantization kernel sums the chunks exactly.  For
  attention x V the bound ``128 * sum_j w_ij`` is checked per row on the data (LIS weights
  sum to about ``2**15`` per row).
* **Elementwise chains** (requantization, the integer softmax, LayerNorm, residual adds,
  the GELU table; I-ViT's Shiftmax, I-LayerNorm and 16-bit residual add; PTQ4ViT's twin
  softmax) are one kernel each, one pass over the rows, computing intops' integers with
  intops' operations (in int64 or int32 where no step can wrap, and requantization in a
  float64 form proven exact; see :mod:`sw.fastkernels`).  I-ViT's ShiftGELU of an int8
  input is a function of that input alone: a 256-entry table made by
  :func:`sw.intops.shiftgelu` itself at preparation, looked up like the GELU table.
  PTQ4ViT's twin products (attention x V, ``fc2``) are two exact float32 products, one per
  range, combined exactly in float64 (one product when the combined weights allow it).
* **Errors**: where an intops function would raise, the kernel sets a flag; this module then
  runs the reference op on the same inputs, which raises the reference's
  :class:`~sw.intops.IntegerOverflowError` (or, if the flag was conservative, returns the
  reference result).  When a slice of a split batch fails, the whole batch runs again in
  one piece, so the error is the one the reference raises for the whole batch.  An op whose
  parameters fail intops' checks at preparation, whose input is not stored at the width a
  kernel expects, or whose kind, attributes or parameters this module does not know, always
  runs the reference op: new op kinds run unchanged.

Swin's windowed attention (``windows``, the score ``bias`` and ``mask``) runs the same
kernels on the windows as independent sequences (numpy views), the bias and mask added in
int32 and saturated to int16 as :func:`sw.intops.score_bias` does; the data movement ops
(window partition and reverse, patch merging) are the reference's numpy reshapes.

Every output integer equals the reference's (``tests/sw/test_fastexec.py``: the digits ViT,
DeiT-Tiny and random graphs of every method, FQ-ViT, I-ViT and PTQ4ViT, every tensor
compared; ``tests/sw/test_swin.py``: random timm Swin models and the digits Swin).

:class:`FastExecutor` prepares a graph once (weights converted to float32, parameters checked
and broadcast); it reads the graph's parameters at construction, so build a new one after
changing them.  :func:`execute_fast` is the one-call form.
"""
from __future__ import annotations

import os
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable

import numpy as np

from . import intops
from .executor import _guaranteed_range, _storage_dtype, input_env, run_op
from .graph import IntGraph, Op

__all__ = ["FastExecutor", "execute_fast", "available", "default_threads", "FAST_KINDS"]

#: Largest magnitude a float32 holds every integer up to (exclusive).
_F32_EXACT = 1 << 24
#: int8 operands: the largest magnitude (the dtype's bound, as intops uses it).
_I8_ABS = 128
#: Largest requantization shift of the kernels' float form (``sw.fastkernels.FLOAT_MAX_SHIFT``;
#: repeated here so that importing this module does not import numba).
_FLOAT_MAX_SHIFT = 52

#: Op kinds with a fast kernel, and the attributes and parameters each kernel understands.
#: An op with anything else (a kind or an attribute added later) runs the reference.
FAST_KINDS: dict[str, tuple[frozenset, frozenset]] = {
    "linear": (frozenset({"zp_out", "out_bits"}), frozenset({"weight", "bias", "mult", "shift"})),
    "qk_scores": (frozenset({"heads", "head_dim", "windows"}), frozenset({"mult", "shift", "bias", "mask"})),
    "softmax": (frozenset({"mode", "frac_bits", "b_int", "c_int", "windows"}), frozenset()),
    "attn_value": (frozenset({"heads", "head_dim", "mode", "zp_out", "windows"}), frozenset({"mult", "shift"})),
    "layernorm": (frozenset({"zp_in", "out_bits"}), frozenset({"alpha", "mult", "shift", "offset"})),
    "add": (frozenset({"zp_a", "zp_b", "zp_out"}), frozenset({"mult_a", "mult_b", "shift", "const"})),
    "gelu": (frozenset(), frozenset({"table"})),
    # I-ViT
    "ilayernorm": (frozenset(), frozenset({"mult", "shift", "offset"})),
    "add_wide": (frozenset({"out_bits"}), frozenset({"mult_a", "mult_b", "shift", "const"})),
    "shiftmax": (frozenset({"x0", "n", "out_bits"}), frozenset()),
    "attn_value_wide": (frozenset({"heads", "head_dim", "zp_out"}), frozenset({"mult", "shift"})),
    "shiftgelu": (frozenset({"x0", "n", "zp_out"}), frozenset({"mult", "shift"})),
    # PTQ4ViT
    "twin_softmax": (frozenset({"frac_bits", "b_int", "c_int", "m", "bits"}), frozenset()),
    "attn_value_twin": (frozenset({"heads", "head_dim", "zp_out", "m", "bits", "out_bits"}),
                        frozenset({"mult", "shift"})),
    "twin_gelu": (frozenset({"m", "bits"}), frozenset({"table"})),
    "linear_twin": (frozenset({"zp_out", "out_bits", "m", "bits"}), frozenset({"weight", "bias", "mult", "shift"})),
}

#: Twin codes: the largest ``m`` (power of two between the two steps) the kernels take; the
#: reference checks it only in the twin softmax, and ``acc << m`` stays exact in float64.
_TWIN_MAX_M = 20


def available() -> bool:
    """True when the fused kernels can be used (numba imports)."""
    try:
        from . import fastkernels  # noqa: F401
    except ImportError:
        return False
    return True


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                    # not on Linux
        return max(1, os.cpu_count() or 1)


class _Reference(Exception):
    """This op (or this call of it) is computed by the reference executor."""


def _k():
    from . import fastkernels
    return fastkernels


_blas_lock = threading.Lock()
_blas_controller = None


def _single_threaded_blas():
    """A context in which numpy's BLAS runs in the calling thread (the executor's own threads
    split the batch instead: no two thread pools compete for the cores)."""
    global _blas_controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return nullcontext()
    with _blas_lock:
        if _blas_controller is None:
            _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


# ----------------------------------------------------------------------------------------
# Preparation helpers: checks of parameters, as intops makes them at run time
# ----------------------------------------------------------------------------------------

def _int(v, what: str, bits: int = 32) -> int:
    """A scalar attribute or parameter as a Python int within ``bits`` signed bits."""
    a = np.asarray(v)
    if a.dtype.kind not in "iub" or a.size != 1:
        raise _Reference(what)
    x = int(a.reshape(()))
    if not -(1 << (bits - 1)) <= x < (1 << (bits - 1)):
        raise _Reference(what)
    return x


def _per_channel(v, n: int, lo: int, hi: int, what: str) -> np.ndarray:
    """A scalar or ``[n]`` integer parameter as int64 ``[n]``, every value in ``[lo, hi]``."""
    a = np.asarray(v)
    if a.dtype.kind not in "iub" or a.shape not in ((), (1,), (n,)):
        raise _Reference(what)
    a = a.astype(np.int64)
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        raise _Reference(what)
    return np.ascontiguousarray(np.broadcast_to(a.reshape(-1) if a.ndim else a, (n,)))


def _half(shift: np.ndarray) -> np.ndarray:
    """``2**(shift - 1)`` where ``shift > 0``, else 0 (intops' rounding constant)."""
    return np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), np.int64(0))


def _require(x: np.ndarray, dtype) -> np.ndarray:
    """The input as a C-contiguous array of ``dtype``; the reference runs inputs stored otherwise."""
    if x.dtype != dtype:
        raise _Reference("input dtype")
    return np.ascontiguousarray(x)


class _Context:
    """Per-run scratch shared between ops: the float32 q / k / v of each qkv tensor and the
    float32 attention weights a softmax computed for the attention x V after it."""

    def __init__(self, weight_consumers: dict[str, str]):
        self.splits: dict[str, tuple[int, int, np.ndarray]] = {}
        self.weights: dict[str, tuple[str, np.ndarray]] = {}
        self._weight_consumers = weight_consumers

    def wants_weights(self, name: str, tag) -> bool:
        return self._weight_consumers.get(name) == tag

    def split(self, name: str, qkv: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
        hit = self.splits.get(name)
        if hit is not None and hit[:2] == (heads, head_dim) and hit[2].shape[1] == qkv.shape[0] \
                and hit[2].shape[3] == qkv.shape[1]:
            return hit[2]
        if qkv.ndim != 3 or qkv.shape[2] != 3 * heads * head_dim:
            raise _Reference("qkv shape")
        b, t, _ = qkv.shape
        out = np.empty((3, b, heads, t, head_dim), np.float32)
        _k().split_heads_f32(_require(qkv, np.int8), heads, head_dim, out)
        self.splits[name] = (heads, head_dim, out)
        return out

    def drop(self, name: str) -> None:
        self.splits.pop(name, None)
        self.weights.pop(name, None)


# ----------------------------------------------------------------------------------------
# One prepared op per kind: ``fn(ctx, *inputs) -> output`` (raises _Reference)
# ----------------------------------------------------------------------------------------

def _float_scale(mult: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``mult * 2**-shift`` as exact float64 for the kernels' float requantization (shifts up
    to :data:`~sw.fastkernels.FLOAT_MAX_SHIFT`; larger ones run the reference)."""
    if shift.size and int(shift.max()) > _FLOAT_MAX_SHIFT:
        raise _Reference("shift beyond the float form")
    return np.ldexp(mult.astype(np.float64), -shift.astype(np.int64))


def _linear_setup(op: Op):
    """What a linear kernel needs: ``(n, k, products, bias, scale, zp, clamp)`` with
    ``products(rows)`` the exact float32 chunk products of float32 rows (|x| <= 128)."""
    p, a = op.params, op.attrs
    w = np.asarray(p["weight"])
    if w.ndim != 2 or w.dtype.kind not in "iu" or w.size == 0:
        raise _Reference("weight")
    n, k = w.shape
    if int(w.min()) < intops.INT8_MIN or int(w.max()) > intops.INT8_MAX:
        raise _Reference("weight range")
    if np.asarray(p["bias"]).shape != (n,):
        raise _Reference("bias shape")
    bias = _per_channel(p["bias"], n, intops.INT32_MIN, intops.INT32_MAX, "bias").astype(np.float64)
    mult = _per_channel(p["mult"], n, intops.INT16_MIN, intops.INT16_MAX, "mult")
    shift = _per_channel(p["shift"], n, 0, intops.REQUANT_MAX_SHIFT, "shift")
    scale = _float_scale(mult, shift)
    zp = float(_int(a["zp_out"], "zp_out"))
    clamp = _guaranteed_range(op)
    if clamp is None:
        raise _Reference("out_bits")
    # K chunks whose partial sums stay below 2**24: exact float32 products.
    wmax = int(np.abs(w.astype(np.int64)).max())
    kc = k if wmax == 0 else min(k, (_F32_EXACT - 1) // (_I8_ABS * wmax))
    n_chunks = -(-k // kc)
    kc = -(-k // n_chunks)
    wf = w.astype(np.float32)
    chunks = [(k0, min(k, k0 + kc), np.ascontiguousarray(wf[:, k0:k0 + kc])) for k0 in range(0, k, kc)]

    def products(xf: np.ndarray) -> np.ndarray:
        """``x @ W.T`` of float32 rows ``[M, K]`` holding integers of magnitude at most 128
        as float32 parts ``[n_chunks, M, N]``, each an exact integer; their sum is the exact
        product."""
        acc = np.empty((len(chunks), len(xf), n), np.float32)
        for c, (k0, k1, wc) in enumerate(chunks):
            np.matmul(xf[:, k0:k1] if len(chunks) > 1 else xf, wc.T, out=acc[c])
        return acc

    return n, k, products, bias, scale, zp, clamp


def _prep_linear(graph: IntGraph, op: Op) -> Callable:
    n, k, products_f32, bias, scale, zp, clamp = _linear_setup(op)
    dt = _storage_dtype(*clamp)
    lo, hi = float(clamp[0]), float(clamp[1])

    def products(x2d: np.ndarray) -> np.ndarray:
        """``x @ W.T`` of int8 rows ``[M, K]`` (see :func:`_linear_setup`)."""
        return products_f32(x2d.astype(np.float32))

    def run(ctx, x, table=None):
        x = _require(x, np.int8)
        if x.ndim < 1 or x.shape[-1] != k:
            raise _Reference("input shape")
        lead = x.shape[:-1]
        m = int(np.prod(lead))
        acc = products(x.reshape(m, k))
        if table is not None:
            out_q = np.empty((m, n), np.int8)
            out_t = np.empty((m, n), np.int8)
            if _k().requantize_rows_lut(acc, bias, scale, zp, table, out_q, out_t):
                raise _Reference("accumulator")
            return out_q.reshape(*lead, n), out_t.reshape(*lead, n)
        out = np.empty((m, n), dt)
        if _k().requantize_rows(acc, bias, scale, zp, lo, hi, out):
            raise _Reference("accumulator")
        return out.reshape(*lead, n)

    run.gelu_ready = clamp == (intops.INT8_MIN, intops.INT8_MAX)
    run.products = products
    return run


def _twin_m_bits(a: dict) -> tuple[int, int, int]:
    """``(m, bits, levels)`` of a twin op, within what the kernels take."""
    m, bits = _int(a["m"], "m"), _int(a["bits"], "bits")
    if not 0 <= m <= _TWIN_MAX_M or not 2 <= bits <= 8:
        raise _Reference("twin m / bits")
    return m, bits, (1 << (bits - 1)) - 1


def _prep_linear_twin(graph: IntGraph, op: Op) -> Callable:
    """PTQ4ViT's ``fc2`` on signed twin codes: the positive and the negative codes as two
    exact float32 products, combined and requantized in one kernel."""
    n, k, products, bias, scale, zp, clamp = _linear_setup(op)
    m, _, levels = _twin_m_bits(op.attrs)
    dt = _storage_dtype(*clamp)
    lo, hi = float(clamp[0]), float(clamp[1])
    scale_m = float(1 << m)

    def run(ctx, x):
        x = _require(x, np.int8)
        if x.ndim < 1 or x.shape[-1] != k:
            raise _Reference("input shape")
        if x.size and (int(x.min()) < -levels or int(x.max()) > levels):
            raise _Reference("twin code range")
        lead = x.shape[:-1]
        rows = int(np.prod(lead))
        xf = x.reshape(rows, k).astype(np.float32)
        acc_pos = products(np.maximum(xf, 0))
        acc_neg = products(np.minimum(xf, 0, out=xf))
        out = np.empty((rows, n), dt)
        if _k().requantize_rows_twin(acc_pos, acc_neg, bias, scale_m, scale, zp, lo, hi, out):
            raise _Reference("accumulator")
        return out.reshape(*lead, n)

    return run


def _scalar_requant(p: dict) -> float:
    """The float64 scale of a scalar (per-tensor) requantizer."""
    mult = _int(p["mult"], "mult", intops.REQUANT_MULT_BITS)
    shift = _int(p["shift"], "shift", 8)
    if not 0 <= shift <= intops.REQUANT_MAX_SHIFT:
        raise _Reference("shift")
    return float(_float_scale(np.array([mult]), np.array([shift]))[0])


def _window_count(a: dict) -> int:
    """The ``windows`` attribute of a (Swin) attention op, 1 when absent."""
    nw = _int(a.get("windows", 1), "windows")
    if nw < 1:
        raise _Reference("windows")
    return nw


def _as_windows(qkv: np.ndarray, nw: int) -> np.ndarray:
    """``[B, nW*N, C]`` -> ``[B*nW, N, C]`` (a view)."""
    if qkv.ndim != 3 or qkv.shape[1] % nw:
        raise _Reference("qkv shape")
    return qkv.reshape(qkv.shape[0] * nw, qkv.shape[1] // nw, qkv.shape[2])


def _score_extra(p: dict, key: str, ndim: int, upper: int):
    """Swin's score ``bias`` / ``mask`` as int32 (None when absent), checked as intops does."""
    if key not in p:
        return None
    v = np.asarray(p[key])
    if v.dtype.kind not in "iu" or v.ndim != ndim or v.size == 0:
        raise _Reference(key)
    if int(v.min()) < intops.INT16_MIN or int(v.max()) > upper:
        raise _Reference(key)
    return v.astype(np.int32)


def _prep_qk_scores(graph: IntGraph, op: Op) -> Callable:
    p, a = op.params, op.attrs
    heads, dh = _int(a["heads"], "heads"), _int(a["head_dim"], "head_dim")
    if heads < 1 or dh < 1 or dh * _I8_ABS * _I8_ABS >= _F32_EXACT:
        raise _Reference("head shape")
    nw = _window_count(a)
    scale = _scalar_requant(p)
    bias = _score_extra(p, "bias", 3, intops.INT16_MAX)
    mask = _score_extra(p, "mask", 3, 0)

    def run(ctx, qkv):
        b = qkv.shape[0]
        qkv = _as_windows(qkv, nw)
        f = ctx.split(op.inputs[0], qkv, heads, dh)
        bw, t = qkv.shape[:2]
        acc = np.matmul(f[0], f[1].swapaxes(-1, -2))          # [B*nW, H, N, N], exact
        out = np.empty((bw * heads * t, t), np.int16)
        if _k().requantize_rows(acc.reshape(1, bw * heads * t, t), np.zeros(t), np.full(t, scale), 0.0,
                                float(intops.INT16_MIN), float(intops.INT16_MAX), out):
            raise _Reference("accumulator")
        if bias is None and mask is None:
            return out.reshape(b, nw * heads, t, t)
        s = out.reshape(b, nw, heads, t, t).astype(np.int32)
        if bias is not None:
            if bias.shape != (heads, t, t):
                raise _Reference("bias shape")
            s += bias
        if mask is not None:
            if mask.shape != (nw, t, t):
                raise _Reference("mask shape")
            s += mask[:, None]
        np.clip(s, intops.INT16_MIN, intops.INT16_MAX, out=s)
        return s.astype(np.int16).reshape(b, nw * heads, t, t)

    return run


def _softmax_constants(a: dict) -> tuple[bool, int, int, int]:
    """``(lis, frac_bits, b_int, c_int)`` when no int32 step of intops' exponential can wrap
    (so the kernel's arithmetic equals intops'), else the reference runs the op."""
    if a["mode"] not in ("lis", "uniform"):
        raise _Reference("mode")
    fb, b, c = _int(a["frac_bits"], "frac_bits"), _int(a["b_int"], "b_int"), _int(a["c_int"], "c_int")
    # |r| <= 2**fb, so |(r + b) r| <= 2**8 (2**8 + 2**20) and adding c stays below 2**31.
    if not 0 <= fb <= 8 or abs(b) > (1 << 20) or abs(c) > (1 << 30):
        raise _Reference("softmax constants")
    return a["mode"] == "lis", fb, b, c


#: The largest row sum of attention weights for which ``weights @ V`` (int8 V) is exact in
#: float32: every partial sum is at most ``128 * sum_j w_ij < 2**24``.
_MAX_WEIGHT_ROW_SUM = (_F32_EXACT - 1) // _I8_ABS


def _prep_softmax(graph: IntGraph, op: Op) -> Callable:
    lis, fb, b_int, c_int = _softmax_constants(op.attrs)
    _no_weights = np.empty((0, 0), np.float32)

    def run(ctx, x):
        x = _require(x, np.int16)
        if x.ndim < 1 or x.shape[-1] < 1:
            raise _Reference("input shape")
        n = x.shape[-1]
        rows = x.reshape(-1, n)
        out = np.empty(rows.shape, np.uint8)
        mode = "lis" if lis else "uniform"
        weights = np.empty(rows.shape, np.float32) if ctx.wants_weights(op.outputs[0], mode) else _no_weights
        bad, wmax = _k().softmax_rows(rows, fb, b_int, c_int, lis, out, weights)
        if bad:
            raise _Reference("softmax range")
        if weights.size and wmax <= _MAX_WEIGHT_ROW_SUM:
            ctx.weights[op.outputs[0]] = (mode, weights.reshape(x.shape))
        return out.reshape(x.shape)

    return run


def _prep_shiftmax(graph: IntGraph, op: Op) -> Callable:
    a = op.attrs
    x0, n, bits = _int(a["x0"], "x0"), _int(a["n"], "n"), _int(a["out_bits"], "out_bits")
    if x0 >= 0 or not 0 <= n <= 30 or not 2 <= bits <= 16:
        raise _Reference("Shiftmax constants")
    dt = _storage_dtype(*_guaranteed_range(op))
    _no_weights = np.empty((0, 0), np.float32)

    def run(ctx, x):
        x = _require(x, np.int16)
        if x.ndim < 1 or x.shape[-1] < 1:
            raise _Reference("input shape")
        rows = x.reshape(-1, x.shape[-1])
        out = np.empty(rows.shape, dt)
        weights = np.empty(rows.shape, np.float32) if ctx.wants_weights(op.outputs[0], "wide") else _no_weights
        bad, wmax = _k().shiftmax_rows(rows, x0, n, bits, out, weights)
        if bad:
            raise _Reference("Shiftmax row sum")
        if weights.size and wmax <= _MAX_WEIGHT_ROW_SUM:
            ctx.weights[op.outputs[0]] = ("wide", weights.reshape(x.shape))
        return out.reshape(x.shape)

    return run


def _twin_tag(m: int, bits: int) -> tuple:
    return ("twin", m, bits)


def _prep_twin_softmax(graph: IntGraph, op: Op) -> Callable:
    a = op.attrs
    _, fb, b_int, c_int = _softmax_constants({**a, "mode": "uniform"})
    m, bits, _ = _twin_m_bits(a)
    tag = _twin_tag(m, bits)
    _no_weights = np.empty((0, 0), np.float32)

    def run(ctx, x):
        x = _require(x, np.int16)
        if x.ndim < 1 or x.shape[-1] < 1:
            raise _Reference("input shape")
        rows = x.reshape(-1, x.shape[-1])
        out = np.empty(rows.shape, np.uint8)
        weights = np.empty(rows.shape, np.float32) if ctx.wants_weights(op.outputs[0], tag) else _no_weights
        bad, wmax = _k().twin_softmax_rows(rows, fb, b_int, c_int, m, bits, out, weights)
        if bad:
            raise _Reference("softmax range")
        if weights.size and wmax <= _MAX_WEIGHT_ROW_SUM:
            ctx.weights[op.outputs[0]] = (tag, weights.reshape(x.shape))
        return out.reshape(x.shape)

    return run


def _weight_tag(op: Op):
    """The kind of float32 attention weights an attention x V op reads (None: not one)."""
    if op.kind == "attn_value":
        return op.attrs.get("mode")
    if op.kind == "attn_value_wide":
        return "wide"
    if op.kind == "attn_value_twin":
        try:
            return _twin_tag(*_twin_m_bits(op.attrs)[:2])
        except (_Reference, KeyError, TypeError, ValueError):
            return None
    return None


def _prep_attn_value(graph: IntGraph, op: Op) -> Callable:
    """Attention x V of LIS codes or uniform probabilities (``attn_value``), of Shiftmax's
    probabilities (``attn_value_wide``) or of twin codes (``attn_value_twin``): float32
    weights (from the softmax kernel, or made here from the codes) times the float32 V,
    exact while ``128 * row sum of the weights < 2**24``, then requantized."""
    p, a = op.params, op.attrs
    heads, dh = _int(a["heads"], "heads"), _int(a["head_dim"], "head_dim")
    if heads < 1 or dh < 1:
        raise _Reference("heads")
    tag = _weight_tag(op)
    twin = op.kind == "attn_value_twin"
    if op.kind == "attn_value":
        if tag not in ("lis", "uniform"):
            raise _Reference("mode")
        limit = intops.LIS_ZERO_CODE if tag == "lis" else 255
    elif op.kind == "attn_value_wide":
        limit = (1 << 16) - 1
    else:
        if tag is None:
            raise _Reference("twin m / bits")
        m, bits, levels = _twin_m_bits(a)
    # codes are stored at their tensor's width: int8 holds 6-bit twin codes, for example
    code_types = tuple(np.dtype(t) for t in (np.uint8, np.int8, np.uint16, np.int16))
    clamp = _guaranteed_range(op)
    if clamp is None or clamp[0] < intops.INT8_MIN or clamp[1] > intops.INT8_MAX:
        raise _Reference("out_bits")
    lo, hi = float(clamp[0]), float(clamp[1])
    scale = _scalar_requant(p)
    zp = float(_int(a["zp_out"], "zp_out"))
    nw = _window_count(a)

    def weights_from_codes(codes, t):
        w = np.empty(codes.shape, np.float32)
        if twin:
            bad, wmax = _k().twin_weights(codes.reshape(-1, t), m, bits, w.reshape(-1, t), _NO_ROWS)
        else:
            bad, wmax = _k().attention_weights(codes.reshape(-1, t), tag == "lis", limit, w.reshape(-1, t))
        if bad:
            raise _Reference("attention codes")
        return w, wmax

    def run(ctx, codes, qkv):
        out = run_windows(ctx, codes, qkv)
        return out.reshape(qkv.shape[0], qkv.shape[1], heads * dh)

    def run_windows(ctx, codes, qkv):
        codes = _require_any(codes, code_types)
        batch = qkv.shape[0]
        qkv = _as_windows(qkv, nw)
        f = ctx.split(op.inputs[1], qkv, heads, dh)
        b, t = qkv.shape[:2]
        if codes.shape != (batch, nw * heads, t, t):
            raise _Reference("codes shape")
        codes = codes.reshape(b, heads, t, t)
        out = np.empty((b, t, heads * dh), np.int8)
        hit = ctx.weights.get(op.inputs[0])
        if hit is not None and hit[0] == tag:
            w, wmax = hit[1].reshape(b, heads, t, t), 0
        else:
            w, wmax = weights_from_codes(codes, t)
        if wmax <= _MAX_WEIGHT_ROW_SUM:
            acc = np.matmul(w, f[2])                             # [B, H, T, dh], exact
            if _k().requantize_heads(acc, scale, zp, lo, hi, out):
                raise _Reference("accumulator")
            return out
        if not twin or levels * t > _MAX_WEIGHT_ROW_SUM:
            raise _Reference("attention weights")
        # twin codes whose combined weights are too large for one exact product: one product
        # per range (each row sum at most levels * T), combined in float64
        w_hi = np.empty(codes.shape, np.float32)
        w_lo = np.empty(codes.shape, np.float32)
        _k().twin_weights(codes.reshape(-1, t), m, bits, w_hi.reshape(-1, t), w_lo.reshape(-1, t))
        acc_hi = np.matmul(w_hi, f[2])
        acc_lo = np.matmul(w_lo, f[2])
        if _k().requantize_heads_twin(acc_hi, acc_lo, float(1 << m), scale, zp, lo, hi, out):
            raise _Reference("accumulator")
        return out

    return run


#: An empty float32 matrix: "no second output" for the kernels that take one.
_NO_ROWS = np.empty((0, 0), np.float32)


def _ln_affine_params(p: dict, c: int):
    """``(mult, shift - LN_OFFSET_FRAC, offset)`` of :func:`sw.intops.ln_affine`, checked."""
    mult = _per_channel(p["mult"], c, intops.INT16_MIN, intops.INT16_MAX, "mult")
    shift = _per_channel(p["shift"], c, intops.LN_OFFSET_FRAC, intops.REQUANT_MAX_SHIFT, "shift")
    offset = _per_channel(p["offset"], c, intops.INT32_MIN, intops.INT32_MAX, "offset")
    return mult, shift - intops.LN_OFFSET_FRAC, offset


def _prep_ilayernorm(graph: IntGraph, op: Op) -> Callable:
    shape = graph.tensors[op.inputs[0]].shape
    if not shape or not 1 <= shape[-1] <= intops.LN_MAX_CHANNELS:
        raise _Reference("channels")
    c = shape[-1]
    mult, rshift, offset = _ln_affine_params(op.params, c)
    steps, start = intops.ILN_SQRT_STEPS, intops.ILN_SQRT_START

    def run(ctx, x):
        x = _require_any(x, (np.dtype(np.int8), np.dtype(np.int16)))
        if x.ndim < 1 or x.shape[-1] != c:
            raise _Reference("input shape")
        rows = x.reshape(-1, c)
        out = np.empty(rows.shape, np.int8)
        if _k().ilayernorm_rows(rows, mult, rshift, offset, steps, start, out):
            raise _Reference("I-LayerNorm range")
        return out.reshape(x.shape)

    return run


def _prep_layernorm(graph: IntGraph, op: Op) -> Callable:
    p, a = op.params, op.attrs
    shape = graph.tensors[op.inputs[0]].shape
    if not shape or not 1 <= shape[-1] <= intops.LN_MAX_CHANNELS:
        raise _Reference("channels")
    c = shape[-1]
    zp = _int(a["zp_in"], "zp_in")
    alpha = _per_channel(p["alpha"], c, 0, 3, "alpha")
    mult, rshift, offset = _ln_affine_params(p, c)
    clamp = _guaranteed_range(op)
    if clamp is None or clamp[0] < intops.INT8_MIN or clamp[1] > intops.INT8_MAX:
        raise _Reference("out_bits")
    lo, hi = clamp

    def run(ctx, x):
        x = _require(x, np.int8)
        if x.ndim < 1 or x.shape[-1] != c:
            raise _Reference("input shape")
        rows = x.reshape(-1, c)
        out = np.empty(rows.shape, np.int8)
        if _k().layernorm_rows(rows, zp, alpha, mult, rshift, offset, lo, hi, out):
            raise _Reference("layernorm range")
        return out.reshape(x.shape)

    return run


def _require_any(x: np.ndarray, dtypes) -> np.ndarray:
    """The input as a C-contiguous array of one of ``dtypes`` (else the reference runs it)."""
    if x.dtype not in dtypes:
        raise _Reference("input dtype")
    return np.ascontiguousarray(x)


def _prep_add(graph: IntGraph, op: Op) -> Callable:
    """``add`` (int8, zero points; :func:`sw.intops.residual_add`) and I-ViT's ``add_wide``
    (int16, symmetric, clamped to ``out_bits``; :func:`sw.intops.residual_add_wide`): the
    same int64 steps in one kernel."""
    p, a = op.params, op.attrs
    shape = graph.tensors[op.inputs[0]].shape
    if not shape:
        raise _Reference("shape")
    d = shape[-1]
    wide = op.kind == "add_wide"
    if wide:
        zp_a = zp_b = zp_out = 0
        clamp = _guaranteed_range(op)
        if clamp is None or clamp[0] < intops.INT16_MIN or clamp[1] > intops.INT16_MAX:
            raise _Reference("out_bits")
        in_types, in_lo, in_hi = (np.dtype(np.int8), np.dtype(np.int16)), intops.INT16_MIN, intops.INT16_MAX
    else:
        zp_a, zp_b, zp_out = _int(a["zp_a"], "zp_a"), _int(a["zp_b"], "zp_b"), _int(a["zp_out"], "zp_out")
        clamp = (intops.INT8_MIN, intops.INT8_MAX)
        in_types, in_lo, in_hi = (np.dtype(np.int8),), intops.INT8_MIN, intops.INT8_MAX
    lo, hi = clamp
    out_dtype = _storage_dtype(lo, hi)
    ma = _per_channel(p["mult_a"], d, intops.INT16_MIN, intops.INT16_MAX, "mult_a")
    mb = _per_channel(p["mult_b"], d, intops.INT16_MIN, intops.INT16_MAX, "mult_b")
    shift = _per_channel(p["shift"], d, 0, intops.REQUANT_MAX_SHIFT, "shift")
    half = _half(shift)
    const = None
    if len(op.inputs) == 1:
        cv = np.asarray(p["const"])
        if cv.dtype.kind not in "iu" or cv.shape not in (tuple(shape), (d,)) or \
                (cv.size and (int(cv.min()) < in_lo or int(cv.max()) > in_hi)):
            raise _Reference("const")
        const = np.ascontiguousarray(cv.astype(in_types[-1]).reshape(-1, d))

    def run(ctx, x, y=None):
        x = _require_any(x, in_types)
        if x.ndim < 1 or x.shape[-1] != d:
            raise _Reference("input shape")
        if const is None:
            y = _require_any(y, in_types)
            if y.shape != x.shape:
                raise _Reference("input shapes")
            other = y.reshape(-1, d)
        else:
            if tuple(x.shape[1:]) != tuple(shape):
                raise _Reference("input shape")
            other = const
        rows = x.reshape(-1, d)
        out = np.empty(rows.shape, out_dtype)
        _k().residual_add_rows(rows, other, zp_a, zp_b, ma, mb, half, shift, zp_out, lo, hi, out)
        return out.reshape(x.shape)

    return run


def _prep_gelu(graph: IntGraph, op: Op) -> Callable:
    """A 256-entry table of the int8 input: ``gelu`` and PTQ4ViT's ``twin_gelu`` (the graph's
    table), and I-ViT's ``shiftgelu``, a function of its int8 input alone whose table
    :func:`sw.intops.shiftgelu` computes here from the op's constants."""
    if op.kind == "shiftgelu":
        a, p = op.attrs, op.params
        for v in (p["mult"], p["shift"]):
            if np.asarray(v).size != 1:
                raise _Reference("per-channel ShiftGELU")
        try:
            table = intops.shiftgelu(np.arange(-128, 128), _int(a["x0"], "x0"), _int(a["n"], "n"),
                                     p["mult"], p["shift"], _int(a["zp_out"], "zp_out")).reshape(256)
        except intops.IntegerOverflowError:
            raise _Reference("ShiftGELU range") from None
    else:
        table = np.asarray(op.params["table"])
    if table.shape != (256,) or table.dtype.kind not in "iu" or \
            int(table.min()) < intops.INT8_MIN or int(table.max()) > intops.INT8_MAX:
        raise _Reference("table")
    table = table.astype(np.int8)

    def run(ctx, x):
        x = _require(x, np.int8)
        rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        out = np.empty(rows.shape, np.int8)
        _k().lookup_rows(rows, table, out)
        return out.reshape(x.shape)

    run.table = table
    return run


_PREPARE = {"linear": _prep_linear, "qk_scores": _prep_qk_scores, "softmax": _prep_softmax,
            "attn_value": _prep_attn_value, "layernorm": _prep_layernorm, "add": _prep_add,
            "gelu": _prep_gelu,
            "ilayernorm": _prep_ilayernorm, "add_wide": _prep_add, "shiftmax": _prep_shiftmax,
            "attn_value_wide": _prep_attn_value, "shiftgelu": _prep_gelu,
            "twin_softmax": _prep_twin_softmax, "attn_value_twin": _prep_attn_value,
            "twin_gelu": _prep_gelu, "linear_twin": _prep_linear_twin}

#: Op kinds that are a 256-entry table of an int8 input (fused into the linear layer before).
_TABLE_KINDS = ("gelu", "twin_gelu", "shiftgelu")


# ----------------------------------------------------------------------------------------
# The executor
# ----------------------------------------------------------------------------------------

class FastExecutor:
    """A graph prepared for fast execution; :meth:`run` takes and returns what
    :func:`sw.executor.execute` does, with the same integers.

    ``threads``: a batch is split into this many slices run side by side (default: the
    cores of this process); each slice runs single-threaded kernels and BLAS.
    ``fused_ops`` lists the ops that run a fast kernel; the others run the reference op.
    ``declined`` counts, per op, the calls in which a fast kernel handed its inputs to the
    reference op (a fault, or data outside what the kernel takes).
    """

    def __init__(self, graph: IntGraph, threads: int | None = None):
        self.graph = graph
        self.threads = max(1, int(threads)) if threads else default_threads()
        self._fast: dict[str, Callable] = {}
        for op in graph.ops:
            known = FAST_KINDS.get(op.kind)
            if known is None or not set(op.attrs) <= known[0] or not set(op.params) <= known[1]:
                continue
            try:
                self._fast[op.name] = _PREPARE[op.kind](graph, op)
            except (_Reference, KeyError, TypeError, ValueError, OverflowError):
                pass                          # the reference runs this op (and raises if it must)
        self.fused_ops = [op.name for op in graph.ops if op.name in self._fast]
        self.declined: Counter[str] = Counter()
        self._declined_lock = threading.Lock()
        self._last_use: dict[str, int] = {}
        self._consumers: dict[str, list[Op]] = {}
        for i, op in enumerate(graph.ops):
            for t in op.inputs:
                self._last_use[t] = i
                self._consumers.setdefault(t, []).append(op)
        # softmax outputs read only by an attention x V of the same mode: the softmax kernel
        # hands it the float32 weights directly
        self._weight_consumers = {
            t: _weight_tag(users[0]) for t, users in self._consumers.items()
            if len(users) == 1 and users[0].inputs[0] == t and _weight_tag(users[0]) is not None}

    # -------------------------------------------------------------------- one op
    def _finish(self, op: Op, out: np.ndarray) -> np.ndarray:
        """:func:`sw.executor.run_op`'s output check against the tensor's declared width."""
        lo, hi = self.graph.tensors[op.outputs[0]].range
        clamp = _guaranteed_range(op)
        if clamp is None or clamp[0] < lo or clamp[1] > hi:
            intops.check_range(out, lo, hi, f"{op.name} output")
        return out.astype(_storage_dtype(lo, hi), copy=False)

    def _run_op(self, ctx: _Context, op: Op, inputs) -> np.ndarray:
        fn = self._fast.get(op.name)
        if fn is not None:
            try:
                return self._finish(op, fn(ctx, *inputs))
            except _Reference:
                self._decline(op)
        return run_op(self.graph, op, *inputs)

    def _decline(self, op: Op) -> None:
        with self._declined_lock:
            self.declined[op.name] += 1

    # -------------------------------------------------------------------- the graph
    def run(self, inputs: np.ndarray | dict[str, np.ndarray], keep: bool = False):
        """Run the graph on integer inputs (batch on axis 0): the graph outputs as int64
        arrays, or every tensor with ``keep``, exactly as :func:`sw.executor.execute`."""
        graph = self.graph
        env = input_env(graph, inputs)
        sizes = {len(v) for v in env.values()}
        batch = sizes.pop() if len(sizes) == 1 else 0
        n = min(self.threads, batch)
        if n <= 1:
            out = self._run_env(env, keep)
        else:
            bounds = np.linspace(0, batch, n + 1).astype(int)
            parts = [{k: v[bounds[i]:bounds[i + 1]] for k, v in env.items()} for i in range(n)]
            try:
                with _single_threaded_blas(), ThreadPoolExecutor(n, thread_name_prefix="vitamin-fast") as pool:
                    results = list(pool.map(lambda part: self._run_env(part, keep), parts))
            except Exception:
                # Run the whole batch in one piece: the first op that fails then fails on
                # the same inputs as in the reference executor, with the reference's error.
                out = self._run_env(env, keep)
            else:
                out = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
        return {name: v.astype(np.int64) for name, v in out.items()}

    def _run_env(self, env: dict[str, np.ndarray], keep: bool) -> dict[str, np.ndarray]:
        graph, ops = self.graph, self.graph.ops
        env = dict(env)
        ctx = _Context(self._weight_consumers)
        i = 0
        while i < len(ops):
            op = ops[i]
            ins = [env[t] for t in op.inputs]
            nxt = ops[i + 1] if i + 1 < len(ops) else None
            if not keep and nxt is not None and self._fusable_gelu(op, nxt):
                out = self._linear_gelu(ctx, op, nxt, ins)
                if out is not None:
                    env[nxt.outputs[0]] = out
                    self._free(env, ctx, op, i, keep)
                    self._free(env, ctx, nxt, i + 1, keep)
                    i += 2
                    continue
            env[op.outputs[0]] = self._run_op(ctx, op, ins)
            self._free(env, ctx, op, i, keep)
            i += 1
        return env if keep else {name: env[name] for name in graph.outputs}

    def _free(self, env, ctx, op: Op, i: int, keep: bool) -> None:
        for t in op.inputs:
            if self._last_use[t] == i:
                ctx.drop(t)
                if not keep and t not in self.graph.outputs:
                    env.pop(t, None)

    # -------------------------------------------------------------------- linear + GELU
    def _fusable_gelu(self, op: Op, nxt: Op) -> bool:
        """A linear whose int8 output only feeds the next op, a GELU-like table."""
        out = op.outputs[0]
        return (op.kind == "linear" and nxt.kind in _TABLE_KINDS and nxt.inputs == [out]
                and len(self._consumers.get(out, ())) == 1 and out not in self.graph.outputs
                and getattr(self._fast.get(op.name), "gelu_ready", False)
                and hasattr(self._fast.get(nxt.name), "table")
                and _storage_dtype(*self.graph.tensors[out].range) == np.int8)

    def _linear_gelu(self, ctx, op: Op, nxt: Op, ins):
        """Requantization and the table lookup in one kernel; None when the reference runs."""
        try:
            q, t = self._fast[op.name](ctx, *ins, table=self._fast[nxt.name].table)
        except _Reference:
            self._decline(op)
            return None
        self._finish(op, q)                   # the linear output's width check
        return self._finish(nxt, t)


def execute_fast(graph: IntGraph, inputs: np.ndarray | dict[str, np.ndarray], keep: bool = False,
                 threads: int | None = None):
    """:func:`sw.executor.execute`'s result computed by a :class:`FastExecutor` prepared for
    this call (prepare one yourself to run many batches)."""
    return FastExecutor(graph, threads).run(inputs, keep)
