"""The per-group lowerers and their registry, :data:`LOWERERS` (step 3 of the compiler).

A lowerer is a callable ``lowerer(group, ctx)`` that emits the instructions of one
:class:`~compiler.fusion.Group` through a :class:`~compiler.context.LowerCtx`; it is
registered for a group kind with ``@lowerer("kind")``.  Supporting a new op kind (or a new
fused pattern) means writing one lowerer and registering it; :func:`compiler.lower.step_lower`
dispatches on ``group.kind`` and refuses kinds without a lowerer.

Every buffer lives in the on-chip memory (region) of its producer and consumer
(``hw.config.SPAD_REGIONS``, ``ACC_REGIONS``, ``param``): e.g. ``act`` for rows a LOAD brings
for the array to stream, ``out`` for what a vector unit writes for a STORE.  Each lowerer
declares its working set once, as a function ``need(m)`` of its chunk size
giving every buffer it allocates per chunk (and per op) with the copies kept in flight; the
same function chooses the chunk size (:meth:`~compiler.context.LowerCtx.fit_chunk`) and
sizes every allocation (:meth:`~compiler.context.LowerCtx.alloc`).  Buffers are freed as soon
as their last use is emitted, so with next-fit allocation the loads of the next strip / head
/ chunk run ahead into free space while the array works on the current one.

Lowering of each group kind
    linear         for each chunk of tokens: load x; for each strip of ``C`` output channels:
                   load the weight strip, one MATMUL over all ``K / R`` tiles, REQUANT (with
                   the strip's parameter records, through the GELU table when a GELU is
                   fused), STORE the strip.
    attention      per head: load q, k (zero-padded to the tile) and v; per chunk of query
                   rows: MATMUL q @ k^T into the accumulator, SOFTMAX (requantize to int16,
                   LIS codes / probabilities into the scratchpad), then ATTNV codes @ v on
                   the attention unit (Log-Int-Softmax: so the array already runs the next
                   chunk's q @ k^T) or MATMUL probabilities @ v (8-bit softmax), REQUANT,
                   STORE the head's columns.
    layernorm, add, gelu   per chunk of rows: load, one vector instruction, store
                   (:class:`RowwiseLowerer`).
    token_mean     a MATMUL of a constant 0/1 row by the tokens, REQUANT with the zero-point
                   correction as bias.
    patchify, select_tokens   nothing: consumers load through the view.
    concat_tokens  nothing when the producer of its input wrote after the prefix tokens (the
                   concat alias); otherwise a copy of the input through the scratchpad.
    materialize    a copy of a view that is a graph output into its own buffer.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from hw.layernorm import layernorm_beats
from hw.residual_add import residual_add_param_load_timing
from hw.softmax import softmax_timing
from sw import intops
from sw.graph import Op

from .context import MAX_ROWS, LowerCtx, _progressions, need as reserve
from .emitter import Buffer, CompileError, UnsupportedOpsError
from .fusion import Group
from .isa import NO_SCORE_BIAS, MatMode, Opcode, OutType, SoftmaxMode
from .layout import RECORD_WORDS, DramTensor, ceil_to

__all__ = ["LOWERERS", "lowerer", "RowwiseLowerer", "VECTOR_CHUNK_BYTES"]

#: Group kind -> lowerer.
LOWERERS: dict[str, Callable[[Group, LowerCtx], None]] = {}

#: Bytes a row-wise chunk aims for (rows per chunk = this / row bytes).
VECTOR_CHUNK_BYTES = 4096
#: Copies of each per-chunk buffer kept in flight.
IN_FLIGHT = 3


def lowerer(*kinds: str):
    """Register the decorated callable (a function, or a class instantiated once) as the
    lowerer of group ``kinds``."""
    def register(obj):
        fn = obj() if isinstance(obj, type) else obj
        for kind in kinds:
            if kind in LOWERERS:
                raise ValueError(f"a lowerer for {kind!r} is already registered")
            LOWERERS[kind] = fn
        return obj
    return register


# ---------------------------------------------------------------------- views and copies
@lowerer("patchify", "select_tokens", "window_partition", "window_reverse", "patch_merge")
def lower_view(group: Group, ctx: LowerCtx) -> None:
    """No instruction: :func:`compiler.layout.step_layout` made the output a view."""


def copy_rows(ctx: LowerCtx, op: Op, src: str, out: DramTensor, row0: int, rows: int,
              row_bytes: int) -> None:
    """Copy tensor ``src`` into rows ``row0..`` of ``out`` through the scratchpad, in chunks
    of rows that fit."""
    def need(m):
        return {"rows": reserve("copy", m * row_bytes)}

    m = ctx.fit_chunk(op, "copy", need, min(rows, MAX_ROWS))
    for t0 in range(0, rows, m):
        mc = min(m, rows - t0)
        buf = ctx.alloc(need(mc)["rows"], f"{op.name} copy")
        ctx.load_rows(src, t0, mc, buf, 0, row_bytes)
        ctx.store_rows(out, row0 + t0, mc, 0, buf, row_bytes, row_bytes // out.elem_bytes)
        ctx.free(buf)


@lowerer("concat_tokens")
def lower_concat(group: Group, ctx: LowerCtx) -> None:
    op = group.op
    out = ctx.layout.tensor(group.output)
    x = op.inputs[0]
    px = ctx.layout.place[x]
    if isinstance(px, DramTensor) and px.parent is out:
        return                           # the producer already wrote into the buffer
    rows, cols = ctx.layout.dims(x)
    copy_rows(ctx, op, x, out, out.const_prefix.shape[0], rows, cols * out.elem_bytes)


@lowerer("materialize")
def lower_materialize(group: Group, ctx: LowerCtx) -> None:
    name = group.output
    out = ctx.layout.materialized[name]
    rows, cols = ctx.layout.dims(name)
    copy_rows(ctx, group.op, name, out, 0, rows, cols * out.elem_bytes)


def load_gelu_table(ctx: LowerCtx, op: Op) -> None:
    """Place a GELU op's table in DRAM and load it into the GELU unit (GELU_TABLE)."""
    table = np.asarray(op.params["table"], dtype=np.int8).ravel()
    depth = ctx.cfg.gelu_lut_depth
    if table.size != depth:
        raise CompileError(f"op {op.name!r}: GELU table of {table.size} entries, the unit "
                           f"holds {depth}")
    addr = ctx.layout.const(table)
    tb = ctx.alloc(reserve("vin", depth), f"{op.name} table")
    ctx.load_const(addr, 1, depth, depth, tb, depth)
    ctx.emit(Opcode.GELU_TABLE, dict(src_addr=tb.addr), reads=[tb])
    ctx.free(tb)


