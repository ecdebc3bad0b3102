"""Verilog of the core for any board: one folder with the Verilog, a file list and a README.

``write_verilog_folder(config, board, folder)`` writes

* ``vitamin_core.v``: the whole core (Amaranth's Verilog back end, top module
  ``vitamin_core``; memories as Verilog arrays that Vivado and Yosys infer as block RAM),
* ``files.f``: the file list (one path per line, for ``read_verilog -f`` / Vivado's
  ``add_files``),
* ``config.json``: the config it was built for,
* ``README.md``: the ports (the AXI4 manager ``m_axi__*``, the AXI4-Lite subordinate
  ``s_axil__*``, ``irq``, ``clk``, ``rst``), how to connect them on this board (the Zynq HP
  port for the Xilinx SoCs) and the modelled resources.

For Xilinx boards :func:`synth_xilinx_counts` runs ``yosys synth_xilinx`` on that Verilog
and gives cell counts (LUTs, FFs, DSP48, RAMB): an open-tools estimate, no timing claimed.
The folder is written to a temporary name and renamed into place when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from boards.profiles import BoardProfile
from hw.config import AcceleratorConfig

__all__ = ["write_verilog_folder", "port_rows", "synth_xilinx_counts", "TOP"]

TOP = "vitamin_core"


def port_rows(config: AcceleratorConfig) -> list[tuple[str, str, int, str]]:
    """``(verilog port, direction, width, meaning)`` for every port of the core."""
    from amaranth.lib import wiring
    from hw.axi import axi4_lite_signature, axi4_signature
    from hw.core.core import REGISTER_ADDR_BITS

    rows = [("clk", "input", 1, "the accelerator clock (every register; one clock domain)"),
            ("rst", "input", 1, "synchronous reset, active high")]
    meaning = {
        "aw": "write address channel", "w": "write data channel", "b": "write response channel",
        "ar": "read address channel", "r": "read data channel",
    }

    def chan(name: str) -> str:
        for prefix in ("aw", "ar", "w", "b", "r"):
            if name.startswith(prefix):
                return meaning[prefix]
        return ""

    for port, sig, manager in (("m_axi", axi4_signature(32, config.lanes), True),
                               ("s_axil", axi4_lite_signature(REGISTER_ADDR_BITS, 4), False)):
        for name, member in sig.members.items():
            out = (member.flow == wiring.Out) == manager
            rows.append((f"{port}__{name}", "output" if out else "input", member.shape.width
                         if hasattr(member.shape, "width") else int(member.shape),
                         f"{'AXI4 manager (DRAM)' if manager else 'AXI4-Lite subordinate (registers)'}: "
                         f"{chan(name)}"))
    rows.append(("irq", "output", 1, "interrupt: high while a run is done and CTRL bit 1 is set"))
    return rows


def readme(config: AcceleratorConfig, board: BoardProfile, resources: dict | None,
           xilinx: dict | None) -> str:
    n = config.lanes
    lines = [
        f"# vitamin core for {board.title}",
        "",
        f"Part {board.part}; config: N = {n} ({n}x{n} array, {n} vector lanes, "
        f"lut_mult_cols = {config.lut_mult_cols}, dsp_pack = {config.dsp_pack}), "
        f"scratchpad {config.scratchpad_kib} KiB"
        + (f" (region shares {config.spad_shares})" if config.spad_shares else "") + ", "
        f"accumulator {config.accumulator_kib} KiB, parameters {config.param_kib} KiB, "
        f"instruction buffer {config.instr_buffer}; full config in `config.json`.",
        "",
        f"Files: `{TOP}.v` (top module `{TOP}`), file list `files.f`.",
        "",
        "## Integration",
        "",
        f"- `m_axi`: AXI4 manager, 32-bit addresses, {8 * n}-bit data ({n} bytes), INCR bursts "
        "of up to 256 beats that never cross 4 KiB, one ID (0). "
        "The rest of the AXI4 set (AxLOCK, AxCACHE, AxPROT, AxQOS, "
        "AxREGION, *USER) is not a port: tie it to constants at the interconnect (all zero is "
        "a normal, non-exclusive access; docs/ACCELERATOR.md, Shells).",
        "- `s_axil`: AXI4-Lite subordinate, 12-bit addresses, 32-bit data: the register map "
        "of docs/HARDWARE.md (ID 0x4D544956 at offset 0).",
        "- `irq`: level interrupt.",
        f"- Memory: {board.memory}. {board.notes}",
        f"- Clock: {board.clock_mhz:g} MHz "
        + ("(stated for this board: an assumption, not timed by vitamin; close timing in the "
           "vendor tools)." if not board.open_flow else "(see the build report for the achieved Fmax)."),
        "",
        "## Ports",
        "",
        "| port | direction | width | meaning |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [f"| `{p}` | {d} | {w} | {m} |" for p, d, w, m in port_rows(config)]
    if resources:
        lines += ["", "## Resources (vitamin's resource model, an estimate)", "",
                  "| resource | model | available |", "| --- | ---: | ---: |"]
        for k, v in resources.items():
            lines.append(f"| {k} | {v:,} | {board.budget.get(k, 0):,} |")
    if xilinx:
        lines += ["", "## Yosys `synth_xilinx` cell counts (open-tools estimate, no timing)", "",
                  "| cell | count |", "| --- | ---: |"]
        lines += [f"| {k} | {v:,} |" for k, v in xilinx.items()]
    return "\n".join(lines) + "\n"


def write_verilog_folder(config: AcceleratorConfig, board: BoardProfile, folder: Path,
                         resources: dict | None = None,
                         progress: Callable[[str], None] | None = None) -> Path:
    """Write the folder (module docstring); returns its path."""
    from amaranth.back import verilog
    from hw.core.core import Core

    say = progress or (lambda s: None)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        t0 = time.monotonic()
        say(f"Verilog of the core (N={config.lanes}) ...")
        text = verilog.convert(Core(config), name=TOP, emit_src=False)
        (work / f"{TOP}.v").write_text(text)
        (work / "files.f").write_text(f"{TOP}.v\n")
        (work / "config.json").write_text(json.dumps(config.to_dict(), indent=1) + "\n")
        (work / "README.md").write_text(readme(config, board, resources, None))
        say(f"  wrote {len(text) // 1024:,} KiB of Verilog in {time.monotonic() - t0:.0f} s")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(work, folder)
    return folder


def synth_xilinx_counts(folder: Path, board: BoardProfile, timeout: float | None = None,
                        progress: Callable[[str], None] | None = None) -> dict:
    """``yosys synth_xilinx`` of ``folder/vitamin_core.v`` for ``board``'s family; the cell
    counts (also added to the folder's README and written to ``synth_xilinx.json``)."""
    from boards.build import run_tool
    from boards.synth import yosys_command

    family = "xcup" if board.family == "ultrascale+" else "xc7"
    script = folder / "synth_xilinx.ys"
    script.write_text(f"read_verilog {TOP}.v\nsynth_xilinx -family {family} -top {TOP}\n"
                      f"tee -q -o synth_xilinx_stat.json stat -json\n")
    run_tool([*yosys_command(), "-s", script.name], folder, folder / "synth_xilinx.log",
             "yosys synth_xilinx", timeout, progress)
    stats = json.loads((folder / "synth_xilinx_stat.json").read_text())
    cells = {str(k): int(v) for k, v in stats["design"]["num_cells_by_type"].items()}
    keep = {}
    for k, v in sorted(cells.items()):
        if k.startswith(("LUT", "FD", "DSP48", "RAMB", "URAM", "CARRY", "RAM", "SRL", "MUXF")):
            keep[k] = v
    (folder / "synth_xilinx.json").write_text(json.dumps(keep, indent=1) + "\n")
    config = AcceleratorConfig.from_dict(json.loads((folder / "config.json").read_text()))
    text = (folder / "README.md").read_text()
    if "synth_xilinx" not in text:
        resources = None
        (folder / "README.md").write_text(readme(config, board, resources, keep))
    return keep
