"""Reports: the array breakdown accounts for every cycle; trace and plot files."""
import json

import pytest

from compiler.isa import NQ, Queue
from compiler.lower import compile_graph
from compiler.testgraphs import random_image, tiny_vit
from hw.config import AcceleratorConfig
from sim.machine import simulate
from sim.report import block_breakdown, build_report, layer_of, plot_block, write_trace


@pytest.fixture
def run(unit_timings):
    cfg = AcceleratorConfig(array_rows=4, array_cols=4, vector_lanes=4, scratchpad_kib=16,
                            accumulator_kib=4)
    g = tiny_vit(seed=2, depth=2, image=12, dim=16)
    prog = compile_graph(g, cfg)
    t = unit_timings(cfg)
    res = simulate(prog, {g.inputs[0]: random_image(g)}, timings=t)
    return prog, res, t, build_report(prog, res, t)


def test_every_array_cycle_accounted(run):
    prog, res, t, rep = run
    assert sum(rep.array.values()) == pytest.approx(res.cycles, abs=0.1)
    array_macs = sum(m for m, ins in zip(prog.instr_macs, prog.instructions) if ins.op.name == "MATMUL")
    assert 0 < array_macs < sum(prog.instr_macs)            # attention x v runs on the ATTN unit
    assert rep.array["useful MACs"] == pytest.approx(array_macs / 16, abs=0.01)
    # Utilization counts the array's work only; codes x V on the LIS unit is reported apart.
    assert rep.macs == array_macs and rep.attn_macs == sum(prog.instr_macs) - array_macs
    assert rep.utilization == pytest.approx(array_macs / (16 * res.cycles))
    assert 0 < rep.utilization <= rep.tile_bound <= 1
    cat, bound = block_breakdown(prog, res, t, "blocks.1")
    assert sum(cat.values()) == pytest.approx(rep.by_layer["blocks.1"]["span"], abs=0.1)
    assert 0 < bound <= 1


def test_tables_are_consistent(run):
    prog, res, _, rep = run
    assert sum(c["count"] for c in rep.by_class.values()) == len(prog.instructions) - 1
    assert sum(o["instructions"] for o in rep.by_op.values()) == len(prog.instructions) - 1
    assert sum(o["macs"] for o in rep.by_layer.values()) == rep.macs
    assert sum(o["attn_macs"] for o in rep.by_layer.values()) == rep.attn_macs > 0
    # Queue busy = cycles with an instruction in flight, the RTL's BUSY_q: at least the
    # union of [start, retire] of any one instruction, never more than the run.
    for q, d in rep.by_queue.items():
        idx = [i for i, ins in enumerate(prog.instructions) if ins.queue is not None and ins.queue.name == q]
        assert d["busy"] == res.schedule.busy[int(Queue[q])]
        if idx:
            longest = max(int(res.retire[i] - res.start[i]) + 1 for i in idx)
            assert longest <= d["busy"] <= res.cycles, q
    assert rep.blocks == ["blocks.0", "blocks.1"]
    for name, o in rep.by_op.items():
        assert o["mac_utilization"] == pytest.approx(o["macs"] / (16 * o["span"])), name
        assert 0 <= o["mac_utilization"] <= 1, name
    assert rep.by_op["blocks.0.attn.qkv"]["mac_utilization"] > 0
    assert layer_of("blocks.11.mlp.fc1") == "blocks.11" and layer_of("head") == "head"
    assert rep.latency_ms == pytest.approx(res.cycles / 100e3)
    json.dumps(rep.to_json())


def test_trace_and_plot(run, tmp_path):
    prog, res, _, rep = run
    write_trace(prog, res, tmp_path / "t.json")
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == len(prog.instructions) - 1
    assert {e["tid"] for e in slices} == set(range(NQ))
    plot_block(rep, "blocks.0", tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
