"""``vitamin quantize --model NAME [--method fqvit|ivit|ptq4vit] [--calib ...] -o model.npz``.

Builds the timm model (random weights, or ``--checkpoint FILE``: a timm state dict),
calibrates it on seeded random images, on ``--n-calib`` images drawn at random (seeded) from
an image folder (``--calib-dir DIR``, ImageFolder layout, the model's own preprocessing), or
on ``--calib-images FILE.npy``, with the chosen integer method (FQ-ViT by default; I-ViT's
ops calibrated after training; PTQ4ViT's twin uniform codes with its Hessian-guided search,
whose labels are the float model's own predictions) and writes the integer graph atomically.
"""
from __future__ import annotations

import time

import numpy as np

from cli.main import UserError


def add_arguments(parser) -> None:
    from sw.graph import METHODS
    from sw.observers import OBSERVERS
    from sw.quantize import DEFAULT_CALIB_IMAGES
    parser.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None, metavar="FILE", help="timm state dict to load (default: random weights)")
    parser.add_argument("--method", default="fqvit", choices=METHODS,
                        help="integer method: FQ-ViT, I-ViT (PTQ with its ops) or PTQ4ViT (default: %(default)s)")
    parser.add_argument("--calib", default="minmax", choices=OBSERVERS, help="calibration observer (default: %(default)s)")
    parser.add_argument("--attn-bits", type=int, default=None, choices=(4, 8),
                        help="FQ-ViT: 4: Log-Int-Softmax codes; 8: uniform 8-bit softmax (default: 4)")
    parser.add_argument("--no-ptf", action="store_true",
                        help="FQ-ViT, PTQ4ViT: per-tensor LayerNorm inputs instead of Power-of-Two Factors")
    parser.add_argument("--bits", type=int, default=None, choices=(8, 6, 4, 3, 2),
                        help="PTQ4ViT: W8A8 or W6A6 (default 8); Q-ViT: W4A4, W3A3 or W2A2 (default 4)")
    parser.add_argument("--epochs", type=int, default=None, metavar="N",
                        help="Q-ViT: training epochs over the digits training split (default: 6)")
    parser.add_argument("--dgd-lambda", type=float, default=None, metavar="L",
                        help="Q-ViT: weight of the distribution-guided distillation loss (default: 1.0)")
    parser.add_argument("--no-irm", action="store_true", help="Q-ViT: without the information rectification module")
    parser.add_argument("--no-dgd", action="store_true", help="Q-ViT: without distribution-guided distillation")
    parser.add_argument("--search-rows", type=int, default=None, metavar="N",
                        help="PTQ4ViT: token rows per linear layer in the Hessian search (default: 2048)")
    parser.add_argument("--search-attn-rows", type=int, default=None, metavar="N",
                        help="PTQ4ViT: query rows per attention in the Hessian search (default: 512)")
    parser.add_argument("--search-rounds", type=int, default=None, metavar="N",
                        help="PTQ4ViT: alternating search rounds (default: 3, as the paper)")
    parser.add_argument("--search-candidates", type=int, default=None, metavar="N",
                        help="PTQ4ViT: grid intervals, N + 1 candidates per step (default: 100, as the paper)")
    parser.add_argument("--float-patch-embed", action="store_true", help="keep the patch embedding in float on the host")
    parser.add_argument("--calib-images", default=None, metavar="FILE.npy",
                        help="float calibration images [N, C, H, W], normalized (default: seeded random images)")
    parser.add_argument("--calib-dir", default=None, metavar="DIR",
                        help="calibrate on --n-calib images drawn at random (seeded by --seed) from an image "
                             "folder DIR/<class>/<image>, preprocessed as the model expects")
    parser.add_argument("--n-calib", type=int, default=None,
                        help=f"number of calibration images (random, or from --calib-dir) (default: {DEFAULT_CALIB_IMAGES}; "
                             "Q-ViT: 256 of the digits training split)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and images")
    parser.add_argument("-o", "--output", required=True, help="integer graph file to write (.npz)")


