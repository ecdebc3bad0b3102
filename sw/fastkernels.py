"""Fused integer kernels of the fast executor (numba; compiled once, cached on disk).

Each kernel computes in one pass over its rows what a chain of :mod:`sw.intops` calls
computes in many whole-array numpy passes.  A kernel never raises: where an intops function
would raise :class:`~sw.intops.IntegerOverflowError` it counts the fault and returns the
count, and :mod:`sw.fastexec` then runs the reference op, which raises with the reference's
message.  Kernels are single-threaded and release the GIL; :mod:`sw.fastexec` runs slices
of a batch on several threads.

Two arithmetic forms are used, both exact:

* **int64**, the same operations in the same order as intops (LayerNorm, residual add, the
  softmax row statistics).
* **float64** for requantization: with ``|acc| < 2**31``, ``|mult| < 2**15`` and
  ``shift <= 52``, ``floor(acc * (mult * 2**-shift) + 1/2)`` involves only values whose
  significant bits fit in 53 (``acc * mult`` has at most 46; adding ``1/2`` spans at most
  ``max(47, shift + 1)`` bits), so every float operation is exact and the result equals
  ``(acc * mult + 2**(shift-1)) >> shift``.  The float form vectorizes (AVX2 has no 64-bit
  integer multiply or arithmetic variable shift).  The only float flags allowed are
  ``contract`` (a fused multiply-add rounds once, and the sum is exact anyway) and the
  no-NaN / no-infinity / no-signed-zero assumptions; never reassociation.

These kernels are the fast path only; :mod:`sw.intops` stays the definition.  They are
checked against it bit for bit in ``tests/sw/test_fastexec.py``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

# cache=True: the first compile (seconds per kernel) is stored next to this file, or under
# NUMBA_CACHE_DIR, and later processes load it.  error_model="numpy": no Python exception
# checks in integer divisions (every divisor is proven non-zero first).
_JIT = dict(cache=True, nogil=True, error_model="numpy")
_EXACT_FLOAT = {"nnan", "ninf", "nsz", "contract"}

#: Largest requantization shift of the float64 form (see the module docstring).
FLOAT_MAX_SHIFT = 52

_INT32_MIN_F = -2147483648.0
_INT32_MAX_F = 2147483647.0
_P39 = 2.0 ** 39
_P_40 = 2.0 ** -40


@njit(inline="always")
def _bit_length(v):
    """``int.bit_length`` of a non-negative int64."""
    n = 0
    if v >> 32:
        v >>= 32
        n += 32
    if v >> 16:
        v >>= 16
        n += 16
    if v >> 8:
        v >>= 8
        n += 8
    if v >> 4:
        v >>= 4
        n += 4
    if v >> 2:
        v >>= 2
        n += 2
    if v >> 1:
        v >>= 1
        n += 1
    return n + v


@njit(inline="always")
def _isqrt(v):
    """``floor(sqrt(v))`` of a non-negative int64 below ``2**50``: a float estimate, then an
    exact integer correction (the floor square root is unique, so it equals intops')."""
    k = np.int64(math.sqrt(np.float64(v)))
    while k * k > v:
        k -= 1
    while (k + 1) * (k + 1) <= v:
        k += 1
    return k


# ------------------------------------------------------------------------------ requantize
@njit(inline="always")
def _sum_chunks(acc, i, bias, buf):
    """``buf = sum_c acc[c, i] + bias`` in float64 (exact: integers below ``2**53``)."""
    n = buf.shape[0]
    for j in range(n):
        buf[j] = np.float64(acc[0, i, j]) + bias[j]
    for c in range(1, acc.shape[0]):
        for j in range(n):
            buf[j] += np.float64(acc[c, i, j])


@njit(fastmath=_EXACT_FLOAT, **_JIT)
def requantize_rows(acc, bias, scale, offset, lo, hi, out):
    """``out = clamp(floor((sum_c acc[c] + bias) * scale + 1/2) + offset, lo, hi)``.

    ``acc`` float32 ``[n_chunks, M, N]`` holding exact integers (partial products over
    chunks of the reduction axis), ``bias`` and ``scale = mult * 2**-shift`` float64 ``[N]``
    (``shift <= FLOAT_MAX_SHIFT``).  Returns the number of accumulators outside int32
    (:func:`sw.intops.requantize` raises for them).
    """
    nc, m, n = acc.shape
    buf = np.empty(n, np.float64)
    bad = 0
    for i in range(m):
        _sum_chunks(acc, i, bias, buf)
        row = 0
        for j in range(n):
            a = buf[j]
            row += (a < _INT32_MIN_F) | (a > _INT32_MAX_F)
            y = math.floor(a * scale[j] + 0.5) + offset
            out[i, j] = np.int32(min(max(y, lo), hi))   # in range: float64 -> int32 is exact
        bad += row
    return bad


@njit(fastmath=_EXACT_FLOAT, **_JIT)
def requantize_rows_lut(acc, bias, scale, offset, table, out_q, out_t):
    """:func:`requantize_rows` to int8, and the GELU table ``out_t = table[out_q + 128]``."""
    nc, m, n = acc.shape
    buf = np.empty(n, np.float64)
    bad = 0
    for i in range(m):
        _sum_chunks(acc, i, bias, buf)
        row = 0
        for j in range(n):
            a = buf[j]
            row += (a < _INT32_MIN_F) | (a > _INT32_MAX_F)
            out_q[i, j] = np.int32(min(max(math.floor(a * scale[j] + 0.5) + offset, -128.0), 127.0))
        for j in range(n):
            out_t[i, j] = table[np.int32(out_q[i, j]) + 128]
        bad += row
    return bad


@njit(fastmath=_EXACT_FLOAT, **_JIT)
def requantize_heads(acc, scale, offset, lo, hi, out):
    """Attention x V: ``acc`` float32 ``[B, H, T, dh]`` -> ``out`` ``[B, T, H dh]`` (heads
    concatenated in head order), requantized with one float64 ``scale``."""
    b, h, t, dh = acc.shape
    bad = 0
    for bi in range(b):
        for hh in range(h):
            for ti in range(t):
                row = 0
                for d in range(dh):
                    a = np.float64(acc[bi, hh, ti, d])
                    row += (a < _INT32_MIN_F) | (a > _INT32_MAX_F)
                    y = math.floor(a * scale + 0.5) + offset
                    out[bi, ti, hh * dh + d] = np.int32(min(max(y, lo), hi))
                bad += row
    return bad


# ------------------------------------------------------------------------------ softmax
@njit(inline="always")
def _lis_thresholds(total, thr):
    """``thr[k] = E_k = ((((total >> k) + 1) << 16) - 1) // 92682`` for ``k`` in 0..14, capped
    at ``2**31 - 1`` (every exponential is below ``2**31``): ``e <= E_k`` exactly when
    ``((e * 92682) >> 16) << k <= total``."""
    for k in range(15):
        t = ((((total >> k) + 1) << 16) - 1) // 92682
        thr[k] = min(t, np.int64(2147483647))


@njit(inline="always")
def _lis_code(e, thr):
    """:func:`sw.intops.lis_codes` of one exponential: the number of thresholds ``e`` is at
    most (15 for ``e = 0``, whose ``es`` is 0)."""
    code = np.int32(0)
    for k in range(15):
        code += e <= thr[k]
    return code


@njit(**_JIT)
def lis_codes_rows(e, total, out):
    """:func:`sw.intops.lis_codes` of int32 exponentials ``e`` ``[R, N]`` and int64 row sums
    ``total`` ``[R]`` (the softmax kernel's code step on its own, for tests)."""
    thr = np.empty(15, np.int32)
    for i in range(e.shape[0]):
        _lis_thresholds(total[i], thr)
        for j in range(e.shape[1]):
            out[i, j] = _lis_code(e[i, j], thr)
    return 0


@njit(fastmath=_EXACT_FLOAT, **_JIT)
def softmax_rows(x, frac_bits, b_int, c_int, lis, out, weights):
    """Integer softmax of int16 rows ``x`` ``[R, N]`` into ``out`` uint8 ``[R, N]``.

    :func:`sw.intops.softmax_exp_rows` (row max, :func:`~sw.intops.int_exp` in int32, row
    sum in int64), then :func:`~sw.intops.lis_codes` (``lis``) or the uniform 8-bit
    probabilities.  The caller proves that no int32 step of the exponential wraps (small
    ``frac_bits``, ``b_int``, ``c_int``), so int32 here equals intops' int32.

    LIS codes without a divide or a leading-one detector per element: with
    ``es = (e * 92682) >> 16``, intops' code is the number of ``k`` in ``0..14`` with
    ``es << k <= total``, i.e. with ``es <= total >> k``, i.e. with ``e <= E_k`` where
    ``E_k = ((((total >> k) + 1) << 16) - 1) // 92682`` (one threshold per row and ``k``).

    When ``weights`` has ``R`` rows it also receives the attention weights as float32 for
    the attention x V product: ``2**(15 - code)`` for codes below 15, else 0, or the
    probabilities.  Returns ``(faults, largest row sum of the weights)``; a fault is an
    exponential polynomial outside 16 bits or a row sum outside ``[1, 2**43 - 1]``.
    """
    r_, n = x.shape
    want_w = weights.shape[0] == r_
    bad = 0
    wmax = np.int64(0)
    lo = np.int32(-(15 << frac_bits))
    fb = np.int32(frac_bits)
    b32 = np.int32(b_int)
    c32 = np.int32(c_int)
    e = np.empty(n, np.int32)
    thr = np.empty(15, np.int32)
    for i in range(r_):
        m = np.int32(x[i, 0])
        for j in range(1, n):
            m = max(m, np.int32(x[i, j]))
        total = np.int64(0)
        faults = 0
        for j in range(n):
            d = max(np.int32(np.int32(x[i, j]) - m), lo)
            q = np.int32((-d) >> fb)
            r = np.int32(d + (q << fb))
            poly = np.int32(np.int32(r + b32) * r + c32)
            faults += (poly < 0) | (poly > 65535)
            ej = np.int32(poly << (np.int32(15) - q))
            e[j] = ej
            total += ej
        if faults or total < 1 or total > (np.int64(1) << 43) - 1:
            bad += 1
            continue
        wsum = np.int64(0)
        if lis:
            _lis_thresholds(total, thr)
            for j in range(n):
                out[i, j] = _lis_code(e[j], thr)
            if want_w:
                for j in range(n):
                    code = np.int32(out[i, j])
                    w = np.int32(1) << (np.int32(15) - code) if code < 15 else np.int32(0)
                    weights[i, j] = np.float32(w)
                    wsum += w
        else:
            inv = np.float64((np.int64(1) << 48) // total)
            for j in range(n):
                # (e inv + 2**39) >> 40 with e inv <= 2**48: exact in float64
                out[i, j] = np.int32(min(math.floor((np.float64(e[j]) * inv + _P39) * _P_40), 255.0))
            if want_w:
                for j in range(n):
                    p = np.int32(out[i, j])
                    weights[i, j] = np.float32(p)
                    wsum += p
        wmax = max(wmax, wsum)
    return bad, wmax


@njit(**_JIT)
def attention_weights(codes, lis, out):
    """Attention weights as float32 for the exact float product with V: ``2**(15 - code)``
    for LIS codes below 15, else 0 (:func:`sw.intops.attn_value_lis`), or the uniform
    probabilities.  Returns ``(number of LIS codes above 15, largest row sum)``."""
    r_, n = codes.shape
    bad = 0
    wmax = np.int64(0)
    for i in range(r_):
        s = np.int64(0)
        for j in range(n):
            c = np.int64(codes[i, j])
            if lis:
                bad += c > 15
                w = (np.int64(1) << (15 - c)) if c < 15 else np.int64(0)
            else:
                w = c
            s += w
            out[i, j] = np.float32(w)
        wmax = max(wmax, s)
    return bad, wmax


# ------------------------------------------------------------------------------ LayerNorm
@njit(**_JIT)
def layernorm_rows(x, zp_in, alpha, mult, rshift, offset, out):
    """:func:`sw.intops.ptf_layernorm` of int8 rows ``x`` ``[R, C]`` into int8 ``out``, in
    int64 as intops computes it.

    ``alpha``, ``mult``, ``offset`` int64 ``[C]``; ``rshift = shift - LN_OFFSET_FRAC``.
    Returns the number of rows where intops would raise (shifted input outside 12 bits,
    variance outside 47 bits, centred value outside 25 bits, normalised value outside 21).
    """
    r_, c = x.shape
    bad = 0
    top = (np.int64(1) << 34) - 1                  # 2**(LN_FACTOR_BITS + LN_ROOT_BITS) - 1
    for i in range(r_):
        s = np.int64(0)
        ss = np.int64(0)
        faults = 0
        for k in range(c):
            xs = (np.int64(x[i, k]) - zp_in) << alpha[k]
            faults += (xs < -2048) | (xs > 2047)
            s += xs
            ss += xs * xs
        v = c * ss - s * s
        if faults or v < 0 or v > (np.int64(1) << 47) - 1:
            bad += 1
            continue
        if v > 0:
            e = (36 - _bit_length(v)) >> 1             # floor((2 LN_ROOT_BITS - bit_length) / 2)
            vn = v << (2 * e) if e >= 0 else v >> (-2 * e)
            factor = top // max(_isqrt(vn), np.int64(1))
            r = 20 - e                                   # LN_FACTOR_BITS + LN_ROOT_BITS - LN_NORM_BITS - e
        else:
            factor = np.int64(0)
            r = 1
        rhalf = np.int64(1) << (r - 1)
        for k in range(c):
            d = c * ((np.int64(x[i, k]) - zp_in) << alpha[k]) - s
            nv = (d * factor + rhalf) >> r
            faults += (d < -(1 << 24)) | (d > (1 << 24) - 1) | (nv < -(1 << 20)) | (nv > (1 << 20) - 1)
            y = (((nv * mult[k]) >> rshift[k]) + offset[k] + 32768) >> 16
            out[i, k] = min(max(y, -128), 127)
        bad += faults > 0
    return bad


# ------------------------------------------------------------------------------ residual add
@njit(**_JIT)
def residual_add_rows(a, b, zp_a, zp_b, mult_a, mult_b, half, shift, zp_out, out):
    """:func:`sw.intops.residual_add` of int8 rows ``a`` ``[R, D]`` and ``b`` ``[Rb, D]``
    (row ``i`` of ``a`` pairs with row ``i % Rb`` of ``b``: a constant broadcast over the
    batch), with per-channel int64 ``mult_a``, ``mult_b``, ``half``, ``shift``."""
    r_, d = a.shape
    rb = b.shape[0]
    for i in range(r_):
        ib = i % rb
        for k in range(d):
            t = (np.int64(a[i, k]) - zp_a) * mult_a[k] + (np.int64(b[ib, k]) - zp_b) * mult_b[k]
            y = ((t + half[k]) >> shift[k]) + zp_out
            out[i, k] = min(max(y, -128), 127)
    return 0


# ------------------------------------------------------------------------------ GELU, layout
@njit(**_JIT)
def lookup_rows(x, table, out):
    """``out = table[x + 128]`` for int8 rows ``x`` ``[R, N]``."""
    r_, n = x.shape
    for i in range(r_):
        for j in range(n):
            out[i, j] = table[np.int64(x[i, j]) + 128]
    return 0


@njit(**_JIT)
def split_heads_f32(qkv, heads, head_dim, out):
    """int8 ``[B, T, 3 D]`` (q | k | v, each head-major) -> float32 ``[3, B, H, T, dh]``."""
    b, t, _ = qkv.shape
    for bi in range(b):
        for ti in range(t):
            for s in range(3):
                for h in range(heads):
                    base = (s * heads + h) * head_dim
                    for d in range(head_dim):
                        out[s, bi, h, ti, d] = np.float32(qkv[bi, ti, base + d])
    return 0
