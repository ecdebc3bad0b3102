"""RTL co-simulation speed next to the cycle model's, on the same programs.

    python benchmarks/bench_cosim.py                       # all programs, Verilator and Icarus
    python benchmarks/bench_cosim.py --programs tiny,digits --sims verilator

Programs: a one-block tiny ViT on a 4 x 4 core, the digits ViT (one test image) on a 4 x 4
core, one DeiT-Tiny block (with its patch embedding and head) on the default 16 x 16 core.
For each simulator: the build time from scratch (Verilog generation, then the simulator's
build; a fresh cache folder, so nothing is reused), the RTL's cycles and its simulated
cycles per second (wall time of the run inside the simulator, cocotb included).  Icarus runs
are cut at ``--icarus-max-cycles`` (its speed is what is measured; the program does not
finish).  For the cycle model: its prediction, the timing-only run and the run with the data
path (every output integer), in CPU seconds.  The RTL's outputs and cycles are checked
against the model as in the tests; a mismatch is reported, not hidden.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compiler.isa import encode_program  # noqa: E402
from compiler.lower import compile_graph  # noqa: E402
from hw.config import load_config  # noqa: E402
from sim import cosim  # noqa: E402
from sim.machine import simulate  # noqa: E402


def _small(n: int):
    return cosim.cosim_config(load_config("tiny", array_rows=n, scratchpad_kib=64,
                                          accumulator_kib=16, instr_buffer=64))


def program(name: str):
    """``(graph, config, inputs)`` of a benchmark program."""
    if name == "tiny":
        from compiler.testgraphs import random_image, tiny_vit
        graph = tiny_vit(seed=4, depth=1)
        return graph, _small(4), {graph.inputs[0]: random_image(graph, seed=1)}
    if name == "digits":
        from sw.digits import load_or_train
        from sw.quantize import quantize, quantize_input
        model, split = load_or_train(seed=0, progress=False)
        graph = quantize(model, split.train_x[:64], progress=False)
        return graph, _small(4), {graph.inputs[0]: quantize_input(split.test_x[:1], graph)[0]}
    if name == "deit":
        import torch
        from sw.quantize import create_model, quantize, quantize_input, random_images
        torch.manual_seed(0)
        model = create_model("deit_tiny_patch16_224", depth=1)
        graph = quantize(model, random_images(model, 8, seed=0), progress=False)
        x = quantize_input(random_images(model, 1, seed=1), graph)[0]
        return graph, cosim.cosim_config(load_config(None)), {graph.inputs[0]: x}
    raise SystemExit(f"unknown program {name!r} (tiny, digits, deit)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", default="tiny,digits,deit")
    ap.add_argument("--sims", default="verilator,icarus")
    ap.add_argument("--icarus-max-cycles", type=int, default=20_000)
    args = ap.parse_args()
    builds: dict = {}
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitamin-bench-cosim-") as cache:
        for name in args.programs.split(","):
            graph, cfg, x = program(name)
            image = compile_graph(graph, cfg)
            simulate(image, functional=False)               # warm-up: imports, caches
            c0 = time.process_time()
            timing = simulate(image, functional=False)
            t_timing = time.process_time() - c0
            c0 = time.process_time()
            res = simulate(image, x)
            t_data = time.process_time() - c0
            print(f"{name}: N = {cfg.lanes}, {len(image.instructions):,} instructions, model "
                  f"{res.cycles:,} cycles; model timing only {t_timing:.3f} s CPU "
                  f"({res.cycles / t_timing / 1e6:.2f} M cycles/s), data path {t_data:.2f} s CPU",
                  flush=True)
            assert timing.cycles == res.cycles
            dram = image.initial_dram()
            for t in image.inputs:
                t.write(dram, x[t.name])
            for sim in filter(None, args.sims.split(",")):
                key = (sim, cfg)
                if key not in builds:
                    builds[key] = cosim.build(cfg, sim, cache=cache,
                                              progress=lambda m: print(f"  {m}", flush=True))
                b = builds[key]
                limit = 4 * res.cycles + 10_000
                if sim == "icarus":
                    limit = min(limit, args.icarus_max_cycles)
                run = cosim.Run(encode_program(image.instructions), dram, limit, name)
                (out,) = cosim.run(b, [run])
                if out.timeout:
                    cycles, verdict = limit, f"cut at {limit:,} cycles"
                else:
                    cycles = out.cycles
                    same = (out.cycles == res.cycles and out.busy == list(res.schedule.busy)
                            and np.array_equal(out.dram, res.dram))
                    verdict = ("cycles, busy counters and DRAM equal to the model's" if same
                               else f"MISMATCH: RTL {out.cycles:,} cycles, model {res.cycles:,}")
                rate = cycles / out.wall_s
                print(f"  {sim}: build {b.verilog_s:.0f} s Verilog + {b.build_s:.0f} s "
                      f"{'(reused)' if b.reused else ''}; run {out.wall_s:.1f} s, "
                      f"{rate:,.0f} cycles/s; {verdict}", flush=True)
                rows.append((name, cfg.lanes, res.cycles, sim, cycles, out.wall_s, rate,
                             res.cycles / t_timing, b.verilog_s + b.build_s, verdict))
    print()
    print("| program | N | model cycles | simulator | RTL cycles run | RTL cycles/s | model cycles/s "
          "(timing only, CPU) | build s | check |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---|")
    for name, n, mc, sim, cyc, wall, rate, mrate, bs, verdict in rows:
        print(f"| {name} | {n} | {mc:,} | {sim} | {cyc:,} | {rate:,.0f} | {mrate:,.0f} | "
              f"{bs:.0f} | {verdict} |")


if __name__ == "__main__":
    main()
