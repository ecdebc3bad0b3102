"""cocotb tests of the generated ResidualAdd Verilog (driven by test_residual_add.py).

Jobs come from pytest through ``load_vectors()``: per-channel parameter writes, the tensor
config, packed ``a`` and ``b`` beats, the sw.intops.residual_add golden outputs and the
residual_add_timing latency.  The struct payloads of ``param_write`` and ``tensor_config``
are packed with the field offsets pytest read from the component.
"""
from __future__ import annotations

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from cocotb_streams import StreamSink, StreamSource, StreamTB, check_elements
from lane_packing import unpack_signed
from sim.cocotb_runner import load_vectors

#: Cycles after a job's last output in which no further output beat may appear.
QUIET_CYCLES = 6


def pack_fields(values: dict, fields: dict) -> int:
    word = 0
    for name, (offset, width) in fields.items():
        word |= (int(values[name]) & ((1 << width) - 1)) << offset
    return word


class TB(StreamTB):
    """Clock, reset, parameter and tensor-config writers, two input sources with independent
    random gaps and an output sink with random ready stalls."""

    INPUTS_HELD_LOW = tuple(f"{port}__{signal}"
                            for port in ("a", "b", "param_write", "tensor_config")
                            for signal in ("valid", "payload")) + ("o__ready",)

    def __init__(self, dut, vectors: dict, seed: int):
        super().__init__(dut, seed)
        lanes = self.lanes = vectors["lanes"]
        self.param_fields = vectors["param_fields"]
        self.tensor_fields = vectors["tensor_fields"]
        self.a = StreamSource(self, "a", noise=lambda: self.rng.getrandbits(8 * lanes))
        self.b = StreamSource(self, "b", noise=lambda: self.rng.getrandbits(8 * lanes))
        self.o = StreamSink(self, "o", decode=lambda word: unpack_signed(word, 8, lanes))

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

    async def run(self, job: dict, gap_probability: float, stall_probability: float,
                  timeout_cycles: int) -> list[int]:
        """Configure, stream the job's beats; return the output elements."""
        param_cycles = await self.configure(job)
        assert param_cycles == job["param_cycles"]
        self.a.first_cycle = self.o.last_cycle = None
        got = await self.collect(self.o, len(job["a"]), stall_probability,
                                 [self.a.send(job["a"], gap_probability),
                                  self.b.send(job["b"], gap_probability)],
                                 timeout_cycles, "ResidualAdd stopped producing output")
        await self.o.expect_silence(QUIET_CYCLES, "an output beat without an input beat")
        return [v for beat in got for v in beat]


async def run_jobs(dut, seed: int, gap_probability: float, stall_probability: float,
                   timeout_cycles_per_beat: int) -> list[int]:
    """Reset, then configure and stream each job and compare every output; return each
    job's cycles from first input to last output."""
    vectors = load_vectors()
    tb = TB(dut, vectors, seed)
    await tb.start()
    cycles = []
    for job in vectors["jobs"]:
        got = await tb.run(job, gap_probability, stall_probability,
                           timeout_cycles=timeout_cycles_per_beat * len(job["a"]) + 50)
        check_elements(got, job["expected"])
        cycles.append(tb.o.last_cycle - tb.a.first_cycle + 1)
    return cycles


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Each job configured, then streamed with random gaps on a and b and output stalls."""
    await run_jobs(dut, seed=1, gap_probability=0.3, stall_probability=0.4,
                   timeout_cycles_per_beat=50)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Beats back to back, never stalled: first input to last output == residual_add_timing."""
    measured = await run_jobs(dut, seed=2, gap_probability=0.0, stall_probability=0.0,
                              timeout_cycles_per_beat=10)
    latencies = [job["latency"] for job in load_vectors()["jobs"]]
    assert measured == latencies, \
        f"measured {measured} cycles, residual_add_timing gives {latencies}"
