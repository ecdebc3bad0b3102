"""Clock, reset and ready/valid stream models shared by the cocotb test modules.

A module's ``TB`` subclasses :class:`StreamTB` (clock, reset, a clock-edge counter and one
random generator) and owns :class:`StreamSource` / :class:`StreamSink` models of the
Amaranth stream ports (``<port>__valid``, ``<port>__payload``, ``<port>__ready``).  Cycles
are counted by the edge counter: a handshake seen after edge ``n`` (while the signals
settle for the next edge) counts as cycle ``n``.  Sources, sinks and the TB draw from the
TB's one generator, so a run is fixed by its seed.

Imported by name inside the simulator's Python process: ``tests/hw`` is on its path.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Coroutine, Iterable

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

CLOCK_NS = 10
#: Cycles ``rst`` is held high after the clock starts.
RESET_CYCLES = 3


class StreamTB:
    """Base of a module's ``TB``: clock, reset, edge counter, random generator.

    Subclasses list in ``INPUTS_HELD_LOW`` the top-level inputs (besides ``rst``) driven
    to 0 during reset.
    """

    INPUTS_HELD_LOW: tuple[str, ...] = ()

    def __init__(self, dut, seed: int):
        self.dut = dut
        self.rng = random.Random(seed)
        self.edges = 0

    async def _count_edges(self) -> None:
        while True:
            await RisingEdge(self.dut.clk)
            self.edges += 1

    async def start(self) -> None:
        """Start the clock and the edge counter; reset with ``INPUTS_HELD_LOW`` at 0."""
        dut = self.dut
        Clock(dut.clk, CLOCK_NS, unit="ns").start()
        cocotb.start_soon(self._count_edges())
        dut.rst.value = 1
        for name in self.INPUTS_HELD_LOW:
            getattr(dut, name).value = 0
        await ClockCycles(dut.clk, RESET_CYCLES)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def collect(self, sink: StreamSink, count: int, stall_probability: float,
                      drivers: Iterable[Coroutine], timeout_cycles: int,
                      stopped_message: str) -> list:
        """Start ``drivers``, then take ``count`` beats from ``sink``; fail with
        ``stopped_message`` unless they all arrive within ``timeout_cycles``."""
        start = self.edges
        for driver in drivers:
            cocotb.start_soon(driver)
        collecting = cocotb.start_soon(sink.receive(count, stall_probability))
        while not collecting.done():
            await RisingEdge(self.dut.clk)
            assert self.edges - start < timeout_cycles, stopped_message
        return collecting.result()


class StreamSource:
    """Offers beats on input stream ``port``, one per handshake, with random valid gaps.

    In a gap cycle ``valid`` is low and the payload carries ``noise()`` (0 by default).
    ``first_cycle`` is the cycle of the first accepted beat since it was last set to None.
    """

    def __init__(self, tb: StreamTB, port: str, noise: Callable[[], int] | None = None):
        self.tb = tb
        self.valid = getattr(tb.dut, f"{port}__valid")
        self.payload = getattr(tb.dut, f"{port}__payload")
        self.ready = getattr(tb.dut, f"{port}__ready")
        self.noise = noise if noise is not None else (lambda: 0)
        self.first_cycle: int | None = None

    async def send(self, beats: list[int], gap_probability: float,
                   sideband: Callable[[int], None] | None = None) -> None:
        """Offer ``beats``, leaving ``valid`` low with ``gap_probability`` in each cycle.

        ``sideband(k)``, if given, is called every cycle after valid and payload are set,
        ``k`` being the index of the beat not yet accepted.
        """
        rng = self.tb.rng
        sent = 0
        while sent < len(beats):
            offer = rng.random() >= gap_probability
            self.valid.value = int(offer)
            self.payload.value = beats[sent] if offer else self.noise()
            if sideband is not None:
                sideband(sent)
            await ReadOnly()
            taken = offer and int(self.ready.value) == 1
            if taken and self.first_cycle is None:
                self.first_cycle = self.tb.edges
            await RisingEdge(self.tb.dut.clk)
            sent += taken
        self.valid.value = 0


class StreamSink:
    """Takes beats from output stream ``port`` with random ready stalls.

    ``decode`` turns a payload word into the value recorded; ``last_cycle`` is the cycle of
    the last beat taken.
    """

    def __init__(self, tb: StreamTB, port: str, decode: Callable[[int], object]):
        self.tb = tb
        self.valid = getattr(tb.dut, f"{port}__valid")
        self.payload = getattr(tb.dut, f"{port}__payload")
        self.ready = getattr(tb.dut, f"{port}__ready")
        self.decode = decode
        self.last_cycle: int | None = None

    async def receive(self, count: int, stall_probability: float) -> list:
        """Take ``count`` beats, holding ``ready`` low with ``stall_probability`` in each cycle."""
        rng = self.tb.rng
        got = []
        while len(got) < count:
            ready = rng.random() >= stall_probability
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and int(self.valid.value) == 1:
                got.append(self.decode(int(self.payload.value)))
                self.last_cycle = self.tb.edges
            await RisingEdge(self.tb.dut.clk)
        self.ready.value = 0
        return got

    async def expect_silence(self, cycles: int, message: str) -> None:
        """Fail with ``message`` if ``valid`` rises in the next ``cycles`` cycles."""
        for _ in range(cycles):
            await ReadOnly()
            assert int(self.valid.value) == 0, message
            await RisingEdge(self.tb.dut.clk)


class StreamMonitor:
    """Watches stream ``port`` without driving it.

    ``cycles`` lists the cycle of every handshake seen since :meth:`start`.  With
    ``check_held`` (for a unit's output ports) it fails the test when a beat that was offered
    and not taken (``valid`` high, ``ready`` low) is withdrawn or changed in the next cycle.
    """

    def __init__(self, tb: StreamTB, port: str, check_held: bool = False):
        self.tb = tb
        self.port = port
        self.valid = getattr(tb.dut, f"{port}__valid")
        self.payload = getattr(tb.dut, f"{port}__payload")
        self.ready = getattr(tb.dut, f"{port}__ready")
        self.check_held = check_held
        self.cycles: list[int] = []

    def start(self) -> None:
        cocotb.start_soon(self._watch())

    async def _watch(self) -> None:
        offered = None                       # payload offered and not taken last cycle
        while True:
            await ReadOnly()
            valid = int(self.valid.value) == 1
            payload = int(self.payload.value) if valid else None
            if self.check_held and offered is not None:
                assert valid and payload == offered, (
                    f"{self.port}: beat {offered:#x} not taken in cycle {self.tb.edges - 1} "
                    f"was {'changed' if valid else 'withdrawn'} in cycle {self.tb.edges}")
            taken = valid and int(self.ready.value) == 1
            if taken:
                self.cycles.append(self.tb.edges)
            offered = payload if valid and not taken else None
            await RisingEdge(self.tb.dut.clk)


def check_elements(got: list[int], expected: list[int]) -> None:
    """Every element of ``got`` equals its golden value in ``expected``."""
    assert len(got) == len(expected)
    for k, (have, want) in enumerate(zip(got, expected)):
        assert have == want, f"element {k}: got {have}, expected {want}"
