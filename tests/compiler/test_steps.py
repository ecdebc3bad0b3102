"""The compiler's steps: fusion groups, DRAM layout, the lowerer registry, working-set fitting
against the allocators, and checks that defer to the hardware's own validation."""
import numpy as np
import pytest

from compiler import lowerers
from compiler.context import LowerCtx, need
from compiler.fusion import step_fuse
from compiler.isa import Opcode, encode_program
from compiler.layout import step_layout
from compiler.lower import CompileError, compile_graph, compile_steps
from compiler.testgraphs import tiny_vit
from hw.config import AcceleratorConfig
from hw.residual_add import residual_add_param_load_timing
from sw import intops
from sw.graph import IntGraph, Op, Tensor


def _cfg(n=4, spad_kib=16, acc_kib=4, **kw):
    return AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n,
                             scratchpad_kib=spad_kib, accumulator_kib=acc_kib, **kw)


def _ctx(graph, cfg):
    return LowerCtx(graph, cfg, step_layout(graph, step_fuse(graph)))


# ---------------------------------------------------------------------- fusion
def test_fusion_groups_cover_every_op_once():
    g = tiny_vit(depth=2)
    groups = step_fuse(g)
    members = [op.name for grp in groups for op in grp.ops]
    assert sorted(members) == sorted(op.name for op in g.ops)
    for grp in groups:
        assert [g.ops[i] for i in grp.indices] == list(grp.ops)
        assert grp.output == grp.ops[-1].outputs[0]
    attention = [grp for grp in groups if grp.kind == "attention"]
    assert len(attention) == 2
    assert all([op.kind for op in grp.ops] == ["qk_scores", "softmax", "attn_value"]
               for grp in attention)
    fc1 = next(grp for grp in groups if grp.op.name == "blocks.0.mlp.fc1")
    assert fc1.kind == "linear" and [op.kind for op in fc1.ops] == ["linear", "gelu"]


def test_gelu_not_fused_when_the_linear_output_is_also_read_elsewhere():
    g = tiny_vit()
    g.outputs.append("blocks.0.mlp.fc1.out")
    kinds = {grp.op.name: grp.kind for grp in step_fuse(g)}
    assert kinds["blocks.0.mlp.fc1"] == "linear" and kinds["blocks.0.mlp.act"] == "gelu"


def test_view_output_gets_a_materialize_group():
    g = tiny_vit(pool="distilled", prefix_tokens=2)
    g.outputs.append("pooled")
    last = step_fuse(g)[-1]
    assert (last.kind, last.output, last.op.kind) == ("materialize", "pooled", "select_tokens")
    steps = compile_steps(g, _cfg())
    copies = [i for i, ins in enumerate(steps.image.instructions)
              if ins.op == Opcode.STORE and steps.image.op_names[steps.image.instr_op[i]] == "pool"]
    assert copies, "the copy of the view is attributed to the op that made it"


# ---------------------------------------------------------------------- layout
def test_concat_alias_and_copy():
    g = tiny_vit(prefix_tokens=2)
    layout = compile_steps(g, _cfg()).layout
    emb, tokens = layout.place["patch_embed.out"], layout.place["tokens"]
    assert emb.parent is tokens and emb.offset_rows == 2
    assert emb.addr == tokens.addr + 2 * tokens.row_stride
    g = tiny_vit(prefix_tokens=2, embed="tokens")      # a graph input cannot be aliased
    layout = compile_steps(g, _cfg()).layout
    assert layout.place["patch_tokens"].parent is None


# ---------------------------------------------------------------------- registry
def test_every_group_kind_has_a_lowerer():
    for kw in (dict(), dict(pool="mean", fc_norm=True), dict(embed="tokens", pos_first=True)):
        for grp in step_fuse(tiny_vit(**kw)):
            assert grp.kind in lowerers.LOWERERS


def test_dispatch_goes_through_the_registry(monkeypatch):
    g, cfg = tiny_vit(depth=2), _cfg()
    reference = encode_program(compile_graph(g, cfg).instructions)
    seen = []
    original = lowerers.LOWERERS["layernorm"]

    def spy(group, ctx):
        seen.append(group.op.name)
        original(group, ctx)

    monkeypatch.setitem(lowerers.LOWERERS, "layernorm", spy)
    assert encode_program(compile_graph(g, cfg).instructions) == reference
    assert seen == [op.name for op in g.ops if op.kind == "layernorm"]


def test_kind_without_lowerer_is_refused(monkeypatch):
    monkeypatch.delitem(lowerers.LOWERERS, "token_mean")
    with pytest.raises(CompileError, match="op 'pool': unsupported op kind 'token_mean'"):
        compile_graph(tiny_vit(pool="mean"), _cfg())


def test_registering_a_kind_twice_is_an_error(monkeypatch):
    monkeypatch.setattr(lowerers, "LOWERERS", {})
    lowerers.lowerer("x")(lambda group, ctx: None)
    with pytest.raises(ValueError, match="'x' is already registered"):
        lowerers.lowerer("x")(lambda group, ctx: None)


def test_every_group_leaves_the_on_chip_memories_empty(monkeypatch):
    """Working sets are fitted against the free space when a group starts: each lowerer must
    release everything it allocated."""
    for kind, fn in list(lowerers.LOWERERS.items()):
        def checked(group, ctx, fn=fn):
            fn(group, ctx)
            assert not any(a.live for a in ctx.allocators.values()), group.kind
        monkeypatch.setitem(lowerers.LOWERERS, kind, checked)
    g = tiny_vit(seed=3, image=12, dim=16, pool="mean", fc_norm=True)
    g.outputs.append("patches")
    compile_graph(g, _cfg(spad_kib=4, acc_kib=1))


