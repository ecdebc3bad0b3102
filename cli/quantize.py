"""``vitamin quantize --model NAME [--calib minmax|ema|percentile|omse] [--attn-bits 4|8] -o model.npz``.

Builds the timm model (random weights, or ``--checkpoint FILE``: a timm state dict),
calibrates it on seeded random images, on ``--n-calib`` images drawn at random (seeded) from
an image folder (``--calib-dir DIR``, ImageFolder layout, the model's own preprocessing), or
on ``--calib-images FILE.npy``, and writes the integer graph atomically.
"""
from __future__ import annotations

import time

import numpy as np

from cli.main import UserError


def add_arguments(parser) -> None:
    from sw.observers import OBSERVERS
    from sw.quantize import DEFAULT_CALIB_IMAGES
    parser.add_argument("--model", default="deit_tiny_patch16_224", help="timm model name (default: %(default)s)")
    parser.add_argument("--checkpoint", default=None, metavar="FILE", help="timm state dict to load (default: random weights)")
    parser.add_argument("--calib", default="minmax", choices=OBSERVERS, help="calibration observer (default: %(default)s)")
    parser.add_argument("--attn-bits", type=int, default=4, choices=(4, 8),
                        help="4: Log-Int-Softmax codes; 8: uniform 8-bit softmax (default: %(default)s)")
    parser.add_argument("--no-ptf", action="store_true", help="per-tensor LayerNorm inputs instead of Power-of-Two Factors")
    parser.add_argument("--float-patch-embed", action="store_true", help="keep the patch embedding in float on the host")
    parser.add_argument("--calib-images", default=None, metavar="FILE.npy",
                        help="float calibration images [N, C, H, W], normalized (default: seeded random images)")
    parser.add_argument("--calib-dir", default=None, metavar="DIR",
                        help="calibrate on --n-calib images drawn at random (seeded by --seed) from an image "
                             "folder DIR/<class>/<image>, preprocessed as the model expects")
    parser.add_argument("--n-calib", type=int, default=DEFAULT_CALIB_IMAGES,
                        help="number of calibration images (random, or from --calib-dir) (default: %(default)s)")
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


def run(args) -> int:
    import torch
    from sw.quantize import UnsupportedModelError, check_supported, create_model, quantize, random_images
    if args.n_calib < 1:
        raise UserError("--n-calib must be at least 1")
    torch.manual_seed(args.seed)
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
        graph = quantize(model, images, observer=args.calib, attn_bits=args.attn_bits,
                         ptf=not args.no_ptf, quantize_patch_embed=not args.float_patch_embed)
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
          f"{len(graph.ops)} ops, {n_params} integer parameters, "
          f"W8/A8/attention {args.attn_bits} bits, PTF {'off' if args.no_ptf else 'on'}; wrote {args.output}")
    return 0
