"""Control and status registers on an AXI4-Lite subordinate port (docs/HARDWARE.md).

32-bit registers at the offsets of :data:`REGISTERS`.  A write takes its address and data
together (``awready`` and ``wready`` rise in the cycle both are valid and no response is
pending) and answers ``OKAY`` the next cycle, or ``SLVERR`` for an offset that is not a
writable register; byte strobes apply.  A read answers the cycle after its address with the
register's value (``SLVERR`` and zero for an unknown offset).  Latency: one cycle each way;
one transaction of each kind at a time.
"""
from __future__ import annotations

import enum

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from compiler.isa import NQ, Queue
from hw.axi import AxiResp, axi4_lite_signature
from hw.config import AcceleratorConfig
from hw.core.decoder import ERROR_BITS

__all__ = ["Reg", "REGISTERS", "CORE_ID", "CORE_VERSION", "Registers", "CTRL_START",
           "CTRL_IRQ_ENABLE", "CTRL_CLEAR", "STATUS_BUSY", "STATUS_DONE", "STATUS_ERROR"]

#: ``ID``: "VITM" read as a little-endian word.
CORE_ID = 0x4D544956
#: ``VERSION``: the instruction set / program image version.
CORE_VERSION = 3

CTRL_START, CTRL_IRQ_ENABLE, CTRL_CLEAR = 1, 2, 4
STATUS_BUSY, STATUS_DONE, STATUS_ERROR = 1, 2, 4


class Reg(enum.IntEnum):
    """Register offsets (bytes)."""
    ID = 0x00
    VERSION = 0x04
    CTRL = 0x08
    STATUS = 0x0C
    ERROR = 0x10
    ERROR_INDEX = 0x14
    PROG_BASE = 0x18
    PROG_LEN = 0x1C
    DRAM_BASE = 0x20
    DRAM_SIZE = 0x24
    CYCLES_LO = 0x28
    CYCLES_HI = 0x2C
    BUSY_LOAD = 0x30
    BUSY_MATRIX = 0x34
    BUSY_ATTN = 0x38
    BUSY_VECTOR = 0x3C
    BUSY_STORE = 0x40
    CONFIG_N = 0x44
    CONFIG_INSTR_BUFFER = 0x48


#: Offset -> (name, access, meaning), for docs and drivers.
REGISTERS = {
    Reg.ID: ("R", 'identification, 0x4D544956 ("VITM")'),
    Reg.VERSION: ("R", "instruction set / program image version"),
    Reg.CTRL: ("RW", "bit 0 start (ignored while busy, reads 0), bit 1 interrupt enable, "
                     "bit 2 clear done and the interrupt (reads 0)"),
    Reg.STATUS: ("R", "bit 0 busy, bit 1 done, bit 2 error (ERROR is not 0)"),
    Reg.ERROR: ("R", "why the last run stopped (compiler.isa.ErrorCode), 0 if it ended normally"),
    Reg.ERROR_INDEX: ("R", "the instruction the last run stopped at"),
    Reg.PROG_BASE: ("RW", "DRAM byte address of the program (bits 11..0 read 0: 4 KiB aligned); "
                          "writes while busy are refused (SLVERR)"),
    Reg.PROG_LEN: ("RW", "program length in instructions; writes while busy are refused"),
    Reg.DRAM_BASE: ("RW", "DRAM byte address the program's DRAM addresses are relative to "
                          "(bits 11..0 read 0); writes while busy are refused"),
    Reg.DRAM_SIZE: ("RW", "bytes from DRAM_BASE the program may address (RANGE beyond); "
                          "writes while busy are refused"),
    Reg.CYCLES_LO: ("R", "cycles of the last run, low word"),
    Reg.CYCLES_HI: ("R", "cycles of the last run, high word"),
    **{Reg[f"BUSY_{q.name}"]: ("R", f"cycles with a {q.name} instruction in flight (started, "
                                     f"not yet retired) in the last run")
       for q in Queue},
    Reg.CONFIG_N: ("R", "the datapath width N"),
    Reg.CONFIG_INSTR_BUFFER: ("R", "instructions per program segment"),
}
assert all(Reg[f"BUSY_{q.name}"] == Reg.BUSY_LOAD + 4 * int(q) for q in Queue)

_WRITABLE = (Reg.CTRL, Reg.PROG_BASE, Reg.PROG_LEN, Reg.DRAM_BASE, Reg.DRAM_SIZE)
#: Registers whose low 12 bits are always zero (4 KiB aligned addresses).
_ALIGNED = (Reg.PROG_BASE, Reg.DRAM_BASE)


