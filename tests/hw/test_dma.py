"""The LOAD and STORE engines (hw.core.dma) against the ISA table and their timing functions.

* The timing functions' closed forms equal a row-by-row count (no simulator).
* Co-simulation with cocotbext-axi's AxiRam, per datapath width ``N`` in 2, 4, 16, one
  Verilog build running four scenarios on the same memories:
  ``natural`` (AxiRam at its own timing): every byte of every memory and of DRAM equals
  ``SPECS[op].execute`` on an ``ArchState``, every start, first R beat, first and last W beat
  and retire pulse is the cycle the timing contract predicts, the AR and AW bursts are the
  4 KiB / 256-beat splits of the rows, and AxiRam's latencies are the measured ones;
  ``pause1`` / ``pause2``: random pauses on all five AXI channels, still bit-exact;
  ``error``: an injected error response on a read and on a write raises each engine's
  ``error``.

What AxiRam (cocotbext-axi 0.1.28) does, as measured here: an AR handshake in cycle ``t``
gives its first RVALID in ``t + 2`` (``READ_LATENCY``) when R is idle, and bursts follow
each other beat after beat; AW and W are taken every cycle; the last W beat of a burst in
``t`` gives BVALID in ``t + 2`` (``WRITE_LATENCY``).  The tests check these numbers on every
burst of the natural scenario.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from amaranth import Cat, Module, Mux, unsigned
from amaranth.hdl import Fragment
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from compiler.isa import LOAD_REGIONS, SPECS, ArchState, Instruction, Mem, Opcode, encode
from hw.axi import AXI_BOUNDARY, AXI_BURST_MAX_BEATS, axi4_signature
from hw.config import AcceleratorConfig
from hw.core.dma import (LOAD_DEPTH, LOAD_DESTS, STORE_DEPTH, STORE_SOURCES, LoadEngine,
                         StoreEngine, _rows, load_timing, store_timing)
from hw.core.memories import build_memories, geometry
from amaranth_streams import run_simulation
from sim.cocotb_runner import run_cocotb

#: AxiRam's cycles from an AR handshake to the first R beat, and from a burst's last W
#: beat to its B response (measured; the natural scenario checks them on every burst).
READ_LATENCY = 2
WRITE_LATENCY = 2
#: Scratchpad KiB per datapath width: regions large enough for rows of more than 256 beats.
SCRATCHPAD_KIB = {2: 8, 4: 16, 16: 32}
DRAM_BYTES = {2: 12288, 4: 16384, 16: 32768}
DRAM_BASE = 0x3000
#: The memories the harness holds, in backdoor order (the LOAD destinations, then ``out``).
MEMORIES = LOAD_DESTS + ("out",)
#: Rows of each memory the backdoor reads per cycle.
BACKDOOR_ROWS = 8


def make_config(n: int) -> AcceleratorConfig:
    return AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n,
                             scratchpad_kib=SCRATCHPAD_KIB[n], accumulator_kib=1, param_kib=1,
                             dram_latency_cycles=READ_LATENCY,
                             dram_write_latency_cycles=WRITE_LATENCY)


# ---------------------------------------------------------------------------------- harness

class DmaHarness(wiring.Component):
    """Both engines, their memories (initial contents given) and backdoor read ports
    (``bd_data``: rows ``BACKDOOR_ROWS bd_addr`` and the ``BACKDOOR_ROWS - 1`` after it of
    every memory, in :data:`MEMORIES` order); the engines' AXI halves joined into one AXI4
    port ``m_axi``."""

    def __init__(self, config: AcceleratorConfig, init: dict[str, list[int]]):
        n = config.lanes
        self._config = config
        self._init = init
        depth = -(-max(geometry(config, name).depth for name in MEMORIES) // BACKDOOR_ROWS)
        super().__init__({
            "load": In(stream.Signature(unsigned(256))),
            "load_retire": Out(1), "load_busy": Out(1), "load_idle": Out(1), "load_error": Out(1),
            "store": In(stream.Signature(unsigned(256))),
            "store_retire": Out(1), "store_busy": Out(1), "store_idle": Out(1),
            "store_error": Out(1),
            "dram_base": In(32),
            "m_axi": Out(axi4_signature(32, n)),
            "bd_addr": In(range(depth)),
            "bd_data": Out(8 * n * BACKDOOR_ROWS * len(MEMORIES)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.load_engine = load = LoadEngine(cfg)
        m.submodules.store_engine = store = StoreEngine(cfg)
        memories = build_memories(cfg)
        for name, memory in memories.items():
            if name not in MEMORIES:
                memory._MustUse__silence = True       # regions neither engine touches
        for name in MEMORIES:
            memories[name].init = self._init[name]
            m.submodules[name] = memories[name]
        for engine, prefix in ((load, "load"), (store, "store")):
            wiring.connect(m, wiring.flipped(getattr(self, prefix)), engine.instr)
            m.d.comb += [
                getattr(self, f"{prefix}_retire").eq(engine.retire),
                getattr(self, f"{prefix}_busy").eq(engine.busy),
                getattr(self, f"{prefix}_idle").eq(engine.idle),
                getattr(self, f"{prefix}_error").eq(engine.error),
                engine.dram_base.eq(self.dram_base),
            ]
            for name, member in engine.axi.signature.members.items():
                if member.flow == Out:
                    m.d.comb += getattr(self.m_axi, name).eq(getattr(engine.axi, name))
                else:
                    m.d.comb += getattr(engine.axi, name).eq(getattr(self.m_axi, name))
        for name in LOAD_DESTS:
            port = memories[name].write_port(granularity=8)
            src = getattr(load, name)
            m.d.comb += [port.addr.eq(src.addr), port.data.eq(src.data), port.en.eq(src.en)]
        for name in STORE_SOURCES:
            port = memories[name].read_port()
            src = getattr(store, name)
            m.d.comb += [port.addr.eq(src.addr), port.en.eq(src.en), src.data.eq(port.data)]
        rows = []
        for name in MEMORIES:
            depth = geometry(cfg, name).depth
            for k in range(BACKDOOR_ROWS):
                port = memories[name].read_port()
                row = self.bd_addr * BACKDOOR_ROWS + k
                m.d.comb += port.addr.eq(Mux(row < depth, row, 0))
                rows.append(port.data)
        m.d.comb += self.bd_data.eq(Cat(*rows))
        return m


# ---------------------------------------------------------------------------------- programs

class Program:
    """Instructions of one scenario: engine, fields, the gap before it is offered and the
    instruction whose retirement it waits for."""

    def __init__(self):
        self.entries: list[dict] = []

    def add(self, engine: str, args: dict, gap: int) -> None:
        self.entries.append({"engine": engine, "args": args, "gap": gap, "dep": -1})

    def set_dependencies(self, cfg: AcceleratorConfig) -> None:
        """``dep``: the latest earlier instruction of the other engine sharing an element
        with this one, one of them writing it (what the core's tokens order)."""
        accesses = [SPECS[Opcode.LOAD if e["engine"] == "load" else Opcode.STORE]
                    .accesses(cfg, e["args"]) for e in self.entries]
        for j, entry in enumerate(self.entries):
            for i in range(j - 1, -1, -1):
                if self.entries[i]["engine"] == entry["engine"]:
                    continue
                if any((a.write or b.write) and a.overlaps(b)
                       for a in accesses[i] for b in accesses[j]):
                    entry["dep"] = i
                    break

    def vectors(self) -> list[dict]:
        out = []
        for e in self.entries:
            op = Opcode.LOAD if e["engine"] == "load" else Opcode.STORE
            word = int.from_bytes(encode(Instruction(op, 0, 0, dict(e["args"]))), "little")
            out.append({"engine": e["engine"], "word": f"{word:x}", "gap": e["gap"],
                        "dep": e["dep"]})
        return out


def _span(rows: int, stride: int, width: int) -> int:
    return (rows - 1) * stride + width


def _dram_addr(rng: random.Random, size: int, rows: int, stride: int, width: int,
               long: bool = False) -> int:
    """A DRAM address for the pattern, often placed so that a row crosses 4 KiB; a long row
    (``long``) that fits in a 4 KiB page starts in the first page, so that it ends in the
    page (and is split at 256 beats)."""
    span = _span(rows, stride, width)
    top = size - span
    if long and width < AXI_BOUNDARY:
        return rng.randint(0, min(top, AXI_BOUNDARY - width))
    if width > 1 and rng.random() < 0.35:
        boundary = rng.randrange(AXI_BOUNDARY, size, AXI_BOUNDARY)
        addr = boundary - rng.randint(1, width - 1)
        if 0 <= addr <= top:
            return addr
    return rng.randint(0, top)


def _cols(rng: random.Random, n: int, room: int, long: bool) -> int:
    if long and room >= AXI_BURST_MAX_BEATS * n - n:
        return rng.randint(AXI_BURST_MAX_BEATS * n - n, min(room, AXI_BURST_MAX_BEATS * n + 3 * n))
    return rng.randint(1, min(room, rng.choice((2 * n, 5 * n, 24 * n))))


def random_load(rng: random.Random, cfg: AcceleratorConfig, dram: int, long=False,
                param=False, region=None, dense=False) -> dict:
    """A legal LOAD; ``long``: rows of more than 256 beats; ``dense``: many rows of at most
    ``2 N`` bytes (bursts of one or two beats back to back)."""
    n = cfg.lanes
    rows = rng.randint(1, 2 if long else 4)
    if dense and not param:
        region = cfg.regions[region or rng.choice(LOAD_REGIONS)]
        cols, pad = rng.randint(1, 2 * n), rng.choice((0, 0, rng.randint(1, n)))
        stride = cols + pad + rng.randint(0, n)
        rows = min(rng.randint(8, 24), region.size // stride)
        dst = region.base + rng.randint(0, region.size - _span(rows, stride, cols + pad))
        width = cols
    elif param:
        words = cfg.param_words
        cols = rng.randint(1, min(words // rows - 8, 6 * n))
        stride = cols + rng.randint(0, 8) if rows > 1 else rng.randint(0, 64)
        dst = rng.randint(0, words - _span(rows, stride, cols))
        width, pad = 4 * cols, 0
    else:
        region = cfg.regions[region or rng.choice(LOAD_REGIONS)]
        pad = 0 if rng.random() < 0.5 else rng.randint(1, 2 * n)
        room = region.size // rows - pad - 2 * n
        cols = _cols(rng, n, max(room, 1), long)
        stride = cols + pad + rng.randint(0, 2 * n) if rows > 1 else rng.randint(0, 64)
        dst = region.base + rng.randint(0, region.size - _span(rows, stride, cols + pad))
        width = cols
    dram_stride = rng.randint(0, 99)
    if rows > 1:
        dram_stride = rng.choice((width, width + rng.randint(1, 3 * n), rng.randint(0, width),
                                  AXI_BOUNDARY + rng.randint(-n, n)))
    if _span(rows, dram_stride, width) > dram:
        dram_stride = width
    return {"mem": Mem.PARAM if param else Mem.SPAD,
            "dram_addr": _dram_addr(rng, dram, rows, dram_stride, width, long),
            "dram_stride": dram_stride, "dst_addr": dst, "dst_stride": stride,
            "rows": rows, "cols": cols, "pad": pad}


def random_store(rng: random.Random, cfg: AcceleratorConfig, dram: int, long=False,
                 dense=False) -> dict:
    """A legal STORE; ``long``: a row of more than 256 beats (at most 4 KiB: the ``out``
    region); ``dense``: many rows of at most ``2 N`` bytes."""
    n = cfg.lanes
    region = cfg.regions[rng.choice(STORE_SOURCES) if not long else "out"]
    rows = 1 if long else rng.randint(8, 24) if dense else rng.randint(1, 4)
    if dense:
        cols = rng.randint(1, 2 * n)
    else:
        cols = _cols(rng, n, region.size if rows == 1 else region.size // rows - 2 * n, long)
    src_stride = 0
    if rows > 1:
        src_stride = rng.choice((cols, cols + rng.randint(1, 2 * n), rng.randint(0, cols)))
    if _span(rows, src_stride, cols) > region.size:
        src_stride = 0
    src = region.base + rng.randint(0, region.size - _span(rows, src_stride, cols))
    dram_stride = rng.choice((cols, cols + rng.randint(1, 3 * n),
                              AXI_BOUNDARY + rng.randint(0, n))) if rows > 1 else rng.randint(0, 99)
    if dense:
        dram_stride = cols + rng.randint(0, 2 * n)
    if _span(rows, dram_stride, cols) > dram:
        dram_stride = cols
    return {"src_addr": src, "src_stride": src_stride,
            "dram_addr": _dram_addr(rng, dram, rows, dram_stride, cols, long),
            "dram_stride": dram_stride, "rows": rows, "cols": cols}


def random_program(rng: random.Random, cfg: AcceleratorConfig, dram: int, count: int,
                   dense: bool = False) -> Program:
    """``count`` instructions: every LOAD destination, PARAM loads, long rows (more than 256
    beats) on both engines, 4 KiB crossings, random offsets, strides, pads and gaps; or
    (``dense``) instructions of many short rows, offered back to back."""
    prog = Program()
    if dense:
        for _ in range(count):
            engine = rng.choice(("load", "load", "store"))
            make = random_load if engine == "load" else random_store
            prog.add(engine, make(rng, cfg, dram, dense=True), rng.choice((0, 0, 0, 3)))
        prog.set_dependencies(cfg)
        return prog
    kinds = (["load"] * 6 + ["param"] + ["store"] * 3)
    forced = [("load", {"region": r}) for r in LOAD_REGIONS] + [
        ("param", {}), ("load", {"long": True, "region": "act"}), ("store", {"long": True}),
        ("store", {})]
    rng.shuffle(forced)
    for k in range(count):
        kind, extra = forced[k] if k < len(forced) else (rng.choice(kinds), {})
        gap = 0 if rng.random() < 0.6 else rng.choice((rng.randint(1, 6), rng.randint(20, 90)))
        if kind == "store":
            prog.add("store", random_store(rng, cfg, dram, **extra), gap)
        else:
            prog.add("load", random_load(rng, cfg, dram, param=kind == "param", **extra), gap)
    prog.set_dependencies(cfg)
    return prog


def check_program(cfg: AcceleratorConfig, prog: Program, dram: int) -> None:
    """Every instruction is legal and inside its memories (as the core's decoder requires)."""
    for e in prog.entries:
        op = Opcode.LOAD if e["engine"] == "load" else Opcode.STORE
        spec = SPECS[op]
        Instruction(op, 0, 0, dict(e["args"])).check()
        spec.check(cfg, e["args"])
        for acc in spec.accesses(cfg, e["args"]):
            if acc.mem == "dram":
                assert 0 <= acc.lo and acc.hi <= dram, (e, acc)
            else:
                assert any(cfg.regions[r].base <= acc.lo and acc.hi <= cfg.regions[r].end
                           for r in acc.regions), (e, acc)
            if acc.write and acc.rows > 1:
                assert acc.stride >= acc.width, (e, acc)


# ---------------------------------------------------------------------------------- golden

def initial_memories(rng: random.Random, cfg: AcceleratorConfig) -> dict[str, bytes]:
    return {name: rng.randbytes(geometry(cfg, name).depth * cfg.lanes) for name in MEMORIES}


def words(raw: bytes, n: int) -> list[int]:
    return [int.from_bytes(raw[k:k + n], "little") for k in range(0, len(raw), n)]


def arch_state(cfg: AcceleratorConfig, memories: dict[str, bytes], dram: bytes) -> ArchState:
    st = ArchState(cfg, np.frombuffer(dram, dtype=np.uint8)[None].copy())
    for name, raw in memories.items():
        region = cfg.regions[name]
        if name == "param":
            st.param[0, :] = np.frombuffer(raw, dtype="<i4")
        else:
            st.spad[0, region.base:region.end] = np.frombuffer(raw, dtype=np.int8)
    return st


def memory_bytes(cfg: AcceleratorConfig, st: ArchState) -> dict[str, bytes]:
    out = {}
    for name in MEMORIES:
        region = cfg.regions[name]
        if name == "param":
            out[name] = st.param[0].astype("<i4").tobytes()
        else:
            out[name] = st.spad[0, region.base:region.end].tobytes()
    return out


def run_golden(st: ArchState, prog: Program) -> None:
    for e in prog.entries:
        SPECS[Opcode.LOAD if e["engine"] == "load" else Opcode.STORE].execute(st, e["args"])


# ---------------------------------------------------------------------------------- timing

def predict(cfg: AcceleratorConfig, prog: Program, t0: int) -> dict:
    """Every instruction's start, retire and (LOAD) first R beat / (STORE) first and last W
    beat, from the timing functions, the contract's composition rules and the test bench's
    own offering rule (``gap`` cycles after the previous start of the engine, and after the
    retirement of ``dep``)."""
    start, retire, first_beat, w_span = {}, {}, {}, {}
    prev = {"load": None, "store": None}
    load_retires, store_retires = [], []
    r_free, store_next = 0, None
    for i, e in enumerate(prog.entries):
        engine = e["engine"]
        s = (t0 if prev[engine] is None else prev[engine] + 1) + e["gap"]
        if e["dep"] >= 0:
            s = max(s, retire[e["dep"]] + 1)
        if engine == "load":
            if len(load_retires) >= LOAD_DEPTH:
                s = max(s, load_retires[-LOAD_DEPTH] + 1)
            t = load_timing(cfg, e["args"])
            first_beat[i], retire[i], r_free = t.schedule(s, r_free)
            load_retires.append(retire[i])
        else:
            if store_next is not None:
                s = max(s, store_next)
            if len(store_retires) >= STORE_DEPTH:
                s = max(s, store_retires[-STORE_DEPTH] + 1)
            t = store_timing(cfg, e["args"])
            store_next = s + t.next
            retire[i] = s + t.retire
            w_span[i] = (s + t.first_w, s + t.first_w + t.w_cycles - 1)
            store_retires.append(retire[i])
        start[i] = s
        prev[engine] = s
    return {"start": start, "retire": retire, "first_beat": first_beat, "w_span": w_span}


def predicted_busy(cfg: AcceleratorConfig, prog: Program, pred: dict, t0: int, end: int) -> dict:
    """Busy cycles of each engine in ``[t0, end)``: the start cycle, cycles with
    ``*_DEPTH`` instructions in flight, and (STORE) the cycles before it can take the next."""
    busy = {}
    for engine, depth in (("load", LOAD_DEPTH), ("store", STORE_DEPTH)):
        idx = [i for i, e in enumerate(prog.entries) if e["engine"] == engine]
        cycles = np.arange(t0, end)
        starts = np.array([pred["start"][i] for i in idx])
        retires = np.array([pred["retire"][i] for i in idx])
        flying = ((starts[None, :] < cycles[:, None]).sum(1)
                  - (retires[None, :] < cycles[:, None]).sum(1))
        b = np.isin(cycles, starts) | (flying == depth)
        if engine == "store":
            for i in idx:
                nxt = store_timing(cfg, prog.entries[i]["args"]).next
                b |= (cycles > pred["start"][i]) & (cycles < pred["start"][i] + nxt)
        busy[engine] = int(b.sum())
    return busy


def expected_bursts(n: int, addr: int, stride: int, rows: int, width: int) -> list[tuple[int, int]]:
    """``(address, len)`` of the INCR bursts of a DRAM pattern (AXI addresses)."""
    out = []
    for r in range(rows):
        lo = addr + r * stride
        beat, end = lo // n, -(-(lo + width) // n)
        while beat < end:
            page_end = (beat * n // AXI_BOUNDARY + 1) * AXI_BOUNDARY // n
            count = min(end - beat, AXI_BURST_MAX_BEATS, page_end - beat)
            out.append((beat * n, count - 1))
            beat += count
    return out


def program_bursts(cfg: AcceleratorConfig, prog: Program, engine: str) -> list[tuple[int, int]]:
    out = []
    for e in prog.entries:
        if e["engine"] != engine:
            continue
        a = e["args"]
        width = a["cols"] * (4 if engine == "load" and a["mem"] == Mem.PARAM else 1)
        out += expected_bursts(cfg.lanes, DRAM_BASE + a["dram_addr"], a["dram_stride"],
                               a["rows"], width)
    return out


# ---------------------------------------------------------------------------------- checks

def check_data(cfg, name, got: dict, st: ArchState, dram_image_len: int) -> None:
    want = memory_bytes(cfg, st)
    for mem in MEMORIES:
        have = bytes.fromhex(got["memories"][mem])
        if have != want[mem]:
            bad = next(k for k in range(len(have)) if have[k] != want[mem][k])
            raise AssertionError(f"{name}: memory {mem} byte {bad} (row {bad // cfg.lanes}) is "
                                 f"{have[bad]:#04x}, expected {want[mem][bad]:#04x}")
    have = bytes.fromhex(got["dram"])
    want_dram = st.dram[0].tobytes()
    assert len(have) == dram_image_len
    if have != want_dram:
        bad = next(k for k in range(len(have)) if have[k] != want_dram[k])
        raise AssertionError(f"{name}: DRAM byte {bad} is {have[bad]:#04x}, expected "
                             f"{want_dram[bad]:#04x}")


def check_bursts(cfg, name, got: dict, prog: Program) -> None:
    for channel, engine in (("ar", "load"), ("aw", "store")):
        have = [(addr, length) for _, addr, length in got[channel]]
        want = program_bursts(cfg, prog, engine)
        differ = next((k for k, (h, w) in enumerate(zip(have, want)) if h != w),
                      min(len(have), len(want)))
        assert have == want, f"{name}: {channel.upper()} bursts differ from burst {differ}"
        for addr, length in have:
            assert length < AXI_BURST_MAX_BEATS
            assert addr % cfg.lanes == 0
            assert addr // AXI_BOUNDARY == (addr + length * cfg.lanes) // AXI_BOUNDARY
    # every burst's AW is handshaken before its first W beat; wlast ends each burst
    w = got["w"]
    pos = 0
    for cycle, _, length in got["aw"]:
        beats = w[pos:pos + length + 1]
        assert len(beats) == length + 1 and beats[0][0] > cycle, \
            f"{name}: W beats of the burst with AW in cycle {cycle} from cycle {beats[0][0]}"
        assert [b[1] for b in beats] == [0] * length + [1], \
            f"{name}: wlast of the burst with AW in cycle {cycle}"
        pos += length + 1
    assert pos == len(w)


def check_timing(cfg, name, got: dict, prog: Program) -> None:
    pred = predict(cfg, prog, got["t0"])
    for i, e in enumerate(prog.entries):
        what = f"{name}: instruction {i} ({e['engine'].upper()} {e['args']})"
        assert got["start"][i] == pred["start"][i], \
            f"{what}: started in cycle {got['start'][i]}, predicted {pred['start'][i]}"
        assert got["retire"][i] == pred["retire"][i], \
            f"{what}: retired in cycle {got['retire'][i]}, predicted {pred['retire'][i]} " \
            f"(start {got['start'][i]})"
    beats = iter([beat[0] for beat in got["r"]])
    w_cycles = [c for c, _, _ in got["w"]]
    w_pos = 0
    for i, e in enumerate(prog.entries):
        if e["engine"] == "load":
            count = load_timing(cfg, e["args"]).beats
            cycles = [next(beats) for _ in range(count)]
            assert cycles[0] == pred["first_beat"][i], \
                f"{name}: LOAD {i}: first R beat in cycle {cycles[0]}, " \
                f"predicted {pred['first_beat'][i]}"
        else:
            count = store_timing(cfg, e["args"]).beats
            cycles = w_cycles[w_pos:w_pos + count]
            w_pos += count
            assert (cycles[0], cycles[-1]) == pred["w_span"][i], \
                f"{name}: STORE {i}: W beats in cycles {cycles[0]}..{cycles[-1]}, " \
                f"predicted {pred['w_span'][i]}"
    assert next(beats, None) is None and w_pos == len(w_cycles)
    busy = predicted_busy(cfg, prog, pred, got["t0"], got["last_retire"] + 1)
    assert got["busy"] == busy, f"{name}: busy cycles {got['busy']}, predicted {busy}"


def check_axi_ram_latencies(name, got: dict, prog: Program, n: int) -> None:
    """AxiRam's measured behaviour the timing contract relies on: a burst's first beat
    ``READ_LATENCY`` cycles after its AR when R was idle (never sooner), B ``WRITE_LATENCY``
    cycles after a burst's last W beat."""
    beats = got["r"]
    pos, latencies = 0, []
    for cycle, _, length in got["ar"]:
        offered = beats[pos][2]
        assert offered - cycle >= READ_LATENCY, \
            f"{name}: R beat {offered - cycle} cycles after its AR"
        if pos == 0 or beats[pos - 1][0] < cycle:       # R had nothing else to send
            latencies.append(offered - cycle)
        pos += length + 1
    assert latencies and set(latencies) == {READ_LATENCY}, f"{name}: AR->R latencies {latencies}"
    last_w = [c for c, last, _ in got["w"] if last]
    b_cycles = [c for c, _ in got["b"]]
    assert len(last_w) == len(b_cycles)
    assert {b - w for w, b in zip(last_w, b_cycles)} <= {WRITE_LATENCY}, \
        f"{name}: W->B latencies {sorted({b - w for w, b in zip(last_w, b_cycles)})}"
    assert all(beat[1] == 0 for beat in got["r"] + got["b"])
    assert got["held"]["aw"] == got["held"]["w"] == 0, f"{name}: AxiRam held AW or W"


def coverage(cfg: AcceleratorConfig, prog: Program) -> dict[str, int]:
    """What a program exercises: rows whose output offset is below the input offset (the
    extra operation), padded rows, parameter loads, each LOAD region, rows of more than 256
    beats, bursts ended by a 4 KiB boundary and by the 256-beat limit."""
    n = cfg.lanes
    out = {f"region {r}": 0 for r in LOAD_REGIONS}
    out.update({"load rows out<in": 0, "store rows out<in": 0, "padded rows": 0, "param loads": 0,
                "rows > 256 beats": 0, "4 KiB splits": 0, "256-beat splits": 0})
    for e in prog.entries:
        a = e["args"]
        load = e["engine"] == "load"
        param = load and a["mem"] == Mem.PARAM
        width = a["cols"] * (4 if param else 1)
        if load:
            out["param loads"] += param
            if not param:
                out[next(f"region {r}" for r in LOAD_REGIONS
                         if cfg.regions[r].base <= a["dst_addr"] < cfg.regions[r].end)] += 1
                out["padded rows"] += a["rows"] * (a["pad"] > 0)
        scale = 4 if param else 1
        for r in range(a["rows"]):
            dram = a["dram_addr"] + r * a["dram_stride"]
            chip = (a["dst_addr"] + r * a["dst_stride"]) * scale if load else \
                a["src_addr"] + r * a["src_stride"]
            i, o = (dram % n, chip % n) if load else (chip % n, dram % n)
            out[f"{e['engine']} rows out<in"] += o < i
            out["rows > 256 beats"] += -(-(dram % n + width) // n) > AXI_BURST_MAX_BEATS
            bursts = expected_bursts(n, DRAM_BASE + dram, 0, 1, width)
            for (addr, length), _ in zip(bursts, bursts[1:]):
                end = addr + (length + 1) * n
                out["4 KiB splits" if end % AXI_BOUNDARY == 0 else "256-beat splits"] += 1
    return out


# ---------------------------------------------------------------------------------- tests

def brute_rows(n, rows, in0, in_step, out0, out_step, row_bytes, pad):
    ops = words_in = words_out = 0
    for r in range(rows):
        i, o = (in0 + r * in_step) % n, (out0 + r * out_step) % n
        n_in, n_out = -(-(i + row_bytes) // n), -(-(o + row_bytes + pad) // n)
        ops += n_out + (o < i)
        words_in += n_in
        words_out += n_out
    first = (out0 % n) < (in0 % n)
    return ops, words_in, words_out, first


@pytest.mark.parametrize("n", [2, 4, 8, 16, 64])
def test_row_sums_closed_form(n):
    rng = random.Random(n)
    for _ in range(400):
        args = (n, rng.randint(1, 3 * n), rng.randint(0, 1 << 20), rng.randint(0, 1 << 20),
                rng.randint(0, 1 << 20), rng.randint(0, 1 << 16), rng.randint(1, 300),
                rng.randint(0, 40))
        assert _rows(*args) == brute_rows(*args), args


def test_timing_functions():
    cfg = make_config(16)
    # Aligned rows of 64 bytes + 16 pad: 5 words each; 3 rows.
    t = load_timing(cfg, {"mem": Mem.SPAD, "dram_addr": 0, "dram_stride": 64, "dst_addr": 0,
                          "dst_stride": 80, "rows": 3, "cols": 64, "pad": 16})
    assert (t.request, t.latency, t.data, t.tail, t.beats) == (2, READ_LATENCY, 15, 1, 12)
    assert t.schedule(10, 0) == (14, 29, 29)
    assert t.schedule(10, 40) == (40, 55, 55)
    # Destination offset 1 below the DRAM offset 2: one extra operation per row.
    t = load_timing(cfg, {"mem": Mem.SPAD, "dram_addr": 2, "dram_stride": 0, "dst_addr": 1,
                          "dst_stride": 0, "rows": 1, "cols": 14, "pad": 0})
    assert (t.data, t.beats) == (2, 1)
    # PARAM: 4 cols bytes a row at byte 4 dst_addr.
    t = load_timing(cfg, {"mem": Mem.PARAM, "dram_addr": 0, "dram_stride": 0, "dst_addr": 2,
                          "dst_stride": 0, "rows": 1, "cols": 4, "pad": 0})
    assert (t.data, t.beats) == (2, 1)
    s = store_timing(cfg, {"src_addr": 0, "src_stride": 0, "dram_addr": 0, "dram_stride": 0,
                           "rows": 2, "cols": 32})
    # retire: the cycle after the last B response, which comes WRITE_LATENCY after the last W
    # beat (s + 3 + ops).
    assert (s.first_w, s.w_cycles, s.next, s.retire, s.beats) == (4, 4, 5, 3 + 4 + WRITE_LATENCY + 1, 4)
    s = store_timing(cfg, {"src_addr": 5, "src_stride": 0, "dram_addr": 3, "dram_stride": 0,
                           "rows": 1, "cols": 10})
    assert (s.first_w, s.w_cycles, s.next, s.beats) == (5, 1, 3, 1)
    slow = cfg.replace(dram_bytes_per_cycle=4)
    assert load_timing(slow, {"mem": Mem.SPAD, "dram_addr": 0, "dram_stride": 0, "dst_addr": 0,
                              "dst_stride": 0, "rows": 2, "cols": 32, "pad": 0}).data == 16


@pytest.mark.parametrize("n", [2, 8, 32, 64])
def test_engines_elaborate(n):
    """Both engines build for every datapath width (the co-simulation covers 2, 4 and 16)."""
    cfg = AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n, scratchpad_kib=64,
                            accumulator_kib=16)
    load, store = LoadEngine(cfg), StoreEngine(cfg)
    assert all(len(getattr(load, name).en) == n for name in LOAD_DESTS)
    assert all(len(getattr(store, name).data) == 8 * n for name in STORE_SOURCES)
    assert len(load.axi.rdata) == len(store.axi.wdata) == 8 * n
    for engine in (load, store):
        Fragment.get(engine, None)


def test_timing_is_registered():
    from hw.units import UNITS, UnitTimings
    spec = UNITS["dma"]
    assert spec.module == "hw.core.dma"
    assert spec.timing_function("load") is load_timing
    assert spec.timing_function("store") is store_timing
    ut = UnitTimings(make_config(4))
    args = {"src_addr": 0, "src_stride": 0, "dram_addr": 0, "dram_stride": 0, "rows": 1, "cols": 4}
    assert ut.dma_store(args) == store_timing(make_config(4), args)
    args = {"mem": 0, "dram_addr": 0, "dram_stride": 0, "dst_addr": 0, "dst_stride": 0,
            "rows": 1, "cols": 4, "pad": 0}
    assert ut.dma_load(args) == load_timing(make_config(4), args)


async def _memory_model(ctx, dut, engine: str, words: list[int], gaps: list[int], cfg,
                        log: dict) -> None:
    """Amaranth-simulator testbench: offer ``words`` to ``dut`` (``gaps[i]`` cycles after the
    previous start) and play an AXI memory that takes every AR / AW / W at once, gives a
    burst's first R beat ``dram_latency_cycles`` after its AR (then a beat per cycle) and a
    burst's B response ``dram_write_latency_cycles`` after its last W beat, for any number of
    outstanding bursts.  Logs starts, retires and first R beats (cycle numbers from 0)."""
    axi = dut.axi
    if engine == "load":
        ctx.set(axi.arready, 1)
    else:
        ctx.set(axi.awready, 1)
        ctx.set(axi.wready, 1)
    pending = []            # LOAD: [earliest cycle of the next beat, beats left]
    responses = []          # STORE: cycles of the B responses due
    index, prev_start, cycle, last_beat = 0, -1, 0, -1
    while len(log["retire"]) < len(words):
        offer = index < len(words) and cycle >= prev_start + 1 + gaps[index]
        ctx.set(dut.instr.valid, offer)
        if offer:
            ctx.set(dut.instr.payload, words[index])
        if engine == "load":
            r_valid = bool(pending) and cycle >= max(pending[0][0], last_beat + 1)
            ctx.set(axi.rvalid, r_valid)
            ctx.set(axi.rlast, r_valid and pending[0][1] == 1)
        else:
            ctx.set(axi.bvalid, bool(responses) and responses[0] == cycle)
        _, _, ready, retire, *chan = await ctx.tick().sample(
            dut.instr.ready, dut.retire,
            *((axi.arvalid, axi.arlen, axi.rready) if engine == "load"
              else (axi.wvalid, axi.wlast)))
        if offer and ready:
            log["start"].append(cycle)
            prev_start, index = cycle, index + 1
        if retire:
            log["retire"].append(cycle)
        if engine == "load":
            arvalid, arlen, rready = chan
            if r_valid and rready:
                log["beats"].append(cycle)
                last_beat = cycle
                pending[0][1] -= 1
                if not pending[0][1]:
                    pending.pop(0)
            if arvalid:
                pending.append([cycle + cfg.dram_latency_cycles, arlen + 1])
        else:
            wvalid, wlast = chan
            if responses and responses[0] == cycle:
                responses.pop(0)
            if wvalid and wlast:
                responses.append(cycle + cfg.dram_write_latency_cycles)
        cycle += 1
        assert cycle < 20_000, f"{engine} engine stopped"


@pytest.mark.parametrize("engine", ["load", "store"])
def test_timing_with_long_memory_latency(engine):
    """The timing contract with another memory than AxiRam: latencies of 24 (R) and 20 (B)
    cycles and no limit on outstanding bursts (so ``STORE_DEPTH`` and ``LOAD_DEPTH`` bind)."""
    n = 4
    cfg = make_config(n).replace(dram_latency_cycles=24, dram_write_latency_cycles=20)
    rng = random.Random(7)
    prog = Program()
    for _ in range(14):
        gap = rng.choice((0, 0, 0, rng.randint(1, 40)))
        if engine == "load":
            prog.add("load", random_load(rng, cfg, 16384, dense=rng.random() < 0.3,
                                         param=rng.random() < 0.15), gap)
        elif rng.random() < 0.5:           # short stores, so that STORE_DEPTH binds
            prog.add("store", {"src_addr": cfg.regions["out"].base + rng.randint(0, 99),
                               "src_stride": 0, "dram_addr": rng.randint(0, 16000),
                               "dram_stride": 0, "rows": 1, "cols": rng.randint(1, 2 * n)}, 0)
        else:
            prog.add("store", random_store(rng, cfg, 16384, dense=rng.random() < 0.3), gap)
    words = [int(v["word"], 16) for v in prog.vectors()]
    dut = (LoadEngine if engine == "load" else StoreEngine)(cfg)
    log = {"start": [], "retire": [], "beats": []}

    async def bench(ctx):
        await _memory_model(ctx, dut, engine, words, [e["gap"] for e in prog.entries], cfg, log)

    run_simulation(dut, bench)
    pred = predict(cfg, prog, 0)
    assert log["start"] == [pred["start"][i] for i in range(len(words))]
    assert log["retire"] == [pred["retire"][i] for i in range(len(words))]
    if engine == "load":
        firsts, pos = [], 0
        for e in prog.entries:
            firsts.append(log["beats"][pos])
            pos += load_timing(cfg, e["args"]).beats
        assert firsts == [pred["first_beat"][i] for i in range(len(words))]
    depth = LOAD_DEPTH if engine == "load" else STORE_DEPTH
    assert any(s == log["retire"][i - depth] + 1 for i, s in enumerate(log["start"]) if i >= depth)


def scenarios_for(n: int, seed: int):
    """The scenarios of one width: (name, program, DRAM image, pause, error window)."""
    cfg = make_config(n)
    rng = random.Random(1000 + seed)
    dram = DRAM_BYTES[n]
    out = []
    for name, count, pause in (("natural", 22, None), ("dense", 10, None),
                               ("pause1", 12, {"seed": seed + 1, "probability": 0.25}),
                               ("pause2", 12, {"seed": seed + 2, "probability": 0.5})):
        prog = random_program(rng, cfg, dram, count, dense=name == "dense")
        check_program(cfg, prog, dram)
        out.append((name, prog, rng.randbytes(dram), pause, None))
    # Errors: the last 4 KiB page of the image answers SLVERR; one LOAD reads a byte of it,
    # one STORE writes one, each after a good instruction.
    prog = Program()
    page = dram - AXI_BOUNDARY
    good_load = {"mem": Mem.SPAD, "dram_addr": 0, "dram_stride": 0, "dst_addr": 0,
                 "dst_stride": 0, "rows": 1, "cols": 3 * n, "pad": 0}
    prog.add("load", good_load, 0)
    prog.add("load", {**good_load, "dram_addr": page + 5, "cols": 2}, 0)
    prog.add("store", {"src_addr": cfg.regions["out"].base, "src_stride": 0,
                       "dram_addr": 64, "dram_stride": 0, "rows": 1, "cols": 2 * n}, 30)
    prog.add("store", {"src_addr": cfg.regions["out"].base, "src_stride": 0,
                       "dram_addr": page + 7, "dram_stride": 0, "rows": 1, "cols": 1}, 0)
    check_program(cfg, prog, dram)
    out.append(("error", prog, rng.randbytes(dram), None,
                [DRAM_BASE + page, DRAM_BASE + dram]))
    return cfg, out


def simulate(n: int, cfg: AcceleratorConfig, scenarios: list, init: dict, build_dir) -> list:
    """Build the harness with memories ``init`` and run ``scenarios`` one after the other
    (each on the memories the previous one left); the logs and dumps of each."""
    dut = DmaHarness(cfg, {name: words(raw, n) for name, raw in init.items()})
    results_path = build_dir / "results.json"
    vectors = {
        "seed": n, "dram_base": DRAM_BASE, "ram_size": DRAM_BASE + DRAM_BYTES[n] + AXI_BOUNDARY,
        "results": str(results_path),
        "memories": [[name, geometry(cfg, name).depth, n] for name in MEMORIES],
        "backdoor_rows": BACKDOOR_ROWS,
        "scenarios": [{"name": name, "program": prog.vectors(), "dram": image.hex(),
                       "pause": pause, "error_window": window, "dump": window is None,
                       "cycle_limit": 40_000}
                      for name, prog, image, pause, window in scenarios],
    }
    run_cocotb(dut, "dma_harness", "cocotb_dma", build_dir, vectors=vectors)
    return json.loads(results_path.read_text())


def check_scenarios(n: int, cfg: AcceleratorConfig, scenarios: list, init: dict,
                    results: list) -> None:
    """Bit-exact data and bursts in every scenario, cycle-exact timing and AxiRam's
    latencies without pauses, the error scenario's error outputs."""
    memories = init
    for (name, prog, image, pause, window), got in zip(scenarios, results):
        label = f"N={n} {name}"
        if window is not None:
            errors = got["error_rise"]
            for engine, bad in (("load", 1), ("store", 3)):
                previous = got["retire"][bad - 1]
                assert errors[engine] is not None, f"{label}: {engine} error never raised"
                assert previous < errors[engine] <= got["retire"][bad] + 1, \
                    f"{label}: {engine} error raised in cycle {errors[engine]}, the bad " \
                    f"instruction ran {got['start'][bad]}..{got['retire'][bad]}"
            assert 2 in [beat[1] for beat in got["r"]]
            assert [resp for _, resp in got["b"]] == [0, 2]
            continue
        st = arch_state(cfg, memories, image)
        run_golden(st, prog)
        check_data(cfg, label, got, st, len(image))
        check_bursts(cfg, label, got, prog)
        if pause is None:
            check_axi_ram_latencies(label, got, prog, n)
            check_timing(cfg, label, got, prog)
        memories = {mem: bytes.fromhex(got["memories"][mem]) for mem in MEMORIES}


@pytest.mark.cocotb
@pytest.mark.parametrize("n", [2, 4, 16])
def test_dma_cocotb(n, tmp_path):
    cfg, scenarios = scenarios_for(n, seed=n)
    init = initial_memories(random.Random(n), cfg)
    results = simulate(n, cfg, scenarios, init, tmp_path)
    covered = {}
    for (name, prog, _, pause, window), got in zip(scenarios, results):
        if window is not None:
            continue
        for key, count in coverage(cfg, prog).items():
            covered[key] = covered.get(key, 0) + count
        for channel, count in got["held"].items():
            if pause is not None or channel in ("ar", "r"):     # AxiRam never holds AW or W
                key = f"{'natural' if pause is None else 'paused'} {channel} held"
                covered[key] = covered.get(key, 0) + count
    missing = [key for key, count in covered.items() if not count and
               not (key == "256-beat splits" and n == 16)]       # 256 beats = 4 KiB at N = 16
    assert not missing, f"N={n}: the scenarios do not cover {missing} ({covered})"
    check_scenarios(n, cfg, scenarios, init, results)
