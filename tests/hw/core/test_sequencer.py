# amaranth: UnusedElaboratable=no
"""The sequencer RTL against the schedule model (``sim.schedule``), cycle for cycle.

Engines are stand-ins driven from the testbench: each takes an instruction when it is not
busy, stays busy and retires after cycles derived from the instruction's fields (the same
:class:`StandIn` timing object serves the model), so what is compared is the sequencer
itself: fetch, decode latency, FIFO back-pressure, tokens, in-flight limits, the end of the
run, the busy counters, and the error verdicts of bad programs.  The memory answers every
read burst ``dram_latency_cycles`` after its request, one beat per cycle.
"""
from __future__ import annotations

import dataclasses
import random

import pytest
from amaranth.sim import Simulator

from compiler.isa import (INSTR_BYTES, NQ, ErrorCode, Instruction, Opcode, Queue,
                          check_instruction, decode, encode)
from compiler.lower import compile_graph
from hw.axi import AxiResp
from compiler.testgraphs import tiny_vit
from hw.config import load_config
from hw.core.sequencer import Sequencer
from sim import schedule as schedule_module
from sim.schedule import EngineModel, schedule


class StandIn(EngineModel):
    """Busy ``1 + h % 5`` cycles, retires ``h // 5 % 7 - 1`` cycles after that (at least one
    cycle after the start, in order), where ``h`` is a hash of the instruction's fields."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.last = -1
        self.busy_end = 0

    def earliest(self):
        return self.busy_end

    def start(self, index, ins, t):
        h = (sum((k + 3) * v for k, v in enumerate(ins.args.values())) * 2654435761 + int(ins.op)) % 1000
        busy_end = t + 1 + h % 5
        retire = max(busy_end + (h // 5) % 7 - 1, t + 1, self.last + 1)
        self.last = retire
        self.busy_end = busy_end
        return busy_end, retire


def run_rtl(cfg, words: list[bytes], dram_size: int, latency: int, max_cycles: int = 30_000,
            token_bits: int = 16, bus_error: tuple[int, int] | None = None,
            bad_beat: int | None = None, watch=None):
    """Run the sequencer on ``words`` at address 0; the registers and the stand-in engines'
    start and retire cycles when done.  ``bus_error = (q, c)``: engine ``q`` reports a bus
    error from cycle ``c`` on (held, as the DMA engines hold theirs); ``bad_beat = k``: the
    memory answers the ``k``-th read beat of the run (from 0) with ``SLVERR``;
    ``watch(ctx, dut)`` is called in every cycle."""
    dut = Sequencer(cfg, token_bits=token_bits)
    program = b"".join(words)
    engines = [StandIn() for _ in range(NQ)]
    out = {"start": {}, "retire": {}}

    async def bench(ctx):
        ctx.set(dut.prog_base, 0)
        ctx.set(dut.prog_len, len(words))
        ctx.set(dut.dram_size, dram_size)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        n = cfg.lanes
        beats = []                      # (cycle due, data)
        busy_end = [0] * NQ
        retire_at = [[] for _ in range(NQ)]
        cycle = 0
        beat_count = 0
        ctx.set(dut.axi.arready, 1)
        while not ctx.get(dut.done):
            if cycle >= max_cycles:
                out["timeout"] = True
                return
            # Memory: one beat per cycle, latency cycles after the request.
            due = bool(beats) and beats[0][0] <= cycle
            ctx.set(dut.axi.rvalid, bool(due))
            if due:
                ctx.set(dut.axi.rdata, beats[0][1])
                ctx.set(dut.axi.rlast, 0)
                ctx.set(dut.axi.rresp, AxiResp.SLVERR if beat_count == bad_beat else AxiResp.OKAY)
            if bus_error is not None:
                ctx.set(dut.bus_error, (1 << bus_error[0]) if cycle >= bus_error[1] else 0)
            for q in range(NQ):
                eng = dut.engine[q]
                ctx.set(eng.instr.ready, cycle >= busy_end[q])
                ctx.set(eng.busy, cycle < busy_end[q])
                ctx.set(eng.retire, bool(retire_at[q]) and retire_at[q][0] == cycle)
            # Observe this cycle's handshakes.
            if watch is not None:
                watch(ctx, dut)
            if ctx.get(dut.axi.arvalid):
                addr, length = ctx.get(dut.axi.araddr), ctx.get(dut.axi.arlen) + 1
                first = max(cycle + latency, beats[-1][0] + 1 if beats else 0)
                for b in range(length):
                    chunk = program[addr + b * n: addr + (b + 1) * n].ljust(n, b"\0")
                    beats.append((first + b, int.from_bytes(chunk, "little")))
            if due:
                beats.pop(0)
                beat_count += 1
            for q in range(NQ):
                eng = dut.engine[q]
                if retire_at[q] and retire_at[q][0] == cycle:
                    retire_at[q].pop(0)
                    out["retire"].setdefault(q, []).append(cycle)
                if ctx.get(eng.instr.valid) and cycle >= busy_end[q]:
                    word = ctx.get(eng.instr.payload).to_bytes(INSTR_BYTES, "little")
                    ins = decode(word)
                    i = len(out["start"])
                    b, r = engines[q].start(i, ins, cycle)
                    busy_end[q] = b
                    retire_at[q].append(r)
                    out["start"].setdefault(q, []).append(cycle)
            await ctx.tick()
            cycle += 1
        out["cycles"] = ctx.get(dut.cycles)
        out["error"] = ctx.get(dut.error)
        out["error_index"] = ctx.get(dut.error_index)
        out["busy"] = [ctx.get(dut.busy_count[q]) for q in range(NQ)]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


def run_model(cfg, words, dram_size):
    def check(i):
        ins, _ = check_instruction(cfg, words[i], i, i == len(words) - 1, dram_size)
        return ins
    return schedule(cfg, words, check, [StandIn() for _ in range(NQ)])


def _first_difference(model, rtl, words) -> str:
    for q in range(NQ):
        want = sorted((int(model.start[i]), i) for i in range(len(words))
                      if model.start[i] >= 0 and decode(words[i]).queue == q)
        got = rtl["start"].get(q, [])
        for k, (w, i) in enumerate(want):
            if k >= len(got) or got[k] != w:
                return (f"{Queue(q).name}: its start {k} (instruction {i}, pushed at "
                        f"{model.push[i]}) at {got[k] if k < len(got) else None} in the RTL, "
                        f"{w} in the model")
    return "no start differs"


def compare(cfg, words, dram_size, token_bits=16, watch=None):
    model = run_model(cfg, words, dram_size)
    limit = 4 * (model.cycles or max(int(model.retire.max(initial=0)), 0)) + 2000
    rtl = run_rtl(cfg, words, dram_size, cfg.dram_latency_cycles, max_cycles=limit,
                  token_bits=token_bits, watch=watch)
    assert not rtl.get("timeout"), (f"the RTL did not finish in {limit} cycles; "
                                    f"{_first_difference(model, rtl, words)}")
    if model.error is None:
        assert rtl["error"] == 0, f"RTL stopped with {ErrorCode(rtl['error']).name} at {rtl['error_index']}"
        assert rtl["cycles"] == model.cycles
        assert rtl["busy"] == model.busy
        assert _first_difference(model, rtl, words) == "no start differs"
    else:
        code, index, _ = model.error
        assert (ErrorCode(rtl["error"]), rtl["error_index"]) == (code, index)
    return model, rtl


def _program(cfg, **kw):
    image = compile_graph(tiny_vit(**kw), cfg)
    return [encode(i) for i in image.instructions], image.dram_size


@pytest.mark.parametrize("lanes, instr_buffer, latency", [(4, 16, 2), (8, 64, 5), (2, 16, 1)])
def test_compiled_program_cycle_exact(lanes, instr_buffer, latency):
    cfg = load_config("tiny", array_rows=lanes, instr_buffer=instr_buffer,
                      dram_latency_cycles=latency, scratchpad_kib=64)
    words, dram_size = _program(cfg)
    model, rtl = compare(cfg, words, dram_size)
    assert model.error is None and len(model.fetches) == -(-len(words) // instr_buffer)


@pytest.mark.parametrize("lanes", [4, 64])
def test_instruction_memory_is_not_read_while_written(lanes):
    """The build declares the instruction memory's port collisions undefined
    (``hw.core.core.undefined_collisions``), so its read port must be disabled in every
    cycle a fetch writes it: several segments, a row assembled from 8 beats (N = 4) and two
    instructions a row (N = 64), each run cycle-exact with the model."""
    cfg = load_config("tiny", array_rows=lanes, instr_buffer=16, dram_latency_cycles=3,
                      scratchpad_kib=64 if lanes == 4 else 256)
    words, dram_size = _program(cfg, **({} if lanes == 4 else {"dim": 64, "heads": 1}))
    count = {"write": 0, "read": 0, "both": 0}

    def watch(ctx, dut):
        wport, rport = dut._imem_ports
        w, r = bool(ctx.get(wport.en)), bool(ctx.get(rport.en))
        count["write"] += w
        count["read"] += r
        count["both"] += w and r

    model, _ = compare(cfg, words, dram_size, watch=watch)
    assert model.error is None and len(model.fetches) > 1
    rows = -(-len(words) * INSTR_BYTES // max(INSTR_BYTES, lanes))
    assert count["write"] >= rows and count["read"] > 0
    assert count["both"] == 0, count


def _ins(op, **args) -> Instruction:
    from compiler.isa import FORMATS
    full = {f.name: 0 for f in FORMATS[op]}
    full.update(args)
    return Instruction(op, args=full)


def test_bad_programs_same_verdict():
    cfg = load_config("tiny", instr_buffer=16, dram_latency_cycles=2)
    words, dram_size = _program(cfg)
    cases = {
        "unknown opcode": words[:5] + [bytes([0x7E]) + bytes(31)] + words[5:],
        "reserved bit": words[:3] + [words[3][:-1] + b"\x80"] + words[4:],
        "missing halt": words[:-1],
        "halt early": words[:4] + [words[-1]] + words[4:],
        "empty": [],
    }
    # A LOAD waiting for a token nobody gives.
    load = decode(words[0])
    cases["deadlock"] = [encode(dataclasses.replace(load, wait=1 << Queue.STORE))] + words[1:]
    # A token nobody takes.
    cases["tokens left"] = [encode(dataclasses.replace(load, signal=1 << Queue.STORE))] + words[1:]
    # Out of range: a LOAD past DRAM.
    far = dataclasses.replace(load, args={**load.args, "dram_addr": dram_size})
    cases["range"] = words[:7] + [encode(far)] + words[7:]
    for name, prog in cases.items():
        model, rtl = compare(cfg, prog, dram_size)
        assert model.error is not None, name


def _random_masks(words, seed: int, density: float, mode: str) -> list[bytes]:
    """The program with every instruction's wait and signal masks drawn at random (bits of
    other queues only).  ``mode`` "claimed": an instruction signals a queue only if a later
    instruction of it exists and no token for it is unclaimed, and that queue's next
    instruction takes the token (no deadlock, no token left; at run time a queue may still
    run ahead of another, so 2-bit semaphores may overflow); "some left": an instruction waits only for
    tokens earlier ones signalled, at random (``TOKENS``); "any": any masks (mostly
    ``DEADLOCK``)."""
    rng = random.Random(seed)
    decoded = [decode(w) for w in words]
    queues = [None if i.queue is None else int(i.queue) for i in decoded]
    out = []
    unclaimed = [[0] * NQ for _ in range(NQ)]           # [source][destination]
    for k, ins in enumerate(decoded):
        q = queues[k]
        if q is None:
            out.append(words[k])
            continue
        others = [p for p in range(NQ) if p != q]
        if mode == "claimed":
            waits = [p for p in others if unclaimed[p][q]]
            later = set(queues[k + 1:])
            signals = [p for p in others
                       if p in later and not unclaimed[q][p] and rng.random() < density]
        elif mode == "some left":
            waits = [p for p in others if unclaimed[p][q] and rng.random() < 2 * density]
            signals = [p for p in others if rng.random() < density]
        else:
            waits = [p for p in others if rng.random() < density]
            signals = [p for p in others if rng.random() < density]
        for p in waits:
            unclaimed[p][q] -= 1
        for p in signals:
            unclaimed[q][p] += 1
        out.append(encode(dataclasses.replace(ins, wait=sum(1 << p for p in waits),
                                              signal=sum(1 << p for p in signals))))
    return out


@pytest.mark.parametrize("seed, mode, token_bits", [
    (0, "claimed", 16), (1, "claimed", 16), (2, "claimed", 2), (3, "some left", 2),
    (4, "some left", 16), (5, "some left", 2), (6, "any", 16)])
def test_random_masks_same_verdict(seed, mode, token_bits, monkeypatch):
    """Random dependency masks on a compiled program's first 40 instructions, some with
    2-bit semaphores (a fourth token overflows): the same cycles, busy counts and starts, or
    the same error and index."""
    monkeypatch.setattr(schedule_module, "TOKEN_LIMIT", (1 << token_bits) - 1)
    cfg = load_config("tiny", instr_buffer=16, dram_latency_cycles=3)
    words, dram_size = _program(cfg)
    words = _random_masks(words[:40], seed, 0.3, mode) + words[-1:]
    compare(cfg, words, dram_size, token_bits)


def test_semaphore_overflow_a_cycle_after_the_retire(monkeypatch):
    """Six LOADs signal MATRIX, whose first instruction waits for them all to be produced
    (a long MATMUL ahead of the consumers): the fourth token overflows a 2-bit semaphore,
    ``SEMAPHORE`` at that LOAD; with 16-bit semaphores the program ends."""
    cfg = load_config("tiny", instr_buffer=16, dram_latency_cycles=3)
    words, dram_size = _program(cfg)
    ins = [decode(w) for w in words]
    load = next(i for i in ins if i.op == Opcode.LOAD)
    matmul = next(i for i in ins if i.op == Opcode.MATMUL)
    prog = [encode(dataclasses.replace(matmul, wait=0, signal=0))]
    prog += [encode(dataclasses.replace(load, wait=0, signal=1 << Queue.MATRIX))] * 6
    prog += [encode(dataclasses.replace(matmul, wait=1 << Queue.LOAD, signal=0))] * 6
    prog += words[-1:]
    monkeypatch.setattr(schedule_module, "TOKEN_LIMIT", 3)
    model, _ = compare(cfg, prog, dram_size, token_bits=2)
    assert model.error is not None and model.error[:2] == (ErrorCode.SEMAPHORE, 4), model.error
    monkeypatch.setattr(schedule_module, "TOKEN_LIMIT", (1 << 16) - 1)
    model, _ = compare(cfg, prog, dram_size, token_bits=16)
    assert model.error is None


def test_token_bits_checked():
    with pytest.raises(ValueError, match="token_bits"):
        Sequencer(load_config("tiny"), token_bits=0)


def _queue_indices(words) -> dict[int, list[int]]:
    """Each queue's instructions, in program order (a queue starts them in that order)."""
    out = {}
    for i, w in enumerate(words):
        q = decode(w).queue
        if q is not None:
            out.setdefault(int(q), []).append(i)
    return out