def load_image_file(path: str) -> np.ndarray:
    """A ``.npy`` array, with one-line errors for a missing or unreadable file."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"no such image file: {path}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read image file {path}: {exc}") from None


def method_options(args) -> dict:
    """Keyword arguments of :func:`sw.quantize.quantize` for ``args.method``, with one-line
    errors for options that belong to another method."""
    m = args.method
    if args.attn_bits is not None and m != "fqvit":
        raise UserError(f"--attn-bits applies to FQ-ViT; {m} has its own softmax")
    if args.no_ptf and m == "ivit":
        raise UserError("--no-ptf applies to FQ-ViT and PTQ4ViT; I-ViT's stream is 16-bit without PTF")
    if args.float_patch_embed and m == "ivit":
        raise UserError("--float-patch-embed: I-ViT keeps the patch embedding in the graph")
    search = {"max_rows": args.search_rows, "max_attn_rows": args.search_attn_rows,
              "rounds": args.search_rounds, "eq_n": args.search_candidates}
    given = {k: v for k, v in search.items() if v is not None}
    qvit_given = args.epochs is not None or args.dgd_lambda is not None or args.no_irm or args.no_dgd
    if m != "qvit" and qvit_given:
        raise UserError("--epochs, --dgd-lambda, --no-irm and --no-dgd apply to Q-ViT")
    if m == "qvit":
        if given:
            raise UserError("--search-* apply to PTQ4ViT")
        bits = 4 if args.bits is None else args.bits
        if bits not in (2, 3, 4):
            raise UserError(f"Q-ViT trains at 2, 3 or 4 bits, not {bits}")
        if args.no_ptf or args.float_patch_embed:
            raise UserError("Q-ViT graphs keep PTF and the 8-bit patch embedding")
        if args.epochs is not None and args.epochs < 1:
            raise UserError("--epochs must be at least 1")
        opts = {"method": m, "bits": bits, "irm": not args.no_irm, "dgd": not args.no_dgd, "seed": args.seed}
        if args.epochs is not None:
            opts["epochs"] = args.epochs
        if args.dgd_lambda is not None:
            opts["lam"] = args.dgd_lambda
        return opts
    if m != "ptq4vit" and (given or args.bits is not None):
        raise UserError("--bits applies to PTQ4ViT and Q-ViT, --search-* to PTQ4ViT")
    if m == "ptq4vit" and args.bits not in (None, 8, 6):
        raise UserError(f"PTQ4ViT quantizes at 8 or 6 bits, not {args.bits}")
    flags = {"max_rows": "rows", "max_attn_rows": "attn-rows", "rounds": "rounds", "eq_n": "candidates"}
    for k, v in given.items():
        if v < 1:
            raise UserError(f"--search-{flags[k]} must be at least 1")
    opts = {"method": m, "ptf": not args.no_ptf, "quantize_patch_embed": not args.float_patch_embed}
    if m == "fqvit":
        opts["attn_bits"] = 4 if args.attn_bits is None else args.attn_bits
    if m == "ptq4vit":
        opts.update(bits=8 if args.bits is None else args.bits, **given)
    return opts


def describe(graph) -> str:
    """One phrase for the bit widths of a graph."""
    i = graph.info
    m = i.get("method", "fqvit")
    if m == "ivit":
        return "I-ViT W8/A8, 16-bit residual stream, Shiftmax 16-bit"
    if m == "qvit":
        parts = [x for x, on in (("IRM", i.get("irm")), ("DGD", i.get("dgd"))) if on]
        return (f"Q-ViT W{i['bits']}/A{i['bits']} ({' + '.join(parts) or 'LSQ+ only'}), 8-bit patch embedding "
                f"and head, Log-Int-Softmax")
    if m == "ptq4vit":
        return f"PTQ4ViT W{i['bits']}/A{i['bits']}, twin-uniform softmax and GELU, PTF {'on' if i['ptf'] else 'off'}"
    return f"FQ-ViT W8/A8/attention {i['attn_bits']} bits, PTF {'on' if i['ptf'] else 'off'}"


def run(args) -> int:
    import torch
    from sw.quantize import (DEFAULT_CALIB_IMAGES, UnsupportedModelError, check_supported, create_model, quantize,
                             random_images)
    if args.n_calib is None:
        args.n_calib = 256 if args.method == "qvit" else DEFAULT_CALIB_IMAGES
    if args.n_calib < 1:
        raise UserError("--n-calib must be at least 1")
    opts = method_options(args)
    torch.manual_seed(args.seed)
    if args.method == "qvit":
        return run_qvit(args, opts)
    try:
        model = create_model(args.model, args.checkpoint)
        check_supported(model)
    except (UnsupportedModelError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if args.calib_images and args.calib_dir:
        raise UserError("give --calib-images or --calib-dir, not both")
    if args.calib_images:
        images = load_image_file(args.calib_images).astype(np.float32)
    elif args.calib_dir:
        from sw.imagefolder import ImageFolderError, load_images
        try:
            images = load_images(args.calib_dir, model, args.n_calib, args.seed)
        except ImageFolderError as exc:
            raise UserError(str(exc)) from None
    else:
        images = random_images(model, args.n_calib, args.seed)
    t0 = time.perf_counter()
    try:
        graph = quantize(model, images, observer=args.calib, **opts)
    except (UnsupportedModelError, ValueError) as exc:
        raise UserError(str(exc)) from None
    graph.info.update({"model": args.model, "checkpoint": args.checkpoint, "seed": args.seed})
    if args.calib_dir:
        graph.info["calibration"] = {"folder": str(args.calib_dir), "images": len(images), "seed": args.seed}
    try:
        graph.save(args.output)
    except OSError as exc:
        raise UserError(f"cannot write {args.output}: {exc}") from None
    n_params = sum(int(v.size) for o in graph.ops for v in o.params.values())
    print(f"quantized {args.model} ({'checkpoint ' + args.checkpoint if args.checkpoint else 'random weights'}) "
          f"on {len(images)} {'images of ' + str(args.calib_dir) if args.calib_dir else 'images'} with {args.calib} in {time.perf_counter() - t0:.1f} s: "
          f"{len(graph.ops)} ops, {n_params} integer parameters, {describe(graph)}; wrote {args.output}")
    return 0


def run_qvit(args, opts: dict) -> int:
    """Q-ViT trains on labelled images: the digits ViT of ``--seed`` and its training split."""
    if args.model not in ("digits", parser_default_model()):
        raise UserError("Q-ViT is quantization-aware training on labelled images: only the digits ViT "
                        "(--model digits) ships with them")
    if args.calib_images or args.calib_dir or args.checkpoint:
        raise UserError("Q-ViT calibrates on the digits training split; --calib-images, --calib-dir and "
                        "--checkpoint do not apply")
    from sw.digits import load_or_train
    from sw.methods.qvit import default_calib_images
    from sw.quantize import UnsupportedModelError, quantize
    model, split = load_or_train(seed=args.seed)
    t0 = time.perf_counter()
    opts = dict(opts)
    opts.pop("method")
    try:
        graph = quantize(model, default_calib_images(split.train_x, args.seed, args.n_calib),
                         observer=args.calib, method="qvit",
                         train_x=split.train_x, train_y=split.train_y, **opts)
    except (UnsupportedModelError, ValueError) as exc:
        raise UserError(str(exc)) from None
    graph.info.update({"model": "digits", "seed": args.seed})
    try:
        graph.save(args.output)
    except OSError as exc:
        raise UserError(f"cannot write {args.output}: {exc}") from None
    from sw.executor import execute
    from sw.quantize import quantize_input
    pred = execute(graph, quantize_input(split.test_x, graph), fast=True)["logits"].argmax(1)
    print(f"trained and quantized the digits ViT (seed {args.seed}) in {time.perf_counter() - t0:.1f} s: "
          f"{describe(graph)}; integer top-1 {100 * float(np.mean(pred == split.test_y)):.2f} % on "
          f"{len(split.test_y)} test images; wrote {args.output}")
    return 0


def parser_default_model() -> str:
    return "deit_tiny_patch16_224"
