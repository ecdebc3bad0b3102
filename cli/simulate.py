"""``vitamin simulate``: latency of one transformer block and of the whole model, MAC
utilization and the stall breakdown, from the cycle-level model.

Defaults: ``--model deit_tiny_patch16_224`` with random weights calibrated on seeded random
images (``sw.quantize.quantize_timm``), the default config (16x16 array, 16 vector lanes,
100 MHz, 16 bytes/cycle DRAM, 64-cycle DRAM latency).  ``--graph`` simulates a quantized
graph file instead, ``--program`` an already compiled program image.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np

from cli.main import UserError
from cli.compile import add_config_arguments, compile_or_explain, config_from_args, widen_rows

DEFAULT_MODEL = "deit_tiny_patch16_224"


def add_arguments(parser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--model", default=None,
                     help=f"timm model name, random weights (default: {DEFAULT_MODEL})")
    src.add_argument("--graph", default=None, help="integer graph file (.npz)")
    src.add_argument("--program", default=None, help="compiled program image folder")
    add_config_arguments(parser)
    parser.add_argument("--board", default=None, metavar="NAME",
                        help="use that board's fitted config (vitamin build --board NAME), its "
                             "achieved (open flow) or stated clock and its memory bandwidth")
    parser.add_argument("--build-dir", default="build", metavar="DIR",
                        help="with --board: where vitamin build recorded the fit (default ./build)")
    parser.add_argument("--timing-only", action="store_true",
                        help="skip the data path (fast); default: compute every output too")
    parser.add_argument("--check", action="store_true",
                        help="with the data path: compare every DRAM tensor with sw.executor")
    parser.add_argument("--block", type=int, default=None,
                        help="which transformer block to report (default: the middle one)")
    parser.add_argument("--trace", default=None, metavar="TRACE.json",
                        help="write a Chrome/Perfetto trace of the units' timelines")
    parser.add_argument("--plot", default=None, metavar="BLOCK.png",
                        help="write a PNG of the per-op cycle breakdown of one block")
    parser.add_argument("--json", default=None, metavar="REPORT.json", help="write the full report")
    parser.add_argument("--ops", action="store_true", help="print the per-op table of every layer")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input image")
    parser.add_argument("--no-cache", action="store_true",
                        help="re-quantize the --model even if a cached graph exists")


#: Modules whose source decides the quantized graph of a model (the cache key).
_QUANTIZER_MODULES = ("sw.quantize", "sw.observers", "sw.intops", "sw.graph")


def _cache_path(model: str) -> Path:
    """Cache file of ``model``'s quantized graph, keyed by the quantizer's source code (a
    changed quantizer never serves an old graph)."""
    h = hashlib.sha256()
    for name in _QUANTIZER_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and os.path.isfile(spec.origin):
            h.update(Path(spec.origin).read_bytes())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vitamin"
    return root / f"{model}.random.{h.hexdigest()[:12]}.npz"


def _graph_for_model(name: str, use_cache: bool):
    from sw.graph import IntGraph
    path = _cache_path(name)
    if use_cache and path.is_file():
        try:
            return IntGraph.load(path), f"cached {path}"
        except ValueError:
            pass
    try:
        from sw.quantize import quantize_timm
    except ImportError as exc:
        raise UserError(f"quantizer not available ({exc}); pass --graph model.npz") from None
    t0 = time.perf_counter()
    print(f"quantizing {name} (random weights, calibration on random images)...", flush=True)
    try:
        graph = quantize_timm(name)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise UserError(f"cannot build model {name!r}: {exc}") from None
    try:
        graph.save(path)
    except OSError:
        pass
    return graph, f"quantized in {time.perf_counter() - t0:.1f} s"


def _fmt_cfg(cfg) -> str:
    return (f"{cfg.array_rows}x{cfg.array_cols} array, {cfg.vector_lanes} vector lanes, "
            f"{cfg.scratchpad_kib} KiB scratchpad, {cfg.accumulator_kib} KiB accumulator, {cfg.param_kib} KiB parameters, "
            f"DRAM {cfg.dram_bytes} B/cycle latency {cfg.dram_latency_cycles}, "
            f"{cfg.clock_mhz:g} MHz")


def _table(rows: list[list], header: list[str]) -> str:
    cols = list(zip(*([header] + [[str(c) for c in r] for r in rows])))
    widths = [max(len(c) for c in col) for col in cols]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    for r in rows:
        lines.append("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
    return "\n".join("  " + ln for ln in lines)


def run(args) -> int:
    from compiler.program import ProgramFormatError, ProgramImage
    from sim.machine import ProgramError, simulate
    from sim.report import block_breakdown, build_report, plot_block, write_trace
    from hw.units import UnitTimings, UnitTimingUnavailable

    graph = None
    if args.program:
        if args.config or args.overrides or args.board:
            raise UserError("--config/--set/--board do not apply to a compiled --program")
        try:
            image = ProgramImage.load(args.program)
        except ProgramFormatError as exc:
            raise UserError(str(exc)) from None
        source = f"program {args.program}"
    else:
        config = board_config(args) if args.board else config_from_args(args)
        if args.graph:
            from sw.graph import IntGraph
            graph = IntGraph.load(args.graph)
            source = f"graph {args.graph}"
        else:
            name = args.model or DEFAULT_MODEL
            graph, how = _graph_for_model(name, not args.no_cache)
            source = f"model {name} (random weights, {how})"
        note = None
        if not args.board:
            config, note = widen_rows(graph, config, args.overrides)
        t0 = time.perf_counter()
        image = compile_or_explain(graph, config)
        source += f"; compiled to {len(image.instructions)} instructions in {time.perf_counter() - t0:.2f} s"
    cfg = image.config
    print(source)
    print(f"config: {_fmt_cfg(cfg)}")
    if graph is not None and note:
        print(note)

    functional = not args.timing_only
    inputs = None
    if functional:
        rng = np.random.default_rng(args.seed)
        inputs = {}
        for t in image.inputs:
            lo, hi = (-128, 127) if t.signed else (0, 255)
            inputs[t.name] = rng.integers(lo, hi + 1, size=t.shape)
    try:
        timings = UnitTimings(cfg).load()
    except UnitTimingUnavailable as exc:
        raise UserError(str(exc)) from None
    bar = None
    if functional:
        from tqdm import tqdm
        bar = tqdm(total=len(image.instructions), desc="simulating (data path)", unit="instr",
                   leave=False, mininterval=0.5, disable=None)
    t0 = time.perf_counter()
    try:
        res = simulate(image, inputs, functional=functional, timings=timings,
                       progress=(lambda k: bar.update(k - bar.n)) if bar else None)
    except (ProgramError, UnitTimingUnavailable) as exc:
        raise UserError(str(exc)) from None
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    rep = build_report(image, res, timings)
    mode = "data path on" if functional else "timing only"
    rate = res.cycles / wall
    rate_text = f"{rate / 1e6:.1f} M" if rate >= 1e6 else f"{rate / 1e3:.1f} k"
    print(f"simulation ({mode}): {wall:.2f} s wall, {rate_text} simulated cycles/s, "
          f"{len(image.instructions) / wall:,.0f} instructions/s")
    print()
    print(f"whole model: {res.cycles:,} cycles = {rep.latency_ms:.3f} ms at {cfg.clock_mhz:g} MHz "
          f"({rep.fps:.1f} frames/s); MAC utilization {100 * rep.utilization:.1f}% "
          f"(tile-mapping bound {100 * rep.tile_bound:.1f}%), {rep.macs / 1e6:.1f} M MACs on the array"
          + (f", {rep.attn_macs / 1e6:.1f} M codes x V products on the LIS attention unit"
             if rep.attn_macs else ""))
    if rep.blocks:
        pick = args.block if args.block is not None else len(rep.blocks) // 2
        if not 0 <= pick < len(rep.blocks):
            raise UserError(f"--block {pick}: the model has blocks 0..{len(rep.blocks) - 1}")
        bname = rep.blocks[pick]
        b = rep.by_layer[bname]
        first, last = rep.by_layer[rep.blocks[0]], rep.by_layer[rep.blocks[-1]]
        mean = (last["end"] - first["start"]) / len(rep.blocks)
        bcat, bbound = block_breakdown(image, res, timings, bname)
        print(f"one transformer block ({bname}): {b['span']:,} cycles = "
              f"{b['span'] / (cfg.clock_mhz * 1e3):.3f} ms; MAC utilization "
              f"{100 * b['mac_utilization']:.1f}% (tile-mapping bound {100 * bbound:.1f}%); "
              f"mean over {len(rep.blocks)} blocks {mean:,.0f} cycles")
    print()
    print("array cycles, whole model" + (f" | {bname}" if rep.blocks else "") + ":")
    rows = []
    for k, v in rep.array.items():
        row = [k, f"{v:,.0f}", f"{100 * v / res.cycles:.1f}%"]
        if rep.blocks:
            row += [f"{bcat[k]:,.0f}", f"{100 * bcat[k] / b['span']:.1f}%"]
        rows.append(row)
    total = ["total", f"{res.cycles:,}", "100.0%"] + ([f"{b['span']:,}", "100.0%"] if rep.blocks else [])
    print(_table(rows + [total], ["category", "cycles", "share"] + (["block", "share"] if rep.blocks else [])))
    print()
    from sim.machine import CAUSES
    print("stall cycles per queue (waited after the engine was ready, by cause):")
    rows = []
    for q, d in rep.by_queue.items():
        rows.append([q, f"{d['busy']:,}"] + [f"{d[f'wait {c}']:,}" for c in CAUSES])
    print(_table(rows, ["queue", "in flight"] + [f"on {c.split(':')[-1]}" for c in CAUSES]))
    print()
    print("per instruction class:")
    rows = [[k, v["count"], f"{v['busy']:,}", f"{v['wait']:,}", f"{v['bytes']:,}"]
            for k, v in sorted(rep.by_class.items(), key=lambda kv: -kv[1]["busy"])]
    print(_table(rows, ["class", "count", "busy cycles", "wait cycles", "DRAM bytes"]))
    print()
    print("per layer:")
    rows = [[k, v["instructions"], f"{v['macs'] / 1e6:.2f}", f"{v['span']:,}",
             f"{100 * v['mac_utilization']:.1f}%"] for k, v in rep.by_layer.items()]
    print(_table(rows, ["layer", "instructions", "M MACs", "span cycles", "MAC util"]))
    if rep.blocks or args.ops:
        print()
        shown = [k for k in rep.by_op if args.ops or k.startswith(bname + ".")]
        print("per op" + ("" if args.ops else f" ({bname})") + ":")
        rows = [[k, rep.by_op[k]["instructions"], f"{rep.by_op[k]['macs'] / 1e6:.2f}",
                 f"{rep.by_op[k]['span']:,}", f"{100 * rep.by_op[k]['mac_utilization']:.1f}%",
                 f"{rep.by_op[k]['matrix busy']:,}", f"{rep.by_op[k]['vector busy']:,}",
                 f"{rep.by_op[k]['load busy']:,}", f"{rep.by_op[k]['store busy']:,}"]
                for k in shown]
        print(_table(rows, ["op", "instr", "M MACs", "span", "MAC util", "array busy",
                            "vector busy", "load busy", "store busy"]))
    if functional:
        print()
        for t in image.outputs:
            out = res.outputs[t.name].ravel()
            top = np.argsort(-out, kind="stable")[:5]
            print(f"output {t.name} {t.shape}: top-5 indices {top.tolist()} values {out[top].tolist()}")
        if args.check:
            if graph is None:
                raise UserError("--check needs --model or --graph (the reference runs the graph)")
            _check(image, res, graph, inputs)
    if args.trace:
        _write(args.trace, lambda: write_trace(image, res, args.trace))
        print(f"wrote trace {args.trace} (open in https://ui.perfetto.dev or chrome://tracing)")
    if args.plot:
        if not rep.blocks:
            raise UserError("--plot needs a model with transformer blocks")
        _write(args.plot, lambda: plot_block(rep, bname, args.plot))
        print(f"wrote plot {args.plot}")
    if args.json:
        from sw.graph import atomic_write_bytes
        _write(args.json, lambda: atomic_write_bytes(Path(args.json),
                                                     json.dumps(rep.to_json(), indent=1).encode()))
        print(f"wrote report {args.json}")
    return 0


def board_config(args):
    """The config of ``--board``: the fit ``vitamin build`` recorded (its config, at the
    achieved or stated clock), else a fresh fit at the board's stated clock; ``--set`` pins
    fields of a fresh fit.  The DRAM bandwidth per cycle follows from the board's bandwidth
    and that clock."""
    from boards.profiles import BoardError, get_profile
    from cli.build import fit_board, pinned_fields
    from hw.config import AcceleratorConfig
    if args.config:
        raise UserError("--board chooses the config; --config does not apply (use --set to pin fields)")
    try:
        board = get_profile(args.board)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    pinned = pinned_fields(args.overrides)
    record = Path(args.build_dir) / board.name / "fitted.json"
    if record.is_file() and not pinned:
        data = json.loads(record.read_text())
        cfg = AcceleratorConfig.from_dict(data["config"])
        clock = float(data["clock_mhz"])
        how = f"{data['clock_source']} clock, from {record}"
    else:
        cfg = fit_board(board, pinned, progress=lambda s: None).config
        clock = board.clock_mhz
        how = "stated clock (no build recorded: run vitamin build --board " + board.name + ")"
    cfg = cfg.replace(**board.config_overrides(clock, cfg.lanes))
    print(f"board {board.name}: {clock:g} MHz ({how}), DRAM {board.dram_mbps:g} MB/s = "
          f"{cfg.dram_bytes} B/cycle")
    return cfg


def _write(path: str, write) -> None:
    """Run ``write()``, turning a file-system error into a one-line :class:`UserError`."""
    try:
        write()
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc}") from None


def _check(image, res, graph, inputs) -> None:
    from sw.executor import execute
    ref = execute(graph, {k: v[None] for k, v in inputs.items()}, keep=True)
    compared, values = 0, 0
    for name, place in image.tensors.items():
        got = place.read(res.dram)
        want = ref[name][0]
        if not np.array_equal(got, want):
            bad = int(np.sum(got != want))
            raise UserError(f"tensor {name!r} differs from sw.executor in {bad} of {want.size} integers")
        compared += 1
        values += want.size
    print(f"bit-exact with sw.executor: {compared} DRAM tensors, {values:,} integers compared")