@pytest.mark.parametrize("queue, k, where", [
    (Queue.LOAD, 0, "in flight"), (Queue.LOAD, 5, "retired"), (Queue.MATRIX, 2, "in flight"),
    (Queue.VECTOR, 3, "retired"), (Queue.STORE, 1, "in flight"), (Queue.STORE, 0, "retired")])
def test_engine_bus_error(queue, k, where):
    """Engine ``queue`` reports a bus error from cycle ``c``: a cycle after its ``k``-th start
    (in flight) or after its ``k``-th retire (of the clean run).  ``BUS`` at its oldest
    instruction in flight at ``c``, else at its last retired one; nothing starts after
    ``c + 1`` (the report is acted on a cycle later); the run ends once the instructions in
    flight have retired."""
    cfg = load_config("tiny", instr_buffer=16, dram_latency_cycles=3)
    words, dram_size = _program(cfg)
    clean = run_rtl(cfg, words, dram_size, cfg.dram_latency_cycles)
    assert clean["error"] == 0
    q = int(queue)
    c = (clean["start"] if where == "in flight" else clean["retire"])[q][k] + 1
    rtl = run_rtl(cfg, words, dram_size, cfg.dram_latency_cycles, bus_error=(q, c))
    assert not rtl.get("timeout")
    assert ErrorCode(rtl["error"]) == ErrorCode.BUS
    # Up to the error the run is the clean one.
    starts, retires = rtl["start"].get(q, []), rtl["retire"].get(q, [])
    assert starts == clean["start"][q][:len(starts)] and retires == clean["retire"][q][:len(retires)]
    assert all(s <= c + 1 for p in rtl["start"] for s in rtl["start"][p]), rtl["start"]
    assert len(retires) == len(starts)                  # in-flight instructions retired
    in_flight = [j for j, st in enumerate(starts) if st < c <= retires[j]]
    retired = [j for j, r in enumerate(retires) if r < c]
    assert bool(in_flight) == (where == "in flight") and (in_flight or retired)
    want = _queue_indices(words)[q][in_flight[0] if in_flight else retired[-1]]
    assert rtl["error_index"] == want, (rtl["error_index"], want)


@pytest.mark.parametrize("bad_beat", [0, 77, 130, 300])
def test_fetch_bus_error(bad_beat):
    """An error response on a fetch beat: ``BUS`` at the first instruction of the segment
    being fetched; nothing of that segment starts."""
    cfg = load_config("tiny", instr_buffer=16, dram_latency_cycles=3)
    words, dram_size = _program(cfg)
    beats_per_segment = 16 * INSTR_BYTES // cfg.lanes
    rtl = run_rtl(cfg, words, dram_size, cfg.dram_latency_cycles, bad_beat=bad_beat)
    assert not rtl.get("timeout")
    assert ErrorCode(rtl["error"]) == ErrorCode.BUS
    segment = bad_beat // beats_per_segment
    assert rtl["error_index"] == 16 * segment
    started = sum(len(v) for v in rtl["start"].values())
    assert started <= 16 * segment
