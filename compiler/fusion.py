"""Step 1 of the compiler, pattern fusion: the graph's ops become the groups that are lowered.

:func:`step_fuse` walks the ops in program order and returns one :class:`Group` per unit of
lowering, its ``kind`` naming the lowerer in :data:`compiler.lowerers.LOWERERS`:

``linear``      a linear layer, with the GELU that follows it fused in (requantized through
                the GELU table) when the GELU is its only consumer, its output is internal
                and int8.
``attention``   ``qk_scores -> softmax -> attn_value`` on one qkv tensor, with internal
                scores and probabilities: computed head by head on chip.  A softmax or an
                attention-times-value op outside this pattern is refused.
``layernorm``, ``add``, ``gelu``   row-wise vector ops, one group each.
``token_mean``  the mean over tokens.
``patchify``, ``select_tokens``, ``concat_tokens``   views and the concat: no computation
                (:mod:`compiler.layout` decides how they are stored).
``materialize`` appended last for each graph output that is a view
                (:data:`compiler.layout.VIEWS`): a copy into a buffer of its own.

Any other op kind gets a group of its own kind; :func:`compiler.lower.step_lower` refuses it
if no lowerer is registered for it.
"""
from __future__ import annotations

from dataclasses import dataclass

from sw.graph import IntGraph, Op

from .emitter import CompileError
from .layout import VIEWS

__all__ = ["Group", "step_fuse"]


@dataclass(frozen=True)
class Group:
    """Ops lowered together.  ``indices`` are the ops' positions in the graph (instructions
    are attributed to them); ``output`` is the tensor the group produces."""
    kind: str
    ops: tuple[Op, ...]
    indices: tuple[int, ...]
    output: str

    @property
    def op(self) -> Op:
        """The first op (the one errors about the whole group name)."""
        return self.ops[0]

    def index(self, op: Op) -> int:
        """Graph position of a member op."""
        return self.indices[self.ops.index(op)]


def _single_consumer(graph: IntGraph, consumers: dict, tensor: str, kind: str) -> Op | None:
    users = consumers.get(tensor, [])
    if len(users) == 1 and users[0].kind == kind and tensor not in graph.outputs:
        return users[0]
    return None


def step_fuse(graph: IntGraph) -> list[Group]:
    """The op groups of ``graph``, in program order."""
    consumers: dict[str, list[Op]] = {}
    for op in graph.ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    position = {op.name: i for i, op in enumerate(graph.ops)}
    groups: list[Group] = []
    fused: set[str] = set()

    def group(kind: str, *ops: Op) -> None:
        groups.append(Group(kind, ops, tuple(position[o.name] for o in ops), ops[-1].outputs[0]))
        fused.update(o.name for o in ops)

    for op in graph.ops:
        if op.name in fused:
            continue
        if op.kind == "linear":
            gelu = _single_consumer(graph, consumers, op.outputs[0], "gelu")
            if gelu is not None and op.attrs["out_bits"] == 8:
                group("linear", op, gelu)
            else:
                group("linear", op)
        elif op.kind == "qk_scores":
            sm = _single_consumer(graph, consumers, op.outputs[0], "softmax")
            av = _single_consumer(graph, consumers, sm.outputs[0], "attn_value") if sm else None
            if av is None or av.inputs[1] != op.inputs[0]:
                raise CompileError(f"op {op.name!r}: only qk_scores -> softmax -> attn_value on "
                                   "the same qkv tensor, with internal scores and probabilities, "
                                   "is supported")
            group("attention", op, sm, av)
        elif op.kind in ("softmax", "attn_value"):
            raise CompileError(f"op {op.name!r} ({op.kind}) is only supported as part of "
                               "qk_scores -> softmax -> attn_value")
        else:
            group(op.kind, op)
    view_outputs = {g.output: g for g in groups if g.kind in VIEWS}
    for name in graph.outputs:
        if name in view_outputs:
            producer = view_outputs[name]
            groups.append(Group("materialize", producer.ops, producer.indices, name))
    return groups
