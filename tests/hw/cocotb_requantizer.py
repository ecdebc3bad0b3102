"""cocotb tests of the generated Requantizer Verilog (driven by test_requantizer.py).

Jobs (per-channel records, input beats and their sw.intops golden outputs) come from
pytest through ``load_vectors()``.  ``i__payload`` is flat:
``data | group << 32L | int16 << (32L + G) | per_tensor << (32L + G + 1)`` with ``G`` the
group index width; ``o__payload`` holds ``L`` 16-bit lanes.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from sim.cocotb_runner import load_vectors

CLOCK_NS = 10
PIPELINE_STAGES = 5


def pack(values, width: int) -> int:
    return sum((int(v) & ((1 << width) - 1)) << (width * k) for k, v in enumerate(values))


def unpack_signed(word: int, width: int, count: int) -> list[int]:
    lanes = [(word >> (width * k)) & ((1 << width) - 1) for k in range(count)]
    return [v - (1 << width) if v >> (width - 1) else v for v in lanes]


class TB:
    """Clock, reset, a record writer, a beat driver with random gaps and an output monitor
    with random ready stalls.

    Cycles are counted by a clock-edge counter; a handshake seen after edge ``n`` (while the
    signals settle for the next edge) is counted as cycle ``n``.
    """

    def __init__(self, dut, lanes: int, groups: int, group_bits: int, seed: int):
        self.dut = dut
        self.lanes = lanes
        self.groups = groups
        self.group_bits = group_bits
        self.rng = random.Random(seed)
        self.edges = 0
        self.first_in_cycle: int | None = None
        self.last_out_cycle: int | None = None

    async def count_edges(self) -> None:
        while True:
            await RisingEdge(self.dut.clk)
            self.edges += 1

    async def start(self) -> None:
        dut = self.dut
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        cocotb.start_soon(self.count_edges())
        dut.rst.value = 1
        dut.i__valid.value = 0
        dut.i__payload.value = 0
        dut.o__ready.value = 0
        dut.param__en.value = 0
        for name in ("group", "lane", "bias", "mult", "shift", "offset"):
            getattr(dut, f"param__{name}").value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def write_records(self, records: list[dict]) -> None:
        dut = self.dut
        for record in records:
            dut.param__en.value = 1
            dut.param__group.value = record["channel"] // self.lanes
            dut.param__lane.value = record["channel"] % self.lanes
            for name in ("bias", "mult", "shift", "offset"):
                getattr(dut, f"param__{name}").value = record[name]
            await RisingEdge(dut.clk)
        dut.param__en.value = 0

    def payload(self, beat: dict) -> int:
        base = 32 * self.lanes
        return (pack(beat["accs"], 32) | beat["group"] << base
                | beat["int16"] << (base + self.group_bits)
                | beat["per_tensor"] << (base + self.group_bits + 1))

    async def drive(self, beats: list[dict], gap_probability: float) -> None:
        dut = self.dut
        sent = 0
        while sent < len(beats):
            offer = self.rng.random() >= gap_probability
            dut.i__valid.value = int(offer)
            if offer:
                dut.i__payload.value = self.payload(beats[sent])
            else:
                dut.i__payload.value = self.payload({
                    "accs": [self.rng.getrandbits(32) for _ in range(self.lanes)],
                    "group": self.rng.randrange(self.groups),
                    "int16": self.rng.randint(0, 1), "per_tensor": self.rng.randint(0, 1)})
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
                got.append(unpack_signed(int(dut.o__payload.value), 16, self.lanes))
                self.last_out_cycle = self.edges
            await RisingEdge(dut.clk)
        dut.o__ready.value = 0
        return got

    async def run_job(self, job: dict, gap_probability: float, stall_probability: float,
                      timeout_cycles: int) -> list[list[int]]:
        """Write the job's records, then stream its beats; return the output beats."""
        await self.write_records(job["records"])
        self.first_in_cycle = self.last_out_cycle = None
        start = self.edges
        cocotb.start_soon(self.drive(job["beats"], gap_probability))
        collecting = cocotb.start_soon(self.monitor(len(job["beats"]), stall_probability))
        while not collecting.done():
            await RisingEdge(self.dut.clk)
            assert self.edges - start < timeout_cycles, "the requantizer stopped producing output"
        for _ in range(PIPELINE_STAGES + 3):
            await ReadOnly()
            assert int(self.dut.o__valid.value) == 0, "output beat beyond the last input beat"
            await RisingEdge(self.dut.clk)
        return collecting.result()


def check_job(got: list[list[int]], job: dict) -> None:
    assert len(got) == len(job["expected"])
    for b, (have, want) in enumerate(zip(got, job["expected"])):
        assert have == want, f"beat {b} ({job['beats'][b]}): got {have}, expected {want}"


def make_tb(dut) -> TB:
    vectors = load_vectors()
    return TB(dut, vectors["lanes"], vectors["groups"], vectors["group_bits"], vectors["seed"])


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Jobs with fresh records each, random input gaps and output stalls."""
    tb = make_tb(dut)
    await tb.start()
    for job in load_vectors()["stalled"]:
        got = await tb.run_job(job, gap_probability=0.3, stall_probability=0.4,
                               timeout_cycles=2000)
        check_job(got, job)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Rows back to back, never stalled: first input beat to last output = requant_timing total."""
    tb = make_tb(dut)
    await tb.start()
    for job in load_vectors()["timed"]:
        got = await tb.run_job(job, gap_probability=0.0, stall_probability=0.0,
                               timeout_cycles=500)
        check_job(got, job)
        measured = tb.last_out_cycle - tb.first_in_cycle + 1
        assert measured == job["total_cycles"], \
            f"measured {measured} cycles, requant_timing gives {job['total_cycles']}"
