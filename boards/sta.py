"""Static timing estimate of a placed nextpnr-ecp5 netlist, with nextpnr's pre-route delays.

:func:`analyze` reads the JSON netlist nextpnr-ecp5 writes (``--write``: every cell carries
``NEXTPNR_BEL`` = ``X<x>/Y<y>/<site>``) and repeats the setup analysis nextpnr runs after
placement (``common/kernel/timing.cc``, ``TimingAnalyser``), with the same delay model:

* net delay of every driver -> sink arc: ``Arch::predictDelay`` (``ecp5/arch.cc``); 0 for
  FCO -> FCI, for a sink pin FXA / FXB and for F -> DI; 0 inside one tile for Q -> A..D of
  the same logic cell and for F -> A..D from a logic cell other than 1 and 6; else
  ``(80 - 9 * speed_index) * (6 + max(dx - 5, 0) + max(dy - 5, 0) + 2 * (min(dx, 5) +
  min(dy, 5)))`` ps for a distance of dx, dy tiles (speed index 0 for speed grade 6, 1 for 7,
  2 for 8, 3 for 8_5G);
* cell delays, clock-to-out and setup times: ``Arch::getCellDelay`` and
  ``getPortClockingInfo`` with the Project Trellis timing database (``prjtrellis-db
  ECP5/timing/speed_N/cells.json``) read as ``ecp5/trellis_import.py`` reads it (the
  worst-case corner, a SLICE split into LOGIC / CCU2 halves).  The speed grade 6 tables are
  embedded (:data:`TABLES_SPEED6`); another grade needs its ``cells.json``
  (:func:`derive_tables`).  They include the block RAM's clock-to-out: a DP16KD without
  output register (``REGMODE = NOREG``) gives DOA / DOB 5.61 / 5.83 ns after the clock,
  with it (``OUTREG``) 0.97 / 0.96 ns;
* an endpoint's delay is its arrival plus its setup time; a path launched and captured on
  opposite clock edges counts twice (half a period).  The clock network adds no delay (out
  of context, the clock has no placed driver).

So the worst path is nextpnr's post-placement "Max frequency" figure and the slack histogram
(:meth:`Analysis.histogram`) is the one nextpnr logs after placement (both with nextpnr's C
``float`` rounding).  After routing the real delays differ: the routing in a routed netlist
is ignored, its placement is all that is read.
Unlike nextpnr's report, which names one critical path per clock, every endpoint is listed
(its worst path, :meth:`Analysis.paths`), and :meth:`Analysis.groups` counts the worst ones
by the top-level instances they start and end in.

Limits: only bit 0 of a multi-bit port is followed (noted in :attr:`Analysis.notes`); cell
types other than TRELLIS_COMB, TRELLIS_FF, TRELLIS_RAMW, DP16KD and MULT18X18D (I/O,
ALU54B, PLL ...) are ignored; a combinational loop is cut at its back arcs
(:attr:`Analysis.cut_arcs`).

Command line: ``python -m boards.sta PLACED.json [--top N] [--path K ...] [--group N]
[--histogram [--period NS]] [--speed G] [--cells-json F]``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import struct
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["TABLES_SPEED6", "SPEED_INDEX", "Hop", "TimingPath", "Analysis", "analyze",
           "derive_tables", "format_summary", "format_path", "main"]

def _dp16kd(doa: int, dob: int, rsta: int, rstb: int) -> dict[str, dict[str, int]]:
    """A DP16KD entry of :data:`TABLES_SPEED6`: clock-to-out of the two read ports and the
    setup times (ps); only the clock-to-out and the reset setup depend on the output
    registers."""
    return {"clk_q": {"DOA": doa, "DOB": dob},
            "setup": {"ADA": 251, "ADB": 205, "CEA": 211, "CEB": 340, "CSA": 20, "CSB": 0,
                      "DIA": 218, "DIB": 134, "OCEA": 226, "OCEB": 253, "RSTA": rsta,
                      "RSTB": rstb, "WEA": 139, "WEB": 0}}


#: Cell timing of speed grade 6 (ps), from prjtrellis-db ``ECP5/timing/speed_6/cells.json``
#: through :func:`derive_tables`.  DP16KD entries: clock-to-out and setup per port group
#: (the port name without its bit number); MULT18X18D entries per register configuration.
TABLES_SPEED6: dict[str, Any] = {
    "DP16KD:REGMODE_A=NOREG,REGMODE_B=NOREG": _dp16kd(5609, 5830, 579, 585),
    "DP16KD:REGMODE_A=NOREG,REGMODE_B=OUTREG": _dp16kd(5609, 956, 579, 583),
    "DP16KD:REGMODE_A=OUTREG,REGMODE_B=NOREG": _dp16kd(973, 5830, 576, 585),
    "DP16KD:REGMODE_A=OUTREG,REGMODE_B=OUTREG": _dp16kd(973, 956, 576, 583),
    "DPRAM_SETUP": {"WAD0": 0, "WAD1": 0, "WAD2": 0, "WAD3": 0, "WD0": 0, "WRE": 392},
    "FF_CLK_Q": 525,
    "FF_SETUP": {"CE": 0, "DI0": 0, "LSR": 424, "M0": 0},
    "MULT18X18D:REGS=ALL": {
        "delay": {"CLK0>P": 735},
        "setup": {"A": 84, "B": 84, "CE0": 252, "RST0": 95, "SIGNEDA": 0, "SIGNEDB": 0}},
    "MULT18X18D:REGS=INPUT": {
        "delay": {"CLK0>P": 3864},
        "setup": {"A": 84, "B": 84, "CE0": 252, "RST0": 95, "SIGNEDA": 0, "SIGNEDB": 0}},
    "MULT18X18D:REGS=NONE": {
        "delay": {"A>P": 3927, "B>P": 3927, "SIGNEDA>P": 3728, "SIGNEDB>P": 3728},
        "setup": {}},
    "MULT18X18D:REGS=OUTPUT": {
        "delay": {"CLK0>P": 735},
        "setup": {"A": 3486, "B": 3486, "CE0": 252, "RST0": 95, "SIGNEDA": 3287,
                  "SIGNEDB": 3287}},
    "MULT18X18D:REGS=PIPELINE": {
        "delay": {"CLK0>P": 1334},
        "setup": {"A": 2625, "B": 2625, "CE0": 252, "RST0": 95, "SIGNEDA": 2425,
                  "SIGNEDB": 2425}},
    "TRELLIS_COMB": {"A>F": 236, "A>OFX": 401, "B>F": 236, "B>OFX": 401, "C>F": 236,
                     "C>OFX": 401, "D>F": 236, "D>OFX": 401, "F1>OFX": 165, "FXA>OFX": 239,
                     "FXB>OFX": 242, "M>OFX": 256},
    "TRELLIS_COMB_CARRY0": {"A>F": 236, "A>FCO": 447, "B>F": 236, "B>FCO": 447, "C>F": 236,
                            "C>FCO": 447, "D>F": 236, "D>FCO": 447, "FCI>F": 443,
                            "FCI>FCO": 71},
    "TRELLIS_COMB_CARRY1": {"A>F": 236, "A>FCO": 447, "B>F": 236, "B>FCO": 447, "C>F": 236,
                            "C>FCO": 447, "D>F": 236, "D>FCO": 447, "FCI>F": 403,
                            "FCI>FCO": 0},
}

#: Speed grade -> nextpnr's speed index (``ecp5/arch.h``); a net's unit delay is
#: ``80 - 9 * index`` ps.
SPEED_INDEX = {"6": 0, "7": 1, "8": 2, "8_5G": 3}


def derive_tables(cell_data: dict) -> dict[str, Any]:
    """The tables of :data:`TABLES_SPEED6` from a prjtrellis-db ``cells.json`` (parsed), read
    as nextpnr's ``ecp5/trellis_import.py`` reads it."""
    delay_db: dict[str, dict] = {}
    setup_db: dict[str, dict] = {}
    for cell, cdata in sorted(cell_data.items()):
        dd = delay_db.setdefault(cell, {})
        sd = setup_db.setdefault(cell, {})
        for e in cdata:
            if e["type"] == "IOPath":
                fp = e["from_pin"][1] if isinstance(e["from_pin"], list) else e["from_pin"]
                dd[(fp, e["to_pin"])] = min(e["rising"][2], e["falling"][2])
            elif e["type"] == "SetupHold" and not isinstance(e["pin"], list):
                sd.setdefault((e["clock"][1], e["pin"]), e["setup"][2])  # first one counts
    s, c = delay_db["SLOGICB"], delay_db["SCCU2C"]
    t: dict[str, Any] = {}
    comb = {}
    for p in "ABCD":
        comb[p + ">F"] = s[(p + "0", "F0")]
        comb[p + ">OFX"] = s[(p + "0", "OFX0")]
    comb["M>OFX"] = s[("M0", "OFX0")]
    comb["F1>OFX"] = s[("A1", "OFX0")] - s[("A1", "F1")]
    comb["FXA>OFX"] = s[("FXA", "OFX1")]
    comb["FXB>OFX"] = s[("FXB", "OFX1")]
    t["TRELLIS_COMB"] = comb
    c0, c1 = {}, {}
    for p in "ABCD":
        c0[p + ">F"] = c[(p + "0", "F0")]
        c0[p + ">FCO"] = c[(p + "0", "FCO")]
        c1[p + ">F"] = c[(p + "1", "F1")]
        c1[p + ">FCO"] = c[(p + "1", "FCO")]
    c0["FCI>F"] = c[("FCI", "F0")]
    c0["FCI>FCO"] = c[("FCI", "FCO")]
    c1["FCI>F"] = c[("FCI", "F1")] - c[("FCI", "FCO")]
    c1["FCI>FCO"] = 0
    t["TRELLIS_COMB_CARRY0"], t["TRELLIS_COMB_CARRY1"] = c0, c1
    t["FF_CLK_Q"] = s[("CLK", "Q0")]
    t["FF_SETUP"] = {p: setup_db["SLOGICB"].get(("CLK", p), 0)
                     for p in ("DI0", "M0", "CE", "LSR")}
    t["DPRAM_SETUP"] = {p: setup_db.get("SDPRAME", {}).get(("WCK", p), 0)
                        for p in ("WD0", "WAD0", "WAD1", "WAD2", "WAD3", "WRE")}
    for k in cell_data:
        if k.startswith("DP16KD:REGMODE"):
            g: dict[str, dict] = {"clk_q": {}, "setup": {}}
            for (_c, p), v in delay_db[k].items():
                g["clk_q"][re.sub(r"\d+$", "", p)] = v
            for (_c, p), v in setup_db[k].items():
                g["setup"][re.sub(r"\d+$", "", p)] = v
            t[k] = g
        elif k.startswith("MULT18X18D:"):
            t[k] = {"delay": {"%s>%s" % ab: v for ab, v in delay_db[k].items()},
                    "setup": {p: v for (_c, p), v in setup_db[k].items()}}
    return t


