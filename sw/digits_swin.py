"""A tiny stock timm Swin Transformer trained on scikit-learn's digits (the Swin accuracy table).

The same data, split, augmentation and optimizer recipe as the digits ViT (:mod:`sw.digits`):
16 x 16 images (the 8x8 digits upsampled), here cut into 2 x 2 patches, so the first stage
works on an 8 x 8 token grid with 4 x 4 windows (four windows; every second block shifted by
2, so the shifted-window mask matters), then patch merging to a 4 x 4 grid where the window
covers the whole grid (timm then uses no shift).  An unmodified
``timm.models.swin_transformer.SwinTransformer``.

As for the ViT, float32 training differs between CPUs, so the seed-0 model ships with the
package (``sw/data/digits_swin_seed0.npz``, written by ``python -m sw.digits_swin --export``)
and is what tests and the documented table use.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from . import digits

#: Seeds whose trained model ships with the package.
SHIPPED_SEEDS = (0,)
#: Epochs of the recipe (the ViT's recipe otherwise).
DEFAULT_EPOCHS = 60


def digits_swin_config() -> dict:
    """Keyword arguments of the timm ``SwinTransformer`` used for the digits.

    Patch 2 on 16 x 16 images (an 8 x 8 grid), two stages of two blocks, width 32 then 64,
    2 then 4 heads, window 4: stage 1 has four windows and a shifted block; stage 2's 4 x 4
    grid is one window.
    """
    return dict(img_size=digits.DIGITS_IMAGE, patch_size=2, in_chans=1, num_classes=digits.DIGITS_CLASSES,
                embed_dim=32, depths=(2, 2), num_heads=(2, 4), window_size=4, mlp_ratio=2.0,
                drop_path_rate=0.0)


def build_digits_swin():
    """A freshly initialized (untrained) timm ``SwinTransformer`` with :func:`digits_swin_config`."""
    from timm.models.swin_transformer import SwinTransformer
    return SwinTransformer(**digits_swin_config())


def _key(seed: int) -> dict:
    return {"seed": seed, "epochs": DEFAULT_EPOCHS, "batch_size": digits.BATCH_SIZE,
            "learning_rate": digits.LEARNING_RATE, "weight_decay": digits.WEIGHT_DECAY,
            "warmup_epochs": digits.WARMUP_EPOCHS, "max_shift": digits.MAX_SHIFT,
            "threads": digits.TRAIN_THREADS, "image": digits.DIGITS_IMAGE,
            "test_fraction": digits.TEST_FRACTION, "config": digits_swin_config()}


def shipped_path(seed: int) -> Path:
    return digits.SHIPPED_DIR / f"digits_swin_seed{seed}.npz"


def train_digits_swin(seed: int = 0, epochs: int | None = None, progress: bool = True):
    """Train the digits Swin with the digits ViT's recipe (:func:`sw.digits.train_digits_vit`)."""
    return digits.train_digits_vit(seed, DEFAULT_EPOCHS if epochs is None else epochs, progress,
                                   build=build_digits_swin, desc="digits Swin")


def export_shipped(model, seed: int, path) -> None:
    """Write ``model``'s weights with the recipe key as an ``.npz`` (atomically)."""
    import io
    from .graph import atomic_write_bytes
    arrays = {f"w/{k}": v.detach().numpy() for k, v in model.state_dict().items()}
    arrays["key"] = np.frombuffer(json.dumps(_key(seed), sort_keys=True).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_digits_swin(seed: int = 0):
    """The shipped trained digits Swin and its split (``RuntimeError`` if none ships for
    ``seed`` or the file was written by another recipe)."""
    path = shipped_path(seed)
    if seed not in SHIPPED_SEEDS or not path.is_file():
        raise RuntimeError(f"no shipped digits Swin for seed {seed}; train one with train_digits_swin")
    with np.load(path) as f:
        key = json.loads(bytes(f["key"]).decode())
        state = {k[2:]: torch.from_numpy(f[k].copy()) for k in f.files if k.startswith("w/")}
    if key != json.loads(json.dumps(_key(seed), sort_keys=True)):
        raise RuntimeError(f"{path} was trained with another recipe than this code's; "
                           "re-export it with `python -m sw.digits_swin --export`")
    model = build_digits_swin()
    model.load_state_dict(state)
    return model.eval(), digits.load_digits_split(seed)


def load_or_train(seed: int = 0, progress: bool = True, retrain: bool = False):
    """The shipped digits Swin of ``seed`` (seed 0), or one trained now on this machine
    (other seeds, or ``retrain``; not cached)."""
    if not retrain and seed in SHIPPED_SEEDS and shipped_path(seed).is_file():
        return load_digits_swin(seed)
    return train_digits_swin(seed=seed, progress=progress)


def _main() -> None:
    parser = argparse.ArgumentParser(prog="python -m sw.digits_swin")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--export", action="store_true",
                        help=f"write the trained model to {digits.SHIPPED_DIR}/digits_swin_seed<seed>.npz")
    args = parser.parse_args()
    start = time.perf_counter()
    model, split = train_digits_swin(seed=args.seed, epochs=args.epochs)
    seconds = time.perf_counter() - start
    top1 = float((digits.evaluate_float(model, split.test_x) == split.test_y).mean())
    print(f"trained in {seconds:.1f} s; test top-1 {100 * top1:.2f}% on {len(split.test_y)} images")
    if args.export:
        if args.epochs not in (None, DEFAULT_EPOCHS):
            raise SystemExit("--export needs the recipe's epochs")
        export_shipped(model, args.seed, shipped_path(args.seed))
        print(f"wrote {shipped_path(args.seed)}")


if __name__ == "__main__":
    _main()
