"""Calibration observers: collect activation statistics and choose quantization ranges.

FQ-ViT's four observers, as published (see ``shared/notes/algorithms.md``):

``minmax``      running minimum and maximum over all calibration batches;
``ema``         minimum and maximum smoothed across batches with momentum 0.01;
``percentile``  per batch the 0.001 % and 99.999 % percentiles, smoothed with momentum 0.01;
``omse``        the min/max range shrunk by ``1 - 0.01 i`` (i < 90), keeping the shrink that
                minimizes the L2 quantization error on a sample of the calibration data.

Every observer also keeps per-channel minima/maxima and a bounded, seeded sample of rows of
the last batch, which OMSE needs.  The Power-of-Two-Factor search (:class:`PtfSearch`) runs
over every calibration row in a second pass, once the observer's range is final.
Calibration runs the float model; observers see float activations only.
"""
from __future__ import annotations

import numpy as np

OBSERVERS = ("minmax", "ema", "percentile", "omse")

#: Momentum of the EMA and percentile observers (FQ-ViT's ``ema_sigma``).
EMA_MOMENTUM = 0.01
#: Percentile of the percentile observer (and its mirror at the low end).
PERCENTILE = 0.99999
#: Rows (vectors along the last axis) of the last batch kept for OMSE.
SAMPLE_ROWS = 512


