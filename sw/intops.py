"""The integer arithmetic of every op: the golden model of the whole project.

Each function here is the single definition of one op's arithmetic.  The integer
reference executor (:mod:`sw.executor`) calls them, the cycle-level model calls them, and
the hardware tests compare the RTL against them.  They take and return numpy integer
arrays (``int64`` internally) and never use floating point, with one documented
exception: matrix products of small integers are carried through a float64 BLAS product,
which is exact while every partial sum stays below 2**53 (checked, see :func:`int_matmul`).

Every intermediate has a stated width that hardware implements; a value outside it raises
:class:`IntegerOverflowError` instead of wrapping.

Widths (C = channels, up to 4096; N = softmax row length, up to 4096)

=====================  ============================================  ==================
op                     intermediate                                  width
=====================  ============================================  ==================
linear / matmul        int8 x int8 products, int32 accumulator        32 (checked)
requantize             acc (int32) x mult (int16) -> 47-bit product   48
residual add           (q - zp) (9 b) x mult (int16), sum of two      26
PTF LayerNorm          shifted input xs = (x - zp) << alpha           12 signed
                       row sum S                                      24 signed
                       sum of squares, and V = C sum xs**2 - S**2     35, 47 unsigned
                       normalised radicand, root k = isqrt(Vn)        36, 18 unsigned
                       row factor F = (2**34 - 1) // k                17 unsigned
                       centred D = C xs - S, and D * F                25, 42 signed
                       normalised n = (D F + half) >> r               21 signed
                       n * mult (16-bit), offset K (16 frac. bits)    37, 32 signed
LIS softmax            input (requantized scores)                     16 signed
                       x - rowmax                                     17 signed
                       exp polynomial                                 16 unsigned
                       exp (poly << (n - q)), n = 15                  31 unsigned
                       row sum of exp                                 43 unsigned
attention x V (LIS)    V << (15 - code), accumulated                  32 (checked)
GELU                   256-entry table lookup                         8
---------------------  --------------------------------------------  ------------------
*I-ViT ops*
shift exponential      x' = x + (x >> 1) - (x >> 4), x <= 0           18 signed
                       e = ((r - 2 x0) << (n - q)) >> 1               n + bits(-x0) + 1
Shiftmax               input (scores), x - rowmax                     16, 17 signed
                       row sum of e (checked, one divide per row)     31 unsigned
                       factor = (2**31 - 1) // sum, e * factor        31, 31 unsigned
                       output p = (e * factor) >> (32 - out_bits)     out_bits - 1 (15)
ShiftGELU              int8 input, e(x - m) + e(-m), m = max(x, 0)    31 unsigned
                       sigmoid = (e * factor) >> 24                   7 unsigned
                       x * sigmoid, requantized                       15 signed, 8
I-LayerNorm            int16 input, row sum S                         16, 28 signed
                       y = x - round(S / C), sum of y**2 = V          17 signed, 44 unsigned
                       Newton root k (10 steps from 2**16), V // k    28, 38 unsigned
                       factor = (2**31 - 1) // k, n = (y factor) >> 1 25 unsigned, 32 signed
                       n * mult (16-bit), offset (16 frac. bits)      47, 32 signed
wide residual add      int16 x int16 multiplier, sum of two           32, 33 signed
attention x V (I-ViT)  uint16 probabilities x int8, accumulated       32 (checked)
---------------------  --------------------------------------------  ------------------
*PTQ4ViT ops* (k = code bits, L = 2**(k-1) - 1)
twin softmax           exp and row sum as LIS softmax                 31, 43 unsigned
                       row sum normalised to 24 bits, 2**47 // it     24, 24 unsigned
                       e * L * reciprocal                             62 unsigned
                       code: range flag (MSB) + magnitude             k unsigned
attention x V (twin)   two accumulators (per range), hi << m + lo     32 each (checked)
twin linear (fc2)      two accumulators (per sign), pos << m + neg    32 each (checked)
=====================  ============================================  ==================
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "IntegerOverflowError", "INT8_MIN", "INT8_MAX", "INT16_MIN", "INT16_MAX",
    "REQUANT_MULT_BITS", "REQUANT_MAX_SHIFT", "LN_ROOT_BITS", "LN_FACTOR_BITS",
    "LN_NORM_BITS", "LN_OFFSET_FRAC", "LN_MAX_CHANNELS", "LIS_EXP_N", "LIS_CODE_BITS", "LIS_ZERO_CODE",
    "LIS_SHIFT_BASE", "LIS_SQRT2_Q16", "UNIFORM_RECIP_BITS", "check_range", "dyadic",
    "requantize", "int_matmul", "linear", "residual_add", "isqrt", "bit_length",
    "ptf_layernorm", "ln_row_stats", "ln_normalize", "ln_affine", "ln_params", "lis_exp_constants",
    "int_exp", "lis_codes", "softmax_exp_rows", "lis_softmax", "uniform_softmax",
    "attn_value_lis", "attn_value_uniform", "gelu_lut", "patchify", "token_mean",
    # Swin
    "window_partition", "window_reverse", "patch_merge", "score_bias",
    # I-ViT
    "IVIT_DIVIDEND", "IVIT_SOFTMAX_N", "IVIT_GELU_N", "IVIT_SOFTMAX_BITS", "IVIT_SIGMOID_BITS",
    "ILN_SQRT_START", "ILN_SQRT_STEPS", "shift_exp", "shiftmax", "shift_sigmoid", "shiftgelu_n", "shiftgelu",
    "newton_isqrt", "ilayernorm", "ilayernorm_params", "residual_add_wide", "attn_value_wide",
    # PTQ4ViT
    "TWIN_RECIP_BITS", "twin_levels", "twin_softmax", "twin_decode_softmax", "attn_value_twin",
    "linear_twin",
]

INT8_MIN, INT8_MAX = -128, 127
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

#: Requantizer multipliers are signed 16-bit: ``|mult| < 2**15``.
REQUANT_MULT_BITS = 16
#: Largest right shift a requantizer applies (6-bit shift field).
REQUANT_MAX_SHIFT = 63

#: LayerNorm square root: the radicand ``V`` is shifted by an even amount to ``2 LN_ROOT_BITS``
#: (or one fewer) bits, so the root ``k`` always has ``LN_ROOT_BITS`` significant bits.
LN_ROOT_BITS = 18
#: LayerNorm row factor ``F = (2**(LN_FACTOR_BITS + LN_ROOT_BITS) - 1) // k`` lies in
#: ``[2**LN_FACTOR_BITS, 2**(LN_FACTOR_BITS + 1))``.
LN_FACTOR_BITS = 16
#: Fraction bits of the normalised value: ``n / 2**LN_NORM_BITS`` approximates ``(x - mean) / sd``.
LN_NORM_BITS = 14
#: Fraction bits of the LayerNorm offset ``K = round((beta / s_out + zp_out) * 2**LN_OFFSET_FRAC)``:
#: beta is added before the one final rounding, not rounded on its own.
LN_OFFSET_FRAC = 16
#: Most channels a LayerNorm row may have (the row sum is 24-bit signed).
LN_MAX_CHANNELS = 4096

#: Integer exponential output is ``poly * 2**(LIS_EXP_N - q)``; inputs below ``-LIS_EXP_N * ln 2`` clip.
LIS_EXP_N = 15
#: LIS attention codes are 4-bit; the largest code means "zero attention".
LIS_CODE_BITS = 4
LIS_ZERO_CODE = (1 << LIS_CODE_BITS) - 1
#: Attention x V shifts ``V << (LIS_SHIFT_BASE - code)``; the result carries scale ``2**-LIS_SHIFT_BASE``.
LIS_SHIFT_BASE = LIS_ZERO_CODE
#: ``round(sqrt(2) * 2**16)``: the rounding threshold between two log2 codes.
LIS_SQRT2_Q16 = 92682
#: 8-bit uniform softmax: one reciprocal per row, ``inv = 2**UNIFORM_RECIP_BITS // sum``.
UNIFORM_RECIP_BITS = 48

#: Polynomial ``exp(t) ~ A t**2 + B t + 1`` on ``[-ln 2, 0]`` (FQ-ViT / I-BERT constants).
_EXP_A = 0.35815147
_EXP_B = 0.96963238


class IntegerOverflowError(ArithmeticError):
    """An intermediate left the width that hardware implements for it."""


def check_range(x, lo: int, hi: int, what: str) -> np.ndarray:
    """Return ``x`` unchanged after checking that every element lies in ``[lo, hi]``."""
    x = np.asarray(x)
    if x.dtype.kind in "iu" and np.iinfo(x.dtype).min >= lo and np.iinfo(x.dtype).max <= hi:
        return x                              # the dtype alone proves the range
    if x.size:
        xmin, xmax = int(x.min()), int(x.max())
        if xmin < lo or xmax > hi:
            raise IntegerOverflowError(
                f"{what}: value range [{xmin}, {xmax}] exceeds [{lo}, {hi}]")
    return x


def _signed_bits(x, bits: int, what: str) -> np.ndarray:
    return check_range(x, -(1 << (bits - 1)), (1 << (bits - 1)) - 1, what)


def _as_int(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iub":
        raise TypeError(f"integer array expected, got dtype {x.dtype}")
    return x.astype(np.int64, copy=False)


# ----------------------------------------------------------------------------------------
# Requantization (build time: float ratio -> dyadic; run time: integers only)
# ----------------------------------------------------------------------------------------

def dyadic(ratio, mult_bits: int = REQUANT_MULT_BITS):
    """Approximate real ``ratio`` (scalar or array, any sign) by ``mult / 2**shift``.

    Build-time helper (float in, integers out).  ``|mult| < 2**(mult_bits-1)`` and
    ``0 <= shift <= REQUANT_MAX_SHIFT``; the magnitude keeps ``mult_bits - 1`` significant
    bits whenever the shift range allows.  Raises ``ValueError`` for a ratio too large to
    express (``>= 2**(mult_bits-1)``) or not finite.
    """
    r = np.asarray(ratio, dtype=np.float64)
    if not np.all(np.isfinite(r)):
        raise ValueError("requantization ratio is not finite")
    frac_bits = mult_bits - 1
    mant, exp = np.frexp(np.abs(r))            # |r| = mant * 2**exp, mant in [0.5, 1)
    shift = frac_bits - exp
    mult = np.atleast_1d(np.rint(mant * (1 << frac_bits)).astype(np.int64))
    shift = np.atleast_1d(shift)
    carry = mult == (1 << frac_bits)
    mult = np.where(carry, mult >> 1, mult)
    shift = np.where(carry, shift - 1, shift)
    if np.any((shift < 0) & (mult != 0)):
        raise ValueError(f"requantization ratio {float(np.max(np.abs(r)))} too large "
                         f"for a {mult_bits}-bit multiplier")
    too_small = shift > REQUANT_MAX_SHIFT
    if np.any(too_small):
        mult[too_small] = np.rint(np.abs(r[too_small]) * 2.0 ** REQUANT_MAX_SHIFT)
        shift = np.where(too_small, REQUANT_MAX_SHIFT, shift)
    zero = mult == 0
    shift = np.where(zero, 0, shift)
    mult = np.where(np.atleast_1d(r) < 0, -mult, mult)
    return mult.reshape(r.shape).astype(np.int64), shift.reshape(r.shape).astype(np.int64)


def _rounding_half(shift) -> np.ndarray:
    """``2**(shift-1)`` for ``shift > 0``, else 0 (computed without overflow at shift 63)."""
    return np.where(shift > 0, np.int64(1) << np.maximum(shift - 1, 0), np.int64(0))


def requantize(acc, mult, shift, offset=0, lo: int = INT8_MIN, hi: int = INT8_MAX):
    """``clamp(((acc * mult + 2**(shift-1)) >> shift) + offset, lo, hi)``.

    ``acc`` is an int32 accumulator; ``mult`` (int16), ``shift`` (0..63) and ``offset``
    broadcast against it (per tensor or per output channel on the last axis).  The
    rounding is half-up (add half, arithmetic shift right), as a hardware adder and
    shifter do it; ``shift = 0`` adds nothing.  Latency in hardware: one multiply, one add,
    one shift, one clamp.
    """
    acc = _as_int(_signed_bits(acc, 32, "requantize input"))
    mult = _as_int(_signed_bits(mult, REQUANT_MULT_BITS, "requantize multiplier"))
    shift = _as_int(check_range(shift, 0, REQUANT_MAX_SHIFT, "requantize shift"))
    offset = _as_int(_signed_bits(offset, 32, "requantize offset"))
    half = _rounding_half(shift)
    # In place on one fresh array: these tensors are large and numpy allocates per step.
    y = np.empty(np.broadcast_shapes(acc.shape, mult.shape, shift.shape, offset.shape), np.int64)
    np.multiply(acc, mult, out=y)
    y += half
    y >>= shift
    y += offset
    return np.clip(y, lo, hi, out=y)


# ----------------------------------------------------------------------------------------
# Matrix products
# ----------------------------------------------------------------------------------------

def _abs_bound(v: np.ndarray) -> int:
    """An upper bound of ``|v|``: from the dtype when it is narrow, else from the data."""
    if v.dtype.itemsize <= 2:
        info = np.iinfo(v.dtype)
        return max(-int(info.min), int(info.max))
    return max(-int(v.min()), int(v.max())) if v.size else 0


def int_matmul(a, b, what: str = "matmul") -> np.ndarray:
    """Exact integer ``a @ b`` (int64 result), through a float BLAS product.

    A float holds every integer below ``2**(mantissa + 1)`` exactly, and so does every
    partial sum of the product when ``K * max|a| * max|b|`` stays below that bound.  The
    product runs in float32 when the bound is below ``2**24`` (int8 x int8 up to K = 1023,
    and most of ViT's matmuls), else in float64 (below ``2**53``: the LIS attention weights
    x int8 values, and int8 x int8 up to any K a ViT has); larger operands raise.
    """
    a, b = np.asarray(a), np.asarray(b)
    for v in (a, b):
        if v.dtype.kind not in "iub":
            raise TypeError(f"integer array expected, got dtype {v.dtype}")
    k = a.shape[-1]
    bound = k * _abs_bound(a) * _abs_bound(b)
    if bound >= (1 << 53):
        raise IntegerOverflowError(f"{what}: operands too large for an exact float64 product")
    dtype = np.float32 if bound < (1 << 24) else np.float64
    # C-contiguous operands keep numpy on its BLAS path (strided views fall back to a slow loop).
    af = np.ascontiguousarray(a, dtype=dtype)
    bf = np.ascontiguousarray(b, dtype=dtype)
    return np.matmul(af, bf).astype(np.int64)


def linear(x, weight, bias=None):
    """int32 accumulator of ``x @ weight.T + bias``.

    ``x`` int8 ``[..., K]``, ``weight`` int8 ``[N, K]``, ``bias`` int32 ``[N]`` (the input
    zero point is already folded into it: ``bias = round(b / (s_x s_w)) - zp_x * sum_k W``).
    """
    x = _signed_bits(np.asarray(x), 8, "linear input")
    w = _signed_bits(np.asarray(weight), 8, "linear weight")
    acc = int_matmul(x, w.T, "linear")
    bound = x.shape[-1] * _abs_bound(x) * _abs_bound(w)
    if bias is not None:
        bias = _as_int(_signed_bits(bias, 32, "linear bias"))
        acc += bias
        bound += max(-int(bias.min()), int(bias.max())) if bias.size else 0
    if bound < (1 << 31):
        return acc                      # |acc| <= K max|x| max|w| + max|bias| fits int32
    return _signed_bits(acc, 32, "linear accumulator")


# ----------------------------------------------------------------------------------------
# Residual add
# ----------------------------------------------------------------------------------------

def residual_add(a, b, zp_a, zp_b, mult_a, mult_b, shift, zp_out,
                 lo: int = INT8_MIN, hi: int = INT8_MAX):
    """Add two int8 tensors of different scales into one int8 tensor.

    ``t = (a - zp_a) * mult_a + (b - zp_b) * mult_b`` (26 bits), then
    ``clamp(((t + 2**(shift-1)) >> shift) + zp_out)``.  ``mult_a = round(s_a / s_out * 2**shift)``
    and likewise for b; multipliers and shift may be per channel (last axis), which is how
    a PTF-quantized residual stream (one scale per channel) is added.
    """
    a = _as_int(_signed_bits(a, 8, "residual input a"))
    b = _as_int(_signed_bits(b, 8, "residual input b"))
    ma = _as_int(_signed_bits(mult_a, REQUANT_MULT_BITS, "residual multiplier a"))
    mb = _as_int(_signed_bits(mult_b, REQUANT_MULT_BITS, "residual multiplier b"))
    shift = _as_int(check_range(shift, 0, REQUANT_MAX_SHIFT, "residual shift"))
    t = (a - zp_a) * ma + (b - zp_b) * mb
    half = _rounding_half(shift)
    return np.clip(((t + half) >> shift) + zp_out, lo, hi)


# ----------------------------------------------------------------------------------------
# PTF LayerNorm
# ----------------------------------------------------------------------------------------

def bit_length(v) -> np.ndarray:
    """Elementwise ``int.bit_length`` of non-negative int64 values (a leading-one detector).

    Values below ``2**53`` convert to float64 exactly, and ``frexp``'s exponent of an exact
    integer is its bit length: no rounding is involved.  Larger values take a shift loop.
    """
    v = _as_int(v)
    if v.size and int(v.min()) < 0:
        raise ValueError("bit_length of a negative value")
    if not v.size or int(v.max()) < (1 << 53):
        return np.frexp(v.astype(np.float64))[1].astype(np.int64)
    n = np.zeros(v.shape, dtype=np.int64)
    for step in (32, 16, 8, 4, 2, 1):
        big = (v >> step) > 0
        n = n + np.where(big, step, 0)
        v = np.where(big, v >> step, v)
    return n + (v > 0)


def isqrt(v) -> np.ndarray:
    """Elementwise ``floor(sqrt(v))`` of non-negative int64 values, integers only.

    Digit-by-digit (restoring) square root, two bits of ``v`` per step: what a
    bit-serial hardware square root computes.
    """
    v = _as_int(v).copy()
    if v.size and int(v.min()) < 0:
        raise ValueError("isqrt of a negative value")
    root = np.zeros(v.shape, dtype=np.int64)
    bit = np.int64(1) << 62
    while bit:
        trial = root + bit
        ge = v >= trial
        v = np.where(ge, v - trial, v)
        root = np.where(ge, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


def ln_row_stats(xs):
    """Per-row statistics of the PTF-shifted input ``xs`` (``[..., C]``, 12-bit signed).

    Returns ``(S, F, r)`` per row (each ``[..., 1]``):

    * ``S = sum xs`` (24-bit signed) and ``V = C sum xs**2 - S**2`` (47-bit unsigned), which
      is ``C**2`` times the row's variance, exactly: no rounded mean anywhere;
    * the radicand normalised by an even shift, ``Vn = V << 2e`` (``e < 0``: ``V >> -2e``) with
      ``e = (2 LN_ROOT_BITS - bit_length(V)) // 2``, so that ``k = isqrt(Vn)`` has exactly
      ``LN_ROOT_BITS`` bits and ``k / 2**e`` approximates ``sqrt(V)``;
    * the row factor ``F = (2**(LN_FACTOR_BITS + LN_ROOT_BITS) - 1) // k`` in
      ``[2**LN_FACTOR_BITS, 2**(LN_FACTOR_BITS + 1))`` and the right shift
      ``r = LN_FACTOR_BITS + LN_ROOT_BITS - LN_NORM_BITS - e`` (3..26), so that
      ``(D F) >> r`` with ``D = C xs - S`` is ``D / sqrt(V) = (xs - mean) / sd`` with
      ``LN_NORM_BITS`` fraction bits (:func:`ln_normalize`).

    A row whose values are all equal (``V = 0``) gets ``F = 0`` (and ``r = 1``): its
    normalised values are 0.  One square root and one divide per row.
    """
    xs = _signed_bits(xs, 12, "layernorm shifted input")
    c = xs.shape[-1]
    if not 1 <= c <= LN_MAX_CHANNELS:
        raise ValueError(f"LayerNorm rows of {c} channels: 1..{LN_MAX_CHANNELS} supported")
    s = xs.sum(axis=-1, keepdims=True)
    ss = (xs * xs).sum(axis=-1, keepdims=True)
    v = check_range(c * ss - s * s, 0, (1 << 47) - 1, "layernorm variance")
    e = (2 * LN_ROOT_BITS - bit_length(v)) // 2
    vn = np.where(e >= 0, v << np.maximum(e, 0) * 2, v >> np.maximum(-e, 0) * 2)
    k = isqrt(vn)
    top = (np.int64(1) << (LN_FACTOR_BITS + LN_ROOT_BITS)) - 1
    factor = np.where(v > 0, top // np.maximum(k, 1), 0)
    r = np.where(v > 0, LN_FACTOR_BITS + LN_ROOT_BITS - LN_NORM_BITS - e, 1)
    return s, factor, r


def ln_normalize(xs, s, factor, r) -> np.ndarray:
    """``n = (D F + 2**(r-1)) >> r`` with ``D = C xs - S`` (25-bit signed, ``D F`` 42-bit).

    ``n / 2**LN_NORM_BITS`` approximates ``(xs - mean) / sd`` (at most ``sqrt(C - 1)`` in
    magnitude, so ``n`` is 21-bit signed).  Hardware computes ``D F`` as
    ``xs (C F) - S F`` with the two row products formed once per row: the same integer.
    """
    xs = _as_int(xs)
    d = _signed_bits(xs.shape[-1] * xs - s, 25, "layernorm centred value")
    prod = d * factor
    prod += np.int64(1) << (r - 1)
    prod >>= r
    return _signed_bits(prod, 21, "layernorm normalised")


def ln_affine(n, mult, shift, offset, lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    """``clamp((((n mult) >> (shift - LN_OFFSET_FRAC)) + K + 2**(LN_OFFSET_FRAC-1)) >> LN_OFFSET_FRAC)``.

    ``mult / 2**shift = gamma / (s_out 2**LN_NORM_BITS)`` (16-bit ``mult``,
    ``LN_OFFSET_FRAC <= shift <= 63``) and ``K = offset`` carries ``beta / s_out + zp_out``
    with ``LN_OFFSET_FRAC`` fraction bits (int32).  This is
    ``floor(n mult / 2**shift + K / 2**LN_OFFSET_FRAC + 1/2)`` exactly: beta enters before the
    single rounding.  int8 output (``lo``, ``hi``: a narrower clamp, e.g. 6-bit activations).
    """
    n = _as_int(n)
    mult = _as_int(_signed_bits(mult, REQUANT_MULT_BITS, "layernorm multiplier"))
    shift = _as_int(check_range(shift, LN_OFFSET_FRAC, REQUANT_MAX_SHIFT, "layernorm shift"))
    offset = _as_int(_signed_bits(offset, 32, "layernorm offset"))
    y = n * mult
    y >>= shift - LN_OFFSET_FRAC
    y += offset
    y += 1 << (LN_OFFSET_FRAC - 1)
    y >>= LN_OFFSET_FRAC
    return np.clip(y, lo, hi, out=y)


def ln_params(gamma, beta, s_out, zp_out):
    """Build-time helper: per-channel ``(mult, shift, offset)`` of :func:`ln_affine` for the
    affine ``gamma``, ``beta`` and the output grid ``real = s_out (q - zp_out)`` (``s_out``
    scalar or per channel).

    ``mult / 2**shift`` approximates ``gamma / (s_out 2**LN_NORM_BITS)`` with a 16-bit
    multiplier; a ratio so large that ``shift`` would fall below ``LN_OFFSET_FRAC`` keeps
    ``shift = LN_OFFSET_FRAC`` and a smaller multiplier (``ValueError`` when even that does
    not fit).  ``offset`` saturates at the int32 range: an offset that large saturates the
    int8 output whatever the normalised value is.
    """
    gamma = np.asarray(gamma, dtype=np.float64)
    s_out = np.broadcast_to(np.asarray(s_out, dtype=np.float64), gamma.shape)
    ratio = gamma / (s_out * 2.0 ** LN_NORM_BITS)
    mult, shift = dyadic(ratio)
    low = shift < LN_OFFSET_FRAC
    if np.any(low):
        mult = np.where(low, np.rint(ratio * 2.0 ** LN_OFFSET_FRAC), mult).astype(np.int64)
        shift = np.where(low, LN_OFFSET_FRAC, shift)
        if np.any(np.abs(mult) >= 1 << (REQUANT_MULT_BITS - 1)):
            raise ValueError("LayerNorm gamma / s_out too large for a 16-bit multiplier")
    k = np.rint((np.asarray(beta, dtype=np.float64) / s_out + zp_out) * 2.0 ** LN_OFFSET_FRAC)
    offset = np.clip(k, INT32_MIN, INT32_MAX).astype(np.int64)
    return mult.astype(np.int64), shift.astype(np.int64), offset


def ptf_layernorm(x, zp_in, alpha, mult, shift, offset, lo: int = INT8_MIN, hi: int = INT8_MAX):
    """Integer LayerNorm of an int8 input quantized with Power-of-Two Factors.

    ``x`` int8 ``[..., C]`` with zero point ``zp_in`` and per-channel factors ``alpha``
    (0..3): channel c has scale ``s1 * 2**alpha[c]``.  Steps:

    1. ``xs = (x - zp_in) << alpha`` puts every channel on the common scale ``s1``;
    2. ``S, F, r = ln_row_stats(xs)``: exact ``C**2 var`` and its normalised reciprocal root;
    3. ``n = ln_normalize(xs, S, F, r)``: ``(xs - mean) / sd`` with 14 fraction bits, the
       mean never rounded (``C xs - S``);
    4. ``ln_affine(n, mult, shift, offset)`` applies ``gamma``, ``beta`` and the output grid
       per channel with one rounding (:func:`ln_params` builds the three).

    Zero-variance rows give ``n = 0`` and so ``round(beta / s_out) + zp_out``.  Fed inputs
    with channel ranges 100x apart, 99.98 % of outputs equal ``round(LN(x) / s_out)``
    computed in float64 and none is more than 1 off (``tests/sw/test_intops.py``).
    """
    x = _as_int(_signed_bits(x, 8, "layernorm input"))
    alpha = _as_int(check_range(alpha, 0, 3, "PTF factor"))
    xs = (x - zp_in) << alpha
    s, factor, r = ln_row_stats(xs)
    return ln_affine(ln_normalize(xs, s, factor, r), mult, shift, offset, lo, hi)


# ----------------------------------------------------------------------------------------
# Softmax: Log-Int-Softmax (4-bit log2 codes) and an 8-bit uniform variant
# ----------------------------------------------------------------------------------------

def lis_exp_constants(frac_bits: int):
    """Integer constants of the exponential for input scale ``ln(2) / 2**frac_bits``.

    Build-time helper.  Returns ``(b_int, c_int)`` with ``b_int = floor(B / A / s)`` and
    ``c_int = floor(1 / A / s**2)``, so that ``(r + b_int) * r + c_int`` is
    ``exp(r s) / (A s**2)`` on ``r s`` in ``(-ln 2, 0]``.  ``frac_bits`` from 2 to 6 keeps the
    polynomial within 16 bits.
    """
    if not 2 <= frac_bits <= 6:
        raise ValueError("softmax input fraction bits must be in 2..6")
    s = math.log(2.0) / (1 << frac_bits)
    return int(math.floor(_EXP_B / _EXP_A / s)), int(math.floor(1.0 / _EXP_A / (s * s)))


def int_exp(x, frac_bits: int, b_int: int, c_int: int) -> np.ndarray:
    """Integer exponential of ``x <= 0`` at scale ``ln(2) / 2**frac_bits``.

    With ``x0 = -2**frac_bits`` (the integer of ``-ln 2``), ``q = (-x) >> frac_bits`` and
    ``r = x + q * 2**frac_bits`` in ``(x0, 0]``, ``e**(x s) = 2**-q * e**(r s)`` and the result is
    ``((r + b_int) * r + c_int) << (LIS_EXP_N - q)`` after clipping ``q <= LIS_EXP_N``.
    No multiply by a non-constant except ``r * (r + b_int)``; the shift is a barrel shifter.
    """
    x = np.asarray(x)
    if x.dtype != np.int32:           # int32 holds every step (shifted values stay below 2**31)
        x = _as_int(x)
    if x.size and int(x.max()) > 0:
        raise ValueError("int_exp input must be <= 0")
    # Steps in place on fresh arrays (the score tensors are large).
    x = np.maximum(x, -(LIS_EXP_N << frac_bits))
    q = np.negative(x)
    q >>= frac_bits
    r = q << frac_bits
    r += x                                    # r = x + q * 2**frac_bits
    poly = r + b_int
    poly *= r
    poly += c_int
    check_range(poly, 0, (1 << 16) - 1, "exp polynomial")
    np.subtract(LIS_EXP_N, q, out=q)
    poly <<= q
    return poly.astype(np.int64, copy=False)  # callers compute on it (e * sqrt 2 needs 48 bits)


def softmax_exp_rows(x, frac_bits: int, b_int: int, c_int: int):
    """Row max subtraction, integer exponential and row sum: ``(exp, row_sum)``."""
    x = _signed_bits(np.asarray(x), 16, "softmax input")
    if x.dtype.kind not in "iu":
        raise TypeError(f"integer array expected, got dtype {x.dtype}")
    x = x.astype(np.int32)                    # x - max needs 17 bits
    x -= x.max(axis=-1, keepdims=True)
    e = int_exp(x, frac_bits, b_int, c_int)
    total = check_range(e.sum(axis=-1, keepdims=True, dtype=np.int64), 1, (1 << 43) - 1, "softmax row sum")
    return e, total


def lis_codes(e, total) -> np.ndarray:
    """4-bit codes ``round(log2(total / e))``, clipped to 15 (15 means zero attention).

    No divide: with ``es = (e * LIS_SQRT2_Q16) >> 16`` (``e * sqrt 2``) the code is the
    number of ``k >= 0`` with ``es << k <= total``, i.e. ``log2(total / e)`` rounded at the
    true midpoints ``2**(k + 1/2)``.  Hardware: two leading-one detectors give
    ``a - b = bit_length(total) - bit_length(es)``, and one compare of ``es << (a - b)``
    against ``total`` adds the last 1.
    """
    e = _as_int(e)
    total = _as_int(total)
    es = e * LIS_SQRT2_Q16
    es >>= 16
    zero = es == 0
    diff = bit_length(total) - bit_length(es)              # a - b
    shifted = np.clip(diff, 0, 62)
    np.left_shift(es, shifted, out=shifted)                # es << (a - b)
    code = np.where(diff >= 0, diff + (shifted <= total), 0)
    code[zero] = LIS_ZERO_CODE
    return np.minimum(code, LIS_ZERO_CODE, out=code)


def lis_softmax(x, frac_bits: int, b_int: int, c_int: int) -> np.ndarray:
    """Log-Int-Softmax of int16 rows (last axis): uint4 codes, attention ``2**-code``."""
    e, total = softmax_exp_rows(x, frac_bits, b_int, c_int)
    return lis_codes(e, total)


def uniform_softmax(x, frac_bits: int, b_int: int, c_int: int) -> np.ndarray:
    """8-bit uniform softmax: ``p = min(round(256 e / sum), 255)``, scale ``2**-8``.

    One reciprocal per row (``inv = 2**48 // sum``) and a multiply per element:
    ``p = (e * inv + 2**39) >> 40``.
    """
    e, total = softmax_exp_rows(x, frac_bits, b_int, c_int)
    inv = (np.int64(1) << UNIFORM_RECIP_BITS) // total
    sh = UNIFORM_RECIP_BITS - 8
    return np.minimum((e * inv + (np.int64(1) << (sh - 1))) >> sh, 255)


def attn_value_lis(codes, v) -> np.ndarray:
    """``sum_j V_j << (15 - code_ij)`` over ``code_ij < 15``: the LIS attention x V.

    ``codes`` ``[..., T, N]`` (0..15), ``v`` int8 ``[..., N, D]``; int32 result with scale
    ``s_v * 2**-15``.  Shifts and adds only.
    """
    codes = _as_int(check_range(codes, 0, LIS_ZERO_CODE, "LIS code"))
    v = _as_int(_signed_bits(v, 8, "attention value"))
    w = np.where(codes < LIS_ZERO_CODE, np.int64(1) << (LIS_SHIFT_BASE - codes), 0)
    return _signed_bits(int_matmul(w, v, "attention x V"), 32, "attention x V accumulator")


def attn_value_uniform(p, v) -> np.ndarray:
    """``sum_j p_ij V_j`` for uint8 probabilities: int32 result with scale ``s_v * 2**-8``."""
    p = _as_int(check_range(p, 0, 255, "attention probability"))
    v = _as_int(_signed_bits(v, 8, "attention value"))
    return _signed_bits(int_matmul(p, v, "attention x V"), 32, "attention x V accumulator")


# ----------------------------------------------------------------------------------------
# GELU, patches, pooling
# ----------------------------------------------------------------------------------------

def gelu_lut(x, table) -> np.ndarray:
    """``table[x + 128]``: a 256-entry int8 table indexed by the int8 input."""
    x = _as_int(_signed_bits(x, 8, "GELU input"))
    table = _as_int(_signed_bits(table, 8, "GELU table"))
    if table.shape != (256,):
        raise ValueError("GELU table must have 256 entries")
    return table[x + 128]


def patchify(img, patch: int) -> np.ndarray:
    """``[B, C, H, W]`` image -> ``[B, (H/p)(W/p), C p p]`` rows in conv-weight order (c, i, j)."""
    img = _as_int(img)
    b, c, h, w = img.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {patch}")
    t = img.reshape(b, c, h // patch, patch, w // patch, patch)
    return t.transpose(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def token_mean(x, zp_in, mult, shift, zp_out, start: int = 0) -> np.ndarray:
    """Mean over tokens ``x[..., start:, :]`` requantized per channel: ``requantize(sum(x - zp))``.

    ``mult / 2**shift = s_in / (T s_out)`` folds the division by the token count ``T``.
    """
    x = _as_int(_signed_bits(x, 8, "token mean input"))
    acc = (x[..., start:, :] - zp_in).sum(axis=-2)
    return requantize(acc, mult, shift, zp_out)


# ----------------------------------------------------------------------------------------
# Swin: windows, the cyclic shift, patch merging (data movement) and the score bias
# ----------------------------------------------------------------------------------------

def _grid_args(x, grid, window=None, shift=None):
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"expected tokens [B, T, C], got shape {x.shape}")
    h, w = (int(v) for v in grid)
    if x.shape[1] != h * w:
        raise ValueError(f"{x.shape[1]} tokens do not form a {h}x{w} grid")
    if window is None:
        return x, h, w
    wh, ww = (int(v) for v in window)
    sh, sw = (int(v) for v in (shift if shift is not None else (0, 0)))
    if wh <= 0 or ww <= 0 or h % wh or w % ww:
        raise ValueError(f"a {h}x{w} grid is not a multiple of the {wh}x{ww} window")
    if not (0 <= sh < wh and 0 <= sw < ww):
        raise ValueError(f"shift ({sh}, {sw}) must lie inside the {wh}x{ww} window")
    return x, h, w, wh, ww, sh, sw


def window_partition(x, grid, window, shift=(0, 0)) -> np.ndarray:
    """Swin's cyclic shift and window partition of a token grid (data movement only).

    ``x`` is ``[B, H*W, C]`` with tokens in row-major grid order.  The grid is rolled by
    ``-shift`` (``torch.roll(x, (-sh, -sw), (1, 2))``), cut into ``(H/wh)(W/ww)`` windows
    in row-major window order, tokens row-major inside a window: ``[B, nW*wh*ww, C]``.
    """
    x, h, w, wh, ww, sh, sw = _grid_args(x, grid, window, shift)
    b, _, c = x.shape
    g = np.roll(x.reshape(b, h, w, c), (-sh, -sw), axis=(1, 2))
    g = g.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return np.ascontiguousarray(g).reshape(b, h * w, c)


def window_reverse(x, grid, window, shift=(0, 0)) -> np.ndarray:
    """The inverse of :func:`window_partition`: windows back to the grid, rolled by ``+shift``."""
    x, h, w, wh, ww, sh, sw = _grid_args(x, grid, window, shift)
    b, _, c = x.shape
    g = x.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    return np.ascontiguousarray(np.roll(g, (sh, sw), axis=(1, 2))).reshape(b, h * w, c)


def patch_merge(x, grid) -> np.ndarray:
    """Swin's patch merging gather: ``[B, H*W, C]`` -> ``[B, (H/2)(W/2), 4C]``.

    Output channel ``(2 j + i) C + c`` of merged token ``(r, s)`` is input token
    ``(2r + i, 2s + j)`` channel ``c`` (timm's ``permute(0, 1, 3, 4, 2, 5)``: the paper's
    ``x0 | x1 | x2 | x3`` = offsets (0,0), (1,0), (0,1), (1,1)).
    """
    x, h, w = _grid_args(x, grid)
    if h % 2 or w % 2:
        raise ValueError(f"patch merging needs an even grid, got {h}x{w}")
    b, _, c = x.shape
    g = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    return np.ascontiguousarray(g).reshape(b, (h // 2) * (w // 2), 4 * c)


def score_bias(scores, bias=None, mask=None) -> np.ndarray:
    """Add Swin's relative position bias and shifted-window mask to int16 scores, saturating.

    ``scores`` is ``[B, nW, H, N, N]`` int16 (``requantize(q k^T)`` at the softmax input
    scale), ``bias`` ``[H, N, N]`` int16 at the same scale, ``mask`` ``[nW, N, N]`` int16
    (0 where a query may see a key, negative where the shifted window cuts it off).
    Result: ``clip(scores + bias[h] + mask[w], INT16)``.
    """
    s = _as_int(_signed_bits(scores, 16, "scores"))
    if s.ndim != 5:
        raise ValueError(f"scores must be [B, nW, H, N, N], got shape {s.shape}")
    if bias is not None:
        bias = _as_int(_signed_bits(bias, 16, "score bias"))
        if bias.shape != s.shape[2:]:
            raise ValueError(f"score bias shape {bias.shape} does not match {s.shape[2:]}")
        s = s + bias[None, None]
    if mask is not None:
        mask = _as_int(_signed_bits(mask, 16, "score mask"))
        if mask.shape != (s.shape[1],) + s.shape[3:]:
            raise ValueError(f"score mask shape {mask.shape} does not match {(s.shape[1],) + s.shape[3:]}")
        if (mask > 0).any():
            raise ValueError("score mask entries must be 0 or negative")
        s = s + mask[None, :, None]
    return np.clip(s, INT16_MIN, INT16_MAX)


# ----------------------------------------------------------------------------------------
# I-ViT (Li and Gu, ICCV 2023): Shiftmax, ShiftGELU, I-LayerNorm, 16-bit residual stream
#
# Constants follow the authors' PyTorch code (models/quantization_utils/quant_modules.py),
# the version their accuracy numbers were trained with; their TVM port differs in a few
# (softmax n = 16, 8-bit softmax output, an unrounded integer mean, ``r >> 1`` before the shift).
# ----------------------------------------------------------------------------------------

#: Dividend of I-ViT's divides: one per softmax row, per GELU element, per LayerNorm row.
IVIT_DIVIDEND = (1 << 31) - 1
#: Shift-exponential range of Shiftmax (``IntSoftmax.n``) and ShiftGELU (``IntGELU.n``).
IVIT_SOFTMAX_N = 15
IVIT_GELU_N = 23
#: Shiftmax output bits (probabilities at scale ``2**-15``) and sigmoid bits (``2**-7``).
IVIT_SOFTMAX_BITS = 16
IVIT_SIGMOID_BITS = 8
#: I-LayerNorm's Newton square root: start value and number of steps.
ILN_SQRT_START = 1 << 16
ILN_SQRT_STEPS = 10


def shift_exp(x, x0: int, n: int) -> np.ndarray:
    """I-ViT's shift exponential of ``x <= 0``: ``e ~ -x0 * 2**n * exp(x s)``.

    ``x0 = floor(-1 / s)`` (build time; ``s`` the input scale) is the integer of ``-1`` in
    log2 units.  Steps, shifts and adds only apart from the divide by the constant ``x0``:

    1. ``x' = x + (x >> 1) - (x >> 4)``: ``x * 1.4375``, so ``x' s ~ x s log2(e)``;
    2. ``x' = max(x', n x0)`` (inputs below ``-n`` octaves clip);
    3. ``q = floor(x' / x0)`` (0..n), ``r = x' - q x0`` in ``(x0, 0]``;
    4. ``e = floor((r / 2 - x0) * 2**(n - q)) = ((r - 2 x0) << (n - q)) >> 1``: ``2**(r s)`` is
       taken as ``1 + r s / 2`` on ``(-1, 0]`` (exact at both ends, 6.1 % high at ``-1/2``).

    ``e`` is positive and at most ``-x0 * 2**n``: ``n + bits(-x0)`` bits.  ``x`` must fit int32.
    """
    x = _as_int(_signed_bits(x, 32, "shift exponential input"))
    x0, n = int(x0), int(n)
    if x0 >= 0:
        raise ValueError("shift exponential: x0 must be negative")
    if not 0 <= n <= 30:
        raise ValueError("shift exponential: n must be in 0..30")
    if x.size and int(x.max()) > 0:
        raise ValueError("shift exponential input must be <= 0")
    xp = np.maximum(x + (x >> 1) - (x >> 4), n * x0)
    q = xp // x0
    r = xp - q * x0 - 2 * x0
    return (r << (n - q)) >> 1


def shiftmax(x, x0: int, n: int = IVIT_SOFTMAX_N, out_bits: int = IVIT_SOFTMAX_BITS) -> np.ndarray:
    """I-ViT's Shiftmax of int16 rows (last axis): probabilities ``p / 2**(out_bits - 1)``.

    ``e = shift_exp(x - rowmax, x0, n)``, ``S = sum e`` (checked: at most ``2**31 - 1``,
    :class:`IntegerOverflowError` otherwise: the quantizer picks ``x0`` so that a row of
    ``N`` equal scores, ``N (-x0) 2**n``, fits), one divide per row
    ``factor = (2**31 - 1) // S``, and ``p = (e factor) >> (32 - out_bits)``.  Since
    ``e <= S``, ``e factor < 2**31`` and ``p < 2**(out_bits - 1)``; the rows sum to at most
    ``2**(out_bits - 1)``.  The divide's rounding costs every probability a relative error
    of at most ``S / 2**31``.
    """
    if not 2 <= int(out_bits) <= 16:
        raise ValueError("Shiftmax output bits must be in 2..16")
    x = _as_int(_signed_bits(np.asarray(x), 16, "Shiftmax input"))
    e = shift_exp(x - x.max(axis=-1, keepdims=True), x0, n)
    total = check_range(e.sum(axis=-1, keepdims=True), 1, IVIT_DIVIDEND, "Shiftmax row sum")
    return (e * (IVIT_DIVIDEND // total)) >> (32 - int(out_bits))


def shift_sigmoid(x, x0: int, n: int = IVIT_GELU_N) -> np.ndarray:
    """``sigmoid(x s')`` of int8 ``x`` as a 7-bit code (scale ``2**-7``), ``x0 = floor(-1/s')``.

    From the shift exponential, elementwise with ``m = max(x, 0)``:
    ``sigmoid = e(x - m) / (e(x - m) + e(-m))``, both exponents ``<= 0``; the sum is checked
    against ``2**31 - 1`` (at most ``-x0 2**(n+1)``), one divide per element
    ``factor = (2**31 - 1) // sum``, and the code is ``(e(x - m) factor) >> 24``.
    """
    x = _as_int(_signed_bits(x, 8, "ShiftGELU input"))
    m = np.maximum(x, 0)
    e1 = shift_exp(x - m, x0, n)
    e2 = shift_exp(-m, x0, n)
    total = check_range(e1 + e2, 1, IVIT_DIVIDEND, "ShiftGELU sum")
    return (e1 * (IVIT_DIVIDEND // total)) >> (32 - IVIT_SIGMOID_BITS)


def shiftgelu_n(x0: int) -> int:
    """Build-time helper: the shift range ``n`` of ShiftGELU for ``x0``.

    The per-element divide costs up to ``sum / 2**31`` relative, and the sum is at most
    ``-x0 2**(n + 1)``; ``n = 21 - bits(-x0)`` keeps it below ``2**22`` (0.2 %).  I-ViT's code
    uses ``n = 23`` with a row maximum, where elements up to 255 steps below the maximum must
    not clip; with the elementwise ``m = max(x, 0)`` of :func:`shift_sigmoid` an argument is
    at most 128 steps below zero, and anything past 8 octaves rounds to a saturated 7-bit
    code anyway, so ``n`` stays in 8..23.
    """
    return int(np.clip(21 - (-int(x0)).bit_length(), 8, IVIT_GELU_N))


def shiftgelu(x, x0: int, n: int, mult, shift, zp_out: int = 0) -> np.ndarray:
    """I-ViT's ShiftGELU ``x sigmoid(1.702 x)`` of int8 ``x`` (scale ``s``), requantized to int8.

    ``x0 = floor(-1 / (1.702 s))`` folds the 1.702 into the exponential's constant, as the
    authors' code does.  The product ``x * shift_sigmoid(x)`` is 15-bit signed with scale
    ``s 2**-7``; ``mult / 2**shift = s 2**-7 / s_out`` requantizes it.
    """
    x = _as_int(_signed_bits(x, 8, "ShiftGELU input"))
    return requantize(x * shift_sigmoid(x, x0, n), mult, shift, zp_out)


def newton_isqrt(v, steps: int = ILN_SQRT_STEPS, start: int = ILN_SQRT_START) -> np.ndarray:
    """I-ViT's integer square root: ``k = start``, then ``steps`` times ``k = (k + v // k) >> 1``.

    A fixed number of steps, no stopping test.  From ``2**16`` with 10 steps, ``k`` is
    ``floor(sqrt(v))`` or one more for every ``v`` in ``[2**16, 2**45]``
    (``tests/sw/test_intops_methods.py``); below that range it has not come down from the
    start value yet (``v = 0`` gives 64).  ``k`` never drops below ``start >> steps`` (>= 1).
    """
    v = _as_int(check_range(v, 0, (1 << 62) - 1, "Newton square root input"))
    if start >> steps < 1:
        raise ValueError("Newton square root: start must be at least 2**steps")
    k = np.full(v.shape, int(start), dtype=np.int64)
    for _ in range(int(steps)):
        k = (k + v // k) >> 1
    return k


def ilayernorm(x, mult, shift, offset) -> np.ndarray:
    """I-ViT's I-LayerNorm of int16 rows ``x`` (``[..., C]``, symmetric), int8 output.

    1. ``S = sum x``, ``mu = floor((2 S + C) / (2 C))`` (the mean rounded half up);
    2. ``y = x - mu`` (17-bit), ``V = sum y**2`` (at most ``C 2**32``);
    3. ``k = newton_isqrt(V)`` (10 steps from ``2**16``), ``factor = (2**31 - 1) // k``;
    4. ``n = (y factor) >> 1``: ``n / 2**30 * sqrt(C)`` is ``(x - mean) / sd`` (31-bit signed);
    5. ``ln_affine(n, mult, shift, offset)`` applies gamma, beta and the output grid with one
       rounding (:func:`ilayernorm_params`).

    I-ViT's code divides beta by gamma and adds it to ``n`` before multiplying by gamma; here
    beta enters the final rounding as in :func:`ptf_layernorm`, which needs no ``1 / gamma``.
    Zero-variance rows give ``n = 0``, i.e. ``round(beta / s_out) + zp_out``.
    """
    x = _as_int(_signed_bits(x, 16, "I-LayerNorm input"))
    c = x.shape[-1]
    if not 1 <= c <= LN_MAX_CHANNELS:
        raise ValueError(f"LayerNorm rows of {c} channels: 1..{LN_MAX_CHANNELS} supported")
    s = x.sum(axis=-1, keepdims=True)
    y = x - (2 * s + c) // (2 * c)
    v = (y * y).sum(axis=-1, keepdims=True)
    factor = IVIT_DIVIDEND // newton_isqrt(v)
    n = _signed_bits((y * factor) >> 1, 32, "I-LayerNorm normalised")
    return ln_affine(n, mult, shift, offset)


def ilayernorm_params(gamma, beta, s_out, zp_out, channels: int):
    """Build-time helper: ``(mult, shift, offset)`` of :func:`ilayernorm` for ``channels``.

    The normalised value is ``n sqrt(C) / 2**30``, so ``mult / 2**shift`` approximates
    ``gamma sqrt(C) / (s_out 2**30)``: :func:`ln_params` with gamma scaled by
    ``sqrt(C) 2**(LN_NORM_BITS - 30)``.
    """
    g = np.asarray(gamma, dtype=np.float64) * math.sqrt(channels) * 2.0 ** (LN_NORM_BITS - 30)
    return ln_params(g, beta, s_out, zp_out)


def residual_add_wide(a, b, mult_a, mult_b, shift, lo: int = INT16_MIN, hi: int = INT16_MAX):
    """Add two symmetric int16 tensors of different scales into an int16 tensor (I-ViT's
    16-bit residual stream): ``clamp((a mult_a + b mult_b + 2**(shift-1)) >> shift)``.

    Products 31-bit, their sum 32-bit signed; multipliers and shift per channel or scalar.
    """
    a = _as_int(_signed_bits(a, 16, "wide residual input a"))
    b = _as_int(_signed_bits(b, 16, "wide residual input b"))
    ma = _as_int(_signed_bits(mult_a, REQUANT_MULT_BITS, "wide residual multiplier a"))
    mb = _as_int(_signed_bits(mult_b, REQUANT_MULT_BITS, "wide residual multiplier b"))
    shift = _as_int(check_range(shift, 0, REQUANT_MAX_SHIFT, "wide residual shift"))
    t = a * ma + b * mb
    return np.clip((t + _rounding_half(shift)) >> shift, lo, hi)


def attn_value_wide(p, v) -> np.ndarray:
    """``sum_j p_ij V_j`` for uint16 probabilities (Shiftmax) and int8 values: int32
    (checked; Shiftmax rows sum to at most ``2**15``, so ``|acc| <= 2**22``)."""
    p = _as_int(check_range(p, 0, (1 << 16) - 1, "attention probability"))
    v = _as_int(_signed_bits(v, 8, "attention value"))
    return _signed_bits(int_matmul(p, v, "attention x V"), 32, "attention x V accumulator")


# ----------------------------------------------------------------------------------------
# PTQ4ViT (Yuan et al., ECCV 2022): twin uniform codes
#
# A k-bit twin code holds a range flag in its MSB and a (k-1)-bit magnitude.  With
# L = 2**(k-1) - 1 levels per range and the two steps a power of two apart
# (``step_hi = 2**m step_lo``), a code decodes to ``magnitude << m`` (flagged range) or
# ``magnitude`` in units of ``step_lo``: products with it are integer products and a shift.
# Post-softmax codes are unsigned (flag = large range, step 1/L; small range step 2**-m / L);
# post-GELU codes are signed int8 (two's complement sign = flag: positive values at the
# large step, zero and negative values at the small one).
# ----------------------------------------------------------------------------------------

#: Twin softmax: the row sum is normalised to this many bits for its one reciprocal per row.
TWIN_RECIP_BITS = 24


def twin_levels(bits: int) -> int:
    """Levels per range of a ``bits``-bit twin code: ``2**(bits-1) - 1``."""
    if not 2 <= int(bits) <= 8:
        raise ValueError("twin codes have 2..8 bits")
    return (1 << (int(bits) - 1)) - 1


def twin_softmax(x, frac_bits: int, b_int: int, c_int: int, m: int, bits: int = 8) -> np.ndarray:
    """Softmax of int16 rows as unsigned ``bits``-bit twin codes (PTQ4ViT's post-softmax format).

    The exponential and row sum are :func:`softmax_exp_rows` (as :func:`uniform_softmax`).
    Then one reciprocal per row of the row sum normalised to ``TWIN_RECIP_BITS`` bits
    (``S = tm 2**k``, ``inv = 2**47 // tm``), and per element, with ``L = 2**(bits-1) - 1``:

    * ``p >= 2**-m`` (exactly: ``e << m >= S``): code ``2**(bits-1) + min(round(L p), L)``;
    * else: code ``min(round(L 2**m p), L)``, ``round(v) = floor(v + 1/2)`` via
      ``(e L inv + half) >> (47 + k [- m])``.

    :func:`twin_decode_softmax` gives ``p`` in units of ``1 / (L 2**m)``.
    """
    levels = twin_levels(bits)
    m = int(m)
    if not 0 <= m <= 20:
        raise ValueError("twin softmax: m must be in 0..20")
    e, total = softmax_exp_rows(x, frac_bits, b_int, c_int)
    k = bit_length(total) - TWIN_RECIP_BITS
    tm = np.where(k >= 0, total >> np.maximum(k, 0), total << np.maximum(-k, 0))
    inv = (np.int64(1) << (2 * TWIN_RECIP_BITS - 1)) // tm        # (2**23, 2**24]
    num = e * (levels * inv)                                        # < 2**62
    sh_hi = 2 * TWIN_RECIP_BITS - 1 + k
    sh_lo = sh_hi - m
    u_hi = (num + (np.int64(1) << (sh_hi - 1))) >> sh_hi
    u_lo = (num + (np.int64(1) << (sh_lo - 1))) >> sh_lo
    high = (e << m) >= total
    return np.where(high, (1 << (bits - 1)) + np.minimum(u_hi, levels), np.minimum(u_lo, levels))


def twin_decode_softmax(codes, m: int, bits: int = 8) -> np.ndarray:
    """Twin softmax codes -> integers in units of the small step: ``mag << m`` or ``mag``."""
    levels = twin_levels(bits)
    codes = _as_int(check_range(codes, 0, (1 << bits) - 1, "twin code"))
    mag = codes & levels
    return np.where(codes >> (bits - 1) == 1, mag << int(m), mag)


def attn_value_twin(codes, v, m: int, bits: int = 8) -> np.ndarray:
    """``sum_j p_ij V_j`` for twin softmax codes: int32 with scale ``s_v / (L 2**m)``.

    Two integer products, one per range (the code's MSB steers each product to its
    accumulator), and ``(acc_hi << m) + acc_lo``; each accumulator and the sum are checked
    against 32 bits.
    """
    levels = twin_levels(bits)
    codes = _as_int(check_range(codes, 0, (1 << bits) - 1, "twin code"))
    v = _as_int(_signed_bits(v, 8, "attention value"))
    flag = (codes >> (bits - 1)) == 1
    mag = codes & levels
    acc_hi = _signed_bits(int_matmul(np.where(flag, mag, 0), v, "twin attention x V"), 32,
                          "twin attention x V accumulator (large range)")
    acc_lo = _signed_bits(int_matmul(np.where(flag, 0, mag), v, "twin attention x V"), 32,
                          "twin attention x V accumulator (small range)")
    return _signed_bits((acc_hi << int(m)) + acc_lo, 32, "twin attention x V accumulator")


def linear_twin(x, weight, bias, m: int, bits: int = 8) -> np.ndarray:
    """int32 accumulator of ``decode(x) @ weight.T + bias`` for signed twin codes ``x``.

    ``x`` in ``[-L, L]``: positive codes at the large step, the others at the small step.
    ``acc = ((max(x, 0) @ W.T) << m) + min(x, 0) @ W.T + bias``: two int8 products, each
    accumulator and the sum checked against 32 bits.  Scale ``step_small * s_w``.
    """
    levels = twin_levels(bits)
    x = _as_int(check_range(x, -levels, levels, "twin linear input"))
    w = _signed_bits(np.asarray(weight), 8, "linear weight")
    acc_pos = _signed_bits(int_matmul(np.maximum(x, 0), w.T, "twin linear"), 32, "twin linear accumulator (positive)")
    acc_neg = _signed_bits(int_matmul(np.minimum(x, 0), w.T, "twin linear"), 32, "twin linear accumulator (negative)")
    acc = (acc_pos << int(m)) + acc_neg
    if bias is not None:
        acc += _as_int(_signed_bits(bias, 32, "linear bias"))
    return _signed_bits(acc, 32, "twin linear accumulator")
