"""The accelerator core: sequencer, engines, memories and registers behind two ports.

``m_axi``: one AXI4 manager port to DRAM (``N``-byte data, INCR bursts, one ID): the read
channels carry the program fetch (while the sequencer fetches; the LOAD engine is idle then)
and the LOAD engine's bursts, the write channels the STORE engine's.  ``s_axil``: the
AXI4-Lite register port (:mod:`hw.core.registers`).  ``irq``: high while a run is done and
interrupts are enabled.  docs/ACCELERATOR.md describes the organisation and
docs/HARDWARE.md the register map.

Every on-chip memory (:func:`hw.core.memories.build_memories`) has one write port, driven by
its writing engine, and one synchronous read port, driven by its reading engine.  The
engines are reset in the cycle after every start (cycle 0 of the run), so a run never sees
the state of the last one (the memories keep their contents).  Timing: the sequencer's (:mod:`hw.core.sequencer`) and the
engines' own timing functions, which the cycle model combines (:mod:`sim.schedule`).
"""
from __future__ import annotations

from amaranth import Module, Mux, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from compiler.isa import NQ, Queue
from hw.axi import axi4_lite_signature, axi4_signature
from hw.config import AcceleratorConfig
from hw.core.dma import LoadEngine, StoreEngine
from hw.core.memories import build_memories
from hw.core.registers import Registers
from hw.core.sequencer import Sequencer
from hw.core.tile_engine import TileEngine
from hw.core.vector_engine import VectorEngine

__all__ = ["Core", "WRITERS", "READERS", "REGISTER_ADDR_BITS", "undefined_collisions"]

#: Address bits of the register port.
REGISTER_ADDR_BITS = 12

#: Each memory's writing engine and the name of its write port there.
WRITERS = {
    "act": (Queue.LOAD, "act"), "weight": (Queue.LOAD, "weight"), "value": (Queue.LOAD, "value"),
    "vin": (Queue.LOAD, "vin"), "vin2": (Queue.LOAD, "vin2"), "copy": (Queue.LOAD, "copy"),
    "param": (Queue.LOAD, "param"),
    "prob": (Queue.VECTOR, "prob"), "codes": (Queue.VECTOR, "codes"), "out": (Queue.VECTOR, "out"),
    "acc": (Queue.MATRIX, "wr_acc"), "attn_acc": (Queue.ATTN, "wr_attn_acc"),
}
#: Each memory's reading engine and the name of its read port there.
READERS = {
    "act": (Queue.MATRIX, "rd_act"), "weight": (Queue.MATRIX, "rd_weight"),
    "prob": (Queue.MATRIX, "rd_prob"), "codes": (Queue.ATTN, "rd_codes"),
    "value": (Queue.ATTN, "rd_value"),
    "vin": (Queue.VECTOR, "vin"), "vin2": (Queue.VECTOR, "vin2"), "acc": (Queue.VECTOR, "acc"),
    "attn_acc": (Queue.VECTOR, "attn_acc"), "param": (Queue.VECTOR, "param"),
    "out": (Queue.STORE, "out"), "copy": (Queue.STORE, "copy"),
}


def undefined_collisions(config: AcceleratorConfig) -> list[str]:
    """The memories (their paths in the elaborated core) whose read port may return
    undefined data in a cycle its write port writes the same row: every region memory and
    the sequencer's instruction memory (``sequencer.imem``).  A region memory's writer and
    reader are engines of two different queues, and the hazard rule orders every two
    instructions of different queues that share a row (docs/ISA.md, "Hazards"; the cycle
    model checks it), so in a program the model accepts the two ports never meet on a row.
    The instruction memory's read port is disabled while a fetch writes it.  Amaranth's read
    port returns the old data on a collision, which a block RAM whose ports collide
    undefined (the ECP5 DP16KD) can only give with logic around it (Yosys'
    ``emulate_read_first``: a register of the written data, an address compare and an
    output mux); the open-flow build declares these collisions undefined instead
    (:func:`boards.build.declare_undefined_collisions`)."""
    return [f"mem_{name}" for name in config.regions] + ["sequencer.imem"]


