"""The compiler: an integer graph and a config become a :class:`~compiler.program.ProgramImage`.

Execution model (docs/ISA.md has the details).  Every graph tensor that an op produces lives
in DRAM; an op streams its inputs into the scratchpad, computes, and streams its output back.
Weights and per-channel parameters are laid out in DRAM at compile time, already padded to
the array's tile size.  Three op kinds are *views* and cost no instruction of their own:
``patchify`` (its consumers gather image patches with strided loads), ``select_tokens``
(consumers load the selected rows) and ``concat_tokens`` (its prefix tokens are constant
rows of the output buffer and the producer of its input writes straight after them; a graph
input is copied in after them through the scratchpad).  Two
patterns are fused: a linear layer followed by its only consumer, a GELU, requantizes
through the GELU table; and ``qk_scores -> softmax -> attn_value`` becomes head-by-head
attention that never leaves the chip (scores in the accumulator memory, codes in the
scratchpad).

Lowering of each op
    linear         for each chunk of tokens: load x; for each strip of ``C`` output channels:
                   load the weight strip, one MATMUL over all ``K / R`` tiles, REQUANT (with
                   the strip's parameter records, optionally GELU), STORE the strip.
    attention      per head: load q, k (zero-padded to the tile) and v; per chunk of query
                   rows: MATMUL q @ k^T into the accumulator, SOFTMAX (requantize to int16,
                   LIS codes / probabilities into the scratchpad), MATMUL codes @ v, REQUANT,
                   STORE the head's columns.
    layernorm, add, gelu   per chunk of rows: load, one vector instruction, store.
    token_mean     a MATMUL of a constant 0/1 row by the tokens, REQUANT with the zero-point
                   correction as bias.

Buffers are allocated next-fit and released as soon as their last use is emitted; the
:class:`~compiler.emitter.Emitter` derives every dependency token from the buffer accesses,
so loads of the next strip / head / chunk run ahead into free space while the array works
on the current one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hw.config import AcceleratorConfig
from sw import intops
from sw.graph import IntGraph, Op

from .emitter import Allocator, Buffer, CompileError, Emitter
from .isa import (COUNT, SPAD_STRIDE, ACC_STRIDE, MatMode, Mem, Opcode, OutType, Queue, SoftmaxMode)
from .program import ProgramImage, TensorPlacement

__all__ = ["compile_graph", "CompileError", "UnsupportedOpsError", "check_accelerator_ops"]

DRAM_ALIGN = 64
SPAD_ALIGN = 16
#: Words of one per-channel parameter record in the accumulator memory.
RECORD_WORDS = 4
#: Bytes a vector-op chunk aims for (rows per chunk = this / row bytes).
VECTOR_CHUNK_BYTES = 4096
#: The largest field values (16-bit counts).
MAX_COUNT = (1 << COUNT) - 1


def _ceil_to(x: int, m: int) -> int:
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
class RowsView:
    """``select_tokens``: the listed rows of a tensor, flattened into one row."""
    base: DramTensor
    indices: list[int]


class _Compiler:
    def __init__(self, graph: IntGraph, config: AcceleratorConfig):
        graph.validate()
        self.g, self.cfg = graph, config
        self.R, self.C, self.L = config.array_rows, config.array_cols, config.vector_lanes
        self.spad = Allocator("scratchpad", config.scratchpad_bytes, SPAD_ALIGN)
        self.acc = Allocator("accumulator", config.accumulator_words, RECORD_WORDS)
        self.em = Emitter()
        self.params = bytearray()
        self.act_top = 0
        #: Instructions whose dram_addr points into the activation region.
        self.reloc: list[int] = []
        self.place: dict[str, object] = {}
        self.tensors: dict[str, TensorPlacement] = {}
        self.consumers: dict[str, list[Op]] = {}
        for op in graph.ops:
            for t in op.inputs:
                self.consumers.setdefault(t, []).append(op)
        self.op_names = [op.name for op in graph.ops]
        self._acts: list[DramTensor] = []

    # ------------------------------------------------------------------ DRAM
    def const(self, data: np.ndarray) -> int:
        """Place constant bytes in the DRAM parameter region; returns the address."""
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

    def act(self, name: str, rows: int, cols: int, elem_bytes: int) -> DramTensor:
        """Reserve a DRAM activation buffer (address relative to the activation region)."""
        stride = cols * elem_bytes
        addr = self.act_top
        self.act_top = _ceil_to(addr + rows * stride, DRAM_ALIGN)
        t = DramTensor(addr, rows, cols, elem_bytes, stride, name)
        self._acts.append(t)
        return t

    def tensor_bytes(self, name: str) -> int:
        t = self.g.tensors[name]
        return 2 if t.bits > 8 else 1

    # ------------------------------------------------------------------ loads / stores
    def load_rows(self, name: str, r0: int, nr: int, dst: Buffer, dst_off: int, dst_stride: int,
                  pad: int = 0, col0: int = 0, ncols: int | None = None) -> None:
        """Emit the LOADs that bring rows ``r0 .. r0 + nr`` (columns ``col0 ..``) of a tensor
        into the scratchpad at ``dst + dst_off``, rows ``dst_stride`` bytes apart."""
        p = self.place[name]
        if isinstance(p, DramTensor):
            ncols = p.cols - col0 if ncols is None else ncols
            self._load_rect(p, r0, r0 + nr, col0 * p.elem_bytes, (col0 + ncols) * p.elem_bytes,
                            dst, dst_off, dst_stride, pad)
        elif isinstance(p, PatchView):
            if col0 or ncols not in (None, p.channels * p.patch ** 2):
                raise CompileError(f"{name}: column slices of patches are not supported")
            per_row = p.width // p.patch
            t = r0
            while t < r0 + nr:
                i, j0 = divmod(t, per_row)
                count = min(per_row - j0, r0 + nr - t)
                for c in range(p.channels):
                    for pi in range(p.patch):
                        src = p.image.addr + c * p.height * p.width + (i * p.patch + pi) * p.width + j0 * p.patch
                        off = dst_off + (t - r0) * dst_stride + (c * p.patch + pi) * p.patch
                        self._load(self._deps(p.image, 0, p.image.rows, 0, p.image.row_stride),
                                   src, p.patch, count, p.patch, dst, off, dst_stride, 0)
                t += count
        elif isinstance(p, RowsView):
            if r0 != 0 or nr != 1 or col0 or ncols not in (None, p.base.cols * len(p.indices)):
                raise CompileError(f"{name}: partial loads of selected tokens are not supported")
            width = p.base.cols * p.base.elem_bytes
            for k, idx in enumerate(p.indices):
                self._load_rect(p.base, idx, idx + 1, 0, width, dst, dst_off + k * width,
                                dst_stride, 0)
        else:
            raise CompileError(f"tensor {name!r} has no placement")

    @staticmethod
    def _deps(t: DramTensor, r0: int, r1: int, b0: int, b1: int) -> Buffer:
        """A dependency record: the newest STORE overlapping rows ``r0..r1``, bytes ``b0..b1``."""
        root, off = t.root, t.offset_rows if t.parent is not None else 0
        dep = Buffer("dram", 0, 0)
        for s0, s1, c0, c1, idx in root.stores:
            if s0 < r1 + off and r0 + off < s1 and c0 < b1 and b0 < c1:
                dep.written[Queue.STORE] = max(dep.written[Queue.STORE], idx)
        return dep

    def _load_rect(self, t: DramTensor, r0: int, r1: int, b0: int, b1: int, dst: Buffer,
                   dst_off: int, dst_stride: int, pad: int) -> None:
        """Load rows ``r0..r1``, bytes ``b0..b1`` of ``t``.  When the STOREs that wrote the
        rectangle tile it exactly, one LOAD per stored piece, each waiting only for its own
        STORE: the consumer's loads then follow the producer's stores instead of waiting for
        the whole tensor."""
        root, off = t.root, t.offset_rows if t.parent is not None else 0
        pieces = []
        for s0, s1, c0, c1, idx in root.stores:
            p0, p1 = max(s0 - off, r0), min(s1 - off, r1)
            q0, q1 = max(c0, b0), min(c1, b1)
            if p0 < p1 and q0 < q1:
                pieces.append((p0, p1, q0, q1))
        if len(pieces) > 1 and sum((p1 - p0) * (q1 - q0) for p0, p1, q0, q1 in pieces) \
                == (r1 - r0) * (b1 - b0):
            for p0, p1, q0, q1 in pieces:
                self._load(self._deps(t, p0, p1, q0, q1), t.addr + p0 * t.row_stride + q0,
                           t.row_stride, p1 - p0, q1 - q0, dst,
                           dst_off + (p0 - r0) * dst_stride + (q0 - b0), dst_stride,
                           pad if q1 == b1 else 0)
            return
        self._load(self._deps(t, r0, r1, b0, b1), t.addr + r0 * t.row_stride + b0, t.row_stride,
                   r1 - r0, b1 - b0, dst, dst_off, dst_stride, pad)

    def _load(self, dep: Buffer | None, dram_addr, dram_stride, rows, cols, dst: Buffer,
              dst_off, dst_stride, pad) -> None:
        """LOADs from the activation region (``dep`` given) or the constants (``dep`` None)."""
        for r in range(0, rows, MAX_COUNT):
            n = min(MAX_COUNT, rows - r)
            i = self.em.emit(Opcode.LOAD, dict(
                mem=Mem.SPAD, dram_addr=dram_addr + r * dram_stride, dram_stride=dram_stride,
                dst_addr=dst.addr + dst_off + r * dst_stride, dst_stride=dst_stride,
                rows=n, cols=cols, pad=pad),
                reads=[dep] if dep is not None else [], writes=[dst])
            if dep is not None:
                self.reloc.append(i)

    def load_const(self, addr: int, rows: int, cols: int, stride: int, dst: Buffer,
                   dst_stride: int) -> None:
        self._load(None, addr, stride, rows, cols, dst, 0, dst_stride, 0)

    def load_records(self, addr: int, n: int, what: str) -> Buffer:
        """Copy ``n`` parameter records from DRAM into the accumulator memory."""
        buf = self.acc_alloc(n * RECORD_WORDS, what)
        words = n * RECORD_WORDS
        step = MAX_COUNT - MAX_COUNT % RECORD_WORDS
        for w in range(0, words, step):
            k = min(step, words - w)
            self.em.emit(Opcode.LOAD, dict(
                mem=Mem.ACC, dram_addr=addr + 4 * w, dram_stride=4 * k, dst_addr=buf.addr + w,
                dst_stride=k, rows=1, cols=k, pad=0), writes=[buf])
        return buf

    def store_rows(self, out: DramTensor, r0: int, nr: int, col0: int, src: Buffer,
                   src_stride: int, ncols: int) -> None:
        off = out.offset_rows if out.parent is not None else 0
        for r in range(0, nr, MAX_COUNT):
            n = min(MAX_COUNT, nr - r)
            self.reloc.append(len(self.em.instrs))
            i = self.em.emit(Opcode.STORE, dict(
                src_addr=src.addr + r * src_stride, src_stride=src_stride,
                dram_addr=out.addr + (r0 + r) * out.row_stride + col0 * out.elem_bytes,
                dram_stride=out.row_stride, rows=n, cols=ncols * out.elem_bytes),
                reads=[src])
            out.root.stores.append((off + r0 + r, off + r0 + r + n, col0 * out.elem_bytes,
                                    (col0 + ncols) * out.elem_bytes, i))

    def spad_alloc(self, size: int, what: str) -> Buffer:
        return self.spad.alloc(size, what)

    def acc_alloc(self, size: int, what: str) -> Buffer:
        return self.acc.alloc(size, what)

    # ------------------------------------------------------------------ fitting
    def _fit(self, op: Op, what: str, need_spad, need_acc, upper: int) -> int:
        """Largest chunk ``m <= upper`` with ``need_spad(m) <= spad`` and ``need_acc(m) <= acc``."""
        S, A = self.cfg.scratchpad_bytes, self.cfg.accumulator_words
        if need_spad(1) > S or need_acc(1) > A:
            parts = []
            if need_spad(1) > S:
                parts.append(f"scratchpad needs {need_spad(1)} bytes, the config has {S} "
                             f"(short by {need_spad(1) - S} bytes)")
            if need_acc(1) > A:
                parts.append(f"accumulator needs {need_acc(1)} words, the config has {A} "
                             f"(short by {need_acc(1) - A} words = {4 * (need_acc(1) - A)} bytes)")
            raise CompileError(f"op {op.name!r} ({what}) does not fit even one row at a time: "
                               + "; ".join(parts))
        lo, hi = 1, max(1, upper)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if need_spad(mid) <= S and need_acc(mid) <= A:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def _check_stride(self, op: Op, value: int, limit_bits: int, what: str) -> None:
        top = (1 << limit_bits) - 1
        if value > top:
            raise CompileError(f"op {op.name!r}: {what} of {value} exceeds the instruction's "
                               f"{limit_bits}-bit field (max {top}) by {value - top}")

    # ------------------------------------------------------------------ ops
    def run(self) -> ProgramImage:
        g = self.g
        for name in g.inputs:
            t = g.tensors[name]
            rows, cols = _rows_cols(t.shape) if len(t.shape) != 3 else (1, int(np.prod(t.shape)))
            self.place[name] = self.act(name, rows, cols, self.tensor_bytes(name))
        fused: set[str] = set()
        self._plan_concat_aliases()
        ops = g.ops
        for idx, op in enumerate(ops):
            if op.name in fused:
                continue
            self.em.op_index = idx
            kind = op.kind
            if kind == "patchify":
                self._patchify(op)
            elif kind == "select_tokens":
                self._select(op)
            elif kind == "concat_tokens":
                self._concat(op)
            elif kind == "linear":
                gelu = self._fusable_gelu(op)
                if gelu is not None:
                    fused.add(gelu.name)
                self._linear(op, gelu)
            elif kind == "qk_scores":
                sm, av = self._attention_pattern(op)
                fused.update({sm.name, av.name})
                self._attention(op, sm, av, idx, ops.index(sm), ops.index(av))
            elif kind in ("softmax", "attn_value"):
                raise CompileError(f"op {op.name!r} ({kind}) is only supported as part of "
                                   "qk_scores -> softmax -> attn_value")
            elif kind in ("layernorm", "add", "gelu"):
                self._rowwise(op)
            elif kind == "token_mean":
                self._token_mean(op)
            else:
                raise CompileError(f"op {op.name!r}: unsupported op kind {kind!r}")
        for name in g.outputs:
            if not isinstance(self.place[name], DramTensor):
                self._materialize(name)
        self.em.op_index = len(ops) - 1
        self.em.halt()
        return self._finish()

    def _out(self, name: str) -> DramTensor:
        """The DRAM buffer an op writes its output tensor ``name`` into."""
        if name in self.place:               # pre-placed (concat alias)
            return self.place[name]
        t = self.g.tensors[name]
        rows, cols = _rows_cols(t.shape)
        self.place[name] = self.act(name, rows, cols, self.tensor_bytes(name))
        return self.place[name]

    def _dims(self, name: str) -> tuple[int, int]:
        p = self.place[name]
        if isinstance(p, DramTensor):
            return p.rows, p.cols
        if isinstance(p, PatchView):
            return (p.height // p.patch) * (p.width // p.patch), p.channels * p.patch ** 2
        return 1, p.base.cols * len(p.indices)

    def _check_int8_input(self, op: Op, name: str) -> None:
        t = self.g.tensors[name]
        if t.bits != 8 or not t.signed:
            raise CompileError(f"op {op.name!r} reads {name!r} ({'' if t.signed else 'u'}int{t.bits}); "
                               "the accelerator's units read int8 activations")

    # views ----------------------------------------------------------------
    def _patchify(self, op: Op) -> None:
        src = op.inputs[0]
        p = self.place[src]
        c, h, w = self.g.tensors[src].shape
        patch = int(op.attrs["patch"])
        if h % patch or w % patch:
            raise CompileError(f"op {op.name!r}: image {h}x{w} is not a multiple of patch {patch}")
        if not isinstance(p, DramTensor):
            raise CompileError(f"op {op.name!r}: patchify of a view is not supported")
        self.place[op.outputs[0]] = PatchView(p, c, h, w, patch)

    def _select(self, op: Op) -> None:
        p = self.place[op.inputs[0]]
        if not isinstance(p, DramTensor):
            raise CompileError(f"op {op.name!r}: select_tokens of a view is not supported")
        self.place[op.outputs[0]] = RowsView(p, [int(i) for i in op.attrs["indices"]])

    def _plan_concat_aliases(self) -> None:
        """Give each concat_tokens output its buffer, with the prefix tokens pre-initialized,
        and let the producer of its input write directly after them."""
        producers = self.g.producer()
        for op in self.g.ops:
            if op.kind != "concat_tokens":
                continue
            out = self._out(op.outputs[0])
            tokens = np.asarray(op.params["tokens"])
            out.const_prefix = tokens.astype(np.int8)
            x = op.inputs[0]
            prod = producers.get(x)
            if prod is not None and prod.kind in ("linear", "add", "layernorm", "gelu") \
                    and x not in self.g.outputs:
                p = tokens.shape[0]
                self.place[x] = DramTensor(out.addr + p * out.row_stride, out.rows - p,
                                           out.cols, out.elem_bytes, out.row_stride, x,
                                           parent=out, offset_rows=p)

    def _concat(self, op: Op) -> None:
        out = self.place[op.outputs[0]]
        x = op.inputs[0]
        px = self.place[x]
        if isinstance(px, DramTensor) and px.parent is out:
            return                           # the producer already wrote into the buffer
        rows, cols = self._dims(x)
        self._copy_rows(op, x, out, out.const_prefix.shape[0], rows, cols * out.elem_bytes)

    def _materialize(self, name: str) -> None:
        rows, cols = self._dims(name)
        out = self.act(name, rows, cols, self.tensor_bytes(name))
        producer = self.g.producer()[name]
        self._copy_rows(producer, name, out, 0, rows, cols * out.elem_bytes)
        self.place[name] = out

    def _copy_rows(self, op: Op, src: str, out: DramTensor, row0: int, rows: int,
                   row_bytes: int) -> None:
        """Copy tensor ``src`` into rows ``row0..`` of ``out`` through the scratchpad, in
        chunks of rows that fit."""
        m = self._fit(op, "copy", lambda m: m * row_bytes, lambda m: 0, min(rows, MAX_COUNT))
        for t0 in range(0, rows, m):
            mc = min(m, rows - t0)
            buf = self.spad_alloc(mc * row_bytes, f"{op.name} copy")
            self.load_rows(src, t0, mc, buf, 0, row_bytes)
            self.store_rows(out, row0 + t0, mc, 0, buf, row_bytes, row_bytes // out.elem_bytes)
            self.spad.free(buf)

    # linear ----------------------------------------------------------------
    def _fusable_gelu(self, op: Op):
        y = op.outputs[0]
        users = self.consumers.get(y, [])
        if len(users) == 1 and users[0].kind == "gelu" and y not in self.g.outputs \
                and op.attrs["out_bits"] == 8:
            return users[0]
        return None

    def _gelu_table(self, op: Op) -> None:
        addr = self.const(np.asarray(op.params["table"], dtype=np.int8))
        tb = self.spad_alloc(256, f"{op.name} table")
        self.load_const(addr, 1, 256, 256, tb, 256)
        self.em.emit(Opcode.GELU_TABLE, dict(src_addr=tb.addr), reads=[tb])
        self.spad.free(tb)

    def _linear(self, op: Op, gelu: Op | None) -> None:
        R, C = self.R, self.C
        x = op.inputs[0]
        self._check_int8_input(op, x)
        w = np.asarray(op.params["weight"])
        n_out, k_in = w.shape
        T, K = self._dims(x)
        if K != k_in:
            raise CompileError(f"op {op.name!r}: input has {K} columns, weight expects {k_in}")
        Kp, Np = _ceil_to(K, R), _ceil_to(n_out, C)
        eb = 2 if op.attrs["out_bits"] == 16 else 1
        for v, what in ((Kp, "input row stride"), (Np * eb, "output row stride")):
            self._check_stride(op, v, SPAD_STRIDE, what)
        wpad = np.zeros((Np, Kp), dtype=np.int8)
        wpad[:n_out, :K] = w
        w_addr = self.const(wpad)
        rec_addr = self.const_records(
            [op.params["bias"], op.params["mult"], op.params["shift"], [int(op.attrs["zp_out"])]], Np)
        for col in (op.params["mult"],):
            intops.check_range(np.asarray(col), intops.INT16_MIN, intops.INT16_MAX, f"{op.name} mult")
        m = self._fit(op, "linear",
                      lambda m: m * Kp + 3 * (C * Kp + m * C * eb) + 256,
                      lambda m: 3 * (C * RECORD_WORDS + m * C), min(T, MAX_COUNT))
        out_name = gelu.outputs[0] if gelu is not None else op.outputs[0]
        out = self._out(out_name)
        if gelu is not None:
            self.em.op_index = self.op_names.index(gelu.name)
            self._gelu_table(gelu)
            self.em.op_index = self.op_names.index(op.name)
        for t0 in range(0, T, m):
            mc = min(m, T - t0)
            xb = self.spad_alloc(mc * Kp, f"{op.name} x")
            self.load_rows(x, t0, mc, xb, 0, Kp)
            for n0 in range(0, n_out, C):
                valid = min(C, n_out - n0)
                wb = self.spad_alloc(C * Kp, f"{op.name} w")
                self.load_const(w_addr + n0 * Kp, C, Kp, Kp, wb, Kp)
                ab = self.acc_alloc(mc * C, f"{op.name} acc")
                self.em.emit(Opcode.MATMUL, dict(
                    mode=MatMode.INT8, transpose=1, accumulate=0, m=mc, n_tiles=1, k_tiles=Kp // R,
                    a_addr=xb.addr, a_stride=Kp, w_addr=wb.addr, w_stride=Kp,
                    acc_addr=ab.addr, acc_stride=C), reads=[xb, wb], writes=[ab],
                    macs=mc * K * valid)
                self.spad.free(wb)
                records = self.load_records(rec_addr + 4 * RECORD_WORDS * n0, valid,
                                            f"{op.name} records")
                ob = self.spad_alloc(mc * C * eb, f"{op.name} out")
                self.em.emit(Opcode.REQUANT, dict(
                    src_addr=ab.addr, src_stride=C, dst_addr=ob.addr, dst_stride=C * eb,
                    rows=mc, cols=valid, param_addr=records.addr,
                    load_params=1, per_channel=1,
                    out_type=OutType.INT16 if eb == 2 else OutType.INT8,
                    gelu=int(gelu is not None)), reads=[ab, records], writes=[ob])
                self.acc.free(ab)
                self.acc.free(records)
                self.store_rows(out, t0, mc, n0, ob, C * eb, valid)
                self.spad.free(ob)
            self.spad.free(xb)

    # attention -------------------------------------------------------------
    def _attention_pattern(self, qk: Op):
        users = self.consumers.get(qk.outputs[0], [])
        sm = users[0] if len(users) == 1 and users[0].kind == "softmax" else None
        av_users = self.consumers.get(sm.outputs[0], []) if sm is not None else []
        av = av_users[0] if len(av_users) == 1 and av_users[0].kind == "attn_value" else None
        if sm is None or av is None or av.inputs[1] != qk.inputs[0] \
                or qk.outputs[0] in self.g.outputs or sm.outputs[0] in self.g.outputs:
            raise CompileError(f"op {qk.name!r}: only qk_scores -> softmax -> attn_value on the "
                               "same qkv tensor, with internal scores and probabilities, is supported")
        if sm.attrs["mode"] != av.attrs["mode"]:
            raise CompileError(f"op {av.name!r}: softmax mode {sm.attrs['mode']!r} and attention "
                               f"mode {av.attrs['mode']!r} differ")
        return sm, av

    def _attention(self, qk: Op, sm: Op, av: Op, i_qk: int, i_sm: int, i_av: int) -> None:
        R, C, cfg = self.R, self.C, self.cfg
        qkv = qk.inputs[0]
        self._check_int8_input(qk, qkv)
        H, dh = int(qk.attrs["heads"]), int(qk.attrs["head_dim"])
        T, threeD = self._dims(qkv)
        D = H * dh
        if threeD != 3 * D:
            raise CompileError(f"op {qk.name!r}: qkv has {threeD} columns, expected 3 x {D}")
        if T > cfg.max_seq_len:
            raise CompileError(f"op {sm.name!r}: softmax rows of {T} tokens exceed max_seq_len "
                               f"{cfg.max_seq_len} by {T - cfg.max_seq_len}")
        lis = sm.attrs["mode"] == "lis"
        dhR, dhC = _ceil_to(dh, R), _ceil_to(dh, C)
        TC, TR = _ceil_to(T, C), _ceil_to(T, R)
        head_bytes = T * dhR + TC * dhR + TR * dhC
        for v, what in ((TR, "code row stride"), (dhC, "value row stride")):
            self._check_stride(qk, v, SPAD_STRIDE, what)
        self._check_stride(qk, TC, ACC_STRIDE, "score row stride")
        copies = 2 if 2 * head_bytes + 3 * (TR + dh) <= cfg.scratchpad_bytes else 1
        m = self._fit(qk, "attention",
                      lambda m: copies * head_bytes + 3 * m * (TR + dh),
                      lambda m: RECORD_WORDS + 3 * m * (TC + dhC), min(T, MAX_COUNT))
        mult, shift = int(np.ravel(qk.params["mult"])[0]), int(np.ravel(qk.params["shift"])[0])
        out = self._out(av.outputs[0])
        rec_addr = self.const_records(
            [[0], av.params["mult"].ravel()[:1], av.params["shift"].ravel()[:1],
             [int(av.attrs["zp_out"])]], 1)
        self.em.op_index = i_av
        records = self.load_records(rec_addr, 1, f"{av.name} record")
        first_requant = True
        for h in range(H):
            self.em.op_index = i_qk
            qb = self.spad_alloc(T * dhR, f"{qk.name} q{h}")
            self.load_rows(qkv, 0, T, qb, 0, dhR, pad=dhR - dh, col0=h * dh, ncols=dh)
            kb = self.spad_alloc(TC * dhR, f"{qk.name} k{h}")
            self.load_rows(qkv, 0, T, kb, 0, dhR, pad=dhR - dh, col0=D + h * dh, ncols=dh)
            self.em.op_index = i_av
            vb = self.spad_alloc(TR * dhC, f"{av.name} v{h}")
            self.load_rows(qkv, 0, T, vb, 0, dhC, col0=2 * D + h * dh, ncols=dh)
            for t0 in range(0, T, m):
                mc = min(m, T - t0)
                self.em.op_index = i_qk
                sb = self.acc_alloc(mc * TC, f"{qk.name} scores")
                self.em.emit(Opcode.MATMUL, dict(
                    mode=MatMode.INT8, transpose=1, accumulate=0, m=mc, n_tiles=TC // C,
                    k_tiles=dhR // R, a_addr=qb.addr + t0 * dhR, a_stride=dhR, w_addr=kb.addr,
                    w_stride=dhR, acc_addr=sb.addr, acc_stride=TC),
                    reads=[qb, kb], writes=[sb], macs=mc * T * dh)
                self.em.op_index = i_sm
                cb = self.spad_alloc(mc * TR, f"{sm.name} codes")
                self.em.emit(Opcode.SOFTMAX, dict(
                    src_addr=sb.addr, src_stride=TC, dst_addr=cb.addr, dst_stride=TR, rows=mc,
                    cols=T, dst_cols=TR, mode=SoftmaxMode.LIS if lis else SoftmaxMode.UNIFORM,
                    frac_bits=int(sm.attrs["frac_bits"]), b_int=int(sm.attrs["b_int"]),
                    c_int=int(sm.attrs["c_int"]), mult=mult, shift=shift),
                    reads=[sb], writes=[cb])
                self.acc.free(sb)
                self.em.op_index = i_av
                ob = self.acc_alloc(mc * dhC, f"{av.name} acc")
                self.em.emit(Opcode.MATMUL, dict(
                    mode=MatMode.LIS if lis else MatMode.UINT8, transpose=0, accumulate=0, m=mc,
                    n_tiles=dhC // C, k_tiles=TR // R, a_addr=cb.addr, a_stride=TR,
                    w_addr=vb.addr, w_stride=dhC, acc_addr=ob.addr, acc_stride=dhC),
                    reads=[cb, vb], writes=[ob], macs=mc * T * dh)
                self.spad.free(cb)
                yb = self.spad_alloc(mc * dh, f"{av.name} out")
                self.em.emit(Opcode.REQUANT, dict(
                    src_addr=ob.addr, src_stride=dhC, dst_addr=yb.addr, dst_stride=dh, rows=mc,
                    cols=dh, param_addr=records.addr, load_params=int(first_requant),
                    per_channel=0, out_type=OutType.INT8, gelu=0),
                    reads=[ob, records], writes=[yb])
                first_requant = False
                self.acc.free(ob)
                self.store_rows(out, t0, mc, h * dh, yb, dh, dh)
                self.spad.free(yb)
            for b in (qb, kb, vb):
                self.spad.free(b)
        self.acc.free(records)

    # row-wise vector ops ---------------------------------------------------
    def _rowwise(self, op: Op) -> None:
        cfg = self.cfg
        x = op.inputs[0]
        self._check_int8_input(op, x)
        T, D = self._dims(x)
        if op.kind in ("layernorm", "add") and (D % self.L or D > cfg.max_channels):
            unit = "LayerNorm" if op.kind == "layernorm" else "residual add"
            why = (f"exceeds max_channels ({cfg.max_channels}) by {D - cfg.max_channels}"
                   if D > cfg.max_channels else
                   f"is {self.L - D % self.L} short of the next multiple ({_ceil_to(D, self.L)})")
            raise CompileError(
                f"op {op.name!r}: {unit} of {D} channels needs a multiple of vector_lanes "
                f"({self.L}) no larger than max_channels ({cfg.max_channels}); {D} {why}")
        out = self._out(op.outputs[0])
        two = op.kind == "add"
        b_const = None
        if two and len(op.inputs) == 2:
            self._check_int8_input(op, op.inputs[1])
            if self._dims(op.inputs[1]) != (T, D):
                raise CompileError(f"op {op.name!r}: add of {self._dims(op.inputs[1])} and {(T, D)}")
        elif two:
            const = np.asarray(op.params["const"], dtype=np.int64)
            const = np.broadcast_to(const, tuple(self.g.tensors[x].shape)).reshape(T, D) \
                if const.size == T * D else const.reshape(-1, D)
            if const.shape[0] not in (1, T):
                raise CompileError(f"op {op.name!r}: constant of shape {const.shape} does not broadcast")
            b_const = (self.const(const.astype(np.int8)), const.shape[0])
        records = None
        if op.kind == "layernorm":
            p = op.params
            rec_addr = self.const_records([p["alpha"], p["mult"], p["shift"], p["offset"]], D)
        elif op.kind == "add":
            p = op.params
            rec_addr = self.const_records([p["mult_a"], p["mult_b"], p["shift"]], D)
        else:
            self._gelu_table(op)
        operands = 3 if two else 2
        step = max(1, min(T, VECTOR_CHUNK_BYTES // D))
        m = self._fit(op, op.kind, lambda m: 3 * operands * m * D + (D if b_const else 0),
                      lambda m: RECORD_WORDS * D, min(step, MAX_COUNT))
        if op.kind != "gelu":
            records = self.load_records(rec_addr, D, f"{op.name} records")
        cb = None
        if b_const is not None and b_const[1] == 1:
            cb = self.spad_alloc(D, f"{op.name} const")
            self.load_const(b_const[0], 1, D, D, cb, D)
        first = True
        for t0 in range(0, T, m):
            mc = min(m, T - t0)
            ab = self.spad_alloc(mc * D, f"{op.name} in")
            self.load_rows(x, t0, mc, ab, 0, D)
            bb = cb
            if two and cb is None:
                bb = self.spad_alloc(mc * D, f"{op.name} in b")
                if b_const is not None:
                    self.load_const(b_const[0] + t0 * D, mc, D, D, bb, D)
                else:
                    self.load_rows(op.inputs[1], t0, mc, bb, 0, D)
            yb = self.spad_alloc(mc * D, f"{op.name} out")
            if op.kind == "layernorm":
                self.em.emit(Opcode.LAYERNORM, dict(
                    src_addr=ab.addr, src_stride=D, dst_addr=yb.addr, dst_stride=D, rows=mc,
                    cols=D, param_addr=records.addr, load_params=int(first),
                    zp_in=int(op.attrs["zp_in"])),
                    reads=[ab, records], writes=[yb])
            elif op.kind == "add":
                self.em.emit(Opcode.ADD, dict(
                    a_addr=ab.addr, a_stride=D, b_addr=bb.addr, b_stride=0 if bb is cb else D,
                    dst_addr=yb.addr, dst_stride=D, rows=mc, cols=D, param_addr=records.addr,
                    load_params=int(first), zp_a=int(op.attrs["zp_a"]),
                    zp_b=int(op.attrs["zp_b"]), zp_out=int(op.attrs["zp_out"])),
                    reads=[ab, bb, records], writes=[yb])
            else:
                self.em.emit(Opcode.GELU, dict(
                    src_addr=ab.addr, src_stride=D, dst_addr=yb.addr, dst_stride=D, rows=mc, cols=D),
                    reads=[ab], writes=[yb])
            first = False
            self.spad.free(ab)
            if bb is not None and bb is not cb:
                self.spad.free(bb)
            self.store_rows(out, t0, mc, 0, yb, D, D)
            self.spad.free(yb)
        if cb is not None:
            self.spad.free(cb)
        if records is not None:
            self.acc.free(records)

    # token mean ------------------------------------------------------------
    def _token_mean(self, op: Op) -> None:
        R, C = self.R, self.C
        x = op.inputs[0]
        self._check_int8_input(op, x)
        T, D = self._dims(x)
        start = int(op.attrs["start"])
        TR, DC = _ceil_to(T, R), _ceil_to(D, C)
        self._check_stride(op, DC, SPAD_STRIDE, "row stride")
        ones = np.zeros(TR, dtype=np.int8)
        ones[start:T] = 1
        ones_addr = self.const(ones)
        bias = -int(op.attrs["zp_in"]) * (T - start)
        rec_addr = self.const_records([[bias], op.params["mult"], op.params["shift"],
                                       [int(op.attrs["zp_out"])]], DC)
        self._fit(op, "token_mean", lambda m: TR * DC + TR + DC, lambda m: DC * (RECORD_WORDS + 1), 1)
        out = self._out(op.outputs[0])
        records = self.load_records(rec_addr, DC, f"{op.name} records")
        xb = self.spad_alloc(TR * DC, f"{op.name} x")
        self.load_rows(x, 0, T, xb, 0, DC)
        ob1 = self.spad_alloc(TR, f"{op.name} ones")
        self.load_const(ones_addr, 1, TR, TR, ob1, TR)
        ab = self.acc_alloc(DC, f"{op.name} acc")
        self.em.emit(Opcode.MATMUL, dict(
            mode=MatMode.INT8, transpose=0, accumulate=0, m=1, n_tiles=DC // C, k_tiles=TR // R,
            a_addr=ob1.addr, a_stride=TR, w_addr=xb.addr, w_stride=DC, acc_addr=ab.addr,
            acc_stride=DC), reads=[ob1, xb], writes=[ab], macs=(T - start) * D)
        yb = self.spad_alloc(DC, f"{op.name} out")
        self.em.emit(Opcode.REQUANT, dict(
            src_addr=ab.addr, src_stride=DC, dst_addr=yb.addr, dst_stride=DC, rows=1, cols=D,
            param_addr=records.addr, load_params=1, per_channel=1, out_type=OutType.INT8, gelu=0),
            reads=[ab, records], writes=[yb])
        self.store_rows(out, 0, 1, 0, yb, DC, D)
        for b in (xb, ob1, yb):
            self.spad.free(b)
        for b in (ab, records):
            self.acc.free(b)

    # ------------------------------------------------------------------ image
    def _finish(self) -> ProgramImage:
        base = _ceil_to(len(self.params), DRAM_ALIGN)
        size = base + self.act_top
        if size >= 1 << 32:
            raise CompileError(f"DRAM image of {size} bytes exceeds the 32-bit address space "
                               f"by {size - (1 << 32) + 1} bytes")
        for i in self.reloc:
            self.em.instrs[i].args["dram_addr"] += base
        init = np.zeros(base, dtype=np.uint8)
        init[:len(self.params)] = np.frombuffer(bytes(self.params), dtype=np.uint8)
        placements = {}
        for t in self._acts:
            if t.const_prefix is not None:
                start = base + t.addr
                prefix = t.const_prefix.astype(np.int8).view(np.uint8).ravel()
                grown = np.zeros(start + prefix.size, dtype=np.uint8)
                grown[:len(init)] = init
                grown[start:] = prefix
                init = grown
            gt = self.g.tensors[t.name]
            placements[t.name] = TensorPlacement(t.name, base + t.addr, t.rows, t.cols,
                                                 t.elem_bytes, t.row_stride, tuple(gt.shape),
                                                 gt.signed)
        for name, p in self.place.items():
            if isinstance(p, DramTensor) and p.parent is not None:
                gt = self.g.tensors[name]
                placements[name] = TensorPlacement(name, base + p.addr, p.rows, p.cols,
                                                   p.elem_bytes, p.row_stride, tuple(gt.shape),
                                                   gt.signed)
        return ProgramImage(
            config=self.cfg, instructions=self.em.instrs, dram_init=init, dram_size=size,
            inputs=[placements[n] for n in self.g.inputs],
            outputs=[placements[n] for n in self.g.outputs],
            tensors=placements, op_names=self.op_names,
            instr_op=self.em.instr_op, instr_macs=self.em.instr_macs,
            info={"graph": dict(self.g.info)})


#: Op kinds the accelerator runs (the others, from I-ViT and PTQ4ViT graphs, wait for their units).
LOWERED_KINDS = ("patchify", "linear", "concat_tokens", "add", "layernorm", "qk_scores", "softmax",
                 "attn_value", "gelu", "select_tokens", "token_mean")


class UnsupportedOpsError(CompileError):
    """The graph holds ops that the accelerator does not run yet."""


def check_accelerator_ops(graph: IntGraph) -> None:
    """Raise :class:`UnsupportedOpsError` naming every op the accelerator cannot run yet:
    op kinds without a unit, and 8-bit kinds asked for another output width (W6A6)."""
    bad: dict[str, list[str]] = {}
    for op in graph.ops:
        what = None
        if op.kind not in LOWERED_KINDS:
            what = op.kind
        elif op.kind == "linear" and op.attrs["out_bits"] not in (8, 16):
            what = f"linear with {op.attrs['out_bits']}-bit output"
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


def compile_graph(graph: IntGraph, config: AcceleratorConfig) -> ProgramImage:
    """Compile ``graph`` for ``config``; :class:`CompileError` says what does not fit, and
    :class:`UnsupportedOpsError` which ops the accelerator does not run yet."""
    check_accelerator_ops(graph)
    return _Compiler(graph, config).run()
