"""Amaranth-simulation helpers shared by the ``test_*.py`` modules of tests/hw.

Streams are ``amaranth.lib.stream`` interfaces (``valid``, ``ready``, ``payload``).  Cycle
numbers count ``ctx.tick()`` calls of the testbench that takes them.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from amaranth import Module, ResetInserter, Signal
from amaranth.hdl import Value
from amaranth.lib.wiring import In
from amaranth.sim import Simulator


def run_simulation(dut, *testbenches, scramble: int = 0, seed: int = 0,
                   ranges: list | None = None, draws: list | None = None) -> None:
    """Simulate ``dut`` with a 1 MHz clock and ``testbenches`` until they all return.

    With ``scramble`` > 0 the unit first runs ``scramble`` cycles with random values on
    every input port (valid, payload, parameters and ready alike), then its ``sync`` reset
    is raised for one cycle, as the accelerator's engine reset does at the start of a run,
    with random inputs still (in the core the units upstream are reset in the same cycle,
    so what they drive then is left over from the previous run); ``testbenches`` start
    after that (their cycles count from there).
    ``ranges`` lists ``(port, lo, hi)``: that input's random values are drawn from that
    range (a row length the unit supports, say), so that work gets far into the unit;
    ``draws`` lists ``(port, draw)``: that input's values are ``draw(rng)`` (a legal
    instruction word, say).
    The unit must then behave as from power-up: what its reset leaves alone (reset-less
    payload registers, memories) must not reach an output.
    """
    top, start = dut, []
    if scramble:
        clear = Signal()
        top = Module()
        top.submodules.dut = ResetInserter(clear)(dut)
        inputs = [Value.cast(value) for _, member, value in dut.signature.flatten(dut)
                  if member.flow == In]
        assert inputs, f"{dut!r} has no input ports to scramble"
        draw_of = {id(Value.cast(port)): (lambda rng, lo=lo, hi=hi: rng.randint(lo, hi))
                  for port, lo, hi in ranges or []}
        draw_of.update((id(Value.cast(port)), draw) for port, draw in draws or [])
        rng = random.Random(seed)

        async def scrambler(ctx):
            for cycle in range(scramble + 1):
                for port in inputs:
                    if id(port) in draw_of:
                        ctx.set(port, draw_of[id(port)](rng))
                    elif port.shape().signed:
                        ctx.set(port, rng.randint(-(1 << len(port) - 1), (1 << len(port) - 1) - 1))
                    else:
                        ctx.set(port, rng.getrandbits(len(port)))
                ctx.set(clear, cycle == scramble)
                await ctx.tick()
            ctx.set(clear, 0)
            for port in inputs:
                ctx.set(port, 0)

        start = [scrambler]

    def after_scramble(testbench):
        async def delayed(ctx):
            if scramble:
                for _ in range(scramble + 1):
                    await ctx.tick()
                # After the scrambler has put the inputs to 0 at this edge, well before the
                # next one (the clock's period is 1 us).
                await ctx.delay(1e-9)
            await testbench(ctx)
        return delayed

    sim = Simulator(top)
    sim.add_clock(1e-6)
    for testbench in start + [after_scramble(t) for t in testbenches]:
        sim.add_testbench(testbench)
    sim.run()


async def stream_through(ctx, dut, payloads: list, rng: random.Random, *, in_gap: float,
                         out_stall: float, cycle: int, cycle_limit: int,
                         stopped_message: str, idle_payload=0):
    """Offer ``payloads`` on ``dut.i`` and take as many beats from ``dut.o``.

    In each cycle ``i.valid`` is low with probability ``in_gap`` (``i.payload`` then holds
    ``idle_payload``, or is left as it was if that is None) and ``o.ready`` is low with
    probability ``out_stall``.  Cycles count on from ``cycle``; fails with
    ``stopped_message`` when they reach ``cycle_limit``.  Returns ``(output payloads, cycles
    of the accepted inputs, cycles of the outputs, next cycle)``.
    """
    outputs, accepted, delivered = [], [], []
    sent = 0
    while len(outputs) < len(payloads):
        offer = sent < len(payloads) and rng.random() >= in_gap
        ctx.set(dut.i.valid, offer)
        if offer:
            ctx.set(dut.i.payload, payloads[sent])
        elif idle_payload is not None:
            ctx.set(dut.i.payload, idle_payload)
        ctx.set(dut.o.ready, rng.random() >= out_stall)
        *_, in_ready, out_valid, out_ready, out_payload = await ctx.tick().sample(
            dut.i.ready, dut.o.valid, dut.o.ready, dut.o.payload)
        if offer and in_ready:
            accepted.append(cycle)
            sent += 1
        if out_valid and out_ready:
            outputs.append(out_payload)
            delivered.append(cycle)
        cycle += 1
        assert cycle < cycle_limit, stopped_message
    ctx.set(dut.i.valid, 0)
    return outputs, accepted, delivered, cycle


async def tick_until(ctx, condition: Callable[[], bool]) -> int:
    """Tick until ``condition()`` holds (checked before each tick); return the ticks taken."""
    ticks = 0
    while not condition():
        await ctx.tick()
        ticks += 1
    return ticks


async def wait_accepted(ctx, stream) -> int:
    """With ``stream.valid`` high, tick until ``stream.ready`` is sampled high; return the
    number of ticks."""
    ticks = 0
    while True:
        _, _, ready = await ctx.tick().sample(stream.ready)
        ticks += 1
        if ready:
            return ticks


async def receive_beats(ctx, stream, count: int, ready_at: Callable[[int], bool],
                        decode: Callable, edge: int, edge_limit: int,
                        stopped_message: str) -> tuple[list, int]:
    """Take ``count`` beats from ``stream``, ``ready`` being ``ready_at(edge)`` before each
    clock edge.  Edges count on from ``edge``; fails with ``stopped_message`` when they
    reach ``edge_limit``.  Returns the decoded payloads and the edge of the last one."""
    got = []
    while len(got) < count:
        ready = ready_at(edge)
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        edge += 1
        assert edge < edge_limit, stopped_message
        if valid and ready:
            got.append(decode(payload))
    return got, edge


async def receive_jobs(ctx, stream, beat_counts: list[int], ready_at: Callable[[int], bool],
                       decode: Callable, edge_limit: int, stopped_message: str,
                       outputs: list, last_edges: list, quiet_cycles: int,
                       quiet_message: str) -> None:
    """:func:`receive_beats` for jobs of ``beat_counts`` beats, one after the other, edges
    counting from 0.  Each job's beats go to ``outputs`` and the edge of its last beat to
    ``last_edges`` as soon as it is complete (a driver may wait for that).  Then, with
    ``ready`` high, no beat may come for ``quiet_cycles`` cycles (:func:`expect_no_beats`)."""
    edge = 0
    for count in beat_counts:
        got, edge = await receive_beats(ctx, stream, count, ready_at, decode, edge, edge_limit,
                                        stopped_message)
        outputs.append(got)
        last_edges.append(edge)
    ctx.set(stream.ready, 1)
    await expect_no_beats(ctx, stream, quiet_cycles, quiet_message)


async def expect_no_beats(ctx, stream, cycles: int, message: str) -> None:
    """Fail with ``message`` if ``stream.valid`` is high in any of the next ``cycles`` cycles."""
    for _ in range(cycles):
        _, _, valid = await ctx.tick().sample(stream.valid)
        assert not valid, message
