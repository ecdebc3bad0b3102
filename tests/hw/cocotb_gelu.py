"""cocotb tests of the generated GeluLut Verilog (driven by test_gelu.py).

Jobs come from pytest through ``load_vectors()``: a table, the packed input elements, the
sw.intops.gelu_lut golden outputs and the gelu_timing latency.  ``table_write__payload`` is
``addr | data << 8``; ``i__payload`` and ``o__payload`` hold ``L`` int8 lanes.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from sim.cocotb_runner import load_vectors

CLOCK_NS = 10
#: Output beats that must stay absent after a job's last one.
QUIET_CYCLES = 4


def pack(values, width: int = 8) -> int:
    return sum((int(v) & ((1 << width) - 1)) << (width * k) for k, v in enumerate(values))


def unpack_signed(word: int, count: int, width: int = 8) -> list[int]:
    lanes = [(word >> (width * k)) & ((1 << width) - 1) for k in range(count)]
    return [v - (1 << width) if v >> (width - 1) else v for v in lanes]


class TB:
    """Clock, reset, a table writer, an input driver with random gaps and an output monitor
    with random ready stalls.  A handshake sampled before clock edge ``n + 1`` counts as
    cycle ``n``."""

    def __init__(self, dut, lanes: int, seed: int):
        self.dut = dut
        self.lanes = lanes
        self.rng = random.Random(seed)
        self.edges = 0
        self.first_in_cycle: int | None = None
        self.last_out_cycle: int | None = None

    async def _count_edges(self) -> None:
        while True:
            await RisingEdge(self.dut.clk)
            self.edges += 1

    async def start(self) -> None:
        dut = self.dut
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        cocotb.start_soon(self._count_edges())
        dut.rst.value = 1
        dut.i__valid.value = 0
        dut.i__payload.value = 0
        dut.o__ready.value = 0
        dut.table_write__valid.value = 0
        dut.table_write__payload.value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def load_table(self, table: list[int]) -> int:
        """Write all entries; return the cycles taken (every write must be accepted at once)."""
        dut = self.dut
        cycles = 0
        for addr, value in enumerate(table):
            dut.table_write__valid.value = 1
            dut.table_write__payload.value = addr | (value & 0xFF) << 8
            await ReadOnly()
            assert int(dut.table_write__ready.value) == 1
            await RisingEdge(dut.clk)
            cycles += 1
        dut.table_write__valid.value = 0
        return cycles

    async def drive(self, beats: list[int], gap_probability: float) -> None:
        dut = self.dut
        sent = 0
        while sent < len(beats):
            offer = self.rng.random() >= gap_probability
            dut.i__valid.value = int(offer)
            dut.i__payload.value = beats[sent] if offer else self.rng.getrandbits(8 * self.lanes)
            await ReadOnly()
            taken = offer and int(dut.i__ready.value) == 1
            if taken and self.first_in_cycle is None:
                self.first_in_cycle = self.edges
            await RisingEdge(dut.clk)
            sent += taken
        dut.i__valid.value = 0

    async def monitor(self, count: int, stall_probability: float) -> list[list[int]]:
        dut = self.dut
        got = []
        while len(got) < count:
            ready = self.rng.random() >= stall_probability
            dut.o__ready.value = int(ready)
            await ReadOnly()
            if ready and int(dut.o__valid.value) == 1:
                got.append(unpack_signed(int(dut.o__payload.value), self.lanes))
                self.last_out_cycle = self.edges
            await RisingEdge(dut.clk)
        dut.o__ready.value = 0
        return got

    async def run(self, xs: list[int], gap_probability: float, stall_probability: float,
                  timeout_cycles: int) -> list[int]:
        """Stream ``xs`` (a multiple of ``L`` elements); return the output elements."""
        beats = [pack(xs[k:k + self.lanes]) for k in range(0, len(xs), self.lanes)]
        self.first_in_cycle = self.last_out_cycle = None
        start = self.edges
        cocotb.start_soon(self.drive(beats, gap_probability))
        collecting = cocotb.start_soon(self.monitor(len(beats), stall_probability))
        while not collecting.done():
            await RisingEdge(self.dut.clk)
            assert self.edges - start < timeout_cycles, "GeluLut stopped producing output"
        for _ in range(QUIET_CYCLES):
            await ReadOnly()
            assert int(self.dut.o__valid.value) == 0, "an output beat without an input beat"
            await RisingEdge(self.dut.clk)
        return [v for beat in collecting.result() for v in beat]


def check(got: list[int], expected: list[int]) -> None:
    assert len(got) == len(expected)
    for k, (have, want) in enumerate(zip(got, expected)):
        assert have == want, f"element {k}: got {have}, expected {want}"


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Each job's table loaded, its elements streamed with random input gaps and output stalls."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], seed=1)
    await tb.start()
    for job in vectors["jobs"]:
        assert await tb.load_table(job["table"]) == job["load_cycles"]
        got = await tb.run(job["xs"], gap_probability=0.3, stall_probability=0.4,
                           timeout_cycles=50 * len(job["xs"]))
        check(got, job["expected"])


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Beats back to back, never stalled: first input to last output == gelu_timing latency."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], seed=2)
    await tb.start()
    for job in vectors["jobs"]:
        await tb.load_table(job["table"])
        got = await tb.run(job["xs"], gap_probability=0.0, stall_probability=0.0,
                           timeout_cycles=10 * len(job["xs"]))
        check(got, job["expected"])
        measured = tb.last_out_cycle - tb.first_in_cycle + 1
        assert measured == job["latency"], \
            f"measured {measured} cycles, gelu_timing gives {job['latency']}"
