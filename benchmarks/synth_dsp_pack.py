"""DSP blocks of the systolic array with and without ``dsp_pack`` on UltraScale+.

    python benchmarks/synth_dsp_pack.py            # N = 4
    python benchmarks/synth_dsp_pack.py --n 8
    python benchmarks/synth_dsp_pack.py --family xc7   # 7-series (DSP48E1), for comparison

Builds :class:`hw.systolic_array.SystolicArray` alone for ``N x N`` with ``dsp_pack`` 1 and 2,
converts it to RTLIL and runs Yosys ``synth_xilinx -family xcup`` (or ``--family``) on each (one run at a time),
printing the cell counts that matter (DSP48E2, LUTs, flip-flops, carry chains).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from amaranth.back import rtlil

from boards.synth import yosys_command
from hw.config import AcceleratorConfig
from hw.systolic_array import SystolicArray

CELLS = ("DSP48E2", "DSP48E1", "LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "CARRY8", "CARRY4", "FDRE", "FDSE")


def synth(n: int, dsp_pack: int, workdir: Path, family: str = "xcup") -> dict[str, int]:
    config = AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n, dsp_pack=dsp_pack)
    dut = SystolicArray(config)
    top = f"array_{n}_pack{dsp_pack}_{family}"
    (workdir / f"{top}.il").write_text(rtlil.convert(dut, name=top, ports=None))
    (workdir / f"{top}.ys").write_text(
        f"read_rtlil {top}.il\nsynth_xilinx -family {family} -top {top}\n"
        f"tee -q -o {top}_stat.json stat -json\n")
    subprocess.run([*yosys_command(), "-q", "-l", f"{top}.log", "-s", f"{top}.ys"],
                   cwd=workdir, check=True, capture_output=True)
    stats = json.loads((workdir / f"{top}_stat.json").read_text())
    return {str(k): int(v) for k, v in stats["design"]["num_cells_by_type"].items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="array size N (N x N)")
    parser.add_argument("--family", default="xcup", help="synth_xilinx -family (xcup, xc7)")
    parser.add_argument("--keep", type=Path, help="keep the Yosys files in this folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        print(f"| N = {args.n}, {args.family} | " + " | ".join(CELLS) + " | LUTs | seconds |")
        print("| --- |" + " ---: |" * (len(CELLS) + 2))
        for pack in (1, 2):
            start = time.monotonic()
            cells = synth(args.n, pack, workdir, args.family)
            luts = sum(v for k, v in cells.items() if k.startswith("LUT"))
            print(f"| dsp_pack={pack} | " + " | ".join(f"{cells.get(c, 0):,}" for c in CELLS)
                  + f" | {luts:,} | {time.monotonic() - start:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
