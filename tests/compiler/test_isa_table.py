"""The ISA table: one spec per opcode, and its parts agree with each other.

The cycle model's hazard checker trusts :meth:`OpSpec.accesses`; these tests check it against
:meth:`OpSpec.execute`: an instruction changes no element outside its declared writes, and
its results depend on no element outside its declared reads.
"""
import numpy as np
import pytest

from compiler import isa
from compiler.isa import (NO_SCORE_BIAS, SPECS, ArchState, MatMode, Mem, Opcode, Queue, SoftmaxMode,
                          Violation)
from hw.config import AcceleratorConfig
from hw.softmax import SoftmaxMode as HwSoftmaxMode
from hw.systolic_array import StreamMode
from hw.timing import UnitTiming
from hw.units import UnitTimings
from sw import intops

CFG = AcceleratorConfig(array_rows=2, array_cols=2, vector_lanes=2, scratchpad_kib=4,
                        accumulator_kib=2, max_channels=16)
R = {name: r.base for name, r in CFG.regions.items()}
DRAM = 4096
B_INT, C_INT = intops.lis_exp_constants(4)

#: One instruction per opcode / mode, with parameter records at parameter word 200.
SAMPLES = {
    "load_spad": (Opcode.LOAD, dict(mem=Mem.SPAD, dram_addr=100, dram_stride=10, dst_addr=R["act"] + 40,
                                    dst_stride=12, rows=3, cols=7, pad=2)),
    "load_param": (Opcode.LOAD, dict(mem=Mem.PARAM, dram_addr=200, dram_stride=20, dst_addr=30,
                                     dst_stride=6, rows=2, cols=4, pad=0)),
    "store": (Opcode.STORE, dict(src_addr=R["out"] + 50, src_stride=9, dram_addr=300, dram_stride=11,
                                 rows=3, cols=5)),
    **{f"matmul_{mode.name.lower()}_t{t}_{src}": (Opcode.MATMUL, dict(
        mode=mode, transpose=t, m=3, n_tiles=2, k_tiles=2, a_addr=R[src] + 10,
        a_stride=6, w_addr=R["weight"] + 100, w_stride=8, acc_addr=20, acc_stride=6))
       for mode in (MatMode.INT8, MatMode.UINT8) for t in (0, 1) for src in ("act", "prob")},
    "attnv": (Opcode.ATTNV, dict(m=3, n_tiles=2, k_tiles=2, a_addr=R["codes"] + 10, a_stride=6,
                                 w_addr=R["value"] + 100, w_stride=8, acc_addr=R["attn_acc"] + 20,
                                 acc_stride=6)),
    "requant_int8_gelu": (Opcode.REQUANT, dict(src_addr=20, src_stride=6, dst_addr=R["out"] + 300,
                                               dst_stride=6, rows=3, cols=4, param_addr=200,
                                               load_params=1, per_channel=1, out_type=0, gelu=1)),
    "requant_int16": (Opcode.REQUANT, dict(src_addr=R["attn_acc"] + 20, src_stride=6,
                                           dst_addr=R["out"] + 300, dst_stride=10, rows=3, cols=4,
                                           param_addr=200, load_params=1, per_channel=0,
                                           out_type=1, gelu=0)),
    **{f"softmax_{mode.name.lower()}": (Opcode.SOFTMAX, dict(
        src_addr=20, src_stride=8, dst_addr=R["codes" if mode == SoftmaxMode.LIS else "prob"] + 40,
        dst_stride=8, rows=3, cols=5, mode=mode, frac_bits=4, b_int=B_INT,
        c_int=C_INT, mult=3, shift=0, **NO_SCORE_BIAS)) for mode in SoftmaxMode},
    "softmax_bias_mask": (Opcode.SOFTMAX, dict(
        src_addr=20, src_stride=8, dst_addr=R["codes"] + 40, dst_stride=8, rows=3, cols=5,
        mode=SoftmaxMode.LIS, frac_bits=4, b_int=B_INT, c_int=C_INT, mult=3, shift=0, bias=1,
        bias_addr=R["vin"] + 30, keep_lo=1, keep_hi=3, mask_value=-20000)),
    "layernorm": (Opcode.LAYERNORM, dict(src_addr=R["vin"] + 10, src_stride=10, dst_addr=R["out"] + 400,
                                         dst_stride=8, rows=3, cols=6, param_addr=200, load_params=1,
                                         zp_in=-3)),
    "add": (Opcode.ADD, dict(a_addr=R["vin"] + 10, a_stride=10, b_addr=R["vin2"] + 20, b_stride=0,
                             dst_addr=R["out"] + 400, dst_stride=8, rows=3, cols=6, param_addr=200,
                             load_params=1, zp_a=2, zp_b=-1, zp_out=3)),
    "gelu": (Opcode.GELU, dict(src_addr=R["vin"] + 10, src_stride=10, dst_addr=R["out"] + 400,
                               dst_stride=8, rows=3, cols=6)),
    "gelu_table": (Opcode.GELU_TABLE, dict(src_addr=R["vin"] + 200)),
}


