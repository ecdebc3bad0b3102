"""The digits accuracy table: FP32 vs fake-quant vs the integer executor.

A small timm ViT is trained on scikit-learn's ``digits`` (:mod:`sw.digits`), then quantized
with each calibration observer in four settings, FQ-ViT's ablation on our data:

=====================  =======  ====  ==================================
setting                W/A/Att  PTF   softmax
=====================  =======  ====  ==================================
``8/8/8``              8/8/8    no    uniform 8-bit
``8/8/8 +PTF``         8/8/8    yes   uniform 8-bit
``8/8/4 +LIS``         8/8/4    no    Log-Int-Softmax 4-bit codes
``8/8/4 +PTF +LIS``    8/8/4    yes   Log-Int-Softmax 4-bit codes
=====================  =======  ====  ==================================

Each row gives the held-out top-1 of the fake-quant model (:mod:`sw.fakequant`) and of the
integer executor, and how often their labels agree.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .executor import execute
from .fakequant import fakequant_execute
from .observers import OBSERVERS
from .quantize import calibrate, quantize, quantize_input

#: (label, attention bits, PTF) of each setting, in table order.
SETTINGS = (("8/8/8", 8, False), ("8/8/8 +PTF", 8, True),
            ("8/8/4 +LIS", 4, False), ("8/8/4 +PTF +LIS", 4, True))
#: Training images used for calibration.
CALIB_IMAGES = 128


@dataclass
class AccuracyRow:
    method: str
    setting: str
    attn_bits: int
    ptf: bool
    fakequant_top1: float
    integer_top1: float
    label_agreement: float


@dataclass
class AccuracyReport:
    fp32_top1: float
    test_images: int
    calib_images: int
    seeds: tuple[int, ...]
    rows: list[AccuracyRow] = field(default_factory=list)
    seconds: float = 0.0
    model: str = "vit"


def _top1(labels: np.ndarray, truth: np.ndarray) -> float:
    return 100.0 * float(np.mean(labels == truth))


def accuracy_table(seeds=(0,), methods=OBSERVERS, settings=SETTINGS, progress: bool = True,
                   retrain: bool = False, fast: bool = True, model: str = "vit") -> AccuracyReport:
    """Load (shipped or cached) or train the digits ViT of each seed and measure every
    (method, setting) pair; with several seeds every number is the mean over the seeds.
    ``model``: ``vit`` (:mod:`sw.digits`) or ``swin``, the tiny Swin of :mod:`sw.digits_swin`.
    ``retrain``: train seed 0 on this machine instead of using the shipped model.
    ``fast``: the integer graphs run on :mod:`sw.fastexec` (the same integers as the
    reference executor, faster); false runs :func:`sw.executor.execute`."""
    from tqdm.auto import tqdm
    from .digits import evaluate_float, load_or_train
    if model == "swin":
        from .digits_swin import load_or_train
    elif model != "vit":
        raise ValueError(f"unknown digits model {model!r} (vit or swin)")
    t0 = time.perf_counter()
    seeds = tuple(seeds)
    fp32, cells = [], {}
    with tqdm(total=len(seeds) * len(methods) * len(settings), desc="quantizing", disable=not progress,
              leave=False) as bar:
        for seed in seeds:
            net, split = load_or_train(seed=seed, progress=progress, retrain=retrain)
            calib = split.train_x[:CALIB_IMAGES]
            fp32.append(_top1(evaluate_float(net, split.test_x), split.test_y))
            for method in methods:
                obs = calibrate(net, calib, method, progress=False)
                for label, attn_bits, ptf in settings:
                    g = quantize(net, calib, observer=method, attn_bits=attn_bits, ptf=ptf,
                                 progress=False, observers=obs)
                    x = quantize_input(split.test_x, g)
                    lab_int = execute(g, x, fast=fast)["logits"].argmax(1)
                    lab_fq = fakequant_execute(g, x)["logits"].argmax(1)
                    cells.setdefault((method, label, attn_bits, ptf), []).append(
                        (_top1(lab_fq, split.test_y), _top1(lab_int, split.test_y),
                         100.0 * float(np.mean(lab_fq == lab_int))))
                    bar.update()
    report = AccuracyReport(float(np.mean(fp32)), len(split.test_y), len(calib), seeds, model=model)
    for (method, label, attn_bits, ptf), vals in cells.items():
        fq, integer, agree = np.mean(vals, axis=0)
        report.rows.append(AccuracyRow(method, label, attn_bits, ptf, float(fq), float(integer), float(agree)))
    report.seconds = time.perf_counter() - t0
    return report


def table_lines(head: list[str], rows: list[list[str]], markdown: bool = False) -> list[str]:
    """A table as markdown lines, or as left-aligned text columns under a dashed rule."""
    if markdown:
        return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in rows]


def format_table(report: AccuracyReport, markdown: bool = False) -> str:
    """The table as aligned text, or as a markdown table."""
    head = ["method", "W/A/Att", "PTF", "LIS", "FP32", "fake-quant", "integer", "int vs FP32", "fq/int labels agree"]
    rows = []
    for r in report.rows:
        rows.append([r.method, f"8/8/{r.attn_bits}", "yes" if r.ptf else "no",
                     "yes" if r.attn_bits == 4 else "no", f"{report.fp32_top1:.2f}",
                     f"{r.fakequant_top1:.2f}", f"{r.integer_top1:.2f}",
                     f"{r.integer_top1 - report.fp32_top1:+.2f}", f"{r.label_agreement:.2f}"])
    lines = table_lines(head, rows, markdown)
    lines.append("")
    lines.append(("tiny Swin, " if report.model == "swin" else "") + f"digits test split: {report.test_images} images; calibration: {report.calib_images} "
                 f"training images; top-1 in %; "
                 + (f"seed {report.seeds[0]}" if len(report.seeds) == 1 else
                    f"mean over training seeds {', '.join(map(str, report.seeds))}"))
    return "\n".join(lines)
