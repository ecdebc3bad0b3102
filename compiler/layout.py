"""Step 2 of the compiler, DRAM layout: where every tensor and every constant lives.

DRAM holds two regions.  The *constants* (weights zero-padded to whole tiles, parameter
records, GELU tables, constant rows) are appended by the lowerers while they run
(:meth:`DramLayout.const`), at :data:`DRAM_ALIGN`-byte boundaries.  The *activations* follow
the constants; their addresses are relative to the start of that region until
:func:`compiler.lower.step_finalize` knows the size of the constants and relocates them.

:func:`step_layout` places, in this order: the graph inputs; the output of every
``concat_tokens`` (its prefix tokens are constant rows initialized in the DRAM image) and, as
an alias into it after the prefix, the concat's input when its producer can write there
directly (the *concat alias*: no copy); then the output of every op group in program order;
finally a fresh buffer for each graph output that is a view.  Five op kinds are *views* and
own no DRAM (:data:`VIEWS`): ``patchify`` (a :class:`PatchView`: consumers gather image
patches with strided loads), ``select_tokens`` (a :class:`RowsView`: consumers load the
selected rows) and Swin's ``window_partition``, ``window_reverse`` and ``patch_merge`` (a
:class:`GatherView`: the cyclic shift, the window order and the 2 x 2 merge become the
consumer's LOAD address patterns, no copy).

Every element of an activation is written once; each :class:`DramTensor` (the root of an
alias) records its STOREs so that a consumer's LOADs wait for exactly the STOREs of the
piece they read (see :meth:`compiler.context.LowerCtx.load_rows`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sw import intops
from sw.graph import IntGraph, Op

from .emitter import CompileError

__all__ = ["DRAM_ALIGN", "RECORD_WORDS", "DramTensor", "PatchView", "RowsView", "GatherView", "VIEWS",
           "ALIAS_PRODUCERS", "DramLayout", "step_layout", "ceil_to"]

#: Alignment of every constant and activation buffer in DRAM, in bytes.
DRAM_ALIGN = 64
#: Words of one per-channel parameter record in the parameter memory (docs/ISA.md).
RECORD_WORDS = 4
#: Group kinds whose lowerer writes its output row by row with STOREs into
#: :meth:`DramLayout.tensor`, and so can write straight after a concat's prefix tokens.
ALIAS_PRODUCERS = frozenset({"linear", "add", "layernorm", "gelu"})


def ceil_to(x: int, m: int) -> int:
    """``x`` rounded up to a multiple of ``m``."""
    return -(-x // m) * m


def _rows_cols(shape) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) == 1:
        return 1, shape[0]
    return int(np.prod(shape[:-1])), shape[-1]


@dataclass(eq=False)
class DramTensor:
    """A materialized tensor: ``rows`` x ``cols`` elements in the activation region of DRAM.

    ``addr`` is relative to the start of the activation region, which is placed after the
    constants once all of them are known (the emitted addresses are relocated then).
    """
    addr: int
    rows: int
    cols: int
    elem_bytes: int
    row_stride: int
    #: Graph tensor name (for the manifest).
    name: str = ""
    #: For a concat_tokens input: the concat output buffer it is a part of, from this row on.
    parent: "DramTensor | None" = None
    offset_rows: int = 0
    #: For a concat_tokens output: the constant prefix rows (int8), initialized in DRAM.
    const_prefix: np.ndarray | None = None
    #: STOREs into this tensor (kept on the root of an alias): ``(row0, row1, byte0, byte1,
    #: instruction)`` rectangles, disjoint since every element is written once.
    stores: list = field(default_factory=list)
    #: Written in scattered pieces (rows out of order), see ``compiler.context.MAX_PIECES``.
    scattered: bool = False

    @property
    def root(self) -> "DramTensor":
        return self.parent if self.parent is not None else self


@dataclass
class PatchView:
    """``patchify`` of an image tensor [C, H, W] stored flat in DRAM."""
    image: DramTensor
    channels: int
    height: int
    width: int
    patch: int


@dataclass
class GatherView:
    """A row gather of a tensor (Swin's views): row ``r`` of the view is, for each part
    ``(index, byte0, nbytes)``, source row ``index[r]`` written at byte ``byte0`` of the row
    (``nbytes`` = the source's row).  ``window_partition`` and ``window_reverse`` (one part:
    the cyclic shift and the window order) and ``patch_merge`` (four parts: the 2 x 2
    neighbourhood).  Consumers load through it with strided LOADs (one per run of source rows
    in arithmetic progression, several rows of a window merged into one LOAD row where they
    are contiguous on both sides)."""
    base: DramTensor
    parts: list
    rows: int
    cols: int
    #: Rows of one natural piece (a window; a grid row; a merged grid row): consumers chunk
    #: by whole pieces where they can, so that each piece is gathered in few LOADs.
    period: int = 1


@dataclass
class RowsView:
    """``select_tokens``: the listed rows of a tensor, flattened into one row."""
    base: DramTensor
    indices: list[int]


def _patch_view(layout: "DramLayout", op: Op) -> PatchView:
    src = op.inputs[0]
    p = layout.place[src]
    c, h, w = layout.graph.tensors[src].shape
    patch = int(op.attrs["patch"])
    if h % patch or w % patch:
        raise CompileError(f"op {op.name!r}: image {h}x{w} is not a multiple of patch {patch}")
    if not isinstance(p, DramTensor):
        raise CompileError(f"op {op.name!r}: patchify of a view is not supported")
    return PatchView(p, c, h, w, patch)


def _rows_view(layout: "DramLayout", op: Op) -> RowsView:
    p = layout.place[op.inputs[0]]
    if not isinstance(p, DramTensor):
        raise CompileError(f"op {op.name!r}: select_tokens of a view is not supported")
    return RowsView(p, [int(i) for i in op.attrs["indices"]])


def _gather_base(layout: "DramLayout", op: Op) -> DramTensor:
    p = layout.place[op.inputs[0]]
    if not isinstance(p, DramTensor):
        raise CompileError(f"op {op.name!r}: {op.kind} of a view is not supported")
    return p


def _window_view(layout: "DramLayout", op: Op) -> GatherView:
    """``window_partition`` / ``window_reverse``: the row order of :mod:`sw.intops`' own
    functions applied to the row indices."""
    base = _gather_base(layout, op)
    a = op.attrs
    fn = intops.window_partition if op.kind == "window_partition" else intops.window_reverse
    try:
        index = fn(np.arange(base.rows).reshape(1, -1, 1), a["grid"], a["window"], a["shift"])[0, :, 0]
    except ValueError as exc:
        raise CompileError(f"op {op.name!r}: {exc}") from None
    width = base.cols * base.elem_bytes
    h, w = (int(v) for v in a["grid"])
    wh, ww = (int(v) for v in a["window"])
    period = wh * ww if op.kind == "window_partition" else w
    return GatherView(base, [(index, 0, width)], base.rows, base.cols, period)


def _merge_view(layout: "DramLayout", op: Op) -> GatherView:
    """``patch_merge``: part ``p`` of merged token ``(r, s)`` is token ``(2r + i, 2s + j)``
    with ``p = 2 j + i`` (:func:`sw.intops.patch_merge`)."""
    base = _gather_base(layout, op)
    try:
        index = intops.patch_merge(np.arange(base.rows).reshape(1, -1, 1), op.attrs["grid"])[0]
    except ValueError as exc:
        raise CompileError(f"op {op.name!r}: {exc}") from None
    width = base.cols * base.elem_bytes
    parts = [(index[:, p], p * width, width) for p in range(4)]
    return GatherView(base, parts, index.shape[0], 4 * base.cols,
                      int(op.attrs["grid"][1]) // 2)


#: Op kinds whose output is a view of their input, and how the view is made.
VIEWS = {"patchify": _patch_view, "select_tokens": _rows_view, "window_partition": _window_view,
         "window_reverse": _window_view, "patch_merge": _merge_view}


class DramLayout:
    """The two DRAM regions and the placement of every graph tensor."""

    def __init__(self, graph: IntGraph):
        self.graph = graph
        #: The constants region (bytes), grown by :meth:`const`.
        self.params = bytearray()
        #: End of the activation region so far (relative to its start).
        self.act_top = 0
        #: Every activation buffer, in placement order.
        self.acts: list[DramTensor] = []
        #: Where each tensor is: a DramTensor or a view.
        self.place: dict[str, DramTensor | PatchView | RowsView | GatherView] = {}
        #: Graph outputs that are views: the buffer they are copied into at the end.
        self.materialized: dict[str, DramTensor] = {}

    # ------------------------------------------------------------------ constants
    def const(self, data: np.ndarray) -> int:
        """Place constant bytes in the DRAM constants region; returns the address."""
        pad = (-len(self.params)) % DRAM_ALIGN
        self.params.extend(b"\0" * pad)
        addr = len(self.params)
        self.params.extend(np.ascontiguousarray(data).tobytes())
        return addr

    def const_records(self, columns: list[np.ndarray], n: int) -> int:
        """``n`` int32 records of :data:`RECORD_WORDS` words: column ``j`` of record ``i`` is
        ``columns[j][i]`` (a one-element column applies to all records; records past a
        column's length and missing columns are 0)."""
        rec = np.zeros((n, RECORD_WORDS), dtype="<i4")
        for j, col in enumerate(columns):
            col = np.asarray(col, dtype=np.int64)
            intops.check_range(col, -(1 << 31), (1 << 31) - 1, "parameter record")
            if col.size == 1:
                rec[:, j] = col.reshape(())
            else:
                rec[:col.size, j] = col.ravel()
        return self.const(rec)

    # ------------------------------------------------------------------ activations
    def act(self, name: str, rows: int, cols: int, elem_bytes: int) -> DramTensor:
        """Reserve a DRAM activation buffer (address relative to the activation region)."""
        stride = cols * elem_bytes
        addr = self.act_top
        self.act_top = ceil_to(addr + rows * stride, DRAM_ALIGN)
        t = DramTensor(addr, rows, cols, elem_bytes, stride, name)
        self.acts.append(t)
        return t

    def elem_bytes(self, name: str) -> int:
        """Bytes per element of a graph tensor in DRAM (int8, or int16 above 8 bits)."""
        return 2 if self.graph.tensors[name].bits > 8 else 1

    def materialize(self, name: str) -> DramTensor:
        """Place tensor ``name`` in its own buffer unless it is placed already."""
        if name not in self.place:
            t = self.graph.tensors[name]
            rows, cols = _rows_cols(t.shape)
            self.place[name] = self.act(name, rows, cols, self.elem_bytes(name))
        return self.tensor(name)

    def tensor(self, name: str) -> DramTensor:
        """The DRAM buffer of a materialized tensor."""
        p = self.place.get(name)
        if not isinstance(p, DramTensor):
            raise CompileError(f"tensor {name!r} is not materialized in DRAM")
        return p

    def period(self, name: str) -> int:
        """Rows of one natural piece of a view (1 for a tensor): chunks of whole pieces
        gather in fewer LOADs."""
        p = self.place.get(name)
        return p.period if isinstance(p, GatherView) else 1

    def whole_pieces(self, name: str, m: int) -> int:
        """Chunk size ``m`` rounded down to whole pieces of ``name`` when it holds one."""
        period = self.period(name)
        return m - m % period if m >= period else m

    def dims(self, name: str) -> tuple[int, int]:
        """``(rows, columns)`` in which consumers read a placed tensor."""
        p = self.place[name]
        if isinstance(p, DramTensor):
            return p.rows, p.cols
        if isinstance(p, PatchView):
            return (p.height // p.patch) * (p.width // p.patch), p.channels * p.patch ** 2
        if isinstance(p, GatherView):
            return p.rows, p.cols
        return 1, p.base.cols * len(p.indices)


def _plan_concat_aliases(layout: DramLayout, groups) -> None:
    """Give each concat_tokens output its buffer, with the prefix tokens pre-initialized,
    and let the producer of its input write directly after them."""
    g = layout.graph
    producer = {grp.output: grp for grp in groups}
    for grp in groups:
        if grp.kind != "concat_tokens":
            continue
        op = grp.op
        out = layout.materialize(op.outputs[0])
        tokens = np.asarray(op.params["tokens"])
        out.const_prefix = tokens.astype(np.int8)
        x = op.inputs[0]
        prod = producer.get(x)
        if prod is not None and prod.kind in ALIAS_PRODUCERS and x not in g.outputs:
            p = tokens.shape[0]
            layout.place[x] = DramTensor(out.addr + p * out.row_stride, out.rows - p, out.cols,
                                         out.elem_bytes, out.row_stride, x, parent=out,
                                         offset_rows=p)


def step_layout(graph: IntGraph, groups) -> DramLayout:
    """Place every activation of the op ``groups`` (from :func:`compiler.fusion.step_fuse`)."""
    layout = DramLayout(graph)
    for name in graph.inputs:
        t = graph.tensors[name]
        rows, cols = _rows_cols(t.shape) if len(t.shape) != 3 else (1, int(np.prod(t.shape)))
        layout.place[name] = layout.act(name, rows, cols, layout.elem_bytes(name))
    _plan_concat_aliases(layout, groups)
    for grp in groups:
        if grp.kind in VIEWS:
            layout.place[grp.output] = VIEWS[grp.kind](layout, grp.op)
        elif grp.kind == "materialize":
            rows, cols = layout.dims(grp.output)
            layout.materialized[grp.output] = layout.act(grp.output, rows, cols,
                                                         layout.elem_bytes(grp.output))
        else:
            layout.materialize(grp.output)
    return layout
