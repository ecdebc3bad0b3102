"""A resource model of the core (:class:`hw.core.core.Core`) as a function of its config.

Four kinds, as a board budgets them (:mod:`boards.profiles`): logic LUTs, flip-flops,
multiplier blocks and block RAMs (and UltraRAMs on the Xilinx parts that have them).

* **Block RAMs** come from the geometry of every memory the core builds: the regions of
  ``config.regions`` (:func:`hw.core.memories.geometry`), the sequencer's instruction memory
  and the two tile engines' accumulation buffers, each mapped the way Yosys maps it onto the
  part's block RAM (the cheapest of its width x depth shapes, 8 data bits in every 9 when
  writes are byte-wide), plus the units' own buffers and tables (calibrated).
* **Multipliers**: one per processing element of the array whose column is not mapped to
  LUT multipliers (``lut_mult_cols``), plus the vector units' (calibrated: a + b N, the
  LayerNorm's and softmax's share of ``b`` counted per lane of theirs, ``norm_lanes``).  With
  ``dsp_pack = 2`` a packed pair of columns takes one DSP48E2 per PE row on UltraScale+
  (:func:`products_per_dsp`); elsewhere its 27 x 9-bit product takes two blocks.
* **LUTs and flip-flops**: calibrated ``a + b N + c N^2`` per kind, ``c`` being the cost of one
  processing element, plus the LUT multipliers' logic; the LayerNorm's and softmax's share
  of ``b`` (:data:`NORM_LANE`) scales with their own lanes ``L`` (``norm_lanes``) instead
  of ``N``.

The calibration constants come from Yosys ``synth_ecp5`` runs listed at :data:`CALIBRATION`
(docs/BOARDS.md reports the model's error against synthesis of other configs).  For the
Xilinx parts the same logic estimate is scaled to LUT6 (:data:`LUT6_PER_LUT4`); it is an
estimate for fitting, not a synthesis result.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from hw.config import AcceleratorConfig
from hw.core.memories import geometry

__all__ = ["Resources", "MemoryShape", "estimate", "core_memories", "bram_blocks",
           "uram_blocks", "products_per_dsp", "macs_per_dsp", "CALIBRATION", "NORM_LANE",
           "LUT6_PER_LUT4"]


@dataclass(frozen=True)
class MemoryShape:
    """One memory: ``depth`` rows of ``width`` bits, written ``granularity`` bits at a time."""
    name: str
    depth: int
    width: int
    granularity: int


@dataclass(frozen=True)
class Resources:
    """Resources of one build (estimated or measured)."""
    lut: int
    ff: int
    dsp: int
    bram: int
    uram: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"lut": self.lut, "ff": self.ff, "dsp": self.dsp, "bram": self.bram,
                "uram": self.uram}

    def overflow(self, budget: dict[str, int]) -> list[tuple[str, int, int]]:
        """``(kind, need, have)`` for every kind over ``budget``, worst (by ratio) first."""
        out = [(k, v, budget.get(k, 0)) for k, v in self.as_dict().items() if v > budget.get(k, 0)]
        return sorted(out, key=lambda t: -(t[1] / max(t[2], 1)))


#: Per-kind calibration of the logic and the units (ECP5, Yosys 0.69 ``synth_ecp5`` with the
#: classic ABC, :func:`boards.build.synth_script`).  ``lut`` counts logic cells as nextpnr
#: does (TRELLIS_COMB: LUT4 + 2 per CCU2C carry cell), ``kind -> (a, b, c)`` meaning
#: ``a + b N + c N^2``; ``dsp_units`` and ``bram_units`` are ``(a, b)`` for ``a + b N``;
#: ``lut_mult`` the extra logic cells of one processing element on a shift-and-add multiplier.
#: Sources (docs/BOARDS.md, "Resource model"):
#:
#: * ``c``: the systolic array alone at N = 16 (docs/HARDWARE.md): 44,549 LUT4 + 2 x 3,296
#:   CCU2C and 18,792 FF over 256 processing elements;
#: * ``b``: the vector units at N = 16 (the same table, array excluded) over 16 lanes;
#: * ``a``: the whole core at N = 4 (preset ``tiny``): 19,590 LUT4, 4,861 CCU2C,
#:   96 MULT18X18D, 103 DP16KD, minus the ``b`` and ``c`` terms;
#: * ``ff``: refitted after the Fmax pipelining on two whole cores, packed by nextpnr: the
#:   ULX3S fit at N = 4 (256 / 32 / 8 KiB) 17,050 and the N = 8 fit (7 LUT columns) 31,018
#:   flip-flops, with ``c`` = 90 per processing element (weights, operand, product and
#:   partial-sum registers); exact at those two points, so not checked by them;
#: * ``dsp_units``: 74 multipliers outside the array at N = 4 (the core) and 264 at N = 16 (the
#:   units), after the softmax's reciprocal product was narrowed to 27 bits; ``bram_units``: 35 DP16KD outside the modelled memories at N = 4 and 106 at N = 16;
#: * ``lut_mult``: one processing element synthesized both ways: 321 vs 28 logic cells.
#: * ``pack_lut``, ``pack_ff``: the extra logic and flip-flops of one packed pair of PEs
#:   (``dsp_pack = 2``): the 8 x 8 array synthesized both ways with ``synth_xilinx -family
#:   xcup`` (``benchmarks/synth_dsp_pack.py``): 2,353 vs 1,777 LUTs (18 LUT6 per pair, in
#:   LUT4 here: / :data:`LUT6_PER_LUT4`) and 6,025 vs 5,181 flip-flops (26 per pair).
CALIBRATION = {
    "lut": (11_700.0, 3_600.0, 200.0),
    "ff": (5_962.0, 2_412.0, 90.0),
    "dsp_units": (10.67, 15.83),
    "bram_units": (11.3, 5.92),
    "lut_mult": 293.0,
    "lut_mult_ff": 0.0,
    "pack_lut": 29.0,
    "pack_ff": 26.0,
}

#: The LayerNorm's and the softmax's resources per lane of theirs, the part of the ``b`` terms
#: of :data:`CALIBRATION` that follows ``L = norm_unit_lanes`` instead of ``N``: the two units
#: synthesized alone (``synth_ecp5``) at 4 and 8 lanes, LayerNorm + softmax: 8,805 and 15,169
#: logic cells, 6,218 and 10,209 flip-flops, 56 and 104 MULT18X18D (LayerNorm 8 + 5 L,
#: softmax 7 L), 16 and 28 DP16KD.  The lane adapters in front of them are not counted
#: (a few hundred flip-flops at N = 8; docs/BOARDS.md has the model against synthesis).
NORM_LANE = {"lut": 1591.0, "ff": 998.0, "dsp": 12.0, "bram": 3.0}

#: Xilinx LUT6 per ECP5 LUT4 of the same logic (a LUT6 absorbs about 1.6 LUT4 of this
#: kind of datapath; an estimate, not calibrated against Vivado).
LUT6_PER_LUT4 = 0.62

#: Block RAM shapes (data width, depth) per family.  ECP5 DP16KD: 18 Kbit; Xilinx RAMB36:
#: 36 Kbit (72-bit wide in simple dual-port mode).
_BRAM_SHAPES = {
    18: ((36, 512), (18, 1024), (9, 2048), (4, 4096), (2, 8192), (1, 16384)),
    36: ((72, 512), (36, 1024), (18, 2048), (9, 4096), (4, 8192), (2, 16384), (1, 32768)),
}
#: Memories below this many bits go to distributed (LUT) RAM or registers.
_LUTRAM_BITS = 2048


def _data_bits(width: int) -> int:
    """Usable data bits of a block RAM port ``width`` bits wide: 8 of every 9 above 8."""
    return width if width < 9 else 8 * (width // 9)


def bram_blocks(mem: MemoryShape, kbits: int = 18) -> int:
    """Block RAMs (DP16KD for ``kbits=18``, RAMB36 for 36) Yosys uses for ``mem``: the
    cheapest shape, whole blocks across the width and down the depth (0 when small enough
    for distributed RAM)."""
    if mem.depth * mem.width < _LUTRAM_BITS:
        return 0
    return min(math.ceil(mem.width / _data_bits(w)) * math.ceil(mem.depth / d)
               for w, d in _BRAM_SHAPES[kbits])


def uram_blocks(mem: MemoryShape) -> int:
    """UltraRAMs (URAM288: 4096 x 72, byte-writable 8 + 1 bits) for ``mem``."""
    return math.ceil(mem.width / 64) * math.ceil(mem.depth / 4096)


def core_memories(config: AcceleratorConfig) -> list[MemoryShape]:
    """Every memory of the core whose size the config decides (the units' own are
    calibrated apart): the regions, the instruction memory, the two accumulation buffers."""
    out = []
    for name in config.regions:
        g = geometry(config, name)
        out.append(MemoryShape(name, g.depth, g.width, g.granularity))
    n = config.lanes
    row_bytes = max(32, n)                       # hw.core.sequencer: INSTR_BYTES = 32
    out.append(MemoryShape("imem", max(config.instr_buffer // (row_bytes // 32), 2),
                           8 * row_bytes, 8 * row_bytes))
    for kind in ("matrix", "attn"):
        out.append(MemoryShape(f"buffer_{kind}", config.max_tile_rows, 32 * n, 32 * n))
    return out


def products_per_dsp(config: AcceleratorConfig, family: str) -> int:
    """Array products one multiplier block computes per cycle: 2 for ``dsp_pack = 2`` on
    UltraScale+ (the 27-bit packed weight fits a DSP48E2's 27 x 18 multiplier), else 1 (a
    DSP48E1 is 25 x 18 and a MULT18X18D 18 x 18: the packed product would take two)."""
    return config.dsp_pack if family == "ultrascale+" else 1


def macs_per_dsp(config: AcceleratorConfig, resources: Resources) -> float:
    """The whole core's array MACs per multiplier block per cycle (the vector units'
    multipliers count in the blocks)."""
    return config.macs_per_cycle / max(resources.dsp, 1)


def estimate(config: AcceleratorConfig, family: str = "ecp5", bram_kbits: int = 18,
             urams: int = 0) -> Resources:
    """The model's resources for ``config`` on a part of ``family`` (``"ecp5"``,
    ``"7series"``, ``"ultrascale+"``) with ``bram_kbits`` block RAMs and ``urams``
    UltraRAMs available for the largest memories."""
    n = config.lanes
    narrowed = config.norm_unit_lanes - n      # LayerNorm and softmax lanes less than N
    lut_pes = n * config.lut_mult_cols
    dsp_pes = n * n - lut_pes
    pairs = dsp_pes // 2 if config.dsp_pack == 2 else 0
    a, b, c = CALIBRATION["lut"]
    lut = (a + b * n + c * n * n + CALIBRATION["lut_mult"] * lut_pes
           + CALIBRATION["pack_lut"] * pairs + NORM_LANE["lut"] * narrowed)
    a, b, c = CALIBRATION["ff"]
    ff = (a + b * n + c * n * n + CALIBRATION["lut_mult_ff"] * lut_pes
          + CALIBRATION["pack_ff"] * pairs + NORM_LANE["ff"] * narrowed)
    a, b = CALIBRATION["dsp_units"]
    dsp = (dsp_pes // products_per_dsp(config, family)
           + round(a + b * n + NORM_LANE["dsp"] * narrowed))
    mems = core_memories(config)
    uram = 0
    bram = 0
    # The largest memories go to UltraRAM while it lasts (and saves block RAM).
    for mem in sorted(mems, key=lambda m: -m.depth * m.width):
        u = uram_blocks(mem)
        if mem.depth >= 1024 and uram + u <= urams:
            uram += u
        else:
            bram += bram_blocks(mem, bram_kbits)
    a, b = CALIBRATION["bram_units"]
    units = a + b * n + NORM_LANE["bram"] * narrowed
    if bram_kbits == 36:
        units /= 2
    bram += math.ceil(units)
    if family != "ecp5":
        lut *= LUT6_PER_LUT4
    return Resources(lut=round(lut), ff=round(ff), dsp=dsp, bram=bram, uram=uram)
