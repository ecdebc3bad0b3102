"""Registry of the accelerator's hardware units, and their port lists.

Every unit is built from an :class:`hw.config.AcceleratorConfig` alone, ``Cls(config)``.  Unit
modules are imported only when a unit is built, so the registry works while a module is
missing or broken (only that unit fails).  :func:`port_table` lists a built unit's Verilog
ports with a meaning taken from the ``Members`` section of the unit's class docstring.
"""
from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Callable

from amaranth.hdl import Shape
from amaranth.lib import data, stream, wiring

from hw.config import AcceleratorConfig
from hw.timing import UnitTiming

__all__ = ["UnitSpec", "UNITS", "UnknownUnitError", "unit_spec", "build_unit", "Port",
           "port_table"]


class UnknownUnitError(ValueError):
    """A unit name that is not in :data:`UNITS`."""


@dataclass(frozen=True)
class UnitSpec:
    """Where a unit lives: its module, its component class and its timing function."""

    name: str
    module: str
    class_name: str
    timing_name: str

    def component_class(self) -> type[wiring.Component]:
        """The component class (imports the unit's module)."""
        return getattr(importlib.import_module(self.module), self.class_name)

    def build(self, config: AcceleratorConfig) -> wiring.Component:
        """The unit built for ``config``."""
        return self.component_class()(config)

    def timing_function(self) -> Callable[..., UnitTiming]:
        """The unit's ``<unit>_timing(config, ...)`` (imports the unit's module)."""
        return getattr(importlib.import_module(self.module), self.timing_name)


#: Every hardware unit by name.
UNITS: dict[str, UnitSpec] = {spec.name: spec for spec in (
    UnitSpec("systolic_array", "hw.systolic_array", "SystolicArray", "matmul_timing"),
    UnitSpec("requantizer", "hw.requantizer", "Requantizer", "requant_timing"),
    UnitSpec("layernorm", "hw.layernorm", "PtfLayerNorm", "layernorm_timing"),
    UnitSpec("softmax", "hw.softmax", "LisSoftmax", "softmax_timing"),
    UnitSpec("gelu", "hw.gelu", "GeluLut", "gelu_timing"),
    UnitSpec("residual_add", "hw.residual_add", "ResidualAdd", "residual_add_timing"),
)}


def unit_spec(name: str) -> UnitSpec:
    """The registry entry of unit ``name``; :class:`UnknownUnitError` for an unknown name."""
    try:
        return UNITS[name]
    except KeyError:
        raise UnknownUnitError(f"unknown hardware unit {name!r} (known: {', '.join(UNITS)})") from None


def build_unit(name: str, config: AcceleratorConfig) -> wiring.Component:
    """Unit ``name`` built for ``config``."""
    return unit_spec(name).build(config)


# ---------------------------------------------------------------------------------- ports

@dataclass(frozen=True)
class Port:
    """One port of a unit's Verilog module."""

    name: str
    direction: str          # "input" or "output"
    width: int
    meaning: str


_CLOCK_PORTS = (
    Port("clk", "input", 1, "clock (all logic is in one rising-edge domain)"),
    Port("rst", "input", 1, "synchronous reset, active high"),
)

#: A sentence ends at a period that follows neither a space nor another period.
_SENTENCE_END = re.compile(r"(?<=[^.\s])\.(?=\s|$)")


def member_docs(component_class: type) -> dict[str, str]:
    """``{member name: first sentence}`` from the ``Members`` section of a class docstring.

    The section lists ``name : type`` (or ``a, b : types``) lines at the left margin, each
    followed by an indented description.
    """
    doc = inspect.cleandoc(component_class.__doc__ or "")
    lines = doc.splitlines()
    try:
        start = next(k for k in range(len(lines) - 1)
                     if lines[k].strip() == "Members" and set(lines[k + 1].strip()) == {"-"})
    except StopIteration:
        return {}
    docs: dict[str, str] = {}
    names: list[str] = []
    text: list[str] = []

    def flush():
        if names and text:
            description = " ".join(text)
            end = _SENTENCE_END.search(description)
            sentence = description[:end.end()] if end else description
            for name in names:
                docs[name] = sentence
        text.clear()

    for k in range(start + 2, len(lines)):
        line = lines[k]
        if k + 1 < len(lines) and line.strip() and set(lines[k + 1].strip()) == {"-"}:
            break                                   # the next section's title
        if line.startswith((" ", "\t")):
            text.append(line.strip())
        elif " : " in line:
            flush()
            names = [n.strip() for n in line.split(" : ", 1)[0].split(",")]
        elif not line.strip():
            flush()
            names = []
    flush()
    return docs


def _fields(shape) -> str:
    """``"fields: a [7:0], b [15:8]"`` for a struct payload, ``""`` for a plain one."""
    if not isinstance(shape, data.Layout):
        return ""
    fields = [(str(name), field.offset, field.width) for name, field in shape]
    if len(fields) > 8:
        return f"{len(fields)} fields"
    return "fields: " + ", ".join(f"{name} [{offset + width - 1}:{offset}]"
                                  for name, offset, width in fields)


def port_table(component: wiring.Component) -> list[Port]:
    """The Verilog ports of ``component`` (as Amaranth names them: ``member__sub``), with
    direction, width and meaning."""
    docs = member_docs(type(component))
    signature = component.signature
    ports = list(_CLOCK_PORTS)
    seen_groups: set[str] = set()
    for path, member, _ in signature.flatten(component):
        top = str(path[0])
        name = "__".join(str(p) for p in path)
        direction = "input" if member.flow == wiring.In else "output"
        width = Shape.cast(member.shape).width
        meaning = docs.get(top, "")
        parent = signature.members[path[0]]
        if len(path) == 2 and parent.is_signature and isinstance(parent.signature, stream.Signature):
            leaf = path[1]
            if leaf == "valid":
                meaning = f"`{top}` handshake: payload is valid"
            elif leaf == "ready":
                meaning = f"`{top}` handshake: payload is accepted"
            else:
                extra = _fields(member.shape)
                meaning = f"{meaning} ({extra})" if extra and meaning else meaning or extra
        elif len(path) > 1:
            if top in seen_groups:
                meaning = f"part of `{top}`"
            seen_groups.add(top)
        ports.append(Port(name, direction, width, meaning))
    return ports
