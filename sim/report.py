"""Reports of a simulated run: utilization, stalls, per instruction class / op / layer,
a Chrome/Perfetto trace and a per-op cycle plot of one transformer block.

The array's cycle breakdown (:func:`array_breakdown`) splits the program's cycles exactly:
useful MAC cycles + tile padding + weight preload not hidden + idle cycles by cause
(waiting on a token from a named queue, or for the instruction to be dispatched) + the tail
after the last tile (array drain and the vector/store work that follows it).  The categories always sum to the cycle count.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.isa import SPECS, Opcode, Queue, QUEUE_OF
from compiler.program import ProgramImage
from sw.graph import atomic_write_bytes

from .machine import CAUSES, SimResult
from hw.units import UnitTimings

__all__ = ["Report", "build_report", "layer_of", "write_trace", "plot_block"]

_BLOCK = re.compile(r"^((?:layers\.\d+\.)?blocks\.\d+)\.")


def layer_of(op_name: str) -> str:
    """``blocks.3.attn.qkv`` -> ``blocks.3``; Swin's ``layers.2.blocks.1.attn.qkv`` ->
    ``layers.2.blocks.1`` and ``layers.1.downsample.norm`` -> ``layers.1.downsample``;
    ``patch_embed.proj`` -> ``patch_embed``."""
    m = _BLOCK.match(op_name)
    if m:
        return m.group(1)
    parts = op_name.split(".")
    if parts[0] == "layers" and len(parts) > 2:
        return ".".join(parts[:3])
    return parts[0]


@dataclass
class Report:
    """Everything ``vitamin simulate`` prints, as numbers."""
    cycles: int
    clock_mhz: float
    #: Multiply-accumulates on the systolic array (MATMUL); utilization counts these only.
    macs: int
    peak_macs_per_cycle: int
    #: Array cycle breakdown: category -> cycles (sums to ``cycles``).
    array: dict[str, int]
    #: Upper bound of MAC utilization from tile mapping alone (tiles streamed back to back).
    tile_bound: float
    #: Per opcode: count, busy cycles, wait cycles by cause, bytes moved.
    by_class: dict[str, dict]
    #: Per queue: busy cycles and wait cycles by cause.
    by_queue: dict[str, dict]
    #: Per op and per layer: instructions, MACs, span (first start to last retire), MAC
    #: utilization over the span; per op also the busy cycles of each queue.
    by_op: dict[str, dict]
    by_layer: dict[str, dict]
    blocks: list[str] = field(default_factory=list)
    #: Products of ``codes @ V`` on the Log-Int-Softmax shift tree (ATTNV): shifts and adds
    #: beside the array, not array work.
    attn_macs: int = 0

    @property
    def latency_ms(self) -> float:
        return self.cycles / (self.clock_mhz * 1e3)

    @property
    def fps(self) -> float:
        return self.clock_mhz * 1e6 / self.cycles if self.cycles else float("inf")

    @property
    def utilization(self) -> float:
        return self.macs / (self.peak_macs_per_cycle * self.cycles) if self.cycles else 0.0

    def block(self, name: str) -> dict:
        return self.by_layer[name]

    def to_json(self) -> dict:
        return {"cycles": self.cycles, "clock_mhz": self.clock_mhz, "latency_ms": self.latency_ms,
                "fps": self.fps, "macs": self.macs, "attn_macs": self.attn_macs,
                "mac_utilization": self.utilization,
                "tile_mapping_bound": self.tile_bound, "array_breakdown": self.array,
                "by_class": self.by_class, "by_queue": self.by_queue, "by_op": self.by_op,
                "by_layer": self.by_layer}


def _busy(kind_is_vector: bool, res: SimResult, i: int) -> int:
    return int((res.retire[i] if kind_is_vector else res.busy_end[i]) - res.start[i])


def array_breakdown(image: ProgramImage, res: SimResult, timings: UnitTimings,
                    indices: list[int] | None = None, window: tuple[int, int] | None = None):
    """Split the cycles of ``window`` (default: the whole run) into array categories.

    ``indices``: the MATMUL instructions to account (default: all).  Returns
    ``(categories, tile_bound)``.
    """
    cfg = image.config
    pe = cfg.array_rows * cfg.array_cols
    instrs = image.instructions
    mm = [i for i in (indices if indices is not None else range(len(instrs)))
          if instrs[i].op == Opcode.MATMUL]
    lo, hi = window if window is not None else (0, res.cycles)
    cat = {"useful MACs": 0.0, "tile padding": 0.0, "weight preload": 0.0}
    for c in CAUSES:
        cat[f"idle, waiting on {c.split(':')[-1]}"] = 0
    cat["idle before first tile"] = 0
    cat["drain and tail after last tile"] = 0
    streamed = 0
    prev_end = lo
    for n, i in enumerate(mm):
        a = instrs[i].args
        jobs = a["n_tiles"] * a["k_tiles"]
        useful = image.instr_macs[i] / pe
        cat["useful MACs"] += useful
        cat["tile padding"] += jobs * a["m"] - useful
        cat["weight preload"] += jobs * (max(a["m"], cfg.lanes) - a["m"])
        streamed += jobs * a["m"]
        gap = int(res.start[i]) - prev_end
        if gap > 0:
            if n == 0:
                cat["idle before first tile"] += gap
            else:
                cause = int(res.cause[i])
                key = CAUSES[cause].split(":")[-1] if cause >= 0 else "dispatch"
                cat[f"idle, waiting on {key}"] += gap
        prev_end = max(prev_end, int(res.busy_end[i]))
    cat["drain and tail after last tile"] += hi - prev_end if mm else hi - lo
    bound = (sum(image.instr_macs[i] for i in mm) / pe / streamed) if streamed else 0.0
    return {k: round(v, 2) for k, v in cat.items()}, bound


def build_report(image: ProgramImage, res: SimResult, timings: UnitTimings | None = None) -> Report:
    cfg = image.config
    timings = timings or UnitTimings(cfg)
    instrs = image.instructions
    n = len(instrs) - 1                     # HALT excluded
    by_class: dict[str, dict] = {}
    by_queue = {q.name: {"busy": 0, **{f"wait {c}": 0 for c in CAUSES}} for q in Queue}
    ops = image.op_names
    by_op: dict[str, dict] = {}
    for i in range(n):
        ins = instrs[i]
        q = QUEUE_OF[ins.op]
        vector = q == Queue.VECTOR
        busy = _busy(vector, res, i)
        c = by_class.setdefault(ins.op.name, {"count": 0, "busy": 0, "wait": 0, "bytes": 0})
        c["count"] += 1
        c["busy"] += busy
        c["wait"] += int(res.wait[i])
        for acc in SPECS[ins.op].accesses(cfg, ins.args):
            if acc.mem == "dram":
                c["bytes"] += acc.rows * acc.width
        bq = by_queue[q.name]
        if res.cause[i] >= 0:
            bq[f"wait {CAUSES[res.cause[i]]}"] += int(res.wait[i])
        name = ops[image.instr_op[i]]
        o = by_op.setdefault(name, {"instructions": 0, "macs": 0, "attn_macs": 0,
                                    "start": int(res.start[i]),
                                    "end": int(res.retire[i]),
                                    **{f"{qq.name.lower()} busy": 0 for qq in Queue}})
        o["instructions"] += 1
        o["attn_macs" if ins.op == Opcode.ATTNV else "macs"] += image.instr_macs[i]
        o["start"] = min(o["start"], int(res.start[i]))
        o["end"] = max(o["end"], int(res.retire[i]))
        o[f"{q.name.lower()} busy"] += busy
    # A queue's busy cycles: cycles with one of its instructions in flight (started, not yet
    # retired), what the RTL's BUSY_q counter counts.
    for q in Queue:
        by_queue[q.name]["busy"] = int(res.schedule.busy[int(q)]) if res.schedule is not None else 0
    pe = cfg.array_rows * cfg.array_cols
    for o in by_op.values():
        o["span"] = o["end"] - o["start"]
        o["mac_utilization"] = o["macs"] / (pe * o["span"]) if o["span"] else 0.0
    by_layer: dict[str, dict] = {}
    for name, o in by_op.items():
        lay = by_layer.setdefault(layer_of(name), {"ops": 0, "instructions": 0, "macs": 0,
                                                   "attn_macs": 0,
                                                   "start": o["start"], "end": o["end"]})
        lay["ops"] += 1
        lay["instructions"] += o["instructions"]
        lay["macs"] += o["macs"]
        lay["attn_macs"] += o["attn_macs"]
        lay["start"] = min(lay["start"], o["start"])
        lay["end"] = max(lay["end"], o["end"])
    for lay in by_layer.values():
        lay["span"] = lay["end"] - lay["start"]
        lay["mac_utilization"] = lay["macs"] / (pe * lay["span"]) if lay["span"] else 0.0
    array, bound = array_breakdown(image, res, timings)
    blocks = sorted((k for k in by_layer if _BLOCK.match(k + ".")),
                    key=lambda k: [int(p) for p in k.split(".") if p.isdigit()])
    attn = [image.instr_macs[i] for i in range(n) if instrs[i].op == Opcode.ATTNV]
    return Report(res.cycles, cfg.clock_mhz, int(sum(image.instr_macs)) - int(sum(attn)), pe,
                  array, bound, by_class, by_queue, by_op, by_layer, blocks, int(sum(attn)))


def block_breakdown(image: ProgramImage, res: SimResult, timings: UnitTimings, block: str):
    """Array breakdown and tile bound restricted to one layer's span and MATMULs."""
    idx = [i for i in range(len(image.instructions) - 1)
           if layer_of(image.op_names[image.instr_op[i]]) == block]
    lo = int(res.start[idx].min())
    hi = int(res.retire[idx].max())
    return array_breakdown(image, res, timings, idx, (lo, hi))


