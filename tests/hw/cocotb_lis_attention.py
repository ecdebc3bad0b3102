"""cocotb tests of the generated LisAttention Verilog (driven by test_lis_attention.py).

Tiles (stationary v, streaming code rows with noise in the high nibbles for the stalled
run) and their sw.intops golden results come from pytest through ``load_vectors()``.  Port
payloads are flat: ``weights__payload`` is the ``8 N`` data bits, ``activations__payload``
``data | last << 8N``, ``results__payload`` ``data | last << 32N``.
"""
from __future__ import annotations

import cocotb

from cocotb_streams import StreamSink, StreamSource, StreamTB
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import load_vectors


class TB(StreamTB):
    """Clock, reset, weight and code-row sources with random gaps (the payloads carry noise
    meanwhile), and a result sink with random ready stalls."""

    INPUTS_HELD_LOW = ("weights__valid", "weights__payload", "activations__valid",
                       "activations__payload", "results__ready")

    def __init__(self, dut, lanes: int, seed: int):
        super().__init__(dut, seed)
        self.lanes = lanes
        self.weights = StreamSource(self, "weights", noise=lambda: self.rng.getrandbits(8 * lanes))
        self.activations = StreamSource(self, "activations",
                                        noise=lambda: self.rng.getrandbits(8 * lanes + 1))
        self.results = StreamSink(self, "results", decode=lambda word: (
            unpack_signed(word, 32, lanes), word >> (32 * lanes)))

    def weight_beats(self, tiles: list[dict]) -> list[int]:
        return [pack(row, 8) for tile in tiles for row in tile["v"]]

    def row_beats(self, tiles: list[dict]) -> list[int]:
        last_shift = 8 * self.lanes
        beats = []
        for tile in tiles:
            for i, row in enumerate(tile["rows"]):
                beats.append(pack(row, 8) | int(i == len(tile["rows"]) - 1) << last_shift)
        return beats

    async def run(self, tiles: list[dict], gap_probability: float, stall_probability: float,
                  timeout_cycles: int) -> list[tuple[list[int], int]]:
        self.weights.first_cycle = self.results.last_cycle = None
        count = sum(len(tile["rows"]) for tile in tiles)
        drivers = [self.weights.send(self.weight_beats(tiles), gap_probability),
                   self.activations.send(self.row_beats(tiles), gap_probability)]
        got = await self.collect(self.results, count, stall_probability, drivers,
                                 timeout_cycles, "the unit stopped producing results")
        await self.results.expect_silence(self.lanes + 8, "result beat beyond the last tile")
        return got


def check_tiles(got: list[tuple[list[int], int]], tiles: list[dict]) -> None:
    assert len(got) == sum(len(tile["rows"]) for tile in tiles)
    at = 0
    for k, tile in enumerate(tiles):
        m = len(tile["rows"])
        values = [g[0] for g in got[at:at + m]]
        lasts = [g[1] for g in got[at:at + m]]
        at += m
        assert values == tile["expected"], f"tile {k} (m={m}): got {values}, expected {tile['expected']}"
        assert lasts == [0] * (m - 1) + [1], f"tile {k}: last flags {lasts}"


async def run_batches(dut, batches: list[list[dict]], gap_probability: float,
                      stall_probability: float, timeout_cycles: int) -> list[int]:
    """Reset, then stream each batch of tiles back to back and compare every result; return
    each batch's cycles from first weight beat to last result."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], vectors["seed"])
    await tb.start()
    cycles = []
    for tiles in batches:
        got = await tb.run(tiles, gap_probability, stall_probability, timeout_cycles)
        check_tiles(got, tiles)
        cycles.append(tb.results.last_cycle - tb.weights.first_cycle + 1)
    return cycles


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Tiles of several lengths, every code against -128 and 127, random gaps and stalls."""
    await run_batches(dut, [load_vectors()["stalled"]], gap_probability=0.3,
                      stall_probability=0.4, timeout_cycles=3000)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Tiles back to back, never stalled: first weight beat to last result is
    lis_attention_timing's total."""
    runs = load_vectors()["timed"]
    measured = await run_batches(dut, [run["tiles"] for run in runs], gap_probability=0.0,
                                 stall_probability=0.0, timeout_cycles=1000)
    totals = [run["total_cycles"] for run in runs]
    assert measured == totals, f"measured {measured} cycles, lis_attention_timing gives {totals}"
