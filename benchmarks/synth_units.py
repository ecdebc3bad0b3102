"""ECP5 (LFE5U-85F) resources of every hardware unit at one config, and docs/HARDWARE.md.

    python benchmarks/synth_units.py                       # table of every unit, default config
    python benchmarks/synth_units.py --doc docs/HARDWARE.md  # also (re)write the hardware doc

Each unit of :data:`hw.units.UNITS` is built for the config, converted to Verilog and
synthesized with Yosys ``synth_ecp5`` (:mod:`boards.synth`).  A unit that cannot be built or
synthesized gets a row saying why; the others are still reported.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

from boards.synth import DEVICE, DEVICE_CAPACITY, REPORTED_CELLS, SynthResult, synthesize_unit
from hw.config import load_config, parse_overrides
from hw.units import UNITS, buildable_units, member_docs
from sw.graph import atomic_write_bytes

COLUMNS = ("LUT4", "TRELLIS_FF", "CCU2C", "MULT18X18D", "DP16KD", "TRELLIS_DPR16X4")


def cell_text(result: SynthResult, cell: str) -> str:
    count = result.count(cell)
    if cell in DEVICE_CAPACITY:
        return f"{count} ({100 * result.utilization(cell):.1f}%)"
    return str(count)


def total(results: dict[str, SynthResult | str]) -> SynthResult:
    """The cells of all synthesized units together."""
    done = [r for r in results.values() if not isinstance(r, str)]
    cells = {c: sum(r.count(c) for r in done) for c in {c for r in done for c in r.cells}}
    return SynthResult("all units", cells, sum(r.seconds for r in done))


def table(results: dict[str, SynthResult | str]) -> str:
    """Markdown table: one row per unit and a total, cell counts (and share of the device)."""
    lines = ["| unit | " + " | ".join(COLUMNS) + " | yosys s |",
             "| --- |" + " ---: |" * (len(COLUMNS) + 1)]
    for name, result in [*results.items(), ("all units", total(results))]:
        if isinstance(result, str):
            lines.append(f"| {name} | not available: {result} |" + " |" * len(COLUMNS))
        else:
            cells = " | ".join(cell_text(result, c) for c in COLUMNS)
            lines.append(f"| {name} | {cells} | {result.seconds:.0f} |")
    return "\n".join(lines)


def timing_functions(spec) -> list:
    """The unit's timing functions: its ``<unit>_timing`` first, then any other public
    ``*_timing`` function its module defines (e.g. a table or parameter load)."""
    module = importlib.import_module(spec.module)
    main_fn = spec.timing_function()
    others = [fn for name, fn in sorted(vars(module).items())
              if name.endswith("_timing") and not name.startswith("_") and callable(fn)
              and getattr(fn, "__module__", None) == spec.module and fn is not main_fn]
    return [main_fn, *others]


#: Shapes of an ECP5 DP16KD block RAM: (words, data bits per word); the 9-, 18- and 36-bit
#: shapes hold 8, 16 and 32 data bits (one parity bit per byte), the widest one (512 x 36)
#: only with one write and one read port, which is how every memory of the core is used.
DP16KD_SHAPES = ((16384, 1), (8192, 2), (4096, 4), (2048, 8), (1024, 16), (512, 32))


def dp16kd_blocks(depth: int, width: int) -> int:
    """DP16KD blocks of a ``depth x width``-bit memory in its cheapest shape (an estimate:
    what a perfect mapping gives; Yosys may take more)."""
    return min(-(-width // w) * -(-depth // d) for d, w in DP16KD_SHAPES)


def _kib(nbytes: int) -> str:
    return f"{nbytes // 1024} KiB" if nbytes % 1024 == 0 else f"{nbytes} bytes"


def core_section(config) -> str:
    """The core's register map (:mod:`hw.core.registers`) and its memories at ``config``
    (:attr:`hw.config.AcceleratorConfig.regions`, their writers and readers in
    :mod:`hw.core.core`, their shapes from :func:`hw.core.memories.geometry`)."""
    from compiler.isa import INSTR_BYTES
    from hw.config import ACC_REGIONS, SPAD_REGIONS
    from hw.core import registers as regs
    from hw.core.core import READERS, REGISTER_ADDR_BITS, WRITERS
    from hw.core.memories import geometry

    n = config.lanes
    out = [
        "## The core: register map and memory organisation",
        "",
        "`hw.core.core.Core(config)`, the accelerator (docs/ACCELERATOR.md): `m_axi`, one AXI4",
        f"manager port to DRAM (32-bit addresses, `N`-byte data, `N = {n}` here); `s_axil`, the",
        f"AXI4-Lite register port ({REGISTER_ADDR_BITS}-bit addresses, 32-bit data); `irq`.",
        "",
        "### Register map",
        "",
        "`hw.core.registers.Reg` (offsets) and `REGISTERS` (access, meaning).  Every register is",
        "32 bits.  A write to an offset that is not a writable register, or a read of an offset",
        "that is not a register, answers `SLVERR` (a read then returns 0).",
        "",
        "| offset | name | access | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for reg in regs.Reg:
        access, meaning = regs.REGISTERS[reg]
        out.append(f"| 0x{int(reg):02X} | `{reg.name}` | {access} | {meaning} |")
    out += [
        "",
        f"`ID` reads 0x{regs.CORE_ID:08X}, `VERSION` {regs.CORE_VERSION}.  Bit masks: "
        f"`CTRL_START` 0x{regs.CTRL_START:X},",
        f"`CTRL_IRQ_ENABLE` 0x{regs.CTRL_IRQ_ENABLE:X}, `CTRL_CLEAR` 0x{regs.CTRL_CLEAR:X}; "
        f"`STATUS_BUSY` 0x{regs.STATUS_BUSY:X}, `STATUS_DONE` 0x{regs.STATUS_DONE:X},",
        f"`STATUS_ERROR` 0x{regs.STATUS_ERROR:X}.",
        "",
        "### Memories",
        "",
        f"At `scratchpad_kib={config.scratchpad_kib}`, `accumulator_kib={config.accumulator_kib}`, "
        f"`param_kib={config.param_kib}`, `N = {n}`:",
        "every region of `hw.config.SPAD_REGIONS` (shares of `scratchpad_kib` in 32nds),",
        "`hw.config.ACC_REGIONS` (shares of `accumulator_kib` in 4ths) and the parameter memory",
        "(`param_kib`) is a memory of its own with one write port (its writer,",
        "`hw.core.core.WRITERS`) and one synchronous read port (its reader, `hw.core.core.READERS`).",
        "Addresses are bytes (scratchpad) or 32-bit words (accumulators, parameters); a memory row",
        "(`hw.core.memories.geometry`) is `N` bytes or `N` words, written with byte or word enables",
        "(parameter words are stored as 4 bytes each).  DP16KD: the 18-kbit block RAMs of the",
        "cheapest block shape (an estimate; 8 data bits of every 9).",
        "",
        "| memory | share | addresses | bytes | rows x bits | write enables | writer | reader | DP16KD |",
        "| --- | --- | --- | ---: | --- | --- | --- | --- | ---: |",
    ]
    shares = {**{k: f"{v[0]}/32" for k, v in SPAD_REGIONS.items()},
              **{k: f"{v[0]}/4" for k, v in ACC_REGIONS.items()}, "param": "all"}
    unit = {"spad": "bytes", "acc": "words", "param": "words"}
    total_bytes = total_blocks = 0
    for name, region in config.regions.items():
        g = geometry(config, name)
        nbytes = g.depth * g.width // 8
        blocks = dp16kd_blocks(g.depth, g.width)
        total_bytes += nbytes
        total_blocks += blocks
        out.append(
            f"| `{name}` | {shares[name]} | {unit[region.space]} {region.base}..{region.end - 1} | "
            f"{nbytes} ({_kib(nbytes)}) | {g.depth} x {g.width} | {g.width // g.granularity} x "
            f"{g.granularity} bits | {WRITERS[name][0].name} | {READERS[name][0].name} | {blocks} |")
    # Memories inside the sequencer and the tile engines (hw/core/sequencer.py: the
    # instruction memory, rows of max(32, N) bytes; hw/core/tile_engine.py: each engine's
    # accumulation buffer, max_tile_rows rows of N int32).
    imem_row = max(INSTR_BYTES, n)
    imem_depth = max(config.instr_buffer * INSTR_BYTES // imem_row, 2)
    others = [("instruction memory (sequencer)", imem_depth, 8 * imem_row, 1),
              ("accumulation buffer (MATRIX, ATTN: one each)", config.max_tile_rows, 32 * n, 2)]
    out += ["", "The core's other memories:", "",
            "| memory | bytes | rows x bits | DP16KD |", "| --- | ---: | --- | ---: |"]
    for what, depth, width, copies in others:
        nbytes = depth * width // 8
        blocks = dp16kd_blocks(depth, width)
        total_bytes += copies * nbytes
        total_blocks += copies * blocks
        each = " each" if copies > 1 else ""
        out.append(f"| {what} | {nbytes} ({_kib(nbytes)}){each} | {depth} x {width} | {blocks}{each} |")
    out += ["",
            f"All of them: {total_bytes} bytes ({_kib(total_bytes)}), about {total_blocks} DP16KD "
            f"of the {DEVICE}'s {DEVICE_CAPACITY['DP16KD']},",
            "before the units' own memories (parameter records, tables, row buffers: the unit",
            "sections below).", "",
            "### The vector engine's score path (Swin)", "",
            "Between the requantizer and the softmax unit, SOFTMAX adds Swin's relative position",
            "bias and shift mask to each int16 score, `clip16(score + bias + mask)`",
            "(`sw.intops.score_bias`): per lane a 19-bit three-input adder and a clamp, the bias",
            "lane assembled from one byte of `vin` (low) and one of `vin2` (high, signed), the",
            "mask a compare of the key column with `keep_lo` / `keep_hi` selecting `mask_value`.",
            "Combinational between the requantizer's output register and the softmax's input:",
            "no cycle is added (`vector_timing` is unchanged).", ""]
    return "\n".join(out)


def unit_section(name: str, result: SynthResult | str) -> str:
    """One unit's doc section: class, summary, interface, timing docstring, resources."""
    spec = UNITS[name]
    out = [f"## {name}", ""]
    try:
        cls = spec.component_class()
        timings = timing_functions(spec)
    except (ImportError, AttributeError) as exc:
        return "\n".join(out + [f"Not finished when this document was generated: {exc}.", ""])
    summary = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    out += [f"`{spec.module}.{spec.class_name}(config)`: {summary}", "", "Interface:", ""]
    out += [f"- `{member}`: {text}" for member, text in member_docs(cls).items()]
    for fn in timings:
        arguments = ", ".join(inspect.signature(fn).parameters)
        out += ["", f"Timing, `{spec.module}.{fn.__name__}({arguments})`:", ""]
        out += ["> " + line if line else ">" for line in inspect.cleandoc(fn.__doc__ or "").splitlines()]
    out += [""]
    if isinstance(result, str):
        out += [f"Not synthesized: {result}", ""]
    else:
        counts = ", ".join(f"{result.count(c)} {c}" for c in COLUMNS)
        out += [f"Resources at the config above: {counts}.", ""]
    return "\n".join(out)


