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

HAND = dict(array_rows=2, array_cols=2, vector_lanes=2, scratchpad_kib=2, accumulator_kib=1,
            dram_latency_cycles=10)
_REGIONS = AcceleratorConfig(**HAND).regions
WEIGHT, COPY, VIN = _REGIONS["weight"].base, _REGIONS["copy"].base, _REGIONS["vin"].base


def _run(text: str):
    cfg = AcceleratorConfig(**HAND)
    instrs = assemble(text + "HALT\n")
    img = ProgramImage(cfg, instrs, np.zeros(0, np.uint8), 4096, [], [], {}, ["op"],
                       [0] * len(instrs), [0] * len(instrs))
    return simulate(img, functional=False)


LOAD = ("LOAD wait={w} signal={s} mem=SPAD dram_addr={a} dram_stride=8 dst_addr={d} dst_stride=8 "
        "rows={r} cols=8 pad=0\n")
MATMUL = ("MATMUL wait={w} signal={s} mode=INT8 transpose=1 m=4 n_tiles=1 k_tiles=1 "
          "a_addr={d} a_stride=2 w_addr=%d w_stride=2 acc_addr=0 acc_stride=2\n" % WEIGHT)
STORE = ("STORE wait={w} signal={s} src_addr={d} src_stride=8 dram_addr=2048 dram_stride=8 "
         "rows=1 cols=8\n")


def test_read_while_the_producer_still_writes_is_reported():
    # The LOAD writes scratchpad 0..15; the MATMUL, with no token, reads 0..7 while it runs.
    with pytest.raises(ProgramError, match=r"hazard: instruction 1 \(MATMUL\) reads scratchpad "
                       r"bytes 0\.\.7 \(streaming operand\) from cycle \d+, while it runs: "
                       r"instruction 0 \(LOAD\) writes scratchpad bytes 0\.\.15 \(destination\) "
                       r"in cycles \d+\.\.\d+"):
        _run(LOAD.format(w="-", s="-", a=0, d=0, r=2) + MATMUL.format(w="-", s="-", d=0))


def test_with_the_token_the_same_program_is_clean():
    res = _run(LOAD.format(w="-", s="MATRIX", a=0, d=0, r=2) + MATMUL.format(w="LOAD", s="-", d=0))
    assert res.start[1] == res.retire[0] + 1


def test_consumer_running_before_its_producer_is_reported():
    # Four long loads fill the LOAD engine (LOAD_DEPTH in flight), so the fifth LOAD (the
    # producer) starts only when the first retires; the MATMUL that reads its destination
    # waits for no token and starts long before.
    long = [LOAD.format(w="-", s="-", a=0, d=d, r=16) for d in (128, 256, 384, VIN)]
    text = "".join(long) + LOAD.format(w="-", s="-", a=0, d=0, r=1) + MATMUL.format(w="-", s="-", d=0)
    with pytest.raises(ProgramError, match=r"instruction 5 \(MATMUL\) reads .* before it starts: "
                                           r"instruction 4 \(LOAD\) writes"):
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
    text = (f"LOAD wait=- signal=- mem=SPAD dram_addr=0 dram_stride=8 dst_addr={COPY} dst_stride=8 "
            "rows=4 cols=4 pad=0\n"
            f"STORE wait=- signal=- src_addr={COPY + 4} src_stride=8 dram_addr=2048 dram_stride=8 "
            "rows=4 cols=4\n")
    res = _run(text)
    assert res.start[1] < res.retire[0]                 # they do overlap in time


def test_different_bytes_of_one_memory_row_are_a_hazard():
    # The same two queues and timing, one byte per row: the LOAD writes byte 0 and the
    # STORE reads byte 1 of rows 0..3 (N = 2: bytes 0 and 1 are one block RAM row), which a
    # port collision would make the STORE read undefined.  Element-disjoint, row-shared.
    text = (f"LOAD wait=- signal=- mem=SPAD dram_addr=0 dram_stride=8 dst_addr={COPY} dst_stride=8 "
            "rows=4 cols=1 pad=0\n"
            f"STORE wait=- signal=- src_addr={COPY + 1} src_stride=8 dram_addr=2048 dram_stride=8 "
            "rows=4 cols=1\n")
    with pytest.raises(ProgramError, match=r"hazard: instruction 1 \(STORE\) reads scratchpad "
                       rf"bytes {COPY + 1}\.\.{COPY + 25} .* instruction 0 \(LOAD\) writes .* "
                       rf"\(shared 2-element memory rows within {COPY}\.\.{COPY + 25}\)"):
        _run(text)
    # One row further (bytes 2 and 3: the next row) the same overlap in time is clean.
    res = _run(text.replace(f"src_addr={COPY + 1}", f"src_addr={COPY + 2}"))
    assert res.start[1] < res.retire[0]


@settings(max_examples=200, deadline=None)
@given(a=st.tuples(st.integers(0, 40), st.integers(0, 12), st.integers(1, 5), st.integers(1, 8)),
       b=st.tuples(st.integers(0, 40), st.integers(0, 12), st.integers(1, 5), st.integers(1, 8)),
       unit=st.sampled_from([1, 2, 4, 16]))
def test_pattern_overlap_against_sets(a, b, unit):
    pa, pb = Access("spad", *a, False, "a"), Access("spad", *b, True, "b")

    def blocks(p):
        return {(p.addr + r * p.stride + c) // unit for r in range(p.rows) for c in range(p.width)}
    assert pa.overlaps(pb, unit) == bool(blocks(pa) & blocks(pb)) == pb.overlaps(pa, unit)
    if unit == 1:
        assert pa.overlaps(pb) == pa.overlaps(pb, 1)


def test_row_elements_follow_the_memories_rows():
    from compiler.isa import row_elements
    from hw.core.memories import geometry
    for n in (2, 4, 16):
        cfg = AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n)
        # A row of each memory holds row_elements(...) elements of its Access unit (bytes,
        # words; the parameter memory stores a word as 4 bytes).
        assert row_elements(cfg, "spad") == geometry(cfg, "act").row_elements
        assert row_elements(cfg, "acc") == geometry(cfg, "acc").row_elements
        assert row_elements(cfg, "param") == max(geometry(cfg, "param").row_elements // 4, 1)
        assert row_elements(cfg, "dram") == 1


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