def write_trace(image: ProgramImage, res: SimResult, path: str | Path) -> None:
    """Chrome / Perfetto trace (JSON): one track per queue, one slice per instruction.

    Timestamps are microseconds at the config's clock.
    """
    us = 1.0 / image.config.clock_mhz
    events = [{"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "vitamin accelerator"}}]
    for q in Queue:
        events.append({"ph": "M", "name": "thread_name", "pid": 0, "tid": int(q),
                       "args": {"name": f"{q.name} queue"}})
    instrs = image.instructions
    for i in range(len(instrs) - 1):
        ins = instrs[i]
        q = QUEUE_OF[ins.op]
        end = res.retire[i] if q == Queue.VECTOR else res.busy_end[i]
        events.append({
            "ph": "X", "pid": 0, "tid": int(q), "name": ins.op.name,
            "cat": image.op_names[image.instr_op[i]],
            "ts": round(float(res.start[i]) * us, 4),
            "dur": round(float(max(end - res.start[i], 1)) * us, 4),
            "args": {"instruction": i, "op": image.op_names[image.instr_op[i]],
                     "start_cycle": int(res.start[i]), "retire_cycle": int(res.retire[i]),
                     "waited": int(res.wait[i])}})
    atomic_write_bytes(Path(path), json.dumps({"traceEvents": events,
                                               "displayTimeUnit": "ns"}).encode())


def plot_block(report: Report, block: str, path: str | Path, title: str = "") -> None:
    """PNG: per op of ``block``, its span and the busy cycles of each unit within it
    (units overlap in time, so the busy bars are drawn side by side, not stacked)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k in report.by_op if k.startswith(block + ".")]
    if not names:
        raise ValueError(f"no ops in {block!r}")
    short = [k[len(block) + 1:] for k in names]
    y = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 1.8))
    spans = np.array([report.by_op[k]["span"] for k in names], dtype=float)
    ax.barh(y, spans, height=0.8, color="#dddddd", label="span (first start to last retire)")
    colors = {"matrix busy": "#1f77b4", "vector busy": "#ff7f0e", "load busy": "#2ca02c",
              "store busy": "#9467bd"}
    for j, (key, color) in enumerate(colors.items()):
        vals = np.array([report.by_op[k][key] for k in names], dtype=float)
        ax.barh(y - 0.3 + 0.18 * j + 0.06, vals, height=0.16, color=color,
                label=key.replace(" busy", "") + " busy")
    ax.set_yticks(y, short)
    ax.invert_yaxis()
    ax.set_xlabel("cycles")
    ax.set_title(title or f"{block}: busy cycles per unit and span, per op")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
