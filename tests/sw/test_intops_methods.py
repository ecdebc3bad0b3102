"""The integer ops of I-ViT and PTQ4ViT against exact and float math, with stated bounds.

Bounds (per output integer):

* ``shift_exp``, ``shiftmax``, ``shift_sigmoid``, ``newton_isqrt``, ``ilayernorm`` (up to its
  affine step), ``residual_add_wide``, the twin products: exactly the published integer
  recipe, re-computed here with Python integers.
* Shiftmax vs float softmax at input scale ``1 / K`` (``x0 = -K``): absolute error of the
  probability at most 0.09 (``K = 2``), 0.065 (4), 0.04 (8), 0.03 (16).  The shift
  exponential takes ``2**f ~ 1 + f / 2`` (up to 6.1 % high, which moves a probability near
  1/2 by up to 0.03) and ``log2 e ~ 1.4375``; a coarse input grid adds up to an input step
  to every exponent through the floors of ``x >> 1`` and ``x >> 4``.
* shift sigmoid vs ``sigmoid(1.702 x s)`` at ``s = 1 / (1.702 K)``: at most 0.07 (``K >= 2``),
  0.04 (``K >= 8``), in units of 1 (the 7-bit code / 128).
* ``ilayernorm`` vs float64 LayerNorm: within 1 of ``round(LN(x) / s_out)`` and at least
  99.5 % equal, on rows whose sum of squares lies in the Newton root's range
  (``2**16 .. 2**45``).  I-ViT rounds the mean to an integer, which moves every normalised
  value of a row by up to ``0.5 / sd`` (in input steps): this is most of the 0.5 %.
* ``twin_softmax`` vs the float softmax of the same integer exponential: every code is the
  exact rounding of ``e / S`` onto its range's grid, except within ``2**-20`` of a rounding
  boundary (the reciprocal is 24-bit); vs float softmax: within half a step of its range
  plus 5 % of ``p`` (the polynomial exponential, as :func:`sw.intops.uniform_softmax`) plus
  ``2**-15`` (the exponential clips 15 octaves below the row maximum).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from sw import intops
from sw.intops import IntegerOverflowError


# ------------------------------------------------------------------------------ references
def _py_shift_exp(x: int, x0: int, n: int) -> int:
    """I-ViT's int_exp_shift with Python integers: ``floor((r/2 - x0) * 2**(n-q))``."""
    xp = x + math.floor(x / 2) - math.floor(x / 16)
    xp = max(xp, n * x0)
    q = math.floor(Fraction(xp, x0))
    r = xp - x0 * q
    return math.floor((Fraction(r, 2) - x0) * 2 ** (n - q))


def _py_shiftmax_row(row, x0, n, out_bits):
    mx = max(row)
    e = [_py_shift_exp(v - mx, x0, n) for v in row]
    factor = (2 ** 31 - 1) // sum(e)
    return [math.floor(Fraction(v * factor, 2 ** (32 - out_bits))) for v in e]


def _softmax(x, s):
    z = x * s
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------ shift exp
@given(x=st.integers(-(1 << 20), 0), k=st.integers(1, 3000), n=st.sampled_from([8, 15, 23]))
@settings(max_examples=300, deadline=None)
def test_shift_exp_is_the_published_recipe(x, k, n):
    assert int(intops.shift_exp(np.int64(x), -k, n)) == _py_shift_exp(x, -k, n)


def test_shift_exp_float_bound():
    """``e / (K 2**n)`` against ``2**(1.4375 x / K)``: the linear interpolation of ``2**f``
    is never low and at most 6.1 % high; the floors of ``x >> 1``, ``x >> 4`` move the
    exponent by less than one input step."""
    for k in (4, 16, 100):
        x = np.arange(-10 * k, 1)                # above -n octaves: nothing clips
        e = intops.shift_exp(x, -k, 15) / (k * 2.0 ** 15)
        ideal = 2.0 ** (1.4375 * x / k)
        ratio = e / ideal
        slack = 2.0 ** (1.0 / k)
        assert ratio.min() >= (1 - 2.0 ** -14) / slack and ratio.max() <= 1.0615 * slack


