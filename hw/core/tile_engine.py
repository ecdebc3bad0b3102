"""Tile engines: MATMUL on the systolic array, ATTNV on the Log-Int-Softmax attention unit.

One engine runs one queue's instructions (docs/ACCELERATOR.md): ``kind = "matrix"`` executes
MATMUL on :class:`hw.systolic_array.SystolicArray`, ``kind = "attn"`` executes ATTNV on
:class:`hw.lis_attention.LisAttention`.  Both compute ``A[out] = X W`` exactly as
``compiler.isa.SPECS[op].execute``: ``n_tiles x k_tiles`` tiles of ``N x N``, ``n`` outer and
``k`` inner; tile ``(n, k)`` holds ``W[kN:(k+1)N, nN:(n+1)N]`` stationary and streams the
``m`` rows ``X[:, kN:(k+1)N]``; the partial sums over ``k`` stay in the engine's
accumulation buffer and the last ``k`` tile writes the ``m`` output rows
``A[acc_addr + row * acc_stride + nN ...]``.  Every address and stride is a multiple of
``N`` (the ISA checks it), so each stationary beat, streaming row and output row is one
memory row.

Microarchitecture
-----------------
*Tile sequencer.*  The engine registers the instruction in its start cycle ``s`` and from
``s + 1`` gives each tile a slot of ``I = max(m, N)`` cycles, one after the other
(:func:`tile_timing`).  In the first ``N`` cycles of its slot a tile reads its ``N``
stationary rows, one per cycle; nothing else is ever scheduled, so every later event of the
tile is a fixed number of cycles after its slot.  The sequencer takes the next instruction
in the last cycle of the last slot (``busy = J I`` cycles, ``J = n_tiles k_tiles``) and that
instruction's first slot follows without a gap: the unit never idles between instructions
offered back to back.

*Transpose stage (matrix engine).*  The weight beats pass through two ``N x N`` byte banks,
used by alternate tiles.  A tile's ``N`` memory rows shift into its bank one per cycle
(downwards); from the cycle after the last one the bank shifts its ``N`` beats out to the
array: downwards (the rows again) for ``transpose = 0``, or leftwards (the bank's columns,
i.e. the rows of the transposed tile) for ``transpose = 1``, where the memory rows are the
tile's columns (``W`` stored ``[N, K]``).  A bank is written while the other one empties,
so the stage streams without a bubble.

*Streaming rows.*  A tile's first streaming row is read in the cycle of its last weight
beat into the unit (the memory's read cycle hides behind it), the next ``m - 1`` in the
following cycles, from ``act`` or ``prob`` (whichever region ``a_addr`` lies in; MATMUL) or
from ``codes`` (ATTNV).  Tile descriptors (row addresses, ``m``, output row, first / last
``k``) wait in two small FIFOs between the sequencer, the row reader and the result stage.

*Accumulation buffer.*  ``max_tile_rows`` rows of ``N`` int32 (one memory, one read and one
write port).  A result row reads its buffer row in the cycle it leaves the unit and, one
cycle later, writes ``result + partial`` (``result`` alone for ``k = 0``) back to the
buffer, or to the output memory for the last ``k``.  Sums are taken modulo ``2**32``, which
gives the exact result whenever it is an int32 (the ISA's range check), whatever the
partial sums.  The same buffer row comes back no sooner than ``I >= 2`` cycles later, so
the read always sees the previous write.  The engine always
accepts the unit's results, so the unit never stalls.

Timing
------
Events of tile ``j`` (0-based over the instruction) of an instruction started in cycle
``s``, with ``S = s + 1 + j I`` its slot's first cycle and ``Lu`` the unit's row latency
(``R + C + 1 = 2 N + 1`` for the array, :func:`hw.lis_attention.row_latency` for the LIS unit):

=====================================  ========================  ==================
event                                  matrix                    attn
=====================================  ========================  ==================
stationary row ``p`` read              ``S + p``                 ``S + p``
weight beat ``r`` into the unit        ``S + 1 + N + r``         ``S + 1 + r``
streaming row ``i`` accepted           ``S + 1 + 2N + i``        ``S + 1 + N + i``
output row ``i`` written (last ``k``)  ``S + 2 + 2N + Lu + i``   ``S + 2 + N + Lu + i``
=====================================  ========================  ==================

and ``retire`` pulses with the last tile's last write.  :func:`tile_timing` gives the totals.
"""
from __future__ import annotations