class Core(wiring.Component):
    """The accelerator for ``config`` (module docstring).

    Members: ``m_axi`` (``axi4_signature(32, N)``, manager), ``s_axil``
    (``axi4_lite_signature(12, 4)``, subordinate), ``irq``.
    """

    def __init__(self, config: AcceleratorConfig):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"config must be an AcceleratorConfig, got {type(config).__name__}")
        self.config = config
        assert set(WRITERS) == set(READERS) == set(config.regions)
        super().__init__({
            "m_axi": Out(axi4_signature(32, config.lanes)),
            "s_axil": In(axi4_lite_signature(REGISTER_ADDR_BITS, 4)),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.config
        m = Module()
        regs = m.submodules.registers = Registers(cfg, REGISTER_ADDR_BITS)
        seq = m.submodules.sequencer = Sequencer(cfg)
        wiring.connect(m, wiring.flipped(self.s_axil), regs.bus)
        m.d.comb += [
            self.irq.eq(regs.irq),
            seq.start.eq(regs.start), seq.clear.eq(regs.clear),
            seq.prog_base.eq(regs.prog_base), seq.prog_len.eq(regs.prog_len),
            seq.dram_size.eq(regs.dram_size),
            regs.busy.eq(seq.running), regs.done.eq(seq.done), regs.error.eq(seq.error),
            regs.error_index.eq(seq.error_index), regs.cycles.eq(seq.cycles),
        ]
        for q in range(NQ):
            m.d.comb += regs.busy_count[q].eq(seq.busy_count[q])

        # Engines, reset at every start.
        engines = {
            Queue.LOAD: LoadEngine(cfg),
            Queue.MATRIX: TileEngine(cfg, "matrix"),
            Queue.ATTN: TileEngine(cfg, "attn"),
            Queue.VECTOR: VectorEngine(cfg),
            Queue.STORE: StoreEngine(cfg),
        }
        # Each engine's reset is ``start`` registered, one register per engine: the engines
        # are idle at a start (a run ends only once every instruction retired) and get
        # nothing before the first verdict, so resetting them in cycle 0 instead of the
        # start cycle changes no cycle, the register-write logic behind ``start`` no longer
        # drives thousands of reset pins, and each engine's reset net starts from its own
        # register.  ``keep`` (and boards.build's synthesis script, which marks the registers
        # of ``engine_reset_*`` keep) stops synthesis from merging the equal registers.
        engine_resets = {}
        for q, engine in engines.items():
            name = q.name.lower()
            engine_reset = engine_resets[q] = Signal(name=f"engine_reset_{name}", attrs={"keep": 1})
            m.d.sync += engine_reset.eq(regs.start)
            m.submodules[f"engine_{name}"] = ResetInserter(engine_reset)(engine)
            port = seq.engine[int(q)]
            m.d.comb += [
                engine.instr.valid.eq(port.instr.valid),
                engine.instr.payload.eq(port.instr.payload),
                port.instr.ready.eq(engine.instr.ready),
                port.retire.eq(engine.retire),
                port.busy.eq(engine.busy),
            ]
        load, store = engines[Queue.LOAD], engines[Queue.STORE]
        m.d.comb += [load.dram_base.eq(regs.dram_base), store.dram_base.eq(regs.dram_base),
                     # A DMA engine's error flag holds until its reset (cycle 0 of the next
                     # run): an error left from the last run is not reported in that cycle.
                     seq.bus_error.eq((load.error & ~engine_resets[Queue.LOAD]) << int(Queue.LOAD)
                                      | (store.error & ~engine_resets[Queue.STORE]) << int(Queue.STORE))]

        # Memories: one writer, one reader each.
        for name, mem in build_memories(cfg).items():
            m.submodules[f"mem_{name}"] = mem
            wq, wname = WRITERS[name]
            rq, rname = READERS[name]
            wp, rp = mem.write_port(granularity=_granularity(mem, cfg, name)), mem.read_port()
            w, r = getattr(engines[wq], wname), getattr(engines[rq], rname)
            m.d.comb += [wp.addr.eq(w.addr), wp.data.eq(w.data), wp.en.eq(w.en),
                         rp.addr.eq(r.addr)]
            # The block RAMs read every cycle; the reader's enable selects between the new
            # data and a hold register, which gives the read port's own semantics (data the
            # cycle after an enabled read, held while the enable is low) cycle for cycle.
            # The enable comes from an engine's issue logic; as the read port's own enable it
            # reached the clock enable of every block RAM of the memory (12-16 across the
            # die): on the placed ULX3S core the vector engine's issue -> accumulator CEB was
            # the slowest path, 20.5 ns, 18.7 of it routing.  Now it drives one register.
            read_en = Signal(name=f"mem_{name}_read_en")
            held = Signal(len(rp.data), name=f"mem_{name}_held")
            m.d.sync += [read_en.eq(r.en), held.eq(r.data)]
            m.d.comb += [rp.en.eq(1), r.data.eq(Mux(read_en, rp.data, held))]

        # The memory port: reads from the sequencer while it fetches, else from LOAD.
        axi = self.m_axi
        fetch = seq.fetching
        for name in ("arid", "araddr", "arlen", "arsize", "arburst", "arvalid"):
            m.d.comb += getattr(axi, name).eq(
                Mux(fetch, getattr(seq.axi, name), getattr(load.axi, name)))
        m.d.comb += [axi.rready.eq(Mux(fetch, seq.axi.rready, load.axi.rready))]
        for name in ("arready",):
            m.d.comb += [getattr(seq.axi, name).eq(getattr(axi, name) & fetch),
                         getattr(load.axi, name).eq(getattr(axi, name) & ~fetch)]
        for name in ("rid", "rdata", "rresp", "rlast"):
            m.d.comb += [getattr(seq.axi, name).eq(getattr(axi, name)),
                         getattr(load.axi, name).eq(getattr(axi, name))]
        m.d.comb += [seq.axi.rvalid.eq(axi.rvalid & fetch), load.axi.rvalid.eq(axi.rvalid & ~fetch)]
        for name, member in store.axi.signature.members.items():
            if member.flow == wiring.Out:
                m.d.comb += getattr(axi, name).eq(getattr(store.axi, name))
            else:
                m.d.comb += getattr(store.axi, name).eq(getattr(axi, name))
        return m


def _granularity(mem, cfg: AcceleratorConfig, name: str) -> int:
    from hw.core.memories import geometry
    return geometry(cfg, name).granularity
