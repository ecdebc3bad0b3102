"""Cycle-model benchmark on DeiT-Small (16x16 array, 16 B/cycle DRAM by default).

Prints, for one whole inference: compile time; timing-only simulation (simulated cycles,
wall time of the first run and the best of three, and the best run's CPU time, which
does not grow when other jobs share the machine, simulated cycles per second next to
SCALE-Sim's 8.5 k cycles/s); the same with the data path on; the peak resident memory of each
run; and the MAC utilization of one transformer block next to the tile-mapping upper bound,
with every array cycle of the block accounted for.  Numbers only: nothing here asserts a time.

Each simulation runs in a fresh child process that imports only numpy, the compiler and the
cycle model (not torch), so its peak resident set size is the memory the run itself needs.

    python benchmarks/bench_simulator.py [--model deit_small_patch16_224] [--graph g.npz]
                                         [--random-graph [deit_small|swin_tiny]] [--no-datapath]
                                         [--set FIELD=VAL]
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

SCALE_SIM_CYCLES_PER_S = 8.5e3
REPEATS = 3


def _graph_file(args, folder: Path) -> tuple[Path, str]:
    """The integer graph to benchmark, as a file, and where it came from."""
    if args.graph:
        return Path(args.graph), f"graph {args.graph}"
    path = folder / "graph.npz"
    if args.random_graph == "swin_tiny":
        from compiler.testgraphs import swin_tiny_shaped
        swin_tiny_shaped().save(path)
        return path, "random integer graph of Swin-T's shapes (compiler.testgraphs.swin_tiny_shaped)"
    if args.random_graph:
        from compiler.testgraphs import tiny_vit
        tiny_vit(image=224, patch=16, dim=384, heads=6, depth=12, mlp_ratio=4,
                 classes=1000).save(path)
        return path, "random integer graph of DeiT-Small's shapes (compiler.testgraphs)"
    from cli.simulate import _cache_path
    cached = _cache_path(args.model)
    if cached.is_file():
        return cached, f"{args.model}, random weights, quantized (cached {cached})"
    from sw.quantize import quantize_timm
    t0 = time.perf_counter()
    graph = quantize_timm(args.model)
    graph.save(cached)
    return cached, f"{args.model}, random weights, quantized in {time.perf_counter() - t0:.0f} s"


def _run_child(graph_path: str, overrides: list[str], config: str | None, functional: bool) -> dict:
    """Compile and simulate in this (fresh) process; wall times and the peak RSS."""
    import numpy as np

    from compiler.lower import compile_graph
    from hw.config import load_config, parse_overrides
    from sim.machine import simulate
    from hw.units import UnitTimings
    from sw.graph import IntGraph

    graph = IntGraph.load(graph_path)
    cfg = load_config(config, **parse_overrides(overrides))
    t0 = time.perf_counter()
    UnitTimings(cfg).load()                             # import the hw unit modules once
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    image = compile_graph(graph, cfg)
    compile_s = time.perf_counter() - t0
    inputs = None
    if functional:
        rng = np.random.default_rng(0)
        inputs = {t.name: rng.integers(-128, 128, size=t.shape) for t in image.inputs}
    walls, cpus = [], []
    for _ in range(REPEATS if not functional else 1):
        timings = UnitTimings(cfg)                      # cold timing caches every run
        t0, c0 = time.perf_counter(), time.process_time()
        res = simulate(image, inputs, functional=functional, timings=timings)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return {"import_s": import_s, "compile_s": compile_s, "instructions": len(image.instructions),
            "cycles": res.cycles, "first_s": walls[0], "best_s": min(walls),
            "best_cpu_s": min(cpus), "peak_rss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    """Peak resident set size of this process image (``VmHWM``; unlike ``ru_maxrss`` it
    starts afresh at exec, so a child does not inherit its parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_child(*args) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_run_child, args)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--graph", default=None, help="benchmark this integer graph file instead")
    ap.add_argument("--random-graph", nargs="?", const="deit_small", default=None,
                    choices=("deit_small", "swin_tiny"),
                    help="skip the quantizer: random integer graph of DeiT-Small's shapes (or "
                         "swin_tiny: Swin-T's; add --set max_channels=1536 --set param_kib=32)")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-datapath", action="store_true", help="skip the data-path run")
    args = ap.parse_args()

    from compiler.lower import compile_graph
    from hw.config import load_config, parse_overrides
    from sim.machine import simulate
    from sim.report import block_breakdown, build_report
    from hw.units import UnitTimings
    from sw.graph import IntGraph

    with tempfile.TemporaryDirectory() as tmp:
        graph_path, source = _graph_file(args, Path(tmp))
        cfg = load_config(args.config, **parse_overrides(args.overrides))
        print(f"model: {source}")
        print(f"config: {cfg.array_rows}x{cfg.array_cols} array, {cfg.vector_lanes} lanes, "
              f"{cfg.scratchpad_kib} KiB scratchpad, {cfg.accumulator_kib} KiB accumulator, {cfg.param_kib} KiB parameters, "
              f"DRAM {cfg.dram_bytes} B/cycle, latency {cfg.dram_latency_cycles}, "
              f"{cfg.clock_mhz:g} MHz")
        t = _in_child(str(graph_path), args.overrides, args.config, False)
        print(f"setup: importing the hw unit modules (timing formulas) {t['import_s']:.2f} s")
        print(f"compile: {t['instructions']:,} instructions in {t['compile_s']:.2f} s")
        print(f"timing only: {t['cycles']:,} simulated cycles; first run {t['first_s']:.3f} s, "
              f"best of {REPEATS} {t['best_s']:.3f} s = {t['cycles'] / t['best_s'] / 1e6:.1f} M "
              f"cycles/s ({t['cycles'] / t['best_s'] / SCALE_SIM_CYCLES_PER_S:,.0f}x SCALE-Sim's "
              f"8.5 k cycles/s); compile + first run {t['compile_s'] + t['first_s']:.2f} s; "
              f"peak RSS of the process {t['peak_rss_mib']:.0f} MiB")
        print(f"timing only, CPU time of the best run (what the wall time is on an idle core): "
              f"{t['best_cpu_s']:.3f} s")
        if not args.no_datapath:
            d = _in_child(str(graph_path), args.overrides, args.config, True)
            assert d["cycles"] == t["cycles"]
            print(f"data path on: {d['first_s']:.2f} s = {d['cycles'] / d['first_s'] / 1e6:.2f} M "
                  f"cycles/s, {d['instructions'] / d['first_s']:,.0f} instructions/s; "
                  f"peak RSS of the process {d['peak_rss_mib']:.0f} MiB")

        graph = IntGraph.load(graph_path)
    image = compile_graph(graph, cfg)
    timings = UnitTimings(cfg)
    res = simulate(image, functional=False, timings=timings)
    rep = build_report(image, res, timings)
    print(f"\nwhole model: {res.cycles:,} cycles = {rep.latency_ms:.2f} ms at {cfg.clock_mhz:g} MHz "
          f"({rep.fps:.1f} frames/s), MAC utilization {100 * rep.utilization:.1f}% "
          f"(tile-mapping bound {100 * rep.tile_bound:.1f}%)")
    block = rep.blocks[len(rep.blocks) // 2]
    b = rep.by_layer[block]
    cat, bound = block_breakdown(image, res, timings, block)
    print(f"one block ({block}): {b['span']:,} cycles, {b['macs'] / 1e6:.1f} M MACs on the array "
          f"(+ {b['attn_macs'] / 1e6:.1f} M codes x V on the LIS unit), array MAC utilization "
          f"{100 * b['mac_utilization']:.1f}% (tile-mapping bound {100 * bound:.1f}%)")
    print("  every array cycle of the block:")
    for k, v in cat.items():
        print(f"    {k:<34} {v:>12,.0f}  {100 * v / b['span']:5.1f}%")
    print(f"    {'total':<34} {sum(cat.values()):>12,.0f}  (block span {b['span']:,})")


if __name__ == "__main__":
    main()
