"""LaneAdapter alone: an ``N``-lane stream through an ``L``-lane stand-in unit and back.

The stand-in unit is the testbench: it takes parts with a random ready, gives each back
(lane by lane plus one, so a part passed twice or out of place shows) after a random delay,
and the output side is stalled at random.  Every part the unit sees and every beat out are
checked against rows split and gathered by hand, padding included; with everything always
ready, parts enter the unit one a cycle from the cycle a beat is offered (no cycle added).
The vector engine's tests run it with the real LayerNorm and softmax
(tests/hw/test_vector_engine.py).
"""
from __future__ import annotations

import math
import random
from collections import deque

import pytest

from amaranth_streams import run_simulation
from hw.lane_adapter import LaneAdapter

BITS = 8
PAD = 0xA5


def parts_of(beat: list[int], first_part: int, total_parts: int, k: int, lanes: int) -> list[list[int]]:
    """The parts of one beat that reach the unit (those before the row's end)."""
    return [beat[j * lanes:(j + 1) * lanes] for j in range(k) if first_part + j < total_parts]


def pack(values: list[int]) -> int:
    return sum((v & 0xFF) << (BITS * i) for i, v in enumerate(values))


def unpack(word: int, count: int) -> list[int]:
    return [(word >> (BITS * i)) & 0xFF for i in range(count)]


def run(n: int, lanes: int, lengths: list[tuple[int, int]], seed: int, busy: bool):
    """Rows of ``lengths`` (``(length, rows)`` groups, the adapter drained between groups)
    through the adapter; ``busy``: random valid / ready everywhere, else always ready."""
    dut = LaneAdapter(n, lanes, BITS, BITS, max_length=max(length for length, _ in lengths))
    k = n // lanes
    rng = random.Random(seed)
    beats_in, parts_expected, beats_expected = [], [], []
    for length, rows in lengths:
        total = math.ceil(length / lanes)
        group_in, group_parts, group_out = [], [], []
        for _ in range(rows):
            for b in range(math.ceil(length / n)):
                beat = [rng.randrange(256) for _ in range(n)]
                group_in.append(beat)
                parts = parts_of(beat, b * k, total, k, lanes)
                group_parts += parts
                out = [v + 1 & 0xFF for part in parts for v in part]
                group_out.append(out + [PAD] * (n - len(out)))
        beats_in.append(group_in)
        parts_expected.append(group_parts)
        beats_expected.append(group_out)
    seen_parts, seen_beats, part_cycles, offer_cycles = [], [], [], []

    async def testbench(ctx):
        ctx.set(dut.pad, PAD)
        in_flight = deque()                   # (ready cycle, part) inside the stand-in unit
        cycle = 0
        for group, (length, _) in enumerate(lengths):
            # The adapter registers the row's last part: length is set a cycle ahead.
            ctx.set(dut.length, length)
            ctx.set(dut.i.valid, 0)
            ctx.set(dut.unit_o.valid, 0)
            await ctx.tick()
            cycle += 1
            pending = deque(beats_in[group])
            want = len(beats_expected[group])
            got = 0
            while got < want:
                chance = (lambda p: rng.random() < p) if busy else (lambda p: True)
                offer = bool(pending) and chance(0.7)
                ctx.set(dut.i.valid, offer)
                ctx.set(dut.i.payload, pack(pending[0]) if offer else 0)
                ctx.set(dut.unit_i.ready, chance(0.6))
                out_ok = bool(in_flight) and in_flight[0][0] <= cycle and chance(0.8)
                ctx.set(dut.unit_o.valid, out_ok)
                ctx.set(dut.unit_o.payload, pack([v + 1 for v in in_flight[0][1]]) if out_ok else 0)
                ctx.set(dut.o.ready, chance(0.7))
                if offer:
                    offer_cycles.append(cycle)
                if ctx.get(dut.unit_i.valid) and ctx.get(dut.unit_i.ready):
                    part = unpack(ctx.get(dut.unit_i.payload), lanes)
                    seen_parts.append(part)
                    part_cycles.append(cycle)
                    in_flight.append((cycle + 1 + rng.randrange(3 if busy else 1), part))
                if out_ok and ctx.get(dut.unit_o.ready):
                    in_flight.popleft()
                if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                    seen_beats.append(unpack(ctx.get(dut.o.payload), n))
                    got += 1
                if offer and ctx.get(dut.i.ready):
                    pending.popleft()
                await ctx.tick()
                cycle += 1
                assert cycle < 10_000, "stuck"
            assert not pending and not in_flight

    run_simulation(dut, testbench)
    assert seen_parts == [p for g in parts_expected for p in g]
    assert seen_beats == [b for g in beats_expected for b in g]
    return part_cycles, offer_cycles


GROUPS = [(13, 3), (8, 2), (1, 2), (5, 1), (16, 2), (3, 3)]


@pytest.mark.parametrize("n, lanes", [(4, 2), (8, 4), (8, 2), (16, 4)])
@pytest.mark.parametrize("seed", [1, 2])
def test_random_handshakes(n, lanes, seed):
    run(n, lanes, [(max(1, length * n // 8), rows) for length, rows in GROUPS], seed, busy=True)


@pytest.mark.parametrize("n, lanes", [(4, 2), (8, 2)])
def test_one_part_a_cycle_from_the_first_beat(n, lanes):
    """Always ready: the first part enters in the cycle the first beat is offered, and then
    one part every cycle until the last (rows of a partial last beat included)."""
    parts, offers = run(n, lanes, [(3 * n + 1, 4)], seed=5, busy=False)
    assert parts[0] == offers[0] == 1         # cycle 0 sets the length
    assert parts == list(range(1, len(parts) + 1))


def test_bad_parameters():
    with pytest.raises(ValueError, match="unit_lanes .* less than lanes"):
        LaneAdapter(4, 4, 8, 8, 16)
    with pytest.raises(ValueError, match="lanes must be a power of two"):
        LaneAdapter(6, 2, 8, 8, 16)
    with pytest.raises(ValueError, match="max_length must be a positive integer"):
        LaneAdapter(4, 2, 8, 8, 0)


def test_norm_lanes_field():
    """``norm_lanes``: 0 (the datapath) or a power of two from 2 to N / 2; the LayerNorm and
    the softmax, and their timing, follow it."""
    from hw.config import AcceleratorConfig, ConfigError
    from hw.layernorm import PtfLayerNorm, channels_ok, layernorm_timing
    from hw.softmax import LisSoftmax, softmax_timing

    base = AcceleratorConfig(array_rows=8, array_cols=8, vector_lanes=8)
    assert base.norm_unit_lanes == 8 and base.replace(norm_lanes=2).norm_unit_lanes == 2
    for bad in (8, 16, 3, 1, -4):
        with pytest.raises(ConfigError, match="norm_lanes must be 0"):
            base.replace(norm_lanes=bad)
    narrow = base.replace(norm_lanes=4)
    assert PtfLayerNorm(narrow).lanes == 4 and LisSoftmax(narrow).lanes == 4
    # Rows of C / L beats: twice as many at half the lanes, and a multiple of 4 is a row.
    assert layernorm_timing(narrow, 256).interval == 2 * layernorm_timing(base, 256).interval
    assert channels_ok(narrow, 12) and not channels_ok(base, 12)
    assert softmax_timing(narrow, 197).latency > softmax_timing(base, 197).latency
