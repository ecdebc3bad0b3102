"""The ISA table: one spec per opcode, and its parts agree with each other.

The cycle model's hazard checker trusts :meth:`OpSpec.accesses`; these tests check it against
:meth:`OpSpec.execute`: an instruction changes no element outside its declared writes, and
its results depend on no element outside its declared reads.
"""
import numpy as np
import pytest

from compiler import isa
from compiler.isa import (SPECS, ArchState, MatMode, Opcode, OutType, Queue, SoftmaxMode,
                          Violation)
from hw.config import AcceleratorConfig
from hw.softmax import SoftmaxMode as HwSoftmaxMode
from hw.systolic_array import StreamMode
from hw.units import UnitTimings
from sw import intops

CFG = AcceleratorConfig(array_rows=2, array_cols=2, vector_lanes=2, scratchpad_kib=1,
                        accumulator_kib=1, max_channels=16)
DRAM = 4096
B_INT, C_INT = intops.lis_exp_constants(4)

#: One instruction per opcode / mode, with parameter records at ACC word 200 (see _state).
SAMPLES = {
    "load_spad": (Opcode.LOAD, dict(mem=0, dram_addr=100, dram_stride=10, dst_addr=40,
                                    dst_stride=12, rows=3, cols=7, pad=2)),
    "load_acc": (Opcode.LOAD, dict(mem=1, dram_addr=200, dram_stride=20, dst_addr=30,
                                   dst_stride=6, rows=2, cols=4, pad=0)),
    "store": (Opcode.STORE, dict(src_addr=50, src_stride=9, dram_addr=300, dram_stride=11,
                                 rows=3, cols=5)),
    **{f"matmul_{mode.name.lower()}_t{t}_a{acc}": (Opcode.MATMUL, dict(
        mode=mode, transpose=t, accumulate=acc, m=3, n_tiles=2, k_tiles=2, a_addr=10,
        a_stride=6, w_addr=100, w_stride=7, acc_addr=20, acc_stride=5))
       for mode in MatMode for t in (0, 1) for acc in (0, 1)},
    "requant_int8_gelu": (Opcode.REQUANT, dict(src_addr=20, src_stride=5, dst_addr=300,
                                               dst_stride=6, rows=3, cols=4, param_addr=200,
                                               load_params=1, per_channel=1, out_type=0, gelu=1)),
    "requant_int16": (Opcode.REQUANT, dict(src_addr=20, src_stride=5, dst_addr=300, dst_stride=9,
                                           rows=3, cols=4, param_addr=200, load_params=1,
                                           per_channel=0, out_type=1, gelu=0)),
    **{f"softmax_{mode.name.lower()}": (Opcode.SOFTMAX, dict(
        src_addr=20, src_stride=7, dst_addr=400, dst_stride=8, rows=3, cols=5, dst_cols=6,
        mode=mode, frac_bits=4, b_int=B_INT, c_int=C_INT, mult=3, shift=0)) for mode in SoftmaxMode},
    "layernorm": (Opcode.LAYERNORM, dict(src_addr=10, src_stride=9, dst_addr=500, dst_stride=8,
                                         rows=3, cols=6, param_addr=200, load_params=1, zp_in=-3)),
    "add": (Opcode.ADD, dict(a_addr=10, a_stride=9, b_addr=200, b_stride=0, dst_addr=500,
                             dst_stride=8, rows=3, cols=6, param_addr=200, load_params=1,
                             zp_a=2, zp_b=-1, zp_out=3)),
    "gelu": (Opcode.GELU, dict(src_addr=10, src_stride=9, dst_addr=500, dst_stride=8, rows=3, cols=6)),
    "gelu_table": (Opcode.GELU_TABLE, dict(src_addr=600)),
}


