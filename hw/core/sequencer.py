"""The sequencer: program fetch, decode, dispatch, queues, semaphores, run control.

Everything of the core that is not an engine, a memory or the register file
(docs/ACCELERATOR.md, "Instruction supply", "Queues, semaphores, tokens", "Errors").  Its
timing, which the cycle model (:mod:`sim.machine`) follows to the cycle, with cycle 0 the
first cycle of a run (the cycle after the start command):

* **Fetch.**  The program is fetched in segments of ``instr_buffer`` instructions.  A fetch
  starts in the first cycle ``c`` at which the previous segment is wholly dispatched (its
  last push at ``c - 1`` or earlier), the LOAD queue is empty and the LOAD engine has no
  instruction in flight (its last start and retire at ``c - 1`` or earlier); the first
  segment's fetch starts at cycle 0.  In cycle ``c + 1`` the first read burst is requested
  (``arvalid``), the bursts follow back to back (each of ``min(256, 4096 / N)`` beats of
  ``N`` bytes), and the fetch ends with the segment's last data beat at cycle ``f``.
* **Dispatch.**  The first instruction of a segment is read from the instruction memory at
  ``f + 1`` and enters the decoder at ``f + 2``.  The decoder's verdict comes
  :data:`~hw.core.decoder.DECODE_LATENCY` (``L``) cycles after it took the word, at ``v``.
  A legal instruction is pushed into its queue's FIFO at ``push = v`` if the FIFO has a free
  slot, else in the cycle after its oldest entry leaves (FIFOs of :data:`QUEUE_DEPTH`); the
  next instruction enters the decoder in the cycle of the push, so its verdict comes at
  ``push + L``.  A HALT is not pushed: from ``v + 1`` the sequencer waits for the end.
* **Start.**  A queue's head is offered to its engine from the cycle after its push, when
  every semaphore its wait mask names holds a token; the engine takes it (the *start*) in a
  cycle it is ready, and the tokens are taken in that cycle.
* **Tokens.**  An engine's ``retire`` pulse at cycle ``r`` adds one token to each semaphore
  the retiring instruction's signal mask names, usable from ``r + 1``.  Semaphores are
  16-bit counters.
* **End.**  After a HALT's verdict at ``v``, the run ends at the first cycle ``E >= v + 1``
  at which every queue FIFO is empty and no engine has an instruction in flight (its last
  retire at ``E - 1`` or earlier): ``done`` rises at ``E + 1`` and ``cycles`` holds the number
  of cycles of the run, ``E + 1``.  With a token left in a semaphore the run ends with
  ``TOKENS``.
* **Busy counters.**  ``busy_count[q]`` counts the cycles engine ``q`` has an instruction in
  flight: from a start through its retire cycle.  Each cycle is added one cycle later (the
  count is complete when ``done`` rises).

Errors (``error``, ``error_index``): the decoder's verdict at the instruction (``ILLEGAL``,
``NO_HALT``, ``RANGE``, ``CONSTRAINT``); ``SEMAPHORE`` at the retiring instruction whose
token would make a count 65536, found in the cycle after that retire (an error found in the
retire's own cycle comes first); ``BUS`` for an error response on a fetch (the segment's first
instruction) or reported by an engine (``bus_error`` at cycle ``c``: its oldest instruction in
flight at ``c``, or its last retired one, found at ``c + 1``, so an instruction may still be
dispatched or started at ``c``); ``DEADLOCK``
when nothing can ever happen again: no engine has an instruction in flight, no
queue head can start, and dispatch waits for a full FIFO, for the LOAD queue to drain before
a fetch, or for the end (the index is the oldest instruction waiting in a queue).  On an
error nothing more is dispatched or started; the run ends once the engines' in-flight
instructions have retired and the fetch's outstanding beats have arrived.  An empty program
(``prog_len = 0``) ends with ``NO_HALT`` at index 0.  ``error`` is written in the cycle
after the error is found, ``error_index`` one cycle later, never after ``done`` rises.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from compiler.isa import INSTR_BITS, INSTR_BYTES, NQ, ErrorCode, Queue
from hw.axi import AXI_BOUNDARY, AXI_BURST_MAX_BEATS, AxiBurst, axi4_read_signature
from hw.config import AcceleratorConfig
from hw.core.decoder import ERROR_BITS, Decoder
from hw.core.signatures import engine_signature

__all__ = ["Sequencer", "QUEUE_DEPTH", "MAX_IN_FLIGHT", "TOKEN_BITS", "fetch_bursts"]

#: Entries of each queue FIFO.
QUEUE_DEPTH = 8
#: Most instructions an engine may have started and not retired (the sequencer keeps their
#: signal masks); every engine stays below it.
MAX_IN_FLIGHT = 8
#: Width of a dependency semaphore.
TOKEN_BITS = 16
#: Width of instruction indices and counts.
INDEX_BITS = 32


def fetch_bursts(config: AcceleratorConfig, instructions: int) -> list[int]:
    """Beats of each read burst that fetches one segment of ``instructions`` (from a
    segment boundary: the program base is 4 KiB aligned)."""
    n = config.lanes
    beats = -(-instructions * INSTR_BYTES // n)
    per = min(AXI_BURST_MAX_BEATS, AXI_BOUNDARY // n)
    return [min(per, beats - b) for b in range(0, beats, per)]


class Sequencer(wiring.Component):
    """Fetch, decode, dispatch, queues, semaphores and run control (module docstring).

    Ports: ``start`` (a one-cycle command, ignored while ``running``), ``clear`` (lower
    ``done``), ``prog_base``,
    ``prog_len``, ``dram_size`` (held during a run); ``running``, ``done`` (from the end of a
    run until the next start), ``error``, ``error_index``, ``cycles``, ``busy_count[q]``;
    ``axi`` (the read half of the memory port, used while ``fetching``); ``engine[q]``
    (:func:`~hw.core.signatures.engine_signature`, one per :class:`~compiler.isa.Queue`);
    ``bus_error[q]`` (engine ``q`` saw an error response; read only while running, and the
    core masks an engine's flag left from the last run in the engines' reset cycle).
    ``token_bits`` narrows the semaphores (tests reach the ``SEMAPHORE`` error with it; the
    core uses :data:`TOKEN_BITS`).
    """

    def __init__(self, config: AcceleratorConfig, token_bits: int = TOKEN_BITS):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {type(config).__name__}")
        if not 1 <= token_bits <= TOKEN_BITS:
            raise ValueError(f"token_bits must be in 1..{TOKEN_BITS}, got {token_bits}")
        self.config = config
        self.token_bits = token_bits
        n = config.lanes
        super().__init__({
            "start": In(1),
            "clear": In(1),
            "prog_base": In(32),
            "prog_len": In(INDEX_BITS),
            "dram_size": In(32),
            "running": Out(1),
            "done": Out(1),
            "error": Out(ERROR_BITS),
            "error_index": Out(INDEX_BITS),
            "cycles": Out(64),
            "busy_count": Out(32).array(NQ),
            "fetching": Out(1),
            "axi": Out(axi4_read_signature(32, n)),
            "engine": In(engine_signature()).array(NQ),
            "bus_error": In(NQ),
        })

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        n = cfg.lanes
        seg_len = cfg.instr_buffer
        row_bytes = max(INSTR_BYTES, n)                  # instruction memory row
        per_row = row_bytes // INSTR_BYTES               # instructions per row
        beats_per_row = row_bytes // n

        # ------------------------------------------------------------------ state
        running = Signal()
        stopping = Signal()                              # an error: drain, then end
        halted = Signal()                                # HALT's verdict seen
        error = Signal(ERROR_BITS)
        error_index = Signal(INDEX_BITS)
        cycles = Signal(64)
        done = Signal()
        m.d.comb += [self.running.eq(running), self.done.eq(done), self.error.eq(error),
                     self.error_index.eq(error_index), self.cycles.eq(cycles)]

        seg_base = Signal(INDEX_BITS)                    # first instruction of the segment
        seg_count = Signal(range(seg_len + 1))           # its instructions
        nxt = Signal(INDEX_BITS)                         # next instruction to decode
        # Dispatch phases.
        FETCH_WAIT, FETCH, READ, DECODE = 0, 1, 2, 3
        phase = Signal(2)
        take_first = Signal()                            # the segment's first take is due
        fetching = Signal()

        # ------------------------------------------------------------------ queues
        fifos = [SyncFIFO(width=INSTR_BITS + INDEX_BITS, depth=QUEUE_DEPTH) for _ in range(NQ)]
        flights = [SyncFIFO(width=NQ + INDEX_BITS, depth=MAX_IN_FLIGHT) for _ in range(NQ)]
        begin = Signal()                                 # a run starts: forget the last one
        m.d.comb += begin.eq(~running & self.start)
        for q in range(NQ):
            # A run that stopped at an error can leave instructions in the queues.
            m.submodules[f"queue_{Queue(q).name.lower()}"] = ResetInserter(begin)(fifos[q])
            m.submodules[f"in_flight_{Queue(q).name.lower()}"] = ResetInserter(begin)(flights[q])

        # Semaphores sem[s][d]: tokens from queue s for queue d.  Beside each count, two
        # flags kept with it: ``nonzero`` (sem != 0) and ``top`` (sem at its largest), so
        # that the start and overflow logic, whose paths reach the engines across the die
        # and come back, read one register where they compared all the count's bits.
        sem = [[Signal(self.token_bits, name=f"sem_{s}_{d}") if s != d else None for d in range(NQ)]
               for s in range(NQ)]
        nonzero = [[Signal(name=f"sem_nonzero_{s}_{d}") if s != d else None for d in range(NQ)]
                   for s in range(NQ)]
        top = [[Signal(name=f"sem_top_{s}_{d}") if s != d else None for d in range(NQ)]
               for s in range(NQ)]
        sem_max = (1 << self.token_bits) - 1
        head_word = [fifos[q].r_data[:INSTR_BITS] for q in range(NQ)]
        head_index = [fifos[q].r_data[INSTR_BITS:] for q in range(NQ)]
        head_wait = [w[8:8 + NQ] for w in head_word]
        head_signal = [w[8 + NQ:8 + 2 * NQ] for w in head_word]
        starts = Signal(NQ)
        retires = Signal(NQ)
        tokens_ok = Signal(NQ)
        for q in range(NQ):
            eng = self.engine[q]
            ok = [~head_wait[q][s] | nonzero[s][q] for s in range(NQ) if s != q]
            m.d.comb += [
                tokens_ok[q].eq(Cat(*ok).all()),
                eng.instr.payload.eq(head_word[q]),
                eng.instr.valid.eq(running & ~stopping & fifos[q].r_rdy & tokens_ok[q]
                                   & flights[q].w_rdy),
                starts[q].eq(eng.instr.valid & eng.instr.ready),
                fifos[q].r_en.eq(starts[q]),
                flights[q].w_en.eq(starts[q]),
                flights[q].w_data.eq(Cat(head_signal[q], head_index[q])),
                retires[q].eq(eng.retire & flights[q].r_rdy),
                flights[q].r_en.eq(retires[q]),
            ]
        in_flight = Signal(NQ)
        for q in range(NQ):
            m.d.comb += in_flight[q].eq(flights[q].r_rdy)
        # The instruction an engine's bus error is charged to.  The error is acted on a cycle
        # after the engine reports it (``bus_error_r``): run control, which gates dispatch,
        # then reads a register of its own rather than the engines' across the die.
        last_retired = [Signal(INDEX_BITS, name=f"last_retired_{q}") for q in range(NQ)]
        bus_index = Signal(INDEX_BITS)
        bus_error_r = Signal()
        bus_index_r = Signal(INDEX_BITS)
        m.d.sync += [bus_error_r.eq(running & self.bus_error.any()), bus_index_r.eq(bus_index)]
        for q in reversed(range(NQ)):
            with m.If(retires[q]):
                m.d.sync += last_retired[q].eq(flights[q].r_data[NQ:])
            with m.If(self.bus_error[q]):
                m.d.comb += bus_index.eq(Mux(flights[q].r_rdy, flights[q].r_data[NQ:],
                                             last_retired[q]))

        # Token counts.  A retire that would take a count past its width is acted on a cycle
        # later (``overflow_r``): run control, which gates dispatch, reads only registers of
        # the engines' late retire pulses: per source, whether it overflowed a semaphore and
        # its retiring instruction's index; the last source in order that overflowed wins.
        ovf_source = Signal(NQ)
        ret_index_r = [Signal(INDEX_BITS, name=f"ret_index_r_{s}") for s in range(NQ)]
        for s in range(NQ):
            ret_mask = flights[s].r_data[:NQ]
            ret_index = flights[s].r_data[NQ:]
            m.d.sync += ret_index_r[s].eq(ret_index)
            full = []
            for d in range(NQ):
                if s == d:
                    continue
                inc = Signal(name=f"inc_{s}_{d}")
                dec = Signal(name=f"dec_{s}_{d}")
                m.d.comb += [inc.eq(retires[s] & ret_mask[d]), dec.eq(starts[d] & head_wait[d][s])]
                # A count past its largest wraps to 0 (and stops the run, SEMAPHORE); a
                # decrement needs a token (the start waited for nonzero).
                with m.If(inc & ~dec):
                    m.d.sync += [sem[s][d].eq(sem[s][d] + 1), nonzero[s][d].eq(~top[s][d]),
                                 top[s][d].eq(sem[s][d] == sem_max - 1)]
                with m.If(dec & ~inc):
                    m.d.sync += [sem[s][d].eq(sem[s][d] - 1), nonzero[s][d].eq(sem[s][d] != 1),
                                 top[s][d].eq(0)]
                full.append(inc & ~dec & top[s][d])
            m.d.sync += ovf_source[s].eq(Cat(*full).any())
        overflow_r = Signal()
        overflow_index_r = Signal(INDEX_BITS)
        m.d.comb += overflow_r.eq(ovf_source.any())
        for s in range(NQ):
            with m.If(ovf_source[s]):
                m.d.comb += overflow_index_r.eq(ret_index_r[s])
        tokens_left = Signal()
        m.d.comb += tokens_left.eq(Cat(*[nonzero[s][d] for s in range(NQ) for d in range(NQ)
                                         if s != d]).any())

        # ------------------------------------------------------------------ instruction memory
        imem = m.submodules.imem = Memory(shape=unsigned(8 * row_bytes),
                                          depth=max(seg_len // per_row, 2), init=[])
        wport = imem.write_port()
        rport = imem.read_port()
        local = Signal(range(seg_len + 1))               # nxt - seg_base
        m.d.comb += local.eq(nxt - seg_base)

        # ------------------------------------------------------------------ fetch (AR / R)
        axi = self.axi
        burst_beats = min(AXI_BURST_MAX_BEATS, AXI_BOUNDARY // n)
        total_beats = Signal(range(seg_len * INSTR_BYTES // n + 2))
        ar_sent = Signal(range(seg_len * INSTR_BYTES // n + 2))     # beats requested so far
        r_got = Signal(range(seg_len * INSTR_BYTES // n + 2))       # beats received
        fetch_error = Signal()
        assemble = Signal(8 * row_bytes)
        ar_left = Signal(range(seg_len * INSTR_BYTES // n + 2))
        m.d.comb += [
            ar_left.eq(total_beats - ar_sent),
            axi.arid.eq(0),
            axi.arsize.eq((n - 1).bit_length()),
            axi.arburst.eq(AxiBurst.INCR),
            axi.araddr.eq(self.prog_base + seg_base * INSTR_BYTES + ar_sent * n),
            axi.arlen.eq(Mux(ar_left > burst_beats, burst_beats, ar_left) - 1),
        ]
        m.d.comb += [self.fetching.eq(fetching),
                     axi.arvalid.eq(fetching & ~stopping & (ar_sent < total_beats)),
                     axi.rready.eq(fetching)]
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += ar_sent.eq(ar_sent + Mux(ar_left > burst_beats, burst_beats, ar_left))
        beat_in_row = Signal(range(max(beats_per_row, 2)))
        with m.If(fetching & axi.rvalid):
            m.d.sync += r_got.eq(r_got + 1)
            with m.If(axi.rresp != 0):
                m.d.sync += fetch_error.eq(1)
            if beats_per_row == 1:
                m.d.comb += [wport.addr.eq(r_got), wport.data.eq(axi.rdata), wport.en.eq(~0)]
            else:
                full = Signal(8 * row_bytes)
                m.d.comb += full.eq(Cat(assemble[8 * n:], axi.rdata))
                m.d.sync += assemble.eq(full)
                m.d.sync += beat_in_row.eq(beat_in_row + 1)
                with m.If(beat_in_row == beats_per_row - 1):
                    m.d.sync += beat_in_row.eq(0)
                    m.d.comb += [wport.addr.eq(r_got // beats_per_row), wport.data.eq(full),
                                 wport.en.eq(~0)]

        # ------------------------------------------------------------------ decoder
        dec = m.submodules.decoder = Decoder(cfg)
        word = Signal(INSTR_BITS)                        # the read port: instruction nxt
        # The read port is enabled only while no segment is fetched: every write is in a
        # fetch (``fetching``), so the two ports never meet on a row and the build may
        # declare their collision undefined (:func:`hw.core.core.undefined_collisions`).
        # The words dispatch takes are read from the cycle after the fetch's last beat.
        m.d.comb += [rport.addr.eq(local // per_row), rport.en.eq(~fetching)]
        self._imem_ports = (wport, rport)                # observed by the tests
        if per_row == 1:
            m.d.comb += word.eq(rport.data)
        else:
            sel = Signal(range(per_row))
            m.d.sync += sel.eq(local % per_row)          # registered with the read address
            m.d.comb += word.eq(rport.data.word_select(sel, INSTR_BITS))
        cur_index = Signal(INDEX_BITS)                   # instruction in the decoder
        take = Signal()                                  # the decoder takes instruction nxt
        m.d.comb += [dec.word.eq(word), dec.dram_size.eq(self.dram_size),
                     dec.last.eq(nxt == self.prog_len - 1), dec.start.eq(take)]
        # Whether the instruction in the decoder is its segment's last, registered when it is
        # taken (so the segment arithmetic is not on the path from a verdict to the next take).
        cur_last = Signal()
        with m.If(take):
            m.d.sync += [cur_index.eq(nxt), nxt.eq(nxt + 1),
                         cur_last.eq(nxt + 1 == seg_base + seg_count)]

        # Push: in the verdict's cycle if the FIFO has room, else once it has.
        pending = Signal()
        pend_queue = Signal(range(NQ + 1))
        verdict_push = Signal()
        m.d.comb += verdict_push.eq(dec.valid & (dec.error == 0) & (dec.queue != NQ))
        push_queue = Signal(range(NQ + 1))
        m.d.comb += push_queue.eq(Mux(pending, pend_queue, dec.queue))
        want_push = Signal()
        m.d.comb += want_push.eq(pending | verdict_push)
        room = Signal()
        m.d.comb += room.eq(Cat(*[(push_queue == q) & fifos[q].w_rdy for q in range(NQ)]).any())
        push = Signal()
        for q in range(NQ):
            m.d.comb += [fifos[q].w_data.eq(Cat(dec.held, cur_index)),
                         fifos[q].w_en.eq(push & (push_queue == q))]

        # ------------------------------------------------------------------ run control
        empty = Signal()
        m.d.comb += empty.eq(Cat(*[~fifos[q].r_rdy for q in range(NQ)]).all() & ~in_flight.any())
        load_idle = Signal()
        m.d.comb += load_idle.eq(~fifos[Queue.LOAD].r_rdy & ~in_flight[Queue.LOAD])
        stuck = Signal()                                 # nothing will ever start again
        m.d.comb += stuck.eq(~in_flight.any() & ~starts.any())
        # The oldest instruction waiting in a queue (for DEADLOCK's index): from the queue
        # heads registered the cycle before (the cycle the deadlock was found: the heads do
        # not change while stopping), every pair compared at once and the one head older
        # than every other valid one selected (indices are distinct).
        oldest = Signal(INDEX_BITS)
        heads_r = [Signal(INDEX_BITS, name=f"head_r_{q}") for q in range(NQ)]
        valid_r = Signal(NQ)
        m.d.sync += [h.eq(head_index[q]) for q, h in enumerate(heads_r)]
        m.d.sync += valid_r.eq(Cat(*[fifos[q].r_rdy for q in range(NQ)]))
        is_oldest = [Cat(valid_r[q], *[~valid_r[p] | (heads_r[q] < heads_r[p])
                                       for p in range(NQ) if p != q]).all() for q in range(NQ)]
        picked = Const(0, INDEX_BITS)
        for q in range(NQ):
            picked = picked | Mux(is_oldest[q], heads_r[q], 0)
        m.d.comb += oldest.eq(Mux(valid_r.any(), picked, (1 << INDEX_BITS) - 1))
        last_beat = Signal()
        m.d.comb += last_beat.eq(fetching & axi.rvalid & (r_got == total_beats - 1))

        # An error's code is written in the cycle it is found, its index one cycle later
        # (still before ``done``): the index comes from a register, so no index arithmetic
        # (the oldest queue head's compares, the retire and bus-error muxes) lies on the
        # paths that find errors.  The state an index is read from is frozen while stopping
        # (nothing is dispatched or started); the volatile ones are held from the cycle the
        # error was found.
        IDX_HELD, IDX_PROG_END, IDX_OLDEST, IDX_ZERO, IDX_SEG, IDX_CUR = range(6)    # noqa: N806
        index_due = Signal()
        index_src = Signal(range(6))
        index_held = Signal(INDEX_BITS)                 # overflow or bus-error index
        m.d.sync += index_held.eq(Mux(overflow_r, overflow_index_r, bus_index_r))

        def fail(code, src):
            m.d.sync += [stopping.eq(1), error.eq(code), index_due.eq(1), index_src.eq(src)]

        with m.If(index_due):
            m.d.sync += index_due.eq(0)
            with m.Switch(index_src):
                for src, value in ((IDX_HELD, index_held), (IDX_PROG_END, self.prog_len - 1),
                                   (IDX_OLDEST, oldest), (IDX_ZERO, 0), (IDX_SEG, seg_base),
                                   (IDX_CUR, cur_index)):
                    with m.Case(src):
                        m.d.sync += error_index.eq(value)

        # A busy counter adds a cycle one cycle late, from a register of whether its engine
        # had an instruction in flight (the starts come from the engines' ready, across the
        # die): the last in-flight cycle is at E - 1 or earlier, so the count is complete
        # when ``done`` rises at E + 1.
        busy_step = Signal(NQ)
        m.d.sync += busy_step.eq(Mux(running, in_flight | starts, 0))
        for q in range(NQ):
            with m.If(busy_step[q]):
                m.d.sync += self.busy_count[q].eq(self.busy_count[q] + 1)
        with m.If(running):
            m.d.sync += cycles.eq(cycles + 1)

        with m.If(~running):
            with m.If(self.clear):
                m.d.sync += done.eq(0)
            with m.If(self.start):
                m.d.sync += [running.eq(1), done.eq(0), stopping.eq(0), halted.eq(0),
                             error.eq(0), error_index.eq(0), index_due.eq(0), cycles.eq(0),
                             seg_base.eq(0),
                             nxt.eq(0), phase.eq(FETCH_WAIT), pending.eq(0), fetching.eq(0)]
                m.d.sync += [self.busy_count[q].eq(0) for q in range(NQ)]
                for s in range(NQ):
                    for d in range(NQ):
                        if s != d:
                            m.d.sync += [sem[s][d].eq(0), nonzero[s][d].eq(0), top[s][d].eq(0)]
        with m.Elif(stopping):
            # Drain: in-flight instructions retire, requested fetch beats arrive.
            with m.If(~in_flight.any() & (~fetching | (r_got == ar_sent))):
                m.d.sync += [running.eq(0), done.eq(1), fetching.eq(0)]
        with m.Else():
            with m.If(overflow_r):
                fail(int(ErrorCode.SEMAPHORE), IDX_HELD)
            with m.Elif(bus_error_r):
                fail(int(ErrorCode.BUS), IDX_HELD)
            with m.Elif(halted):
                with m.If(empty):
                    with m.If(tokens_left):
                        fail(int(ErrorCode.TOKENS), IDX_PROG_END)
                    with m.Else():
                        m.d.sync += [running.eq(0), done.eq(1)]
                with m.Elif(stuck):
                    fail(int(ErrorCode.DEADLOCK), IDX_OLDEST)
            with m.Else():
                with m.Switch(phase):
                    with m.Case(FETCH_WAIT):
                        with m.If(self.prog_len == 0):
                            fail(int(ErrorCode.NO_HALT), IDX_ZERO)
                        with m.Elif(load_idle):
                            count = Mux(self.prog_len - seg_base > seg_len, seg_len,
                                        self.prog_len - seg_base)
                            m.d.sync += [fetching.eq(1), phase.eq(FETCH), seg_count.eq(count),
                                         total_beats.eq((count * INSTR_BYTES + n - 1) // n),
                                         ar_sent.eq(0), r_got.eq(0), fetch_error.eq(0),
                                         beat_in_row.eq(0)]
                        with m.Elif(stuck):
                            fail(int(ErrorCode.DEADLOCK), IDX_OLDEST)
                    with m.Case(FETCH):
                        with m.If(last_beat):
                            with m.If(fetch_error | (axi.rresp != 0)):
                                fail(int(ErrorCode.BUS), IDX_SEG)
                            with m.Else():
                                m.d.sync += [fetching.eq(0), phase.eq(READ)]
                    with m.Case(READ):
                        # The read port shows instruction nxt from the next cycle.
                        m.d.sync += phase.eq(DECODE)
                        m.d.sync += take_first.eq(1)
                    with m.Case(DECODE):
                        m.d.sync += take_first.eq(0)
                        with m.If(take_first):
                            m.d.comb += take.eq(1)
                        with m.If(dec.valid & (dec.error != 0)):
                            fail(dec.error, IDX_CUR)
                        with m.Elif(dec.valid & (dec.queue == NQ)):
                            m.d.sync += halted.eq(1)
                        with m.Elif(want_push):
                            with m.If(room):
                                m.d.comb += push.eq(1)
                                m.d.sync += pending.eq(0)
                                with m.If(cur_last):
                                    # The segment is dispatched: fetch the next one.
                                    m.d.sync += [seg_base.eq(seg_base + seg_count),
                                                 phase.eq(FETCH_WAIT)]
                                with m.Else():
                                    m.d.comb += take.eq(1)
                            with m.Else():
                                m.d.sync += [pending.eq(1), pend_queue.eq(push_queue)]
                                with m.If(stuck):
                                    fail(int(ErrorCode.DEADLOCK), IDX_OLDEST)
        return m
