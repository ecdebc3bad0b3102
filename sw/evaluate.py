"""Top-1 / top-5 of an integer graph, its fake-quant model and the float model on an image
folder (:mod:`sw.imagefolder`), one pass over the images for all three.

* **integer**: the integer graph, by :class:`sw.fastexec.FastExecutor` (or the reference
  :func:`sw.executor.execute`); the images are quantized to the graph's int8 input by
  :func:`sw.quantize.quantize_input`.
* **fakequant**: :func:`sw.fakequant.fakequant_execute` on the same int8 input.
* **float**: the timm model itself (float32) on the preprocessed images.

Top-k counts an image when its label is among the ``k`` largest logits, ties broken towards
the lower class index (integer logits can tie), as ``vitamin run`` prints them.
"""
from __future__ import annotations

import time

import numpy as np

from .graph import IntGraph
from .imagefolder import (ImageFolderError, batches, class_indices, data_config, default_workers,
                          open_folder, sample_indices)

__all__ = ["MODELS", "evaluate_folder", "topk_hits"]

#: What can be evaluated, in table order.
MODELS = ("integer", "fakequant", "float")


def topk_hits(logits: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per image: is the label among the ``k`` largest logits (stable order: ties go to the
    lower class index)."""
    order = np.argsort(-np.asarray(logits, dtype=np.float64), axis=1, kind="stable")[:, :k]
    return (order == labels[:, None]).any(axis=1)


def _check_model(graph: IntGraph, model, cfg: dict) -> None:
    want = tuple(graph.info.get("image_shape", ()))
    if tuple(cfg["input_size"]) != want:
        raise ImageFolderError(f"the model's preprocessing gives {tuple(cfg['input_size'])} images; "
                               f"the graph expects {want}")
    classes = int(graph.tensors[graph.outputs[0]].shape[-1])
    if getattr(model, "num_classes", classes) != classes:
        raise ImageFolderError(f"the float model has {model.num_classes} classes, the graph {classes}")


def evaluate_folder(graph: IntGraph, model, root, models=MODELS, limit: int | None = None, seed: int = 0,
                    batch: int = 32, workers: int | None = None, class_map=None, fast: bool = True,
                    threads: int | None = None, progress: bool = True) -> dict:
    """Evaluate ``models`` (a subset of :data:`MODELS`) on the images of ``root``.

    ``model`` is the float timm model the graph was quantized from; its evaluation
    preprocessing is used for every model.  ``limit``: that many images drawn at random
    (seeded by ``seed``).  Returns a JSON-serializable report (top-1 / top-5 in %, time and
    images per second of each model, label agreement between them).
    """
    import torch
    from tqdm.auto import tqdm

    from .executor import execute
    from .fakequant import fakequant_execute
    from .fastexec import FastExecutor
    from .quantize import quantize_input

    models = [m for m in MODELS if m in models]
    if not models:
        raise ValueError(f"nothing to evaluate: choose from {', '.join(MODELS)}")
    cfg = data_config(model)
    _check_model(graph, model, cfg)
    folder = open_folder(root, model)
    n_classes = int(graph.tensors[graph.outputs[0]].shape[-1])
    targets, how = class_indices(folder.classes, model, n_classes, class_map)
    targets = np.asarray(targets, dtype=np.int64)
    idx = sample_indices(len(folder), limit, seed)
    out_name = graph.outputs[0]
    k5 = min(5, n_classes)
    integer = FastExecutor(graph, threads).run if fast else (lambda x: execute(graph, x))

    hits = {m: [0, 0] for m in models}
    seconds = dict.fromkeys(models, 0.0)
    top1: dict[str, list[np.ndarray]] = {m: [] for m in models}
    done = 0
    t_start = time.perf_counter()
    model.eval()
    workers = default_workers() if workers is None else workers
    with torch.no_grad(), tqdm(total=len(idx), desc="evaluating", unit="img", disable=None if progress else True,
                               dynamic_ncols=True) as bar:
        for images, folder_idx in batches(folder, idx, cfg["input_size"], batch, workers):
            labels = targets[folder_idx]
            logits = {}
            if "integer" in models or "fakequant" in models:
                xq = quantize_input(images, graph)
            if "integer" in models:
                t0 = time.perf_counter()
                logits["integer"] = integer(xq)[out_name]
                seconds["integer"] += time.perf_counter() - t0
            if "fakequant" in models:
                t0 = time.perf_counter()
                logits["fakequant"] = fakequant_execute(graph, xq)[out_name]
                seconds["fakequant"] += time.perf_counter() - t0
            if "float" in models:
                t0 = time.perf_counter()
                logits["float"] = model(torch.from_numpy(images)).float().numpy()
                seconds["float"] += time.perf_counter() - t0
            for m, lg in logits.items():
                hits[m][0] += int(topk_hits(lg, labels, 1).sum())
                hits[m][1] += int(topk_hits(lg, labels, k5).sum())
                top1[m].append(np.argsort(-np.asarray(lg, np.float64), axis=1, kind="stable")[:, 0])
            done += len(labels)
            bar.update(len(labels))
            bar.set_postfix({f"{m} top-1": f"{100 * hits[m][0] / done:.1f}%" for m in models}, refresh=False)
    n = len(idx)
    report = {
        "data": str(folder.root), "images": n, "folder_images": len(folder), "classes": len(folder.classes),
        "labels": how, "limit": limit, "seed": seed if limit is not None and limit < len(folder) else None,
        "model": graph.info.get("model"), "executor": "fast" if fast else "reference",
        "preprocessing": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
        "results": {m: {"top1": 100.0 * hits[m][0] / n, "top5": 100.0 * hits[m][1] / n, "k": k5,
                        "seconds": seconds[m], "images_per_second": n / seconds[m] if seconds[m] else None}
                    for m in models},
        "seconds": time.perf_counter() - t_start,
    }
    labels = {m: np.concatenate(v) for m, v in top1.items()}
    report["top1_agreement"] = {f"{a}/{b}": 100.0 * float(np.mean(labels[a] == labels[b]))
                                for i, a in enumerate(models) for b in models[i + 1:]}
    return report
