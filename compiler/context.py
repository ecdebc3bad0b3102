"""The lowering context: what every lowerer shares (step 3 of the compiler).

:class:`LowerCtx` holds the config, the :class:`~compiler.layout.DramLayout`, the two on-chip
:class:`~compiler.emitter.Allocator` s and the :class:`~compiler.emitter.Emitter`, and offers
the building blocks of a lowerer:

- DMA: :meth:`LowerCtx.load_rows` (rows of a tensor or of a view into the scratchpad, one
  LOAD per stored piece so a consumer follows its producer's STOREs),
  :meth:`LowerCtx.load_const`, :meth:`LowerCtx.load_records` (parameter records into the
  parameter memory) and :meth:`LowerCtx.store_rows`.
- Memory regions.  Every on-chip memory of the accelerator (``hw.config`` regions: one
  writer, one reader each) has its own allocator; a buffer is allocated in the region of its
  producer and consumer (e.g. ``act`` for what a LOAD writes and the array streams).  Every instruction whose DRAM address
  points into the activation region is remembered for relocation.
- Working sets and chunk sizes.  A lowerer declares its working set once, as a function of
  the chunk size ``m`` returning named :class:`Need` s (memory, size, copies kept in flight),
  and uses that one declaration both to choose ``m`` (:meth:`LowerCtx.fit_chunk`: the largest
  ``m`` for which the allocators, with their own alignment, say the whole set fits) and to
  allocate (:meth:`LowerCtx.alloc` of ``need(mc)["name"]``).
- Checks that name the op: int8 inputs, instruction field limits taken from
  :data:`compiler.isa.FORMATS`, and :meth:`LowerCtx.unit_check`, which runs a hardware
  unit's own validation (``hw/``) and turns its ``ValueError`` into a
  :class:`~compiler.emitter.CompileError`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from hw.config import AcceleratorConfig
from sw.graph import IntGraph, Op

from .emitter import Allocator, Buffer, CompileError, Emitter
from .isa import FORMATS, SPECS, Field, IllegalInstructionError, Mem, Opcode, Queue, Violation
from .layout import RECORD_WORDS, DramLayout, DramTensor, GatherView, PatchView, RowsView

__all__ = ["MAX_ROWS", "Need", "need", "field_of", "LowerCtx"]


def field_of(opcode: Opcode, name: str) -> Field:
    """The instruction field ``name`` of ``opcode`` (:data:`compiler.isa.FORMATS`)."""
    for f in FORMATS[opcode]:
        if f.name == name:
            return f
    raise KeyError(f"{opcode.name} has no field {name!r}")


#: The most rows (or streaming rows ``m``) one instruction can process.
MAX_ROWS = min(f.hi for fields in FORMATS.values() for f in fields if f.name in ("rows", "m"))
#: The most stored pieces of a scattered tensor (written by :meth:`LowerCtx.store_row_list`
#: in several pieces: Swin's shifted windows, a few tokens a STORE) a load follows one LOAD
#: each; beyond, one LOAD waits for them all.
MAX_PIECES = 64
#: The most words one accumulator LOAD moves (one row of ``cols`` words).
_MAX_LOAD_COLS = field_of(Opcode.LOAD, "cols").hi


def _runs(rows, limit: int | None = None, period: int = 0, first: int = 0):
    """``(k, row, n)``: the runs of consecutive values of ``rows`` (``rows[k] .. rows[k] + n -
    1`` at positions ``k ..``), each at most ``limit`` long and, with a ``period``, none
    crossing a multiple of it (positions counted from ``first``)."""
    rows = [int(r) for r in rows]
    out = []
    k = 0
    while k < len(rows):
        n = 1
        while k + n < len(rows) and rows[k + n] == rows[k] + n and (limit is None or n < limit) \
                and not (period and (first + k + n) % period == 0):
            n += 1
        out.append((k, rows[k], n))
        k += n
    return out


def _progressions(rows):
    """``(k, row, n, d)``: the listed rows cut into arithmetic progressions ``row, row + d,
    ...`` (``n`` of them, ``d >= 1``) at positions ``k ..``, greedily."""
    rows = [int(r) for r in rows]
    out = []
    k = 0
    while k < len(rows):
        n, d = 1, 1
        if k + 1 < len(rows) and rows[k + 1] > rows[k]:
            d = rows[k + 1] - rows[k]
            n = 2
            while k + n < len(rows) and rows[k + n] - rows[k + n - 1] == d and n < MAX_ROWS:
                n += 1
        out.append((k, rows[k], n, d))
        k += n
    return out


@dataclass(frozen=True)
class Need:
    """One buffer of a working set: ``size`` bytes (scratchpad regions) or words
    (accumulator and parameter memories) in region ``mem``, with ``copies`` of it in flight
    at once (so the loads of the next ones overlap the work on the current one)."""
    mem: str
    size: int
    copies: int = 1


def need(region: str, size: int, copies: int = 1) -> Need:
    """A buffer of ``size`` elements in ``region``."""
    return Need(region, size, copies)


#: A working set: buffer role -> what it needs.
WorkingSet = dict[str, Need]


class LowerCtx:
    """State shared by the lowerers of one compilation."""

    def __init__(self, graph: IntGraph, config: AcceleratorConfig, layout: DramLayout):
        self.graph, self.cfg, self.layout = graph, config, layout
        self.R, self.C, self.L = config.array_rows, config.array_cols, config.vector_lanes
        self.N = config.lanes
        #: One allocator per on-chip memory; buffers start on whole rows of the memory
        #: (parameter records on whole records).
        self.allocators = {
            r.name: Allocator(r.name, r.size, RECORD_WORDS if r.name == "param" else self.N, r.base)
            for r in config.regions.values()}
        self.em = Emitter()
        #: Instructions whose dram_addr points into the activation region.
        self.reloc: list[int] = []
        self.op_names = [op.name for op in graph.ops]

    # ------------------------------------------------------------------ emission
    def at(self, index: int) -> None:
        """Attribute the following instructions to graph op ``index``."""
        self.em.op_index = index

    def emit(self, opcode: Opcode, args: dict, reads=(), writes=(), macs: int = 0) -> int:
        """:meth:`Emitter.emit` of an instruction the ISA table accepts for this config; an
        illegal field value or a broken constraint becomes a CompileError naming the op."""
        try:
            SPECS[opcode].check(self.cfg, args)
            return self.em.emit(opcode, args, reads=reads, writes=writes, macs=macs)
        except (IllegalInstructionError, Violation) as exc:
            raise CompileError(f"op {self.op_names[self.em.op_index]!r}: {opcode.name}: {exc}") from None

    # ------------------------------------------------------------------ memory
    def allocator(self, mem: str) -> Allocator:
        return self.allocators[mem]

    def alloc(self, need: Need, what: str) -> Buffer:
        """One buffer of a working-set entry."""
        return self.allocator(need.mem).alloc(need.size, what)

    def alloc_pair(self, lo: Need, hi: Need, what: str) -> tuple[Buffer, Buffer]:
        """Buffers in two regions at the same offset from each region's base (SOFTMAX's score
        bias planes in ``vin`` and ``vin2``): the lowest offset free in both."""
        a, b = self.allocator(lo.mem), self.allocator(hi.mem)
        size = max(a.aligned(lo.size), b.aligned(hi.size))
        starts = sorted({x - a.base for x, _ in a.free_runs()} | {x - b.base for x, _ in b.free_runs()})
        for off in starts:
            off = -(-off // max(a.align, b.align)) * max(a.align, b.align)
            x = a.alloc_at(a.base + off, size, what)
            if x is None:
                continue
            y = b.alloc_at(b.base + off, size, what)
            if y is not None:
                return x, y
            a.free(x)
        raise CompileError(f"{what}: no offset is free for {size} bytes in both {lo.mem} and {hi.mem}")

    def free(self, *bufs: Buffer) -> None:
        for b in bufs:
            self.allocator(b.mem).free(b)

    @staticmethod
    def _sizes(ws: WorkingSet, mem: str) -> list[int]:
        return [n.size for n in ws.values() if n.mem == mem for _ in range(n.copies)]

    def fits(self, ws: WorkingSet) -> bool:
        """Whether every allocator says the whole working set fits at once."""
        return all(self.allocators[mem].fits(self._sizes(ws, mem)) for mem in {n.mem for n in ws.values()})

    def fit_chunk(self, op: Op, what: str, need: Callable[[int], WorkingSet], upper: int) -> int:
        """The largest chunk ``m <= upper`` whose working set ``need(m)`` fits; a
        CompileError naming the op, each memory that is short and by how much if not even
        ``m = 1`` fits."""
        if not self.fits(need(1)):
            ws = need(1)
            parts = []
            for mem in dict.fromkeys(n.mem for n in ws.values()):
                a = self.allocators[mem]
                sizes = self._sizes(ws, mem)
                if a.fits(sizes):
                    continue
                short = a.need(sizes) - a.free_bytes
                words = self.cfg.regions[mem].space != "spad"
                unit = "words" if words else "bytes"
                have = (f"the config has {a.capacity}" if a.free_bytes == a.capacity
                        else f"{a.free_bytes} of the config's {a.capacity} are free")
                also = f" = {4 * short} bytes" if words else ""
                parts.append(f"the {mem} memory needs {a.need(sizes)} {unit}, {have} "
                             f"(short by {short} {unit}{also})")
            err = CompileError(f"op {op.name!r} ({what}) does not fit even one row at a time: "
                               + "; ".join(parts))
            #: memory -> the space one row of the working set needs there (its units).
            err.short = {mem: self.allocators[mem].need(self._sizes(ws, mem))
                         for mem in dict.fromkeys(n.mem for n in ws.values())
                         if not self.allocators[mem].fits(self._sizes(ws, mem))}
            raise err
        lo, hi = 1, max(1, upper)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.fits(need(mid)):
                lo = mid
            else:
                hi = mid - 1
        return lo

    # ------------------------------------------------------------------ checks
    def check_int8_input(self, op: Op, name: str) -> None:
        t = self.graph.tensors[name]
        if t.bits != 8 or not t.signed:
            raise CompileError(f"op {op.name!r} reads {name!r} ({'' if t.signed else 'u'}int{t.bits}); "
                               "the accelerator's units read int8 activations")

    def check_field(self, op: Op, opcode: Opcode, field: str, value: int, what: str) -> None:
        """Refuse a value that instruction field ``opcode.field`` cannot hold."""
        f = field_of(opcode, field)
        if value > f.hi:
            raise CompileError(f"op {op.name!r}: {what} of {value} exceeds the instruction's "
                               f"{f.bits}-bit field (max {f.hi}) by {value - f.hi}")

    def unit_check(self, op: Op, unit: str, job: str, check: Callable, *args):
        """``check(self.cfg, *args)``: a hardware unit's own validation (a timing or beat
        function of ``hw/``); its ``ValueError`` for a job the unit cannot run becomes a
        CompileError naming the op."""
        try:
            return check(self.cfg, *args)
        except ValueError as exc:
            raise CompileError(f"op {op.name!r}: the {unit} cannot run {job}: {exc}") from None

    # ------------------------------------------------------------------ loads / stores
    def load_rows(self, name: str, r0: int, nr: int, dst: Buffer, dst_off: int, dst_stride: int,
                  pad: int = 0, col0: int = 0, ncols: int | None = None) -> None:
        """Emit the LOADs that bring rows ``r0 .. r0 + nr`` (columns ``col0 ..``) of a tensor
        into the scratchpad at ``dst + dst_off``, rows ``dst_stride`` bytes apart."""
        p = self.layout.place.get(name)
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
        elif isinstance(p, GatherView):
            self._load_gather(p, r0, nr, dst, dst_off, dst_stride, pad, col0, ncols)
        else:
            raise CompileError(f"tensor {name!r} has no placement")

    def load_row_list(self, name: str, rows, dst: Buffer, dst_off: int, dst_stride: int,
                      pad: int = 0, col0: int = 0, ncols: int | None = None) -> None:
        """:meth:`load_rows` of the listed rows (in that order) to consecutive destination
        rows: one LOAD per arithmetic progression of rows (a run of consecutive rows goes
        through :meth:`load_rows`, a strided one is one LOAD at that DRAM stride)."""
        p = self.layout.place.get(name)
        for k, r, n, d in _progressions(rows):
            if d == 1 or not isinstance(p, DramTensor):
                for t in range(n) if d != 1 else [0]:
                    self.load_rows(name, r + t * d, n if d == 1 else 1, dst,
                                   dst_off + (k + t) * dst_stride, dst_stride, pad, col0, ncols)
                continue
            width = p.cols - col0 if ncols is None else ncols
            b0, b1 = col0 * p.elem_bytes, (col0 + width) * p.elem_bytes
            self._load(self._deps(p, r, r + (n - 1) * d + 1, b0, b1),
                       p.addr + r * p.row_stride + b0, d * p.row_stride, n, b1 - b0, dst,
                       dst_off + k * dst_stride, dst_stride, pad)

    def store_row_list(self, out: DramTensor, rows, col0: int, src: Buffer, src_stride: int,
                       ncols: int) -> None:
        """STOREs of consecutive source rows to the listed rows of ``out``: one per
        arithmetic progression of rows."""
        off = out.offset_rows if out.parent is not None else 0
        progressions = _progressions(rows)
        if len(progressions) > 1:
            out.root.scattered = True
        for k, r, n, d in progressions:
            part = Buffer(src.mem, src.addr + k * src_stride, 0, src.what, src.written, src.accessed)
            if d == 1:
                self.store_rows(out, r, n, col0, part, src_stride, ncols)
                continue
            self.reloc.append(len(self.em.instrs))
            i = self.emit(Opcode.STORE, dict(
                src_addr=part.addr, src_stride=src_stride,
                dram_addr=out.addr + r * out.row_stride + col0 * out.elem_bytes,
                dram_stride=d * out.row_stride, rows=n, cols=ncols * out.elem_bytes),
                reads=[part])
            for t in range(n):                 # one rectangle a row: they tile what is written
                out.root.stores.append((off + r + t * d, off + r + t * d + 1, col0 * out.elem_bytes,
                                        (col0 + ncols) * out.elem_bytes, i))

    def _load_gather(self, v: GatherView, r0: int, nr: int, dst: Buffer, dst_off: int,
                     dst_stride: int, pad: int, col0: int, ncols: int | None) -> None:
        """LOADs of rows ``r0 .. r0 + nr`` of a gather view: per part, the source rows in
        arithmetic progressions (one LOAD each); where a part is whole source rows laid out
        back to back on both sides (``dst_stride`` = the row's bytes), runs of consecutive
        source rows become one LOAD row and runs of equal length in arithmetic progression one
        LOAD."""
        base, eb = v.base, v.base.elem_bytes
        ncols = v.cols - col0 if ncols is None else ncols
        b0, b1 = col0 * eb, (col0 + ncols) * eb
        full = base.cols * eb
        for index, p0, width in v.parts:
            q0, q1 = max(b0, p0), min(b1, p0 + width)
            if q0 >= q1:
                continue
            src = np.asarray(index[r0:r0 + nr], dtype=np.int64)
            w = q1 - q0
            last = q1 == b1
            off = dst_off + (q0 - b0)
            s0 = q0 - p0                       # byte offset inside the source row
            if w == full and dst_stride == full and (pad == 0 or not last) and base.row_stride == full:
                runs = _runs(src, max(1, _MAX_LOAD_COLS // full), v.period, r0)
                used = [False] * len(runs)
                for i, (k, r, n) in enumerate(runs):
                    if used[i]:
                        continue
                    group = [i]
                    # Runs of one piece of a window are every run, or every p-th where the
                    # shift cuts rows (p = 2 for a window, 3 for a grid row read back).
                    for period in range(1, min(16, len(runs) - i) + 1):
                        g = [i]
                        j = i + period
                        while j < len(runs) and not used[j] and runs[j][2] == n and len(g) < MAX_ROWS:
                            if runs[j][1] <= runs[g[-1]][1] or (len(g) > 1 and (
                                    runs[j][1] - runs[g[-1]][1] != runs[g[1]][1] - r
                                    or runs[j][0] - runs[g[-1]][0] != runs[g[1]][0] - k)):
                                break
                            g.append(j)
                            j += period
                        if len(g) > len(group):
                            group = g
                    for j in group:
                        used[j] = True
                    rows_src = np.concatenate([src[runs[j][0]:runs[j][0] + n] for j in group])
                    dep = self._deps(base, int(rows_src.min()), int(rows_src.max()) + 1, 0, full)
                    many = len(group) > 1
                    self._load(dep, base.addr + r * base.row_stride,
                               (runs[group[1]][1] - r) * base.row_stride if many else n * full,
                               len(group), n * full, dst, off + k * dst_stride,
                               (runs[group[1]][0] - k) * dst_stride if many else n * full, 0)
                continue
            k = 0
            while k < len(src):
                j = k + 1
                step = int(src[k + 1] - src[k]) if k + 1 < len(src) else 1
                if step <= 0:
                    step = 1
                    j = k + 1
                else:
                    while j < len(src) and src[j] - src[j - 1] == step and j - k < MAX_ROWS:
                        j += 1
                dep = self._deps(base, int(src[k:j].min()), int(src[k:j].max()) + 1, s0, s0 + w)
                self._load(dep, base.addr + int(src[k]) * base.row_stride + s0,
                           step * base.row_stride, j - k, w, dst, off + k * dst_stride, dst_stride,
                           pad if last else 0)
                k = j

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
        few = len(pieces) <= MAX_PIECES or not root.scattered
        if len(pieces) > 1 and few and sum((p1 - p0) * (q1 - q0) for p0, p1, q0, q1 in pieces) \
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
        for r in range(0, rows, MAX_ROWS):
            n = min(MAX_ROWS, rows - r)
            i = self.emit(Opcode.LOAD, dict(
                mem=Mem.SPAD, dram_addr=dram_addr + r * dram_stride, dram_stride=dram_stride,
                dst_addr=dst.addr + dst_off + r * dst_stride, dst_stride=dst_stride,
                rows=n, cols=cols, pad=pad),
                reads=[dep] if dep is not None else [], writes=[dst])
            if dep is not None:
                self.reloc.append(i)

    def load_const(self, addr: int, rows: int, cols: int, stride: int, dst: Buffer,
                   dst_stride: int) -> None:
        """LOADs of ``rows`` x ``cols`` constant bytes at ``addr`` into the scratchpad."""
        self._load(None, addr, stride, rows, cols, dst, 0, dst_stride, 0)

    def load_records(self, buf: Buffer, addr: int, n: int) -> None:
        """Copy ``n`` parameter records from DRAM ``addr`` into parameter-memory buffer ``buf``."""
        words = n * RECORD_WORDS
        if words > buf.size:
            raise CompileError(f"{buf.what}: {n} records do not fit its {buf.size} words")
        step = _MAX_LOAD_COLS - _MAX_LOAD_COLS % RECORD_WORDS
        for w in range(0, words, step):
            k = min(step, words - w)
            self.emit(Opcode.LOAD, dict(
                mem=Mem.PARAM, dram_addr=addr + 4 * w, dram_stride=4 * k, dst_addr=buf.addr + w,
                dst_stride=k, rows=1, cols=k, pad=0), writes=[buf])

    def store_rows(self, out: DramTensor, r0: int, nr: int, col0: int, src: Buffer,
                   src_stride: int, ncols: int) -> None:
        """STOREs of ``nr`` rows of ``ncols`` elements from ``src`` into rows ``r0..`` and
        columns ``col0..`` of ``out``."""
        off = out.offset_rows if out.parent is not None else 0
        for r in range(0, nr, MAX_ROWS):
            n = min(MAX_ROWS, nr - r)
            self.reloc.append(len(self.em.instrs))
            i = self.emit(Opcode.STORE, dict(
                src_addr=src.addr + r * src_stride, src_stride=src_stride,
                dram_addr=out.addr + (r0 + r) * out.row_stride + col0 * out.elem_bytes,
                dram_stride=out.row_stride, rows=n, cols=ncols * out.elem_bytes),
                reads=[src])
            out.root.stores.append((off + r0 + r, off + r0 + r + n, col0 * out.elem_bytes,
                                    (col0 + ncols) * out.elem_bytes, i))
