"""Fused integer kernels of the fast executor (numba; compiled once, cached on disk).

Each kernel computes in one pass over its rows what a chain of :mod:`sw.intops` calls
computes in many whole-array numpy passes.  A kernel never raises: where an intops function
would raise :class:`~sw.intops.IntegerOverflowError` it counts the fault and returns the
count, and :mod:`sw.fastexec` then runs the reference op, which raises with the reference's
message.  Kernels are single-threaded and release the GIL; :mod:`sw.fastexec` runs slices
of a batch on several threads.

Two arithmetic forms are used, both exact:

* **int64**, the same operations in the same order as intops (LayerNorm, residual add, the
  softmax row statistics; I-ViT's Shiftmax and I-LayerNorm, PTQ4ViT's twin softmax codes).
* **float64** for requantization: with ``|acc| < 2**31``, ``|mult| < 2**15`` and
  ``shift <= 52``, ``floor(acc * (mult * 2**-shift) + 1/2)`` involves only values whose
  significant bits fit in 53 (``acc * mult`` has at most 46; adding ``1/2`` spans at most
  ``max(47, shift + 1)`` bits), so every float operation is exact and the result equals
  ``(acc * mult + 2**(shift-1)) >> shift``.  The float form vectorizes (AVX2 has no 64-bit
  integer multiply or arithmetic variable shift).  The only float flags allowed are
  ``contract`` (a fused multiply-add rounds once, and the sum is exact anyway) and the
  no-NaN / no-infinity / no-signed-zero assumptions; never reassociation.  The twin
  products combine two int32 accumulators as ``hi * 2**m + lo (+ bias)`` in float64, exact
  below ``2**53`` (``m <= 20``), and check each part and the sum against int32 as intops does.

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


@njit(inline="always")
def _exp_row(x, i, lo, fb, b32, c32, e):
    """:func:`sw.intops.softmax_exp_rows` of row ``i`` of ``x`` into int32 ``e``: returns the
    row sum, or -1 where intops would raise (a polynomial outside 16 bits, a row sum outside
    ``[1, 2**43 - 1]``).  ``lo = -(15 << frac_bits)``; the int32 steps cannot wrap (the
    caller bounds the constants)."""
    n = x.shape[1]
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
        return np.int64(-1)
    return total


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
        total = _exp_row(x, i, lo, fb, b32, c32, e)
        if total < 0:
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
def attention_weights(codes, lis, limit, out):
    """Attention weights as float32 for the exact float product with V: ``2**(15 - code)``
    for LIS codes below 15, else 0 (:func:`sw.intops.attn_value_lis`), or the probabilities
    themselves (uniform, Shiftmax).  Returns ``(number of codes outside [0, limit], largest
    row sum)``: ``limit`` is 15 for LIS codes, else the probabilities' largest value."""
    r_, n = codes.shape
    bad = 0
    wmax = np.int64(0)
    for i in range(r_):
        s = np.int64(0)
        for j in range(n):
            c = np.int64(codes[i, j])
            bad += (c < 0) | (c > limit)
            if lis:
                w = (np.int64(1) << (15 - c)) if 0 <= c < 15 else np.int64(0)
            else:
                w = c
            s += w
            out[i, j] = np.float32(w)
        wmax = max(wmax, s)
    return bad, wmax


