"""``vitamin cosim``: run a compiled model on the accelerator's RTL and check it.

The integer graph (``model.npz``) is compiled for the config (``--config``, ``--set``; the
DRAM latencies are set to the co-simulation memory model's), the core's Verilog is built
with Verilator (``--sim icarus`` for Icarus; the build is cached), and the program runs
under cocotb with DRAM an AXI4 memory model.  Printed: every output checked against the
integer reference executor and the cycle model, and the RTL's cycles and per-engine busy
counters next to the model's prediction.  ``--waves out.fst`` (or ``.vcd``) dumps the
waveforms; ``--backpressure SEED`` adds random pauses on every AXI channel (outputs are then
checked, cycles only reported).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cli.compile import add_config_arguments, compile_or_explain, config_from_args
from cli.main import UserError


def add_arguments(parser) -> None:
    parser.add_argument("graph", help="integer graph file (.npz, from vitamin quantize)")
    add_config_arguments(parser)
    parser.add_argument("--sim", choices=["verilator", "icarus"], default="verilator",
                        help="HDL simulator (default: verilator)")
    parser.add_argument("--waves", default=None, metavar="OUT.fst",
                        help="dump the waveforms of the run (.fst or .vcd)")
    parser.add_argument("--images", type=int, default=1, help="random input images to run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random input images")
    parser.add_argument("--backpressure", type=int, default=None, metavar="SEED",
                        help="random AXI pauses on every channel (seeded)")
    parser.add_argument("--max-cycles", type=int, default=None,
                        help="give up after this many cycles (default: 4x the model's prediction)")


def _say(message: str) -> None:
    print(f"  {message}", flush=True)


def run(args) -> int:
    from compiler.isa import Queue, ErrorCode, encode_program
    from sim import cosim
    from sim.machine import ProgramError, simulate
    from sw.executor import execute
    from sw.graph import IntGraph

    waves = None
    if args.waves:
        suffix = Path(args.waves).suffix.lower()
        if suffix not in (".fst", ".vcd"):
            raise UserError(f"--waves {args.waves}: the file must end in .fst or .vcd")
        waves = suffix[1:]
        if args.sim == "icarus" and waves == "vcd":
            raise UserError("--sim icarus writes FST waveforms: use --waves OUT.fst")
    if args.images < 1:
        raise UserError("--images must be at least 1")
    graph = IntGraph.load(args.graph)
    cfg = cosim.cosim_config(config_from_args(args))
    t0 = time.perf_counter()
    image = compile_or_explain(graph, cfg)
    print(f"compiled {args.graph}: {len(image.instructions):,} instructions for N = {cfg.lanes} "
          f"in {time.perf_counter() - t0:.1f} s")
    rng = np.random.default_rng(args.seed)
    runs, results, inputs = [], [], []
    for k in range(args.images):
        x = {t.name: rng.integers(np.iinfo(t.dtype).min, np.iinfo(t.dtype).max + 1, size=t.shape)
             for t in image.inputs}
        try:
            res = simulate(image, x)
        except ProgramError as exc:
            raise UserError(f"the cycle model rejects the program: {exc}") from None
        dram = image.initial_dram()
        for t in image.inputs:
            t.write(dram, x[t.name])
        limit = args.max_cycles or 4 * res.cycles + 10_000
        runs.append(cosim.Run(encode_program(image.instructions), dram, limit, f"image {k}",
                              pause_seed=None if args.backpressure is None else args.backpressure + k))
        results.append(res)
        inputs.append(x)
    print(f"cycle model: {results[0].cycles:,} cycles per image")
    print(f"building the core ({args.sim}):", flush=True)
    try:
        b = cosim.build(cfg, args.sim, waves, progress=_say)
        if b.reused:
            _say(f"reusing the build in {b.folder}")
        else:
            _say(f"Verilog {b.verilog_s:.0f} s, build {b.build_s:.0f} s")
        print(f"running {len(runs)} image(s) on the RTL:", flush=True)
        t0 = time.perf_counter()
        outs = cosim.run(b, runs, waves_to=args.waves, progress=_say)
    except cosim.CosimError as exc:
        raise UserError(str(exc)) from None
    wall = time.perf_counter() - t0
    ok = True
    for k, (x, res, out) in enumerate(zip(inputs, results, outs)):
        if out.timeout:
            print(f"image {k}: no done within {runs[k].max_cycles:,} cycles")
            ok = False
            continue
        if out.error:
            print(f"image {k}: the RTL stopped with {ErrorCode(out.error).name} at instruction "
                  f"{out.error_index}")
            ok = False
            continue
        ref = execute(graph, {name: v[None] for name, v in x.items()})
        for t in image.outputs:
            got = t.read(out.dram)
            want = ref[t.name][0]
            wrong = int(np.sum(got != want))
            ok &= wrong == 0
            if wrong:
                print(f"image {k}: output {t.name} {tuple(got.shape)}: {wrong} of {got.size} "
                      f"integers DIFFER from the integer executor's")
            else:
                print(f"image {k}: output {t.name} {tuple(got.shape)}: every integer equal to "
                      f"the integer executor's")
        dram_same = np.array_equal(out.dram, res.dram)
        ok &= dram_same
        print(f"image {k}: final DRAM ({len(out.dram):,} bytes) "
              f"{'equal to' if dram_same else 'DIFFERS from'} the cycle model's")
        if args.backpressure is None:
            same = out.cycles == res.cycles and out.busy == res.schedule.busy
            ok &= same
            print(f"image {k}: cycles RTL {out.cycles:,}, model {res.cycles:,} "
                  f"({out.cycles - res.cycles:+,})")
            print("         busy   " + "  ".join(f"{q.name} {o:,}/{m:,}" for q, o, m in
                                                  zip(Queue, out.busy, res.schedule.busy)) +
                  "  (RTL/model)")
        else:
            print(f"image {k}: cycles RTL {out.cycles:,} with back-pressure, model "
                  f"{res.cycles:,} without")
    total = sum(o.cycles for o in outs)
    print(f"RTL simulation: {total:,} cycles in {wall:.1f} s ({total / wall:,.0f} cycles/s)")
    if args.waves:
        print(f"waveforms: {args.waves}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1