def _state(seed: int, op: Opcode, args: dict) -> ArchState:
    rng = np.random.default_rng(seed)
    st = ArchState(CFG, rng.integers(0, 256, size=(1, DRAM), dtype=np.uint8))
    lis = op == Opcode.ATTNV                                        # 4-bit codes streamed
    st.spad[:] = rng.integers(0, 16, size=st.spad.shape) if lis else \
        rng.integers(-128, 128, size=st.spad.shape)
    st.acc[:] = rng.integers(-3000, 3000, size=st.acc.shape)
    st.param[:] = rng.integers(-3000, 3000, size=st.param.shape)
    st.gelu_table = rng.integers(-128, 128, size=(1, 256))
    if op in (Opcode.REQUANT, Opcode.LAYERNORM, Opcode.ADD):
        n = 8
        rec = np.zeros((n, 4), np.int64)
        if op == Opcode.REQUANT:
            rec[:] = np.stack([rng.integers(-500, 500, n), rng.integers(-32768, 32768, n),
                               rng.integers(0, 64, n), rng.integers(-20, 20, n)], 1)
        elif op == Opcode.LAYERNORM:
            rec[:] = np.stack([rng.integers(0, 4, n), rng.integers(-32768, 32768, n),
                               rng.integers(16, 64, n), rng.integers(-1 << 20, 1 << 20, n)], 1)
        else:
            rec[:] = np.stack([rng.integers(-32768, 32768, n), rng.integers(-32768, 32768, n),
                               rng.integers(0, 64, n), np.zeros(n)], 1)
        st.param[0, 200:200 + 4 * n] = rec.ravel()
    if op == Opcode.SOFTMAX:
        st.acc[0, :] = rng.integers(-2000, 1, size=st.acc.shape[1])
    return st


def _mask(accesses, write: bool) -> dict[str, np.ndarray]:
    sizes = {"spad": CFG.scratchpad_bytes, "acc": CFG.accumulator_words, "param": CFG.param_words,
             "dram": DRAM}
    masks = {m: np.zeros(n, bool) for m, n in sizes.items()}
    for a in accesses:
        if a.write == write:
            for r in range(a.rows):
                masks[a.mem][a.addr + r * a.stride:a.addr + r * a.stride + a.width] = True
    return masks


def _memories(st: ArchState) -> dict[str, np.ndarray]:
    return {"spad": st.spad[0].astype(np.int64), "acc": st.acc[0].copy(),
            "param": st.param[0].copy(), "dram": st.dram[0].astype(np.int64)}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_execute_stays_inside_its_declared_accesses(name):
    op, args = SAMPLES[name]
    spec = SPECS[op]
    args = {k: int(v) for k, v in args.items()}
    spec.check(CFG, args)
    accesses = spec.accesses(CFG, args)
    for acc in accesses:                          # every sample lies in its regions
        assert acc.mem == "dram" or any(
            CFG.regions[r].base <= acc.lo and acc.hi <= CFG.regions[r].end for r in acc.regions), acc
    writes, reads = _mask(accesses, True), _mask(accesses, False)
    st = _state(1, op, args)
    before = _memories(st)
    spec.execute(st, args)
    after = _memories(st)
    for mem in after:
        changed = after[mem] != before[mem]
        assert not np.any(changed & ~writes[mem]), f"{mem} written outside the declared writes"
    # The same instruction on memories that differ everywhere outside its declared reads (and
    # in its unit registers, which it reloads or does not use) writes the same values.
    other = _state(2, op, args)
    for mem, keep in reads.items():
        getattr(other, mem)[0, keep] = getattr(_state(1, op, args), mem)[0, keep]
    if op in (Opcode.GELU, Opcode.REQUANT):
        other.gelu_table = _state(1, op, args).gelu_table
    spec.execute(other, args)
    again = _memories(other)
    for mem in after:
        np.testing.assert_array_equal(again[mem][writes[mem]], after[mem][writes[mem]],
                                      err_msg=f"{mem}: result depends on undeclared elements")
    if op == Opcode.GELU_TABLE:
        np.testing.assert_array_equal(other.gelu_table, st.gelu_table)


