"""The unit registry and the port tables derived from the units' signatures."""
from __future__ import annotations

import re

import pytest
from amaranth.back import verilog
from amaranth.hdl import Fragment

from hw.config import PRESETS
from hw.units import (TIMINGS, UNITS, UnknownUnitError, build_unit, buildable_units, member_docs,
                      port_table, unit_spec)

VERILOG_PORT = re.compile(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", re.M)


def verilog_ports(text: str) -> dict[str, tuple[str, int]]:
    return {name: (direction, int(msb) + 1 if msb else 1)
            for direction, msb, name in VERILOG_PORT.findall(text)}


def test_registry_names_every_unit():
    assert list(UNITS) == ["systolic_array", "requantizer", "layernorm", "softmax", "gelu",
                           "residual_add", "dma"]
    assert buildable_units() == list(UNITS)[:-1]           # the DMA is part of the top
    assert unit_spec("gelu").class_name == "GeluLut"
    assert TIMINGS["gelu_table"] is unit_spec("gelu")


@pytest.mark.parametrize("timing", list(TIMINGS))
def test_every_timing_function_resolves(timing):
    assert callable(TIMINGS[timing].timing_function(timing))


def test_unknown_unit_is_a_clear_error():
    with pytest.raises(UnknownUnitError, match=r"unknown hardware unit 'fft' \(known: systolic_array"):
        build_unit("fft", PRESETS["tiny"])


@pytest.mark.parametrize("name", buildable_units())
def test_every_unit_builds_and_has_its_timing_function(name):
    spec = unit_spec(name)
    component = build_unit(name, PRESETS["tiny"])
    assert type(component).__name__ == spec.class_name
    Fragment.get(component, None)
    assert callable(spec.timing_function())
    ports = port_table(component)
    assert [p.name for p in ports[:2]] == ["clk", "rst"]


@pytest.mark.parametrize("name", ["gelu", "residual_add"])
def test_port_table_matches_the_verilog(name):
    component = build_unit(name, PRESETS["tiny"])
    ports = port_table(component)
    emitted = verilog_ports(verilog.convert(component, name=name, emit_src=False))
    assert {p.name: (p.direction, p.width) for p in ports} == emitted
    assert all(p.meaning for p in ports)


def test_member_docs_reads_the_members_section():
    class Documented:
        """A unit.

        Members
        -------
        i : ``In(stream.Signature(unsigned(8)))``
            Input bytes, one per
            beat (lanes ``0 .. 3``).  More detail.
        x, y : ``In(4)``, ``In(4)``
            Coordinates.
        undocumented : ``Out(1)``

        Notes
        -----
        z : not a member
            Not read.
        """

    assert member_docs(Documented) == {
        "i": "Input bytes, one per beat (lanes ``0 .. 3``).",
        "x": "Coordinates.", "y": "Coordinates.",
    }
