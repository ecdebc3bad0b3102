"""``vitamin verilog``: write the Verilog of one hardware unit and a description of its ports.

``vitamin verilog --unit NAME [--config PRESET|FILE] [--rows R --cols C --lanes L]
[--set FIELD=VALUE ...] -o DIR`` writes ``DIR/NAME.v`` (Amaranth's Verilog back end, top
module ``NAME``) and ``DIR/NAME.md`` (one table row per port: name, direction, width,
meaning).  Both files are written atomically.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cli.main import UserError

#: Shorthand options -> config fields.
SHORTHANDS = {"rows": "array_rows", "cols": "array_cols", "lanes": "vector_lanes"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hw.units import buildable_units
    parser.add_argument("--unit", required=True, metavar="NAME",
                        help=f"hardware unit: {', '.join(buildable_units())}")
    parser.add_argument("--config", metavar="PRESET|FILE",
                        help="config preset name or JSON file (default: the default preset)")
    parser.add_argument("--rows", type=int, metavar="R", help="array_rows")
    parser.add_argument("--cols", type=int, metavar="C", help="array_cols")
    parser.add_argument("--lanes", type=int, metavar="L", help="vector_lanes")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="override one config field (repeatable)")
    parser.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                        help="output folder (created if missing)")


def port_markdown(unit: str, component_class: type, config, ports) -> str:
    """The ``NAME.md`` text: what was built and one table row per port."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    fields = ", ".join(f"{k}={v}" for k, v in config.to_dict().items())
    lines = [
        f"# `{unit}`: `{component_class.__module__}.{component_class.__name__}`",
        "",
        f"Verilog module `{unit}` in `{unit}.v`, written by `vitamin verilog`.",
        "",
        f"Config: {fields}.",
        "",
        "| port | direction | width | meaning |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [f"| `{p.name}` | {p.direction} | {p.width} | {cell(p.meaning)} |" for p in ports]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from amaranth.back import verilog

    from hw.config import load_config, parse_overrides
    from hw.units import UnknownUnitError, port_table, unit_spec
    from sw.graph import atomic_write_bytes

    try:
        spec = unit_spec(args.unit)
        component_class = spec.component_class()
    except UnknownUnitError as exc:
        raise UserError(str(exc)) from None
    overrides = {field: getattr(args, option) for option, field in SHORTHANDS.items()
                 if getattr(args, option) is not None}
    overrides.update(parse_overrides(args.set))
    config = load_config(args.config, **overrides)
    try:
        component = component_class(config)
    except ValueError as exc:
        raise UserError(f"cannot build {args.unit} for this config: {exc}") from None
    text = verilog.convert(component, name=args.unit, emit_src=False)
    out_dir: Path = args.output
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder")
    v_path, md_path = out_dir / f"{args.unit}.v", out_dir / f"{args.unit}.md"
    atomic_write_bytes(v_path, text.encode())
    atomic_write_bytes(md_path, port_markdown(args.unit, component_class, config,
                                              port_table(component)).encode())
    print(f"wrote {v_path} and {md_path}")
    return 0
