"""cocotb tests of the generated Requantizer Verilog (driven by test_requantizer.py).

Jobs (per-channel records, input beats and their sw.intops golden outputs) come from
pytest through ``load_vectors()``.  ``i__payload`` is flat:
``data | group << 32L | int16 << (32L + G) | per_tensor << (32L + G + 1)`` with ``G`` the
group index width; ``o__payload`` holds ``L`` 16-bit lanes.
"""
from __future__ import annotations

import cocotb
from cocotb.triggers import RisingEdge

from cocotb_streams import StreamSink, StreamSource, StreamTB
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import load_vectors

PIPELINE_STAGES = 8


class TB(StreamTB):
    """Clock, reset, a record writer, a beat source with random gaps and an output sink
    with random ready stalls."""

    INPUTS_HELD_LOW = ("i__valid", "i__payload", "o__ready", "param__en", "param__group",
                       "param__lane", "param__bias", "param__mult", "param__shift",
                       "param__offset")

    def __init__(self, dut, lanes: int, groups: int, group_bits: int, seed: int):
        super().__init__(dut, seed)
        self.lanes = lanes
        self.groups = groups
        self.group_bits = group_bits
        self.i = StreamSource(self, "i", noise=self.noise_payload)
        self.o = StreamSink(self, "o", decode=lambda word: unpack_signed(word, 16, lanes))

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

    def noise_payload(self) -> int:
        """A random payload for the cycles without a valid beat."""
        return self.payload({
            "accs": [self.rng.getrandbits(32) for _ in range(self.lanes)],
            "group": self.rng.randrange(self.groups),
            "int16": self.rng.randint(0, 1), "per_tensor": self.rng.randint(0, 1)})

    async def run_job(self, job: dict, gap_probability: float, stall_probability: float,
                      timeout_cycles: int) -> list[list[int]]:
        """Write the job's records, then stream its beats; return the output beats."""
        await self.write_records(job["records"])
        self.i.first_cycle = self.o.last_cycle = None
        beats = [self.payload(beat) for beat in job["beats"]]
        got = await self.collect(self.o, len(beats), stall_probability,
                                 [self.i.send(beats, gap_probability)], timeout_cycles,
                                 "the requantizer stopped producing output")
        await self.o.expect_silence(PIPELINE_STAGES + 3, "output beat beyond the last input beat")
        return got


def check_job(got: list[list[int]], job: dict) -> None:
    assert len(got) == len(job["expected"])
    for b, (have, want) in enumerate(zip(got, job["expected"])):
        assert have == want, f"beat {b} ({job['beats'][b]}): got {have}, expected {want}"


async def run_jobs(dut, key: str, gap_probability: float, stall_probability: float,
                   timeout_cycles: int) -> list[int]:
    """Reset, then write the records of each job of ``vectors[key]``, stream its beats and
    compare every output; return each job's cycles from first input to last output."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], vectors["groups"], vectors["group_bits"], vectors["seed"])
    await tb.start()
    cycles = []
    for job in vectors[key]:
        got = await tb.run_job(job, gap_probability, stall_probability, timeout_cycles)
        check_job(got, job)
        cycles.append(tb.o.last_cycle - tb.i.first_cycle + 1)
    return cycles


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Jobs with fresh records each, random input gaps and output stalls."""
    await run_jobs(dut, "stalled", gap_probability=0.3, stall_probability=0.4,
                   timeout_cycles=2000)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Rows back to back, never stalled: first input beat to last output = requant_timing total."""
    measured = await run_jobs(dut, "timed", gap_probability=0.0, stall_probability=0.0,
                              timeout_cycles=500)
    totals = [job["total_cycles"] for job in load_vectors()["timed"]]
    assert measured == totals, f"measured {measured} cycles, requant_timing gives {totals}"