from collections.abc import Mapping

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from compiler.isa import Opcode, Timing
from hw.config import AcceleratorConfig
from hw.core.isa_layout import fields_of
from hw.core.memories import geometry
from hw.core.signatures import engine_signature, read_port_signature, write_port_signature
from hw.lis_attention import LisAttention, lis_attention_timing
from hw.systolic_array import SystolicArray, matmul_timing

__all__ = ["TileEngine", "tile_timing", "KINDS", "TILE_FIFO_DEPTH"]

#: Engine kinds: opcode, streaming source regions, stationary region, output region.
KINDS = {
    "matrix": (Opcode.MATMUL, ("act", "prob"), "weight", "acc"),
    "attn": (Opcode.ATTNV, ("codes",), "value", "attn_acc"),
}
#: Entries of each tile-descriptor FIFO.  Tiles start ``I >= N`` cycles apart; a descriptor
#: waits ``2 N`` cycles for its row reader (matrix), then at most ``m + 2 N + 1`` for its last
#: result, so neither FIFO ever holds more than 3 tiles when a 4th arrives.
TILE_FIFO_DEPTH = 4
#: Cycles from the start to the first slot (the instruction register) and from a result to
#: its write (the accumulation buffer's read).
_DECODE_CYCLES = 1
_WRITE_CYCLES = 1


