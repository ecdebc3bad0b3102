"""The compiler: an integer graph and a config become a :class:`~compiler.program.ProgramImage`.

Execution model (docs/ISA.md has the details).  Every graph tensor that an op produces lives
in DRAM; an op streams its inputs into the scratchpad, computes, and streams its output back.
Weights and per-channel parameters are laid out in DRAM at compile time, already padded to
the array's tile size.

The compiler is a pipeline of named steps, each a function of the previous one's result:

1. :func:`compiler.fusion.step_fuse` ``(graph) -> groups``: the ops grouped into units of
   lowering: a linear layer with its GELU, ``qk_scores -> softmax -> attn_value`` as
   head-by-head attention that never leaves the chip, row-wise vector ops, the token mean,
   the views, and copies of graph outputs that are views.
2. :func:`compiler.layout.step_layout` ``(graph, groups) -> DramLayout``: every activation's
   place in DRAM, the views (``patchify``, ``select_tokens``) and the concat aliases.
3. :func:`step_lower` ``(groups, ctx)``: each group through its lowerer in
   :data:`compiler.lowerers.LOWERERS`, with the shared :class:`~compiler.context.LowerCtx`
   (DMA helpers, working-set fitting against the allocators, unit and field checks), then
   HALT.  The lowerers append the constants to the layout as they go.
4. :func:`step_finalize` ``(ctx) -> ProgramImage``: the activation region placed after the
   constants and every activation address relocated, the initial DRAM image (constants and
   the concat prefix tokens) and the placement of every tensor.

:func:`compile_graph` runs the four steps; :func:`compile_steps` runs them and keeps every
intermediate result (for debugging and tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw.config import AcceleratorConfig
from sw.graph import IntGraph

from .context import LowerCtx, field_of
from .emitter import CompileError, UnsupportedOpsError
from .fusion import Group, step_fuse
from .isa import Opcode
from .layout import DRAM_ALIGN, DramLayout, DramTensor, ceil_to, step_layout
from .lowerers import LOWERERS
from .program import ProgramImage, TensorPlacement

__all__ = ["compile_graph", "compile_steps", "CompileSteps", "CompileError", "UnsupportedOpsError",
           "check_accelerator_ops", "step_fuse",
           "step_layout", "step_lower", "step_finalize"]


def step_lower(groups: list[Group], ctx: LowerCtx) -> None:
    """Emit every group through the lowerer registered for its kind, then HALT."""
    for group in groups:
        lower = LOWERERS.get(group.kind)
        if lower is None:
            raise CompileError(f"op {group.op.name!r}: unsupported op kind {group.kind!r}")
        ctx.at(group.indices[0])
        lower(group, ctx)
    ctx.at(len(ctx.graph.ops) - 1)
    ctx.em.halt()


def step_finalize(ctx: LowerCtx) -> ProgramImage:
    """Place the activation region after the constants, relocate, build the DRAM image."""
    layout, graph = ctx.layout, ctx.graph
    base = ceil_to(len(layout.params), DRAM_ALIGN)
    size = base + layout.act_top
    addr = min((field_of(op, "dram_addr") for op in (Opcode.LOAD, Opcode.STORE)),
               key=lambda f: f.hi)
    if size > addr.hi:
        raise CompileError(f"DRAM image of {size} bytes exceeds the {addr.bits}-bit address "
                           f"space by {size - addr.hi} bytes")
    for i in ctx.reloc:
        ctx.em.instrs[i].args["dram_addr"] += base
    init = np.zeros(base, dtype=np.uint8)
    init[:len(layout.params)] = np.frombuffer(bytes(layout.params), dtype=np.uint8)
    placements = {}

    def placement(name: str, t: DramTensor) -> TensorPlacement:
        gt = graph.tensors[name]
        return TensorPlacement(name, base + t.addr, t.rows, t.cols, t.elem_bytes, t.row_stride,
                               tuple(gt.shape), gt.signed)

    for t in layout.acts:
        if t.const_prefix is not None:
            start = base + t.addr
            prefix = t.const_prefix.astype(np.int8).view(np.uint8).ravel()
            grown = np.zeros(start + prefix.size, dtype=np.uint8)
            grown[:len(init)] = init
            grown[start:] = prefix
            init = grown
        placements[t.name] = placement(t.name, t)
    for name, p in layout.place.items():
        if isinstance(p, DramTensor) and p.parent is not None:
            placements[name] = placement(name, p)
    return ProgramImage(
        config=ctx.cfg, instructions=ctx.em.instrs, dram_init=init, dram_size=size,
        inputs=[placements[n] for n in graph.inputs],
        outputs=[placements[n] for n in graph.outputs],
        tensors=placements, op_names=ctx.op_names,
        instr_op=ctx.em.instr_op, instr_macs=ctx.em.instr_macs,
        info={"graph": dict(graph.info)})


#: Op kinds the accelerator runs (the others, from I-ViT and PTQ4ViT graphs, wait for their units).
LOWERED_KINDS = ("patchify", "linear", "concat_tokens", "add", "layernorm", "qk_scores", "softmax",
                 "attn_value", "gelu", "select_tokens", "token_mean", "window_partition",
                 "window_reverse", "patch_merge")


def check_accelerator_ops(graph: IntGraph) -> None:
    """Raise :class:`UnsupportedOpsError` naming every op the accelerator cannot run yet:
    op kinds without a unit, 8-bit kinds asked for another output width (W6A6) and low-bit
    operands (Q-ViT's 2-4 bit weights and activations: the array multiplies int8 only)."""
    bad: dict[str, list[str]] = {}
    for op in graph.ops:
        what = None
        if op.kind not in LOWERED_KINDS:
            what = op.kind
        elif op.kind == "linear" and op.attrs.get("weight_bits", 8) != 8:
            what = f"linear with {op.attrs['weight_bits']}-bit weights"
        elif op.kind == "linear" and op.attrs["out_bits"] not in (8, 16):
            what = f"linear with {op.attrs['out_bits']}-bit output"
        elif op.kind == "attn_value" and op.attrs.get("out_bits", 8) != 8:
            what = f"attn_value with {op.attrs['out_bits']}-bit output"
        elif op.kind == "layernorm" and op.attrs.get("out_bits", 8) != 8:
            what = f"layernorm with {op.attrs['out_bits']}-bit output"
        if what is not None:
            bad.setdefault(what, []).append(op.name)
    if bad:
        parts = [f"{kind} ({len(names)}: {', '.join(names[:2])}{', ...' if len(names) > 2 else ''})"
                 for kind, names in bad.items()]
        method = graph.info.get("method", "fqvit")
        raise UnsupportedOpsError(f"the accelerator does not run these ops of this {method} graph yet: "
                                  + "; ".join(parts))


@dataclass
class CompileSteps:
    """Every intermediate result of one compilation."""
    groups: list[Group]
    layout: DramLayout
    ctx: LowerCtx
    image: ProgramImage


def compile_steps(graph: IntGraph, config: AcceleratorConfig) -> CompileSteps:
    """Run the compiler's steps and keep their results."""
    graph.validate()
    check_accelerator_ops(graph)
    groups = step_fuse(graph)
    layout = step_layout(graph, groups)
    ctx = LowerCtx(graph, config, layout)
    step_lower(groups, ctx)
    return CompileSteps(groups, layout, ctx, step_finalize(ctx))


def compile_graph(graph: IntGraph, config: AcceleratorConfig) -> ProgramImage:
    """Compile ``graph`` for ``config``; :class:`CompileError` says what does not fit, and
    :class:`UnsupportedOpsError` which ops the accelerator does not run yet.

    :func:`compile_steps` does the same and also returns the groups, the DRAM layout and the
    lowering context.
    """
    return compile_steps(graph, config).image
