"""cocotb tests of the generated SystolicArray Verilog (driven by test_systolic_array.py).

Tiles (mode, stationary weights, streaming rows) and their sw.intops golden results come
from pytest through ``load_vectors()``.  Port payloads are flat: ``weights__payload`` is
``data | mode << 8C``, ``activations__payload`` ``data | last << 8R``, ``results__payload``
``data | last << 32C``.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from sim.cocotb_runner import load_vectors

CLOCK_NS = 10
LIS = 2


def pack(values, width: int) -> int:
    return sum((int(v) & ((1 << width) - 1)) << (width * k) for k, v in enumerate(values))


def unpack_signed(word: int, width: int, count: int) -> list[int]:
    lanes = [(word >> (width * k)) & ((1 << width) - 1) for k in range(count)]
    return [v - (1 << width) if v >> (width - 1) else v for v in lanes]


class TB:
    """Clock, reset, weight and streaming-row drivers with random gaps, and a result monitor
    with random ready stalls.

    Cycles are counted by a clock-edge counter; a handshake seen after edge ``n`` (while the
    signals settle for the next edge) is counted as cycle ``n``.
    """

    def __init__(self, dut, rows: int, cols: int, seed: int):
        self.dut = dut
        self.rows = rows
        self.cols = cols
        self.rng = random.Random(seed)
        self.edges = 0
        self.first_weight_cycle: int | None = None
        self.last_result_cycle: int | None = None

    async def count_edges(self) -> None:
        while True:
            await RisingEdge(self.dut.clk)
            self.edges += 1

    async def start(self) -> None:
        dut = self.dut
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        cocotb.start_soon(self.count_edges())
        dut.rst.value = 1
        dut.weights__valid.value = 0
        dut.weights__payload.value = 0
        dut.activations__valid.value = 0
        dut.activations__payload.value = 0
        dut.results__ready.value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def offer(self, valid, payload, ready, width: int, beats: list[int],
                    gap_probability: float, on_first=None) -> None:
        """Offer ``beats`` on one input stream, one per handshake, with random gaps (during
        which the ``width``-bit payload carries noise)."""
        sent = 0
        while sent < len(beats):
            offer = self.rng.random() >= gap_probability
            valid.value = int(offer)
            payload.value = beats[sent] if offer else self.rng.getrandbits(width)
            await ReadOnly()
            taken = offer and int(ready.value) == 1
            if taken and sent == 0 and on_first is not None:
                on_first()
            await RisingEdge(self.dut.clk)
            sent += taken
        valid.value = 0

    def weight_beats(self, tiles: list[dict]) -> list[int]:
        mode_shift = 8 * self.cols
        return [pack(row, 8) | tile["mode"] << mode_shift
                for tile in tiles for row in tile["weights"]]

    def row_beats(self, tiles: list[dict]) -> list[int]:
        last_shift = 8 * self.rows
        beats = []
        for tile in tiles:
            for i, row in enumerate(tile["rows"]):
                if tile["mode"] == LIS:
                    # The upper nibble of a code byte is ignored: fill it with noise.
                    row = [code | self.rng.randint(0, 15) << 4 for code in row]
                beats.append(pack(row, 8) | int(i == len(tile["rows"]) - 1) << last_shift)
        return beats

    async def monitor(self, count: int, stall_probability: float) -> list[tuple[list[int], int]]:
        """Take ``count`` result beats, holding ``results__ready`` low with the given probability."""
        dut = self.dut
        got = []
        while len(got) < count:
            ready = self.rng.random() >= stall_probability
            dut.results__ready.value = int(ready)
            await ReadOnly()
            if ready and int(dut.results__valid.value) == 1:
                word = int(dut.results__payload.value)
                got.append((unpack_signed(word, 32, self.cols), word >> (32 * self.cols)))
                self.last_result_cycle = self.edges
            await RisingEdge(dut.clk)
        dut.results__ready.value = 0
        return got

    def mark_first_weight(self) -> None:
        if self.first_weight_cycle is None:
            self.first_weight_cycle = self.edges

    async def run(self, tiles: list[dict], gap_probability: float, stall_probability: float,
                  timeout_cycles: int) -> list[tuple[list[int], int]]:
        dut = self.dut
        self.first_weight_cycle = self.last_result_cycle = None
        count = sum(len(tile["rows"]) for tile in tiles)
        start = self.edges
        cocotb.start_soon(self.offer(dut.weights__valid, dut.weights__payload, dut.weights__ready,
                                     8 * self.cols + 2, self.weight_beats(tiles), gap_probability,
                                     on_first=self.mark_first_weight))
        cocotb.start_soon(self.offer(dut.activations__valid, dut.activations__payload,
                                     dut.activations__ready, 8 * self.rows + 1,
                                     self.row_beats(tiles),
                                     gap_probability))
        collecting = cocotb.start_soon(self.monitor(count, stall_probability))
        while not collecting.done():
            await RisingEdge(dut.clk)
            assert self.edges - start < timeout_cycles, "the array stopped producing results"
        for _ in range(self.rows + self.cols + 4):
            await ReadOnly()
            assert int(dut.results__valid.value) == 0, "result beat beyond the last tile"
            await RisingEdge(dut.clk)
        return collecting.result()


def check_tiles(got: list[tuple[list[int], int]], tiles: list[dict]) -> None:
    assert len(got) == sum(len(tile["rows"]) for tile in tiles)
    at = 0
    for k, tile in enumerate(tiles):
        m = len(tile["rows"])
        values = [g[0] for g in got[at:at + m]]
        lasts = [g[1] for g in got[at:at + m]]
        at += m
        assert values == tile["expected"], (f"tile {k} (mode {tile['mode']}, m={m}): got {values}, "
                                            f"expected {tile['expected']}")
        assert lasts == [0] * (m - 1) + [1], f"tile {k}: last flags {lasts}"


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Tiles of every mode and several lengths with random input gaps and output stalls."""
    vectors = load_vectors()
    tb = TB(dut, vectors["rows"], vectors["cols"], vectors["seed"])
    await tb.start()
    tiles = vectors["stalled"]
    got = await tb.run(tiles, gap_probability=0.3, stall_probability=0.4, timeout_cycles=3000)
    check_tiles(got, tiles)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Tiles back to back, never stalled: first weight beat to last result = matmul_timing total."""
    vectors = load_vectors()
    tb = TB(dut, vectors["rows"], vectors["cols"], vectors["seed"])
    await tb.start()
    for run in vectors["timed"]:
        got = await tb.run(run["tiles"], gap_probability=0.0, stall_probability=0.0,
                           timeout_cycles=1000)
        check_tiles(got, run["tiles"])
        measured = tb.last_result_cycle - tb.first_weight_cycle + 1
        assert measured == run["total_cycles"], \
            f"measured {measured} cycles, matmul_timing gives {run['total_cycles']}"
