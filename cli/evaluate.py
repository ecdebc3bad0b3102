"""``vitamin evaluate model.npz --data DIR``: top-1 / top-5 of the integer graph, its
fake-quant model and the float model on an image folder (ImageFolder layout, e.g. ImageNet
val), with the model's own preprocessing (:mod:`sw.evaluate`, :mod:`sw.imagefolder`).

The float model is rebuilt from the graph's record: the timm name, the checkpoint
(``--checkpoint`` overrides it) or, for random weights, the seed ``vitamin quantize`` used.
"""
from __future__ import annotations

import json
from pathlib import Path

from cli.main import UserError


def add_arguments(parser) -> None:
    from sw.evaluate import MODELS
    parser.add_argument("graph", help="integer graph file (.npz) from `vitamin quantize`")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="image folder: DIR/<class>/<image> (e.g. ImageNet val in synset folders)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="what to evaluate (default: all three)")
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="only N images, drawn at random (seeded by --seed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default: 0)")
    parser.add_argument("--class-map", default=None, metavar="FILE",
                        help="folder name -> class index: JSON object, or one folder name per line in "
                             "class order (default: WordNet-id folders map through timm's ImageNet "
                             "synsets, other folders in sorted order)")
    parser.add_argument("--checkpoint", default=None, metavar="FILE",
                        help="weights of the float model (default: the graph's own record)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="data-loading processes (default: the cores, at most 4)")
    parser.add_argument("--reference", action="store_true",
                        help="run the integer graph on the numpy reference executor (slow) instead of "
                             "the fast one (the same integers)")
    parser.add_argument("-o", "--output", default=None, metavar="FILE.json", help="write the results as JSON")


def float_model(graph, checkpoint: str | None):
    """The timm model the graph was quantized from (random weights from the recorded seed)."""
    import torch
    from sw.quantize import UnsupportedModelError, create_model
    info = graph.info
    name = info.get("model")
    if not name:
        raise UserError("the graph does not record its timm model name")
    ckpt = checkpoint if checkpoint is not None else info.get("checkpoint")
    if ckpt is not None and not Path(ckpt).is_file():
        raise UserError(f"checkpoint {ckpt} not found" + ("" if checkpoint else
                        " (the graph records it; give --checkpoint FILE)"))
    torch.manual_seed(int(info.get("seed", 0)))
    try:
        return create_model(name, ckpt)
    except (UnsupportedModelError, ValueError) as exc:
        raise UserError(str(exc)) from None


def format_report(rep: dict) -> str:
    lines = [f"{rep['model']}: {rep['images']} images of {rep['data']} ({rep['classes']} classes, "
             f"labels from {rep['labels']}); integer graph on the {rep['executor']} executor", "",
             f"{'model':<10}  {'top-1':>7}  {'top-5':>7}  {'images/s':>9}"]
    for m, r in rep["results"].items():
        ips = f"{r['images_per_second']:.1f}" if r["images_per_second"] else "-"
        lines.append(f"{m:<10}  {r['top1']:>6.2f}%  {r['top5']:>6.2f}%  {ips:>9}")
    if rep["top1_agreement"]:
        lines.append("")
        lines.append("top-1 labels agree: " + ", ".join(f"{k} {v:.2f}%" for k, v in rep["top1_agreement"].items()))
    lines.append(f"({rep['seconds']:.1f} s)")
    return "\n".join(lines)


def run(args) -> int:
    from sw.evaluate import evaluate_folder
    from sw.graph import IntGraph, atomic_write_bytes
    from sw.imagefolder import ImageFolderError
    if args.limit is not None and args.limit < 1:
        raise UserError("--limit must be at least 1")
    if args.batch < 1:
        raise UserError("--batch must be at least 1")
    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be 0 or more")
    graph = IntGraph.load(args.graph)
    fast = not args.reference
    if fast:
        from sw.fastexec import available
        if not available():
            raise UserError("the fast executor needs numba (pip install numba), or use --reference")
    model = float_model(graph, args.checkpoint)
    try:
        rep = evaluate_folder(graph, model, args.data, models=args.models, limit=args.limit, seed=args.seed,
                              batch=args.batch, workers=args.workers, class_map=args.class_map, fast=fast)
    except ImageFolderError as exc:
        raise UserError(str(exc)) from None
    rep["graph"] = str(args.graph)
    print(format_report(rep))
    if args.output:
        try:
            atomic_write_bytes(Path(args.output), (json.dumps(rep, indent=1) + "\n").encode())
        except OSError as exc:
            raise UserError(f"cannot write {args.output}: {exc}") from None
        print(f"wrote {args.output}")
    return 0
