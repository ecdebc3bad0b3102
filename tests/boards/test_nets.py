"""boards.nets: the long-net ranking of a placed netlist, on a hand-made netlist whose spans
are known (the real routed netlist is checked in test_build's place-and-route test)."""
from __future__ import annotations

import json

import pytest

from boards.nets import long_nets, summarize


def _cell(ctype, bel, ports):
    """A cell at ``bel`` ("X/Y") with ``ports``: name -> (direction, [bits])."""
    return {"type": ctype, "attributes": {"NEXTPNR_BEL": f"{bel}/SLICEA"} if bel else {},
            "port_directions": {p: d for p, (d, _) in ports.items()},
            "connections": {p: b for p, (_, b) in ports.items()}}


def _netlist():
    cells = {
        # bit 2: ff at (10,10) -> lut (12,10) and bram (40,30): span 2 and 50, hpwl 30 + 20.
        "ff": _cell("TRELLIS_FF", "X10/Y10", {"Q": ("output", [2]), "CLK": ("input", [9])}),
        "lut": _cell("TRELLIS_COMB", "X12/Y10", {"A": ("input", [2]), "F": ("output", [3]),
                                                 "B": ("input", ["0"])}),
        "bram": _cell("DP16KD", "X40/Y30", {"ADA0": ("input", [2]), "DOA0": ("output", [4]),
                                            "CLKA": ("input", [9])}),
        # bit 3: lut -> ff2 (12,90): span 80; bit 4: bram -> ff2: span 28 + 60 = 88.
        "ff2": _cell("TRELLIS_FF", "X12/Y90", {"DI": ("input", [3]), "M": ("input", [4]),
                                               "CLK": ("input", [9]), "LSR": ("input", [5])}),
        # bit 5: a constant net of nextpnr's, bit 9: the clock from a global buffer.
        "vcc": _cell("TRELLIS_COMB", "X0/Y0", {"F": ("output", [5])}),
        "dcc": _cell("DCCA", "X63/Y0", {"CLKO": ("output", [9])}),
        # bit 6: driver not placed (left out); bit 7: no sinks (left out).
        "floating": _cell("TRELLIS_FF", None, {"Q": ("output", [6])}),
        "lonely": _cell("TRELLIS_FF", "X1/Y1", {"Q": ("output", [7])}),
        "sink6": _cell("TRELLIS_COMB", "X2/Y2", {"A": ("input", [6])}),
    }
    netnames = {
        "engine_load.addr": {"bits": [2]}, "engine_load.addr_TRELLIS_FF_Q_long_alias": {"bits": [2]},
        "mem_act.x": {"bits": [3, 4]}, "$PACKER_VCC_NET": {"bits": [5]}, "clk": {"bits": [9]},
        "top_level_wire": {"bits": [7]},
    }
    return {"modules": {"top": {"cells": cells, "netnames": netnames}}}


def test_spans_fanout_and_names():
    nets = long_nets(_netlist())
    got = [(n.name, n.span, n.hpwl, n.fanout, n.driver_type, n.owner) for n in nets]
    assert got == [
        ("mem_act.x[1]", 88, 88, 1, "DP16KD", "mem_act"),
        ("mem_act.x[0]", 80, 80, 1, "TRELLIS_COMB", "mem_act"),
        ("engine_load.addr", 50, 50, 2, "TRELLIS_FF", "engine_load"),
    ]


def test_min_span_and_summary():
    netlist = _netlist()
    assert [n.span for n in long_nets(json.dumps(netlist), min_span=81)] == [88]
    s = summarize(long_nets(netlist), long_span=60, top=2)
    assert s["nets"] == 3 and s["long"] == 2
    assert s["long_by_owner"] == {"mem_act": 2}
    assert s["long_by_driver"] == {"DP16KD": 1, "TRELLIS_COMB": 1}
    assert [n["name"] for n in s["longest"]] == ["mem_act.x[1]", "mem_act.x[0]"]


def test_path_input_and_errors(tmp_path):
    path = tmp_path / "routed.json"
    path.write_text(json.dumps(_netlist()))
    assert len(long_nets(path)) == len(long_nets(str(path))) == 3
    unplaced = _netlist()
    for cell in unplaced["modules"]["top"]["cells"].values():
        cell["attributes"] = {}
    with pytest.raises(ValueError, match="no placement"):
        long_nets(unplaced)
    with pytest.raises(ValueError, match="one \\(flattened\\) module"):
        long_nets({"modules": {}})
