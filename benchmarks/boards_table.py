"""One table per board: fitted config, modelled (and, after a build, placed) resources,
clock, DeiT-Tiny / DeiT-Small latency and frames per second from the cycle model.

    python benchmarks/boards_table.py [--build-dir build] [BOARD ...]

The clock is the achieved Fmax of the board's last ``vitamin build`` when one is recorded in
``BUILD/<board>/fitted.json`` (open flow), else the profile's stated clock (marked so).
Memory bandwidth per cycle follows from the board's MB/s at that clock.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from boards.fit import fit, model_cycles
from boards.profiles import PROFILES, get_profile
from boards.resources import macs_per_dsp, products_per_dsp
from hw.config import AcceleratorConfig


def board_table(name: str, build_dir: Path) -> str:
    board = get_profile(name)
    record = build_dir / board.name / "fitted.json"
    built, xilinx = None, None
    if record.is_file():
        data = json.loads(record.read_text())
        cfg = AcceleratorConfig.from_dict(data["config"])
        clock, how = float(data["clock_mhz"]), data["clock_source"]
        how = "stated, not timed" if how == "stated" else how
        if data.get("build") and (Path(data["build"]) / "build.json").is_file():
            built = json.loads((Path(data["build"]) / "build.json").read_text())
        if data.get("build") and (Path(data["build"]) / "synth_xilinx.json").is_file():
            xilinx = xilinx_resources(json.loads((Path(data["build"]) / "synth_xilinx.json").read_text()))
    else:
        cfg = fit(board).config
        clock, how = board.clock_mhz, "stated, not timed"
    cfg = cfg.replace(**board.config_overrides(clock, cfg.lanes))
    from boards.fit import resources_on
    res = resources_on(cfg, board)
    lines = [f"### {board.title} (`{board.name}`, {board.part})", "",
             f"Config: N = {cfg.lanes} ({cfg.array_rows}x{cfg.array_cols} array, "
             f"{cfg.lut_mult_cols} columns on LUT multipliers"
             + (f", LayerNorm and softmax {cfg.norm_lanes} lanes wide" if cfg.norm_lanes else "")
             + (", two products per DSP48E2" if cfg.dsp_pack == 2 else "")
             + f"), scratchpad {cfg.scratchpad_kib} KiB"
             + (f" (region shares `{cfg.spad_shares}`)" if cfg.spad_shares else "")
             + f", accumulator {cfg.accumulator_kib} KiB, parameters {cfg.param_kib} KiB; clock "
             f"{clock:.1f} MHz ({how}); memory {board.memory}, {board.dram_mbps:g} MB/s = "
             f"{cfg.dram_bytes} B/cycle.", "",
             "| resource | model | " + ("placed (nextpnr) | " if built else "")
             + ("Yosys `synth_xilinx` | " if xilinx else "") + "available |",
             "| --- | ---: | " + ("---: | " if built else "") + ("---: | " if xilinx else "") + "---: |"]
    names = {"lut": "LUTs", "ff": "flip-flops", "dsp": "multipliers", "bram": f"block RAM ({board.bram_kbits} Kbit)",
             "uram": "UltraRAM"}
    for k, v in res.as_dict().items():
        if k == "uram" and not board.urams:
            continue
        placed = ""
        if built:
            u = built["utilization"].get(k)
            placed = f"{u[0]:,} | " if u else "- | "
        if xilinx:
            placed += f"{xilinx[k]:,} | "
        lines.append(f"| {names[k]} | {v:,} | {placed}{board.budget[k]:,} |")
    if xilinx:
        lines += ["", f"Yosys `synth_xilinx` cells, before Vivado's packing: LUTs are LUT1-LUT6 "
                  f"cells ({xilinx['lutram']:,} more LUTs as memory or shift registers), "
                  f"block RAM is RAMB36 + RAMB18 / 2; no timing."]
    per_block = products_per_dsp(cfg, board.family)
    lines += ["", f"MACs per multiplier block per cycle: {macs_per_dsp(cfg, res):.2f} "
              f"({cfg.macs_per_cycle} array MACs per cycle over {res.dsp} blocks; "
              + ("two array products per DSP48E2 (`dsp_pack = 2`), one per block in the units)"
                 if per_block == 2 else "one product per block)"), "",
              "| model | cycles | latency | frames/s |", "| --- | ---: | ---: | ---: |"]
    for model, title in (("deit_tiny", "DeiT-Tiny"), ("deit_small", "DeiT-Small")):
        # The hardware has one set of scratchpad region shares: no per-model resizing here
        # (the fitter sizes them for every table model at once).
        cyc, note = model_cycles(cfg, model), ""
        if cyc is None:
            lines.append(f"| {title} | does not compile (on-chip memory too small) | | |")
        else:
            ms = cyc / (clock * 1e3)
            lines.append(f"| {title}{note} | {cyc:,} | {ms:.2f} ms | {1e3 / ms:.2f} |")
    return "\n".join(lines) + "\n"


def xilinx_resources(cells: dict) -> dict:
    """Yosys ``synth_xilinx`` cell counts (``synth_xilinx.json``) as the resource model's
    kinds: LUT1-LUT6 cells, flip-flops (FD*), DSP48 blocks, 36 Kbit block RAMs (RAMB36 plus
    half the RAMB18s), UltraRAMs, and the LUTs used as memory (LUT RAM, SRL) apart."""
    def total(*prefixes):
        return sum(v for k, v in cells.items() if k.startswith(prefixes))
    # LUTs per LUT-RAM primitive (a RAM32M / RAM64M takes a SLICEM's four LUTs).
    lutram = {"RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "RAM128X1D": 4,
              "RAM256X1S": 4, "RAM256X1D": 8, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1S": 2}
    mem = sum(v * lutram.get(k, 1) for k, v in cells.items()
              if k.startswith(("RAM16", "RAM32", "RAM64", "RAM128", "RAM256", "SRL")))
    return {"lut": total("LUT"), "ff": total("FD"), "dsp": total("DSP48"),
            "bram": total("RAMB36") + (total("RAMB18") + 1) // 2, "uram": total("URAM"),
            "lutram": mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("boards", nargs="*", default=list(PROFILES))
    ap.add_argument("--build-dir", type=Path, default=Path("build"))
    args = ap.parse_args()
    for name in args.boards:
        print(board_table(name, args.build_dir), flush=True)


if __name__ == "__main__":
    main()
