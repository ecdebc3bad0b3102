"""cocotb tests of the generated IntegerDivider Verilog (driven by test_integer_divider.py).

The operand pairs, their quotients (Python ``//``, all ones for a zero divisor) and the
integer_divider_timing latency and interval come from pytest through ``load_vectors()``.
``i__payload`` packs ``dividend`` and ``divisor`` at the field offsets pytest read from the
component; ``o__payload`` is the quotient.
"""
from __future__ import annotations

import cocotb

from cocotb_streams import StreamMonitor, StreamSink, StreamSource, StreamTB, check_elements
from sim.cocotb_runner import load_vectors


def pack_fields(values: dict, fields: dict) -> int:
    word = 0
    for name, (offset, width) in fields.items():
        word |= (int(values[name]) & ((1 << width) - 1)) << offset
    return word


class TB(StreamTB):
    """Clock, reset, an operand source with random gaps (the payload carrying noise in
    them), a quotient sink with random ready stalls, and monitors of both handshakes."""

    INPUTS_HELD_LOW = ("i__valid", "i__payload", "o__ready")

    def __init__(self, dut, fields: dict, seed: int):
        super().__init__(dut, seed)
        payload_width = sum(width for _, width in fields.values())
        self.i = StreamSource(self, "i", noise=lambda: self.rng.getrandbits(payload_width))
        self.o = StreamSink(self, "o", decode=int)
        self.accepted = StreamMonitor(self, "i")
        self.delivered = StreamMonitor(self, "o", check_held=True)

    async def start(self) -> None:
        await super().start()
        self.accepted.start()
        self.delivered.start()

    async def run(self, operands: list[int], gap_probability: float,
                  stall_probability: float, latency: int) -> list[int]:
        """Stream the packed ``operands``; return the quotients.  No quotient may follow the
        last one."""
        got = await self.collect(self.o, len(operands), stall_probability,
                                 [self.i.send(operands, gap_probability)],
                                 timeout_cycles=10 * latency * (len(operands) + 1),
                                 stopped_message="IntegerDivider stopped producing quotients")
        await self.o.expect_silence(latency + 2, "a quotient without operands")
        return got


async def run_all(dut, seed: int, gap_probability: float, stall_probability: float) -> TB:
    """Reset, stream every operand pair of the vectors and compare every quotient; return
    the TB."""
    vectors = load_vectors()
    fields = vectors["fields"]
    tb = TB(dut, fields, seed)
    await tb.start()
    operands = [pack_fields({"dividend": a, "divisor": b}, fields) for a, b in vectors["pairs"]]
    got = await tb.run(operands, gap_probability, stall_probability, vectors["latency"])
    check_elements(got, vectors["expected"])
    assert len(tb.accepted.cycles) == len(tb.delivered.cycles) == len(got)
    return tb


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Random input gaps and output stalls: every quotient equals the golden one, and a
    quotient left waiting stays on the output unchanged until it is taken."""
    await run_all(dut, seed=load_vectors()["seed"], gap_probability=0.3, stall_probability=0.6)


@cocotb.test()
async def stall_free_latency_and_interval(dut):
    """Operands back to back, quotients always taken: every quotient appears ``latency``
    cycles after its operands were accepted, and operands are accepted every ``interval``
    cycles."""
    vectors = load_vectors()
    tb = await run_all(dut, seed=vectors["seed"] + 1, gap_probability=0.0,
                       stall_probability=0.0)
    accepted, delivered = tb.accepted.cycles, tb.delivered.cycles
    latencies = sorted({d - a for a, d in zip(accepted, delivered)})
    intervals = sorted({b - a for a, b in zip(accepted, accepted[1:])})
    assert latencies == [vectors["latency"]], \
        f"latencies {latencies}, integer_divider_timing gives {vectors['latency']}"
    assert intervals == [vectors["interval"]], \
        f"intervals {intervals}, integer_divider_timing gives {vectors['interval']}"
