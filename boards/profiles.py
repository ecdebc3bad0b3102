"""Board profiles: what each supported board offers the accelerator.

A :class:`BoardProfile` names the FPGA part, its resource budget (the device's published
counts), the clock the board provides, its external memory and the bandwidth the core can
realistically sustain from it, and the toolchain that builds it:

* ``"ecp5"``: the open flow (Yosys ``synth_ecp5`` + nextpnr-ecp5, :mod:`boards.build`),
  through the board's amaranth-boards platform; the clock is the one nextpnr achieves.
* ``"verilog"``: Verilog only (:mod:`boards.verilog`), for integration into a vendor SoC
  project (Vivado); the clock is an assumption stated in the profile, never timed here.

Sources of the numbers: docs/BOARDS.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BoardProfile", "BoardError", "PROFILES", "get_profile", "board_names"]


class BoardError(ValueError):
    """An unknown board or an invalid board profile."""


#: Resource kinds of a budget, by toolchain family.  ``lut``: logic LUTs (LUT4 on ECP5,
#: LUT6 on Xilinx); ``ff``: flip-flops; ``dsp``: multiplier blocks (MULT18X18D, DSP48E1/E2);
#: ``bram``: block RAMs (DP16KD of 18 Kbit, RAMB36 of 36 Kbit); ``uram``: UltraRAM (288 Kbit).
RESOURCES = ("lut", "ff", "dsp", "bram", "uram")


@dataclass(frozen=True)
class BoardProfile:
    """One board (see the module docstring).  Validated on construction."""

    #: Short name used on the command line (``vitamin build --board NAME``).
    name: str
    #: Human-readable board name.
    title: str
    #: FPGA family: ``"ecp5"``, ``"7series"`` or ``"ultrascale+"``.
    family: str
    #: The FPGA part number.
    part: str
    #: Resource budget: logic LUTs, flip-flops, multiplier blocks, block RAMs, UltraRAMs.
    luts: int
    ffs: int
    dsps: int
    brams: int
    urams: int
    #: Bits of one block RAM (18 Kbit DP16KD on ECP5, 36 Kbit RAMB36 on Xilinx).
    bram_kbits: int
    #: ``"ecp5"`` (open flow, placed and routed here) or ``"verilog"`` (Verilog only).
    toolchain: str
    #: Clock source on the board (oscillator) in MHz; the accelerator clock comes from a PLL.
    osc_mhz: float
    #: Accelerator clock in MHz assumed before any place-and-route (for the open flow this is
    #: replaced by the achieved Fmax after a build; for Verilog-only boards it is the stated
    #: clock, not timed here).
    clock_mhz: float
    #: External memory the core's AXI4 manager reaches, in words.
    memory: str
    #: Realistically sustained external-memory bandwidth for the core, in MB/s (10^6 bytes).
    dram_mbps: float
    #: Read latency of that memory path in accelerator cycles (request to first beat).
    dram_latency_cycles: int
    #: For the open flow: the amaranth-boards platform class and nextpnr's device arguments.
    platform: str = ""
    nextpnr_args: tuple[str, ...] = ()
    #: Speed grade used for timing (open flow).
    speed: str = ""
    #: Where the numbers come from (shown in docs/BOARDS.md).
    sources: tuple[str, ...] = field(default=(), compare=False)
    #: Integration notes (the SoC port to use, etc.).
    notes: str = ""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise BoardError(f"board profile {self.name!r}: {msg}")

        need(bool(self.name) and self.name == self.name.lower() and " " not in self.name,
             "name must be lower case without spaces")
        need(self.family in ("ecp5", "7series", "ultrascale+"), f"unknown family {self.family!r}")
        need(self.toolchain in ("ecp5", "verilog"), f"unknown toolchain {self.toolchain!r}")
        need(self.toolchain != "ecp5" or self.family == "ecp5", "the open flow builds ECP5 parts only")
        for name in ("luts", "ffs", "dsps", "brams", "urams"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                 f"{name} must be a non-negative integer, got {v!r}")
        need(self.luts > 0 and self.ffs > 0 and self.brams > 0, "luts, ffs and brams must be > 0")
        need(self.bram_kbits in (18, 36), f"bram_kbits must be 18 or 36, got {self.bram_kbits}")
        need(self.family != "ecp5" or (self.bram_kbits == 18 and self.urams == 0),
             "ECP5 block RAMs are 18 Kbit DP16KD and it has no UltraRAM")
        need(0 < self.osc_mhz <= 1000 and 1 <= self.clock_mhz <= 1000,
             "osc_mhz and clock_mhz must be positive and plausible (<= 1000)")
        need(self.dram_mbps > 0, "dram_mbps must be > 0")
        need(1 <= self.dram_latency_cycles <= 100_000, "dram_latency_cycles must be in 1..100000")
        if self.toolchain == "ecp5":
            need(bool(self.platform) and bool(self.nextpnr_args) and bool(self.speed),
                 "an open-flow board needs platform, nextpnr_args and speed")

    # ------------------------------------------------------------------ derived
    @property
    def open_flow(self) -> bool:
        """Placed and routed here (ECP5) rather than Verilog only."""
        return self.toolchain == "ecp5"

    @property
    def budget(self) -> dict[str, int]:
        """The resource budget by kind of :data:`RESOURCES`."""
        return {"lut": self.luts, "ff": self.ffs, "dsp": self.dsps, "bram": self.brams,
                "uram": self.urams}

    def bytes_per_cycle(self, clock_mhz: float, lanes: int) -> int:
        """Sustained DRAM bytes per accelerator cycle at ``clock_mhz`` for an ``lanes``-byte
        datapath: the bandwidth over the clock, rounded down to a power of two (the cycle
        model's and the RTL's granularity), at least 1 and at most ``lanes``."""
        per_cycle = self.dram_mbps / clock_mhz
        b = 1
        while b * 2 <= per_cycle and b * 2 <= lanes:
            b *= 2
        return b

    @property
    def dsp_pack(self) -> int:
        """The array's ``dsp_pack`` on this board: 2 on UltraScale+ (two int8 products per
        DSP48E2, whose 27 x 18 multiplier holds the 27-bit packed weight), 1 elsewhere (a
        DSP48E1's 25-bit port and an ECP5 MULT18X18D are too narrow for it)."""
        return 2 if self.family == "ultrascale+" else 1

    def config_overrides(self, clock_mhz: float, lanes: int) -> dict:
        """The config fields this board decides at ``clock_mhz`` for an ``lanes`` datapath."""
        b = self.bytes_per_cycle(clock_mhz, lanes)
        return {"clock_mhz": float(clock_mhz),
                "dram_bytes_per_cycle": 0 if b == lanes else b,
                "dram_latency_cycles": self.dram_latency_cycles}


_ECP5_85F = dict(family="ecp5", part="LFE5U-85F", luts=83_640, ffs=83_640, dsps=156, brams=208,
                 urams=0, bram_kbits=18, toolchain="ecp5")
_ECP5_SOURCES = ("Lattice ECP5 and ECP5-5G Family Data Sheet (FPGA-DS-02012), Table 1.1: "
                 "LFE5U-85: 84K LUTs (41,820 slices of 2 LUT4 + 2 FF), 208 EBR (18 Kbit, "
                 "3,744 Kbit), 156 18x18 multipliers",)

PROFILES: dict[str, BoardProfile] = {p.name: p for p in (
    BoardProfile(
        name="ulx3s-85f", title="Radiona ULX3S (LFE5U-85F)", **_ECP5_85F,
        osc_mhz=25.0, clock_mhz=50.0,
        memory="32 MB SDR SDRAM (IS42S16160 class), 16-bit",
        # 16 bits x 100 MHz = 200 MB/s peak; a simple controller with row misses, refresh and
        # bus turnaround sustains about 70 %.
        dram_mbps=140.0, dram_latency_cycles=32,
        platform="amaranth_boards.ulx3s:ULX3S_85F_Platform",
        nextpnr_args=("--85k", "--package", "CABGA381", "--speed", "6"), speed="6",
        sources=_ECP5_SOURCES + ("ULX3S schematic v3.1.7: 25 MHz oscillator, 32 MB SDRAM 16-bit",
                                 "amaranth-boards 0.0.21 ulx3s.py: package BG381, speed 6"),
        notes="SDRAM needs a controller with an AXI4 subordinate port (e.g. LiteDRAM) between "
              "the core's m_axi and the chip."),
    BoardProfile(
        name="orangecrab-85f", title="OrangeCrab r0.2 (LFE5U-85F)", **_ECP5_85F,
        osc_mhz=48.0, clock_mhz=48.0,
        memory="128-512 MB DDR3L (MT41K64M16 class), 16-bit",
        # DDR3L-800 on 16 bits: 1.6 GB/s peak; LiteDRAM's 1:4 ECP5 PHY sustains about half.
        dram_mbps=800.0, dram_latency_cycles=40,
        platform="amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_85FPlatform",
        nextpnr_args=("--85k", "--package", "CSFBGA285", "--speed", "8"), speed="8",
        sources=_ECP5_SOURCES + ("OrangeCrab r0.2 hardware docs: 48 MHz oscillator, DDR3L 16-bit",
                                 "amaranth-boards 0.0.21 orangecrab_r0_2.py: package MG285, speed 8"),
        notes="DDR3L needs LiteDRAM (or similar) with an AXI4 subordinate port."),
    BoardProfile(
        name="zcu102", title="AMD Zynq UltraScale+ MPSoC ZCU102", family="ultrascale+",
        part="XCZU9EG-2FFVB1156E", luts=274_080, ffs=548_160, dsps=2_520, brams=912, urams=0,
        bram_kbits=36, toolchain="verilog", osc_mhz=125.0, clock_mhz=200.0,
        memory="PS DDR4 (4 GB, 64-bit) through an S_AXI_HP port",
        # One 128-bit HP port at 200 MHz moves 3.2 GB/s; measured HP throughput is ~80 %.
        dram_mbps=2560.0, dram_latency_cycles=64,
        sources=("AMD DS891 Zynq UltraScale+ MPSoC Data Sheet Overview: ZU9EG 274,080 LUTs, "
                 "548,160 FFs, 2,520 DSP48E2, 912 BRAM36 (32.1 Mb), 0 URAM",
                 "UG1182 ZCU102 board user guide"),
        notes="Connect m_axi to S_AXI_HP0_FPD (128-bit; use an AXI width converter when N != 16) "
              "and s_axil to M_AXI_HPM0_LPD; irq to pl_ps_irq0."),
    BoardProfile(
        name="zcu104", title="AMD Zynq UltraScale+ MPSoC ZCU104", family="ultrascale+",
        part="XCZU7EV-2FFVC1156E", luts=230_400, ffs=460_800, dsps=1_728, brams=312, urams=96,
        bram_kbits=36, toolchain="verilog", osc_mhz=125.0, clock_mhz=200.0,
        memory="PS DDR4 (2 GB, 64-bit) through an S_AXI_HP port",
        dram_mbps=2560.0, dram_latency_cycles=64,
        sources=("AMD DS891: ZU7EV 230,400 LUTs, 460,800 FFs, 1,728 DSP48E2, 312 BRAM36 (11 Mb), "
                 "96 URAM (27 Mb)", "UG1267 ZCU104 board user guide"),
        notes="As ZCU102: m_axi -> S_AXI_HP0_FPD, s_axil <- M_AXI_HPM0_LPD."),
    BoardProfile(
        name="kv260", title="AMD Kria KV260 Vision AI Starter Kit", family="ultrascale+",
        part="XCK26-SFVC784-2LV-C", luts=117_120, ffs=234_240, dsps=1_248, brams=144, urams=64,
        bram_kbits=36, toolchain="verilog", osc_mhz=100.0, clock_mhz=200.0,
        memory="PS DDR4 (4 GB, 64-bit) through an S_AXI_HP port",
        dram_mbps=2560.0, dram_latency_cycles=64,
        sources=("AMD DS987 Kria K26 SOM data sheet: 256K system logic cells, 117,120 LUTs, "
                 "234,240 FFs, 1,248 DSP, 144 BRAM36 (5.1 Mb), 64 URAM (18 Mb)",),
        notes="m_axi -> S_AXI_HP0_FPD (128-bit), s_axil <- M_AXI_HPM0_LPD (PL clock pl_clk0)."),
    BoardProfile(
        name="pynq-z2", title="TUL PYNQ-Z2 (Zynq-7020)", family="7series",
        part="XC7Z020-1CLG400C", luts=53_200, ffs=106_400, dsps=220, brams=140, urams=0,
        bram_kbits=36, toolchain="verilog", osc_mhz=125.0, clock_mhz=100.0,
        memory="PS DDR3 (512 MB, 32-bit) through an S_AXI_HP port",
        # A 64-bit HP port at 100 MHz: 800 MB/s peak, ~75 % sustained.
        dram_mbps=600.0, dram_latency_cycles=48,
        sources=("AMD DS190 Zynq-7000 SoC overview: Z-7020 53,200 LUTs, 106,400 FFs, 220 DSP48E1, "
                 "140 BRAM36 (4.9 Mb)",),
        notes="m_axi -> S_AXI_HP0 (64-bit: an AXI width converter when N != 8), "
              "s_axil <- M_AXI_GP0, irq -> IRQ_F2P[0]."),
    BoardProfile(
        name="arty-a7-100t", title="Digilent Arty A7-100T", family="7series",
        part="XC7A100T-1CSG324C", luts=63_400, ffs=126_800, dsps=240, brams=135, urams=0,
        bram_kbits=36, toolchain="verilog", osc_mhz=100.0, clock_mhz=100.0,
        memory="256 MB DDR3L (16-bit) through the MIG's AXI4 port",
        # DDR3L-667 on 16 bits: 1.33 GB/s peak; the MIG sustains about 60 %.
        dram_mbps=800.0, dram_latency_cycles=48,
        sources=("AMD DS180 7 Series FPGAs overview: XC7A100T 63,400 LUTs, 126,800 FFs, 240 "
                 "DSP48E1, 135 BRAM36 (4,860 Kb)", "Digilent Arty A7 reference manual"),
        notes="No hard processor: a MicroBlaze (or any AXI4-Lite manager) programs s_axil; "
              "m_axi goes to the MIG's AXI4 port through an interconnect."),
)}


def board_names() -> list[str]:
    return list(PROFILES)


def get_profile(name: str) -> BoardProfile:
    """The profile called ``name`` (case-insensitive); :class:`BoardError` naming the known
    boards otherwise."""
    key = name.lower()
    if key not in PROFILES:
        raise BoardError(f"unknown board {name!r} (known: {', '.join(PROFILES)})")
    return PROFILES[key]
