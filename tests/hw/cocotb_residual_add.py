"""cocotb tests of the generated ResidualAdd Verilog (driven by test_residual_add.py).

Jobs come from pytest through ``load_vectors()``: per-channel parameter writes, the tensor
config, packed ``a`` and ``b`` beats, the sw.intops.residual_add golden outputs and the
residual_add_timing latency.  The struct payloads of ``param_write`` and ``tensor_config``
are packed with the field offsets pytest read from the component.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from sim.cocotb_runner import load_vectors

CLOCK_NS = 10
#: Cycles after a job's last output in which no further output beat may appear.
QUIET_CYCLES = 6


def pack_fields(values: dict, fields: dict) -> int:
    word = 0
    for name, (offset, width) in fields.items():
        word |= (int(values[name]) & ((1 << width) - 1)) << offset
    return word


def unpack_signed(word: int, count: int, width: int = 8) -> list[int]:
    lanes = [(word >> (width * k)) & ((1 << width) - 1) for k in range(count)]
    return [v - (1 << width) if v >> (width - 1) else v for v in lanes]


class TB:
    """Clock, reset, parameter and tensor-config writers, two input drivers with independent
    random gaps and an output monitor with random ready stalls.  A handshake sampled before
    clock edge ``n + 1`` counts as cycle ``n``."""

    def __init__(self, dut, vectors: dict, seed: int):
        self.dut = dut
        self.lanes = vectors["lanes"]
        self.param_fields = vectors["param_fields"]
        self.tensor_fields = vectors["tensor_fields"]
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
        for port in ("a", "b", "param_write", "tensor_config"):
            getattr(dut, f"{port}__valid").value = 0
            getattr(dut, f"{port}__payload").value = 0
        dut.o__ready.value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def configure(self, job: dict) -> int:
        """Write the job's parameters and tensor config; return the parameter-write cycles
        (every write must be accepted at once)."""
        dut = self.dut
        cycles = 0
        for write in job["params"]:
            dut.param_write__valid.value = 1
            dut.param_write__payload.value = pack_fields(write, self.param_fields)
            await ReadOnly()
            assert int(dut.param_write__ready.value) == 1
            await RisingEdge(dut.clk)
            cycles += 1
        dut.param_write__valid.value = 0
        dut.tensor_config__valid.value = 1
        dut.tensor_config__payload.value = pack_fields(job["tensor"], self.tensor_fields)
        await RisingEdge(dut.clk)
        dut.tensor_config__valid.value = 0
        return cycles

    async def drive(self, port: str, beats: list[int], gap_probability: float) -> None:
        valid = getattr(self.dut, f"{port}__valid")
        payload = getattr(self.dut, f"{port}__payload")
        ready = getattr(self.dut, f"{port}__ready")
        sent = 0
        while sent < len(beats):
            offer = self.rng.random() >= gap_probability
            valid.value = int(offer)
            payload.value = beats[sent] if offer else self.rng.getrandbits(8 * self.lanes)
            await ReadOnly()
            taken = offer and int(ready.value) == 1
            if taken and sent == 0 and port == "a":
                self.first_in_cycle = self.edges
            await RisingEdge(self.dut.clk)
            sent += taken
        valid.value = 0

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

    async def run(self, job: dict, gap_probability: float, stall_probability: float,
                  timeout_cycles: int) -> list[int]:
        """Configure, stream the job's beats; return the output elements."""
        param_cycles = await self.configure(job)
        assert param_cycles == job["param_cycles"]
        self.first_in_cycle = self.last_out_cycle = None
        start = self.edges
        cocotb.start_soon(self.drive("a", job["a"], gap_probability))
        cocotb.start_soon(self.drive("b", job["b"], gap_probability))
        collecting = cocotb.start_soon(self.monitor(len(job["a"]), stall_probability))
        while not collecting.done():
            await RisingEdge(self.dut.clk)
            assert self.edges - start < timeout_cycles, "ResidualAdd stopped producing output"
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
    """Each job configured, then streamed with random gaps on a and b and output stalls."""
    vectors = load_vectors()
    tb = TB(dut, vectors, seed=1)
    await tb.start()
    for job in vectors["jobs"]:
        got = await tb.run(job, gap_probability=0.3, stall_probability=0.4,
                           timeout_cycles=50 * len(job["a"]) + 50)
        check(got, job["expected"])


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Beats back to back, never stalled: first input to last output == residual_add_timing."""
    vectors = load_vectors()
    tb = TB(dut, vectors, seed=2)
    await tb.start()
    for job in vectors["jobs"]:
        got = await tb.run(job, gap_probability=0.0, stall_probability=0.0,
                           timeout_cycles=10 * len(job["a"]) + 50)
        check(got, job["expected"])
        measured = tb.last_out_cycle - tb.first_in_cycle + 1
        assert measured == job["latency"], \
            f"measured {measured} cycles, residual_add_timing gives {job['latency']}"
