"""Cycle-model benchmark on DeiT-Small (16x16 array, 16 B/cycle DRAM by default).

Prints: timing-only simulation of one whole inference (simulated cycles, wall time,
simulated cycles per second; SCALE-Sim runs about 8.5 k cycles/s), the same with the data
path on, peak memory of both runs, and the MAC utilization of one transformer block next to
the tile-mapping upper bound with every array cycle of the block accounted for.  Numbers
only: nothing here asserts a time.

    python benchmarks/bench_simulator.py [--model deit_small_patch16_224] [--no-datapath]
"""
from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from compiler.lower import compile_graph
from hw.config import load_config, parse_overrides
from sim.machine import simulate
from sim.report import block_breakdown, build_report
from sim.units import UnitTimings

SCALE_SIM_CYCLES_PER_S = 8.5e3


def _graph(name: str, random_graph: bool):
    if not random_graph:
        try:
            from sw.quantize import quantize_timm
        except ImportError:
            print("sw.quantize not available: using a random DeiT-Small-shaped graph")
        else:
            t0 = time.perf_counter()
            g = quantize_timm(name)
            print(f"quantized {name} (random weights) in {time.perf_counter() - t0:.1f} s")
            return g
    from compiler.testgraphs import tiny_vit
    return tiny_vit(image=224, patch=16, dim=384, heads=6, depth=12, mlp_ratio=4, classes=1000)


def _measure(fn):
    """``(result, wall seconds, peak Python heap bytes)``: timed in a plain run, memory in a
    second run under tracemalloc (which slows Python down several times)."""
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, wall, peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_small_patch16_224")
    ap.add_argument("--random-graph", action="store_true",
                    help="skip the quantizer: random integer graph of DeiT-Small's shapes")
    ap.add_argument("--config", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-datapath", action="store_true", help="skip the data-path run")
    args = ap.parse_args()
    cfg = load_config(args.config, **parse_overrides(args.overrides))
    graph = _graph(args.model, args.random_graph)
    t0 = time.perf_counter()
    image = compile_graph(graph, cfg)
    print(f"config: {cfg.array_rows}x{cfg.array_cols} array, {cfg.vector_lanes} lanes, "
          f"DRAM {cfg.dram_bytes_per_cycle} B/cycle, latency {cfg.dram_latency_cycles}, "
          f"{cfg.clock_mhz:g} MHz")
    print(f"compile: {len(image.instructions)} instructions in {time.perf_counter() - t0:.2f} s")

    timings = UnitTimings(cfg)
    simulate(image, functional=False, timings=timings)          # warm the timing caches
    res, wall, peak = _measure(lambda: simulate(image, functional=False, timings=timings))
    print(f"\ntiming only: {res.cycles:,} simulated cycles in {wall:.3f} s wall = "
          f"{res.cycles / wall / 1e6:.1f} M cycles/s ({res.cycles / wall / SCALE_SIM_CYCLES_PER_S:,.0f}x "
          f"SCALE-Sim's 8.5 k cycles/s); Python heap peak {peak / 2**20:.1f} MiB")
    if not args.no_datapath:
        rng = np.random.default_rng(0)
        inputs = {t.name: rng.integers(-128, 128, size=t.shape) for t in image.inputs}
        res_d, wall_d, peak_d = _measure(lambda: simulate(image, inputs, functional=True, timings=timings))
        assert res_d.cycles == res.cycles
        print(f"data path on: {wall_d:.2f} s wall = {res.cycles / wall_d / 1e6:.2f} M cycles/s; "
              f"Python heap peak {peak_d / 2**20:.1f} MiB")
    print(f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")

    rep = build_report(image, res, timings)
    print(f"\nwhole model: {res.cycles:,} cycles = {rep.latency_ms:.2f} ms at {cfg.clock_mhz:g} MHz, "
          f"MAC utilization {100 * rep.utilization:.1f}% (tile-mapping bound {100 * rep.tile_bound:.1f}%)")
    block = rep.blocks[len(rep.blocks) // 2]
    b = rep.by_layer[block]
    cat, bound = block_breakdown(image, res, timings, block)
    print(f"one block ({block}): {b['span']:,} cycles, {b['macs'] / 1e6:.1f} M MACs, MAC utilization "
          f"{100 * b['mac_utilization']:.1f}% (tile-mapping bound {100 * bound:.1f}%)")
    print("  every array cycle of the block:")
    for k, v in cat.items():
        print(f"    {k:<34} {v:>12,.0f}  {100 * v / b['span']:5.1f}%")
    print(f"    {'total':<34} {sum(cat.values()):>12,.0f}  (block span {b['span']:,})")


if __name__ == "__main__":
    main()