class Observer:
    """Statistics of one activation tensor over the calibration set."""

    def __init__(self, method: str = "minmax", seed: int = 0) -> None:
        if method not in OBSERVERS:
            raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(OBSERVERS)}")
        self.method = method
        self.lo: float | None = None
        self.hi: float | None = None
        self.ch_lo: np.ndarray | None = None
        self.ch_hi: np.ndarray | None = None
        self.sample: np.ndarray | None = None
        #: The Power-of-Two Factor search over every calibration row (set by calibration).
        self.ptf: PtfSearch | None = None
        self._rng = np.random.default_rng(seed)

    def observe(self, x: np.ndarray) -> None:
        """Record one batch (any shape; channels on the last axis)."""
        x = np.asarray(x, dtype=np.float64)
        rows = x.reshape(-1, x.shape[-1])
        if self.method == "percentile":
            flat = rows.ravel()
            lo = float(np.quantile(flat, 1.0 - PERCENTILE))
            hi = float(np.quantile(flat, PERCENTILE))
        else:
            lo, hi = float(rows.min()), float(rows.max())
        if self.lo is None or self.method in ("minmax", "omse"):
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
        else:
            self.lo += EMA_MOMENTUM * (lo - self.lo)
            self.hi += EMA_MOMENTUM * (hi - self.hi)
        clo, chi = rows.min(axis=0), rows.max(axis=0)
        self.ch_lo = clo if self.ch_lo is None else np.minimum(self.ch_lo, clo)
        self.ch_hi = chi if self.ch_hi is None else np.maximum(self.ch_hi, chi)
        keep = rows if len(rows) <= SAMPLE_ROWS else rows[self._rng.choice(len(rows), SAMPLE_ROWS, replace=False)]
        self.sample = keep.copy()

    @property
    def ready(self) -> bool:
        return self.lo is not None

    def range(self, symmetric: bool = False) -> tuple[float, float]:
        """The chosen ``(lo, hi)``, always containing 0 (zero must be exact)."""
        if not self.ready:
            raise RuntimeError("observer saw no data")
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if self.method == "omse":
            lo, hi = self._omse(lo, hi, symmetric)
        if symmetric:
            m = max(-lo, hi)
            lo, hi = -m, m
        if hi - lo < 1e-12:
            hi = lo + 1e-12
        return lo, hi

    def _omse(self, lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
        best, best_err = (lo, hi), np.inf
        x = self.sample
        for i in range(90):
            f = 1.0 - 0.01 * i
            clo, chi = lo * f, hi * f
            if symmetric:
                m = max(-clo, chi)
                clo, chi = -m, m
            scale, zp = affine_params(clo, chi)
            err = float(np.sum((fake_quant(x, scale, zp) - x) ** 2))
            if err < best_err:
                best, best_err = (clo, chi), err
        return best


def affine_params(lo: float, hi: float) -> tuple[float, int]:
    """int8 scale and zero point covering ``[lo, hi]``: ``real = scale * (q - zp)``."""
    scale = (hi - lo) / 255.0
    zp = int(np.clip(-128 - np.round(lo / scale), -128, 127))
    return scale, zp


def symmetric_scale(lo: float, hi: float) -> float:
    """int8 symmetric scale (zero point 0) covering ``[-m, m]``, ``m = max(|lo|, |hi|)``."""
    return max(-lo, hi, 1e-12) / 127.0


def quantize_int8(x: np.ndarray, scale, zp) -> np.ndarray:
    """Real values onto the int8 grid ``real = scale (q - zp)``: round half up, clamp."""
    return np.clip(np.floor(np.asarray(x) / scale + 0.5) + zp, -128, 127).astype(np.int8)


def fake_quant(x: np.ndarray, scale, zp) -> np.ndarray:
    """Quantize to int8 (round half up, clamp) and back to float."""
    return (quantize_int8(x, scale, zp).astype(np.float64) - zp) * scale


class PtfSearch:
    """Power-of-Two Factor search (FQ-ViT, ``K = 3``) over every row it is shown.

    The per-tensor grid is fixed first from the observer's final range: ``s8`` and ``zp``
    cover it, ``s1 = s8 / 2**k``.  :meth:`observe` then adds, per channel and per factor
    ``alpha`` in ``0..k``, the squared error of quantizing the rows onto ``s1 * 2**alpha``
    (memory: ``(k + 1) x C`` sums, whatever the number of rows).  :meth:`factors` picks the
    factor of least total error per channel.
    """

    def __init__(self, obs: Observer, k: int = 3) -> None:
        lo, hi = obs.range()
        self.s8, self.zp = affine_params(lo, hi)
        self.k = k
        self.s1 = self.s8 / (1 << k)
        self.errors: np.ndarray | None = None
        self.rows = 0

    def observe(self, x: np.ndarray) -> None:
        rows = np.asarray(x, dtype=np.float64)
        rows = rows.reshape(-1, rows.shape[-1])
        err = np.stack([np.sum((fake_quant(rows, self.s1 * (1 << a), self.zp) - rows) ** 2, axis=0)
                        for a in range(self.k + 1)])
        self.errors = err if self.errors is None else self.errors + err
        self.rows += len(rows)

    def factors(self) -> tuple[float, int, np.ndarray]:
        """``(s1, zp, alpha)``: channel ``c`` has scale ``s1 * 2**alpha[c]``."""
        if self.errors is None:
            raise RuntimeError("the PTF search saw no data")
        return self.s1, self.zp, np.argmin(self.errors, axis=0).astype(np.int64)


def ptf_factors(obs: Observer, k: int = 3, rows: np.ndarray | None = None) -> tuple[float, int, np.ndarray]:
    """Power-of-Two Factor quantization of a LayerNorm input (FQ-ViT, ``K = 3``).

    Returns ``(s1, zp, alpha)``: channel ``c`` has scale ``s1 * 2**alpha[c]``, with
    ``s1 = s8 / 2**k`` where ``s8`` covers the whole tensor's range, and ``alpha[c]`` in
    ``0..k`` minimizing that channel's quantization error: over every calibration row when
    calibration ran the search (``obs.ptf``, a :class:`PtfSearch`), else over ``rows``.
    """
    search = getattr(obs, "ptf", None)
    if search is None or search.k != k:
        if rows is None:
            raise ValueError("no PTF search was run for this observer and no rows were given")
        search = PtfSearch(obs, k)
        search.observe(rows)
    return search.factors()