# ------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------
def _f32(x: float) -> float:
    """``x`` rounded to a C ``float``."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _ns(ps: int) -> float:
    """nextpnr-ecp5's ``getDelayNS``: ps * 0.001 as a C ``float``."""
    return _f32(ps * 0.001)


def _mhz(ps: int, opposite_edge: bool = False) -> float:
    """nextpnr's Fmax of a path of ``ps``: 1000 / ns (500 / ns across clock edges)."""
    return (500.0 if opposite_edge else 1000.0) / _ns(ps) if ps > 0 else math.inf


def _owner(name: str) -> str:
    """The top-level instance of a cell: its name up to the first '.'."""
    return name.split(".", 1)[0]


@dataclass(frozen=True)
class Hop:
    """One step of a path: the clock-to-out of its start, a net arc, a cell arc or the setup
    time at its end.  ``cell`` / ``pin`` is where the step arrives (for ``setup``: the
    endpoint); ``dx_dy`` is a net's distance in tiles (both ends placed)."""
    kind: str  # "clk-to-q" | "net" | "cell" | "setup"
    delay_ns: float
    arrival_ns: float
    cell: str
    cell_type: str
    pin: str
    bel: str
    dx_dy: tuple[int, int] | None = None


@dataclass(frozen=True)
class TimingPath:
    """The worst path into one endpoint.  ``total_ns`` = clock-to-out + cells + nets + setup;
    ``logic_ns`` is all but the nets; ``levels`` counts the cell arcs (each half of a CCU2
    counts).  An ``opposite_edge`` path has half a period (:attr:`mhz`).  ``rank`` is the
    path's place among all endpoints, worst first (1-based)."""
    total_ns: float
    logic_ns: float
    net_ns: float
    levels: int
    start: str
    end: str
    end_pin: str
    opposite_edge: bool
    start_pin: str = ""
    rank: int = 0

    @property
    def mhz(self) -> float:
        """The clock this path allows."""
        return _mhz(round(self.total_ns * 1000), self.opposite_edge)

    @property
    def start_owner(self) -> str:
        return _owner(self.start)

    @property
    def end_owner(self) -> str:
        return _owner(self.end)