# ---------------------------------------------------------------------- linear
@lowerer("linear")
def lower_linear(group: Group, ctx: LowerCtx) -> None:
    op = group.op
    gelu = group.ops[1] if len(group.ops) > 1 else None
    layout, R, C = ctx.layout, ctx.R, ctx.C
    x = op.inputs[0]
    ctx.check_int8_input(op, x)
    w = np.asarray(op.params["weight"])
    n_out, k_in = w.shape
    T, K = layout.dims(x)
    if K != k_in:
        raise CompileError(f"op {op.name!r}: input has {K} columns, weight expects {k_in}")
    Kp, Np = ceil_to(K, R), ceil_to(n_out, C)
    eb = 2 if op.attrs["out_bits"] == 16 else 1
    ctx.check_field(op, Opcode.MATMUL, "a_stride", Kp, "input row stride")
    ctx.check_field(op, Opcode.LOAD, "dst_stride", Np * eb, "output row stride")
    wpad = np.zeros((Np, Kp), dtype=np.int8)
    wpad[:n_out, :K] = w
    w_addr = layout.const(wpad)
    rec_addr = layout.const_records(
        [op.params["bias"], op.params["mult"], op.params["shift"], [int(op.attrs["zp_out"])]], Np)
    intops.check_range(np.asarray(op.params["mult"]), intops.INT16_MIN, intops.INT16_MAX,
                       f"{op.name} mult")

    def need(m, cols=C, copies=IN_FLIGHT):
        """Per chunk of ``m`` tokens: its input rows, and per strip of ``cols`` output
        channels the weight strip (``copies`` in flight: fewer than ``IN_FLIGHT`` only when
        that many strips of a long ``K`` do not fit), accumulators, parameter records and
        output rows."""
        return {"x": reserve("act", m * Kp),
                "w": reserve("weight", C * Kp, copies), "out": reserve("out", m * C * eb, IN_FLIGHT),
                "records": reserve("param", cols * RECORD_WORDS, IN_FLIGHT),
                "acc": reserve("acc", m * C, IN_FLIGHT)}

    copies = next((c for c in range(IN_FLIGHT, 1, -1) if ctx.fits(need(1, C, c))), 1)
    need_ = need
    need = lambda m, cols=C: need_(m, cols, copies)                      # noqa: E731
    m = layout.whole_pieces(x, ctx.fit_chunk(op, "linear", need, min(T, MAX_ROWS, ctx.cfg.max_tile_rows)))
    out = layout.tensor(group.output)
    if gelu is not None:
        ctx.at(group.index(gelu))
        load_gelu_table(ctx, gelu)
        ctx.at(group.index(op))
    for t0 in range(0, T, m):
        mc = min(m, T - t0)
        xb = ctx.alloc(need(mc)["x"], f"{op.name} x")
        ctx.load_rows(x, t0, mc, xb, 0, Kp)
        for n0 in range(0, n_out, C):
            valid = min(C, n_out - n0)
            ws = need(mc, valid)
            wb = ctx.alloc(ws["w"], f"{op.name} w")
            ctx.load_const(w_addr + n0 * Kp, C, Kp, Kp, wb, Kp)
            ab = ctx.alloc(ws["acc"], f"{op.name} acc")
            ctx.emit(Opcode.MATMUL, dict(
                mode=MatMode.INT8, transpose=1, m=mc, n_tiles=1, k_tiles=Kp // R,
                a_addr=xb.addr, a_stride=Kp, w_addr=wb.addr, w_stride=Kp,
                acc_addr=ab.addr, acc_stride=C), reads=[xb, wb], writes=[ab],
                macs=mc * K * valid)
            ctx.free(wb)
            records = ctx.alloc(ws["records"], f"{op.name} records")
            ctx.load_records(records, rec_addr + 4 * RECORD_WORDS * n0, valid)
            ob = ctx.alloc(ws["out"], f"{op.name} out")
            ctx.emit(Opcode.REQUANT, dict(
                src_addr=ab.addr, src_stride=C, dst_addr=ob.addr, dst_stride=C * eb,
                rows=mc, cols=valid, param_addr=records.addr,
                load_params=1, per_channel=1,
                out_type=OutType.INT16 if eb == 2 else OutType.INT8,
                gelu=int(gelu is not None)), reads=[ab, records], writes=[ob])
            ctx.free(ab, records)
            ctx.store_rows(out, t0, mc, n0, ob, C * eb, valid)
            ctx.free(ob)
        ctx.free(xb)


