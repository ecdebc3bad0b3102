"""Registry of the accelerator's hardware units: their components, timing functions and ports.

:data:`UNITS` is the one list of units.  Every unit names its module, its component class
(built from an :class:`hw.config.AcceleratorConfig` alone, ``Cls(config)``; ``None`` while
the unit's RTL lives in the accelerator top) and its timing functions (``<unit>_timing(config,
...)`` returning :class:`hw.timing.UnitTiming`).  Unit modules are imported only when used,
so the registry works while a module is missing or broken (only that unit fails).
:class:`UnitTimings` is how the ISA's timing rules (:mod:`compiler.isa`) and the cycle model
call the timing functions, cached per argument.  :func:`port_table` lists a built unit's
Verilog ports with a meaning taken from the ``Members`` section of the unit's class docstring.
"""
from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from amaranth.hdl import Shape
from amaranth.lib import data, stream, wiring

from hw.config import AcceleratorConfig
from hw.timing import UnitTiming, chain

__all__ = ["UnitSpec", "UNITS", "TIMINGS", "UnknownUnitError", "UnitTimingUnavailable",
           "UnitTimings", "unit_spec", "build_unit", "buildable_units", "Port", "port_table"]


class UnknownUnitError(ValueError):
    """A unit name that is not in :data:`UNITS`."""


class UnitTimingUnavailable(RuntimeError):
    """A unit's timing function is not importable (its hardware module is missing)."""


@dataclass(frozen=True)
class UnitSpec:
    """Where a unit lives: its module, its component class and its timing functions."""

    name: str
    module: str
    class_name: str | None
    #: Timing name -> function name in ``module``; the first is the unit's job timing.
    timings: dict[str, str] = field(default_factory=dict)

    @property
    def buildable(self) -> bool:
        """Whether the unit is a component of its own (else it is part of the top)."""
        return self.class_name is not None

    def component_class(self) -> type[wiring.Component]:
        """The component class (imports the unit's module)."""
        if self.class_name is None:
            raise UnknownUnitError(f"unit {self.name!r} has no component of its own")
        return getattr(importlib.import_module(self.module), self.class_name)

    def build(self, config: AcceleratorConfig) -> wiring.Component:
        """The unit built for ``config``."""
        return self.component_class()(config)

    def timing_function(self, name: str | None = None) -> Callable[..., UnitTiming]:
        """The timing function ``name`` (default: the unit's job timing); imports the module."""
        fn = self.timings[name or next(iter(self.timings))]
        return getattr(importlib.import_module(self.module), fn)


#: Every hardware unit by name.
UNITS: dict[str, UnitSpec] = {spec.name: spec for spec in (
    UnitSpec("systolic_array", "hw.systolic_array", "SystolicArray",
             {"systolic_array": "matmul_timing"}),
    UnitSpec("requantizer", "hw.requantizer", "Requantizer", {"requantizer": "requant_timing"}),
    UnitSpec("layernorm", "hw.layernorm", "PtfLayerNorm", {"layernorm": "layernorm_timing"}),
    UnitSpec("softmax", "hw.softmax", "LisSoftmax", {"softmax": "softmax_timing"}),
    UnitSpec("gelu", "hw.gelu", "GeluLut",
             {"gelu": "gelu_timing", "gelu_table": "gelu_table_load_timing"}),
    UnitSpec("residual_add", "hw.residual_add", "ResidualAdd",
             {"residual_add": "residual_add_timing"}),
    UnitSpec("dma", "hw.dma", None, {"dma": "dma_timing"}),
)}

#: Timing name -> the unit that defines it (every timing function of every unit).
TIMINGS: dict[str, UnitSpec] = {t: spec for spec in UNITS.values() for t in spec.timings}


def unit_spec(name: str) -> UnitSpec:
    """The registry entry of unit ``name``; :class:`UnknownUnitError` for an unknown name."""
    try:
        return UNITS[name]
    except KeyError:
        raise UnknownUnitError(f"unknown hardware unit {name!r} (known: {', '.join(UNITS)})") from None


def buildable_units() -> list[str]:
    """Names of the units that are components of their own (``vitamin verilog --unit``)."""
    return [name for name, spec in UNITS.items() if spec.buildable]


def build_unit(name: str, config: AcceleratorConfig) -> wiring.Component:
    """Unit ``name`` built for ``config``."""
    return unit_spec(name).build(config)


def _resolve(timing: str) -> Callable:
    spec = TIMINGS[timing]
    try:
        return spec.timing_function(timing)
    except (ImportError, AttributeError) as exc:
        raise UnitTimingUnavailable(f"{spec.module}.{spec.timings[timing]} is not available "
                                    f"({exc})") from None


class UnitTimings:
    """Cached timing of one job on each unit for one config.

    ``overrides`` maps a timing name of :data:`TIMINGS` to a replacement function with the
    same signature (tests that compute cycle counts by hand use it).
    """

    def __init__(self, config: AcceleratorConfig, overrides: dict[str, Callable] | None = None):
        self.config = config
        unknown = set(overrides or {}) - set(TIMINGS)
        if unknown:
            raise KeyError(f"unknown timing name(s) {sorted(unknown)} (known: {', '.join(TIMINGS)})")
        self._funcs: dict[str, Callable] = dict(overrides or {})
        self._cached = lru_cache(maxsize=None)(self._compute)

    def load(self) -> "UnitTimings":
        """Import every unit's timing functions now (the hardware modules take a moment to
        import); :class:`UnitTimingUnavailable` for a missing one.  Returns ``self``."""
        for timing in TIMINGS:
            if timing not in self._funcs:
                self._funcs[timing] = _resolve(timing)
        return self

    def _compute(self, timing: str, *args) -> UnitTiming:
        fn = self._funcs.get(timing)
        if fn is None:
            fn = self._funcs[timing] = _resolve(timing)
        t = fn(self.config, *args)
        if not isinstance(t, UnitTiming):
            raise TypeError(f"{timing} timing returned {t!r}, not a UnitTiming")
        return t

    def systolic_array(self, m: int) -> UnitTiming:
        """One tile of ``m`` streaming rows."""
        return self._cached("systolic_array", m)

    def requantizer(self, n: int) -> UnitTiming:
        """One row of ``n`` accumulators."""
        return self._cached("requantizer", n)

    def layernorm(self, channels: int) -> UnitTiming:
        return self._cached("layernorm", channels)

    def softmax(self, length: int, mode) -> UnitTiming:
        return self._cached("softmax", length, mode)

    def gelu(self, n: int) -> UnitTiming:
        return self._cached("gelu", n)

    def gelu_table(self) -> UnitTiming:
        return self._cached("gelu_table")

    def residual_add(self, n: int) -> UnitTiming:
        return self._cached("residual_add", n)

    def dma(self, row_bytes: int) -> UnitTiming:
        """One DMA row of ``row_bytes`` bytes."""
        return self._cached("dma", row_bytes)

    def chain(self, first: UnitTiming, second: UnitTiming, n: int) -> UnitTiming:
        """``first`` feeding a vector unit directly, ``n`` elements a row
        (:func:`hw.timing.chain` with the vector unit's ``ceil(n / vector_lanes)`` input beats)."""
        return chain(first, second, math.ceil(n / self.config.vector_lanes))


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