class Analysis:
    """The timing of one placed netlist (:func:`analyze`).  ``worst_ns`` is the period the
    worst path needs (twice its delay for an opposite-edge path); ``fmax_mhz`` is nextpnr's
    figure for it, ``1000 / worst_ns`` up to nextpnr's C ``float`` rounding (``inf`` without
    any register-to-register path); ``endpoints`` counts the endpoints some path reaches.
    ``notes``: what was not analysed; ``cut_arcs``: arcs (``cell.pin``, ``cell.pin``) removed
    to break combinational loops."""

    def __init__(self, source: str, speed: str, graph: _Graph, target_period_ns: float):
        g = graph
        self.source = source
        self.speed = speed
        self.cells = len(g.cnames)
        self.startpoints = len(g.start_delay)
        self.target_period_ns = target_period_ns
        self.notes = ["%s x%d" % (w, c) for w, c in sorted(g.warn.items())]
        self.cut_arcs = [("%s.%s" % (g.cnames[g.node_cell[a]], g.node_port[a]),
                          "%s.%s" % (g.cnames[g.node_cell[b]], g.node_port[b]))
                         for a, b in g.broken]
        self._g = g
        self._results = g.propagate()
        self._eps = g.endpoint_delays(self._results)
        self.endpoints = len(self._eps)
        if self._eps:
            self.worst_ns = self._eps[0][0] / 1000.0
            _eff, raw, _n, _s, le, ce = self._eps[0]
            self.fmax_mhz = _mhz(raw, le != ce)
        else:
            self.worst_ns = 0.0
            self.fmax_mhz = math.inf

    # -- paths
    def _backtrack(self, nid: int, launch: int) -> list[int]:
        pred = self._results[launch][1]
        path = [nid]
        while pred[path[-1]] >= 0:
            path.append(pred[path[-1]])
        path.reverse()
        return path

    def _path(self, i: int) -> TimingPath:
        g = self._g
        _eff, raw, nid, _setup, le, ce = self._eps[i]
        arr = self._results[le][0]
        path = self._backtrack(nid, le)
        net = 0
        levels = 0
        for j in range(1, len(path)):
            if g.node_cell[path[j]] == g.node_cell[path[j - 1]]:
                levels += 1
            else:
                net += arr[path[j]] - arr[path[j - 1]]
        return TimingPath(total_ns=raw / 1000.0, logic_ns=(raw - net) / 1000.0,
                          net_ns=net / 1000.0, levels=levels,
                          start=g.cnames[g.node_cell[path[0]]],
                          end=g.cnames[g.node_cell[nid]], end_pin=g.node_port[nid],
                          opposite_edge=le != ce, start_pin=g.node_port[path[0]], rank=i + 1)

    def paths(self, top: int) -> list[TimingPath]:
        """The worst path into each of the ``top`` worst endpoints, worst first."""
        return [self._path(i) for i in range(min(max(top, 0), len(self._eps)))]

    def path(self, rank: int) -> TimingPath:
        """The path into the ``rank``-th worst endpoint (1-based)."""
        if not 1 <= rank <= len(self._eps):
            raise IndexError(f"path {rank} out of range (1..{len(self._eps)})")
        return self._path(rank - 1)

    def hops(self, path: TimingPath) -> list[Hop]:
        """Every step of ``path`` (one of this analysis's paths), start to end."""
        g = self._g
        if not 1 <= path.rank <= len(self._eps):
            raise ValueError(f"not a path of this analysis: {path.end}.{path.end_pin}")
        _eff, raw, nid, setup, le, _ce = self._eps[path.rank - 1]
        if g.cnames[g.node_cell[nid]] != path.end or g.node_port[nid] != path.end_pin:
            raise ValueError(f"not a path of this analysis: {path.end}.{path.end_pin}")
        arr = self._results[le][0]
        hops = []
        prev = None
        for n in self._backtrack(nid, le):
            ci = g.node_cell[n]
            dxy = None
            if prev is None:
                kind, incr = "clk-to-q", arr[n]
            elif g.node_cell[prev] == ci:
                kind, incr = "cell", arr[n] - arr[prev]
            else:
                kind, incr = "net", arr[n] - arr[prev]
                pc = g.node_cell[prev]
                if g.cplaced[ci] and g.cplaced[pc]:
                    dxy = (abs(g.cx[ci] - g.cx[pc]), abs(g.cy[ci] - g.cy[pc]))
            hops.append(Hop(kind, incr / 1000.0, arr[n] / 1000.0, g.cnames[ci], g.ctype[ci],
                            g.node_port[n], g.cbel[ci], dxy))
            prev = n
        ci = g.node_cell[nid]
        hops.append(Hop("setup", setup / 1000.0, raw / 1000.0, g.cnames[ci], g.ctype[ci],
                        g.node_port[nid], g.cbel[ci]))
        return hops

    def cell_mode(self, cell: str) -> str:
        """A TRELLIS_COMB's MODE (LOGIC, CCU2, DPRAM ...), '' for other cells."""
        return self._g.cmode.get(cell, "")

    # -- summaries
    def groups(self, count: int = 2000) -> list[tuple[str, str, int, float]]:
        """(start owner, end owner, endpoints, worst ns) over the ``count`` worst endpoints,
        worst group first (ns as in :attr:`worst_ns`)."""
        g = self._g
        acc: dict[tuple[str, str], list[int]] = {}
        for ep in self._eps[:max(count, 0)]:
            start = self._backtrack(ep[2], ep[4])[0]
            key = (_owner(g.cnames[g.node_cell[start]]), _owner(g.cnames[g.node_cell[ep[2]]]))
            a = acc.get(key)
            if a is None:
                acc[key] = [1, ep[0]]
            else:
                a[0] += 1
                a[1] = max(a[1], ep[0])
        ranked = sorted(acc.items(), key=lambda kv: (-kv[1][1], -kv[1][0]))
        return [(s, e, n, w / 1000.0) for (s, e), (n, w) in ranked]

    def histogram(self, period_ns: float, bins: int = 20) -> list[str]:
        """nextpnr's slack histogram for a clock of ``period_ns`` (``log_histogram`` in
        ``common/kernel/timing_log.cc``): its two legend lines and one line per bin, as in
        nextpnr's log without the ``Info: `` prefix.  Slack in ps, rounded as nextpnr rounds
        it (through a C ``float``, toward zero: -251 ps counts as -250); [] without
        endpoints."""
        if not self._eps:
            return []
        period = int(round(period_ns * 1000))
        raw: dict[int, int] = defaultdict(int)
        for ep in self._eps:
            cp = period // 2 if ep[4] != ep[5] else period
            raw[cp - ep[1]] += 1
        # nextpnr keys the histogram by int(getDelayNS(slack) * 1000) in C float arithmetic:
        # truncated toward zero, -251 ps counts as -250.
        hist: dict[int, int] = defaultdict(int)
        for sl, c in raw.items():
            hist[int(_f32(_ns(sl) * 1000.0))] += c
        lo, hi = min(hist), max(hist)
        nb, bw = max(int(bins), 1), 60
        bsz = max(1, -(-(hi - lo + 1) // nb))
        counts = [0] * nb
        for sl, c in hist.items():
            counts[min(nb - 1, max(0, (sl - lo) // bsz))] += c
        mf = max(counts)
        bw = min(bw, mf)
        lines = [" legend: * represents %d endpoint(s)" % (mf // bw),
                 "         + represents [1,%d) endpoint(s)" % (mf // bw)]
        for i in range(nb):
            lines.append("[%6d, %6d) |%s%s" % (lo + bsz * i, lo + bsz * (i + 1),
                                               "*" * (counts[i] * bw // mf),
                                               "+" if (counts[i] * bw) % mf else " "))
        return lines

    def summary(self, top: int = 30, group: int = 2000) -> dict[str, Any]:
        """The figures, the ``top`` worst paths and the groups of the ``group`` worst
        endpoints, ready for ``json.dumps`` (``fmax_mhz`` None without any path)."""
        paths = []
        for p in self.paths(top):
            d = asdict(p)
            d.update(mhz=p.mhz, start_owner=p.start_owner, end_owner=p.end_owner)
            paths.append(d)
        return {"source": self.source, "speed": self.speed,
                "fmax_mhz": self.fmax_mhz if self._eps else None,
                "worst_ns": self.worst_ns, "cells": self.cells,
                "startpoints": self.startpoints, "endpoints": self.endpoints,
                "paths": paths,
                "groups": [{"start": s, "end": e, "endpoints": n, "worst_ns": w,
                            "mhz": _mhz(round(w * 1000))} for s, e, n, w in self.groups(group)],
                "notes": list(self.notes),
                "cut_arcs": [list(a) for a in self.cut_arcs]}


# ------------------------------------------------------------------------------------------
# Netlist -> timing graph
# ------------------------------------------------------------------------------------------
def _pstr(params: dict, key: str, default: str) -> str:
    """A parameter as a string (a trailing space marks a string that looks binary)."""
    v = params.get(key)
    if v is None:
        return default
    if isinstance(v, str):
        return v[:-1] if v.endswith(" ") else v
    return str(v)


def _pint(params: dict, key: str, default: int) -> int:
    """A parameter as an integer (a binary string or a number)."""
    v = params.get(key)
    if v is None:
        return default
    if isinstance(v, int):
        return v
    s = v.strip()
    if re.fullmatch(r"[01]+", s) and not v.endswith(" "):
        return int(s, 2)
    try:
        return int(s)
    except ValueError:
        return default


_BEL = re.compile(r"X(\d+)/Y(\d+)/(.*)")
_SLICE = re.compile(r"SLICE([A-D])\.(K|FF)([01])$")


def _bel_xyz(bel: str) -> tuple[int, int, int] | None:
    """``X<x>/Y<y>/<site>`` -> (x, y, z) numbered as nextpnr / libtrellis do: SLICEn.Kk is
    z = 4 * lc, SLICEn.FFk 4 * lc + 1 (lc = 2 * slice + k), SLICEC.RAMW 18."""
    m = _BEL.match(bel)
    if not m:
        return None
    x, y, site = int(m.group(1)), int(m.group(2)), m.group(3)
    z = 0
    sm = _SLICE.match(site)
    if sm:
        lc = "ABCD".index(sm.group(1)) * 2 + int(sm.group(3))
        z = lc * 4 + (1 if sm.group(2) == "FF" else 0)
    elif site.endswith(".RAMW"):
        z = 4 * 4 + 2
    else:
        dm = re.search(r"(\d+)$", site)
        z = int(dm.group(1)) if dm else 0
    return x, y, z


_NEG = -(1 << 60)
_ABCD = frozenset("ABCD")
_PDP_B = frozenset({"OCEB", "CEB"} | {"ADB%d" % i for i in range(5, 14)})
_AB_PORT = re.compile(r"[AB]\d")
_P_PORT = re.compile(r"P\d")
_CE_PORT = re.compile(r"CE\d")
_RST_PORT = re.compile(r"RST\d")
_GROUP = re.compile(r"(.*?)(\d*)$")


class _Graph:
    """Connected cell ports (nodes) and the timing arcs between them."""

    def __init__(self, mod: dict, tables: dict, k_unit: int):
        cells = mod.get("cells") or {}
        self.cnames = cnames = list(cells)
        ncell = len(cnames)
        self.ctype = ctype = [""] * ncell
        self.cbel = [""] * ncell
        self.cmode: dict[str, str] = {}
        self.cx = cx = [0] * ncell
        self.cy = cy = [0] * ncell
        self.cz = cz = [0] * ncell
        self.cplaced = cplaced = [False] * ncell
        self.node_cell = node_cell = []
        self.node_port = node_port = []
        self.node_isout = node_isout = []
        self.warn: dict[str, int] = defaultdict(int)
        warn = self.warn
        bit_driver: dict[int, int] = {}
        bit_sinks: dict[int, list[int]] = defaultdict(list)
        cell_ports: list[dict[str, int]] = [{}] * ncell

        for ci, name in enumerate(cnames):
            c = cells[name]
            ctype[ci] = c.get("type", "")
            bel = c.get("attributes", {}).get("NEXTPNR_BEL", "")
            self.cbel[ci] = bel
            loc = _bel_xyz(bel) if bel else None
            if loc:
                cx[ci], cy[ci], cz[ci] = loc
                cplaced[ci] = True
            pd = c.get("port_directions", {})
            pm = {}
            for port, bits in c.get("connections", {}).items():
                if not bits:
                    continue
                b = bits[0]
                if len(bits) > 1:
                    warn["multi-bit port %s.%s (only bit 0 analysed)" % (ctype[ci], port)] += 1
                if isinstance(b, str):
                    continue  # a constant: never timed
                nid = len(node_cell)
                node_cell.append(ci)
                node_port.append(port)
                isout = pd.get(port) == "output"
                node_isout.append(isout)
                pm[port] = nid
                if isout:
                    bit_driver[b] = nid
                else:
                    bit_sinks[b].append(nid)
            cell_ports[ci] = pm
        if not any(cplaced):
            raise ValueError("netlist has no placement (no cell has a NEXTPNR_BEL attribute): "
                             "give nextpnr's --write output")
        nnode = len(node_cell)

        # Cell arcs, startpoints (node -> (clock-to-out, clock edge)) and endpoints
        # (node, setup, clock edge); edge 1 is the falling edge.
        self.succ = succ = [[] for _ in range(nnode)]  # (node, delay ps, is net)
        self.start_delay = start_delay = {}
        self.endpoints = endpoints = []
        tb = tables
        for ci in range(ncell):
            t = ctype[ci]
            pm = cell_ports[ci]
            if not pm:
                continue
            params = cells[cnames[ci]].get("parameters", {})
            if t == "TRELLIS_COMB":
                mode = _pstr(params, "MODE", "LOGIC")
                self.cmode[cnames[ci]] = mode
                if mode == "CCU2":
                    tab = tb["TRELLIS_COMB_CARRY1"] if ((cz[ci] >> 2) % 2) \
                        else tb["TRELLIS_COMB_CARRY0"]
                else:
                    tab = tb["TRELLIS_COMB"]
                outs = [p for p in ("F", "FCO", "OFX") if p in pm]
                for ip in ("A", "B", "C", "D", "M", "F1", "FXA", "FXB", "FCI"):
                    if ip not in pm:
                        continue
                    for op in outs:
                        d = tab.get(ip + ">" + op)
                        if d is not None:
                            succ[pm[ip]].append((pm[op], d, False))
                if mode == "DPRAM" and "WCK" in pm:
                    e = 1 if _pstr(params, "WCKMUX", "WCK") == "INV" else 0
                    for ip in ("WD", "WAD0", "WAD1", "WAD2", "WAD3", "WRE"):
                        if ip in pm:
                            endpoints.append(
                                (pm[ip], tb["DPRAM_SETUP"]["WD0" if ip == "WD" else ip], e))
            elif t == "TRELLIS_FF":
                if "CLK" not in pm:
                    continue
                e = 1 if _pstr(params, "CLKMUX", "CLK") in ("INV", "0") else 0
                if "Q" in pm:
                    start_delay[pm["Q"]] = (tb["FF_CLK_Q"], e)
                for ip, key in (("DI", "DI0"), ("M", "M0"), ("CE", "CE"), ("LSR", "LSR")):
                    if ip in pm:
                        endpoints.append((pm[ip], tb["FF_SETUP"][key], e))
            elif t == "TRELLIS_RAMW":
                for ip, op in (("A0", "WADO3"), ("A1", "WDO1"), ("B0", "WADO1"),
                               ("B1", "WDO3"), ("C0", "WADO2"), ("C1", "WDO0"),
                               ("D0", "WADO0"), ("D1", "WDO2")):
                    if ip in pm and op in pm:
                        succ[pm[ip]].append((pm[op], 0, False))
            elif t == "DP16KD":
                self._dp16kd(params, pm, tb, warn)
            elif t == "MULT18X18D":
                self._mult18(params, pm, tb)
            else:
                warn["unsupported cell type %s (ignored)" % t] += 1

        # Net arcs: Arch::predictDelay.
        for b, dnid in bit_driver.items():
            sinks = bit_sinks.get(b)
            if not sinks:
                continue
            dci = node_cell[dnid]
            if not cplaced[dci]:
                continue
            sp = node_port[dnid]
            dx0, dy0, dz0 = cx[dci], cy[dci], cz[dci]
            lst = succ[dnid]
            for snid in sinks:
                sci = node_cell[snid]
                if not cplaced[sci]:
                    lst.append((snid, 0, True))
                    continue
                dp = node_port[snid]
                if (sp == "FCO" and dp == "FCI") or dp == "FXA" or dp == "FXB" \
                        or (sp == "F" and dp == "DI"):
                    d = 0
                else:
                    d = -1
                    sx, sy = cx[sci], cy[sci]
                    if sx == dx0 and sy == dy0 and dp in _ABCD:
                        if sp == "Q" and (cz[sci] >> 2) == (dz0 >> 2):
                            d = 0
                        elif sp == "F" and (dz0 >> 2) not in (1, 6):
                            d = 0
                    if d < 0:
                        ddx = abs(dx0 - sx)
                        ddy = abs(dy0 - sy)
                        d = k_unit * (6 + max(ddx - 5, 0) + max(ddy - 5, 0)
                                      + 2 * (min(ddx, 5) + min(ddy, 5)))
                lst.append((snid, d, True))
        self.broken: list[tuple[int, int]] = []
        self.order = self._topo_order()

    def _dp16kd(self, params: dict, pm: dict, tb: dict, warn: dict) -> None:
        is_pdp = _pint(params, "DATA_WIDTH_A", 0) == 36
        ra = _pstr(params, "REGMODE_A", "NOREG")
        rb = _pstr(params, "REGMODE_B", "NOREG")
        tab = tb["DP16KD:REGMODE_A=%s,REGMODE_B=%s" % (ra, rb)]
        for port, nid in pm.items():
            if port in ("CLKA", "CLKB"):
                continue
            grp = _GROUP.match(port).group(1)
            if not grp or grp[-1] not in "AB":
                warn["DP16KD port without A/B half: " + port] += 1
                continue
            isout = self.node_isout[nid]
            if is_pdp:
                clkp = "CLKB" if (isout or port in _PDP_B) else "CLKA"
            else:
                clkp = "CLK" + grp[-1]
            if clkp not in pm:
                continue
            e = 1 if _pstr(params, clkp + "MUX", "CLK") == "INV" else 0
            if isout:
                d = tab["clk_q"].get(grp)
                if d is None:
                    warn["DP16KD no clk-to-q for " + grp] += 1
                    d = 0
                self.start_delay[nid] = (d, e)
            else:
                s = tab["setup"].get(grp)
                if s is None:
                    warn["DP16KD no setup for " + grp] += 1
                    s = 0
                self.endpoints.append((nid, s, e))

    def _mult18(self, params: dict, pm: dict, tb: dict) -> None:
        ia = _pstr(params, "REG_INPUTA_CLK", "NONE") != "NONE"
        ib = _pstr(params, "REG_INPUTB_CLK", "NONE") != "NONE"
        oo = _pstr(params, "REG_OUTPUT_CLK", "NONE") != "NONE"
        if ia != ib:
            key = "OUTPUT" if oo else "NONE"
        else:
            key = {(False, False): "NONE", (True, False): "INPUT",
                   (False, True): "OUTPUT", (True, True): "ALL"}[(ia, oo)]
        tab = tb["MULT18X18D:REGS=" + key]
        succ = self.succ
        if key == "NONE":
            outs = [nid for p, nid in pm.items() if _P_PORT.match(p)]
            for p, nid in pm.items():
                if _AB_PORT.match(p):
                    d = tab["delay"][p[0] + ">P"]
                    for o in outs:
                        succ[nid].append((o, d, False))
            return
        if "CLK0" not in pm:
            return
        setup = tab["setup"]
        for p, nid in pm.items():
            if _P_PORT.match(p):
                self.start_delay[nid] = (tab["delay"]["CLK0>P"], 0)
            elif _AB_PORT.match(p):
                self.endpoints.append((nid, setup.get(p[0], 0), 0))
            elif _CE_PORT.match(p):
                self.endpoints.append((nid, setup.get("CE0", 0), 0))
            elif _RST_PORT.match(p):
                self.endpoints.append((nid, setup.get("RST0", 0), 0))
            elif p in ("SIGNEDA", "SIGNEDB"):
                self.endpoints.append((nid, setup.get(p, 0), 0))

    def _topo_order(self) -> list[int]:
        """Kahn's order of the nodes; a combinational loop is cut at the back arcs a depth
        first search finds (into a node on its stack), recorded in ``broken``."""
        succ = self.succ
        nnode = len(succ)
        indeg = [0] * nnode
        for n in range(nnode):
            for (m, _d, _k) in succ[n]:
                indeg[m] += 1
        order = [n for n in range(nnode) if indeg[n] == 0]
        head = 0
        broken = self.broken
        nbroken_before = 0
        while True:
            while head < len(order):
                n = order[head]
                head += 1
                for (m, _d, _k) in succ[n]:
                    indeg[m] -= 1
                    if indeg[m] == 0:
                        order.append(m)
            if len(order) == nnode:
                break
            rem = [n for n in range(nnode) if indeg[n] > 0]
            inrem = bytearray(nnode)
            for n in rem:
                inrem[n] = 1
            color = bytearray(nnode)  # 0 not seen, 1 on the stack, 2 done
            for root in rem:
                if color[root]:
                    continue
                color[root] = 1
                stack = [(root, 0)]
                while stack:
                    n, i = stack[-1]
                    lst = succ[n]
                    if i < len(lst):
                        stack[-1] = (n, i + 1)
                        m = lst[i][0]
                        if not inrem[m]:
                            continue
                        if color[m] == 1:
                            broken.append((n, m))
                        elif color[m] == 0:
                            color[m] = 1
                            stack.append((m, 0))
                    else:
                        color[n] = 2
                        stack.pop()
            if len(broken) == nbroken_before:
                raise RuntimeError("topological sort stalled without a detectable loop")
            nbroken_before = len(broken)
            cut = set(broken)
            for (a, b) in cut:
                succ[a] = [e for e in succ[a] if e[0] != b]
            indeg = [0] * nnode
            for n in range(nnode):
                for (m, _d, _k) in succ[n]:
                    indeg[m] += 1
            done = bytearray(nnode)
            for n in order:
                done[n] = 1
            for n in order:
                for (m, _d, _k) in succ[n]:
                    indeg[m] -= 1
            for n in rem:
                if indeg[n] == 0 and not done[n]:
                    order.append(n)
        return order

    def propagate(self) -> dict[int, tuple[list[int], list[int]]]:
        """Launch edge -> (arrival ps per node, predecessor on the worst path or -1)."""
        succ = self.succ
        nnode = len(succ)
        results = {}
        for le in sorted(set(e for (_d, e) in self.start_delay.values())):
            arr = [_NEG] * nnode
            pred = [-1] * nnode
            for nid, (d, e) in self.start_delay.items():
                if e == le:
                    arr[nid] = d
            for n in self.order:
                a = arr[n]
                if a == _NEG:
                    continue
                for (m, d, _k) in succ[n]:
                    v = a + d
                    if v > arr[m]:
                        arr[m] = v
                        pred[m] = n
            results[le] = (arr, pred)
        return results

    def endpoint_delays(self, results: dict) -> list[tuple[int, int, int, int, int, int]]:
        """(effective ps, delay ps, node, setup ps, launch edge, capture edge) of every
        reached endpoint and launch edge, worst first (an opposite-edge delay counts twice)."""
        eps = []
        for (nid, s, ce) in self.endpoints:
            for le, (arr, _p) in results.items():
                a = arr[nid]
                if a == _NEG:
                    continue
                raw = a + s
                eps.append((raw * (2 if le != ce else 1), raw, nid, s, le, ce))
        eps.sort(key=lambda r: -r[0])
        return eps


def _load(netlist: dict | str | Path) -> tuple[dict, str]:
    if isinstance(netlist, dict):
        return netlist, "<netlist>"
    if isinstance(netlist, str) and netlist.lstrip().startswith("{"):
        text, source = netlist, "<netlist>"
    else:
        source = str(netlist)
        text = Path(netlist).read_text()
    try:
        return json.loads(text), source
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not JSON ({e})") from None


def analyze(netlist: dict | str | Path, speed: str | int | None = None,
            cells_json: dict | str | Path | None = None) -> Analysis:
    """The timing of a placed nextpnr-ecp5 netlist: a parsed dict, JSON text or a file.
    ``speed``: the speed grade (default: the netlist's ``arch.speed`` setting, else 6);
    ``cells_json``: prjtrellis-db ``ECP5/timing/speed_N/cells.json`` (a file or parsed), for a
    grade other than 6.  :class:`ValueError` for a netlist that is not placed or has not
    exactly one module, or an unknown speed grade."""
    design, source = _load(netlist)
    mods = design.get("modules") if isinstance(design, dict) else None
    if not isinstance(mods, dict):
        raise ValueError(f"{source}: not a nextpnr JSON netlist (no modules)")
    if len(mods) != 1:
        raise ValueError(f"{source}: expected one module (nextpnr's --write output), "
                         f"found {len(mods)}")
    mod = next(iter(mods.values()))
    settings = mod.get("settings", {})
    grade = str(speed if speed is not None else _pstr(settings, "arch.speed", "6")).strip()
    if grade not in SPEED_INDEX:
        raise ValueError(f"unknown speed grade {grade!r} (one of {', '.join(SPEED_INDEX)})")
    notes = []
    if cells_json is not None:
        name = "cells_json" if isinstance(cells_json, dict) else str(cells_json)
        try:
            data = cells_json if isinstance(cells_json, dict) else \
                json.loads(Path(cells_json).read_text())
            tables = derive_tables(data)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            raise ValueError(f"{name}: not a prjtrellis-db cells.json ({e!r})") from None
    else:
        tables = TABLES_SPEED6
        if grade != "6":
            notes.append(f"cell delays are speed grade 6 (no cells.json for speed {grade})")
    try:
        period_ps = int(1.0e12 / float(_pstr(settings, "target_freq", "12000000")))
    except (ValueError, ZeroDivisionError):
        period_ps = 8000
    try:
        graph = _Graph(mod, tables, 80 - 9 * SPEED_INDEX[grade])
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    analysis = Analysis(source, grade, graph, period_ps / 1000.0)
    analysis.notes[:0] = notes
    return analysis


# ------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------
def _trunc(s: str, n: int = 70) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def format_summary(analysis: Analysis, top: int = 30, group: int = 2000) -> str:
    """The figures, a table of the ``top`` worst endpoints and the groups of the ``group``
    worst ones."""
    a = analysis
    out = ["Design: %s   speed %s   %d cells, %d startpoints, %d timed endpoints"
           % (a.source, a.speed, a.cells, a.startpoints, a.endpoints)]
    for note in a.notes:
        out.append("NOTE: " + note)
    if a.cut_arcs:
        out.append("WARNING: %d arcs cut to break combinational loops:" % len(a.cut_arcs))
        out += ["    %s -> %s" % arc for arc in a.cut_arcs[:20]]
    if not a.endpoints:
        out.append("no register-to-register paths found")
        return "\n".join(out) + "\n"
    out.insert(1, "Worst path: %.3f ns  ->  Fmax %.2f MHz" % (a.worst_ns, a.fmax_mhz))
    out += ["",
            "Worst %d endpoints (total = clk-to-q + cells + nets + setup; logic includes "
            "clk-to-q and setup;" % min(top, a.endpoints),
            "  lvl = cell arcs traversed, each TRELLIS_COMB half of a CCU2 counts; "
            "'*' = opposite-edge path)",
            "%4s %8s %8s %8s %8s %4s  %-22s %-22s  %s" % (
                "#", "total", "MHz", "logic", "net", "lvl", "start_prefix", "end_prefix",
                "start -> end")]
    for p in a.paths(top):
        out.append("%4d %8.3f %8.2f %8.3f %8.3f %4d  %-22s %-22s  %s.%s -> %s.%s%s" % (
            p.rank, p.total_ns, p.mhz, p.logic_ns, p.net_ns, p.levels,
            _trunc(p.start_owner, 22), _trunc(p.end_owner, 22), _trunc(p.start), p.start_pin,
            _trunc(p.end), p.end_pin, "*" if p.opposite_edge else " "))
    out += ["",
            "Summary of worst %d endpoints grouped by (start prefix, end prefix):"
            % min(group, a.endpoints),
            "%6s %9s %8s  %-30s %-30s" % ("count", "worst_ns", "MHz", "start_prefix",
                                          "end_prefix")]
    for s, e, n, w in a.groups(group):
        out.append("%6d %9.3f %8.2f  %-30s %-30s" % (n, w, _mhz(round(w * 1000)),
                                                     _trunc(s, 30), _trunc(e, 30)))
    return "\n".join(out) + "\n"


def format_path(analysis: Analysis, path: TimingPath) -> str:
    """Every hop of ``path``, one a line."""
    out = ["Path %d: total %.3f ns (%.2f MHz), logic %.3f ns, net %.3f ns, %d levels"
           % (path.rank, path.total_ns, path.mhz, path.logic_ns, path.net_ns, path.levels),
           "%9s %9s  %-10s %-6s %-20s %-13s %s" % ("incr_ns", "arr_ns", "kind", "pin", "bel",
                                                   "type", "cell")]
    for h in analysis.hops(path):
        if h.kind == "setup":
            out.append("%9.3f %9.3f  %-10s" % (h.delay_ns, h.arrival_ns, h.kind))
            continue
        kind = h.kind
        if kind == "net" and h.delay_ns > 0 and h.dx_dy is not None:
            kind = "net(%d,%d)" % h.dx_dy
        t = h.cell_type
        if t == "TRELLIS_COMB":
            t = "COMB/" + analysis.cell_mode(h.cell)
        out.append("%9.3f %9.3f  %-10s %-6s %-20s %-13s %s" % (
            h.delay_ns, h.arrival_ns, kind, h.pin, h.bel or "?", t, h.cell))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m boards.sta``: the report of :func:`format_summary`, then the histogram
    and the paths asked for."""
    ap = argparse.ArgumentParser(
        prog="python -m boards.sta",
        description="Static timing estimate of a placed nextpnr-ecp5 netlist (nextpnr's "
                    "post-placement delay model).")
    ap.add_argument("json", help="the netlist nextpnr-ecp5 wrote with --write")
    ap.add_argument("--top", type=int, default=30, help="worst endpoints listed (30)")
    ap.add_argument("--path", type=int, action="append", default=[], metavar="K",
                    help="every hop of the K-th worst endpoint's path (1-based, repeatable)")
    ap.add_argument("--group", type=int, default=2000,
                    help="worst endpoints grouped by start and end instance (2000)")
    ap.add_argument("--histogram", action="store_true",
                    help="nextpnr's slack histogram")
    ap.add_argument("--period", type=float, default=None, metavar="NS",
                    help="clock period of the histogram (default: the netlist's target_freq)")
    ap.add_argument("--speed", default=None,
                    help="speed grade (default: the netlist's arch.speed, else 6)")
    ap.add_argument("--cells-json", default=None, metavar="F",
                    help="prjtrellis-db ECP5/timing/speed_N/cells.json (speed grades other "
                         "than 6)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    try:
        a = analyze(Path(args.json), args.speed, args.cells_json)
    except OSError as e:
        print(f"sta: cannot read {e.filename or args.json}: {e.strerror or e}",
              file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"sta: {e}", file=sys.stderr)
        return 2
    for k in args.path:
        if not 1 <= k <= a.endpoints:
            print(f"sta: --path {k} out of range (1..{a.endpoints})", file=sys.stderr)
            return 2
    print(format_summary(a, args.top, args.group), end="")
    if args.histogram and a.endpoints:
        period = args.period if args.period is not None else a.target_period_ns
        print()
        print("Slack histogram (period %d ps, %d endpoints):"
              % (int(round(period * 1000)), a.endpoints))
        for line in a.histogram(period):
            print(line)
    for k in args.path:
        print()
        print(format_path(a, a.path(k)), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
