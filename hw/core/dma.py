"""The DMA engines: LOAD (DRAM -> on-chip memories, AXI AR/R) and STORE (on-chip memories ->
DRAM, AXI AW/W/B), byte-granular on both sides, and their exact timing functions.

Both engines move rows of a 2-D pattern through one realigner (:class:`RowWalker`): a row of
``b`` bytes that starts at byte offset ``i`` of an ``N``-byte input word and must land at byte
offset ``o`` of an ``N``-byte output word is a sequence of *operations*, one per cycle (input:
R beats for a LOAD, source memory words for a STORE; output: destination memory words for a
LOAD, W beats for a STORE; ``i`` and ``o`` are the addresses modulo ``N``):

* ``n_in = ceil((i + b) / N)`` input words are consumed, one per operation, in order;
* ``n_out = ceil((o + b + pad) / N)`` output words are produced (``pad`` zero bytes follow
  the row's bytes; only a LOAD to the scratchpad pads);
* output word ``m`` takes bytes from input words ``m - 1`` and ``m`` when ``o >= i`` and from
  ``m`` and ``m + 1`` when ``o < i``; in the second case the row's first operation consumes
  a word and produces nothing.

So a row takes ``n_out + [o < i]`` operations, and consecutive rows and instructions follow
each other without a gap.  Every output word is written with byte enables (partial first and
last words, ``wstrb`` on AXI), so nothing outside the pattern changes.

Timing contract (what the cycle model computes; ``s`` is an instruction's start, the cycle of
its ``instr`` handshake; ``LAT = config.dram_latency_cycles``, the cycles from an AR handshake
to its first R beat; ``WLAT = config.dram_write_latency_cycles``, from a burst's last W
handshake to its B response).  The DRAM byte offsets the timing functions use assume
``dram_base`` is a multiple of ``N`` (the control register ``DRAM_BASE`` is a multiple of 4096).

LOAD (:func:`load_timing` -> :class:`LoadTiming`), instructions in order, ``D = LOAD_DEPTH``:

* start: ``s_i >= retire_{i-D} + 1`` (at most ``D`` instructions between start and retire);
  otherwise the engine takes an instruction in any cycle (``busy`` is high in the start cycle
  and while ``D`` are in flight);
* ``data_start_i = max(s_i + request + LAT, R_free_{i-1})`` is the cycle of its first R beat;
* ``retire_i = data_start_i + data_i - 1 + tail``; ``R_free_i = data_start_i + data_i``
  (``R_free`` is 0 before the first LOAD).

``request = 2`` (the first AR is presented two cycles after the start, when the request side
is idle), ``tail = 1`` (the last word is written, and ``retire`` pulses, the cycle after the
data side's last operation), ``data`` = the operations of all rows.  This holds while the
memory returns a burst's first beat ``LAT`` cycles after its AR and streams beats back to back
(AXI's ARREADY may drop: a request side still busy, or an AR held back, does not change the
formula as long as the memory keeps every beat of the earlier ARs coming).

STORE (:func:`store_timing` -> :class:`StoreTiming`), ``D = STORE_DEPTH``, everything from ``s``:

* the engine takes the next STORE at ``s + next`` at the earliest, and
  ``s_i >= retire_{i-D} + 1``;
* the first W beat is offered at ``s + first_w``, the last at ``s + first_w + w_cycles - 1``;
* ``retire = s + 4 + ops + WLAT`` (the cycle after the B response of the last burst), where ``ops`` = the
  operations of all rows, ``next = ops + 1``, ``first_w = 4 + f`` and ``w_cycles = ops - f``
  with ``f = 1`` when the first row's output offset is below its input offset (its first
  operation produces no beat), else 0.  Within the instruction W is offered every cycle
  except after each later row's non-producing operation.

This holds while AW and W are accepted at once.  With ``config.dram_bytes_per_cycle`` set
(a board with less memory bandwidth than the ``N``-byte port), the timing functions stretch
the beats by ``k = N / dram_bytes_per_cycle``: LOAD ``data = max(ops, k beats)``, STORE
``ops`` likewise; that is an estimate for the model, not checked against RTL.

Throughput: one ``N``-byte word per cycle on both engines; one extra cycle per row whose
output offset is below its input offset, the pad words of a LOAD, and one idle cycle between
two STORE instructions.  Latency: a LOAD's first beat ``2 + LAT`` cycles after its start, its
retire one cycle after its last operation; a STORE's first W beat 4 cycles after its start,
its retire ``WLAT + 1`` cycles after its last W beat.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from amaranth import C, Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from compiler.isa import LOAD_REGIONS, Mem, Opcode
from hw.axi import (AXI_BOUNDARY, AXI_BURST_MAX_BEATS, AxiBurst, axi4_read_signature,
                    axi4_write_signature)
from hw.config import AcceleratorConfig
from hw.core.isa_layout import fields_of
from hw.core.memories import geometry
from hw.core.signatures import engine_signature, read_port_signature, write_port_signature

__all__ = ["LoadEngine", "StoreEngine", "RowWalker", "LoadTiming", "StoreTiming",
           "load_timing", "store_timing", "LOAD_DEPTH", "STORE_DEPTH",
           "LOAD_DESTS", "STORE_SOURCES", "LOAD_REQUEST_CYCLES", "LOAD_TAIL_CYCLES"]

#: Most LOAD instructions between start and retire.
LOAD_DEPTH = 4
#: Most STORE instructions between start and retire (waiting for their B responses).
STORE_DEPTH = 4
#: The memories a LOAD writes (the scratchpad regions of ``compiler.isa.LOAD_REGIONS``, then
#: the parameter memory), one write port each.
LOAD_DESTS: tuple[str, ...] = tuple(LOAD_REGIONS) + ("param",)
#: The memories a STORE reads, one read port each.
STORE_SOURCES: tuple[str, ...] = ("out", "copy")
#: Cycles from a LOAD's start to its first AR (request side idle).
LOAD_REQUEST_CYCLES = 2
#: Cycles from the LOAD data side's last operation to the retire pulse.
LOAD_TAIL_CYCLES = 1
#: Cycles from a STORE's start to its first operation.
STORE_FIRST_OP = 2
#: Cycles from a STORE operation to its W beat being offered.
STORE_W_DELAY = 2
#: Cycles from the last burst's B response to the STORE's retire pulse: the pulse is a
#: register, so the sequencer's start and semaphore logic sees none of the response count
#: (placed ULX3S core: the B count's adder and compare -> retire -> the sequencer's STORE
#: in-flight FIFO, 21.0 ns).
STORE_RETIRE_CYCLES = 1

ADDR_BITS = 32
#: Bits of a row's byte count: ``4 cols`` for a parameter load.
ROW_BITS = 18
COUNT_BITS = 16


def _check_config(config: AcceleratorConfig) -> int:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"an AcceleratorConfig is required, got {config!r}")
    return config.lanes


# ----------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadTiming:
    """Exact timing of one LOAD (module docstring): ``request`` cycles from the start to the
    first AR, ``latency`` (``dram_latency_cycles``) from an AR to its first beat, ``data``
    cycles of the data side, ``tail`` cycles from its last one to the retire pulse; ``beats``
    R beats, ``rows``."""
    request: int
    latency: int
    data: int
    tail: int
    beats: int
    rows: int

    def schedule(self, start: int, r_free: int) -> tuple[int, int, int]:
        """``(data_start, retire, r_free)`` of the instruction started at ``start`` when the
        read data channel is free from ``r_free`` (the previous LOAD's ``r_free``)."""
        data_start = max(start + self.request + self.latency, r_free)
        return data_start, data_start + self.data - 1 + self.tail, data_start + self.data


@dataclass(frozen=True)
class StoreTiming:
    """Exact timing of one STORE, from its start (module docstring): the first W beat at
    ``first_w``, ``w_cycles`` cycles from the first W beat to the last, the next STORE may
    start at ``next``, the retire pulse at ``retire``; ``ops`` operations, ``beats`` W beats."""
    first_w: int
    w_cycles: int
    next: int
    retire: int
    ops: int
    beats: int


def _rows(n: int, rows: int, in0: int, in_step: int, out0: int, out_step: int,
          row_bytes: int, pad: int) -> tuple[int, int, int, bool]:
    """``(operations, input words, output words, first row skips)`` of ``rows`` rows.

    Row ``r`` starts at input offset ``(in0 + r in_step) mod n`` and output offset
    ``(out0 + r out_step) mod n``; both repeat with a period dividing ``n``, so the sum is
    the sum over one period times the whole periods plus the first rows of the last one.
    """
    in_step, out_step = in_step % n, out_step % n
    period = n // math.gcd(n, in_step, out_step)
    if period == 1 or rows == 1:
        i, o = in0 % n, out0 % n
        n_in = (i + row_bytes + n - 1) // n
        n_out = (o + row_bytes + pad + n - 1) // n
        neg = int(o < i)
        return rows * (n_out + neg), rows * n_in, rows * n_out, bool(neg)
    whole, part = divmod(rows, period)
    ops = words_in = words_out = 0
    first = False
    for r in range(min(period, rows)):
        i, o = (in0 + r * in_step) % n, (out0 + r * out_step) % n
        n_in = (i + row_bytes + n - 1) // n
        n_out = (o + row_bytes + pad + n - 1) // n
        count = whole + (r < part)
        ops += count * (n_out + (o < i))
        words_in += count * n_in
        words_out += count * n_out
        if r == 0:
            first = o < i
    return ops, words_in, words_out, first


def _stretch(config: AcceleratorConfig) -> int:
    """Cycles per beat of the configured DRAM bandwidth (1 at the full width)."""
    return config.lanes // config.dram_bytes


def load_timing(config: AcceleratorConfig, args: Mapping[str, int]) -> LoadTiming:
    """Timing of the LOAD with fields ``args`` (the ISA table's names).

    ``data`` is the sum over rows of ``ceil((o + b + pad) / N) + [o < i]``, with ``b`` the
    row's bytes (``4 cols`` for ``mem = PARAM``), ``i`` its DRAM byte offset in a beat and
    ``o`` its destination byte offset in a word.  Rows sharing their alignment are summed in
    closed form.  With ``dram_bytes_per_cycle`` set, ``data = max(data, k beats)`` (estimate).
    """
    n = _check_config(config)
    param = args["mem"] == Mem.PARAM
    scale = 4 if param else 1
    row_bytes = scale * args["cols"]
    pad = 0 if param else args["pad"]
    ops, beats, _, _ = _rows(n, args["rows"], args["dram_addr"], args["dram_stride"],
                             scale * args["dst_addr"], scale * args["dst_stride"], row_bytes, pad)
    k = _stretch(config)
    if k > 1:
        ops = max(ops, k * beats)
    return LoadTiming(request=LOAD_REQUEST_CYCLES, latency=config.dram_latency_cycles, data=ops,
                      tail=LOAD_TAIL_CYCLES, beats=beats, rows=args["rows"])


def store_timing(config: AcceleratorConfig, args: Mapping[str, int]) -> StoreTiming:
    """Timing of the STORE with fields ``args``, from its start.

    ``ops`` is the sum over rows of ``ceil((o + cols) / N) + [o < i]``, ``o`` the row's DRAM
    byte offset in a beat, ``i`` its source byte offset in a word.  With
    ``dram_bytes_per_cycle`` set, ``ops = max(ops, k beats)`` (estimate).
    """
    n = _check_config(config)
    ops, _, beats, skip = _rows(n, args["rows"], args["src_addr"], args["src_stride"],
                                args["dram_addr"], args["dram_stride"], args["cols"], 0)
    k = _stretch(config)
    if k > 1:
        ops = max(ops, k * beats)
    first_w = STORE_FIRST_OP + STORE_W_DELAY + int(skip)
    return StoreTiming(first_w=first_w, w_cycles=ops - int(skip), next=ops + 1,
                       retire=STORE_FIRST_OP + STORE_W_DELAY - 1 + ops
                       + config.dram_write_latency_cycles + STORE_RETIRE_CYCLES,
                       ops=ops, beats=beats)


# ----------------------------------------------------------------------------------------
# The realigner's row sequencer
# ----------------------------------------------------------------------------------------

class RowWalker(wiring.Component):
    """Steps through the operations of one realigned row (module docstring).

    Parameters
    ----------
    lanes : int
        ``N``, bytes per word (a power of two, at least 2).
    row_bits, pad_bits : int
        Widths of the row's byte count and pad byte count.

    Members
    -------
    load : ``In(1)``
        Start a row (its parameters on ``off_in``, ``off_out``, ``row_bytes``, ``pad``); only
        while no row is active or in the step of the row's last operation.
    off_in, off_out : ``In(log2 N)``
        The row's first byte offset in the input word and in the output word.
    row_bytes, pad : ``In(row_bits)``, ``In(pad_bits)``
        Bytes of the row and zero bytes after it (at least one row byte).
    step : ``In(1)``
        The current operation happens (the owner's data are there).
    active : ``Out(1)``
        A row is in progress: the current operation is valid.
    consume : ``Out(1)``
        The current operation takes the next input word.
    produce : ``Out(1)``
        The current operation writes an output word.
    last : ``Out(1)``
        The current operation is the row's last.
    shift : ``Out(range(1, N + 1))``
        The output word is bytes ``[shift, shift + N)`` of ``Cat(previous input, current input)``.
    data_mask, write_mask : ``Out(N)``
        Bytes of the output word that hold row data; bytes written (row data and pad).
    """

    def __init__(self, lanes: int, row_bits: int, pad_bits: int):
        self._n = lanes
        self._lg = exact_log2(lanes)
        if self._lg < 1:
            raise ValueError(f"lanes must be a power of two >= 2, got {lanes}")
        self._row_bits, self._pad_bits = row_bits, pad_bits
        super().__init__({
            "load": In(1),
            "off_in": In(self._lg),
            "off_out": In(self._lg),
            "row_bytes": In(row_bits),
            "pad": In(pad_bits),
            "step": In(1),
            "active": Out(1),
            "consume": Out(1),
            "produce": Out(1),
            "last": Out(1),
            "shift": Out(range(1, lanes + 1)),
            "data_mask": Out(lanes),
            "write_mask": Out(lanes),
        })

    def elaborate(self, platform):
        m = Module()
        n, lg = self._n, self._lg
        rem_max = n - 1 + (1 << self._row_bits) - 1 + (1 << self._pad_bits) - 1
        active = Signal()
        in_left = Signal(range((rem_max >> lg) + 2))
        skip = Signal()
        first = Signal()
        off_out = Signal(lg)
        rem_data = Signal(range(rem_max + 1))
        rem_all = Signal(range(rem_max + 1))
        # ``rem_all <= N``, kept as a register beside rem_all: ``last`` feeds the engines'
        # instruction ready and the sequencer's start logic, and the compare's carry chain
        # was the head of that path (placed ULX3S core: the store walker's rem_all ->
        # last -> the store engine's ready -> the sequencer's semaphores, 18.1 ns).
        rem_small = Signal()
        shift = Signal(range(1, n + 1))

        lo = Cat(*((~first) | (off_out <= j) for j in range(n)))
        m.d.comb += [
            self.active.eq(active),
            self.consume.eq(active & (in_left != 0)),
            self.produce.eq(active & ~skip),
            # The last operation is the one that writes the row's final bytes: after the
            # skip (if any), ceil(rem_all / N) writes of N bytes each; no operation count
            # to compute when a row is loaded.
            self.last.eq(active & ~skip & rem_small),
            self.shift.eq(shift),
            self.data_mask.eq(lo & Cat(*(rem_data > j for j in range(n)))),
            self.write_mask.eq(lo & Cat(*(rem_all > j for j in range(n)))),
        ]

        with m.If(self.step & active):
            m.d.sync += [
                in_left.eq(in_left - (in_left != 0)),
                skip.eq(0),
            ]
            with m.If(~skip):
                m.d.sync += [
                    first.eq(0),
                    rem_data.eq(Mux(rem_data > n, rem_data - n, 0)),
                    rem_all.eq(Mux(rem_all > n, rem_all - n, 0)),
                    rem_small.eq(rem_all <= 2 * n),
                ]
            with m.If(~skip & rem_small):
                m.d.sync += active.eq(0)

        with m.If(self.load):
            end = self.off_out + self.row_bytes
            neg = self.off_out < self.off_in
            m.d.sync += [
                active.eq(1),
                in_left.eq((self.off_in + self.row_bytes + (n - 1)) >> lg),
                skip.eq(neg),
                first.eq(1),
                off_out.eq(self.off_out),
                rem_data.eq(end),
                rem_all.eq(end + self.pad),
                rem_small.eq(end + self.pad <= n),
                shift.eq((self.off_in - self.off_out - 1)[:lg] + 1),
            ]
        return m


def _realign(m: Module, prev: Signal, cur, shift, mask, n: int) -> Signal:
    """Bytes ``[shift, shift + n)`` of ``Cat(prev, cur)``, bytes outside ``mask`` zero."""
    window = Cat(prev, cur)
    shifted = Signal(8 * n)
    m.d.comb += shifted.eq(window.bit_select(shift * 8, 8 * n))
    out = Signal(8 * n)
    m.d.comb += out.eq(Cat(*(Mux(mask[j], shifted[8 * j:8 * j + 8], 0) for j in range(n))))
    return out


def _burst_beats(m: Module, beat, left, n: int, lg: int):
    """Beats of the next INCR burst from beat index ``beat`` (address ``beat N``) with
    ``left`` beats to go: at most 256 and not across a 4 KiB boundary."""
    per_page = AXI_BOUNDARY >> lg
    to_page = Signal(range(per_page + 1))
    m.d.comb += to_page.eq(per_page - beat[:exact_log2(per_page)])
    cap = to_page if per_page <= AXI_BURST_MAX_BEATS else Mux(
        to_page < AXI_BURST_MAX_BEATS, to_page, AXI_BURST_MAX_BEATS)
    beats = Signal(range(min(per_page, AXI_BURST_MAX_BEATS) + 1))
    m.d.comb += beats.eq(Mux(left < cap, left, cap))
    return beats, left <= cap


def _local_width(config: AcceleratorConfig, names) -> int:
    return max(ceil_log2(geometry(config, name).depth * config.lanes + 1) for name in names)


# ----------------------------------------------------------------------------------------
# LOAD
# ----------------------------------------------------------------------------------------

class LoadEngine(wiring.Component):
    """The LOAD engine: ``SPECS[Opcode.LOAD].execute`` over AXI4 reads, up to
    :data:`LOAD_DEPTH` instructions in flight.

    A *request side* walks the rows of the instructions in order and issues one INCR burst
    per AR (``arsize = log2 N``, ``arid = 0``), split at 4 KiB boundaries and at 256 beats;
    a *data side* walks the same rows, takes the R beats in order, realigns them
    (:class:`RowWalker`) to the destination's byte offset and writes ``N``-byte words with byte
    enables, then the ``pad`` zero bytes of each scratchpad row.  The destination is the
    LOAD region holding ``dst_addr`` (scratchpad byte address), or, for ``mem = PARAM``, the
    parameter memory at byte ``4 dst_addr`` (stride ``4 dst_stride`` bytes, ``4 cols`` bytes a
    row).  An instruction's fields are decoded at its start (``dram_base`` is added then); it
    must be legal and inside its memories (the core's decoder checks that against the ISA
    table before dispatch).

    Latency and throughput
    ----------------------
    First AR ``LOAD_REQUEST_CYCLES = 2`` cycles after the start (request side idle); R beats
    taken one per operation; ``retire`` one cycle after the last operation, with the last
    write.  The exact contract is in the module docstring (:func:`load_timing`).

    Parameters
    ----------
    config : :class:`hw.config.AcceleratorConfig`
        ``lanes`` (``N``, the AXI data width in bytes) and the memory regions.

    Members
    -------
    instr : ``In(stream.Signature(unsigned(256)))``
        LOAD instruction words; a handshake is the instruction's start.
    retire : ``Out(1)``
        One pulse per instruction, in order, in the cycle its last word is written.
    busy : ``Out(1)``
        High in a start cycle and while ``LOAD_DEPTH`` instructions are in flight.
    idle : ``Out(1)``
        No instruction in flight (no AR or R outstanding).
    axi : ``Out(axi4_read_signature(32, N))``
        The AXI4 read address and data channels.
    dram_base : ``In(32)``
        Added to every ``dram_addr`` (sampled at each start).
    error : ``Out(1)``
        An R beat with a response other than OKAY was taken; sticky until reset.
    act, weight, value, vin, vin2, copy, param : ``Out(write_port_signature(depth, 8 N))``
        Write ports of the destination memories (byte enables).
    """

    def __init__(self, config: AcceleratorConfig):
        n = _check_config(config)
        self._config = config
        members = dict(engine_signature().members)
        members.update({
            "idle": Out(1),
            "axi": Out(axi4_read_signature(ADDR_BITS, n)),
            "dram_base": In(ADDR_BITS),
            "error": Out(1),
        })
        for name in LOAD_DESTS:
            g = geometry(config, name)
            members[name] = Out(write_port_signature(g.depth, g.width, g.granularity))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        n = cfg.lanes
        lg = exact_log2(n)
        nd = len(LOAD_DESTS)
        local_bits = _local_width(cfg, LOAD_DESTS)
        f = data.View(fields_of(Opcode.LOAD), self.instr.payload)

        # ---- starts, retirements, instructions in flight
        start = self.instr.valid & self.instr.ready
        retire = Signal()
        in_flight = Signal(range(LOAD_DEPTH + 1))
        ready = in_flight != LOAD_DEPTH
        m.d.comb += [
            self.instr.ready.eq(ready),
            self.retire.eq(retire),
            self.busy.eq(~ready | start),
            self.idle.eq(in_flight == 0),
        ]
        with m.If(start & ~retire):
            m.d.sync += in_flight.eq(in_flight + 1)
        with m.Elif(retire & ~start):
            m.d.sync += in_flight.eq(in_flight - 1)

        # ---- decode at the start
        param = f.mem == Mem.PARAM
        sel = Signal(nd)
        base = C(0, local_bits)
        for k, name in enumerate(LOAD_DESTS):
            if name == "param":
                m.d.comb += sel[k].eq(param)
            else:
                region = cfg.regions[name]
                hit = ~param & (f.dst_addr >= region.base) & (f.dst_addr < region.end)
                m.d.comb += sel[k].eq(hit)
                base = Mux(hit, region.base, base)
        local = Signal(local_bits)
        m.d.comb += local.eq(Mux(param, f.dst_addr << 2, f.dst_addr - base))
        row_bytes = Mux(param, f.cols << 2, f.cols)
        dram0 = Signal(ADDR_BITS)
        m.d.comb += dram0.eq(self.dram_base + f.dram_addr)

        req_layout = data.StructLayout({"addr": ADDR_BITS, "stride": ADDR_BITS,
                                        "rows": COUNT_BITS, "row_bytes": ROW_BITS})
        dat_layout = data.StructLayout({"sel": nd, "local": local_bits, "dst_stride": ROW_BITS,
                                        "row_bytes": ROW_BITS, "pad": COUNT_BITS, "off": lg,
                                        "off_step": lg, "rows": COUNT_BITS})
        m.submodules.req_fifo = req_fifo = SyncFIFO(width=req_layout.size, depth=LOAD_DEPTH)
        m.submodules.dat_fifo = dat_fifo = SyncFIFO(width=dat_layout.size, depth=LOAD_DEPTH)
        req_in = data.View(req_layout, req_fifo.w_data)
        dat_in = data.View(dat_layout, dat_fifo.w_data)
        m.d.comb += [
            req_fifo.w_en.eq(start),
            req_in.addr.eq(dram0),
            req_in.stride.eq(f.dram_stride),
            req_in.rows.eq(f.rows),
            req_in.row_bytes.eq(row_bytes),
            dat_fifo.w_en.eq(start),
            dat_in.sel.eq(sel),
            dat_in.local.eq(local),
            dat_in.dst_stride.eq(Mux(param, f.dst_stride << 2, f.dst_stride)),
            dat_in.row_bytes.eq(row_bytes),
            dat_in.pad.eq(Mux(param, 0, f.pad)),
            dat_in.off.eq(dram0[:lg]),
            dat_in.off_step.eq(f.dram_stride[:lg]),
            dat_in.rows.eq(f.rows),
        ]

        # ---- request side: one AR per cycle, rows in order
        axi = self.axi
        cur_valid = Signal()
        cur = Signal(ADDR_BITS)                  # next byte to request
        left = Signal(ROW_BITS + lg + 1)         # bytes from the aligned cur to the row's end
        rows_left = Signal(COUNT_BITS)
        row_next = Signal(ADDR_BITS)
        stride = Signal(ADDR_BITS)
        req_row_bytes = Signal(ROW_BITS)
        beats_end = Signal(range(((1 << (ROW_BITS + lg + 1)) >> lg) + 1))
        m.d.comb += beats_end.eq((left + (n - 1)) >> lg)
        burst, row_done = _burst_beats(m, cur[lg:], beats_end, n, lg)
        ar_fire = cur_valid & axi.arready
        m.d.comb += [
            axi.arvalid.eq(cur_valid),
            axi.araddr.eq(Cat(C(0, lg), cur[lg:])),
            axi.arlen.eq(burst - 1),
            axi.arsize.eq(lg),
            axi.arburst.eq(AxiBurst.INCR),
            axi.arid.eq(0),
        ]
        instr_done = ar_fire & row_done & (rows_left <= 1)
        with m.If(ar_fire):
            with m.If(row_done):
                with m.If(rows_left <= 1):
                    m.d.sync += cur_valid.eq(0)
                with m.Else():
                    m.d.sync += [
                        cur.eq(row_next),
                        left.eq(row_next[:lg] + req_row_bytes),
                        row_next.eq(row_next + stride),
                        rows_left.eq(rows_left - 1),
                    ]
            with m.Else():
                m.d.sync += [
                    cur.eq(Cat(C(0, lg), cur[lg:] + burst)),
                    left.eq(left - (burst << lg)),
                ]
        req = data.View(req_layout, req_fifo.r_data)
        take_req = req_fifo.r_rdy & (~cur_valid | instr_done)
        m.d.comb += req_fifo.r_en.eq(take_req)
        with m.If(take_req):
            m.d.sync += [
                cur_valid.eq(1),
                cur.eq(req.addr),
                left.eq(req.addr[:lg] + req.row_bytes),
                row_next.eq(req.addr + req.stride),
                stride.eq(req.stride),
                rows_left.eq(req.rows),
                req_row_bytes.eq(req.row_bytes),
            ]

        # ---- data side: R beats -> realigned words
        m.submodules.walker = walker = RowWalker(n, ROW_BITS, COUNT_BITS)
        c_rows = Signal(COUNT_BITS)              # rows of the instruction not yet started
        c_local = Signal(local_bits)             # the next row's destination byte address
        c_off = Signal(lg)                       # the next row's DRAM byte offset
        c_off_step = Signal(lg)
        c_stride = Signal(ROW_BITS)
        c_row_bytes = Signal(ROW_BITS)
        c_pad = Signal(COUNT_BITS)
        c_sel = Signal(nd)
        last_row = Signal()
        word_bits = max(len(getattr(self, name).addr) for name in LOAD_DESTS)
        waddr = Signal(word_bits)
        prev = Signal(8 * n)

        step = walker.active & (~walker.consume | axi.rvalid)
        m.d.comb += [
            walker.step.eq(step),
            axi.rready.eq(walker.active & walker.consume),
        ]
        with m.If(step & walker.consume):
            m.d.sync += prev.eq(axi.rdata)
            with m.If(axi.rresp != 0):
                m.d.sync += self.error.eq(1)

        head = data.View(dat_layout, dat_fifo.r_data)
        from_cursor = c_rows != 0
        row_local = Mux(from_cursor, c_local, head.local)
        load_row = (~walker.active | (walker.last & step)) & (from_cursor | dat_fifo.r_rdy)
        m.d.comb += [
            walker.load.eq(load_row),
            walker.off_in.eq(Mux(from_cursor, c_off, head.off)),
            walker.off_out.eq(row_local[:lg]),
            walker.row_bytes.eq(Mux(from_cursor, c_row_bytes, head.row_bytes)),
            walker.pad.eq(Mux(from_cursor, c_pad, head.pad)),
        ]

        produce = step & walker.produce
        word = _realign(m, prev, axi.rdata, walker.shift, walker.data_mask, n)
        for k, name in enumerate(LOAD_DESTS):
            port = getattr(self, name)
            m.d.sync += [
                port.en.eq(Mux(produce & c_sel[k], walker.write_mask, 0)),
                port.addr.eq(waddr),
                port.data.eq(word),
            ]
        m.d.sync += retire.eq(step & walker.last & last_row)
        with m.If(produce):
            m.d.sync += waddr.eq(waddr + 1)

        with m.If(load_row):
            m.d.sync += waddr.eq(row_local >> lg)
            with m.If(from_cursor):
                m.d.sync += [
                    c_local.eq(c_local + c_stride),
                    c_off.eq(c_off + c_off_step),
                    c_rows.eq(c_rows - 1),
                    last_row.eq(c_rows == 1),
                ]
            with m.Else():
                m.d.comb += dat_fifo.r_en.eq(1)
                m.d.sync += [
                    c_sel.eq(head.sel),
                    c_local.eq(head.local + head.dst_stride),
                    c_off.eq(head.off + head.off_step),
                    c_off_step.eq(head.off_step),
                    c_stride.eq(head.dst_stride),
                    c_row_bytes.eq(head.row_bytes),
                    c_pad.eq(head.pad),
                    c_rows.eq(Mux(head.rows != 0, head.rows - 1, 0)),
                    last_row.eq(head.rows <= 1),
                ]
        return m


# ----------------------------------------------------------------------------------------
# STORE
# ----------------------------------------------------------------------------------------

class StoreEngine(wiring.Component):
    """The STORE engine: ``SPECS[Opcode.STORE].execute`` over AXI4 writes, up to
    :data:`STORE_DEPTH` instructions waiting for their B responses.

    One instruction at a time walks its rows: each operation reads the next source word
    (region ``out`` or ``copy`` by ``src_addr``; synchronous read), the realigner
    (:class:`RowWalker`) turns the words into DRAM beats at the row's DRAM byte offset with
    ``wstrb`` for partial beats, and the first beat of every INCR burst (split at 4 KiB
    boundaries and at 256 beats) pushes the burst's AW, which is handshaken before any of the
    burst's W beats is offered.  The B responses are counted per instruction; ``retire``
    pulses the cycle after the last burst's B response.  A stalled W or AW channel holds the operations.
    Instructions must be legal and inside their memories (checked by the core's decoder).

    Latency and throughput
    ----------------------
    Operations from 2 cycles after the start, one per cycle; a W beat is offered 2 cycles
    after its operation; the next STORE may start in the cycle of the last operation.  The
    exact contract is in the module docstring (:func:`store_timing`).

    Parameters
    ----------
    config : :class:`hw.config.AcceleratorConfig`
        ``lanes`` (``N``, the AXI data width in bytes) and the memory regions.

    Members
    -------
    instr : ``In(stream.Signature(unsigned(256)))``
        STORE instruction words; a handshake is the instruction's start.
    retire : ``Out(1)``
        One pulse per instruction, in order, the cycle after its last burst's B response.
    busy : ``Out(1)``
        High from a start until the engine can take the next instruction.
    idle : ``Out(1)``
        No instruction in flight (no W beat or B response outstanding).
    axi : ``Out(axi4_write_signature(32, N))``
        The AXI4 write address, data and response channels.
    dram_base : ``In(32)``
        Added to every ``dram_addr`` (sampled at each start).
    error : ``Out(1)``
        A B response other than OKAY was taken; sticky until reset.
    out, copy : ``Out(read_port_signature(depth, 8 N))``
        Read ports of the source memories.
    """

    def __init__(self, config: AcceleratorConfig):
        n = _check_config(config)
        self._config = config
        members = dict(engine_signature().members)
        members.update({
            "idle": Out(1),
            "axi": Out(axi4_write_signature(ADDR_BITS, n)),
            "dram_base": In(ADDR_BITS),
            "error": Out(1),
        })
        for name in STORE_SOURCES:
            g = geometry(config, name)
            members[name] = Out(read_port_signature(g.depth, g.width))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        n = cfg.lanes
        lg = exact_log2(n)
        ns = len(STORE_SOURCES)
        local_bits = _local_width(cfg, STORE_SOURCES)
        f = data.View(fields_of(Opcode.STORE), self.instr.payload)
        axi = self.axi

        m.submodules.walker = walker = RowWalker(n, COUNT_BITS, 1)

        # ---- the current instruction's remaining rows (the cursor)
        iv = Signal()
        c_sel = Signal(ns)
        c_local = Signal(local_bits)
        c_dram = Signal(ADDR_BITS)
        c_src_stride = Signal(COUNT_BITS)
        c_dram_stride = Signal(ADDR_BITS)
        c_cols = Signal(COUNT_BITS)
        c_rows = Signal(COUNT_BITS)

        # ---- the walker's row
        r_sel = Signal(ns)
        last_row = Signal()
        word_bits = max(len(getattr(self, name).addr) for name in STORE_SOURCES)
        raddr = Signal(word_bits)
        beat = Signal(ADDR_BITS - lg)            # DRAM beat index of the next output beat
        out_left = Signal(range((((1 << COUNT_BITS) + 2 * n) >> lg) + 1))
        burst_left = Signal(range(AXI_BURST_MAX_BEATS + 1))
        parity = Signal()

        # ---- starts, retirements, instructions in flight
        start = self.instr.valid & self.instr.ready
        retire = Signal()
        in_flight = Signal(range(STORE_DEPTH + 1))
        ready = ~iv & (~walker.active | (walker.last & last_row)) & (in_flight != STORE_DEPTH)
        m.d.comb += [
            self.instr.ready.eq(ready),
            self.retire.eq(retire),
            self.busy.eq(~ready | start),
            self.idle.eq(in_flight == 0),
        ]
        with m.If(start & ~retire):
            m.d.sync += in_flight.eq(in_flight + 1)
        with m.Elif(retire & ~start):
            m.d.sync += in_flight.eq(in_flight - 1)

        sel = Signal(ns)
        base = C(0, local_bits)
        for k, name in enumerate(STORE_SOURCES):
            region = cfg.regions[name]
            hit = (f.src_addr >= region.base) & (f.src_addr < region.end)
            m.d.comb += sel[k].eq(hit)
            base = Mux(hit, region.base, base)
        with m.If(start):
            m.d.sync += [
                iv.eq(1),
                c_sel.eq(sel),
                c_local.eq(f.src_addr - base),
                c_dram.eq(self.dram_base + f.dram_addr),
                c_src_stride.eq(f.src_stride),
                c_dram_stride.eq(f.dram_stride),
                c_cols.eq(f.cols),
                c_rows.eq(f.rows),
            ]

        # ---- the operation stage
        aw_full = Signal()
        aw_parity = Signal()
        w_full = Signal()
        w_parity = Signal()
        aw_fire = aw_full & axi.awready
        w_fire = axi.wvalid & axi.wready
        new_burst = walker.active & walker.produce & (burst_left == 0)
        burst, _ = _burst_beats(m, beat, out_left, n, lg)
        advance = (~w_full | w_fire) & (~new_burst | ~aw_full | aw_fire)
        step = walker.active & advance
        m.d.comb += walker.step.eq(step)

        load_row = (~walker.active | (walker.last & step)) & iv
        m.d.comb += [
            walker.load.eq(load_row),
            walker.off_in.eq(c_local[:lg]),
            walker.off_out.eq(c_dram[:lg]),
            walker.row_bytes.eq(c_cols),
            walker.pad.eq(0),
        ]

        for k, name in enumerate(STORE_SOURCES):
            port = getattr(self, name)
            m.d.comb += [
                port.addr.eq(raddr),
                port.en.eq(step & walker.consume & r_sel[k]),
            ]
        with m.If(step & walker.consume):
            m.d.sync += raddr.eq(raddr + 1)

        op_last = Signal()
        op_parity = Signal()
        m.d.comb += [
            op_last.eq(Mux(new_burst, burst == 1, burst_left == 1)),
            op_parity.eq(parity ^ new_burst),
        ]
        with m.If(step & walker.produce):
            m.d.sync += [
                beat.eq(beat + 1),
                out_left.eq(out_left - 1),
                burst_left.eq(Mux(new_burst, burst, burst_left) - 1),
                parity.eq(op_parity),
            ]

        with m.If(step & new_burst):
            m.d.sync += [
                aw_full.eq(1),
                aw_parity.eq(op_parity),
                axi.awaddr.eq(Cat(C(0, lg), beat)),
                axi.awlen.eq(burst - 1),
            ]
        with m.Elif(aw_fire):
            m.d.sync += aw_full.eq(0)
        m.d.comb += [
            axi.awvalid.eq(aw_full),
            axi.awsize.eq(lg),
            axi.awburst.eq(AxiBurst.INCR),
            axi.awid.eq(0),
        ]

        # bursts of the instruction, handed to the response side at its last operation
        bursts = Signal(32)
        m.submodules.totals = totals = SyncFIFO(width=32, depth=STORE_DEPTH)
        instr_last = step & walker.last & last_row
        m.d.comb += [
            totals.w_en.eq(instr_last),
            totals.w_data.eq(bursts + new_burst),
        ]
        with m.If(instr_last):
            m.d.sync += bursts.eq(0)
        with m.Elif(step & new_burst):
            m.d.sync += bursts.eq(bursts + 1)

        with m.If(load_row):
            m.d.sync += [
                r_sel.eq(c_sel),
                raddr.eq(c_local >> lg),
                beat.eq(c_dram[lg:]),
                out_left.eq((c_dram[:lg] + c_cols + (n - 1)) >> lg),
                burst_left.eq(0),
                last_row.eq(c_rows <= 1),
                c_local.eq(c_local + c_src_stride),
                c_dram.eq(c_dram + c_dram_stride),
                c_rows.eq(c_rows - 1),
            ]
            with m.If(c_rows <= 1):
                m.d.sync += iv.eq(0)

        # ---- the realign stage: the operation of the previous step, with its read data
        b_valid = Signal()
        b_consume = Signal()
        b_produce = Signal()
        b_mask = Signal(n)
        b_shift = Signal(range(1, n + 1))
        b_last = Signal()
        b_parity = Signal()
        b_sel = Signal(ns)
        with m.If(advance):
            m.d.sync += [
                b_valid.eq(walker.active),
                b_consume.eq(walker.consume),
                b_produce.eq(walker.produce),
                b_mask.eq(walker.data_mask),
                b_shift.eq(walker.shift),
                b_last.eq(op_last),
                b_parity.eq(op_parity),
                b_sel.eq(r_sel),
            ]
        rdata = Signal(8 * n)
        for k, name in enumerate(STORE_SOURCES):
            with m.If(b_sel[k]):
                m.d.comb += rdata.eq(getattr(self, name).data)
        prev = Signal(8 * n)
        word = _realign(m, prev, rdata, b_shift, b_mask, n)
        with m.If(advance & b_valid & b_consume):
            m.d.sync += prev.eq(rdata)
        with m.If(advance & b_valid & b_produce):
            m.d.sync += [
                w_full.eq(1),
                w_parity.eq(b_parity),
                axi.wdata.eq(word),
                axi.wstrb.eq(b_mask),
                axi.wlast.eq(b_last),
            ]
        with m.Elif(w_fire):
            m.d.sync += w_full.eq(0)
        # a burst's beats wait until its AW has been handshaken
        m.d.comb += axi.wvalid.eq(w_full & ~(aw_full & (aw_parity == w_parity)))

        # ---- responses
        b_seen = Signal(32, init=1)        # this response's number in its instruction
        done = totals.r_rdy & (b_seen == totals.r_data)
        m.d.comb += [
            axi.bready.eq(1),
            totals.r_en.eq(axi.bvalid & done),
        ]
        m.d.sync += retire.eq(axi.bvalid & done)
        with m.If(axi.bvalid):
            m.d.sync += b_seen.eq(Mux(done, 1, b_seen + 1))
            with m.If(axi.bresp != 0):
                m.d.sync += self.error.eq(1)
        return m
