"""``vitamin run model.npz [--images FILE.npy] [--top 5] [--reference]``: integer inference, top-k classes.

The fast executor (:mod:`sw.fastexec`) runs the graph; ``--reference`` runs the numpy
reference executor instead (the same integers, several times slower).

Images: a ``.npy`` array of one image or a batch.  Float arrays are taken as already
normalized model input ``[N, C, H, W]``; uint8 arrays as pixels ``[N, H, W, C]`` or
``[N, C, H, W]``, scaled to [0, 1] and normalized with the model's mean and std.  Without
``--images``, one seeded random image.
"""
from __future__ import annotations

import time

import numpy as np

from cli.main import UserError


def add_arguments(parser) -> None:
    parser.add_argument("graph", help="integer graph file (.npz) from `vitamin quantize`")
    parser.add_argument("--images", default=None, metavar="FILE.npy", help="images to classify (default: one random image)")
    parser.add_argument("--top", type=int, default=5, help="classes to print per image (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random image")
    parser.add_argument("--reference", action="store_true",
                        help="use the numpy reference executor instead of the fast one (the same integers)")


def model_input(array: np.ndarray, graph) -> np.ndarray:
    """Float ``[N, C, H, W]`` model input from a user's array (see the module docstring)."""
    c, h, w = graph.info["image_shape"]
    a = np.asarray(array)
    if a.ndim == 3:
        a = a[None]
    if a.dtype == np.uint8:
        if a.ndim == 4 and a.shape[1:] == (h, w, c) and a.shape[1:] != (c, h, w):
            a = a.transpose(0, 3, 1, 2)
        if a.ndim == 4 and a.shape[1:] == (c, h, w):
            mean = np.asarray(graph.info["mean"]).reshape(1, c, 1, 1)
            std = np.asarray(graph.info["std"]).reshape(1, c, 1, 1)
            a = (a / 255.0 - mean) / std
    elif a.dtype.kind != "f":
        raise UserError(f"images must be float (normalized) or uint8 (pixels), not {a.dtype}")
    if a.ndim != 4 or a.shape[1:] != (c, h, w):
        raise UserError(f"images of shape {tuple(np.shape(array))}; the model expects "
                        f"[N, {c}, {h}, {w}] (float, normalized) or [N, {h}, {w}, {c}] (uint8 pixels)")
    if not np.all(np.isfinite(a)):
        raise UserError("images contain NaN or infinite values")
    return a.astype(np.float64)


def run(args) -> int:
    from cli.quantize import load_image_file
    from sw.executor import execute
    from sw.fastexec import available as fast_available
    from sw.graph import IntGraph
    from sw.quantize import quantize_input, random_images
    if args.top < 1:
        raise UserError("--top must be at least 1")
    graph = IntGraph.load(args.graph)
    if args.images:
        images = model_input(load_image_file(args.images), graph)
        source = args.images
    else:
        images = random_images(tuple(graph.info["image_shape"]), 1, args.seed,
                               graph.info["mean"], graph.info["std"])
        source = f"random image (seed {args.seed})"
    fast = not args.reference and fast_available()
    t0 = time.perf_counter()
    logits = execute(graph, quantize_input(images, graph), fast=fast)[graph.outputs[0]]
    dt = time.perf_counter() - t0
    scale = graph.tensors[graph.outputs[0]].scale
    print(f"{graph.info.get('model', 'model')}: {len(images)} image(s) from {source}, "
          f"integer inference in {dt:.2f} s ({'fast' if fast else 'reference'} executor)")
    k = min(args.top, logits.shape[1])
    for i, row in enumerate(logits):
        top = np.argsort(-row, kind="stable")[:k]
        print(f"image {i}: " + "  ".join(f"class {c} ({row[c] * scale:+.3f})" for c in top))
    return 0
