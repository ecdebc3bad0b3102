"""cocotb test that runs programs on the accelerator core (runs inside the simulator).

:mod:`sim.cosim` builds the core's Verilog and starts this module with a job file (the
path in ``VITAMIN_VECTORS``): a list of runs, each a program, a DRAM image, the register
values and the memory model's back-pressure.  For each run the :class:`TB` writes DRAM
through the memory model's back door, programs the registers through AXI4-Lite, starts the
core, waits for the interrupt (or a cycle limit), reads every counter and error register and
writes DRAM back to a file.  Results go to the job's ``results`` path (JSON).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge

from sim.cocotb_runner import load_vectors

#: Clock period of the simulation (ns); only the cycle counts matter.
CLOCK_NS = 10
RESET_CYCLES = 4

# Register offsets (hw.core.registers.Reg; not imported: this module runs in the simulator's
# Python, which has no need for Amaranth).
REG = {"ID": 0x00, "CTRL": 0x08, "STATUS": 0x0C, "ERROR": 0x10, "ERROR_INDEX": 0x14,
       "PROG_BASE": 0x18, "PROG_LEN": 0x1C, "DRAM_BASE": 0x20, "DRAM_SIZE": 0x24,
       "CYCLES_LO": 0x28, "CYCLES_HI": 0x2C, "BUSY_0": 0x30}


def _pauses(seed: int, probability: float):
    rng = random.Random(seed)
    while True:
        yield rng.random() < probability


class TB:
    """Clock, reset, the AXI4 memory model on ``m_axi`` and the AXI4-Lite manager on
    ``s_axil``."""

    def __init__(self, dut, ram_size: int):
        from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam
        self.dut = dut
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi", bus_separator="__"), dut.clk, dut.rst,
                          size=ram_size)
        self.regs = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"),
                                  dut.clk, dut.rst)
        self.channels = [self.ram.write_if.aw_channel, self.ram.write_if.w_channel,
                         self.ram.write_if.b_channel, self.ram.read_if.ar_channel,
                         self.ram.read_if.r_channel]
        # Address ranges [lo, hi) the memory answers with SLVERR (the memory model answers
        # a beat with an error response when its access raises).
        self.bad_reads: list[tuple[int, int]] = []
        self.bad_writes: list[tuple[int, int]] = []
        self._poison(self.ram.read_if, "_read", lambda: self.bad_reads)
        self._poison(self.ram.write_if, "_write", lambda: self.bad_writes)

    @staticmethod
    def _poison(port, method: str, ranges) -> None:
        access = getattr(port, method)

        async def checked(address, arg):
            end = address + (arg if isinstance(arg, int) else len(arg))
            if any(address < hi and lo < end for lo, hi in ranges()):
                raise OSError(f"error response at {address:#x}")
            return await access(address, arg)
        setattr(port, method, checked)

    async def reset(self) -> None:
        Clock(self.dut.clk, CLOCK_NS, unit="ns").start()
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, RESET_CYCLES)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    def set_pauses(self, seed: int | None, probability: float) -> None:
        for k, channel in enumerate(self.channels):
            if seed is None:
                channel.clear_pause_generator()
                channel.pause = False
            else:
                channel.set_pause_generator(_pauses(seed * 10 + k, probability))

    async def write_reg(self, name: str, value: int) -> None:
        await self.regs.write_dword(REG[name], value & 0xFFFFFFFF)

    async def read_reg(self, name: str) -> int:
        return await self.regs.read_dword(REG[name])


async def _run(tb: TB, run: dict, log) -> dict:
    dut = tb.dut
    program = Path(run["program"]).read_bytes()
    dram = Path(run["dram"]).read_bytes()
    tb.set_pauses(None, 0.0)
    tb.ram.write(run["dram_base"], dram)
    tb.ram.write(run["prog_base"], program)
    tb.bad_reads = [(run["dram_base"] + lo, run["dram_base"] + hi) for lo, hi in run.get("bad_reads", [])]
    tb.bad_writes = [(run["dram_base"] + lo, run["dram_base"] + hi) for lo, hi in run.get("bad_writes", [])]
    await tb.write_reg("PROG_BASE", run["prog_base"])
    await tb.write_reg("PROG_LEN", len(program) // 32)
    await tb.write_reg("DRAM_BASE", run["dram_base"])
    await tb.write_reg("DRAM_SIZE", len(dram))
    await tb.write_reg("CTRL", 0b100)                  # clear a previous run's done
    if run.get("pause_seed") is not None:
        tb.set_pauses(run["pause_seed"], run.get("pause_probability", 0.3))
    t0 = time.perf_counter()
    await tb.write_reg("CTRL", 0b011)                  # start, interrupt enable
    limit = run["max_cycles"]
    done = RisingEdge(dut.irq)
    result = await First(done, ClockCycles(dut.clk, limit))
    wall = time.perf_counter() - t0
    timed_out = result is not done and not int(dut.irq.value)
    tb.set_pauses(None, 0.0)
    tb.bad_reads, tb.bad_writes = [], []
    out = {"timeout": bool(timed_out), "wall_s": wall}
    out["status"] = await tb.read_reg("STATUS")
    out["error"] = await tb.read_reg("ERROR")
    out["error_index"] = await tb.read_reg("ERROR_INDEX")
    out["cycles"] = (await tb.read_reg("CYCLES_HI")) << 32 | await tb.read_reg("CYCLES_LO")
    out["busy"] = [await tb.regs.read_dword(REG["BUSY_0"] + 4 * q) for q in range(run["queues"])]
    Path(run["dram_out"]).write_bytes(tb.ram.read(run["dram_base"], len(dram)))
    log.info("run %s: %s cycles, error %d at %d, %.2f s", run.get("name", ""), out["cycles"],
             out["error"], out["error_index"], wall)
    return out


@cocotb.test()
async def run_programs(dut):
    """Every run of the job, one after the other on the same core."""
    job = load_vectors()
    tb = TB(dut, job["ram_size"])
    await tb.reset()
    ident = await tb.read_reg("ID")
    assert ident == 0x4D544956, f"ID register reads {ident:#x}"
    results = []
    for run in job["runs"]:
        results.append(await _run(tb, run, dut._log))
        Path(job["results"]).write_text(json.dumps(results))
