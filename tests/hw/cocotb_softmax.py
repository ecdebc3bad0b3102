"""cocotb tests of the generated LisSoftmax Verilog (driven by test_softmax.py).

The vectors (rows, their run-time parameters and the sw.intops golden outputs, padding
lanes included) come from pytest through ``load_vectors()``.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from sim.cocotb_runner import load_vectors

CLOCK_NS = 10


def pack_beat(values) -> int:
    return sum((int(v) & 0xFFFF) << (16 * lane) for lane, v in enumerate(values))


def unpack_beat(word: int, lanes: int) -> list[int]:
    return [(word >> (8 * lane)) & 0xFF for lane in range(lanes)]


class TB:
    """Clock, reset, a row driver (scores and per-row registers) and an output monitor.

    Cycles are counted by a clock-edge counter; a handshake seen after edge ``n`` (while
    the signals settle for the next edge) is counted as cycle ``n``.
    """

    def __init__(self, dut, lanes: int, seed: int):
        self.dut = dut
        self.lanes = lanes
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
        for name in ("length", "frac_bits", "b_int", "c_int", "mode"):
            getattr(dut, name).value = 0
        await ClockCycles(dut.clk, 3)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    def beats_of(self, row: dict) -> list[int]:
        scores = list(row["scores"])
        padding = -len(scores) % self.lanes
        # Padding lanes carry garbage the unit must ignore.
        scores += [self.rng.randint(-32768, 32767) for _ in range(padding)]
        return [pack_beat(scores[k:k + self.lanes]) for k in range(0, len(scores), self.lanes)]

    async def drive(self, rows: list[dict], gap_probability: float) -> None:
        """Offer every row's beats on ``i``; the registers are set with each first beat."""
        dut = self.dut
        for row in rows:
            beats = self.beats_of(row)
            sent = 0
            while sent < len(beats):
                offer = self.rng.random() >= gap_probability
                dut.i__valid.value = int(offer)
                dut.i__payload.value = beats[sent] if offer else 0
                if sent == 0:
                    for name in ("length", "frac_bits", "b_int", "c_int", "mode"):
                        getattr(dut, name).value = row[name]
                else:
                    # Sampled with the first beat only: anything may follow.
                    dut.length.value = self.rng.randint(1, len(row["scores"]))
                    dut.frac_bits.value = self.rng.randint(0, 7)
                    dut.b_int.value = self.rng.randint(0, 0xFFFF)
                    dut.c_int.value = self.rng.randint(0, 0xFFFF)
                    dut.mode.value = self.rng.randint(0, 1)
                await ReadOnly()
                taken = offer and int(dut.i__ready.value) == 1
                if taken and self.first_in_cycle is None:
                    self.first_in_cycle = self.edges
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
                self.last_out_cycle = self.edges
            await RisingEdge(dut.clk)
        dut.o__ready.value = 0
        return got

    async def run_rows(self, rows: list[dict], gap_probability: float,
                       stall_probability: float, timeout_cycles: int) -> list[list[int]]:
        self.first_in_cycle = self.last_out_cycle = None
        count = sum(len(row["expected"]) // self.lanes for row in rows)
        start = self.edges
        cocotb.start_soon(self.drive(rows, gap_probability))
        collecting = cocotb.start_soon(self.monitor(count, stall_probability))
        while not collecting.done():
            await RisingEdge(self.dut.clk)
            assert self.edges - start < timeout_cycles, "the softmax stopped producing output"
        # Nothing beyond the rows given.
        for _ in range(8):
            await ReadOnly()
            assert int(self.dut.o__valid.value) == 0, "output beat beyond the last row"
            await RisingEdge(self.dut.clk)
        return collecting.result()


def check_rows(got_beats: list[list[int]], rows: list[dict]) -> None:
    flat = [v for beat in got_beats for v in beat]
    assert len(flat) == sum(len(row["expected"]) for row in rows)
    at = 0
    for r, row in enumerate(rows):
        got = flat[at:at + len(row["expected"])]
        at += len(row["expected"])
        assert got == row["expected"], (f"row {r} (N={len(row['scores'])}, mode={row['mode']}): "
                                        f"got {got}, expected {row['expected']}")


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Rows of several lengths and both modes with random valid gaps and ready stalls."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], vectors["seed"])
    await tb.start()
    rows = vectors["stalled"]
    got = await tb.run_rows(rows, gap_probability=0.3, stall_probability=0.5,
                            timeout_cycles=20000)
    check_rows(got, rows)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Back-to-back rows, never stalled: first input to last output = softmax_timing total."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], vectors["seed"])
    await tb.start()
    for run in vectors["timed"]:
        got = await tb.run_rows(run["rows"], gap_probability=0.0, stall_probability=0.0,
                                timeout_cycles=20000)
        check_rows(got, run["rows"])
        measured = tb.last_out_cycle - tb.first_in_cycle + 1
        assert measured == run["total_cycles"], \
            f"measured {measured} cycles, softmax_timing gives {run['total_cycles']}"