def _check(config, kind) -> AcceleratorConfig:
    if not isinstance(config, AcceleratorConfig):
        raise TypeError(f"config must be an AcceleratorConfig, got {config!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return config


def tile_timing(config: AcceleratorConfig, args: Mapping, kind: str | None = None) -> Timing:
    """Cycles of one MATMUL (``kind="matrix"``) or ATTNV (``kind="attn"``) on its tile engine.

    ``args``: the instruction's fields (``m``, ``n_tiles``, ``k_tiles``; the rest does not
    change the timing).  ``kind`` defaults to ``"matrix"`` when ``args`` has a ``transpose``
    field (MATMUL's), else ``"attn"``.  With ``N = config.lanes``, ``J = n_tiles k_tiles``
    and ``I = max(m, N)``::

        busy = J I
        done = (J - 1) I + L + N + 2      matrix, L = matmul_timing(config, m).latency = m + 3 N + 1
        done = (J - 1) I + L + 2          attn,   L = lis_attention_timing(config, m).latency

    ``busy``: cycles from the start (the ``instr`` handshake) until the engine takes the next
    instruction (its ``busy`` output is high for them); ``done``: cycles from the start to
    the ``retire`` pulse (the cycle the last output row is written).  The tiles run ``I``
    cycles apart on the unit (``L + (J - 1) I`` from the first weight beat to the last
    result, the unit's own timing), after one cycle registering the instruction and one
    reading the first stationary row, and before one cycle reading the accumulation buffer.

    The transpose stage costs the matrix engine ``N`` cycles of latency and nothing in
    throughput.  A transposed tile's first row holds one element of each of the ``N``
    memory rows it is read from, so it exists only after all ``N`` are read.  Non-transposed
    MATMULs take the same path (the bank as an ``N``-beat delay): every MATMUL then reaches
    the array the same ``N + 2`` cycles after its start, so any MATMUL can follow any other
    ``busy`` cycles after it.  (A non-transposed MATMUL taking a bypass would reach the
    array ``N`` cycles sooner than a transposed one, and a transposed MATMUL would have to
    stay busy ``N`` cycles longer to keep the tiles of a following one in order; the
    compiler's MATMULs are nearly all transposed.)
    """
    if kind is None:
        kind = "matrix" if "transpose" in args else "attn"
    config = _check(config, kind)
    m, n_tiles, k_tiles = (args[name] for name in ("m", "n_tiles", "k_tiles"))
    for name, value in (("m", m), ("n_tiles", n_tiles), ("k_tiles", k_tiles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    n = config.lanes
    jobs = n_tiles * k_tiles
    if kind == "matrix":
        unit = matmul_timing(config, m)
        stage = n
    else:
        unit = lis_attention_timing(config, m)
        stage = 0
    # First weight beat into the unit: the instruction register, the first stationary read
    # and the transpose stage after the start; the last output row: one cycle after the
    # unit's last result (both ends of the unit's latency count).
    first_beat = _DECODE_CYCLES + 1 + stage
    return Timing(busy=jobs * unit.interval,
                  done=first_beat + (jobs - 1) * unit.interval + unit.latency - 1 + _WRITE_CYCLES)


class TileEngine(wiring.Component):
    """MATMUL (``kind="matrix"``) or ATTNV (``kind="attn"``) on a tile unit, with its
    weight path, streaming-row reader and accumulation buffer.

    Parameters
    ----------
    config : AcceleratorConfig
        Uses ``lanes`` (``N``), ``max_tile_rows`` (the accumulation buffer's rows) and the
        regions of the engine's memories.
    kind : str
        ``"matrix"``: MATMUL on :class:`hw.systolic_array.SystolicArray`, streaming rows from
        ``act`` or ``prob``, stationary rows from ``weight``, output to ``acc``.
        ``"attn"``: ATTNV on :class:`hw.lis_attention.LisAttention`, codes from ``codes``,
        v from ``value``, output to ``attn_acc``.

    Members
    -------
    instr : ``In(stream.Signature(unsigned(256)))``
        Instruction words (MATMUL or ATTNV, fields of :func:`hw.core.isa_layout.fields_of`);
        a handshake is the instruction's start.
    retire : ``Out(1)``
        One pulse per instruction, in the cycle its last output row is written.
    busy : ``Out(1)``
        High from an instruction's start until the engine can take the next one.
    rd_act, rd_prob, rd_weight : ``Out(read_port_signature(depth, 8 N))``
        Read ports of the matrix engine's source memories (streaming rows, stationary rows).
    rd_codes, rd_value : ``Out(read_port_signature(depth, 8 N))``
        Read ports of the attention engine's source memories (codes, v).
    wr_acc, wr_attn_acc : ``Out(write_port_signature(depth, 32 N, 32))``
        Write port of the output memory (matrix: ``acc``; attn: ``attn_acc``).

    Notes
    -----
    LATENCY and THROUGHPUT: :func:`tile_timing`.  Instructions offered back to back keep
    the unit busy without a gap; the results of one drain while the next one's tiles run.
    """

    def __init__(self, config: AcceleratorConfig, kind: str):
        self._config = _check(config, kind)
        self._kind = kind
        op, stream_regions, stationary_region, out_region = KINDS[kind]
        self._op = op
        members = dict(engine_signature().members.items())
        self._read_ports: dict[str, str] = {}
        for region in (*stream_regions, stationary_region):
            g = geometry(config, region)
            members[f"rd_{region}"] = Out(read_port_signature(g.depth, g.width))
            self._read_ports[f"rd_{region}"] = region
        g = geometry(config, out_region)
        members[f"wr_{out_region}"] = Out(write_port_signature(g.depth, g.width, g.granularity))
        self._write_port = (f"wr_{out_region}", out_region)
        super().__init__(members)
        #: The tile unit and the two tile-descriptor FIFOs (attributes so that tests can
        #: watch their handshakes).
        self.unit = SystolicArray(config) if kind == "matrix" else LisAttention(config)
        self.tiles_ahead = SyncFIFO(width=self._ahead_layout().size, depth=TILE_FIFO_DEPTH)
        self.tiles_out = SyncFIFO(width=self._out_layout().size, depth=TILE_FIFO_DEPTH)

    @property
    def config(self) -> AcceleratorConfig:
        return self._config

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def opcode(self) -> Opcode:
        return self._op

    @property
    def read_ports(self) -> dict[str, str]:
        """Read port member name -> memory region."""
        return dict(self._read_ports)

    @property
    def write_port(self) -> tuple[str, str]:
        """(write port member name, memory region)."""
        return self._write_port

    # ------------------------------------------------------------------ descriptor layouts
    def _row_shape(self, region: str):
        return unsigned(max(geometry(self._config, region).depth, 2).bit_length())

    def _out_layout(self) -> data.StructLayout:
        _, _, _, out_region = KINDS[self._kind]
        return data.StructLayout({
            "first_k": 1,                       # k = 0: no partial sum to add
            "last_k": 1,                        # k = k_tiles - 1: write the output rows
            "last_tile": 1,                     # the instruction's last tile: retire
            "out_row": self._row_shape(out_region),
            "out_step": unsigned(16),           # acc_stride / N
        })

    def _ahead_layout(self) -> data.StructLayout:
        _, stream_regions, _, _ = KINDS[self._kind]
        row = max((self._row_shape(r) for r in stream_regions), key=lambda s: s.width)
        return data.StructLayout({
            "a_row": row,                       # the tile's first streaming row
            "a_step": unsigned(16),             # a_stride / N
            "m": unsigned(16),
            "prob": 1,                          # streaming rows from prob (matrix engine)
            "out": self._out_layout(),
        })

    # ------------------------------------------------------------------ elaborate
    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        n = cfg.lanes
        lg = (n - 1).bit_length()
        matrix = self._kind == "matrix"
        _, stream_regions, stationary_region, out_region = KINDS[self._kind]

        unit = m.submodules.unit = self.unit
        ahead = m.submodules.tiles_ahead = self.tiles_ahead
        out_fifo = m.submodules.tiles_out = self.tiles_out
        rd_w = getattr(self, f"rd_{stationary_region}")
        wr_out = getattr(self, f"wr_{out_region}")

        def base_row(region: str) -> int:
            return geometry(cfg, region).base // n

        # ------------------------------------------------------------------ instruction
        ins = data.View(fields_of(self._op), self.instr.payload)
        take = Signal()
        running = Signal()
        finishing = Signal()               # the last cycle of the last slot
        m.d.comb += [
            self.instr.ready.eq(~running | finishing),
            take.eq(self.instr.valid & self.instr.ready),
            self.busy.eq(take | (running & ~finishing)),
        ]

        # Registered fields (rows are memory rows of the regions, steps rows per stride).
        p_m = Signal(16, reset_less=True)
        p_slot_last = Signal(16, reset_less=True)  # I - 1, I = max(m, N)
        p_n_last = Signal(16, reset_less=True)     # n_tiles - 1
        p_k_last = Signal(16, reset_less=True)     # k_tiles - 1
        p_a_row = Signal(24, reset_less=True)
        p_a_step = Signal(16, reset_less=True)
        p_prob = Signal(reset_less=True)
        p_w_step = Signal(16, reset_less=True)     # rows between two stationary reads of a tile
        p_dk = Signal(24, reset_less=True)         # stationary rows from tile (n, k) to (n, k + 1)
        p_dn = Signal(24, reset_less=True)         # ... from tile (n, 0) to (n + 1, 0)
        p_out_step = Signal(16, reset_less=True)
        p_transpose = Signal(reset_less=True)
        p_mode = Signal(1, reset_less=True)        # StreamMode

        # First rows of the operands in their memories.
        a_first = Signal(24)
        w_first = Signal(24)
        out_first = Signal(24)
        if matrix:
            in_prob = ins.a_addr >= cfg.regions["prob"].base
            m.d.comb += a_first.eq((ins.a_addr >> lg) - Mux(in_prob, base_row("prob"),
                                                              base_row("act")))
        else:
            in_prob = Const(0)
            m.d.comb += a_first.eq((ins.a_addr >> lg) - base_row(stream_regions[0]))
        m.d.comb += [
            w_first.eq((ins.w_addr >> lg) - base_row(stationary_region)),
            out_first.eq((ins.acc_addr >> lg) - base_row(out_region)),
        ]
        with m.If(take):
            if matrix:
                m.d.sync += [
                    p_transpose.eq(ins.transpose),
                    p_mode.eq(ins.mode),
                    # transpose = 0: W[K, N] rows, tile (n, k) from row k N ws + n;
                    # transpose = 1: W^T[N, K] rows, tile (n, k) from row n N ws + k
                    # (ws = w_stride / N rows a stride, so N ws = w_stride).
                    p_dk.eq(Mux(ins.transpose, 1, ins.w_stride)),
                    p_dn.eq(Mux(ins.transpose, ins.w_stride, 1)),
                ]
            else:
                m.d.sync += [p_dk.eq(ins.w_stride), p_dn.eq(1)]
            m.d.sync += [
                p_prob.eq(in_prob),
                p_a_row.eq(a_first),
                p_m.eq(ins.m),
                p_slot_last.eq(Mux(ins.m > n, ins.m, n) - 1),
                p_n_last.eq(ins.n_tiles - 1),
                p_k_last.eq(ins.k_tiles - 1),
                p_a_step.eq(ins.a_stride >> lg),
                p_w_step.eq(ins.w_stride >> lg),
                p_out_step.eq(ins.acc_stride >> lg),
            ]

        # ------------------------------------------------------------------ tile sequencer
        q = Signal(16, reset_less=True)            # cycle within the slot
        kk = Signal(16, reset_less=True)
        nn = Signal(16, reset_less=True)
        w_row = Signal(24, reset_less=True)        # next stationary row to read
        t_base = Signal(24, reset_less=True)       # first stationary row of the tile
        n_base = Signal(24, reset_less=True)       # first stationary row of tile (n, 0)
        a_tile = Signal(24, reset_less=True)       # first streaming row of the tile (a_row + k)
        out_tile = Signal(24, reset_less=True)     # first output row of the tile (out_row + n)
        # last_k (kk == k_tiles - 1) and last_tile (and nn == n_tiles - 1) are registers,
        # set with kk and nn: ``finishing`` is the engine's ready, which the sequencer's
        # start logic and this engine's own loads wait on (placed ULX3S core: the 16-bit
        # compares and I - 1 before it, then take -> the slot counter's reset, 17.7 ns).
        last_k = Signal()
        last_tile = Signal()
        slot_end = Signal()
        m.d.comb += [
            slot_end.eq(q == p_slot_last),
            finishing.eq(running & last_tile & slot_end),
        ]

        reading = Signal()                 # a stationary row is read this cycle
        m.d.comb += [
            reading.eq(running & (q < n)),
            rd_w.addr.eq(w_row),
            rd_w.en.eq(reading),
        ]

        # The tile's descriptor, in its slot's first cycle.
        desc = data.View(self._ahead_layout(), ahead.w_data)
        m.d.comb += [
            desc.a_row.eq(a_tile),
            desc.a_step.eq(p_a_step),
            desc.m.eq(p_m),
            desc.prob.eq(p_prob),
            desc.out.first_k.eq(kk == 0),
            desc.out.last_k.eq(last_k),
            desc.out.last_tile.eq(last_tile),
            desc.out.out_row.eq(out_tile),
            desc.out.out_step.eq(p_out_step),
            ahead.w_en.eq(running & (q == 0)),
        ]

        single_k = p_k_last == 0           # after a last k: kk restarts at its last tile
        k_ends = kk + 1 == p_k_last        # after another k: the next one is the last
        with m.If(running):
            m.d.sync += [q.eq(q + 1), w_row.eq(w_row + p_w_step)]
            with m.If(slot_end):
                m.d.sync += q.eq(0)
                with m.If(last_k):
                    m.d.sync += [
                        kk.eq(0),
                        nn.eq(nn + 1),
                        last_k.eq(single_k),
                        last_tile.eq(single_k & (nn + 1 == p_n_last)),
                        n_base.eq(n_base + p_dn),
                        t_base.eq(n_base + p_dn),
                        w_row.eq(n_base + p_dn),
                        a_tile.eq(p_a_row),
                        out_tile.eq(out_tile + 1),
                    ]
                with m.Else():
                    m.d.sync += [
                        kk.eq(kk + 1),
                        last_k.eq(k_ends),
                        last_tile.eq(k_ends & (nn == p_n_last)),
                        t_base.eq(t_base + p_dk),
                        w_row.eq(t_base + p_dk),
                        a_tile.eq(a_tile + 1),
                    ]
                with m.If(last_tile):
                    m.d.sync += running.eq(0)
        with m.If(take):
            m.d.sync += [
                running.eq(1),
                q.eq(0),
                kk.eq(0),
                nn.eq(0),
                last_k.eq(ins.k_tiles == 1),
                last_tile.eq((ins.k_tiles == 1) & (ins.n_tiles == 1)),
                w_row.eq(w_first),
                t_base.eq(w_first),
                n_base.eq(w_first),
                a_tile.eq(a_first),
                out_tile.eq(out_first),
            ]

        # ------------------------------------------------------------------ weight path
        # Stationary data arrive the cycle after their read.
        w_valid = Signal()
        w_last = Signal()
        m.d.sync += [w_valid.eq(reading), w_last.eq(q == n - 1)]
        row_trigger = Signal()             # the tile's last weight beat enters the unit
        if matrix:
            w_transpose = Signal()
            w_mode = Signal(1)
            m.d.sync += [w_transpose.eq(p_transpose), w_mode.eq(p_mode)]
            self._transpose_stage(m, rd_w.data, w_valid, w_last, w_transpose, w_mode,
                                  unit.weights, row_trigger)
        else:
            m.d.comb += [
                unit.weights.valid.eq(w_valid),
                unit.weights.payload.data.eq(rd_w.data),
                row_trigger.eq(w_valid & w_last),
            ]

        # ------------------------------------------------------------------ streaming rows
        head = data.View(self._ahead_layout(), ahead.r_data)
        s_active = Signal()                # rows 1 .. m-1 of a tile being read
        s_row = Signal(24, reset_less=True)
        s_step = Signal(16, reset_less=True)
        s_count = Signal(16, reset_less=True)      # index of the row read this cycle
        s_m_last = Signal(16, reset_less=True)
        s_prob = Signal(reset_less=True)
        m.d.comb += [
            ahead.r_en.eq(row_trigger),
            out_fifo.w_data.eq(head.out.as_value()),
            out_fifo.w_en.eq(row_trigger),
        ]
        read_row = Signal(24)
        read_prob = Signal()
        read_last = Signal()
        read_en = Signal()
        m.d.comb += [
            read_en.eq(row_trigger | s_active),
            read_row.eq(Mux(row_trigger, head.a_row, s_row)),
            read_prob.eq(Mux(row_trigger, head.prob, s_prob)),
            read_last.eq(Mux(row_trigger, head.m == 1, s_count == s_m_last)),
        ]
        with m.If(row_trigger):
            m.d.sync += [
                s_active.eq(head.m != 1),
                s_row.eq(head.a_row + head.a_step),
                s_step.eq(head.a_step),
                s_count.eq(1),
                s_m_last.eq(head.m - 1),
                s_prob.eq(head.prob),
            ]
        with m.Elif(s_active):
            m.d.sync += [s_row.eq(s_row + s_step), s_count.eq(s_count + 1)]
            with m.If(s_count == s_m_last):
                m.d.sync += s_active.eq(0)
        sources = [getattr(self, f"rd_{r}") for r in stream_regions]
        for k, port in enumerate(sources):
            selected = read_prob if k == 1 else ~read_prob
            m.d.comb += [port.addr.eq(read_row), port.en.eq(read_en & selected)]
        a_valid = Signal()
        a_last = Signal()
        a_prob = Signal()
        m.d.sync += [a_valid.eq(read_en), a_last.eq(read_last), a_prob.eq(read_prob)]
        row_data = sources[0].data if len(sources) == 1 else \
            Mux(a_prob, sources[1].data, sources[0].data)
        m.d.comb += [
            unit.activations.valid.eq(a_valid),
            unit.activations.payload.data.eq(row_data),
            unit.activations.payload.last.eq(a_last),
        ]

        # ------------------------------------------------------------------ results
        buffer = m.submodules.buffer = Memory(shape=unsigned(32 * n),
                                              depth=cfg.max_tile_rows, init=[])
        buf_rd = buffer.read_port()
        buf_wr = buffer.write_port()
        tile = data.View(self._out_layout(), out_fifo.r_data)
        r_row = Signal(range(max(cfg.max_tile_rows, 2)))
        r_out = Signal(24, reset_less=True)
        out_addr = Signal(24)
        result = unit.results
        m.d.comb += [
            result.ready.eq(1),
            out_addr.eq(Mux(r_row == 0, tile.out_row, r_out)),
            buf_rd.addr.eq(r_row),
            buf_rd.en.eq(result.valid),
            out_fifo.r_en.eq(result.valid & result.payload.last),
        ]
        x_valid = Signal()
        x_data = Signal(32 * n, reset_less=True)
        x_first = Signal(reset_less=True)
        x_final = Signal(reset_less=True)          # last k: to the output memory
        x_retire = Signal(reset_less=True)
        x_out = Signal(24, reset_less=True)
        x_row = Signal.like(r_row, reset_less=True)
        m.d.sync += x_valid.eq(result.valid)
        with m.If(result.valid):
            m.d.sync += [
                r_out.eq(out_addr + tile.out_step),
                r_row.eq(Mux(result.payload.last, 0, r_row + 1)),
                x_data.eq(result.payload.data),
                x_first.eq(tile.first_k),
                x_final.eq(tile.last_k),
                x_retire.eq(tile.last_tile & result.payload.last),
                x_out.eq(out_addr),
                x_row.eq(r_row),
            ]
        total = Signal(32 * n)
        partial = Mux(x_first, 0, buf_rd.data)
        m.d.comb += total.eq(Cat(*((x_data[32 * c:32 * c + 32] + partial[32 * c:32 * c + 32])[:32]
                                   for c in range(n))))
        m.d.comb += [
            buf_wr.addr.eq(x_row),
            buf_wr.data.eq(total),
            buf_wr.en.eq(x_valid & ~x_final),
            wr_out.addr.eq(x_out),
            wr_out.data.eq(total),
            wr_out.en.eq(Mux(x_valid & x_final, (1 << n) - 1, 0)),
            self.retire.eq(x_valid & x_retire),
        ]
        return m

    @staticmethod
    def _transpose_stage(m, beat, valid, last, transpose, mode, weights, row_trigger):
        """Two ``N x N`` byte banks between the stationary memory and the array.

        A tile's ``N`` memory rows shift into the bank ``fill`` downwards (bank row 0 takes
        the new one); from the next cycle its ``N`` weight beats shift out, downwards from
        the bottom row (``transpose = 0``: the rows in order), or leftwards from column 0
        (``transpose = 1``: beat ``r`` is column ``r`` of the bank, lane ``c`` from bank row
        ``N - 1 - c``, i.e. element ``r`` of memory row ``c``: row ``r`` of the transposed
        tile).  Tiles alternate banks; a bank is never filled and emptied in one cycle
        (its next tile's first row arrives ``2 I >= 2 N`` cycles after its own).
        """
        n = len(beat) // 8
        banks = [[[Signal(8, name=f"bank{b}_{x}_{y}", reset_less=True) for y in range(n)]
                  for x in range(n)] for b in range(2)]
        bank_transpose = [Signal(name=f"bank{b}_transpose") for b in range(2)]
        bank_mode = [Signal(1, name=f"bank{b}_mode") for b in range(2)]
        fill = Signal()                    # the bank the next memory row goes to
        emit = Signal()                    # a bank is shifting its beats out
        emit_bank = Signal()
        emit_count = Signal(range(n))

        with m.If(valid & last):
            m.d.sync += [fill.eq(~fill), emit_bank.eq(fill)]
            for b in range(2):
                with m.If(fill == b):
                    m.d.sync += [bank_transpose[b].eq(transpose), bank_mode[b].eq(mode)]
        with m.If(emit):
            m.d.sync += emit_count.eq(emit_count + 1)
            with m.If(emit_count == n - 1):
                m.d.sync += [emit.eq(0), emit_count.eq(0)]
        with m.If(valid & last):
            m.d.sync += [emit.eq(1), emit_count.eq(0)]

        for b in range(2):
            writing = valid & (fill == b)
            emptying = emit & (emit_bank == b)
            across = emptying & bank_transpose[b]
            bank = banks[b]
            for x in range(n):
                for y in range(n):
                    down = beat[8 * y:8 * y + 8] if x == 0 else bank[x - 1][y]
                    left = bank[x][y + 1] if y < n - 1 else Const(0, 8)
                    with m.If(writing | emptying):
                        m.d.sync += bank[x][y].eq(Mux(across, left, down))

        outs = []
        for b in range(2):
            rows = Cat(*(banks[b][n - 1][y] for y in range(n)))
            columns = Cat(*(banks[b][n - 1 - c][0] for c in range(n)))
            outs.append(Mux(bank_transpose[b], columns, rows))
        m.d.comb += [
            weights.valid.eq(emit),
            weights.payload.data.eq(Mux(emit_bank, outs[1], outs[0])),
            weights.payload.mode.eq(Mux(emit_bank, bank_mode[1], bank_mode[0])),
            row_trigger.eq(emit & (emit_count == n - 1)),
        ]
