"""cocotb tests of the generated IntegerSqrt Verilog (driven by test_integer_sqrt.py).

The radicands, their sw.intops.isqrt roots and the integer_sqrt_timing latency and
interval come from pytest through ``load_vectors()``.  ``i__payload`` is the radicand,
``o__payload`` the root.
"""
from __future__ import annotations

import cocotb

from cocotb_streams import StreamMonitor, StreamSink, StreamSource, StreamTB, check_elements
from sim.cocotb_runner import load_vectors


class TB(StreamTB):
    """Clock, reset, a radicand source with random gaps (the payload carrying noise in
    them), a root sink with random ready stalls, and monitors of both handshakes."""

    INPUTS_HELD_LOW = ("i__valid", "i__payload", "o__ready")

    def __init__(self, dut, width: int, seed: int):
        super().__init__(dut, seed)
        self.i = StreamSource(self, "i", noise=lambda: self.rng.getrandbits(width))
        self.o = StreamSink(self, "o", decode=int)
        self.accepted = StreamMonitor(self, "i")
        self.delivered = StreamMonitor(self, "o", check_held=True)

    async def start(self) -> None:
        await super().start()
        self.accepted.start()
        self.delivered.start()

    async def run(self, radicands: list[int], gap_probability: float,
                  stall_probability: float, latency: int) -> list[int]:
        """Stream ``radicands``; return the roots.  No root may follow the last one."""
        got = await self.collect(self.o, len(radicands), stall_probability,
                                 [self.i.send(radicands, gap_probability)],
                                 timeout_cycles=10 * latency * (len(radicands) + 1),
                                 stopped_message="IntegerSqrt stopped producing roots")
        await self.o.expect_silence(latency + 2, "a root without a radicand")
        return got


async def run_all(dut, seed: int, gap_probability: float, stall_probability: float) -> TB:
    """Reset, stream every radicand of the vectors and compare every root; return the TB."""
    vectors = load_vectors()
    tb = TB(dut, vectors["width"], seed)
    await tb.start()
    got = await tb.run(vectors["radicands"], gap_probability, stall_probability,
                       vectors["latency"])
    check_elements(got, vectors["expected"])
    assert len(tb.accepted.cycles) == len(tb.delivered.cycles) == len(got)
    return tb


@cocotb.test()
async def random_stalls_bit_exact(dut):
    """Random input gaps and output stalls: every root equals sw.intops.isqrt, and a root
    left waiting stays on the output unchanged until it is taken."""
    await run_all(dut, seed=load_vectors()["seed"], gap_probability=0.3, stall_probability=0.6)


@cocotb.test()
async def stall_free_latency_and_interval(dut):
    """Radicands back to back, roots always taken: every root appears ``latency`` cycles
    after its radicand was accepted, and radicands are accepted every ``interval`` cycles."""
    vectors = load_vectors()
    tb = await run_all(dut, seed=vectors["seed"] + 1, gap_probability=0.0,
                       stall_probability=0.0)
    accepted, delivered = tb.accepted.cycles, tb.delivered.cycles
    latencies = sorted({d - a for a, d in zip(accepted, delivered)})
    intervals = sorted({b - a for a, b in zip(accepted, accepted[1:])})
    assert latencies == [vectors["latency"]], \
        f"latencies {latencies}, integer_sqrt_timing gives {vectors['latency']}"
    assert intervals == [vectors["interval"]], \
        f"intervals {intervals}, integer_sqrt_timing gives {vectors['interval']}"
