"""cocotb tests of the generated GeluLut Verilog (driven by test_gelu.py).

Jobs come from pytest through ``load_vectors()``: a table, the packed input elements, the
sw.intops.gelu_lut golden outputs and the gelu_timing latency.  ``table_write__payload`` is
``addr | data << 8``; ``i__payload`` and ``o__payload`` hold ``L`` int8 lanes.
"""
from __future__ import annotations

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from cocotb_streams import StreamSink, StreamSource, StreamTB, check_elements
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import load_vectors

#: Output beats that must stay absent after a job's last one.
QUIET_CYCLES = 4


class TB(StreamTB):
    """Clock, reset, a table writer, an input source with random gaps and an output sink
    with random ready stalls."""

    INPUTS_HELD_LOW = ("i__valid", "i__payload", "o__ready", "table_write__valid",
                       "table_write__payload")

    def __init__(self, dut, lanes: int, seed: int):
        super().__init__(dut, seed)
        self.lanes = lanes
        self.i = StreamSource(self, "i", noise=lambda: self.rng.getrandbits(8 * lanes))
        self.o = StreamSink(self, "o", decode=lambda word: unpack_signed(word, 8, lanes))

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

    async def run(self, xs: list[int], gap_probability: float, stall_probability: float,
                  timeout_cycles: int) -> list[int]:
        """Stream ``xs`` (a multiple of ``L`` elements); return the output elements."""
        beats = [pack(xs[k:k + self.lanes], 8) for k in range(0, len(xs), self.lanes)]
        self.i.first_cycle = self.o.last_cycle = None
        got = await self.collect(self.o, len(beats), stall_probability,
                                 [self.i.send(beats, gap_probability)], timeout_cycles,
                                 "GeluLut stopped producing output")
        await self.o.expect_silence(QUIET_CYCLES, "an output beat without an input beat")
        return [v for beat in got for v in beat]


async def run_jobs(dut, seed: int, gap_probability: float, stall_probability: float,
                   timeout_cycles_per_element: int) -> list[int]:
    """Reset, then for each job load its table (in ``load_cycles``), stream its elements and
    compare every output; return each job's cycles from first input to last output."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], seed)
    await tb.start()
    cycles = []
    for job in vectors["jobs"]:
        assert await tb.load_table(job["table"]) == job["load_cycles"]
        got = await tb.run(job["xs"], gap_probability, stall_probability,
                           timeout_cycles=timeout_cycles_per_element * len(job["xs"]))
        check_elements(got, job["expected"])
        cycles.append(tb.o.last_cycle - tb.i.first_cycle + 1)
    return cycles


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Each job's table loaded, its elements streamed with random input gaps and output stalls."""
    await run_jobs(dut, seed=1, gap_probability=0.3, stall_probability=0.4,
                   timeout_cycles_per_element=50)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Beats back to back, never stalled: first input to last output == gelu_timing latency."""
    measured = await run_jobs(dut, seed=2, gap_probability=0.0, stall_probability=0.0,
                              timeout_cycles_per_element=10)
    latencies = [job["latency"] for job in load_vectors()["jobs"]]
    assert measured == latencies, f"measured {measured} cycles, gelu_timing gives {latencies}"