def test_shift_exp_rejects_positive_input_and_bad_constants():
    with pytest.raises(ValueError):
        intops.shift_exp(np.array([1]), -4, 15)
    with pytest.raises(ValueError):
        intops.shift_exp(np.array([0]), 0, 15)


# ------------------------------------------------------------------------------ Shiftmax
@given(k=st.integers(1, 40), n_tok=st.integers(1, 64), seed=st.integers(0, 2 ** 16),
       spread=st.sampled_from([3, 127, 2000, 32767]))
@settings(max_examples=80, deadline=None)
def test_shiftmax_exact_and_rows_sum_at_most_one(k, n_tok, seed, spread):
    rng = np.random.default_rng(seed)
    x = rng.integers(-spread, min(spread, 32767) + 1, size=(3, n_tok))
    p = intops.shiftmax(x, -k)
    for row, got in zip(x.tolist(), p.tolist()):
        assert got == _py_shiftmax_row(row, -k, 15, 16)
    assert p.min() >= 0 and p.sum(-1).max() <= 2 ** 15


@pytest.mark.parametrize("k,bound", [(2, 0.09), (4, 0.065), (8, 0.04), (16, 0.03)])
@pytest.mark.parametrize("n_tok", [1, 17, 197])
def test_shiftmax_close_to_float_softmax(k, bound, n_tok):
    x = np.random.default_rng(k * 1000 + n_tok).integers(-127, 128, size=(300, n_tok))
    p = intops.shiftmax(x, -k) / 2.0 ** 15
    assert np.abs(p - _softmax(x, 1.0 / k)).max() <= bound


