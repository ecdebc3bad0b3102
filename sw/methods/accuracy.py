"""One accuracy table for every integer method on the digits ViT (``vitamin accuracy --method``).

Every row quantizes the same float model (the shipped seed-0 digits ViT, or the model of
each seed) on the same 128 training images and evaluates the held-out split with the
fake-quant model (:mod:`sw.fakequant`) and the integer executor:

=================  =======  ====================================================================
row                W/A      procedure
=================  =======  ====================================================================
FQ-ViT             8/8      MinMax, PTF, uniform 8-bit softmax (attention 8 bits)
FQ-ViT             8/8/4    MinMax, PTF, Log-Int-Softmax (attention 4 bits; the default)
I-ViT              8/8      PTQ: MinMax calibration of I-ViT's ops (16-bit stream)
I-ViT              8/8      QAT: :func:`sw.methods.ivit_qat.qat_ivit` from the float model,
                            then calibrated; its FP32 column is the fine-tuned float model
PTQ4ViT            8/8      PTQ: Hessian-guided search (labels of the calibration images)
PTQ4ViT            6/6      the same at 6 bits
Q-ViT              4/4      QAT (:mod:`sw.methods.qvit`): LSQ+, IRM and DGD from the float model;
                            its FP32 column is the float model
=================  =======  ====================================================================

:func:`qvit_ablation` is the paper's ablation at W4A4, W3A3 and W2A2 (``vitamin accuracy
--qvit-ablation``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..accuracy import table_lines
from ..executor import execute
from ..fakequant import fakequant_execute
from ..graph import METHODS
from ..quantize import calibrate, quantize, quantize_input

__all__ = ["method_table", "format_method_table", "qvit_ablation", "format_qvit_ablation", "MethodRow", "MethodReport", "CALIB_IMAGES"]

#: Training images used for calibration (as the FQ-ViT observer table).
CALIB_IMAGES = 128


@dataclass
class MethodRow:
    method: str
    label: str
    bits: str
    procedure: str
    fp32_top1: float
    fakequant_top1: float
    integer_top1: float
    label_agreement: float
    seconds: float = 0.0
    graph_file: str | None = None


@dataclass
class MethodReport:
    fp32_top1: float
    test_images: int
    calib_images: int
    seeds: tuple[int, ...]
    rows: list[MethodRow] = field(default_factory=list)
    seconds: float = 0.0


def _top1(labels, truth) -> float:
    return 100.0 * float(np.mean(labels == truth))


def _settings(methods, qat_epochs: int):
    """(method, label, W/A, procedure, builder) of every row, in table order."""
    rows = []
    if "fqvit" in methods:
        rows.append(("fqvit", "FQ-ViT", "8/8", "PTQ, MinMax, PTF, 8-bit softmax",
                     lambda mdl, sp, calib, obs: quantize(mdl, calib, attn_bits=8, progress=False, observers=obs)))
        rows.append(("fqvit", "FQ-ViT", "8/8/4", "PTQ, MinMax, PTF, Log-Int-Softmax",
                     lambda mdl, sp, calib, obs: quantize(mdl, calib, attn_bits=4, progress=False, observers=obs)))
    if "ivit" in methods:
        rows.append(("ivit", "I-ViT", "8/8", "PTQ, MinMax",
                     lambda mdl, sp, calib, obs: quantize(mdl, calib, method="ivit", progress=False, observers=obs)))
        if qat_epochs > 0:
            rows.append(("ivit", "I-ViT", "8/8", f"QAT, {qat_epochs} epochs", "qat"))
    if "ptq4vit" in methods:
        for bits in (8, 6):
            rows.append(("ptq4vit", "PTQ4ViT", f"{bits}/{bits}", "PTQ, Hessian-guided search",
                         lambda mdl, sp, calib, obs, bits=bits: quantize(
                             mdl, calib, method="ptq4vit", bits=bits, labels=sp.train_y[:len(calib)],
                             progress=False, observers=obs)))
    if "qvit" in methods and qat_epochs > 0:
        rows.append(("qvit", "Q-ViT", "4/4", "QAT, LSQ+, IRM, DGD", "qvit"))
    return rows


def method_table(methods=METHODS, seeds=(0,), qat_epochs: int | None = None, progress: bool = True,
                 retrain: bool = False, save_dir: str | None = None, fast: bool = True) -> MethodReport:
    """Measure every method's rows on the digits ViT of each seed (means over the seeds).
    ``save_dir``: also write every graph there (``digits_seed<s>_<method>_<bits>[_qat].npz``).
    ``fast``: the integer graphs run on :mod:`sw.fastexec` (the same integers as the
    reference executor, faster); false runs the numpy reference."""
    from tqdm.auto import tqdm
    from ..digits import evaluate_float, load_or_train
    from .ivit_qat import QAT_EPOCHS, qat_ivit
    qat_epochs = QAT_EPOCHS if qat_epochs is None else qat_epochs
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    t0 = time.perf_counter()
    seeds = tuple(seeds)
    settings = _settings(methods, qat_epochs)
    fp32, cells, files = [], {}, {}
    with tqdm(total=len(seeds) * len(settings), desc="methods", disable=not progress, leave=False) as bar:
        for seed in seeds:
            model, split = load_or_train(seed=seed, progress=progress, retrain=retrain)
            calib = split.train_x[:CALIB_IMAGES]
            base = _top1(evaluate_float(model, split.test_x), split.test_y)
            fp32.append(base)
            obs = calibrate(model, calib, "minmax", progress=False)
            for i, (method, label, bits, proc, build) in enumerate(settings):
                bar.set_postfix_str(f"{label} {bits} {proc.split(',')[0]}")
                t1 = time.perf_counter()
                own_fp32 = base
                if build == "qat":
                    res = qat_ivit(model, split.train_x, split.train_y, calib, epochs=qat_epochs, seed=seed,
                                   progress=progress)
                    g = res.graph
                    own_fp32 = _top1(evaluate_float(res.model, split.test_x), split.test_y)
                elif build == "qvit":
                    from .qvit import quantize_qvit
                    g = quantize_qvit(model, bits=4, seed=seed, train_x=split.train_x,
                                      train_y=split.train_y, progress=progress).graph
                else:
                    g = build(model, split, calib, obs)
                x = quantize_input(split.test_x, g)
                lab_int = execute(g, x, fast=fast)["logits"].argmax(1)
                lab_fq = fakequant_execute(g, x)["logits"].argmax(1)
                cells.setdefault(i, []).append((own_fp32, _top1(lab_fq, split.test_y), _top1(lab_int, split.test_y),
                                                100.0 * float(np.mean(lab_fq == lab_int)), time.perf_counter() - t1))
                if save_dir is not None:
                    name = f"digits_seed{seed}_{method}_{bits.replace('/', '-')}{'_qat' if build == 'qat' else ''}.npz"
                    g.save(Path(save_dir) / name)
                    files[i] = name
                bar.update()
    report = MethodReport(float(np.mean(fp32)), len(split.test_y), len(calib), seeds)
    for i, (method, label, bits, proc, _) in enumerate(settings):
        own, fq, integer, agree, secs = np.mean(cells[i], axis=0)
        report.rows.append(MethodRow(method, label, bits, proc, float(own), float(fq), float(integer),
                                     float(agree), float(secs), files.get(i)))
    report.seconds = time.perf_counter() - t0
    return report


def format_method_table(report: MethodReport, markdown: bool = False) -> str:
    """The table as aligned text or markdown."""
    head = ["method", "W/A", "procedure", "FP32", "fake-quant", "integer", "int vs FP32", "fq/int labels agree"]
    rows = [[r.label, r.bits, r.procedure, f"{r.fp32_top1:.2f}", f"{r.fakequant_top1:.2f}",
             f"{r.integer_top1:.2f}", f"{r.integer_top1 - report.fp32_top1:+.2f}", f"{r.label_agreement:.2f}"]
            for r in report.rows]
    lines = table_lines(head, rows, markdown)
    lines.append("")
    lines.append(f"digits test split: {report.test_images} images; calibration: {report.calib_images} "
                 f"training images; top-1 in %; 'int vs FP32' against the original float model "
                 f"({report.fp32_top1:.2f}); "
                 + (f"seed {report.seeds[0]}" if len(report.seeds) == 1 else
                    f"mean over training seeds {', '.join(map(str, report.seeds))}"))
    return "\n".join(lines)


#: The ablation's settings: (label, IRM, DGD).
ABLATION = (("LSQ+ baseline", False, False), ("+IRM", True, False), ("+DGD", False, True), ("+IRM +DGD", True, True))


def qvit_ablation(bits=(4, 3, 2), seed: int = 0, epochs: int | None = None, progress: bool = True,
                  fast: bool = True, lam: float | None = None) -> dict:
    """Q-ViT's ablation on the digits ViT of ``seed``: integer-executor top-1 (and the
    fake-quant network's, and their label agreement) of every :data:`ABLATION` setting at
    every width.  Returns ``{"fp32": top1, "rows": [(bits, label, fq, int, agree, seconds)], ...}``."""
    from ..digits import evaluate_float, load_or_train
    from .qvit import QVIT_EPOCHS, QVIT_LAMBDA, fakequant_logits, quantize_qvit
    epochs = QVIT_EPOCHS if epochs is None else epochs
    lam = QVIT_LAMBDA if lam is None else lam
    t0 = time.perf_counter()
    model, split = load_or_train(seed=seed, progress=progress)
    fp32 = _top1(evaluate_float(model, split.test_x), split.test_y)
    rows = []
    for b in bits:
        for label, irm, dgd in ABLATION:
            t1 = time.perf_counter()
            res = quantize_qvit(model, bits=b, irm=irm, dgd=dgd, lam=lam, epochs=epochs, seed=seed,
                                train_x=split.train_x, train_y=split.train_y, progress=progress)
            lab_fq = fakequant_logits(res.model, split.test_x).argmax(1)
            lab_int = execute(res.graph, quantize_input(split.test_x, res.graph), fast=fast)["logits"].argmax(1)
            rows.append((b, label, _top1(lab_fq, split.test_y), _top1(lab_int, split.test_y),
                         100.0 * float(np.mean(lab_fq == lab_int)), time.perf_counter() - t1))
    return {"fp32": fp32, "rows": rows, "seed": seed, "epochs": epochs, "lam": lam, "test_images": len(split.test_y),
            "seconds": time.perf_counter() - t0}


def format_qvit_ablation(report: dict, markdown: bool = False) -> str:
    """The ablation as aligned text, or as a markdown table."""
    from ..accuracy import table_lines
    head = ["W/A", "setting", "QAT network", "integer executor", "int vs FP32", "labels agree", "seconds"]
    rows = [["32/32", "FP32", f"{report['fp32']:.2f}", "", "", "", ""]]
    rows += [[f"{b}/{b}", label, f"{fq:.2f}", f"{integer:.2f}", f"{integer - report['fp32']:+.2f}",
              f"{agree:.2f}", f"{secs:.0f}"] for b, label, fq, integer, agree, secs in report["rows"]]
    lines = table_lines(head, rows, markdown)
    lines.append("")
    lines.append(f"digits test split: {report['test_images']} images; seed {report['seed']}; {report['epochs']} "
                 f"epochs of QAT per row; DGD lambda {report['lam']:g}; top-1 in %; 'labels agree': QAT network "
                 "vs integer executor.")
    return "\n".join(lines)