# ------------------------------------------------------------------------------ LayerNorm
@njit(**_JIT)
def layernorm_rows(x, zp_in, alpha, mult, rshift, offset, lo, hi, out):
    """:func:`sw.intops.ptf_layernorm` of int8 rows ``x`` ``[R, C]`` into int8 ``out``, in
    int64 as intops computes it, clamped to ``[lo, hi]`` (a layernorm's ``out_bits``).

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
            out[i, k] = min(max(y, lo), hi)
        bad += faults > 0
    return bad


# ------------------------------------------------------------------------------ residual add
@njit(**_JIT)
def residual_add_rows(a, b, zp_a, zp_b, mult_a, mult_b, half, shift, zp_out, lo, hi, out):
    """:func:`sw.intops.residual_add` of int8 rows ``a`` ``[R, D]`` and ``b`` ``[Rb, D]``
    (row ``i`` of ``a`` pairs with row ``i % Rb`` of ``b``: a constant broadcast over the
    batch), with per-channel int64 ``mult_a``, ``mult_b``, ``half``, ``shift``, clamped to
    ``[lo, hi]``.  With zero points 0, int16 rows and the int16 clamp it is
    :func:`sw.intops.residual_add_wide` (I-ViT's 16-bit stream): the same int64 steps."""
    r_, d = a.shape
    rb = b.shape[0]
    for i in range(r_):
        ib = i % rb
        for k in range(d):
            t = (np.int64(a[i, k]) - zp_a) * mult_a[k] + (np.int64(b[ib, k]) - zp_b) * mult_b[k]
            y = ((t + half[k]) >> shift[k]) + zp_out
            out[i, k] = min(max(y, lo), hi)
    return 0


# ------------------------------------------------------------------------------ I-ViT
@njit(inline="always")
def _shift_exp(x, x0, n):
    """:func:`sw.intops.shift_exp` of one int64 ``x <= 0`` (``x0 < 0``, ``0 <= n <= 30``):
    the same int64 steps (``q = floor(x' / x0)`` is in ``0..n``)."""
    xp = max(x + (x >> 1) - (x >> 4), n * x0)
    q = xp // x0
    r = xp - q * x0 - 2 * x0
    return (r << (n - q)) >> 1


@njit(**_JIT)
def shiftmax_rows(x, x0, n, out_bits, out, weights):
    """:func:`sw.intops.shiftmax` of int16 rows ``x`` ``[R, N]`` into ``out`` (int64 steps
    as intops).  When ``weights`` has ``R`` rows it also receives the probabilities as
    float32 for the attention x V product.  Returns ``(rows where intops would raise: a row
    sum outside [1, 2**31 - 1], largest row sum of the probabilities)``."""
    r_, c = x.shape
    want_w = weights.shape[0] == r_
    e = np.empty(c, np.int64)
    rs = 32 - out_bits
    bad = 0
    wmax = np.int64(0)
    for i in range(r_):
        m = np.int64(x[i, 0])
        for j in range(1, c):
            m = max(m, np.int64(x[i, j]))
        total = np.int64(0)
        for j in range(c):
            ej = _shift_exp(np.int64(x[i, j]) - m, x0, n)
            e[j] = ej
            total += ej
        if total < 1 or total > 2147483647:
            bad += 1
            continue
        factor = np.int64(2147483647) // total
        wsum = np.int64(0)
        for j in range(c):
            p = (e[j] * factor) >> rs
            out[i, j] = p
            wsum += p
        if want_w:
            for j in range(c):
                weights[i, j] = np.float32(out[i, j])
        wmax = max(wmax, wsum)
    return bad, wmax


@njit(**_JIT)
def ilayernorm_rows(x, mult, rshift, offset, steps, start, out):
    """:func:`sw.intops.ilayernorm` of int16 rows ``x`` ``[R, C]`` into int8 ``out``: the
    rounded integer mean, the sum of squares, ``steps`` Newton steps of the integer root from
    ``start``, one divide per row, and :func:`~sw.intops.ln_affine` (``rshift = shift -
    LN_OFFSET_FRAC``), in int64 as intops.  Returns the number of rows where intops would
    raise (sum of squares outside ``[0, 2**62 - 1]``, normalised value outside 32 bits)."""
    r_, c = x.shape
    bad = 0
    for i in range(r_):
        s = np.int64(0)
        for k in range(c):
            s += np.int64(x[i, k])
        mu = (2 * s + c) // (2 * c)
        v = np.int64(0)
        for k in range(c):
            y = np.int64(x[i, k]) - mu
            v += y * y
        if v < 0 or v > (np.int64(1) << 62) - 1:
            bad += 1
            continue
        root = np.int64(start)
        for _ in range(steps):
            root = (root + v // root) >> 1
        factor = np.int64(2147483647) // root
        faults = 0
        for k in range(c):
            nv = ((np.int64(x[i, k]) - mu) * factor) >> 1
            faults += (nv < -2147483648) | (nv > 2147483647)
            yk = (((nv * mult[k]) >> rshift[k]) + offset[k] + 32768) >> 16
            out[i, k] = min(max(yk, -128), 127)
        bad += faults > 0
    return bad


# ------------------------------------------------------------------------------ PTQ4ViT
@njit(**_JIT)
def twin_softmax_rows(x, frac_bits, b_int, c_int, m, bits, out, weights):
    """:func:`sw.intops.twin_softmax` of int16 rows ``x`` ``[R, N]`` into uint8 twin codes.

    The exponential and row sum are the softmax kernel's; then per row ``k = bit_length(S) -
    TWIN_RECIP_BITS`` (24), ``tm`` the row sum normalised to 24 bits, ``inv = 2**47 // tm``,
    and per element intops' two roundings and the range flag ``(e << m) >= S``, in int64.
    A row whose rounding shift ``47 + k`` exceeds 62 (row sums from ``2**39``; numpy's
    shifts past 63 bits are not C's) counts as a fault, so the reference computes it.
    When ``weights`` has ``R`` rows it receives the decoded codes (``mag << m`` or ``mag``)
    as float32.  Returns ``(faults, largest row sum of the decoded codes)``.
    """
    r_, n = x.shape
    want_w = weights.shape[0] == r_
    levels = (np.int64(1) << (bits - 1)) - 1
    flag = np.int64(1) << (bits - 1)
    bad = 0
    wmax = np.int64(0)
    lo = np.int32(-(15 << frac_bits))
    fb = np.int32(frac_bits)
    b32 = np.int32(b_int)
    c32 = np.int32(c_int)
    e = np.empty(n, np.int32)
    for i in range(r_):
        total = _exp_row(x, i, lo, fb, b32, c32, e)
        if total < 0:
            bad += 1
            continue
        k = _bit_length(total) - 24
        sh_hi = 47 + k
        if sh_hi > 62:
            bad += 1
            continue
        tm = total >> k if k >= 0 else total << (-k)
        inv = (np.int64(1) << 47) // tm
        li = levels * inv
        sh_lo = sh_hi - m
        half_hi = np.int64(1) << (sh_hi - 1)
        half_lo = np.int64(1) << (sh_lo - 1)
        wsum = np.int64(0)
        for j in range(n):
            ej = np.int64(e[j])
            num = ej * li
            if (ej << m) >= total:
                mag = min((num + half_hi) >> sh_hi, levels)
                out[i, j] = flag + mag
                wsum += mag << m
            else:
                mag = min((num + half_lo) >> sh_lo, levels)
                out[i, j] = mag
                wsum += mag
        if want_w:
            for j in range(n):
                c = np.int64(out[i, j])
                mag = c & levels
                weights[i, j] = np.float32(mag << m if c >= flag else mag)
        wmax = max(wmax, wsum)
    return bad, wmax


@njit(**_JIT)
def twin_weights(codes, m, bits, hi_out, lo_out):
    """Twin softmax codes ``[R, N]`` as float32 attention weights: the combined ``mag << m``
    / ``mag`` into ``hi_out`` when ``lo_out`` is empty, else the two ranges' magnitudes
    separately (:func:`sw.intops.attn_value_twin`'s two products).  Returns ``(codes above
    2**bits - 1, largest row sum of the combined weights)``."""
    r_, n = codes.shape
    split = lo_out.shape[0] == r_
    levels = (np.int64(1) << (bits - 1)) - 1
    top = (np.int64(1) << bits) - 1
    bad = 0
    wmax = np.int64(0)
    for i in range(r_):
        s = np.int64(0)
        for j in range(n):
            c = np.int64(codes[i, j])
            bad += (c < 0) | (c > top)
            mag = c & levels
            high = (c >> (bits - 1)) == 1
            s += mag << m if high else mag
            if split:
                hi_out[i, j] = np.float32(mag if high else 0)
                lo_out[i, j] = np.float32(0 if high else mag)
            else:
                hi_out[i, j] = np.float32(mag << m if high else mag)
        wmax = max(wmax, s)
    return bad, wmax


@njit(fastmath=_EXACT_FLOAT, **_JIT)
def requantize_heads_twin(acc_hi, acc_lo, scale_m, scale, offset, lo, hi, out):
    """Twin attention x V from its two exact float32 products ``[B, H, T, dh]``: each checked
    against int32, ``acc = acc_hi * 2**m + acc_lo`` (``scale_m = 2**m``, exact in float64)
    checked against int32, requantized as :func:`requantize_heads` into ``[B, T, H dh]``."""
    b, h, t, dh = acc_hi.shape
    bad = 0
    for bi in range(b):
        for hh in range(h):
            for ti in range(t):
                row = 0
                for d in range(dh):
                    ah = np.float64(acc_hi[bi, hh, ti, d])
                    al = np.float64(acc_lo[bi, hh, ti, d])
                    a = ah * scale_m + al
                    row += (ah < _INT32_MIN_F) | (ah > _INT32_MAX_F) | (al < _INT32_MIN_F) | \
                        (al > _INT32_MAX_F) | (a < _INT32_MIN_F) | (a > _INT32_MAX_F)
                    y = math.floor(a * scale + 0.5) + offset
                    out[bi, ti, hh * dh + d] = np.int32(min(max(y, lo), hi))
                bad += row
    return bad


@njit(fastmath=_EXACT_FLOAT, **_JIT)
def requantize_rows_twin(acc_pos, acc_neg, bias, scale_m, scale, offset, lo, hi, out):
    """:func:`sw.intops.linear_twin` and the requantization after it, from the exact float32
    chunk products of the positive and the negative codes (``[n_chunks, M, N]`` each): both
    sums checked against int32, ``acc = pos * 2**m + neg + bias`` (exact in float64: below
    ``2**53``) checked against int32, then :func:`requantize_rows`' float form.  Returns the
    number of accumulators where intops would raise."""
    nc, m_, n = acc_pos.shape
    pos = np.empty(n, np.float64)
    neg = np.empty(n, np.float64)
    zero = np.zeros(n, np.float64)
    bad = 0
    for i in range(m_):
        _sum_chunks(acc_pos, i, zero, pos)
        _sum_chunks(acc_neg, i, zero, neg)
        row = 0
        for j in range(n):
            a = pos[j] * scale_m + neg[j] + bias[j]
            row += (pos[j] < _INT32_MIN_F) | (pos[j] > _INT32_MAX_F) | (neg[j] < _INT32_MIN_F) | \
                (neg[j] > _INT32_MAX_F) | (a < _INT32_MIN_F) | (a > _INT32_MAX_F)
            y = math.floor(a * scale[j] + 0.5) + offset
            out[i, j] = np.int32(min(max(y, lo), hi))
        bad += row
    return bad


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
