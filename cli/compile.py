"""``vitamin compile model.npz [--config PRESET|FILE] [--set FIELD=VAL] -o prog/``.

Writes the program image folder: ``program.bin`` (instructions), ``dram.bin`` (initial DRAM
image) and ``manifest.json`` (see :mod:`compiler.program`), each file atomically.
"""
from __future__ import annotations

import time
from collections import Counter

from cli.main import UserError


def add_arguments(parser) -> None:
    parser.add_argument("graph", help="integer graph file (.npz) from `vitamin quantize`")
    parser.add_argument("-o", "--output", required=True, help="program image folder to write")
    add_config_arguments(parser)


def add_config_arguments(parser) -> None:
    parser.add_argument("--config", default=None,
                        help="config preset (default, small, tiny) or JSON file (default: default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VAL",
                        help="override one config field (repeatable), e.g. --set array_rows=8")


def config_from_args(args):
    from hw.config import load_config, parse_overrides
    return load_config(args.config, **parse_overrides(args.overrides))


def widen_rows(graph, config, overrides=()):
    """``config`` with ``max_channels`` (and the parameter memory its records need) raised to
    the widest LayerNorm / residual-add row of ``graph`` when the config's units are too
    narrow for it (Swin-T's last patch merging normalises 1536 channels; the default units
    hold 1024) and ``--set`` does not pin those fields; ``(config, note or None)``."""
    from hw.config import parse_overrides
    pinned = parse_overrides(list(overrides))
    widest, where = 0, None
    for op in graph.ops:
        if op.kind in ("layernorm", "add"):
            c = int(graph.tensors[op.inputs[0]].shape[-1])
            if c > widest:
                widest, where = c, op.name
    if widest <= config.max_channels or "max_channels" in pinned:
        return config, None
    n = config.lanes
    channels = -(-widest // n) * n
    changes = {"max_channels": channels}
    param_kib = config.param_kib
    while param_kib * 256 < 4 * channels + 256 and "param_kib" not in pinned:
        param_kib *= 2
    if param_kib != config.param_kib:
        changes["param_kib"] = param_kib
    note = (f"config widened for this model's widest row ({where}, {widest} channels): "
            + ", ".join(f"{k}={v}" for k, v in changes.items()))
    return config.replace(**changes), note


def compile_or_explain(graph, config):
    """Compile, turning a :class:`CompileError` into a :class:`UserError`."""
    from compiler.lower import CompileError, UnsupportedOpsError, compile_graph
    try:
        return compile_graph(graph, config)
    except UnsupportedOpsError as exc:
        raise UserError(str(exc)) from None
    except CompileError as exc:
        raise UserError(f"the model does not fit this config: {exc}") from None


def run(args) -> int:
    from sw.graph import IntGraph
    config = config_from_args(args)
    graph = IntGraph.load(args.graph)
    config, note = widen_rows(graph, config, args.overrides)
    if note:
        print(note)
    t0 = time.perf_counter()
    image = compile_or_explain(graph, config)
    try:
        folder = image.save(args.output)
    except OSError as exc:
        raise UserError(f"cannot write the program image to {args.output}: {exc}") from None
    counts = Counter(i.op.name for i in image.instructions)
    print(f"compiled {len(graph.ops)} ops into {len(image.instructions)} instructions in "
          f"{time.perf_counter() - t0:.2f} s: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    print(f"DRAM image {image.dram_size} bytes ({len(image.dram_init)} initialized); "
          f"wrote {folder}/program.bin, dram.bin, manifest.json")
    return 0
