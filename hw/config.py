"""The one hardware configuration object.

The compiler, the cycle model, the RTL generators and the tests all read an
:class:`AcceleratorConfig`; nothing else holds a hardware parameter.  It is frozen and
validated on construction, so a config that exists is a config that can be built.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """An accelerator configuration is invalid."""


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


#: Scratchpad regions in address order, each a memory of its own with one writer and one
#: reader (docs/ACCELERATOR.md), and its share of ``scratchpad_kib`` in 32nds.
SPAD_REGIONS: dict[str, tuple[int, str]] = {
    "act": (9, "streaming operands from DRAM (activations, q): LOAD -> MATRIX"),
    "weight": (6, "stationary operands from DRAM (weights, k, v of the 8-bit softmax): LOAD -> MATRIX"),
    "prob": (2, "8-bit softmax probabilities: VECTOR -> MATRIX"),
    "codes": (2, "Log-Int-Softmax codes: VECTOR -> ATTN"),
    "value": (2, "v of the Log-Int-Softmax attention: LOAD -> ATTN"),
    "vin": (4, "vector-unit inputs and GELU tables: LOAD -> VECTOR"),
    "vin2": (2, "second inputs of the residual add: LOAD -> VECTOR"),
    "out": (4, "vector-unit results: VECTOR -> STORE"),
    "copy": (1, "rows copied through the chip: LOAD -> STORE"),
}
#: Accumulator-memory regions in address order and their share of ``accumulator_kib`` in 4ths.
ACC_REGIONS: dict[str, tuple[int, str]] = {
    "acc": (3, "matrix products: MATRIX -> VECTOR"),
    "attn_acc": (1, "Log-Int-Softmax attention x v: ATTN -> VECTOR"),
}


@dataclass(frozen=True)
class Region:
    """One on-chip memory: ``size`` elements from ``base`` of its address space
    (``"spad"``: bytes, ``"acc"`` / ``"param"``: 32-bit words)."""
    name: str
    space: str
    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size


@dataclass(frozen=True)
class AcceleratorConfig:
    """Every hardware parameter of the accelerator.

    Sizes are in elements or bytes as named; cycles are clock cycles of ``clock_mhz``.  The
    datapath is ``N = array_rows = array_cols = vector_lanes`` lanes wide everywhere: a
    scratchpad word, an AXI data beat and a vector-unit beat are ``N`` bytes, an accumulator
    row is ``N`` int32 words.
    """

    #: Rows of the systolic MatMul array (processing elements along the reduction axis, as
    #: documented in :mod:`hw.systolic_array`).  A power of two, 2..64, equal to array_cols
    #: and vector_lanes.
    array_rows: int = 16
    #: Columns of the systolic MatMul array (output channels computed in parallel).
    array_cols: int = 16
    #: Lanes of the vector units (LayerNorm, softmax, GELU, residual add, requantizer):
    #: elements each unit accepts per cycle.
    vector_lanes: int = 16
    #: Lanes of the LayerNorm and softmax units, the two with the most multipliers per lane
    #: (on ECP5 five and seven MULT18X18D a lane): 0 for ``N``, or a power of two in 2..N/2.  With
    #: ``L < N`` those two units are built ``L`` lanes wide behind a lane adapter
    #: (:class:`hw.lane_adapter.LaneAdapter`) that passes each ``N``-element beat in
    #: ``N / L`` parts: the results are identical, the rows take longer
    #: (:func:`hw.core.vector_engine.vector_timing`), and the multipliers, logic and
    #: buffers of those units shrink by ``N / L``.
    norm_lanes: int = 0
    #: Multiplier mapping: how many of the array's columns (the last ones) compute their
    #: 9 x 8-bit products with an explicit shift-and-add multiplier in logic (LUTs and carry
    #: chains) instead of an inferred ``*`` that synthesis maps to DSP blocks.  Results are
    #: identical; only the resources differ (on ECP5 every product otherwise takes a whole
    #: MULT18X18D).  0..array_cols.
    lut_mult_cols: int = 0
    #: Products per DSP block in the array: 1, or 2 to pack two neighbouring columns' int8
    #: products into one multiplier (``a * ((w1 << 18) + w2)``, a 27 x 9-bit product that
    #: fits one Xilinx DSP48E2; :class:`hw.processing_element.PackedPair`).  Results,
    #: latency and throughput are identical; with 2, ``array_cols`` and ``lut_mult_cols``
    #: are even, so the LUT-multiplier columns are whole pairs (unpacked, two multipliers
    #: in logic each).
    dsp_pack: int = 1
    #: Operand width of weights (int8).  The integer reference fixes it at 8.
    weight_bits: int = 8
    #: Operand width of activations (int8, zero point folded into the bias).  Fixed at 8.
    act_bits: int = 8
    #: Accumulator width of the array and of the accumulator memory.  Fixed at 32.
    acc_bits: int = 32
    #: Capacity of the on-chip int8 scratchpad, in KiB, split into the regions of
    #: :data:`SPAD_REGIONS` (each a separate memory).
    scratchpad_kib: int = 512
    #: Scratchpad shares chosen per model: ``"name=share,..."`` (32nds of
    #: ``scratchpad_kib``) replacing the shares of :data:`SPAD_REGIONS` for the regions
    #: named; the shares in all at most 32.  Empty: the default shares.
    spad_shares: str = ""
    #: Capacity of the on-chip int32 accumulator memories, in KiB (:data:`ACC_REGIONS`).
    accumulator_kib: int = 128
    #: Capacity of the parameter-record memory (requantizer, LayerNorm and residual-add
    #: records, four int32 words each), in KiB.
    param_kib: int = 16
    #: Most streaming rows of one MATMUL / ATTNV (the depth of each tile engine's
    #: accumulation buffer).  >= 1.
    max_tile_rows: int = 256
    #: Longest softmax row the softmax unit buffers (tokens, padding included). >= 8.
    max_seq_len: int = 256
    #: Most channels the LayerNorm unit buffers for one row. >= 8.
    max_channels: int = 1024
    #: Entries of each GELU lookup table (indexed by the int8 input: 256).
    gelu_lut_depth: int = 256
    #: Sustained DRAM bandwidth in bytes per cycle: a power of two up to the ``N``-byte AXI
    #: data width (a beat every ``N / dram_bytes_per_cycle`` cycles), or 0 for the full
    #: width (one beat per cycle, as in co-simulation).
    dram_bytes_per_cycle: int = 0
    #: Cycles from a DRAM read request (its AR handshake) to its first data beat.
    dram_latency_cycles: int = 64
    #: Cycles from a DRAM write burst's last data beat (W handshake) to its response.
    dram_write_latency_cycles: int = 16
    #: Instructions the on-chip instruction memory holds: the program is fetched in segments
    #: of this many (docs/ACCELERATOR.md).  A power of two, 16..65536.
    instr_buffer: int = 512
    #: Target clock frequency in MHz (for latency in seconds and frames per second).
    clock_mhz: float = 100.0

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in STRING_FIELDS:
                need(isinstance(v, str), f"{f.name} must be a string, got {v!r}")
                continue
            want = float if f.type in ("float", float) else int
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not isinstance(v, int)):
                raise ConfigError(f"{f.name} must be {'a number' if want is float else 'an integer'}, got {v!r}")
        need(_pow2(self.array_rows) and 2 <= self.array_rows <= 64,
             f"array_rows must be a power of two in 2..64, got {self.array_rows}")
        need(self.array_cols == self.array_rows and self.vector_lanes == self.array_rows,
             "array_rows, array_cols and vector_lanes must be equal (the datapath is one width), "
             f"got {self.array_rows}/{self.array_cols}/{self.vector_lanes}")
        need(self.norm_lanes == 0 or (_pow2(self.norm_lanes) and 2 <= self.norm_lanes < self.array_rows),
             f"norm_lanes must be 0 (the datapath width) or a power of two in 2..{self.array_rows // 2} "
             f"(half the datapath or less), got {self.norm_lanes}")
        need((self.weight_bits, self.act_bits, self.acc_bits) == (8, 8, 32),
             "weight_bits/act_bits/acc_bits must be 8/8/32 (the integer reference's widths), "
             f"got {self.weight_bits}/{self.act_bits}/{self.acc_bits}")
        need(0 <= self.lut_mult_cols <= self.array_cols,
             f"lut_mult_cols must be in 0..array_cols ({self.array_cols}), got {self.lut_mult_cols}")
        need(self.dsp_pack in (1, 2) and (self.dsp_pack == 1 or self.lut_mult_cols % 2 == 0),
             f"dsp_pack must be 1 or 2, and with 2 lut_mult_cols even (whole column pairs), "
             f"got dsp_pack={self.dsp_pack}, lut_mult_cols={self.lut_mult_cols}")
        shares = _parse_shares(self.spad_shares)
        need(sum(v[0] for v in shares.values()) <= 32,
             f"spad_shares: the shares add up to {sum(v[0] for v in shares.values())} 32nds, more than 32")
        need(self.scratchpad_kib >= 1, f"scratchpad_kib must be >= 1, got {self.scratchpad_kib}")
        need(self.accumulator_kib >= 1, f"accumulator_kib must be >= 1, got {self.accumulator_kib}")
        need(self.param_kib >= 1, f"param_kib must be >= 1, got {self.param_kib}")
        need(1 <= self.max_tile_rows <= 4096, f"max_tile_rows must be in 1..4096, got {self.max_tile_rows}")
        need(self.max_seq_len >= 8, f"max_seq_len must be >= 8, got {self.max_seq_len}")
        need(self.max_channels >= 8, f"max_channels must be >= 8, got {self.max_channels}")
        need(self.gelu_lut_depth == 256, f"gelu_lut_depth must be 256 (int8 index), got {self.gelu_lut_depth}")
        need(self.dram_bytes_per_cycle == 0 or
             (_pow2(self.dram_bytes_per_cycle) and self.dram_bytes_per_cycle <= self.lanes),
             f"dram_bytes_per_cycle must be 0 (the full width) or a power of two in "
             f"1..{self.lanes} (the AXI data width), got {self.dram_bytes_per_cycle}")
        need(1 <= self.dram_latency_cycles <= 100_000,
             f"dram_latency_cycles must be in 1..100000, got {self.dram_latency_cycles}")
        need(1 <= self.dram_write_latency_cycles <= 100_000,
             f"dram_write_latency_cycles must be in 1..100000, got {self.dram_write_latency_cycles}")
        need(_pow2(self.instr_buffer) and 16 <= self.instr_buffer <= 65536,
             f"instr_buffer must be a power of two in 16..65536, got {self.instr_buffer}")
        need(1.0 <= self.clock_mhz <= 2000.0, f"clock_mhz must be in 1..2000, got {self.clock_mhz}")
        for region in self.regions.values():
            need(region.size >= self.lanes,
                 f"the {region.name} region would get {region.size} "
                 f"{'bytes' if region.space == 'spad' else 'words'}, less than one row of "
                 f"{self.lanes}: raise {'scratchpad_kib' if region.space == 'spad' else 'accumulator_kib'}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def lanes(self) -> int:
        """``N``: the datapath width (array rows = columns = vector lanes)."""
        return self.array_rows

    @property
    def norm_unit_lanes(self) -> int:
        """``L``: lanes of the LayerNorm and softmax units (``norm_lanes``, 0 meaning ``N``)."""
        return self.norm_lanes or self.lanes

    @property
    def dram_bytes(self) -> int:
        """Sustained DRAM bytes per cycle (``dram_bytes_per_cycle``, 0 meaning ``N``)."""
        return self.dram_bytes_per_cycle or self.lanes

    @property
    def macs_per_cycle(self) -> int:
        """Peak multiply-accumulates per cycle of the array."""
        return self.array_rows * self.array_cols

    @property
    def scratchpad_bytes(self) -> int:
        return self.scratchpad_kib * 1024

    @property
    def accumulator_words(self) -> int:
        """Number of 32-bit words the accumulator memories hold."""
        return self.accumulator_kib * 1024 // 4

    @property
    def param_words(self) -> int:
        """Number of 32-bit words the parameter-record memory holds."""
        return self.param_kib * 1024 // 4

    @functools.cached_property
    def regions(self) -> dict[str, Region]:
        """Every on-chip memory by name: the scratchpad regions (bytes), the accumulator
        regions (words) and ``param`` (words), each a whole number of ``N``-element rows."""
        return _regions(self)

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AcceleratorConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "AcceleratorConfig":
        """A copy with some fields changed (validated again)."""
        return self.from_dict({**self.to_dict(), **changes})


#: Config fields that are strings.
STRING_FIELDS = ("spad_shares",)


def _parse_shares(text: str) -> dict[str, tuple[int, str]]:
    """:data:`SPAD_REGIONS` with the shares of ``spad_shares`` (``"name=share,..."``)."""
    shares = dict(SPAD_REGIONS)
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in SPAD_REGIONS or not value.strip().isdigit():
            raise ConfigError(f"spad_shares: bad item {item!r} (expected REGION=SHARE with a region "
                              f"of {', '.join(SPAD_REGIONS)} and a share in 32nds)")
        shares[name] = (int(value), SPAD_REGIONS[name][1])
    return shares


def format_shares(shares: dict[str, int]) -> str:
    """``spad_shares`` text of the shares that differ from :data:`SPAD_REGIONS`."""
    return ",".join(f"{k}={v}" for k, v in shares.items() if v != SPAD_REGIONS[k][0])


def _split(total: int, shares: dict[str, tuple[int, str]], parts: int, row: int, space: str,
           base: int = 0) -> list[Region]:
    out = []
    for name, (share, _) in shares.items():
        size = total * share // parts // row * row
        out.append(Region(name, space, base, size))
        base += size
    return out


def _regions(cfg: AcceleratorConfig) -> dict[str, Region]:
    n = cfg.lanes
    spad = _split(cfg.scratchpad_bytes, _parse_shares(cfg.spad_shares), 32, n, "spad")
    acc = _split(cfg.accumulator_words, ACC_REGIONS, 4, n, "acc")
    param = [Region("param", "param", 0, cfg.param_words)]
    return {r.name: r for r in spad + acc + param}


#: Named configurations.
PRESETS: dict[str, AcceleratorConfig] = {
    "default": AcceleratorConfig(),
    "small": AcceleratorConfig(array_rows=8, array_cols=8, vector_lanes=8,
                               scratchpad_kib=256, accumulator_kib=64),
    "tiny": AcceleratorConfig(array_rows=4, array_cols=4, vector_lanes=4,
                              scratchpad_kib=64, accumulator_kib=16),
}


#: The fields that are all the datapath width ``N``.
WIDTH_FIELDS = ("array_rows", "array_cols", "vector_lanes")


def load_config(spec: str | None = None, **overrides) -> AcceleratorConfig:
    """A config from a preset name or a JSON file path (``None``: the default), then overrides.

    ``overrides`` are field values (e.g. from ``--set array_rows=8`` on the command line).
    The datapath is one width: overriding any of ``array_rows``, ``array_cols`` and
    ``vector_lanes`` (with one value) sets all three.
    """
    if spec is None or spec in PRESETS:
        base = PRESETS[spec or "default"].to_dict()
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
        try:
            base = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"{spec}: not valid JSON ({exc})") from None
        if not isinstance(base, dict):
            raise ConfigError(f"{spec}: a config file holds one JSON object")
        base = {**PRESETS["default"].to_dict(), **_one_width(base, spec)}
    return AcceleratorConfig.from_dict({**base, **_one_width(overrides, "the overrides")})


def _one_width(values: dict, where: str) -> dict:
    """``values`` with every width field set when any is (they must agree)."""
    given = {k: values[k] for k in WIDTH_FIELDS if k in values}
    if len(set(given.values())) > 1:
        raise ConfigError(f"array_rows, array_cols and vector_lanes must be equal (the datapath "
                          f"is one width); {where} set "
                          f"{', '.join(f'{k}={v}' for k, v in given.items())}")
    if given:
        width = next(iter(given.values()))
        values = {**values, **{k: width for k in WIDTH_FIELDS}}
    return values


def parse_overrides(items: list[str]) -> dict:
    """``["array_rows=8", "clock_mhz=150"]`` -> typed field values."""
    types = {f.name: f.type for f in dataclasses.fields(AcceleratorConfig)}
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"bad config override {item!r} (expected FIELD=VALUE with a known field)")
        try:
            if key in STRING_FIELDS:
                out[key] = val
            else:
                out[key] = float(val) if types[key] in ("float", float) else int(val)
        except ValueError:
            raise ConfigError(f"bad value in {item!r}") from None
    return out
