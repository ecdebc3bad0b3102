"""cocotb tests of the generated PtfLayerNorm Verilog (driven by test_layernorm.py).

The vectors (rows, parameters and the sw.intops.ptf_layernorm golden outputs) come from
pytest through ``load_vectors()``.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotb.utils import get_sim_time

from sim.cocotb_runner import load_vectors

CLOCK_NS = 10


def pack_beat(values) -> int:
    return sum((int(v) & 0xFF) << (8 * lane) for lane, v in enumerate(values))


def unpack_beat(word: int, lanes: int) -> list[int]:
    out = []
    for lane in range(lanes):
        byte = (word >> (8 * lane)) & 0xFF
        out.append(byte - 256 if byte & 0x80 else byte)
    return out


class TB:
    """Clock, reset, parameter loading, an input stream driver and an output stream monitor."""

    def __init__(self, dut, lanes: int, seed: int):
        self.dut = dut
        self.lanes = lanes
        self.rng = random.Random(seed)
        self.first_in_cycle: int | None = None
        self.last_out_cycle: int | None = None

    def cycle(self) -> int:
        return int(get_sim_time("ns")) // CLOCK_NS

    async def start(self) -> None:
        dut = self.dut
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        dut.rst.value = 1
        dut.i__valid.value = 0
        dut.i__payload.value = 0
        dut.o__ready.value = 0
        dut.param__en.value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def load(self, tensor: dict) -> None:
        """Write the per-channel parameters and set the per-tensor registers."""
        dut = self.dut
        for c in range(tensor["channels"]):
            dut.param__en.value = 1
            dut.param__channel.value = c
            dut.param__alpha.value = tensor["alpha"][c]
            dut.param__mult.value = tensor["mult"][c]
            dut.param__shift.value = tensor["shift"][c]
            dut.param__offset.value = tensor["offset"][c]
            await RisingEdge(dut.clk)
        dut.param__en.value = 0
        dut.channels.value = tensor["channels"]
        dut.zp_in.value = tensor["zp_in"]
        dut.mean_mult.value = tensor["mean_mult"]
        await RisingEdge(dut.clk)

    async def drive(self, beats: list[int], gap_probability: float) -> None:
        """Offer ``beats`` on ``i``, leaving ``i.valid`` low with the given probability."""
        dut = self.dut
        sent = 0
        while sent < len(beats):
            offer = self.rng.random() >= gap_probability
            dut.i__valid.value = int(offer)
            dut.i__payload.value = beats[sent] if offer else 0
            await ReadOnly()
            taken = offer and int(dut.i__ready.value) == 1
            if taken and self.first_in_cycle is None:
                self.first_in_cycle = self.cycle()
            await RisingEdge(dut.clk)
            sent += taken
        dut.i__valid.value = 0

    async def monitor(self, count: int, stall_probability: float) -> list[list[int]]:
        """Take ``count`` beats from ``o``, holding ``o.ready`` low with the given probability."""
        dut = self.dut
        got = []
        while len(got) < count:
            ready = self.rng.random() >= stall_probability
            dut.o__ready.value = int(ready)
            await ReadOnly()
            if ready and int(dut.o__valid.value) == 1:
                got.append(unpack_beat(int(dut.o__payload.value), self.lanes))
                self.last_out_cycle = self.cycle()
            await RisingEdge(dut.clk)
        dut.o__ready.value = 0
        return got

    async def run_rows(self, tensor: dict, gap_probability: float, stall_probability: float,
                       timeout_cycles: int) -> list[list[int]]:
        lanes = self.lanes
        beats = [pack_beat(row[b:b + lanes]) for row in tensor["rows"]
                 for b in range(0, tensor["channels"], lanes)]
        self.first_in_cycle = self.last_out_cycle = None
        start = self.cycle()
        cocotb.start_soon(self.drive(beats, gap_probability))
        collecting = cocotb.start_soon(self.monitor(len(beats), stall_probability))
        while not collecting.done():
            await RisingEdge(self.dut.clk)
            assert self.cycle() - start < timeout_cycles, "LayerNorm stopped producing output"
        return collecting.result()


def check_rows(got_beats: list[list[int]], tensor: dict) -> None:
    channels = tensor["channels"]
    flat = [v for beat in got_beats for v in beat]
    got_rows = [flat[r * channels:(r + 1) * channels] for r in range(len(tensor["rows"]))]
    assert len(flat) == channels * len(tensor["rows"])
    for r, (got, want) in enumerate(zip(got_rows, tensor["expected"])):
        assert got == want, f"row {r}: got {got}, expected {want}"


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Rows with random valid gaps and ready stalls: every output integer matches."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], vectors["seed"])
    await tb.start()
    tensor = vectors["stalled"]
    await tb.load(tensor)
    got = await tb.run_rows(tensor, gap_probability=0.3, stall_probability=0.5,
                            timeout_cycles=5000)
    check_rows(got, tensor)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Back-to-back rows, never stalled: first input to last output = layernorm_timing."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], vectors["seed"])
    await tb.start()
    tensor = vectors["timed"]
    await tb.load(tensor)
    got = await tb.run_rows(tensor, gap_probability=0.0, stall_probability=0.0,
                            timeout_cycles=5000)
    check_rows(got, tensor)
    measured = tb.last_out_cycle - tb.first_in_cycle
    assert measured == vectors["timed_total_cycles"], \
        f"measured {measured} cycles, layernorm_timing gives {vectors['timed_total_cycles']}"
