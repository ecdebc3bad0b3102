"""Integer executor benchmark (numbers only; nothing here asserts a time).

Prints, for DeiT-Tiny (random weights): calibration time on 32 random images, the time per
image of the FP32 timm model, of the fast integer executor (:mod:`sw.fastexec`) and of the
numpy reference executor (:mod:`sw.executor`), all in the same process on the same batch,
and the ratios; then, for DeiT-Small, the peak resident memory of a fresh process that
loads the integer graph and runs an integer inference (1 image with each executor, and a
batch of 32, the ``vitamin evaluate`` default, with the fast one).

    python benchmarks/bench_integer.py [--batch 8] [--repeats 5] [--rounds 3] [--method fqvit|ivit|ptq4vit]

``--method`` quantizes with that integer method (PTQ4ViT with a small search grid: the
search changes the graph's constants, not the work per image).

The three models are timed in alternation (``--rounds`` rounds of ``--repeats`` runs each,
best run of each model reported) so that a change in the machine's load hits all of them.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

_CHILD = r"""
import sys, time
import numpy as np
from sw.graph import IntGraph
from sw.executor import execute

def hwm_kib():
    # VmHWM is the peak of this process's own memory map (ru_maxrss would carry the
    # parent's peak across fork + exec).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

fast = sys.argv[2] == "fast"
if fast:
    from sw import fastexec, fastkernels  # numba and the cached kernels load here
g = IntGraph.load(sys.argv[1])
n = int(sys.argv[3])
x = np.random.default_rng(0).integers(-128, 128, size=(n,) + g.tensors[g.inputs[0]].shape).astype(np.int8)
base = hwm_kib()
t0 = time.perf_counter()
execute(g, x, fast=fast)
dt = time.perf_counter() - t0
print(base, hwm_kib(), dt)
"""


def _best(fn, repeats, clock=time.perf_counter):
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="images per timed inference")
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per round and model")
    ap.add_argument("--rounds", type=int, default=3, help="rounds alternating the models")
    ap.add_argument("--skip-reference", action="store_true", help="do not time the reference executor")
    ap.add_argument("--method", default="fqvit", choices=("fqvit", "ivit", "ptq4vit"), help="integer method")
    args = ap.parse_args()
    opts = {"method": args.method}
    if args.method == "ptq4vit":
        opts.update(eq_n=4, rounds=1, max_rows=256, max_attn_rows=64)

    import torch
    from sw.executor import execute
    from sw.fastexec import FastExecutor
    from sw.quantize import calibrate, create_model, quantize, quantize_input, quantize_timm, random_images

    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224")
    calib = random_images(model, 32, seed=0)
    t0 = time.perf_counter()
    obs = calibrate(model, calib, "minmax", progress=False)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = quantize(model, calib, observers=obs, progress=False, **opts)
    t_build = time.perf_counter() - t0
    print(f"DeiT-Tiny, {args.method}: calibration, 32 images (minmax): {t_cal:.2f} s; graph construction "
          f"{t_build:.2f} s")

    images = random_images(model, args.batch, seed=1)
    x = quantize_input(images, graph)
    xt = torch.from_numpy(images)
    t0 = time.perf_counter()
    fe = FastExecutor(graph)
    t_prep = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast_out = fe.run(x[:1])
    t_first = time.perf_counter() - t0
    print(f"fast executor: {fe.threads} threads, {len(fe.fused_ops)} of {len(graph.ops)} ops fused; "
          f"preparation {t_prep * 1e3:.0f} ms, first run (loads the compiled kernels) {t_first:.2f} s")
    ref = execute(graph, x)
    fast_out = fe.run(x)
    same = all(np.array_equal(ref[k], fast_out[k]) for k in ref)
    print(f"fast == reference on the batch: {same}")
    best = {"fp32": [], "fast": [], "reference": []}
    with torch.no_grad():
        model(xt)
        for _ in range(args.rounds):
            best["fp32"].append(_best(lambda: model(xt), args.repeats))
            best["fast"].append(_best(lambda: fe.run(x), args.repeats))
            if not args.skip_reference:
                best["reference"].append(_best(lambda: execute(graph, x), max(1, args.repeats // 2)))
    per = {k: min(v) / args.batch for k, v in best.items() if v}
    line = (f"DeiT-Tiny per image (batch {args.batch}): FP32 timm {per['fp32'] * 1e3:.1f} ms, "
            f"fast integer {per['fast'] * 1e3:.1f} ms ({per['fast'] / per['fp32']:.2f}x FP32)")
    if "reference" in per:
        line += (f", reference integer {per['reference'] * 1e3:.1f} ms ({per['reference'] / per['fp32']:.2f}x FP32; "
                 f"fast is {per['reference'] / per['fast']:.1f}x faster)")
    print(line)
    print("  rounds (ms/img): " + "; ".join(f"{k} " + " ".join(f"{t / args.batch * 1e3:.1f}" for t in v)
                                             for k, v in best.items() if v))

    # One thread each (torch intra-op threads 1; one executor thread, single-threaded BLAS):
    # the work per image, less exposed to how the OS schedules two thread pools on a busy
    # machine.  CPU time of the process, best run.
    from threadpoolctl import threadpool_limits
    threads = torch.get_num_threads()
    fe1 = FastExecutor(graph, threads=1)
    cpu = {"fp32": [], "fast": []}
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), threadpool_limits(1, user_api="blas"):
            for _ in range(args.rounds):
                cpu["fp32"].append(_best(lambda: model(xt), args.repeats, time.process_time))
                cpu["fast"].append(_best(lambda: fe1.run(x), args.repeats, time.process_time))
    finally:
        torch.set_num_threads(threads)
    c = {k: min(v) / args.batch for k, v in cpu.items()}
    print(f"DeiT-Tiny per image, one thread each, CPU time: FP32 timm {c['fp32'] * 1e3:.1f} ms, "
          f"fast integer {c['fast'] * 1e3:.1f} ms ({c['fast'] / c['fp32']:.2f}x FP32)")

    small = quantize_timm("deit_small_patch16_224", n_calib=8, progress=False, **opts)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "deit_small.npz")
        small.save(path)
        for mode, n in (("fast", 1), ("fast", 32), ("reference", 1)):
            out = subprocess.run([sys.executable, "-c", _CHILD, path, mode, str(n)], capture_output=True,
                                 text=True, check=True)
            base_kib, peak_kib, dt = out.stdout.split()
            print(f"DeiT-Small, {n} image(s), {mode} executor, fresh process: peak RSS "
                  f"{int(peak_kib) / 1024:.0f} MiB (after loading the graph: {int(base_kib) / 1024:.0f} MiB), "
                  f"{float(dt):.2f} s")


if __name__ == "__main__":
    main()
