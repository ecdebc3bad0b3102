# amaranth: UnusedElaboratable=no
"""The AXI4-Lite register file: every register's access, byte strobes, errors, the start
and clear commands (Amaranth simulation with a small AXI4-Lite manager)."""
from __future__ import annotations

from amaranth.sim import Simulator

from compiler.isa import NQ
from hw.axi import AxiResp
from hw.config import load_config
from hw.core.registers import CORE_ID, CORE_VERSION, REGISTERS, Reg, Registers


async def write(ctx, bus, addr, data, strb=0xF, aw_first=0):
    """One write; returns (response, cycles until the response)."""
    ctx.set(bus.awaddr, addr)
    ctx.set(bus.wdata, data)
    ctx.set(bus.wstrb, strb)
    ctx.set(bus.awvalid, 1)
    for _ in range(aw_first):                 # address before data: nothing happens
        await ctx.tick()
        assert not ctx.get(bus.awready)
    ctx.set(bus.wvalid, 1)
    ctx.set(bus.bready, 1)
    cycles = 0
    while not ctx.get(bus.awready):
        await ctx.tick()
        cycles += 1
    await ctx.tick()
    ctx.set(bus.awvalid, 0)
    ctx.set(bus.wvalid, 0)
    while not ctx.get(bus.bvalid):
        await ctx.tick()
        cycles += 1
    resp = ctx.get(bus.bresp)
    await ctx.tick()
    ctx.set(bus.bready, 0)
    return resp, cycles


async def read(ctx, bus, addr):
    ctx.set(bus.araddr, addr)
    ctx.set(bus.arvalid, 1)
    ctx.set(bus.rready, 1)
    while not ctx.get(bus.arready):
        await ctx.tick()
    await ctx.tick()
    ctx.set(bus.arvalid, 0)
    while not ctx.get(bus.rvalid):
        await ctx.tick()
    value, resp = ctx.get(bus.rdata), ctx.get(bus.rresp)
    await ctx.tick()
    ctx.set(bus.rready, 0)
    return value, resp


def test_registers():
    cfg = load_config("tiny")
    dut = Registers(cfg)
    seen = {"start": 0, "clear": 0}

    async def monitor(ctx):
        async for _, _, start, clear in ctx.tick().sample(dut.start, dut.clear):
            seen["start"] += start
            seen["clear"] += clear

    async def bench(ctx):
        bus = dut.bus
        ctx.set(dut.cycles, (7 << 32) | 1234)
        ctx.set(dut.error, 3)
        ctx.set(dut.error_index, 99)
        for q in range(NQ):
            ctx.set(dut.busy_count[q], 100 + q)
        assert await read(ctx, bus, Reg.ID) == (CORE_ID, AxiResp.OKAY)
        assert await read(ctx, bus, Reg.VERSION) == (CORE_VERSION, AxiResp.OKAY)
        assert await read(ctx, bus, Reg.CONFIG_N) == (cfg.lanes, AxiResp.OKAY)
        assert await read(ctx, bus, Reg.CONFIG_INSTR_BUFFER) == (cfg.instr_buffer, AxiResp.OKAY)
        assert await read(ctx, bus, Reg.CYCLES_LO) == (1234, AxiResp.OKAY)
        assert await read(ctx, bus, Reg.CYCLES_HI) == (7, AxiResp.OKAY)
        assert await read(ctx, bus, Reg.ERROR) == (3, AxiResp.OKAY)
        assert await read(ctx, bus, Reg.ERROR_INDEX) == (99, AxiResp.OKAY)
        for q in range(NQ):
            assert await read(ctx, bus, Reg.BUSY_LOAD + 4 * q) == (100 + q, AxiResp.OKAY)
        # Read-write registers, with byte strobes.
        # The two bases keep bits 11..0 at zero (4 KiB aligned).
        for reg, sig in ((Reg.PROG_BASE, dut.prog_base), (Reg.PROG_LEN, dut.prog_len),
                         (Reg.DRAM_BASE, dut.dram_base), (Reg.DRAM_SIZE, dut.dram_size)):
            low = 0xFFFFF000 if reg in (Reg.PROG_BASE, Reg.DRAM_BASE) else 0xFFFFFFFF
            assert await write(ctx, bus, reg, 0x11223344, aw_first=1) == (AxiResp.OKAY, 0)
            assert ctx.get(sig) == 0x11223344 & low
            assert (await write(ctx, bus, reg, 0xAABBCCDD, strb=0b0101))[0] == AxiResp.OKAY
            assert ctx.get(sig) == 0x11BB33DD & low
            assert await read(ctx, bus, reg) == (0x11BB33DD & low, AxiResp.OKAY)
            # While a run is busy, run parameters are refused and kept.
            ctx.set(dut.busy, 1)
            assert (await write(ctx, bus, reg, 0x55555555))[0] == AxiResp.SLVERR
            ctx.set(dut.busy, 0)
            assert ctx.get(sig) == 0x11BB33DD & low
        # Read-only, unknown and unaligned offsets answer SLVERR and change nothing.
        for addr in (Reg.ID, Reg.STATUS, Reg.CYCLES_LO, 0x4C, 0xFC, 0x119, Reg.PROG_BASE + 1):
            assert (await write(ctx, bus, addr, 0xFFFFFFFF))[0] == AxiResp.SLVERR, hex(addr)
        assert ctx.get(dut.prog_base) == 0x11BB3000
        for addr in (0x4C, 0xFC, 0x100 + Reg.ID, 0x2):
            assert await read(ctx, bus, addr) == (0, AxiResp.SLVERR), hex(addr)
        # Start only when not busy; interrupt enable; clear.
        ctx.set(dut.busy, 1)
        await write(ctx, bus, Reg.CTRL, 0b011)
        assert seen["start"] == 0
        ctx.set(dut.busy, 0)
        await write(ctx, bus, Reg.CTRL, 0b011)
        assert seen["start"] == 1
        assert await read(ctx, bus, Reg.CTRL) == (0b010, AxiResp.OKAY)
        assert not ctx.get(dut.irq)
        ctx.set(dut.done, 1)
        assert ctx.get(dut.irq)
        assert await read(ctx, bus, Reg.STATUS) == (0b110, AxiResp.OKAY)
        await write(ctx, bus, Reg.CTRL, 0b110)
        assert seen["clear"] == 1 and seen["start"] == 1
        await write(ctx, bus, Reg.CTRL, 0b000)
        assert not ctx.get(dut.irq)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_process(monitor)
    sim.run()
    assert set(REGISTERS) == set(Reg)
