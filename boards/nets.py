"""Where a placed core's long wires are: the nets of a nextpnr JSON netlist ranked by span.

nextpnr's report names one critical path per clock; on the whole core most of that path is
routing (17.9 of 22.4 ns on the routed ULX3S build), and which net turns out longest changes
from seed to seed.  What does not change is which nets *must* be long: a net whose driver
and sinks sit far apart on the die.  :func:`long_nets` reads the placement that nextpnr
writes (``--write``: every cell's ``NEXTPNR_BEL`` is ``X<x>/Y<y>/<site>``) and gives, per
net, its driver, fanout, *span* (the largest Manhattan distance in tiles from the driver to
a sink) and half-perimeter of the bounding box; :func:`summarize` groups the long ones by
the top-level instance that drives them (``engine_load``, ``mem_act``, ``sequencer`` ...).

Clock nets (a driver's ``CLK``-style global) and nextpnr's constant nets are left out.  The
build (:func:`boards.build.build_core`) writes the summary as ``nets.json`` beside the
report before it deletes the large routed netlist.
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["LONG_SPAN", "Net", "long_nets", "summarize"]

#: A span counted as long, in tiles.  On the routed ULX3S core, nets of low fanout took about
#: 0.09 ns of routing per tile of span (36 tiles: 3.19 ns, 38 tiles: 3.34 ns), so 60 tiles
#: are about 5.4 ns, two thirds of a 125 MHz cycle before any logic (the LFE5U-85F is 126 x
#: 95 tiles).
LONG_SPAN = 60

_BEL = re.compile(r"X(\d+)/Y(\d+)/")
#: nextpnr's own constant nets (not wires of the design).
_CONSTANT = ("$PACKER_VCC_NET", "$PACKER_GND_NET", "$PACKER_VCC", "$PACKER_GND")


@dataclass(frozen=True)
class Net:
    """One net of a placed netlist (positions in tiles)."""

    name: str            #: the shortest net name of the bit (as in the netlist)
    driver_type: str     #: the driving cell's type (``TRELLIS_FF``, ``DP16KD``, ...)
    driver_port: str
    fanout: int          #: sink pins
    span: int            #: largest |dx| + |dy| from the driver to a sink
    hpwl: int            #: half-perimeter of the bounding box of driver and sinks

    @property
    def owner(self) -> str:
        """The top-level instance the net belongs to (its name's first component)."""
        head = self.name.lstrip("\\").split(".", 1)[0]
        return head if "." in self.name else "(top)"


def long_nets(netlist: dict | str | Path, min_span: int = 0) -> list[Net]:
    """Every placed net with at least two placed pins and ``span >= min_span``, longest span
    first (ties: larger fanout first, then by name).  ``netlist``: nextpnr's ``--write``
    JSON (a dict, its text or its path); raises ``ValueError`` for one without placement."""
    if isinstance(netlist, (str, Path)) and not str(netlist).lstrip().startswith("{"):
        netlist = json.loads(Path(netlist).read_text())
    elif isinstance(netlist, str):
        netlist = json.loads(netlist)
    modules = netlist.get("modules") or {}
    if len(modules) != 1:
        raise ValueError(f"expected one (flattened) module, found {len(modules)}")
    module = next(iter(modules.values()))
    cells = module.get("cells", {})
    where: dict[str, tuple[int, int]] = {}
    for name, cell in cells.items():
        m = _BEL.match(cell.get("attributes", {}).get("NEXTPNR_BEL", ""))
        if m:
            where[name] = (int(m.group(1)), int(m.group(2)))
    if cells and not where:
        raise ValueError("the netlist has no placement (NEXTPNR_BEL attributes)")
    driver: dict[int, tuple[str, str, str]] = {}
    sinks: dict[int, list[str]] = defaultdict(list)
    for name, cell in cells.items():
        dirs = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            for bit in bits:
                if not isinstance(bit, int):
                    continue                        # a constant "0" / "1" / "x"
                if dirs.get(port) == "output":
                    driver[bit] = (name, port, cell["type"])
                else:
                    sinks[bit].append(name)
    names: dict[int, str] = {}
    for net, info in module.get("netnames", {}).items():
        bits = info.get("bits", [])
        for i, bit in enumerate(bits):
            label = net if len(bits) == 1 else f"{net}[{i}]"
            if isinstance(bit, int) and (bit not in names or len(label) < len(names[bit])):
                names[bit] = label
    out = []
    for bit, (cell, port, ctype) in driver.items():
        name = names.get(bit, f"<{cell}.{port}>")
        if name in _CONSTANT or cell not in where:
            continue
        pins = [where[s] for s in sinks.get(bit, ()) if s in where]
        if not pins or ctype in ("DCCA", "EHXPLLL") or port == "CLKO":
            continue
        x0, y0 = where[cell]
        span = max(abs(x - x0) + abs(y - y0) for x, y in pins)
        xs = [x0] + [x for x, _ in pins]
        ys = [y0] + [y for _, y in pins]
        if span >= min_span:
            out.append(Net(name, ctype, port, len(pins), span,
                           max(xs) - min(xs) + max(ys) - min(ys)))
    out.sort(key=lambda n: (-n.span, -n.fanout, n.name))
    return out


def summarize(nets: list[Net], long_span: int, top: int = 40) -> dict:
    """The ``top`` longest nets and, for nets of ``span >= long_span``, how many each owner
    and each driver type drives (JSON-ready)."""
    far = [n for n in nets if n.span >= long_span]
    return {
        "long_span": long_span,
        "nets": len(nets),
        "long": len(far),
        "long_by_owner": dict(Counter(n.owner for n in far).most_common()),
        "long_by_driver": dict(Counter(n.driver_type for n in far).most_common()),
        "longest": [{**asdict(n), "owner": n.owner} for n in nets[:top]],
    }