# ---------------------------------------------------------------------- working sets
def test_fit_chunk_is_the_largest_chunk_the_allocator_accepts():
    ctx = _ctx(tiny_vit(), _cfg(spad_kib=4, acc_kib=1))
    op = ctx.graph.ops[0]
    act = ctx.allocator("act")
    assert act.capacity == 1152 and act.align == 4

    def ws(m):                                      # 3 x 20 m bytes
        return {"rows": need("act", 20 * m, 3), "acc": need("acc", m)}

    m = ctx.fit_chunk(op, "test", ws, 100)
    sizes = [20 * m] * 3
    assert act.fits(sizes) and not act.fits([20 * (m + 1)] * 3)
    assert m == 19                                   # 3 x 380 fits 1152; 3 x 400 not
    for size in sizes:                               # and the allocator does place them
        ctx.alloc(need("act", size), "b")
    assert not ctx.fits(ws(1))                       # what is live counts


def test_alignment_counts_in_the_fit():
    ctx = _ctx(tiny_vit(), _cfg(n=16, spad_kib=4, acc_kib=1))
    act = ctx.allocator("act")                       # 16-byte rows: 17 bytes take 32
    assert act.capacity == 1152 and act.need([17] * 36) == 1152 and not act.fits([17] * 37)


def test_fit_chunk_error_names_op_memories_and_shortfall():
    ctx = _ctx(tiny_vit(), _cfg(spad_kib=4, acc_kib=1))
    op = ctx.graph.ops[1]
    with pytest.raises(CompileError) as info:
        ctx.fit_chunk(op, "linear", lambda m: {"x": need("act", 1100 + m), "y": need("act", 60),
                                               "a": need("acc", 190 * m + 7)}, 10)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == (f"op {op.name!r} (linear) does not fit even one row at a time: the act memory "
                   "needs 1164 bytes, the config has 1152 (short by 12 bytes); the acc memory "
                   "needs 200 words, the config has 192 (short by 8 words = 32 bytes)")


def test_tight_scratchpad_error_counts_alignment():
    """patch_embed.proj (K = 48, 16 outputs) on an 8 x 8 array: one weight strip of 8 x 48
    (384 bytes, the fewest in flight) in a 192-byte weight memory."""
    with pytest.raises(CompileError, match=r"op 'patch_embed.proj' \(linear\) does not fit even "
                                           r"one row.*the weight memory needs 384 bytes, the "
                                           r"config has 192 \(short by 192 bytes\)"):
        compile_graph(tiny_vit(), _cfg(n=8, spad_kib=1, acc_kib=1))


def test_long_k_keeps_fewer_weight_strips_in_flight():
    """Three weight strips of 8 x 48 do not fit a 768-byte weight memory; two do."""
    compile_graph(tiny_vit(), _cfg(n=8, spad_kib=4, acc_kib=1))


# ---------------------------------------------------------------------- checks
@pytest.mark.parametrize("lanes,max_channels,dim", [
    (4, 16, 16), (4, 8, 16), (8, 64, 12), (8, 64, 24), (4, 12, 12), (8, 12, 8)])
def test_channel_rule_is_the_hardwares(lanes, max_channels, dim):
    """The compiler refuses a residual-add row exactly when the unit's own check does, and
    passes its message on."""
    cfg = _cfg(n=lanes, max_channels=max_channels)
    g = tiny_vit(dim=dim, heads=2)
    try:
        residual_add_param_load_timing(cfg, dim)
        unit_error = None
    except ValueError as exc:
        unit_error = str(exc)
    if unit_error is None:
        compile_graph(g, cfg)
    else:
        with pytest.raises(CompileError) as info:
            compile_graph(g, cfg)
        assert str(info.value).startswith("op 'pos_embed': the residual add cannot run")
        assert str(info.value).endswith(unit_error)


def _one_linear(k):
    w = np.ones((2, k), dtype=np.int8)
    mult, shift = intops.dyadic(np.full(2, 0.01))
    tensors = {"x": Tensor("x", (1, k), 8, True, 1.0, 0), "y": Tensor("y", (1, 2), 8, True, 1.0, 0)}
    op = Op("fc", "linear", ["x"], ["y"], {"zp_out": 0, "out_bits": 8},
            {"weight": w, "bias": np.zeros(2, np.int32), "mult": mult.astype(np.int16),
             "shift": shift})
    return IntGraph(tensors, [op], ["x"], ["y"], {})


def test_field_limit_from_the_instruction_set():
    with pytest.raises(CompileError, match=r"op 'fc': input row stride of 65540 exceeds the "
                                           r"instruction's 16-bit field \(max 65535\) by 5"):
        compile_graph(_one_linear(65537), _cfg())


def test_illegal_field_becomes_a_compile_error_naming_the_op():
    ctx = _ctx(tiny_vit(), _cfg())
    ctx.at(2)
    with pytest.raises(CompileError, match=rf"op '{ctx.op_names[2]}': .*GELU_TABLE.src_addr"):
        ctx.emit(Opcode.GELU_TABLE, dict(src_addr=1 << 24))


def test_compile_steps_keeps_the_intermediates():
    g, cfg = tiny_vit(), _cfg()
    steps = compile_steps(g, cfg)
    assert [grp.kind for grp in steps.groups] == [grp.kind for grp in step_fuse(g)]
    assert set(steps.image.tensors) >= {t.name for t in steps.layout.acts}
    assert steps.ctx.em.instrs is steps.image.instructions
    assert encode_program(steps.image.instructions) == \
        encode_program(compile_graph(g, cfg).instructions)
