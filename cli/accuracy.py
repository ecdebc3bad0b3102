"""``vitamin accuracy``: a small ViT trained on scikit-learn's digits (seed 0 ships with the
package; other seeds are trained and cached on first use), quantize it with every observer and setting, and print FP32 / fake-quant / integer
top-1 (:mod:`sw.accuracy`)."""
from __future__ import annotations

from cli.main import UserError


def add_arguments(parser) -> None:
    from sw.observers import OBSERVERS
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="training seeds; several give the mean over them (default: 0)")
    parser.add_argument("--calib", action="append", choices=OBSERVERS, default=None,
                        help="only these observers (repeatable; default: all four)")
    parser.add_argument("--retrain", action="store_true",
                        help="train seed 0 on this machine instead of using the shipped model "
                             "(trained models differ between machines: see docs/ACCURACY.md)")
    parser.add_argument("--reference", action="store_true",
                        help="run the integer graphs on the numpy reference executor instead of the fast one")
    parser.add_argument("--markdown", default=None, metavar="FILE.md", help="also write the table as markdown")


def run(args) -> int:
    from sw.accuracy import accuracy_table, format_table
    from sw.graph import atomic_write_bytes
    from sw.observers import OBSERVERS
    report = accuracy_table(seeds=tuple(dict.fromkeys(args.seeds)),
                            methods=tuple(dict.fromkeys(args.calib or OBSERVERS)),
                            retrain=args.retrain, fast=not args.reference)
    print(format_table(report))
    print(f"({report.seconds:.1f} s)")
    if args.markdown:
        try:
            atomic_write_bytes(args.markdown, (format_table(report, markdown=True) + "\n").encode())
        except OSError as exc:
            raise UserError(f"cannot write {args.markdown}: {exc}") from None
    return 0
