"""cocotb test of the LOAD and STORE engines against cocotbext-axi's AxiRam (driven by
test_dma.py).

The harness (``test_dma.DmaHarness``) holds both engines, the memories they write and read
(initialised by pytest) and a backdoor read port on each.  Pytest sends scenarios: a DRAM
image, a program of LOAD / STORE instruction words, each with the random gap before it is
offered and the instruction whose retirement it waits for (the hazards of the program, as the
core's tokens would order them), AXI pause settings and an optional error window.  For each
scenario this module resets the harness, runs the program, logs every handshake and retire
pulse with its cycle, dumps every memory and the DRAM, and writes it all to the results file
for pytest to compare (bit-exact data, cycle-exact timing).

Cycles are :class:`cocotb_streams.StreamTB` edge counts: a handshake seen after edge ``n``
counts as cycle ``n``.
"""
from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotbext.axi import AxiBus, AxiRam

from cocotb_streams import StreamTB
from sim.cocotb_runner import load_vectors

ENGINES = ("load", "store")
#: Cycles after the last retirement in which nothing may move on any channel.
QUIET_CYCLES = 24
#: The engines' AXI outputs: logged per handshake (the first two) and held unchanged from
#: the cycle they are offered until their handshake.
HELD_FIELDS = {"ar": ("araddr", "arlen"), "aw": ("awaddr", "awlen"),
               "w": ("wlast", "wstrb", "wdata")}


def _pauses(seed: int, probability: float):
    rng = random.Random(seed)
    while True:
        yield rng.random() < probability


