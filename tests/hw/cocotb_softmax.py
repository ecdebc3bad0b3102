"""cocotb tests of the generated LisSoftmax Verilog (driven by test_softmax.py).

The vectors (rows, their run-time parameters and the sw.intops golden outputs, padding
lanes included) come from pytest through ``load_vectors()``.
"""
from __future__ import annotations

from collections.abc import Callable

import cocotb

from cocotb_streams import StreamSink, StreamSource, StreamTB
from lane_packing import pack, unpack
from sim.cocotb_runner import load_vectors

#: The per-row registers, sampled with a row's first beat.
ROW_REGISTERS = ("length", "frac_bits", "b_int", "c_int", "mode")


class TB(StreamTB):
    """Clock, reset, a row source (scores and per-row registers) and an output sink."""

    INPUTS_HELD_LOW = ("i__valid", "i__payload", "o__ready") + ROW_REGISTERS

    def __init__(self, dut, lanes: int, seed: int):
        super().__init__(dut, seed)
        self.lanes = lanes
        self.i = StreamSource(self, "i")
        self.o = StreamSink(self, "o", decode=lambda word: unpack(word, 8, lanes))

    def beats_of(self, row: dict) -> list[int]:
        scores = list(row["scores"])
        padding = -len(scores) % self.lanes
        # Padding lanes carry garbage the unit must ignore.
        scores += [self.rng.randint(-32768, 32767) for _ in range(padding)]
        return [pack(scores[k:k + self.lanes], 16) for k in range(0, len(scores), self.lanes)]

    def row_registers(self, row: dict) -> Callable[[int], None]:
        """Sideband of a row's beats: its registers with the first beat, noise after it."""
        dut = self.dut

        def drive(beat: int) -> None:
            if beat == 0:
                for name in ROW_REGISTERS:
                    getattr(dut, name).value = row[name]
            else:
                # Sampled with the first beat only: anything may follow.
                dut.length.value = self.rng.randint(1, len(row["scores"]))
                dut.frac_bits.value = self.rng.randint(0, 7)
                dut.b_int.value = self.rng.randint(0, 0xFFFF)
                dut.c_int.value = self.rng.randint(0, 0xFFFF)
                dut.mode.value = self.rng.randint(0, 1)
        return drive

    async def drive(self, rows: list[dict], gap_probability: float) -> None:
        """Offer every row's beats on ``i``; the registers are set with each first beat."""
        for row in rows:
            await self.i.send(self.beats_of(row), gap_probability, self.row_registers(row))

    async def run_rows(self, rows: list[dict], gap_probability: float,
                       stall_probability: float, timeout_cycles: int) -> list[list[int]]:
        self.i.first_cycle = self.o.last_cycle = None
        count = sum(len(row["expected"]) // self.lanes for row in rows)
        got = await self.collect(self.o, count, stall_probability,
                                 [self.drive(rows, gap_probability)], timeout_cycles,
                                 "the softmax stopped producing output")
        # Nothing beyond the rows given.
        await self.o.expect_silence(8, "output beat beyond the last row")
        return got


def check_rows(got_beats: list[list[int]], rows: list[dict]) -> None:
    flat = [v for beat in got_beats for v in beat]
    assert len(flat) == sum(len(row["expected"]) for row in rows)
    at = 0
    for r, row in enumerate(rows):
        got = flat[at:at + len(row["expected"])]
        at += len(row["expected"])
        assert got == row["expected"], (f"row {r} (N={len(row['scores'])}, mode={row['mode']}): "
                                        f"got {got}, expected {row['expected']}")


async def run_batches(dut, batches: list[list[dict]], gap_probability: float,
                      stall_probability: float) -> list[int]:
    """Reset, then stream each batch of rows back to back and compare every output; return
    each batch's cycles from first input to last output."""
    vectors = load_vectors()
    tb = TB(dut, vectors["lanes"], vectors["seed"])
    await tb.start()
    cycles = []
    for rows in batches:
        got = await tb.run_rows(rows, gap_probability, stall_probability, timeout_cycles=20000)
        check_rows(got, rows)
        cycles.append(tb.o.last_cycle - tb.i.first_cycle + 1)
    return cycles


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Rows of several lengths and both modes with random valid gaps and ready stalls."""
    await run_batches(dut, [load_vectors()["stalled"]], gap_probability=0.3,
                      stall_probability=0.5)


@cocotb.test()
async def stall_free_cycle_count(dut):
    """Back-to-back rows, never stalled: first input to last output = softmax_timing total."""
    runs = load_vectors()["timed"]
    measured = await run_batches(dut, [run["rows"] for run in runs], gap_probability=0.0,
                                 stall_probability=0.0)
    totals = [run["total_cycles"] for run in runs]
    assert measured == totals, f"measured {measured} cycles, softmax_timing gives {totals}"
