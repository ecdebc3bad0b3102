"""Per-layer agreement of the float timm model and the integer executor (SQNR, dB).

DeiT-Tiny and DeiT-Small with random weights, calibrated on 32 seeded random images,
compared on 8 other random images: for each graph tensor with a float counterpart,
``10 log10(sum f^2 / sum (f - dequantized integer)^2)``.  Prints one markdown table per
model (rows: blocks; columns: tensors of a block).

    python benchmarks/bench_sqnr.py [--models deit_tiny_patch16_224 deit_small_patch16_224]
"""
from __future__ import annotations

import argparse
import re

COLUMNS = ["norm1.out", "attn.qkv.out", "attn.scores", "attn.out", "attn.proj.out", "res1",
           "norm2.out", "mlp.fc1.out", "mlp.act.out", "mlp.fc2.out", "res2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["deit_tiny_patch16_224", "deit_small_patch16_224"])
    ap.add_argument("--calib", default="minmax")
    ap.add_argument("--attn-bits", type=int, default=4)
    args = ap.parse_args()
    import torch
    from sw.quantize import create_model, layer_sqnr, quantize, random_images
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name)
        g = quantize(model, random_images(model, 32, seed=0), observer=args.calib,
                     attn_bits=args.attn_bits, progress=False)
        sq = dict(layer_sqnr(model, g, random_images(model, 8, seed=1)))
        print(f"\n### {name} (random weights, {args.calib}, attention {args.attn_bits} bits), SQNR in dB\n")
        print("| block | " + " | ".join(COLUMNS) + " |")
        print("|---|" + "---:|" * len(COLUMNS))
        blocks = sorted({int(m.group(1)) for k in sq for m in [re.match(r"blocks\.(\d+)\.", k)] if m})
        for b in blocks:
            cells = [f"{sq[f'blocks.{b}.{c}']:.1f}" if f"blocks.{b}.{c}" in sq else "" for c in COLUMNS]
            print(f"| {b} | " + " | ".join(cells) + " |")
        rest = {k: v for k, v in sq.items() if not k.startswith("blocks.")}
        print("\n" + ", ".join(f"{k} {v:.1f}" for k, v in rest.items()))


if __name__ == "__main__":
    main()
