"""Integer reference executor benchmark (numbers only; nothing here asserts a time).

Prints, for DeiT-Tiny (random weights): calibration time on 32 random images, integer
inference time per image next to the FP32 timm model in the same process (and the ratio),
and for DeiT-Small the peak resident memory of a process that loads the integer graph and
runs one integer inference.

    python benchmarks/bench_integer.py [--batch 8] [--repeats 3]
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

g = IntGraph.load(sys.argv[1])
x = np.random.default_rng(0).integers(-128, 128, size=(1,) + g.tensors[g.inputs[0]].shape).astype(np.int8)
base = hwm_kib()
t0 = time.perf_counter()
execute(g, x)
dt = time.perf_counter() - t0
print(base, hwm_kib(), dt)
"""


def _best(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="images per timed inference")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (best is reported)")
    args = ap.parse_args()

    import torch
    from sw.executor import execute
    from sw.quantize import calibrate, create_model, quantize, quantize_input, quantize_timm, random_images

    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224")
    calib = random_images(model, 32, seed=0)
    t0 = time.perf_counter()
    obs = calibrate(model, calib, "minmax", progress=False)
    t_cal = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph = quantize(model, calib, observers=obs, progress=False)
    t_build = time.perf_counter() - t0
    print(f"DeiT-Tiny calibration, 32 images (minmax): {t_cal:.2f} s; graph construction {t_build:.2f} s")

    images = random_images(model, args.batch, seed=1)
    x = quantize_input(images, graph)
    xt = torch.from_numpy(images)
    with torch.no_grad():
        model(xt)
        t_fp32 = _best(lambda: model(xt), args.repeats) / args.batch
    execute(graph, x[:1])
    t_int = _best(lambda: execute(graph, x), args.repeats) / args.batch
    print(f"DeiT-Tiny per image (batch {args.batch}): FP32 timm {t_fp32 * 1e3:.1f} ms, "
          f"integer executor {t_int * 1e3:.1f} ms, ratio {t_int / t_fp32:.2f}x")

    small = quantize_timm("deit_small_patch16_224", n_calib=8, progress=False)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "deit_small.npz")
        small.save(path)
        out = subprocess.run([sys.executable, "-c", _CHILD, path], capture_output=True, text=True, check=True)
    base_kib, peak_kib, dt = out.stdout.split()
    print(f"DeiT-Small integer inference, 1 image, fresh process: peak RSS {int(peak_kib) / 1024:.0f} MiB "
          f"(after loading the graph: {int(base_kib) / 1024:.0f} MiB), {float(dt):.2f} s")


if __name__ == "__main__":
    main()
