"""Why the fast executor's kernels are numba: one integer op chain, three ways.

The integer softmax (Log-Int-Softmax codes, :func:`sw.intops.lis_softmax`) and the linear
requantization (:func:`sw.intops.requantize`) of one DeiT-Tiny block at batch 8, computed

* by :mod:`sw.intops` (numpy, whole-array passes: the reference),
* by the same passes written with torch integer tensors (``torch``, 1 and 2 threads),
* by the fused one-pass kernels of :mod:`sw.fastkernels` (numba, one thread),

each checked equal to the reference, best of ``--repeats``.  Numbers only.

    python benchmarks/bench_kernels.py [--repeats 10]
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def _best(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def torch_lis_softmax(x, frac_bits, b_int, c_int):
    """:func:`sw.intops.lis_softmax` as torch integer passes (same steps, same widths)."""
    import torch
    x = x.to(torch.int32)
    x = x - x.amax(-1, keepdim=True)
    x = torch.clamp_min(x, -(15 << frac_bits))
    q = torch.bitwise_right_shift(-x, frac_bits)
    r = x + torch.bitwise_left_shift(q, frac_bits)
    poly = (r + b_int) * r + c_int
    if int(poly.min()) < 0 or int(poly.max()) > 65535:
        raise OverflowError("exp polynomial")
    e = torch.bitwise_left_shift(poly.to(torch.int64), 15 - q.to(torch.int64))
    total = e.sum(-1, keepdim=True)
    es = torch.bitwise_right_shift(e * 92682, 16)

    def bit_length(v):
        return torch.frexp(v.to(torch.float64)).exponent.to(torch.int64)

    diff = bit_length(total) - bit_length(es)
    shifted = torch.bitwise_left_shift(es, diff.clamp(0, 62))
    code = torch.where(diff >= 0, diff + (shifted <= total).to(torch.int64), torch.zeros_like(diff))
    code = torch.where(es == 0, torch.full_like(code, 15), code)
    return code.clamp_max(15).to(torch.uint8)


def torch_requantize(acc, mult, shift, offset, lo, hi):
    import torch
    half = torch.where(shift > 0, torch.bitwise_left_shift(torch.ones_like(shift), (shift - 1).clamp_min(0)), 0)
    y = torch.bitwise_right_shift(acc.to(torch.int64) * mult + half, shift) + offset
    return y.clamp(lo, hi).to(torch.int8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    import torch

    from sw import fastkernels, intops
    rng = np.random.default_rng(0)
    b, h, t, d, hid = 8, 3, 197, 192, 768
    frac = 5
    b_int, c_int = intops.lis_exp_constants(frac)
    scores = rng.normal(0, 600, size=(b, h, t, t)).clip(-32768, 32767).astype(np.int16)
    acc = rng.integers(-(1 << 20), 1 << 20, size=(b * t, hid)).astype(np.int64)
    mult = rng.integers(8000, 30000, size=hid)
    shift = rng.integers(20, 28, size=hid)

    want = intops.lis_softmax(scores, frac, b_int, c_int)
    rows = scores.reshape(-1, t)
    out = np.empty(rows.shape, np.uint8)
    no_w = np.empty((0, 0), np.float32)
    fastkernels.softmax_rows(rows, frac, b_int, c_int, True, out, no_w)
    ts = torch.from_numpy(scores)
    assert np.array_equal(out.reshape(want.shape), want)
    assert np.array_equal(torch_lis_softmax(ts, frac, b_int, c_int).numpy(), want)
    rq_want = intops.requantize(acc, mult, shift, 3)
    acc_f = acc.astype(np.float32)[None]
    rq = np.empty(acc.shape, np.int8)
    scale = np.ldexp(mult.astype(np.float64), -shift)
    fastkernels.requantize_rows(acc_f, np.zeros(hid), scale, 3.0, -128.0, 127.0, rq)
    ta, tm, tsh = torch.from_numpy(acc), torch.from_numpy(mult), torch.from_numpy(shift)
    assert np.array_equal(rq, rq_want)
    assert np.array_equal(torch_requantize(ta, tm, tsh, 3, -128, 127).numpy(), rq_want)

    n_sm, n_rq = scores.size, acc.size
    res = {}
    res["numpy reference"] = (_best(lambda: intops.lis_softmax(scores, frac, b_int, c_int), args.repeats),
                              _best(lambda: intops.requantize(acc, mult, shift, 3), args.repeats))
    for threads in (1, 2):
        torch.set_num_threads(threads)
        res[f"torch integer ops, {threads} thread(s)"] = (
            _best(lambda: torch_lis_softmax(ts, frac, b_int, c_int), args.repeats),
            _best(lambda: torch_requantize(ta, tm, tsh, 3, -128, 127), args.repeats))
    res["numba fused kernel, 1 thread"] = (
        _best(lambda: fastkernels.softmax_rows(rows, frac, b_int, c_int, True, out, no_w), args.repeats),
        _best(lambda: fastkernels.requantize_rows(acc_f, np.zeros(hid), scale, 3.0, -128.0, 127.0, rq),
              args.repeats))
    print(f"one DeiT-Tiny block, batch {b}: LIS softmax of {n_sm:,} scores, requantization of "
          f"{n_rq:,} fc1 accumulators (ms, best of {args.repeats}; ns per element)")
    for k, (a, r) in res.items():
        print(f"  {k:<32} softmax {a:7.2f} ms ({a * 1e6 / n_sm:5.1f} ns)   requantize {r:6.2f} ms "
              f"({r * 1e6 / n_rq:4.1f} ns)")


if __name__ == "__main__":
    main()
