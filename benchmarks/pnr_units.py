"""Place and route single units of the accelerator out of context on an ECP5 part.

Each unit (a component of :mod:`hw.units`, an engine of the core: ``vector_engine``,
``tile_engine`` (the MATMUL engine), ``tile_engine_attn`` (the ATTNV engine),
``load_engine``, ``store_engine``, ``sequencer``, or ``core``, the whole core) is converted
to RTLIL, synthesized and placed and routed by the build flow's own steps
(:func:`boards.build.synthesize`, :func:`boards.build.place_and_route`: nextpnr-ecp5 out of
context, seed 1), one thread by default.  Prints the achieved Fmax and the start and end of
the critical path, and writes ``<out>/<unit>/report.json``.  Minutes a unit, where the whole
core takes an hour: this is how the core's slow paths are found.

    python benchmarks/pnr_units.py softmax vector_engine --config tiny --out build/units

Each unit's folder also gets the build's placement diagnostics (``nets.json``,
``timing_placed.txt``: :func:`boards.build.explain_placement`); with
``--nextpnr-arg=--no-route`` (placement only, minutes for the whole core) the estimate
printed from there is the result.

``--router``, ``--placer`` (nextpnr-ecp5's default ``heap``, as the numbers in
docs/BOARDS.md, or the build flow's :data:`boards.build.PLACER`), ``--threads``, ``--seed``
and ``--nextpnr-arg ARG`` (repeatable, e.g. ``--nextpnr-arg=--router2-alt-weights``) are
for experiments on the whole core's routability (docs/BOARDS.md, "The full core").
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amaranth.back import rtlil  # noqa: E402

from boards.build import (PLACER, explain_placement, parse_report, place_and_route,  # noqa: E402
                          synthesize)
from boards.profiles import get_profile  # noqa: E402
from hw.config import load_config  # noqa: E402


def build_component(name: str, config):
    if name == "vector_engine":
        from hw.core.vector_engine import VectorEngine
        return VectorEngine(config)
    if name in ("tile_engine", "tile_engine_attn"):
        from hw.core.tile_engine import TileEngine
        return TileEngine(config, "attn" if name == "tile_engine_attn" else "matrix")
    if name == "core":
        from hw.core.core import Core
        return Core(config)
    if name == "sequencer":
        from hw.core.sequencer import Sequencer
        return Sequencer(config)
    if name in ("load_engine", "store_engine"):
        from hw.core import dma
        return getattr(dma, "LoadEngine" if name == "load_engine" else "StoreEngine")(config)
    from hw.units import build_unit
    return build_unit(name, config)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("units", nargs="+")
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--board", default="ulx3s-85f")
    ap.add_argument("--freq", type=float, default=125.0)
    ap.add_argument("--out", type=Path, default=Path("build/units"))
    ap.add_argument("--placer", default="heap", choices=("heap", "static", "sa"),
                    help=f"nextpnr's placer: heap (nextpnr-ecp5's default, as every number in "
                         f"docs/BOARDS.md made with this script) or {PLACER} (the build flow's)")
    ap.add_argument("--router", default="router1", choices=("router1", "router2"),
                    help="router1 (nextpnr-ecp5's default, as the unit numbers in docs/BOARDS.md) or router2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=1, help="nextpnr's seed (the build flow's: 1)")
    ap.add_argument("--nextpnr-arg", action="append", default=[], metavar="ARG",
                    help="one more nextpnr argument (repeatable)")
    ap.add_argument("--progress", action="store_true", help="print the tools' last log line every 30 s")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        k, v = item.split("=", 1)
        overrides[k] = int(v) if v.lstrip("-").isdigit() else v
    config = load_config(args.config, **overrides)
    board = get_profile(args.board)
    for name in args.units:
        work = args.out / name
        work.mkdir(parents=True, exist_ok=True)
        (work / "top.il").write_text(rtlil.convert(build_component(name, config), name="top"))
        say = (lambda line: print(line, flush=True)) if args.progress else None
        cells, t_syn = synthesize(work / "top.il", work, top="top", progress=say)
        t_pnr = place_and_route(board, work, args.freq, None, say, top="top", seed=args.seed,
                                router=args.router, threads=args.threads, placer=args.placer,
                                extra_args=tuple(args.nextpnr_arg))
        # Every endpoint's post-placement timing and the long nets (boards.sta, boards.nets):
        # with ``--nextpnr-arg=--no-route`` the report has no Fmax, this estimate is all.
        explain_placement(work / "top_routed.json", work, lambda line: print(line, flush=True))
        rep = parse_report(work / "report.json", board.name, board.part)
        path = rep.critical_path
        crit = sum(s[2] for s in path)
        logic = sum(s[2] for s in path if s[3] != "routing")
        routed = f"{rep.achieved_mhz:.2f} MHz" if rep.fmax else "not routed"
        print(f"{name}: {routed}; LUT4 {cells.get('LUT4', 0)}, "
              f"FF {cells.get('TRELLIS_FF', 0)}, MULT18X18D {cells.get('MULT18X18D', 0)}, "
              f"DP16KD {cells.get('DP16KD', 0)}; yosys {t_syn:.0f} s, nextpnr {t_pnr:.0f} s")
        if path:
            print(f"  critical path {crit:.2f} ns ({logic:.2f} logic), {len(path)} steps: "
                  f"{path[0][0]} -> {path[-1][1]}")
        (work / "summary.json").write_text(json.dumps(
            {"unit": name, "fmax": rep.achieved_mhz, "cells": cells, "critical_path": path,
             "yosys_s": t_syn, "nextpnr_s": t_pnr}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
