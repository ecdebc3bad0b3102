"""The cycle model's hazard checker: conflicting accesses of different queues must be ordered.

The data path runs every instruction whole, in start order, so it cannot see two
instructions overlap; the hazard checker compares the memory patterns of every instruction
with those of the other queues' instructions still unretired when it starts.
"""
import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from compiler.asm import assemble
from compiler.isa import NQ, QUEUE_OF, Access
from compiler.lower import compile_graph
from compiler.program import ProgramImage
from compiler.testgraphs import tiny_vit
from hw.config import AcceleratorConfig
from hw.units import UnitTimings
from sim.machine import ProgramError, simulate

HAND = dict(array_rows=2, array_cols=2, vector_lanes=2, scratchpad_kib=1, accumulator_kib=1,
            dma_bytes_per_cycle=4, dram_bytes_per_cycle=4, dram_latency_cycles=10)


def _run(text: str):
    cfg = AcceleratorConfig(**HAND)
    instrs = assemble(text + "HALT\n")
    img = ProgramImage(cfg, instrs, np.zeros(0, np.uint8), 4096, [], [], {}, ["op"],
                       [0] * len(instrs), [0] * len(instrs))
    return simulate(img, functional=False)


LOAD = ("LOAD wait={w} signal={s} mem=SPAD dram_addr={a} dram_stride=8 dst_addr={d} dst_stride=8 "
        "rows={r} cols=8 pad=0\n")
MATMUL = ("MATMUL wait={w} signal={s} mode=INT8 transpose=1 accumulate=0 m=4 n_tiles=1 k_tiles=1 "
          "a_addr={d} a_stride=2 w_addr=512 w_stride=2 acc_addr=0 acc_stride=2\n")
STORE = ("STORE wait={w} signal={s} src_addr={d} src_stride=8 dram_addr=2048 dram_stride=8 "
         "rows=1 cols=8\n")


def test_read_while_the_producer_still_writes_is_reported():
    # The LOAD writes scratchpad 0..15 and retires at 14; the MATMUL reads 0..7 from cycle 0.
    with pytest.raises(ProgramError, match=r"hazard: instruction 1 \(MATMUL\) reads scratchpad "
                       r"bytes 0\.\.7 \(streaming operand\) from cycle 0, while it runs: "
                       r"instruction 0 \(LOAD\) writes scratchpad bytes 0\.\.15 \(destination\) "
                       r"in cycles 0\.\.14"):
        _run(LOAD.format(w="-", s="-", a=0, d=0, r=2) + MATMUL.format(w="-", s="-", d=0))


def test_with_the_token_the_same_program_is_clean():
    res = _run(LOAD.format(w="-", s="MATRIX", a=0, d=0, r=2) + MATMUL.format(w="LOAD", s="-", d=0))
    assert res.start[1] == res.retire[0] == 14


def test_consumer_running_before_its_producer_is_reported():
    # Two earlier loads hold the DRAM channel until 16, so the third LOAD (the producer)
    # starts at 16; the MATMUL that reads its destination waits for no token and is done
    # long before.
    text = (LOAD.format(w="-", s="-", a=0, d=256, r=4) + LOAD.format(w="-", s="-", a=0, d=320, r=4)
            + LOAD.format(w="-", s="-", a=0, d=0, r=1) + MATMUL.format(w="-", s="-", d=0))
    with pytest.raises(ProgramError, match=r"instruction 3 \(MATMUL\) reads .* before it starts: "
                                           r"instruction 2 \(LOAD\) writes .* in cycles 16\.\."):
        _run(text)


def test_overwriting_what_another_queue_still_reads_is_reported():
    # The MATMUL reads 0..7 until it retires; the LOAD after it overwrites 0..7 with no token.
    text = MATMUL.format(w="-", s="-", d=0) + LOAD.format(w="-", s="-", a=0, d=0, r=1)
    with pytest.raises(ProgramError, match=r"instruction 1 \(LOAD\) writes scratchpad bytes "
                                           r"0\.\.7 \(destination\).*instruction 0 \(MATMUL\) reads"):
        _run(text)


def test_interleaved_disjoint_patterns_are_not_hazards():
    # Rows 0..3 of two column halves, 8 bytes apart: the LOAD writes the left halves while
    # the STORE reads the right halves of the same rows.
    text = ("LOAD wait=- signal=- mem=SPAD dram_addr=0 dram_stride=8 dst_addr=0 dst_stride=8 "
            "rows=4 cols=4 pad=0\n"
            "STORE wait=- signal=- src_addr=4 src_stride=8 dram_addr=2048 dram_stride=8 "
            "rows=4 cols=4\n")
    res = _run(text)
    assert res.start[1] < res.retire[0]                 # they do overlap in time


def test_reads_of_a_region_being_read_are_not_hazards():
    text = MATMUL.format(w="-", s="-", d=0) + STORE.format(w="-", s="-", d=0)
    _run(text)


@settings(max_examples=200, deadline=None)
@given(a=st.tuples(st.integers(0, 40), st.integers(0, 12), st.integers(1, 5), st.integers(1, 8)),
       b=st.tuples(st.integers(0, 40), st.integers(0, 12), st.integers(1, 5), st.integers(1, 8)))
def test_pattern_overlap_against_sets(a, b):
    pa, pb = Access("spad", *a, False, "a"), Access("spad", *b, True, "b")

    def elements(p):
        return {p.addr + r * p.stride + c for r in range(p.rows) for c in range(p.width)}
    assert pa.overlaps(pb) == bool(elements(pa) & elements(pb)) == pb.overlaps(pa)


def _token_pairs(instrs):
    """``(src queue, dst queue, signalling instruction, waiting instruction)`` per token: the
    k-th signal src -> dst is taken by the k-th wait of a dst instruction on src."""
    signals, waits = {}, {}
    for i, ins in enumerate(instrs):
        q = QUEUE_OF[ins.op]
        if q is None:
            continue
        for other in range(NQ):
            if (ins.signal >> other) & 1:
                signals.setdefault((q, other), []).append(i)
            if (ins.wait >> other) & 1:
                waits.setdefault((other, q), []).append(i)
    return [(s, d, a, b) for (s, d), sig in signals.items() for a, b in zip(sig, waits[s, d])]


def test_dropping_any_token_pair_is_harmless_or_reported():
    """Every token of a compiled tiny ViT either does not bind (the schedule is unchanged
    without it) or protects a real conflict (the model reports the hazard without it):
    no token can be dropped silently."""
    cfg = AcceleratorConfig(array_rows=4, array_cols=4, vector_lanes=4, scratchpad_kib=16,
                            accumulator_kib=4)
    prog = compile_graph(tiny_vit(seed=1), cfg)
    timings = UnitTimings(cfg).load()
    base = simulate(prog, functional=False, timings=timings)
    pairs = _token_pairs(prog.instructions)
    assert len(pairs) > 100
    unchanged = reported = 0
    for s, d, a, b in pairs:
        dropped = copy.deepcopy(prog)
        dropped.instructions[a].signal &= ~(1 << d)
        dropped.instructions[b].wait &= ~(1 << s)
        try:
            res = simulate(dropped, functional=False, timings=timings)
        except ProgramError as exc:
            assert "hazard" in str(exc)
            reported += 1
            continue
        assert np.array_equal(res.start, base.start), f"token {s}->{d} ({a} -> {b}) dropped silently"
        unchanged += 1
    assert unchanged > 0 and reported > 0
