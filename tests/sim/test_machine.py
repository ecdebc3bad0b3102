"""Cycle-level model: bit-exact with sw.executor, the sequencer's timing rules, malformed programs.

The model's cycles are checked against the RTL's in tests/sim/test_cosim.py; here the rules of
hw/core/sequencer.py are checked on small programs, with the engines' own timing functions
(each checked against its RTL in tests/hw/)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from compiler.asm import assemble
from compiler.isa import ErrorCode
from compiler.emitter import CompileError
from compiler.lower import compile_graph
from compiler.program import ProgramImage
from compiler.testgraphs import random_image, tiny_vit
from hw.config import AcceleratorConfig
from sim.machine import ProgramError, simulate
from sw.executor import execute


def _cfg(n, spad_kib=16, acc_kib=4, **kw):
    return AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n, scratchpad_kib=spad_kib,
                             accumulator_kib=acc_kib, **kw)


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


@pytest.mark.parametrize("n,graph_kw", [
    (2, dict()),                                                     # 5 tokens
    (4, dict(image=12, dim=24, heads=3, softmax_mode="uniform")),     # 10 tokens, dh = 8
    (2, dict(image=10, patch=2, dim=12, heads=2, pool="mean")),      # 26 tokens, dh = 6
    (8, dict(image=16, dim=32, heads=4, depth=2, prefix_tokens=2)),  # 18 tokens, dh = 8
    (4, dict(image=12, patch=3, dim=20, heads=5, mlp_ratio=3, classes=7)),  # 17 tokens, dh = 4
    (8, dict(image=12, patch=3, dim=24, heads=4, classes=7)),         # dh = 6, padded to 8
])
def test_bit_exact_tiny_vits(n, graph_kw, unit_timings):
    cfg = _cfg(n)
    _check_bit_exact(tiny_vit(seed=3 * n, **graph_kw), cfg, unit_timings(cfg))


@pytest.mark.parametrize("n,graph_kw", [
    (2, dict(pool="distilled", prefix_tokens=2)),                      # two tokens into the head
    (4, dict(pool="mean", fc_norm=True)),                              # LayerNorm of a [D] vector
    (2, dict(embed="tokens")),                                         # input: the patch tokens
    (4, dict(embed="tokens", pos_first=True, pool="distilled", prefix_tokens=2)),
    (4, dict(pos_first=True, pool="mean", fc_norm=True, prefix_tokens=0)),
])
def test_bit_exact_quantizer_variants(n, graph_kw, unit_timings):
    """The graph shapes the quantizer emits besides the plain class-token ViT."""
    cfg = _cfg(n)
    _check_bit_exact(tiny_vit(seed=5 * n, **graph_kw), cfg, unit_timings(cfg))


def test_token_input_copied_in_chunks(unit_timings):
    """A graph input concatenated after the prefix tokens is copied through a scratchpad too
    small to hold it at once."""
    cfg = _cfg(4, spad_kib=8, acc_kib=2)
    g = tiny_vit(seed=2, image=36, dim=32, heads=8, embed="tokens", pool="distilled",
                 prefix_tokens=2)                 # 81 x 32 input bytes, a 256-byte copy region
    g.outputs.append("pooled")                  # a select_tokens view as a graph output
    prog, _ = _check_bit_exact(g, cfg, unit_timings(cfg))
    copies = [i for i, ins in enumerate(prog.instructions)
              if ins.op.name == "STORE" and prog.op_names[prog.instr_op[i]] == "cls_token"]
    assert len(copies) > 1


def test_batch_runs_in_one_pass(unit_timings):
    """A batch of inputs gives, sample by sample, the executor's integers and the timing of a
    single-sample run."""
    cfg = _cfg(4)
    g = tiny_vit(seed=4, image=12, dim=16, pool="distilled", prefix_tokens=2)
    imgs = np.stack([random_image(g, s) for s in range(5)])
    ref = execute(g, imgs, keep=True)
    prog = compile_graph(g, cfg)
    res = simulate(prog, {g.inputs[0]: imgs}, timings=unit_timings(cfg))
    assert res.dram.shape == (5, prog.dram_size)
    for name, place in prog.tensors.items():
        got = np.stack([place.read(d) for d in res.dram])
        np.testing.assert_array_equal(got, ref[name], err_msg=name)
    np.testing.assert_array_equal(res.outputs["logits"], ref["logits"])
    single = simulate(prog, {g.inputs[0]: imgs[3]}, timings=unit_timings(cfg))
    assert single.cycles == res.cycles
    np.testing.assert_array_equal(single.outputs["logits"], ref["logits"][3])


@pytest.mark.parametrize("value,match", [
    (np.zeros((8, 8), np.int8), r"has shape \(8, 8\); the program expects \(3, 8, 8\)"),
    (np.full((3, 8, 8), 128), r"values in \[128, 128\], outside int8"),
    (np.zeros((3, 8, 8)), "must be an integer array"),
])
def test_bad_inputs(value, match, unit_timings):
    cfg = _cfg(4)
    prog = compile_graph(tiny_vit(), cfg)
    with pytest.raises(ProgramError, match=match):
        simulate(prog, {"image": value}, timings=unit_timings(cfg))
    with pytest.raises(ProgramError, match="missing input 'image'"):
        simulate(prog, {}, timings=unit_timings(cfg))


def test_bit_exact_when_chunked(unit_timings):
    """A scratchpad / accumulator so small that every op runs in many chunks."""
    cfg = _cfg(4, spad_kib=4, acc_kib=1)
    prog, _ = _check_bit_exact(tiny_vit(seed=3, image=12, dim=16), cfg, unit_timings(cfg))
    assert sum(i.op.name == "MATMUL" for i in prog.instructions) > 40


def test_real_unit_timings_bit_exact():
    cfg = _cfg(4)
    _, res = _check_bit_exact(tiny_vit(seed=1, image=8, dim=16), cfg, None)
    assert res.cycles > 0


# ------------------------------------------------------------------ the sequencer's rules
# N = 2, read latency 10, segments of 16 instructions; 2 KiB of scratchpad regions: act 0..,
# weight 576.., prob 960.., codes 1088.., value 1216.., vin 1344.., vin2 1600.., out 1728..,
# copy 1984..; accumulator: acc 0.., attn_acc 192..; param 0..
HAND = dict(array_rows=2, array_cols=2, vector_lanes=2, scratchpad_kib=2, accumulator_kib=1,
            dram_latency_cycles=10, dram_write_latency_cycles=4, instr_buffer=16)
_REGIONS = AcceleratorConfig(**HAND).regions
WEIGHT, VIN, VIN2, OUT = (_REGIONS[r].base for r in ("weight", "vin", "vin2", "out"))


def _image(text, **cfg_kw):
    cfg = AcceleratorConfig(**{**HAND, **cfg_kw})
    return ProgramImage(cfg, assemble(text), np.zeros(0, np.uint8), 4096, [], [], {}, ["op"],
                        [0] * len(assemble(text)), [0] * len(assemble(text)))


def _run(text, timings, **kw):
    img = _image(text, **kw)
    return simulate(img, functional=False, timings=timings(img.config))


LOAD = "LOAD wait={w} signal={s} mem=SPAD dram_addr=0 dram_stride=8 dst_addr={d} dst_stride=8 rows={r} cols={c} pad=0\n"
STORE = "STORE wait={w} signal={s} src_addr=%d src_stride=8 dram_addr=1024 dram_stride=8 rows={r} cols={c}\n" % OUT
MATMUL = ("MATMUL wait={w} signal={s} mode=INT8 transpose=1 m={m} n_tiles={n} k_tiles=1 "
          "a_addr=0 a_stride=2 w_addr=%d w_stride=2 acc_addr=0 acc_stride=4\n" % WEIGHT)
GTAB = "GELU_TABLE wait={w} signal=- src_addr=%d\n" % VIN


def _fetch_end(cfg, request, instructions):
    """The last beat of a segment fetch requested at ``request`` (one beat a cycle)."""
    return request + cfg.dram_latency_cycles + instructions * 32 // cfg.lanes - 1


def test_halt_only(unit_timings):
    from hw.core.decoder import DECODE_LATENCY
    res = _run("HALT", unit_timings)
    cfg = AcceleratorConfig(**HAND)
    # Fetch requested at 1, read at f + 1, decoded from f + 2, verdict L later; the run
    # ends in the cycle after the verdict and counts it.
    v = _fetch_end(cfg, 1, 1) + 2 + DECODE_LATENCY
    assert res.cycles == v + 2
    assert res.schedule.fetches == [(0, 1, 1, _fetch_end(cfg, 1, 1))]


def test_load_then_matmul(unit_timings):
    from hw.core.decoder import DECODE_LATENCY as L
    from hw.core.dma import load_timing
    from hw.core.tile_engine import tile_timing
    text = LOAD.format(w="-", s="MATRIX", d=0, r=2, c=8) + MATMUL.format(w="LOAD", s="-", m=4, n=1) + "HALT"
    res = _run(text, unit_timings)
    img = _image(text)
    cfg = img.config
    f = _fetch_end(cfg, 1, 3)
    v0 = f + 2 + L                                 # LOAD pushed at its verdict
    assert res.schedule.push[0] == v0 and res.start[0] == v0 + 1
    lt = load_timing(cfg, img.instructions[0].args)
    _, load_retire, _ = lt.schedule(v0 + 1, 0)
    assert res.retire[0] == load_retire
    # The MATMUL is decoded from the LOAD's push; it starts the cycle after the token.
    assert res.schedule.push[1] == v0 + L
    assert res.start[1] == load_retire + 1 and res.cause[1] == 0 and res.wait[1] > 0
    assert res.retire[1] == res.start[1] + tile_timing(cfg, img.instructions[1].args).done
    assert res.cycles == int(res.retire[1]) + 2        # ends the cycle after the last retire
    assert res.schedule.busy[0] == load_retire - res.start[0] + 1


def test_queue_fifo_holds_dispatch(unit_timings):
    """Twelve long MATMULs: from the ninth on, an instruction is pushed only once the one
    QUEUE_DEPTH earlier has left the FIFO (started)."""
    from hw.core.decoder import DECODE_LATENCY as L
    from hw.core.sequencer import QUEUE_DEPTH as D
    mm = MATMUL.format(w="-", s="-", m=90, n=1).replace("a_stride=2", "a_stride=0")
    text = mm.replace("acc_stride=4", "acc_stride=2") * 12 + "HALT"
    res = _run(text, unit_timings)
    push, start = res.schedule.push, res.start
    for i in range(1, 12):
        want = push[i - 1] + L if i < D else max(push[i - 1] + L, start[i - D] + 1)
        assert push[i] == want, i
    assert push[11] > push[10] + L                  # the FIFO bound binds
    assert all(start[i + 1] == res.busy_end[i] for i in range(11))   # back to back


def test_segments_wait_for_the_load_queue(unit_timings):
    """The second segment is fetched once the first is dispatched and every LOAD retired."""
    body = LOAD.format(w="-", s="-", d=VIN, r=4, c=8) * 15
    text = body + LOAD.format(w="-", s="-", d=VIN, r=1, c=8) + "HALT"
    res = _run(text, unit_timings)
    (s0, n0, r0, f0), (s1, n1, r1, f1) = res.schedule.fetches
    assert (s0, n0, s1, n1) == (0, 16, 16, 1)
    w = max(int(res.schedule.push[15]) + 1, int(res.retire[15]) + 1)
    assert r1 == w + 1 and f1 == _fetch_end(AcceleratorConfig(**HAND), r1, 1)


# ------------------------------------------------------------------ malformed programs
def test_deadlock_is_reported_not_hung(unit_timings):
    text = LOAD.format(w="MATRIX", s="MATRIX", d=0, r=1, c=4) + MATMUL.format(w="LOAD", s="LOAD", m=1, n=1) + "HALT"
    with pytest.raises(ProgramError, match="deadlock.*LOAD at instruction 0.*MATRIX") as info:
        _run(text, unit_timings)
    assert info.value.code == ErrorCode.DEADLOCK


def test_missing_halt(unit_timings):
    img = _image(LOAD.format(w="-", s="-", d=0, r=1, c=4) + "HALT")
    img.instructions.pop()
    with pytest.raises(ProgramError, match="missing halt") as info:
        simulate(img, functional=False, timings=unit_timings(img.config))
    assert info.value.code == ErrorCode.NO_HALT


@pytest.mark.parametrize("text,match,code", [
    (LOAD.format(w="-", s="-", d=WEIGHT - 4, r=1, c=8),
     r"destination reaches scratchpad bytes 572\.\.579, outside the act / weight / value / vin "
     r"/ vin2 / copy regions", ErrorCode.RANGE),
    (f"STORE wait=- signal=- src_addr={OUT} src_stride=0 dram_addr=1024 dram_stride=8 rows=500 cols=8\n",
     "DRAM side reaches DRAM bytes 1024..5023, beyond its 4096 bytes", ErrorCode.RANGE),
    (MATMUL.format(w="-", s="-", m=150, n=1).replace("a_stride=2", "a_stride=4"),
     r"streaming operand reaches scratchpad bytes 0\.\.597, outside the act / prob regions "
     r"\(act 0\.\.575, prob 960\.\.1087\)", ErrorCode.RANGE),
    (MATMUL.format(w="-", s="-", m=300, n=1), "m = 300 streaming rows exceed max_tile_rows 256",
     ErrorCode.CONSTRAINT),
    ("SOFTMAX wait=- signal=- src_addr=0 src_stride=300 dst_addr=1088 dst_stride=300 rows=1 cols=300 "
     "mode=LIS frac_bits=4 b_int=0 c_int=0 mult=1 shift=0 bias=0 bias_addr=0 keep_lo=0 keep_hi=0 "
     "mask_value=0\n", "max_seq_len",
     ErrorCode.CONSTRAINT),
    (f"LAYERNORM wait=- signal=- src_addr={VIN} src_stride=4 dst_addr={OUT} dst_stride=4 rows=1 cols=3 "
     "param_addr=0 load_params=0 zp_in=0\n", "multiple of the LayerNorm's lanes", ErrorCode.CONSTRAINT),
    (f"ADD wait=- signal=- a_addr={VIN} a_stride=4 b_addr={VIN2} b_stride=4 dst_addr={OUT} dst_stride=4 "
     "rows=1 cols=3 param_addr=0 load_params=0 zp_a=0 zp_b=0 zp_out=0\n",
     "residual add: channels must be a multiple of vector_lanes \\(2\\)", ErrorCode.CONSTRAINT),
    (f"GELU wait=- signal=- src_addr={VIN + 1} src_stride=4 dst_addr={OUT} dst_stride=4 rows=1 cols=4\n",
     f"src_addr = {VIN + 1} is not a multiple of the datapath width 2", ErrorCode.CONSTRAINT),
    (f"GELU wait=- signal=- src_addr=0 src_stride=4 dst_addr={OUT} dst_stride=4 rows=1 cols=4\n",
     "source reaches .* outside the vin region", ErrorCode.RANGE),
    (LOAD.format(w="-", s="-", d=0, r=0, c=8), "rows must be at least 1", ErrorCode.CONSTRAINT),
])
def test_out_of_range_and_unit_limits(text, match, code, unit_timings):
    with pytest.raises(ProgramError, match=match) as info:
        _run(text + "HALT", unit_timings)
    assert info.value.code == code and info.value.index == 0


def test_semaphore_overflow(unit_timings, monkeypatch):
    """More outstanding tokens than the 16-bit counter holds (shrunk to 2 here) is an error."""
    from sim import schedule
    monkeypatch.setattr(schedule, "TOKEN_LIMIT", 2)
    body = LOAD.format(w="-", s="MATRIX", d=0, r=1, c=4) * 6 + MATMUL.format(w="LOAD", s="-", m=1, n=1) * 6
    with pytest.raises(ProgramError, match="instruction 2 \\(LOAD\\): semaphore LOAD->MATRIX exceeds 2"):
        _run(body + "HALT", unit_timings)


def test_unconsumed_tokens(unit_timings):
    with pytest.raises(ProgramError, match="unconsumed tokens: LOAD->MATRIX: 1"):
        _run(LOAD.format(w="-", s="MATRIX", d=0, r=1, c=4) + "HALT", unit_timings)


def test_parameters_never_loaded(unit_timings):
    text = (f"ADD wait=- signal=- a_addr={VIN} a_stride=2 b_addr={VIN2} b_stride=2 dst_addr={OUT} "
            "dst_stride=2 rows=1 cols=2 param_addr=0 load_params=0 zp_a=0 zp_b=0 zp_out=0\nHALT")
    img = _image(text)
    with pytest.raises(ProgramError, match="never loaded"):
        simulate(img, {}, functional=True, timings=unit_timings(img.config))


def test_saved_image_runs_the_same(tmp_path, unit_timings):
    cfg = _cfg(4)
    g = tiny_vit(seed=5)
    prog = compile_graph(g, cfg)
    prog.save(tmp_path / "prog")
    back = ProgramImage.load(tmp_path / "prog")
    img = random_image(g, 1)
    a = simulate(prog, {g.inputs[0]: img}, timings=unit_timings(cfg))
    b = simulate(back, {g.inputs[0]: img}, timings=unit_timings(cfg))
    assert a.cycles == b.cycles
    np.testing.assert_array_equal(a.outputs["logits"], b.outputs["logits"])


@settings(max_examples=8, deadline=None)
@given(n=st.sampled_from([2, 4, 8]), width=st.sampled_from([4, 6, 8]),
       image=st.sampled_from([8, 12]), prefix=st.integers(0, 2),
       mode=st.sampled_from(["lis", "uniform"]), pool=st.sampled_from(["token", "mean"]),
       spad_kib=st.sampled_from([4, 16]), acc_kib=st.sampled_from([1, 4]))
def test_bit_exact_random_configs(n, width, image, prefix, mode, pool, spad_kib, acc_kib):
    """Every datapath width, odd head sizes, with and without prefix tokens, small memories."""
    from hw.units import UnitTimings
    cfg = _cfg(n, spad_kib=spad_kib, acc_kib=acc_kib)
    dim = 2 * n * width
    g = tiny_vit(seed=n * width + prefix, image=image, dim=dim, heads=2, prefix_tokens=prefix,
                 softmax_mode=mode, pool=pool)
    try:
        compile_graph(g, cfg)
    except CompileError:
        assume(False)               # this config is too small for the model: a clear error, not a bug
    _check_bit_exact(g, cfg, UnitTimings(cfg))