def _state(seed: int, op: Opcode, args: dict) -> ArchState:
    rng = np.random.default_rng(seed)
    st = ArchState(CFG, rng.integers(0, 256, size=(1, DRAM), dtype=np.uint8))
    lis = op == Opcode.MATMUL and args["mode"] == MatMode.LIS        # 4-bit codes streamed
    st.spad[:] = rng.integers(0, 16, size=st.spad.shape) if lis else \
        rng.integers(-128, 128, size=st.spad.shape)
    st.acc[:] = rng.integers(-3000, 3000, size=st.acc.shape)
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
        st.acc[0, 200:200 + 4 * n] = rec.ravel()
    if op == Opcode.SOFTMAX:
        st.acc[0, :] = rng.integers(-2000, 1, size=st.acc.shape[1])
    return st


def _mask(accesses, write: bool) -> dict[str, np.ndarray]:
    sizes = {"spad": CFG.scratchpad_bytes, "acc": CFG.accumulator_words, "dram": DRAM}
    masks = {m: np.zeros(n, bool) for m, n in sizes.items()}
    for a in accesses:
        if a.write == write:
            for r in range(a.rows):
                masks[a.mem][a.addr + r * a.stride:a.addr + r * a.stride + a.width] = True
    return masks


def _memories(st: ArchState) -> dict[str, np.ndarray]:
    return {"spad": st.spad[0].astype(np.int64), "acc": st.acc[0].copy(),
            "dram": st.dram[0].astype(np.int64)}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_execute_stays_inside_its_declared_accesses(name):
    op, args = SAMPLES[name]
    spec = SPECS[op]
    args = {k: int(v) for k, v in args.items()}
    spec.check(CFG, args)
    accesses = spec.accesses(CFG, args)
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


def test_mode_enums_are_the_hardware_units():
    assert MatMode is StreamMode and SoftmaxMode is HwSoftmaxMode
    fields = {f.name: f for f in SPECS[Opcode.MATMUL].fields}
    assert fields["mode"].enum is StreamMode and fields["mode"].hi == max(StreamMode)


@pytest.mark.parametrize("op,args,match", [
    (Opcode.LAYERNORM, dict(SAMPLES["layernorm"][1], cols=5), r"LayerNorm: channels must be a multiple of vector_lanes \(2\)"),
    (Opcode.ADD, dict(SAMPLES["add"][1], cols=18), r"residual add: .*2\.\.16 \(max_channels\)"),
    (Opcode.SOFTMAX, dict(SAMPLES["softmax_lis"][1], cols=300, dst_cols=300), "exceeds max_seq_len 256 by 44"),
    (Opcode.REQUANT, dict(SAMPLES["requant_int16"][1], gelu=1), "GELU applies to int8 outputs only"),
    (Opcode.MATMUL, dict(SAMPLES["matmul_int8_t0_a0"][1], m=0), "m must be at least 1"),
])
def test_constraints_come_from_the_units(op, args, match):
    with pytest.raises(Violation, match=match):
        SPECS[op].check(CFG, {k: int(v) for k, v in args.items()})


def test_timing_uses_the_unit_formulas():
    ut = UnitTimings(CFG)
    a = {k: int(v) for k, v in SAMPLES["softmax_lis"][1].items()}
    t = SPECS[Opcode.SOFTMAX].timing(CFG, a, ut)
    row = ut.chain(ut.requantizer(5), ut.softmax(5, SoftmaxMode.LIS), 5)
    assert t.busy == t.done == row.total(3) and t.channel == 0
    a = {k: int(v) for k, v in SAMPLES["load_spad"][1].items()}
    t = SPECS[Opcode.LOAD].timing(CFG, a, ut)
    beats = -(-9 // CFG.dram_bytes_per_cycle)                 # 7 bytes + 2 of padding a row
    assert (t.busy, t.channel, t.done) == (3 * beats, 3 * beats, 3 * beats + CFG.dram_latency_cycles)
    assert SPECS[Opcode.REQUANT].timing(CFG, {k: int(v) for k, v in SAMPLES["requant_int16"][1].items()},
                                        ut).done == 1 + ut.requantizer(4).total(3)
