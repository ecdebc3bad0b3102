"""Per-layer agreement of the float timm model and the integer executor (SQNR, dB).

DeiT-Tiny and DeiT-Small (or any supported model, e.g. swin_tiny_patch4_window7_224) with random weights, calibrated on 32 seeded random images,
compared on 8 other random images: for each graph tensor with a float counterpart,
``10 log10(sum f^2 / sum (f - dequantized integer)^2)``.  Prints one markdown table per
model (rows: blocks; columns: tensors of a block).

    python benchmarks/bench_sqnr.py [--models deit_tiny_patch16_224 deit_small_patch16_224]
    python benchmarks/bench_sqnr.py --models deit_tiny_patch16_224 --method ivit
    python benchmarks/bench_sqnr.py --models deit_tiny_patch16_224 --method ptq4vit [--bits 6]

``--method`` picks the integer method (``sw.methods``); PTQ4ViT's Hessian-guided search keeps
``--search-rows`` token rows per linear layer and ``--search-attn-rows`` query rows per
attention (defaults sized for DeiT on a CPU: 512 and 394, two images).
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
    ap.add_argument("--method", default="fqvit", choices=("fqvit", "ivit", "ptq4vit"))
    ap.add_argument("--bits", type=int, default=8, choices=(8, 6))
    ap.add_argument("--search-rows", type=int, default=512)
    ap.add_argument("--search-attn-rows", type=int, default=394)
    args = ap.parse_args()
    import torch
    from sw.quantize import create_model, layer_sqnr, quantize, random_images
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name)
        opts = {"fqvit": {"attn_bits": args.attn_bits}, "ivit": {},
                "ptq4vit": {"bits": args.bits, "max_rows": args.search_rows,
                            "max_attn_rows": args.search_attn_rows}}[args.method]
        g = quantize(model, random_images(model, 32, seed=0), observer=args.calib, method=args.method,
                     progress=False, **opts)
        sq = dict(layer_sqnr(model, g, random_images(model, 8, seed=1)))
        what = {"fqvit": f"{args.calib}, attention {args.attn_bits} bits",
                "ivit": f"I-ViT, {args.calib}, 16-bit stream",
                "ptq4vit": f"PTQ4ViT W{args.bits}A{args.bits}, Hessian search"}[args.method]
        print(f"\n### {name} (random weights, {what}), SQNR in dB\n")
        print("| block | " + " | ".join(COLUMNS) + " |")
        print("|---|" + "---:|" * len(COLUMNS))
        # ViT blocks "blocks.i", Swin blocks "layers.s.blocks.j" (row label "s.j")
        blocks = list(dict.fromkeys(m.group(0) for k in sq for m in [re.match(r"(layers\.\d+\.)?blocks\.\d+", k)] if m))
        for b in blocks:
            cells = [f"{sq[f'{b}.{c}']:.1f}" if f"{b}.{c}" in sq else "" for c in COLUMNS]
            label = ".".join(re.findall(r"\d+", b))
            print(f"| {label} | " + " | ".join(cells) + " |")
        rest = {k: v for k, v in sq.items() if not re.match(r"(layers\.\d+\.)?blocks\.", k)}
        print("\n" + ", ".join(f"{k} {v:.1f}" for k, v in rest.items()))


if __name__ == "__main__":
    main()
