"""Swin on the cycle model: the window partition / reverse with the cyclic shift, patch
merging, windowed attention with the relative position bias and the shift mask, bit-exact
with the integer executor on every DRAM tensor, the hazard checker clean, no token droppable
silently; the compiler's gathers and its refusals."""
import copy

import numpy as np
import pytest

from compiler.emitter import UnsupportedOpsError
from compiler.isa import Opcode
from compiler.lower import compile_graph
from compiler.testgraphs import random_image, shift_mask, tiny_swin
from hw.config import AcceleratorConfig
from hw.units import UnitTimings
from sim.machine import ProgramError, simulate
from sw.executor import execute


def _cfg(n, spad_kib=16, acc_kib=4, **kw):
    return AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n, scratchpad_kib=spad_kib,
                             accumulator_kib=acc_kib, **kw)


def _check(graph, cfg, seed=0):
    img = random_image(graph, seed)
    ref = execute(graph, img[None], keep=True)
    prog = compile_graph(graph, cfg)
    res = simulate(prog, {graph.inputs[0]: img})
    for name, place in prog.tensors.items():
        np.testing.assert_array_equal(place.read(res.dram), ref[name][0], err_msg=name)
    for name in graph.outputs:
        np.testing.assert_array_equal(res.outputs[name], ref[name][0])
    return prog, res


@pytest.mark.parametrize("n,kw", [
    (2, dict(image=16, patch=2, dim=8, depths=(2, 2), heads=(2, 4), window=4)),
    (4, dict(image=16, patch=2, dim=8, depths=(2, 2), heads=(2, 4), window=4)),
    (8, dict(image=16, patch=2, dim=16, depths=(2, 2), heads=(2, 4), window=4, softmax_mode="uniform")),
    (4, dict(image=12, patch=2, dim=12, depths=(3,), heads=(3,), window=3, bias=False)),  # 3x3 windows
    (2, dict(image=24, patch=2, dim=4, depths=(2, 2), heads=(1, 2), window=3)),         # 12x12 grid
    (4, dict(image=16, patch=2, dim=8, depths=(1, 1), heads=(2, 2), window=4, shift="all")),
    (4, dict(image=32, patch=4, dim=16, depths=(2,), heads=(2,), window=8, shift="all",
             spad_kib=64)),                                                         # 8x8: one window
])
def test_bit_exact_tiny_swins(n, kw):
    spad = kw.pop("spad_kib", 16)
    _check(tiny_swin(seed=n, **kw), _cfg(n, spad_kib=spad))


def test_shifted_windows_use_the_mask_and_bias():
    g = tiny_swin(seed=1, image=16, patch=2, dim=8, depths=(2,), heads=(2,), window=4)
    prog, _ = _check(g, _cfg(4))
    soft = [i.args for i in prog.instructions if i.op == Opcode.SOFTMAX]
    assert all(a["bias"] for a in soft)
    masked = [a for a in soft if a["mask_value"]]
    assert masked and all(0 <= a["keep_lo"] < a["keep_hi"] <= 16 for a in masked)


def test_window_gathers_are_few_loads():
    """An unshifted window of whole rows is one LOAD (its rows in arithmetic progression),
    a window cut by the shift one per rectangular piece: 1 + 2 + 2 + 4 for the four
    windows of an 8 x 8 grid shifted by (2, 2)."""
    n, C = 4, 8
    cfg = _cfg(n)
    g = tiny_swin(seed=2, image=16, patch=2, dim=C, depths=(2,), heads=(2,), window=4)
    prog = compile_graph(g, cfg)
    act = cfg.regions["act"]
    for b, want in ((0, 4), (1, 9)):
        idx = prog.op_names.index(f"layers.0.blocks.{b}.attn.qkv")
        loads = [i for k, i in enumerate(prog.instructions)
                 if prog.instr_op[k] == idx and i.op == Opcode.LOAD and i.args["mem"] == 0
                 and act.base <= i.args["dst_addr"] < act.end]
        assert len(loads) == want, (b, [(i.args["rows"], i.args["cols"]) for i in loads])


def test_dropping_any_token_of_a_swin_block_is_harmless_or_reported():
    cfg = _cfg(4)
    g = tiny_swin(seed=3, image=8, patch=2, dim=8, depths=(1,), heads=(2,), window=2, shift="all")
    prog = compile_graph(g, cfg)
    timings = UnitTimings(cfg).load()
    base = simulate(prog, functional=False, timings=timings)
    pairs = []
    for b, ins in enumerate(prog.instructions):
        for s in range(5):
            if ins.wait >> s & 1:
                a = max(k for k in range(b) if prog.instructions[k].signal >> int(ins.queue) & 1
                        and int(prog.instructions[k].queue) == s)
                pairs.append((s, int(ins.queue), a, b))
    reported = unchanged = 0
    for s, d, a, b in pairs[::3]:
        dropped = copy.deepcopy(prog)
        dropped.instructions[a].signal &= ~(1 << d)
        dropped.instructions[b].wait &= ~(1 << s)
        try:
            res = simulate(dropped, functional=False, timings=timings)
        except ProgramError as exc:
            assert "hazard" in str(exc) or "token" in str(exc).lower()
            reported += 1
            continue
        assert np.array_equal(res.start, base.start), f"token {s}->{d} ({a} -> {b}) dropped silently"
        unchanged += 1
    assert reported > 0


def test_a_mask_of_another_form_is_refused():
    g = tiny_swin(seed=4, image=16, patch=2, dim=8, depths=(2,), heads=(2,), window=4)
    qk = next(op for op in g.ops if op.kind == "qk_scores" and "mask" in op.params)
    mask = qk.params["mask"].copy()
    w = int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])
    mask[w, 0, 1] = -7 if mask[w, 0, 1] == 0 else 0        # one query sees another region's key
    qk.params["mask"] = mask
    with pytest.raises(UnsupportedOpsError, match="is not a shift mask"):
        compile_graph(g, _cfg(4))


def test_shift_mask_matches_timm_regions():
    m = shift_mask((8, 8), (4, 4), (2, 2), -100)
    assert m.shape == (4, 16, 16) and not m[0].any() and m[3].any()
    # the last window: four regions of 2 x 2 tokens
    assert sorted(np.unique((m[3] == 0).sum(axis=1))) == [4]