# ---------------------------------------------------------------------- attention
def _window_width(ctx: LowerCtx, qkv: str) -> int | None:
    """Tokens per window row of the ``window_partition`` whose linear produced ``qkv``."""
    producer = {o.outputs[0]: o for o in ctx.graph.ops}
    lin = producer.get(qkv)
    part = producer.get(lin.inputs[0]) if lin is not None else None
    if part is None or part.kind != "window_partition":
        return None
    return int(part.attrs["window"][1])


def _mask_regions(op: Op, mask: np.ndarray | None, w: int, n: int, width: int | None = None):
    """The order of window ``w``'s tokens on chip and its query groups.

    Swin's shift mask gives each token a region; a query sees exactly the keys of its own
    region.  With the tokens of a window sorted by region (stable), the keys a query sees
    are one contiguous range, so SOFTMAX adds ``mask_value`` outside ``keep_lo .. keep_hi``.
    Returns ``(order, groups)``: ``order[i]`` the window token at on-chip position ``i``;
    ``groups``: ``(lo, hi, keep_lo, keep_hi, mask_value)`` per run of query positions.  A
    mask of another form is refused."""
    if mask is None or not mask[w].any():
        return np.arange(n), [(0, n, 0, 0, 0)]
    m = np.asarray(mask[w], dtype=np.int64)
    label = np.array([int(np.flatnonzero(m[i] == 0)[0]) if (m[i] == 0).any() else -1 for i in range(n)])
    values = np.unique(m[m != 0])
    same = label[:, None] == label[None, :]
    if (label < 0).any() or values.size != 1 or not np.array_equal(m == 0, same):
        raise UnsupportedOpsError(
            f"op {op.name!r}: the score mask of window {w} is not a shift mask (each query "
            "seeing exactly the keys of its own region, one mask value); the accelerator adds "
            "one value outside one range of keys")
    order = np.argsort(label, kind="stable")
    if width:
        # Inside a region, column by column when that is fewer strided LOADs / STOREs (a
        # region cut by the vertical shift: its columns are progressions of stride width).
        i = np.arange(n)
        by_col = np.lexsort((i // width, i % width, label))
        if len(_progressions(by_col)) < len(_progressions(order)):
            order = by_col
    sorted_labels = label[order]
    groups = []
    lo = 0
    while lo < n:
        hi = lo
        while hi < n and sorted_labels[hi] == sorted_labels[lo]:
            hi += 1
        groups.append((lo, hi, lo, hi, int(values[0])))
        lo = hi
    return order, groups


@lowerer("attention")
def lower_attention(group: Group, ctx: LowerCtx) -> None:
    qk, sm, av = group.ops
    layout, R, C = ctx.layout, ctx.R, ctx.C
    if sm.attrs["mode"] != av.attrs["mode"]:
        raise CompileError(f"op {av.name!r}: softmax mode {sm.attrs['mode']!r} and attention "
                           f"mode {av.attrs['mode']!r} differ")
    qkv = qk.inputs[0]
    ctx.check_int8_input(qk, qkv)
    H, dh = int(qk.attrs["heads"]), int(qk.attrs["head_dim"])
    nW = int(qk.attrs.get("windows", 1))
    for o in (sm, av):
        if int(o.attrs.get("windows", nW)) != nW:
            raise CompileError(f"op {o.name!r}: {o.attrs.get('windows')} windows, "
                               f"{qk.name!r} has {nW}")
    T, threeD = layout.dims(qkv)
    D = H * dh
    if threeD != 3 * D:
        raise CompileError(f"op {qk.name!r}: qkv has {threeD} columns, expected 3 x {D}")
    if T % nW:
        raise CompileError(f"op {qk.name!r}: {T} tokens do not split into {nW} windows")
    Nw = T // nW                                # tokens of one window (a ViT: one window)
    ctx.unit_check(sm, "softmax unit", f"rows of {Nw} tokens", softmax_timing, Nw, sm.attrs["mode"])
    lis = sm.attrs["mode"] == "lis"
    dhR, dhC = ceil_to(dh, R), ceil_to(dh, C)
    TC, TR = ceil_to(Nw, C), ceil_to(Nw, R)
    ctx.check_field(qk, Opcode.SOFTMAX, "dst_stride", TR, "code row stride")
    ctx.check_field(qk, Opcode.MATMUL, "w_stride", dhC, "value row stride")
    ctx.check_field(qk, Opcode.MATMUL, "acc_stride", TC, "score row stride")
    bias = qk.params.get("bias")
    mask = qk.params.get("mask")
    if bias is not None:
        bias = np.asarray(bias, dtype=np.int64)
        if bias.shape != (H, Nw, Nw):
            raise CompileError(f"op {qk.name!r}: score bias of shape {bias.shape}, expected {(H, Nw, Nw)}")
    if mask is not None:
        mask = np.asarray(mask, dtype=np.int64)
        if mask.shape != (nW, Nw, Nw):
            raise CompileError(f"op {qk.name!r}: score mask of shape {mask.shape}, expected {(nW, Nw, Nw)}")
        ctx.check_field(qk, Opcode.SOFTMAX, "keep_hi", Nw, "window of tokens")
        intops.check_range(mask, intops.INT16_MIN, 0, f"{qk.name} mask")
    if bias is not None:
        intops.check_range(bias, intops.INT16_MIN, intops.INT16_MAX, f"{qk.name} bias")
    width = _window_width(ctx, qkv) if mask is not None else None
    regions = [_mask_regions(qk, mask, w, Nw, width) for w in range(nW)]
    orders = {}                                  # distinct on-chip token orders -> index
    for order, _ in regions:
        orders.setdefault(tuple(order.tolist()), len(orders))
    n_orders = len(orders) if bias is not None else 0

    dhN = ceil_to(dh, ctx.N)                   # output rows start on whole scratchpad words
    v_region, p_region, av_region = ("value", "codes", "attn_acc") if lis else ("weight", "prob", "acc")

    def need(m, head_copies, g=1):
        """Per head and group of ``g`` windows: q, k (rows padded to the array) and v,
        ``head_copies`` in flight (the last window's k and v padded to whole tiles); the
        score bias of the head (two byte planes, one per token order); per chunk of ``m``
        query rows: scores, codes (or probabilities), attention-times-value accumulators and
        output rows; the one requantizer record."""
        rows = (g - 1) * Nw
        ws = {"q": reserve("act", g * Nw * dhR, head_copies),
              "k": reserve("weight", (rows + TC) * dhR, head_copies),
              "v": reserve(v_region, (rows + TR) * dhC, head_copies),
              "scores": reserve("acc", m * TC, IN_FLIGHT), "codes": reserve(p_region, m * TR, IN_FLIGHT),
              "acc": reserve(av_region, m * dhC, IN_FLIGHT), "out": reserve("out", m * dhN, IN_FLIGHT),
              "record": reserve("param", RECORD_WORDS)}
        if n_orders:
            ws["bias_lo"] = reserve("vin", Nw * TR, n_orders)
            ws["bias_hi"] = reserve("vin2", Nw * TR, n_orders)
        return ws

    # Two heads in flight (the next head's loads overlap this head's work) when that still
    # leaves room for chunks of one row; then as many windows a group as fit.
    head_copies = 2 if ctx.fits(need(1, 2)) else 1
    m = ctx.fit_chunk(qk, "attention", lambda m: need(m, head_copies),
                      min(Nw, MAX_ROWS, ctx.cfg.max_tile_rows))
    G = 1
    while G < nW and ctx.fits(need(m, head_copies, G + 1)):
        G += 1
    ws = need(m, head_copies, G)
    mult, shift = int(np.ravel(qk.params["mult"])[0]), int(np.ravel(qk.params["shift"])[0])
    out = layout.tensor(group.output)
    rec_addr = layout.const_records(
        [[0], av.params["mult"].ravel()[:1], av.params["shift"].ravel()[:1],
         [int(av.attrs["zp_out"])]], 1)
    bias_addr = {}
    if bias is not None:
        for order, idx in orders.items():
            o = np.asarray(order)
            for h in range(H):
                b = np.zeros((Nw, TR), dtype=np.int64)
                b[:, :Nw] = bias[h][np.ix_(o, o)]
                lo = layout.const((b & 0xFF).astype(np.uint8))
                hi = layout.const((b >> 8).astype(np.int8))
                bias_addr[idx, h] = (lo, hi)
    i_qk, i_sm, i_av = group.indices
    ctx.at(i_av)
    records = ctx.alloc(ws["record"], f"{av.name} record")
    ctx.load_records(records, rec_addr, 1)
    first_requant = True
    for h in range(H):
        planes = {}
        if bias is not None:
            ctx.at(i_qk)
            for idx in range(n_orders):
                lo_b, hi_b = ctx.alloc_pair(ws["bias_lo"], ws["bias_hi"], f"{qk.name} bias{h}.{idx}")
                lo_a, hi_a = bias_addr[idx, h]
                ctx.load_const(lo_a, Nw, TR, TR, lo_b, TR)
                ctx.load_const(hi_a, Nw, TR, TR, hi_b, TR)
                planes[idx] = (lo_b, hi_b)
        for w0 in range(0, nW, G):
            wins = range(w0, min(nW, w0 + G))
            rows = [w * Nw + int(i) for w in wins for i in regions[w][0]]
            g = len(wins)
            gw = need(m, head_copies, g)
            ctx.at(i_qk)
            qb = ctx.alloc(gw["q"], f"{qk.name} q{h}")
            ctx.load_row_list(qkv, rows, qb, 0, dhR, pad=dhR - dh, col0=h * dh, ncols=dh)
            kb = ctx.alloc(gw["k"], f"{qk.name} k{h}")
            ctx.load_row_list(qkv, rows, kb, 0, dhR, pad=dhR - dh, col0=D + h * dh, ncols=dh)
            ctx.at(i_av)
            vb = ctx.alloc(gw["v"], f"{av.name} v{h}")
            ctx.load_row_list(qkv, rows, vb, 0, dhC, col0=2 * D + h * dh, ncols=dh)
            for wi, w in enumerate(wins):
                order, groups = regions[w]
                plane = planes.get(orders[tuple(order.tolist())]) if bias is not None else None
                for lo, hi, keep_lo, keep_hi, mask_value in groups:
                    for t0 in range(lo, hi, m):
                        mc = min(m, hi - t0)
                        cw = need(mc, head_copies)
                        ctx.at(i_qk)
                        sb = ctx.alloc(cw["scores"], f"{qk.name} scores")
                        ctx.emit(Opcode.MATMUL, dict(
                            mode=MatMode.INT8, transpose=1, m=mc, n_tiles=TC // C,
                            k_tiles=dhR // R, a_addr=qb.addr + (wi * Nw + t0) * dhR, a_stride=dhR,
                            w_addr=kb.addr + wi * Nw * dhR, w_stride=dhR, acc_addr=sb.addr,
                            acc_stride=TC),
                            reads=[qb, kb], writes=[sb], macs=mc * Nw * dh)
                        ctx.at(i_sm)
                        cb = ctx.alloc(cw["codes"], f"{sm.name} codes")
                        extra = dict(NO_SCORE_BIAS, keep_lo=keep_lo, keep_hi=keep_hi,
                                     mask_value=mask_value)
                        reads = [sb]
                        if plane is not None:
                            extra.update(bias=1, bias_addr=plane[0].addr + t0 * TR)
                            reads += list(plane)
                        ctx.emit(Opcode.SOFTMAX, dict(
                            src_addr=sb.addr, src_stride=TC, dst_addr=cb.addr, dst_stride=TR,
                            rows=mc, cols=Nw, mode=SoftmaxMode.LIS if lis else SoftmaxMode.UNIFORM,
                            frac_bits=int(sm.attrs["frac_bits"]), b_int=int(sm.attrs["b_int"]),
                            c_int=int(sm.attrs["c_int"]), mult=mult, shift=shift, **extra),
                            reads=reads, writes=[cb])
                        ctx.free(sb)
                        ctx.at(i_av)
                        ob = ctx.alloc(cw["acc"], f"{av.name} acc")
                        tiles = dict(m=mc, n_tiles=dhC // C, k_tiles=TR // R, a_addr=cb.addr,
                                     a_stride=TR, w_addr=vb.addr + wi * Nw * dhC, w_stride=dhC,
                                     acc_addr=ob.addr, acc_stride=dhC)
                        if lis:
                            ctx.emit(Opcode.ATTNV, tiles, reads=[cb, vb], writes=[ob], macs=mc * Nw * dh)
                        else:
                            ctx.emit(Opcode.MATMUL, dict(mode=MatMode.UINT8, transpose=0, **tiles),
                                     reads=[cb, vb], writes=[ob], macs=mc * Nw * dh)
                        ctx.free(cb)
                        yb = ctx.alloc(cw["out"], f"{av.name} out")
                        ctx.emit(Opcode.REQUANT, dict(
                            src_addr=ob.addr, src_stride=dhC, dst_addr=yb.addr, dst_stride=dhN,
                            rows=mc, cols=dh, param_addr=records.addr,
                            load_params=int(first_requant), per_channel=0, out_type=OutType.INT8,
                            gelu=0),
                            reads=[ob, records], writes=[yb])
                        first_requant = False
                        ctx.free(ob)
                        ctx.store_row_list(out, [w * Nw + int(i) for i in order[t0:t0 + mc]],
                                           h * dh, yb, dhN, dh)
                        ctx.free(yb)
            ctx.free(qb, kb, vb)
        for pair in planes.values():
            ctx.free(*pair)
    ctx.free(records)


# ---------------------------------------------------------------------- row-wise vector ops
class RowwiseLowerer:
    """A row-wise vector op: per chunk of rows, load the operand(s), one vector instruction
    over the chunk, store.  Subclasses say what the unit checks, which parameter records it
    reads, whether there is a second operand and which instruction runs."""

    def check(self, ctx: LowerCtx, op: Op, channels: int) -> None:
        """Refuse a row the unit cannot process (the unit's own validation)."""

    def second_operand(self, ctx: LowerCtx, op: Op, rows: int, channels: int):
        """``None``, ``("tensor", name)``, or ``("const", dram_addr, const_rows)`` (1 row:
        broadcast to every row)."""
        return None

    def records(self, ctx: LowerCtx, op: Op, channels: int) -> int | None:
        """Place the per-channel parameter records in DRAM (their address), or prepare the
        unit otherwise (``None``: no records)."""
        return None

    def instruction(self, ctx: LowerCtx, op: Op, a: Buffer, b: Buffer | None, b_stride: int,
                    y: Buffer, rows: int, channels: int, stride: int, records: Buffer | None,
                    first: bool) -> None:
        raise NotImplementedError

    def __call__(self, group: Group, ctx: LowerCtx) -> None:
        op = group.op
        layout = ctx.layout
        x = op.inputs[0]
        ctx.check_int8_input(op, x)
        T, D = layout.dims(x)
        self.check(ctx, op, D)
        out = layout.tensor(group.output)
        second = self.second_operand(ctx, op, T, D)
        per_row_b = second is not None and not (second[0] == "const" and second[2] == 1)
        rec_addr = self.records(ctx, op, D)

        DN = ceil_to(D, ctx.N)                 # rows start on whole scratchpad words

        def need(m):
            """Per chunk of ``m`` rows: input(s) and output rows; per op: the broadcast
            constant row and the per-channel records."""
            ws = {"a": reserve("vin", m * DN, IN_FLIGHT), "out": reserve("out", m * DN, IN_FLIGHT)}
            if per_row_b:
                ws["b"] = reserve("vin2", m * DN, IN_FLIGHT)
            elif second is not None:
                ws["b_row"] = reserve("vin2", DN)
            if rec_addr is not None:
                ws["records"] = reserve("param", D * RECORD_WORDS)
            return ws

        step = max(1, min(T, VECTOR_CHUNK_BYTES // D))
        m = ctx.fit_chunk(op, op.kind, need, min(step, MAX_ROWS))
        second_name = second[1] if second is not None and second[0] == "tensor" else None
        for name in (x, second_name):
            if name is not None and layout.period(name) > 1:
                m = layout.whole_pieces(name, m)
        ws = need(m)
        records = None
        if rec_addr is not None:
            records = ctx.alloc(ws["records"], f"{op.name} records")
            ctx.load_records(records, rec_addr, D)
        cb = None
        if second is not None and not per_row_b:
            cb = ctx.alloc(ws["b_row"], f"{op.name} const")
            ctx.load_const(second[1], 1, D, D, cb, DN)
        first = True
        for t0 in range(0, T, m):
            mc = min(m, T - t0)
            cw = need(mc)
            ab = ctx.alloc(cw["a"], f"{op.name} in")
            ctx.load_rows(x, t0, mc, ab, 0, DN)
            bb = cb
            if per_row_b:
                bb = ctx.alloc(cw["b"], f"{op.name} in b")
                if second[0] == "const":
                    ctx.load_const(second[1] + t0 * D, mc, D, D, bb, DN)
                else:
                    ctx.load_rows(second[1], t0, mc, bb, 0, DN)
            yb = ctx.alloc(cw["out"], f"{op.name} out")
            self.instruction(ctx, op, ab, bb, 0 if bb is cb else DN, yb, mc, D, DN, records, first)
            first = False
            ctx.free(ab)
            if bb is not None and bb is not cb:
                ctx.free(bb)
            ctx.store_rows(out, t0, mc, 0, yb, DN, D)
            ctx.free(yb)
        if cb is not None:
            ctx.free(cb)
        if records is not None:
            ctx.free(records)


@lowerer("layernorm")
class LayerNormLowerer(RowwiseLowerer):
    def check(self, ctx, op, channels):
        ctx.unit_check(op, "LayerNorm unit", f"rows of {channels} channels", layernorm_beats,
                       channels)

    def records(self, ctx, op, channels):
        p = op.params
        return ctx.layout.const_records([p["alpha"], p["mult"], p["shift"], p["offset"]], channels)

    def instruction(self, ctx, op, a, b, b_stride, y, rows, channels, stride, records, first):
        ctx.emit(Opcode.LAYERNORM, dict(
            src_addr=a.addr, src_stride=stride, dst_addr=y.addr, dst_stride=stride,
            rows=rows, cols=channels, param_addr=records.addr, load_params=int(first),
            zp_in=int(op.attrs["zp_in"])),
            reads=[a, records], writes=[y])


@lowerer("add")
class AddLowerer(RowwiseLowerer):
    def check(self, ctx, op, channels):
        ctx.unit_check(op, "residual add", f"rows of {channels} channels",
                       residual_add_param_load_timing, channels)

    def second_operand(self, ctx, op, rows, channels):
        if len(op.inputs) == 2:
            ctx.check_int8_input(op, op.inputs[1])
            if ctx.layout.dims(op.inputs[1]) != (rows, channels):
                raise CompileError(f"op {op.name!r}: add of {ctx.layout.dims(op.inputs[1])} "
                                   f"and {(rows, channels)}")
            return ("tensor", op.inputs[1])
        const = np.asarray(op.params["const"], dtype=np.int64)
        shape = tuple(ctx.graph.tensors[op.inputs[0]].shape)
        const = np.broadcast_to(const, shape).reshape(rows, channels) \
            if const.size == rows * channels else const.reshape(-1, channels)
        if const.shape[0] not in (1, rows):
            raise CompileError(f"op {op.name!r}: constant of shape {const.shape} does not broadcast")
        return ("const", ctx.layout.const(const.astype(np.int8)), const.shape[0])

    def records(self, ctx, op, channels):
        p = op.params
        return ctx.layout.const_records([p["mult_a"], p["mult_b"], p["shift"]], channels)

    def instruction(self, ctx, op, a, b, b_stride, y, rows, channels, stride, records, first):
        ctx.emit(Opcode.ADD, dict(
            a_addr=a.addr, a_stride=stride, b_addr=b.addr, b_stride=b_stride,
            dst_addr=y.addr, dst_stride=stride, rows=rows, cols=channels,
            param_addr=records.addr, load_params=int(first), zp_a=int(op.attrs["zp_a"]),
            zp_b=int(op.attrs["zp_b"]), zp_out=int(op.attrs["zp_out"])),
            reads=[a, b, records], writes=[y])


@lowerer("gelu")
class GeluLowerer(RowwiseLowerer):
    def records(self, ctx, op, channels):
        load_gelu_table(ctx, op)
        return None

    def instruction(self, ctx, op, a, b, b_stride, y, rows, channels, stride, records, first):
        ctx.emit(Opcode.GELU, dict(
            src_addr=a.addr, src_stride=stride, dst_addr=y.addr, dst_stride=stride,
            rows=rows, cols=channels),
            reads=[a], writes=[y])


# ---------------------------------------------------------------------- token mean
@lowerer("token_mean")
def lower_token_mean(group: Group, ctx: LowerCtx) -> None:
    op = group.op
    layout, R, C = ctx.layout, ctx.R, ctx.C
    x = op.inputs[0]
    ctx.check_int8_input(op, x)
    T, D = layout.dims(x)
    start = int(op.attrs["start"])
    TR, DC = ceil_to(T, R), ceil_to(D, C)
    ctx.check_field(op, Opcode.MATMUL, "w_stride", DC, "row stride")
    ones = np.zeros(TR, dtype=np.int8)
    ones[start:T] = 1
    ones_addr = layout.const(ones)
    bias = -int(op.attrs["zp_in"]) * (T - start)
    rec_addr = layout.const_records([[bias], op.params["mult"], op.params["shift"],
                                     [int(op.attrs["zp_out"])]], DC)

    def need(m):
        """All tokens at once (no chunking): tokens, the 0/1 row, accumulators, records and
        the output row."""
        return {"records": reserve("param", DC * RECORD_WORDS), "x": reserve("weight", TR * DC),
                "ones": reserve("act", TR), "acc": reserve("acc", DC), "out": reserve("out", DC)}

    ws = need(ctx.fit_chunk(op, "token_mean", need, 1))
    out = layout.tensor(group.output)
    records = ctx.alloc(ws["records"], f"{op.name} records")
    ctx.load_records(records, rec_addr, DC)
    xb = ctx.alloc(ws["x"], f"{op.name} x")
    ctx.load_rows(x, 0, T, xb, 0, DC)
    ob1 = ctx.alloc(ws["ones"], f"{op.name} ones")
    ctx.load_const(ones_addr, 1, TR, TR, ob1, TR)
    ab = ctx.alloc(ws["acc"], f"{op.name} acc")
    ctx.emit(Opcode.MATMUL, dict(
        mode=MatMode.INT8, transpose=0, m=1, n_tiles=DC // C, k_tiles=TR // R,
        a_addr=ob1.addr, a_stride=TR, w_addr=xb.addr, w_stride=DC, acc_addr=ab.addr,
        acc_stride=DC), reads=[ob1, xb], writes=[ab], macs=(T - start) * D)
    yb = ctx.alloc(ws["out"], f"{op.name} out")
    ctx.emit(Opcode.REQUANT, dict(
        src_addr=ab.addr, src_stride=DC, dst_addr=yb.addr, dst_stride=DC, rows=1, cols=D,
        param_addr=records.addr, load_params=1, per_channel=1, out_type=OutType.INT8, gelu=0),
        reads=[ab, records], writes=[yb])
    ctx.store_rows(out, 0, 1, 0, yb, DC, D)
    ctx.free(xb, ob1, yb, ab, records)