#: The units' reset convention and what measured it (kept in the generated document).
RESETS = """\
Resets: a unit's valid bits, flags (a tile's swap, a weight write), counters, row states
and accumulators that start from their reset value take the `sync` reset (the core's engine
reset at the start of every run); the data registers are reset-less, because nothing reads
them without a valid bit or state that the reset clears: the pipeline payloads of the
vector units (softmax, layernorm, requantizer, residual_add: data, row constants, write
addresses), the systolic array's operand values, weights, products, partial sums and
de-skew registers, the LIS attention unit's v, codes and adder trees, and the tile
engines' instruction fields, tile counters, transpose banks and result registers (the
engine's `running`, the FIFOs' levels, the row counters and the valid flags keep the reset).
A reset-less flip-flop needs no reset net and packs with any neighbour: on the fitted ULX3S
core (Yosys, 19,413 flip-flops, 12,466 of them reset-less) the engine resets, routed over
the fabric out of context (the top-level `rst` is not), reach 1,032 flip-flops in the
vector engine (8,721 before), 67 in the matrix engine (1,922) and 38 in the attention engine
(953). Each of these units' tests (and both tile engines') runs random work, resets the
unit mid-way with random inputs still on its ports (what the units upstream, reset in the
same cycle, still drive) and then checks its results bit-exact and that nothing else comes
out (`run_simulation(scramble=...)` in `tests/hw/amaranth_streams.py`); making a valid bit,
`running`, a row counter or the transpose banks' `emit` reset-less fails them."""


