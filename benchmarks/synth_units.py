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
        command = "python benchmarks/synth_units.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]))
        atomic_write_bytes(args.doc, document(results, config, command.strip()).encode())
        print(f"wrote {args.doc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