class TB(StreamTB):
    """Clock, reset, the AxiRam and the per-cycle driver / monitor of a scenario."""

    INPUTS_HELD_LOW = ("load__valid", "load__payload", "store__valid", "store__payload",
                       "dram_base", "bd_addr")

    def __init__(self, dut, vectors: dict):
        super().__init__(dut, vectors["seed"])
        self.vectors = vectors
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi", bus_separator="__"), dut.clk, dut.rst,
                          size=vectors["ram_size"])
        self.channels = {
            "aw": self.ram.write_if.aw_channel, "w": self.ram.write_if.w_channel,
            "b": self.ram.write_if.b_channel, "ar": self.ram.read_if.ar_channel,
            "r": self.ram.read_if.r_channel,
        }

    def set_pauses(self, pause: dict | None) -> None:
        for k, (name, channel) in enumerate(self.channels.items()):
            if pause is None:
                channel.clear_pause_generator()
                channel.pause = False
            else:
                channel.set_pause_generator(_pauses(pause["seed"] * 10 + k, pause["probability"]))

    def inject_errors(self, window: list[int] | None) -> None:
        read_if, write_if = self.ram.read_if, self.ram.write_if
        for port in (read_if, write_if):
            port.__dict__.pop("_read", None)
            port.__dict__.pop("_write", None)
        if window is None:
            return
        lo, hi = window
        original_read, original_write = read_if._read, write_if._write

        async def failing_read(address, length):
            if lo <= address < hi:
                raise ValueError(f"injected read error at {address:#x}")
            return await original_read(address, length)

        async def failing_write(address, data):
            if lo <= address < hi:
                raise ValueError(f"injected write error at {address:#x}")
            return await original_write(address, data)

        read_if._read = failing_read
        write_if._write = failing_write

    async def reset(self, scenario: dict) -> int:
        """Reset the harness and AxiRam for ``scenario``; returns the current cycle."""
        dut = self.dut
        dut.rst.value = 1
        for name in self.INPUTS_HELD_LOW:
            getattr(dut, name).value = 0
        dut.dram_base.value = self.vectors["dram_base"]
        await ClockCycles(dut.clk, 3)
        self.ram.write(0, bytes(self.vectors["ram_size"]))
        self.ram.write(self.vectors["dram_base"], bytes.fromhex(scenario["dram"]))
        self.set_pauses(scenario.get("pause"))
        self.inject_errors(scenario.get("error_window"))
        dut.rst.value = 0
        await RisingEdge(dut.clk)
        await ReadOnly()
        cycle = self.edges          # read after ReadOnly: the edge counter has run
        await RisingEdge(dut.clk)
        return cycle + 1

    async def run_program(self, scenario: dict, t0: int) -> dict:
        """Offer the program from cycle ``t0`` (the current one), log everything, until
        every instruction retired and the channels were quiet for QUIET_CYCLES.  The loop
        counts its own cycles (one edge per iteration)."""
        dut = self.dut
        program = scenario["program"]
        queues = {e: [i for i, ins in enumerate(program) if ins["engine"] == e] for e in ENGINES}
        head = {e: 0 for e in ENGINES}
        retired = {e: 0 for e in ENGINES}
        prev_start = {e: None for e in ENGINES}
        start = [None] * len(program)
        retire = [None] * len(program)
        log = {"ar": [], "r": [], "aw": [], "w": [], "b": [], "busy": {e: 0 for e in ENGINES},
               "held": {"ar": 0, "r": 0, "aw": 0, "w": 0},
               "error_rise": {e: None for e in ENGINES}}
        valid = {e: getattr(dut, f"{e}__valid") for e in ENGINES}
        payload = {e: getattr(dut, f"{e}__payload") for e in ENGINES}
        ready = {e: getattr(dut, f"{e}__ready") for e in ENGINES}
        retire_sig = {e: getattr(dut, f"{e}_retire") for e in ENGINES}
        busy_sig = {e: getattr(dut, f"{e}_busy") for e in ENGINES}
        error_sig = {e: getattr(dut, f"{e}_error") for e in ENGINES}
        ax = {name: getattr(dut, f"m_axi__{name}") for name in (
            "arvalid", "arready", "araddr", "arlen", "rvalid", "rready", "rresp",
            "awvalid", "awready", "awaddr", "awlen", "wvalid", "wready", "wlast", "wstrb", "wdata",
            "bvalid", "bready", "bresp")}
        limit = t0 + scenario["cycle_limit"]
        quiet_since = None
        r_offered = None                     # the cycle the waiting R beat was first offered
        held = {channel: None for channel in HELD_FIELDS}   # payloads offered, not yet taken
        offered = {e: False for e in ENGINES}       # valid as driven
        on_payload = {e: None for e in ENGINES}     # the instruction on the payload
        for e in ENGINES:
            valid[e].value = 0
        now = t0 - 1
        while True:
            now += 1
            for e in ENGINES:
                offer = False
                if head[e] < len(queues[e]):
                    i = queues[e][head[e]]
                    ins = program[i]
                    earliest = (t0 if prev_start[e] is None else prev_start[e] + 1) + ins["gap"]
                    dep = ins["dep"]
                    offer = now >= earliest and (dep < 0 or (retire[dep] is not None
                                                             and retire[dep] < now))
                    if offer and on_payload[e] != i:
                        payload[e].value = int(ins["word"], 16)
                        on_payload[e] = i
                if offer != offered[e]:
                    valid[e].value = int(offer)
                offered[e] = offer
            await ReadOnly()
            moved = False
            for e in ENGINES:
                if offered[e] and int(ready[e].value):
                    i = queues[e][head[e]]
                    start[i] = now
                    prev_start[e] = now
                    head[e] += 1
                    moved = True
                if int(retire_sig[e].value):
                    assert retired[e] < head[e], \
                        f"{e}: retire pulse without an instruction in flight"
                    retire[queues[e][retired[e]]] = now
                    retired[e] += 1
                    moved = True
                log["busy"][e] += int(busy_sig[e].value)
                if log["error_rise"][e] is None and int(error_sig[e].value):
                    log["error_rise"][e] = now
            for channel, fields in HELD_FIELDS.items():
                if not int(ax[f"{channel}valid"].value):
                    assert held[channel] is None, (
                        f"{scenario['name']}: {channel.upper()} withdrawn in cycle {now} before "
                        f"its handshake")
                    continue
                if held[channel] is not None:
                    values = tuple(int(ax[f].value) for f in fields)
                    assert values == held[channel], (
                        f"{scenario['name']}: {channel.upper()} changed in cycle {now} before "
                        f"its handshake")
                if int(ax[f"{channel}ready"].value):
                    held[channel] = None
                    log[channel].append([now] + [int(ax[f].value) for f in fields[:2]])
                    moved = True
                else:
                    held[channel] = tuple(int(ax[f].value) for f in fields)
                    log["held"][channel] += 1
            if int(ax["rvalid"].value):
                r_offered = now if r_offered is None else r_offered
                if int(ax["rready"].value):
                    log["r"].append([now, int(ax["rresp"].value), r_offered])
                    r_offered = None
                    moved = True
                else:
                    log["held"]["r"] += 1
            if int(ax["bvalid"].value) and int(ax["bready"].value):
                log["b"].append([now, int(ax["bresp"].value)])
                moved = True
            done = all(retired[e] == len(queues[e]) for e in ENGINES)
            if done and quiet_since is None:
                quiet_since = now
            elif quiet_since is not None:
                assert not moved, (f"scenario {scenario['name']}: a handshake or retire pulse in "
                                   f"cycle {now}, after the last retirement")
            await RisingEdge(dut.clk)
            if quiet_since is not None and now - quiet_since >= QUIET_CYCLES:
                break
            assert now < limit, (
                f"scenario {scenario['name']}: stopped; started {head}, retired {retired}")
        for e in ENGINES:
            valid[e].value = 0
        log.update({"t0": t0, "start": start, "retire": retire,
                    "last_retire": max(r for r in retire if r is not None)})
        return log

    async def dump(self, memories: list[list], per_cycle: int) -> dict[str, str]:
        """Every row of every memory through the backdoor ports (hex): ``bd_data`` in a
        cycle holds ``per_cycle`` rows of each memory from the row ``per_cycle bd_addr``
        set before the cycle's edge."""
        dut = self.dut
        steps = -(-max(d for _, d, _ in memories) // per_cycle)
        dut.bd_addr.value = 0
        await RisingEdge(dut.clk)
        words = []
        for step in range(steps):
            dut.bd_addr.value = min(step + 1, steps - 1)
            await ReadOnly()
            words.append(int(dut.bd_data.value))
            await RisingEdge(dut.clk)
        out = {}
        for index, (name, depth, lanes) in enumerate(memories):
            bits = 8 * lanes
            rows = [(w >> (bits * (index * per_cycle + k))) & ((1 << bits) - 1)
                    for w in words for k in range(per_cycle)]
            out[name] = b"".join(r.to_bytes(lanes, "little") for r in rows[:depth]).hex()
        return out


@cocotb.test()
async def dma_scenarios(dut):
    """Run every scenario pytest sent and write the logs and dumps to the results file."""
    vectors = load_vectors()
    tb = TB(dut, vectors)
    logging.getLogger(f"cocotb.{dut._name}.m_axi").setLevel(logging.WARNING)
    await tb.start()
    results = []
    for scenario in vectors["scenarios"]:
        t0 = await tb.reset(scenario)
        log = await tb.run_program(scenario, t0)
        if scenario["dump"]:
            log["memories"] = await tb.dump(vectors["memories"], vectors["backdoor_rows"])
            log["dram"] = tb.ram.read(vectors["dram_base"], len(scenario["dram"]) // 2).hex()
        results.append(log)
    tb.set_pauses(None)
    tb.inject_errors(None)
    Path(vectors["results"]).write_text(json.dumps(results))