def document(results: dict[str, SynthResult | str], config, command: str) -> str:
    fields = ", ".join(f"{k}={v}" for k, v in config.to_dict().items())
    cell_list = "\n".join(f"- `{cell}`: {what}" for cell, what in REPORTED_CELLS.items())
    missing = [name for name, r in results.items() if isinstance(r, str)]
    all_units = total(results)
    over = [f"{all_units.count(c)} {c} of {n}" for c, n in DEVICE_CAPACITY.items()
            if all_units.count(c) > n]
    luts_with_carries = all_units.count("LUT4") + 2 * all_units.count("CCU2C")
    if luts_with_carries > DEVICE_CAPACITY["LUT4"]:
        over.append(f"{luts_with_carries} LUT4 counting the two in each CCU2C, "
                    f"of {DEVICE_CAPACITY['LUT4']}")
    parts = [
        "# Hardware units",
        "",
        "The accelerator's hardware units (registry: `hw/units.py`), their interfaces and timing,",
        f"and what each one costs on a Lattice ECP5 {DEVICE} after Yosys `synth_ecp5`",
        "(synthesis only: no placement or timing closure).  `vitamin verilog --unit NAME -o DIR`",
        "writes any unit's Verilog and a table of its ports.",
        "",
        "Timing conventions (`hw/timing.py`): a job's LATENCY counts the cycles from its first",
        "input handshake to its last output handshake, both included, with the output never",
        "stalled; its interval is the cycles before the next job can start.  A job of `n`",
        "elements on an `L`-lane unit is `B = ceil(n / L)` beats.",
        "",
        RESETS,
        "",
        "## Resources",
        "",
        f"Generated by `{command}`.",
        "",
        f"Config: {fields}.",
        "",
        table(results),
        "",
        "Percentages are of the device's capacity "
        + ", ".join(f"{n} {c}" for c, n in DEVICE_CAPACITY.items()) + ".  `synth_ecp5` maps",
        "every multiplier, even an 8 x 8 one, to a whole MULT18X18D; the device's DSP blocks",
        "can also work as twice as many 9 x 9 multipliers (MULT9X9D), which `synth_ecp5` does",
        "not infer.",
        "",
        cell_list,
        "",
    ]
    if over:
        parts += ["All units together need more than the device has: " + ", ".join(over) + ".", ""]
    if missing:
        parts += [f"Not available when this was generated: {', '.join(missing)} "
                  "(re-run the command above once they are finished).", ""]
    parts += [core_section(config)]
    parts += [unit_section(name, result) for name, result in results.items()]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="preset or JSON file (default: default)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument("--units", nargs="+", choices=buildable_units(), default=buildable_units())
    parser.add_argument("--workdir", type=Path, help="keep Verilog, logs and statistics here")
    parser.add_argument("--doc", type=Path, help="write the hardware document here")
    args = parser.parse_args(argv)
    config = load_config(args.config, **parse_overrides(args.set))
    results: dict[str, SynthResult | str] = {}
    for name in args.units:
        print(f"synthesizing {name} ...", file=sys.stderr, flush=True)
        try:
            results[name] = synthesize_unit(name, config, args.workdir / name if args.workdir else None)
        except Exception as exc:                       # report the unit, go on with the rest
            results[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    print(table(results))
    if args.doc:
        # The command as recorded in the document: without --workdir (a local folder).
        given = list(argv if argv is not None else sys.argv[1:])
        shown = []
        while given:
            a = given.pop(0)
            if a == "--workdir":
                given = given[1:]
            elif not a.startswith("--workdir="):
                shown.append(a)
        command = "python benchmarks/synth_units.py " + " ".join(shown)
        atomic_write_bytes(args.doc, document(results, config, command.strip()).encode())
        print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
