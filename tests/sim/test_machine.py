"""Cycle-level model: bit-exact with sw.executor, hand-computed timing, malformed programs."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from compiler.asm import assemble
from compiler.emitter import CompileError
from compiler.lower import compile_graph
from compiler.program import ProgramImage
from compiler.testgraphs import random_image, tiny_vit
from hw.config import AcceleratorConfig
from sim.machine import ProgramError, simulate
from sw.executor import execute


def _cfg(rc, lanes, spad_kib=16, acc_kib=4, **kw):
    return AcceleratorConfig(array_rows=rc, array_cols=rc, vector_lanes=lanes,
                             scratchpad_kib=spad_kib, accumulator_kib=acc_kib, **kw)


def _check_bit_exact(graph, cfg, timings, seed=0):
    img = random_image(graph, seed)
    ref = execute(graph, img[None], keep=True)
    prog = compile_graph(graph, cfg)
    res = simulate(prog, {graph.inputs[0]: img}, timings=timings)
    assert prog.tensors, "nothing to compare"
    for name, place in prog.tensors.items():
        got = place.read(res.dram)
        np.testing.assert_array_equal(got, ref[name][0], err_msg=name)
    for name in graph.outputs:
        np.testing.assert_array_equal(res.outputs[name], ref[name][0])
    return prog, res


@pytest.mark.parametrize("rc,lanes,graph_kw", [
    (2, 2, dict()),                                                  # 5 tokens
    (4, 4, dict(image=12, dim=24, heads=3, softmax_mode="uniform")),  # 10 tokens, dh = 8
    (4, 2, dict(image=10, patch=2, dim=12, heads=2, pool="mean")),   # 26 tokens, dh = 6 (padded)
    (8, 8, dict(image=16, dim=32, heads=4, depth=2, prefix_tokens=2)),  # 18 tokens, dh = 8
    (8, 4, dict(image=12, patch=3, dim=20, heads=5, mlp_ratio=3, classes=7)),  # 17 tokens
])
def test_bit_exact_tiny_vits(rc, lanes, graph_kw, hand_timings):
    cfg = _cfg(rc, lanes)
    _check_bit_exact(tiny_vit(seed=rc + lanes, **graph_kw), cfg, hand_timings(cfg))


@pytest.mark.parametrize("rc,lanes,graph_kw", [
    (2, 2, dict(pool="distilled", prefix_tokens=2)),                   # two tokens into the head
    (4, 4, dict(pool="mean", fc_norm=True)),                           # LayerNorm of a [D] vector
    (4, 2, dict(embed="tokens")),                                      # input: the patch tokens
    (8, 4, dict(embed="tokens", pos_first=True, pool="distilled", prefix_tokens=2)),
    (4, 4, dict(pos_first=True, pool="mean", fc_norm=True, prefix_tokens=0)),
])
def test_bit_exact_quantizer_variants(rc, lanes, graph_kw, hand_timings):
    """The graph shapes the quantizer emits besides the plain class-token ViT."""
    cfg = _cfg(rc, lanes)
    _check_bit_exact(tiny_vit(seed=rc * lanes, **graph_kw), cfg, hand_timings(cfg))


def test_token_input_copied_in_chunks(hand_timings):
    """A graph input concatenated after the prefix tokens is copied through a scratchpad too
    small to hold it at once."""
    cfg = _cfg(4, 4, spad_kib=2, acc_kib=2)
    g = tiny_vit(seed=2, image=36, dim=32, heads=8, embed="tokens", pool="distilled",
                 prefix_tokens=2)                 # 81 x 32 input bytes, 2 KiB scratchpad
    g.outputs.append("pooled")                  # a select_tokens view as a graph output
    prog, _ = _check_bit_exact(g, cfg, hand_timings(cfg))
    copies = [i for i, ins in enumerate(prog.instructions)
              if ins.op.name == "STORE" and prog.op_names[prog.instr_op[i]] == "cls_token"]
    assert len(copies) > 1


def test_batch_runs_in_one_pass(hand_timings):
    """A batch of inputs gives, sample by sample, the executor's integers and the timing of a
    single-sample run."""
    cfg = _cfg(4, 4)
    g = tiny_vit(seed=4, image=12, dim=16, pool="distilled", prefix_tokens=2)
    imgs = np.stack([random_image(g, s) for s in range(5)])
    ref = execute(g, imgs, keep=True)
    prog = compile_graph(g, cfg)
    res = simulate(prog, {g.inputs[0]: imgs}, timings=hand_timings(cfg))
    assert res.dram.shape == (5, prog.dram_size)
    for name, place in prog.tensors.items():
        got = np.stack([place.read(d) for d in res.dram])
        np.testing.assert_array_equal(got, ref[name], err_msg=name)
    np.testing.assert_array_equal(res.outputs["logits"], ref["logits"])
    single = simulate(prog, {g.inputs[0]: imgs[3]}, timings=hand_timings(cfg))
    assert single.cycles == res.cycles
    np.testing.assert_array_equal(single.outputs["logits"], ref["logits"][3])


@pytest.mark.parametrize("value,match", [
    (np.zeros((8, 8), np.int8), r"has shape \(8, 8\); the program expects \(3, 8, 8\)"),
    (np.full((3, 8, 8), 128), r"values in \[128, 128\], outside int8"),
    (np.zeros((3, 8, 8)), "must be an integer array"),
])
def test_bad_inputs(value, match, hand_timings):
    cfg = _cfg(4, 4)
    prog = compile_graph(tiny_vit(), cfg)
    with pytest.raises(ProgramError, match=match):
        simulate(prog, {"image": value}, timings=hand_timings(cfg))
    with pytest.raises(ProgramError, match="missing input 'image'"):
        simulate(prog, {}, timings=hand_timings(cfg))


def test_bit_exact_when_chunked(hand_timings):
    """A scratchpad / accumulator so small that every op runs in many chunks."""
    cfg = _cfg(4, 4, spad_kib=2, acc_kib=1)
    prog, _ = _check_bit_exact(tiny_vit(seed=3, image=12, dim=16), cfg, hand_timings(cfg))
    assert sum(i.op.name == "MATMUL" for i in prog.instructions) > 40


def test_real_unit_timings_bit_exact():
    cfg = _cfg(4, 4)
    _, res = _check_bit_exact(tiny_vit(seed=1, image=8, dim=16), cfg, None)
    assert res.cycles > 0


# ------------------------------------------------------------------ hand-computed timing
# Config for hand computation: R = C = 2, L = 2, DRAM 4 B/cycle, latency 10.
HAND = dict(array_rows=2, array_cols=2, vector_lanes=2, scratchpad_kib=1, accumulator_kib=1,
            dma_bytes_per_cycle=4, dram_bytes_per_cycle=4, dram_latency_cycles=10)


def _image(text, **cfg_kw):
    cfg = AcceleratorConfig(**{**HAND, **cfg_kw})
    return ProgramImage(cfg, assemble(text), np.zeros(0, np.uint8), 4096, [], [], {}, ["op"],
                        [0] * len(assemble(text)), [0] * len(assemble(text)))


def _run(text, timings, **kw):
    img = _image(text, **kw)
    return simulate(img, functional=False, timings=timings(img.config))


LOAD = "LOAD wait={w} signal={s} mem=SPAD dram_addr=0 dram_stride=8 dst_addr={d} dst_stride=8 rows={r} cols={c} pad=0\n"
STORE = "STORE wait={w} signal={s} src_addr=0 src_stride=8 dram_addr=1024 dram_stride=8 rows={r} cols={c}\n"
MATMUL = ("MATMUL wait={w} signal={s} mode=INT8 transpose=1 accumulate=0 m={m} n_tiles={n} k_tiles=1 "
          "a_addr=0 a_stride=2 w_addr=64 w_stride=2 acc_addr=0 acc_stride=4\n")
GTAB = "GELU_TABLE wait={w} signal=- src_addr=0\n"


def test_load_then_matmul(hand_timings):
    # LOAD: 2 rows x ceil(8 / 4) = 4 beats: busy 0..4, done 4 + 10 = 14.
    # MATMUL m = 4, one tile: latency m + 5 = 9, starts at the token (14): done 23.
    res = _run(LOAD.format(w="-", s="MATRIX", d=0, r=2, c=8) + MATMUL.format(w="LOAD", s="-", m=4, n=1)
               + "HALT", hand_timings)
    assert list(res.start[:2]) == [0, 14]
    assert list(res.retire[:2]) == [14, 23]
    assert res.cycles == 23
    assert res.wait[1] == 14 and res.cause[1] == 0            # waited on a LOAD token


def test_dram_channel_arbitration(hand_timings):
    # Both ready at 0; the tie goes to LOAD (4 beats: 16 bytes); the STORE (2 beats) gets the
    # channel at 4, busy to 6, done 16; the LOAD is done at 14.
    res = _run(LOAD.format(w="-", s="-", d=512, r=1, c=16) + STORE.format(w="-", s="-", r=1, c=8)
               + "HALT", hand_timings)
    assert list(res.start[:2]) == [0, 4]
    assert list(res.retire[:2]) == [14, 16]
    assert res.cause[1] == 4 and res.wait[1] == 4              # waited on the DRAM channel


def test_matmul_pipelines_back_to_back(hand_timings):
    # M1: m = 4, 2 tiles: interval 5, latency 9: busy 0..10, done 0 + 5 + 9 = 14.
    # M2: starts at 10 (no drain), one tile: done 19.
    res = _run(MATMUL.format(w="-", s="-", m=4, n=2) + MATMUL.format(w="-", s="-", m=4, n=1) + "HALT",
               hand_timings)
    assert list(res.start[:2]) == [0, 10]
    assert list(res.busy_end[:2]) == [10, 15]
    assert list(res.retire[:2]) == [14, 19]


def test_in_order_retire(hand_timings):
    # With latency 20 - m: M1 (m = 1) done 19; M2 (m = 8) starts at 1 (interval 1), done
    # 1 + 12 = 13, but retires after M1: 19.  Its token lets GELU_TABLE start at 19: 19 + 256.
    from hw.timing import UnitTiming
    from hw.units import UnitTimings
    from hand_timings import HAND_FORMULAS
    formulas = dict(HAND_FORMULAS, systolic_array=lambda c, m: UnitTiming(20 - m, m))
    res = _run(MATMUL.format(w="-", s="-", m=1, n=1) + MATMUL.format(w="-", s="VECTOR", m=8, n=1)
               + GTAB.format(w="MATRIX") + "HALT", lambda cfg: UnitTimings(cfg, formulas))
    assert list(res.retire[:3]) == [19, 19, 275]
    assert res.cycles == 275


def test_vector_chain_and_parameter_records(hand_timings):
    # GELU_TABLE 256 cycles; REQUANT of 3 rows x 4 columns with 4 per-channel records and
    # GELU: P = 4, requant (2 beats) latency 5 interval 2, gelu latency 3 interval 2:
    # chained, the 2 beats passed between them counted once: latency 5 + 3 - 2 = 6,
    # interval 2: 256 + 4 + 2 * 2 + 6 = 270.
    text = (GTAB.format(w="-") +
            "REQUANT wait=- signal=- src_addr=0 src_stride=4 dst_addr=0 dst_stride=4 rows=3 cols=4 "
            "param_addr=64 load_params=1 per_channel=1 out_type=INT8 gelu=1\nHALT")
    res = _run(text, hand_timings)
    assert list(res.retire[:2]) == [256, 270]


def test_layernorm_rows_back_to_back(hand_timings):
    # 4 channels = 2 beats: latency 2*2 + 40 = 44, interval max(2, 19) = 19; 3 rows and no
    # records loaded: 44 + 2 * 19 = 82.
    text = ("LAYERNORM wait=- signal=- src_addr=0 src_stride=4 dst_addr=64 dst_stride=4 rows=3 "
            "cols=4 param_addr=0 load_params=0 zp_in=0\nHALT")
    assert _run(text, hand_timings).cycles == 82


# ------------------------------------------------------------------ malformed programs
def test_deadlock_is_reported_not_hung(hand_timings):
    text = LOAD.format(w="MATRIX", s="MATRIX", d=0, r=1, c=4) + MATMUL.format(w="LOAD", s="LOAD", m=1, n=1) + "HALT"
    with pytest.raises(ProgramError, match="deadlock.*LOAD at instruction 0.*MATRIX"):
        _run(text, hand_timings)


def test_missing_halt(hand_timings):
    img = _image(LOAD.format(w="-", s="-", d=0, r=1, c=4) + "HALT")
    img.instructions.pop()
    with pytest.raises(ProgramError, match="missing halt"):
        simulate(img, functional=False, timings=hand_timings(img.config))


@pytest.mark.parametrize("text,match", [
    (LOAD.format(w="-", s="-", d=1020, r=1, c=8), "scratchpad bytes 1020..1027.*out of range by 4"),
    ("STORE wait=- signal=- src_addr=0 src_stride=0 dram_addr=1024 dram_stride=8 rows=500 cols=8\n",
     "DRAM side reaches DRAM bytes 1024..5023, beyond its 4096 bytes"),
    (MATMUL.format(w="-", s="-", m=600, n=1), "streaming operand.*out of range by 176"),
    ("SOFTMAX wait=- signal=- src_addr=0 src_stride=300 dst_addr=0 dst_stride=300 rows=1 cols=300 "
     "dst_cols=300 mode=LIS frac_bits=4 b_int=0 c_int=0 mult=1 shift=0\n", "max_seq_len"),
    ("LAYERNORM wait=- signal=- src_addr=0 src_stride=3 dst_addr=0 dst_stride=3 rows=1 cols=3 "
     "param_addr=0 load_params=0 zp_in=0\n", "multiple of vector_lanes"),
    ("ADD wait=- signal=- a_addr=0 a_stride=3 b_addr=0 b_stride=3 dst_addr=8 dst_stride=3 "
     "rows=1 cols=3 param_addr=0 load_params=0 zp_a=0 zp_b=0 zp_out=0\n",
     "residual add: channels must be a multiple of vector_lanes \\(2\\)"),
    (LOAD.format(w="-", s="-", d=0, r=0, c=8), "rows must be at least 1"),
])
def test_out_of_range_and_unit_limits(text, match, hand_timings):
    with pytest.raises(ProgramError, match=match):
        _run(text + "HALT", hand_timings)


def test_semaphore_overflow(hand_timings, monkeypatch):
    """More outstanding tokens than the 16-bit counter holds (shrunk to 2 here) is an error."""
    from sim import machine
    monkeypatch.setattr(machine, "TOKEN_LIMIT", 2)
    body = LOAD.format(w="-", s="MATRIX", d=0, r=1, c=4) * 3 + MATMUL.format(w="LOAD", s="-", m=1, n=1) * 3
    with pytest.raises(ProgramError, match="instruction 2 \\(LOAD\\): semaphore LOAD->MATRIX exceeds 2"):
        _run(body + "HALT", hand_timings)


def test_unconsumed_tokens(hand_timings):
    with pytest.raises(ProgramError, match="unconsumed tokens: LOAD->MATRIX: 1"):
        _run(LOAD.format(w="-", s="MATRIX", d=0, r=1, c=4) + "HALT", hand_timings)


def test_parameters_never_loaded(hand_timings):
    text = ("ADD wait=- signal=- a_addr=0 a_stride=2 b_addr=0 b_stride=2 dst_addr=8 dst_stride=2 "
            "rows=1 cols=2 param_addr=0 load_params=0 zp_a=0 zp_b=0 zp_out=0\nHALT")
    img = _image(text)
    with pytest.raises(ProgramError, match="never loaded"):
        simulate(img, {}, functional=True, timings=hand_timings(img.config))


def test_saved_image_runs_the_same(tmp_path, hand_timings):
    cfg = _cfg(4, 4)
    g = tiny_vit(seed=5)
    prog = compile_graph(g, cfg)
    prog.save(tmp_path / "prog")
    back = ProgramImage.load(tmp_path / "prog")
    img = random_image(g, 1)
    a = simulate(prog, {g.inputs[0]: img}, timings=hand_timings(cfg))
    b = simulate(back, {g.inputs[0]: img}, timings=hand_timings(cfg))
    assert a.cycles == b.cycles
    np.testing.assert_array_equal(a.outputs["logits"], b.outputs["logits"])


@settings(max_examples=8, deadline=None)
@given(rows=st.sampled_from([2, 3, 5, 8]), cols=st.sampled_from([2, 3, 6, 8]),
       lanes=st.sampled_from([1, 2, 4]), width=st.sampled_from([4, 6, 8]),
       image=st.sampled_from([8, 12]), prefix=st.integers(0, 2),
       mode=st.sampled_from(["lis", "uniform"]), pool=st.sampled_from(["token", "mean"]),
       spad_kib=st.sampled_from([4, 16]), acc_kib=st.sampled_from([1, 4]))
def test_bit_exact_random_configs(rows, cols, lanes, width, image, prefix, mode, pool, spad_kib,
                                  acc_kib):
    """Non-square arrays, odd sizes, one-lane vector units, with and without prefix tokens."""
    from hand_timings import HAND_FORMULAS
    from hw.units import UnitTimings
    cfg = AcceleratorConfig(array_rows=rows, array_cols=cols, vector_lanes=lanes,
                            scratchpad_kib=spad_kib, accumulator_kib=acc_kib)
    dim = 2 * lanes * width if lanes > 1 else 2 * width
    g = tiny_vit(seed=rows * cols + lanes, image=image, dim=dim, heads=2, prefix_tokens=prefix,
                 softmax_mode=mode, pool=pool)
    try:
        compile_graph(g, cfg)
    except CompileError:
        assume(False)               # this config is too small for the model: a clear error, not a bug
    _check_bit_exact(g, cfg, UnitTimings(cfg, HAND_FORMULAS))
