"""cocotb tests of the generated PtfLayerNorm Verilog (driven by test_layernorm.py).

The vectors (rows, parameters and the sw.intops.ptf_layernorm golden outputs) come from
pytest through ``load_vectors()``.
"""
from __future__ import annotations

import cocotb
from cocotb.triggers import RisingEdge

from cocotb_streams import StreamSink, StreamSource, StreamTB
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import load_vectors


class TB(StreamTB):
    """Clock, reset, parameter loading, an input stream source and an output stream sink."""

    INPUTS_HELD_LOW = ("i__valid", "i__payload", "o__ready", "param__en")

    def __init__(self, dut, lanes: int, seed: int):
        super().__init__(dut, seed)
        self.lanes = lanes
        self.i = StreamSource(self, "i")
        self.o = StreamSink(self, "o", decode=lambda word: unpack_signed(word, 8, lanes))

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
        await RisingEdge(dut.clk)

    async def run_rows(self, tensor: dict, gap_probability: float, stall_probability: float,
                       timeout_cycles: int) -> list[list[int]]:
        lanes = self.lanes
        beats = [pack(row[b:b + lanes], 8) for row in tensor["rows"]
                 for b in range(0, tensor["channels"], lanes)]
        self.i.first_cycle = self.o.last_cycle = None
        return await self.collect(self.o, len(beats), stall_probability,
                                  [self.i.send(beats, gap_probability)], timeout_cycles,
                                  "LayerNorm stopped producing output")


def check_rows(got_beats: list[list[int]], tensor: dict) -> None:
    channels = tensor["channels"]
    flat = [v for beat in got_beats for v in beat]
    got_rows = [flat[r * channels:(r + 1) * channels] for r in range(len(tensor["rows"]))]
    assert len(flat) == channels * len(tensor["rows"])
    for r, (got, want) in enumerate(zip(got_rows, tensor["expected"])):
        assert got == want, f"row {r}: got {got}, expected {want}"


async def run_tensor(dut, vectors: dict, tensor: dict, gap_probability: float,
                     stall_probability: float) -> TB:
    """Reset, load ``tensor``, stream its rows and check every output; return the TB."""
    tb = TB(dut, vectors["lanes"], vectors["seed"])
    await tb.start()
    await tb.load(tensor)
    got = await tb.run_rows(tensor, gap_probability, stall_probability, timeout_cycles=5000)
    check_rows(got, tensor)
    return tb


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Rows with random valid gaps and ready stalls: every output integer matches."""
    vectors = load_vectors()
    await run_tensor(dut, vectors, vectors["stalled"], gap_probability=0.3,
                     stall_probability=0.5)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Back-to-back rows, never stalled: first input to last output = layernorm_timing."""
    vectors = load_vectors()
    tb = await run_tensor(dut, vectors, vectors["timed"], gap_probability=0.0,
                          stall_probability=0.0)
    measured = tb.o.last_cycle - tb.i.first_cycle
    assert measured == vectors["timed_total_cycles"], \
        f"measured {measured} cycles, layernorm_timing gives {vectors['timed_total_cycles']}"
