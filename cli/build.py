"""``vitamin build --board NAME``: fit the accelerator to a board and build it.

1. Fit (:mod:`boards.fit`): the fastest config whose modelled resources fit the board, by
   the cycle model's DeiT-Tiny latency at the board's clock and memory bandwidth;
   ``--set FIELD=VALUE`` pins fields.  A pinned config that cannot fit is refused here, before
   any tool runs, naming the resource that overflows and by how much.
2. Open-flow boards (ECP5): Yosys ``synth_ecp5`` and nextpnr-ecp5 out of context
   (:mod:`boards.build`) into ``BUILD/<board>/<config hash>/``; prints and writes the
   resource / Fmax table (``report.txt``, ``build.json``).
3. ``--verilog-only`` (automatic for the Verilog-only boards): the core's Verilog, a file
   list and a README with the port table in ``BUILD/<board>/<config hash>/verilog/``
   (``--xilinx-synth`` adds Yosys ``synth_xilinx`` cell counts for the Xilinx boards).

``BUILD/<board>/fitted.json`` records the fitted config and the clock (achieved or stated),
which ``vitamin simulate --board NAME`` uses.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from cli.main import UserError


def add_arguments(parser) -> None:
    from boards.build import ROUTE_MARGIN
    from boards.profiles import board_names
    parser.add_argument("--board", required=True, metavar="NAME",
                        help=f"board profile: {', '.join(board_names())}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VAL",
                        help="pin one config field (repeatable), e.g. --set array_rows=8")
    parser.add_argument("--verilog-only", action="store_true",
                        help="write the Verilog folder only (no synthesis or place and route)")
    parser.add_argument("--fit-only", action="store_true",
                        help="print the fitted config and its modelled resources, build nothing")
    parser.add_argument("--xilinx-synth", action="store_true",
                        help="Xilinx boards: also run yosys synth_xilinx for cell counts (slow)")
    parser.add_argument("--clock", type=float, default=None, metavar="MHZ",
                        help="open flow: nextpnr's target clock (default 125)")
    parser.add_argument("--model", default="deit_tiny", choices=("deit_tiny", "deit_small"),
                        help="the model the fitter ranks configs by (default deit_tiny)")
    parser.add_argument("--build-dir", default="build", metavar="DIR",
                        help="root of the build folders (default ./build)")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="give up a tool after S seconds")
    parser.add_argument("--force", action="store_true", help="rebuild even if the build exists")
    parser.add_argument("--seed", type=int, default=1, metavar="N",
                        help="open flow: nextpnr's first seed (default 1)")
    parser.add_argument("--attempts", type=int, default=3, metavar="K",
                        help="open flow with --place-seeds 1: seeds tried in turn while router2 "
                             "stops converging (default 3; 1 never stops it)")
    parser.add_argument("--place-seeds", type=int, default=4, metavar="K",
                        help="open flow: place seeds N..N+K-1 first (two at a time), then place "
                             "and route the two best post-placement estimates side by side, each "
                             f"against {ROUTE_MARGIN:g} times its estimate with timing-driven rip-up, and keep "
                             "the faster, the next two if neither routes (default 4; 1: place and "
                             "route one seed at a time against the board's clock)")


def say(text: str) -> None:
    print(text, flush=True)


def pinned_fields(items: list[str]) -> dict:
    from hw.config import _one_width, parse_overrides
    return _one_width(parse_overrides(items), "--set")


def fit_board(board, pinned: dict, model: str = "deit_tiny", clock_mhz: float | None = None,
              progress=say):
    """Fit, turning a :class:`boards.fit.FitError` into a one-line :class:`UserError`."""
    from boards.fit import FitError, fit
    try:
        return fit(board, pinned, model=model, clock_mhz=clock_mhz, progress=progress)
    except FitError as exc:
        raise UserError(str(exc)) from None


def describe(cfg) -> str:
    return (f"N={cfg.lanes} ({cfg.array_rows}x{cfg.array_cols} array, {cfg.vector_lanes} lanes"
            + (f" ({cfg.norm_lanes} in the LayerNorm and softmax)" if cfg.norm_lanes else "") + ", "
            f"{cfg.lut_mult_cols} columns on LUT multipliers, "
            f"{'two products per DSP' if cfg.dsp_pack == 2 else 'one product per DSP'}), "
            f"scratchpad {cfg.scratchpad_kib} KiB"
            + (f" (shares {cfg.spad_shares})" if cfg.spad_shares else "")
            + f", accumulator {cfg.accumulator_kib} KiB, parameters {cfg.param_kib} KiB, "
            f"tile rows {cfg.max_tile_rows}, "
            f"DRAM {cfg.dram_bytes} B/cycle at {cfg.clock_mhz:g} MHz")


def resource_lines(res, board) -> str:
    names = {"lut": "LUTs", "ff": "flip-flops", "dsp": "multipliers (DSP)",
             "bram": f"block RAMs ({board.bram_kbits} Kbit)", "uram": "UltraRAMs"}
    lines = []
    for k, v in res.as_dict().items():
        have = board.budget[k]
        if k == "uram" and not have:
            continue
        lines.append(f"  {names[k]:<24}{v:>9,}{have:>11,}{100 * v / max(have, 1):>7.1f}%")
    return "\n".join(lines)


def record_fitted(root: Path, board, cfg, clock_mhz: float, source: str, build: str | None) -> Path:
    from sw.graph import atomic_write_bytes
    path = Path(root) / board.name / "fitted.json"
    atomic_write_bytes(path, json.dumps({"board": board.name, "config": cfg.to_dict(),
                                         "clock_mhz": clock_mhz, "clock_source": source,
                                         "build": build}, indent=1).encode())
    return path


def run(args) -> int:
    from boards.build import BuildError, build_core, build_dir, format_report
    from boards.profiles import BoardError, get_profile
    from boards.resources import macs_per_dsp, products_per_dsp
    from boards.verilog import synth_xilinx_counts, write_verilog_folder

    try:
        board = get_profile(args.board)
    except BoardError as exc:
        raise UserError(str(exc)) from None
    for flag, value in (("--seed", args.seed), ("--attempts", args.attempts),
                        ("--place-seeds", args.place_seeds)):
        if value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    pinned = pinned_fields(args.overrides)
    t0 = time.perf_counter()
    result = fit_board(board, pinned, args.model)
    cfg = result.config
    say(f"fitted config for {board.name} ({board.part}) in {time.perf_counter() - t0:.0f} s: {describe(cfg)}")
    say(f"  {args.model}: {result.cycles:,} cycles = {result.cycles / (cfg.clock_mhz * 1e3):.2f} ms "
        f"at {cfg.clock_mhz:g} MHz (cycle model)")
    say(f"  {'resource (model)':<24}{'need':>9}{'available':>11}{'share':>8}")
    say(resource_lines(result.resources, board))
    say(f"  MACs per DSP per cycle: {macs_per_dsp(cfg, result.resources):.2f} "
        f"({cfg.macs_per_cycle} array MACs over {result.resources.dsp:,} multiplier blocks, "
        + ("two array products per DSP48E2)" if products_per_dsp(cfg, board.family) == 2
           else "one product per block)"))
    if args.fit_only:
        return 0
    root = Path(args.build_dir)
    folder = build_dir(root, board, cfg)
    if args.verilog_only or not board.open_flow:
        vdir = write_verilog_folder(cfg, board, folder / "verilog", result.resources.as_dict(), say)
        say(f"wrote {vdir}/ (vitamin_core.v, files.f, README.md with the port table, config.json)")
        if args.xilinx_synth and board.family != "ecp5":
            say("yosys synth_xilinx (cell counts only, no timing) ... (minutes)")
            try:
                cells = synth_xilinx_counts(vdir, board, args.timeout, say)
            except BuildError as exc:
                raise UserError(str(exc)) from None
            say("  " + ", ".join(f"{k} {v:,}" for k, v in cells.items()))
        if not board.open_flow:
            record_fitted(root, board, cfg, board.clock_mhz, "stated", str(vdir))
        return 0
    clock = args.clock or 125.0
    try:
        path, rep = build_core(cfg, board, root, clock, args.timeout, say, args.force, args.seed,
                               args.attempts, args.place_seeds)
    except BuildError as exc:
        raise UserError(str(exc)) from None
    say(format_report(rep))
    say(f"wrote {path}/report.txt and build.json")
    achieved = rep.achieved_mhz
    record_fitted(root, board, cfg, achieved, "achieved (nextpnr)", str(path))
    fps_cfg = cfg.replace(**board.config_overrides(achieved, cfg.lanes))
    if fps_cfg.dram_bytes == cfg.dram_bytes:
        ms = result.cycles / (achieved * 1e3)
        say(f"  {args.model} at the achieved {achieved:.1f} MHz: {ms:.2f} ms ({1e3 / ms:.2f} frames/s) "
            f"by the cycle model")
    else:
        say(f"  at the achieved {achieved:.1f} MHz the board gives {fps_cfg.dram_bytes} B/cycle: "
            f"run `vitamin simulate --board {board.name}` for the latency")
    return 0