def test_every_opcode_has_one_spec_and_the_tables_derive_from_it():
    assert set(SPECS) == set(Opcode)
    for op, spec in SPECS.items():
        assert spec.op == op
        assert isa.FORMATS[op] == spec.fields
        assert isa.QUEUE_OF[op] == spec.queue
    assert isa.QUEUE_OF[Opcode.HALT] is None and isa.QUEUE_OF[Opcode.MATMUL] == Queue.MATRIX
    assert isa.QUEUE_OF[Opcode.ATTNV] == Queue.ATTN


def test_mode_enums_are_the_hardware_units():
    assert MatMode is StreamMode and SoftmaxMode is HwSoftmaxMode
    fields = {f.name: f for f in SPECS[Opcode.MATMUL].fields}
    assert fields["mode"].enum is StreamMode and fields["mode"].hi == max(StreamMode)


@pytest.mark.parametrize("op,args,match", [
    (Opcode.LAYERNORM, dict(SAMPLES["layernorm"][1], cols=5), r"LayerNorm: channels must be a multiple of the LayerNorm's lanes \(2\)"),
    (Opcode.ADD, dict(SAMPLES["add"][1], cols=18), r"residual add: .*2\.\.16 \(max_channels\)"),
    (Opcode.SOFTMAX, dict(SAMPLES["softmax_lis"][1], cols=300), "exceeds max_seq_len 256 by 44"),
    (Opcode.SOFTMAX, dict(SAMPLES["softmax_lis"][1], mask_value=3), "mask_value 3 must be 0 or negative"),
    (Opcode.REQUANT, dict(SAMPLES["requant_int16"][1], gelu=1), "GELU applies to int8 outputs only"),
    (Opcode.MATMUL, dict(SAMPLES["matmul_int8_t0_act"][1], m=0), "m must be at least 1"),
    (Opcode.MATMUL, dict(SAMPLES["matmul_int8_t0_act"][1], a_stride=7), "a_stride = 7 is not a multiple"),
    (Opcode.ATTNV, dict(SAMPLES["attnv"][1], m=CFG.max_tile_rows + 1), "exceed max_tile_rows"),
])
def test_constraints_come_from_the_units(op, args, match):
    with pytest.raises(Violation, match=match):
        SPECS[op].check(CFG, {k: int(v) for k, v in args.items()})


def test_timing_is_the_engines():
    """Each opcode's timing is its engine module's timing function of the same fields."""
    from hw.core.dma import load_timing, store_timing
    from hw.core.tile_engine import tile_timing
    from hw.core.vector_engine import vector_timing
    ut = UnitTimings(CFG)
    checked = set()
    for name, (op, args) in SAMPLES.items():
        a = {k: int(v) for k, v in args.items()}
        t = SPECS[op].timing(CFG, a, ut)
        if op == Opcode.LOAD:
            assert t == load_timing(CFG, a)
        elif op == Opcode.STORE:
            assert t == store_timing(CFG, a)
        elif op in (Opcode.MATMUL, Opcode.ATTNV):
            assert t == tile_timing(CFG, a, "matrix" if op == Opcode.MATMUL else "attn")
        elif op != Opcode.HALT:
            assert t == vector_timing(CFG, op, a)
        checked.add(op)
    assert checked >= set(Opcode) - {Opcode.HALT}
    # A softmax row goes through the requantizer and one register (after the score bias
    # and mask) into the softmax unit, after one decode cycle and the N slots that set the
    # requantizer's multiplier; the retire pulse comes a cycle after the last write.
    a = {k: int(v) for k, v in SAMPLES["softmax_lis"][1].items()}
    rq = ut.requantizer(5)
    row = ut.chain(UnitTiming(rq.latency + 1, rq.interval), ut.softmax(5, SoftmaxMode.LIS), 5)
    assert SPECS[Opcode.SOFTMAX].timing(CFG, a, ut).done == 1 + CFG.lanes + row.total(3) + 1