class Registers(wiring.Component):
    """The register file (module docstring).

    ``bus``: the AXI4-Lite subordinate port.  To the core: ``start`` (one cycle when bit 0
    of CTRL is written while not ``busy``), ``prog_base``, ``prog_len``, ``dram_base``,
    ``dram_size``, ``irq``; from it: ``busy``, ``done``, ``error``, ``error_index``,
    ``cycles``, ``busy_count[q]``.  ``clear`` pulses when bit 2 of CTRL is written.
    """

    def __init__(self, config: AcceleratorConfig, addr_width: int = 12):
        self.config = config
        super().__init__({
            "bus": In(axi4_lite_signature(addr_width, 4)),
            "start": Out(1),
            "clear": Out(1),
            "prog_base": Out(32),
            "prog_len": Out(32),
            "dram_base": Out(32),
            "dram_size": Out(32),
            "irq": Out(1),
            "busy": In(1),
            "done": In(1),
            "error": In(ERROR_BITS),
            "error_index": In(32),
            "cycles": In(64),
            "busy_count": In(32).array(NQ),
        })

    def elaborate(self, platform):
        m = Module()
        bus = self.bus
        irq_enable = Signal()
        m.d.comb += self.irq.eq(irq_enable & self.done)

        # ---------------------------------------------------------------- writes
        bvalid = Signal()
        bresp = Signal(2)
        take_w = Signal()
        m.d.comb += [take_w.eq(bus.awvalid & bus.wvalid & ~bvalid),
                     bus.awready.eq(take_w), bus.wready.eq(take_w),
                     bus.bvalid.eq(bvalid), bus.bresp.eq(bresp)]
        with m.If(bvalid & bus.bready):
            m.d.sync += bvalid.eq(0)
        waddr = bus.awaddr[2:8]

        def strobed(old, data, strb):
            return [Mux(strb[b], data[8 * b:8 * b + 8], old[8 * b:8 * b + 8]) for b in range(4)]

        targets = {Reg.PROG_BASE: self.prog_base, Reg.PROG_LEN: self.prog_len,
                   Reg.DRAM_BASE: self.dram_base, Reg.DRAM_SIZE: self.dram_size}
        w_ok = (bus.awaddr[:2] == 0) & (bus.awaddr[8:] == 0)
        with m.If(take_w & ~w_ok):
            m.d.sync += [bvalid.eq(1), bresp.eq(AxiResp.SLVERR)]
        with m.Elif(take_w):
            m.d.sync += [bvalid.eq(1), bresp.eq(AxiResp.OKAY)]
            with m.Switch(waddr):
                for reg, sig in targets.items():
                    with m.Case(int(reg) >> 2):
                        # Run parameters hold still during a run: a write then is refused.
                        # The two bases are 4 KiB aligned (bursts never cross 4 KiB): their
                        # low 12 bits are always zero.
                        with m.If(self.busy):
                            m.d.sync += bresp.eq(AxiResp.SLVERR)
                        with m.Else():
                            value = Cat(*strobed(sig, bus.wdata, bus.wstrb))
                            if reg in _ALIGNED:
                                value = value & ~0xFFF
                            m.d.sync += sig.eq(value)
                with m.Case(int(Reg.CTRL) >> 2):
                    with m.If(bus.wstrb[0]):
                        m.d.sync += irq_enable.eq(bus.wdata[1])
                        m.d.comb += [self.start.eq(bus.wdata[0] & ~self.busy),
                                     self.clear.eq(bus.wdata[2])]
                with m.Default():
                    m.d.sync += bresp.eq(AxiResp.SLVERR)

        # ---------------------------------------------------------------- reads
        rvalid = Signal()
        rdata = Signal(32)
        rresp = Signal(2)
        take_r = Signal()
        m.d.comb += [take_r.eq(bus.arvalid & ~rvalid), bus.arready.eq(take_r),
                     bus.rvalid.eq(rvalid), bus.rdata.eq(rdata), bus.rresp.eq(rresp)]
        with m.If(rvalid & bus.rready):
            m.d.sync += rvalid.eq(0)
        values = {
            Reg.ID: CORE_ID, Reg.VERSION: CORE_VERSION, Reg.CTRL: irq_enable << 1,
            Reg.STATUS: self.busy | (self.done << 1) | ((self.error != 0) << 2),
            Reg.ERROR: self.error, Reg.ERROR_INDEX: self.error_index,
            Reg.PROG_BASE: self.prog_base, Reg.PROG_LEN: self.prog_len,
            Reg.DRAM_BASE: self.dram_base, Reg.DRAM_SIZE: self.dram_size,
            Reg.CYCLES_LO: self.cycles[:32], Reg.CYCLES_HI: self.cycles[32:],
            **{Reg[f"BUSY_{q.name}"]: self.busy_count[int(q)] for q in Queue},
            Reg.CONFIG_N: self.config.lanes, Reg.CONFIG_INSTR_BUFFER: self.config.instr_buffer,
        }
        with m.If(take_r):
            m.d.sync += [rvalid.eq(1), rresp.eq(AxiResp.OKAY), rdata.eq(0)]
            with m.Switch(bus.araddr[2:8]):
                for reg, value in values.items():
                    with m.Case(int(reg) >> 2):
                        m.d.sync += rdata.eq(value)
                with m.Default():
                    m.d.sync += rresp.eq(AxiResp.SLVERR)
            with m.If((bus.araddr[:2] != 0) | (bus.araddr[8:] != 0)):
                m.d.sync += [rresp.eq(AxiResp.SLVERR), rdata.eq(0)]
        return m
