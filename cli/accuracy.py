"""``vitamin accuracy [--model vit|swin]``: a small ViT (or a tiny Swin) trained on scikit-learn's digits (seed 0 ships with the
package; other seeds are trained and cached on first use), quantize it with every observer and setting, and print FP32 / fake-quant / integer
top-1 (:mod:`sw.accuracy`).

``vitamin accuracy --method all`` (or one of ``fqvit``, ``ivit``, ``ptq4vit``) prints the
comparison of the integer methods instead (:mod:`sw.methods.accuracy`): FQ-ViT, I-ViT after
calibration and after a short quantization-aware fine-tune, PTQ4ViT at W8A8 and W6A6.
"""
from __future__ import annotations

from cli.main import UserError


def add_arguments(parser) -> None:
    from sw.graph import METHODS
    from sw.observers import OBSERVERS
    parser.add_argument("--model", default="vit", choices=("vit", "swin"),
                        help="the digits model: the small ViT or the tiny Swin (patch 2, window 4, shifted "
                             "windows; seed 0 ships with the package) (default: %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; several give the mean over them (default: 0)")
    parser.add_argument("--calib", action="append", choices=OBSERVERS, default=None,
                        help="only these observers (repeatable; default: all four)")
    parser.add_argument("--method", default=None, choices=METHODS + ("all",),
                        help="compare the integer methods (all, or one) instead of FQ-ViT's observers")
    parser.add_argument("--qat-epochs", type=int, default=None, metavar="N",
                        help="with --method: epochs of I-ViT's QAT fine-tune (default: 3; 0 skips it)")
    parser.add_argument("--save-graphs", default=None, metavar="DIR",
                        help="with --method: also write every graph there (for vitamin run / compile)")
    parser.add_argument("--retrain", action="store_true",
                        help="train seed 0 on this machine instead of using the shipped model "
                             "(trained models differ between machines: see docs/ACCURACY.md)")
    parser.add_argument("--reference", action="store_true",
                        help="run the integer graphs on the numpy reference executor instead of the fast one")
    parser.add_argument("--markdown", default=None, metavar="FILE.md", help="also write the table as markdown")


def run(args) -> int:
    from sw.graph import METHODS, GraphFormatError, atomic_write_bytes
    from sw.observers import OBSERVERS
    seeds = tuple(dict.fromkeys(args.seeds))
    if args.method is None:
        if args.qat_epochs is not None or args.save_graphs is not None:
            raise UserError("--qat-epochs and --save-graphs go with --method")
        from sw.accuracy import accuracy_table, format_table
        report = accuracy_table(seeds=seeds, methods=tuple(dict.fromkeys(args.calib or OBSERVERS)),
                                retrain=args.retrain, fast=not args.reference, model=args.model)
        text, md = format_table(report), format_table(report, markdown=True)
    else:
        if args.model != "vit":
            raise UserError("--method compares the integer methods on the digits ViT; Swin is quantized with FQ-ViT only")
        if args.calib is not None:
            raise UserError("--calib selects FQ-ViT observers; the method table calibrates with MinMax")
        if args.qat_epochs is not None and args.qat_epochs < 0:
            raise UserError("--qat-epochs must be at least 0")
        from sw.methods.accuracy import format_method_table, method_table
        methods = METHODS if args.method == "all" else (args.method,)
        try:
            report = method_table(methods, seeds=seeds, qat_epochs=args.qat_epochs, retrain=args.retrain,
                                  save_dir=args.save_graphs, fast=not args.reference)
        except (OSError, GraphFormatError) as exc:
            raise UserError(f"cannot write the graphs to {args.save_graphs}: {exc}") from None
        text, md = format_method_table(report), format_method_table(report, markdown=True)
    print(text)
    print(f"({report.seconds:.1f} s)")
    if args.markdown:
        try:
            atomic_write_bytes(args.markdown, (md + "\n").encode())
        except OSError as exc:
            raise UserError(f"cannot write {args.markdown}: {exc}") from None
    return 0