def test_shiftmax_extreme_rows():
    k = 10
    huge = np.full((1, 197), -32768)
    huge[0, 5] = 32767
    p = intops.shiftmax(huge, -k)
    # the others clip at -n octaves and keep 2**-15 of the maximum each
    assert p[0, 5] == (k * 2 ** 15 * ((2 ** 31 - 1) // (k * 2 ** 15 + 196 * k))) >> 16
    assert p[0, 5] >= 2 ** 15 - 197 - 1 and np.delete(p[0], 5).max() == 0
    flat = intops.shiftmax(np.full((2, 197), 127), -k)
    # the divide's floor costs S / 2**31 = 197 K 2**15 / 2**31 relative (0.9 %)
    assert np.all(flat == flat[0, 0])
    assert 2 ** 15 / 197 * (1 - 197 * k / 2 ** 16) - 1 <= flat[0, 0] <= 2 ** 15 / 197
    for v in (-128, 127, -32768, 32767):
        p = intops.shiftmax(np.full((1, 64), v), -k)
        assert np.all(p == p[0, 0]) and 2 ** 15 / 64 * (1 - 64 * k / 2 ** 16) - 1 <= p[0, 0] <= 2 ** 9


def test_shiftmax_row_sum_limit_is_an_error_not_a_wrap():
    """A row of N equal scores sums to N K 2**15: fine at 2**31 - 1, an error beyond."""
    k = 2 ** 16 // 64                           # 64 K 2**15 = 2**31: one over the limit
    with pytest.raises(IntegerOverflowError, match="row sum"):
        intops.shiftmax(np.zeros((1, 64), np.int64), -k)
    p = intops.shiftmax(np.zeros((1, 63), np.int64), -k)     # 63 K 2**15 < 2**31
    assert np.all(p == p[0, 0]) and p.sum() <= 2 ** 15
    with pytest.raises(IntegerOverflowError):
        intops.shiftmax(np.array([[1 << 15]]), -4)


# ------------------------------------------------------------------------------ ShiftGELU
@given(x=st.integers(-128, 127), k=st.integers(1, 300), n=st.integers(8, 23))
@settings(max_examples=300, deadline=None)
def test_shift_sigmoid_is_the_published_recipe(x, k, n):
    m = max(x, 0)
    e1, e2 = _py_shift_exp(x - m, -k, n), _py_shift_exp(-m, -k, n)
    if e1 + e2 > 2 ** 31 - 1:
        with pytest.raises(IntegerOverflowError):
            intops.shift_sigmoid(np.int64(x), -k, n)
        return
    want = (e1 * ((2 ** 31 - 1) // (e1 + e2))) >> 24
    assert int(intops.shift_sigmoid(np.int64(x), -k, n)) == want


@pytest.mark.parametrize("k,bound", [(2, 0.07), (4, 0.055), (8, 0.04), (32, 0.025), (127, 0.025)])
def test_shift_sigmoid_close_to_float(k, bound):
    x = np.arange(-128, 128)
    s = 1.0 / (1.702 * k)
    sig = intops.shift_sigmoid(x, -k, intops.shiftgelu_n(-k)) / 128.0
    assert np.abs(sig - 1 / (1 + np.exp(-1.702 * x * s))).max() <= bound


def test_shiftgelu_requantizes_the_product():
    k, n = 8, 17
    x = np.arange(-128, 128)
    mult, shift = intops.dyadic(0.5)
    got = intops.shiftgelu(x, -k, n, mult, shift)
    want = np.clip(np.floor(x * intops.shift_sigmoid(x, -k, n) * 0.5 + 0.5), -128, 127)
    assert np.array_equal(got, want)


# ------------------------------------------------------------------------------ I-LayerNorm
@given(v=st.integers(1 << 16, 1 << 45))
@settings(max_examples=300, deadline=None)
def test_newton_isqrt_in_range(v):
    assert int(intops.newton_isqrt(np.int64(v))) - math.isqrt(v) in (0, 1)


def test_newton_isqrt_fixed_steps_outside_the_range():
    """Ten steps from 2**16 cannot come down to a small root: the iteration has no stopping
    test and halves at most once per step (v = 0 ends at 2**16 / 2**10)."""
    assert intops.newton_isqrt(np.array([0, 1, 100])).tolist() == [64, 64, 64]
    assert int(intops.newton_isqrt(np.int64(4095))) == 83              # sqrt: 63.99
    with pytest.raises(ValueError):
        intops.newton_isqrt(np.int64(5), steps=17)


def _py_ilayernorm_n(row):
    c = len(row)
    s = sum(row)
    mu = math.floor(Fraction(2 * s + c, 2 * c))
    y = [v - mu for v in row]
    v = sum(t * t for t in y)
    k = 1 << 16
    for _ in range(10):
        k = (k + v // k) >> 1
    factor = (2 ** 31 - 1) // k
    return [(t * factor) >> 1 for t in y]


def _float_ln(x, gamma, beta, s_out, zp_out):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    sd = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True))
    return np.clip(np.floor(((x - mu) / sd * gamma + beta) / s_out + 0.5) + zp_out, -128, 127)


@pytest.mark.parametrize("c", [64, 192, 768])
def test_ilayernorm_matches_float64_layernorm(c):
    rng = np.random.default_rng(c)
    spread = np.exp(rng.uniform(np.log(0.05), np.log(1.0), c))
    x = np.clip(np.rint((rng.normal(0, 1, (1500, c)) + rng.normal(0, 0.3, c)) * spread * 6000),
                -32768, 32767).astype(np.int64)
    gamma, beta = rng.normal(1, 0.3, c), rng.normal(0, 0.2, c)
    xr = x.astype(np.float64)
    y = (xr - xr.mean(-1, keepdims=True)) / xr.std(-1, keepdims=True) * gamma + beta
    s_out = (y.max() - y.min()) / 255
    zp_out = int(np.clip(-128 - round(y.min() / s_out), -128, 127))
    mult, shift, offset = intops.ilayernorm_params(gamma, beta, s_out, zp_out, c)
    got = intops.ilayernorm(x, mult, shift, offset)
    want = _float_ln(x, gamma, beta, s_out, zp_out)
    v = ((x - x.mean(-1, keepdims=True)) ** 2).sum(-1)
    assert v.min() >= 2 ** 16 and v.max() <= 2 ** 45
    assert np.abs(got - want).max() <= 1 and np.mean(got == want) >= 0.995


@given(c=st.integers(1, 80), seed=st.integers(0, 2 ** 16), big=st.booleans())
@settings(max_examples=120, deadline=None)
def test_ilayernorm_normalised_value_is_the_published_recipe(c, seed, big):
    rng = np.random.default_rng(seed)
    lim = 32768 if big else 200
    x = rng.integers(-lim, lim, size=(3, c))
    x[0] = x[0, 0]                                   # one zero-variance row
    # read n through the affine step with multiplier 1 and shift 24: round(n / 2**24)
    mult = np.ones(c, np.int64)
    shift = np.full(c, 24, np.int64)
    offset = np.zeros(c, np.int64)
    got = intops.ilayernorm(x, mult, shift, offset)
    want = np.clip([[((n >> 8) + 2 ** 15) >> 16 for n in _py_ilayernorm_n(r)] for r in x.tolist()],
                   -128, 127)
    assert np.array_equal(got, want)


@pytest.mark.parametrize("value", [-32768, 32767, 0, -128, 127])
def test_ilayernorm_zero_variance_rows_give_beta(value):
    c = 96
    rng = np.random.default_rng(2)
    gamma, beta = rng.uniform(0.5, 1.5, c), rng.uniform(-0.5, 0.5, c)
    mult, shift, offset = intops.ilayernorm_params(gamma, beta, 0.02, 3, c)
    got = intops.ilayernorm(np.full((2, c), value), mult, shift, offset)
    assert np.array_equal(got[0], np.clip(np.floor(beta / 0.02 + 0.5) + 3, -128, 127))


@pytest.mark.parametrize("c", [2, 768, intops.LN_MAX_CHANNELS])
def test_ilayernorm_widest_rows(c):
    """Alternating -32768 / 32767 (the largest sum of squares, C 2**30) and one outlier
    (the largest normalised value, sqrt(C - 1)): no overflow, float LayerNorm within 1."""
    alt = np.where(np.arange(c) % 2, 32767, -32768)
    out = np.full(c, -32768)
    out[c // 3] = 32767
    x = np.stack([alt, out])
    gamma, beta = np.ones(c), np.zeros(c)
    s_out = math.sqrt(c) / 127
    mult, shift, offset = intops.ilayernorm_params(gamma, beta, s_out, 0, c)
    got = intops.ilayernorm(x, mult, shift, offset)
    assert np.abs(got - _float_ln(x, gamma, beta, s_out, 0)).max() <= 1
    with pytest.raises(IntegerOverflowError):
        intops.ilayernorm(x * 2, mult, shift, offset)


# ------------------------------------------------------------------------------ wide add, attn
@given(a=st.integers(-32768, 32767), b=st.integers(-32768, 32767), ma=st.integers(-32768, 32767),
       mb=st.integers(-32768, 32767), shift=st.integers(0, 63))
@settings(max_examples=300, deadline=None)
def test_residual_add_wide_exact(a, b, ma, mb, shift):
    got = int(intops.residual_add_wide(np.int64(a), np.int64(b), ma, mb, shift))
    want = math.floor(Fraction(a * ma + b * mb, 2 ** shift) + Fraction(1, 2))
    assert got == max(-32768, min(32767, want))


def test_residual_add_wide_rejects_wider_inputs():
    with pytest.raises(IntegerOverflowError):
        intops.residual_add_wide(np.int64(1 << 15), np.int64(0), 1, 1, 0)


def test_attn_value_wide_exact_and_bounded_by_the_row_sum():
    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, size=(2, 3, 40, 40))
    p = intops.shiftmax(x, -9)
    v = np.full((2, 3, 40, 8), -128)
    acc = intops.attn_value_wide(p, v)
    assert np.array_equal(acc, (p.astype(object) @ v.astype(object)).astype(np.int64))
    assert np.abs(acc).max() <= 2 ** 15 * 128
    with pytest.raises(IntegerOverflowError):
        intops.attn_value_wide(np.full((1, 3), 1 << 16), np.ones((3, 2), np.int64))


# ------------------------------------------------------------------------------ twin codes
def _twin_reference(e, total, m, bits):
    """Exact rational rounding of ``p = e / S`` onto the twin grids."""
    lv = (1 << (bits - 1)) - 1
    out, margin = [], []
    for ei, si in zip(e.tolist(), total.tolist()):
        p = Fraction(ei, si)
        if p >= Fraction(1, 2 ** m):
            u = p * lv
            out.append((1 << (bits - 1)) + min(math.floor(u + Fraction(1, 2)), lv))
        else:
            u = p * lv * 2 ** m
            out.append(min(math.floor(u + Fraction(1, 2)), lv))
        frac = u + Fraction(1, 2) - math.floor(u + Fraction(1, 2))
        margin.append(min(frac, 1 - frac))
    return np.array(out), np.array(margin, dtype=float)


@given(frac_bits=st.integers(2, 6), n_tok=st.integers(1, 200), seed=st.integers(0, 2 ** 16),
       m=st.integers(0, 16), bits=st.sampled_from([6, 8]), spread=st.sampled_from([50, 2000, 32767]))
@settings(max_examples=80, deadline=None)
def test_twin_softmax_rounds_exactly(frac_bits, n_tok, seed, m, bits, spread):
    x = np.random.default_rng(seed).integers(-spread, spread, size=(2, n_tok))
    b, c = intops.lis_exp_constants(frac_bits)
    codes = intops.twin_softmax(x, frac_bits, b, c, m, bits)
    e, total = intops.softmax_exp_rows(x, frac_bits, b, c)
    want, margin = _twin_reference(e.ravel(), np.broadcast_to(total, e.shape).ravel(), m, bits)
    got = codes.ravel()
    clear = margin > 2.0 ** -20
    assert np.array_equal(got[clear], want[clear])
    assert np.abs(got - want).max(initial=0) <= 1


@pytest.mark.parametrize("m,bits", [(0, 8), (4, 8), (9, 8), (16, 8), (3, 6)])
def test_twin_softmax_close_to_float(m, bits):
    rng = np.random.default_rng(m)
    frac = 4
    x = rng.integers(-3000, 3000, size=(50, 60))
    b, c = intops.lis_exp_constants(frac)
    codes = intops.twin_softmax(x, frac, b, c, m, bits)
    lv = intops.twin_levels(bits)
    p_int = intops.twin_decode_softmax(codes, m, bits) / (lv * 2.0 ** m)
    p = _softmax(x, math.log(2) / 2 ** frac)
    step = np.where(codes >> (bits - 1) == 1, 1.0 / lv, 1.0 / (lv * 2.0 ** m))
    # + 2**-15: the integer exponential clips 15 octaves below the row maximum
    assert np.all(np.abs(p_int - p) <= step / 2 + 0.05 * p + 2.0 ** -15)


def test_twin_softmax_one_hot_and_flat_rows():
    b, c = intops.lis_exp_constants(4)
    row = np.full((1, 50), -32768)
    row[0, 7] = 32767
    codes = intops.twin_softmax(row, 4, b, c, 10)
    # p = 1 - 49 * 2**-15 in the large range (code 128 + 127); the rest, 2**-15 each, in the
    # small range: round(127 * 2**10 * 2**-15) = 4
    assert codes[0, 7] == 255 and np.all(np.delete(codes[0], 7) == 4)
    flat = np.zeros((1, 64), np.int64)                         # p = 2**-6 everywhere
    assert np.all(intops.twin_softmax(flat, 4, b, c, 4) == round(127 * 16 / 64))   # small range
    assert np.all(intops.twin_softmax(flat, 4, b, c, 8) == 128 + round(127 / 64))  # large range


def test_twin_products_exact_and_range_checked():
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 256, size=(2, 9, 30))
    v = rng.integers(-128, 128, size=(2, 30, 4))
    m = 6
    dec = intops.twin_decode_softmax(codes, m)
    want = np.stack([(dec[i].astype(object) @ v[i].astype(object)) for i in range(2)]).astype(np.int64)
    assert np.array_equal(intops.attn_value_twin(codes, v, m), want)
    x = rng.integers(-127, 128, size=(5, 300))
    w = rng.integers(-127, 128, size=(7, 300))
    bias = rng.integers(-1000, 1000, size=7)
    xd = np.where(x > 0, x << m, x)
    want = (xd.astype(object) @ w.T.astype(object) + bias).astype(np.int64)
    assert np.array_equal(intops.linear_twin(x, w, bias, m), want)
    # the largest codes at a large step ratio overflow the 32-bit accumulator: an error
    with pytest.raises(IntegerOverflowError):
        intops.linear_twin(np.full((1, 3000), 127), np.full((1, 3000), 127), None, 6)
    with pytest.raises(IntegerOverflowError):
        intops.linear_twin(np.full((1, 4), 128), np.ones((1, 4), np.int64), None, 0)
    with pytest.raises(IntegerOverflowError):
        intops.attn_value_twin(np.full((1, 1, 3), 256), np.ones((1, 3, 2), np.int64), 0)
