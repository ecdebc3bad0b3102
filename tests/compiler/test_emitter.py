"""Dependency tokens derived from buffer accesses, and the next-fit allocator."""
import pytest
from hypothesis import given, settings, strategies as st

from compiler.emitter import Allocator, CompileError, Emitter
from compiler.isa import Mem, Opcode, Queue

LOAD_ARGS = dict(mem=Mem.SPAD, dram_addr=0, dram_stride=4, dst_addr=0, dst_stride=4, rows=1, cols=4, pad=0)
MM_ARGS = dict(mode=0, transpose=1, accumulate=0, m=1, n_tiles=1, k_tiles=1, a_addr=0, a_stride=4,
               w_addr=0, w_stride=4, acc_addr=0, acc_stride=4)
GELU_ARGS = dict(src_addr=0, src_stride=4, dst_addr=0, dst_stride=4, rows=1, cols=4)


def test_raw_war_tokens():
    spad = Allocator("scratchpad", 64, 4)
    em = Emitter()
    a = spad.alloc(16, "a")
    b = spad.alloc(16, "b")
    l0 = em.emit(Opcode.LOAD, LOAD_ARGS, writes=[a])
    l1 = em.emit(Opcode.LOAD, LOAD_ARGS, writes=[b])
    m0 = em.emit(Opcode.MATMUL, MM_ARGS, reads=[a, b])
    m1 = em.emit(Opcode.MATMUL, MM_ARGS, reads=[a, b])          # already covered: no new wait
    l2 = em.emit(Opcode.LOAD, LOAD_ARGS, writes=[a])             # write after read: waits MATRIX
    v0 = em.emit(Opcode.GELU, GELU_ARGS, reads=[a], writes=[b])  # RAW on LOAD, WAR on MATRIX
    ins = em.instrs
    assert ins[l0].signal == 0 and ins[l1].signal == 1 << Queue.MATRIX
    assert ins[m0].wait == 1 << Queue.LOAD and ins[m1].wait == 0
    assert ins[m1].signal == (1 << Queue.LOAD) | (1 << Queue.VECTOR)
    assert ins[l2].wait == 1 << Queue.MATRIX and ins[l2].signal == 1 << Queue.VECTOR
    assert ins[v0].wait == (1 << Queue.LOAD) | (1 << Queue.MATRIX)


def test_freed_region_keeps_its_history():
    spad = Allocator("scratchpad", 32, 4)
    em = Emitter()
    a = spad.alloc(32, "a")
    em.emit(Opcode.LOAD, LOAD_ARGS, writes=[a])
    m = em.emit(Opcode.MATMUL, MM_ARGS, reads=[a])
    spad.free(a)
    b = spad.alloc(8, "b")                                   # reuses a's addresses
    v = em.emit(Opcode.GELU, GELU_ARGS, writes=[b])
    assert em.instrs[v].wait == (1 << Queue.LOAD) | (1 << Queue.MATRIX)
    assert em.instrs[m].signal == 1 << Queue.VECTOR


def test_next_fit_rotates_and_reports_failure():
    spad = Allocator("scratchpad", 64, 16)
    first = spad.alloc(16, "x")
    spad.free(first)
    second = spad.alloc(16, "y")
    assert second.addr == 16                                 # next fit, not the freed slot
    assert spad.alloc(32, "z").addr == 32
    assert spad.alloc(16, "v").addr == 0                     # wraps to the start
    with pytest.raises(CompileError, match="allocation of 16 for w failed.*is 0 of 64 \\(short by 16\\)"):
        spad.alloc(16, "w")


def test_fits_uses_the_allocators_alignment():
    spad = Allocator("scratchpad", 64, 16)
    assert [spad.aligned(s) for s in (0, 1, 16, 17)] == [1, 16, 16, 32]
    assert spad.need([17, 17, 16]) == 80
    assert spad.fits([17, 16, 16])                            # 32 + 16 + 16
    assert not spad.fits([17, 17, 16])                        # 50 bytes, but 80 once aligned
    live = spad.alloc(20, "live")                             # takes 32
    assert spad.fits([32]) and not spad.fits([33])
    spad.free(live)
    assert spad.fits([64])


@settings(max_examples=60, deadline=None)
@given(align=st.sampled_from([1, 4, 16]), sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_fits_agrees_with_allocating(align, sizes):
    """On an empty allocator, ``fits`` says exactly whether the buffers can all be live."""
    spad = Allocator("scratchpad", 96, align)
    expected = spad.fits(sizes)
    try:
        for s in sizes:
            spad.alloc(s, "b")
        placed = True
    except CompileError:
        placed = False
    assert placed == expected
