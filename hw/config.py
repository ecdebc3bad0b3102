"""The one hardware configuration object.

The compiler, the cycle model, the RTL generators and the tests all read an
:class:`AcceleratorConfig`; nothing else holds a hardware parameter.  It is frozen and
validated on construction, so a config that exists is a config that can be built.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path


class ConfigError(ValueError):
    """An accelerator configuration is invalid."""


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


@dataclass(frozen=True)
class AcceleratorConfig:
    """Every hardware parameter of the accelerator.

    Sizes are in elements or bytes as named; cycles are clock cycles of ``clock_mhz``.
    """

    #: Rows of the systolic MatMul array (processing elements along the reduction / token axis
    #: as documented in :mod:`hw.systolic_array`). 2..64.
    array_rows: int = 16
    #: Columns of the systolic MatMul array (output channels computed in parallel). 2..64.
    array_cols: int = 16
    #: Lanes of the vector units (LayerNorm, softmax, GELU, residual add, requantizer):
    #: elements each unit accepts per cycle.  A power of two, 1..64.
    vector_lanes: int = 16
    #: Operand width of weights (int8).  The integer reference fixes it at 8.
    weight_bits: int = 8
    #: Operand width of activations (int8, zero point folded into the bias).  Fixed at 8.
    act_bits: int = 8
    #: Accumulator width of the array and of the accumulator memory.  Fixed at 32.
    acc_bits: int = 32
    #: Capacity of the on-chip int8 scratchpad (activations and weight tiles), in KiB.
    scratchpad_kib: int = 512
    #: Capacity of the on-chip int32 accumulator memory, in KiB.
    accumulator_kib: int = 128
    #: Longest softmax row the softmax unit buffers (tokens, padding included). >= 8.
    max_seq_len: int = 256
    #: Most channels the LayerNorm unit buffers for one row. >= 8.
    max_channels: int = 1024
    #: Entries of each GELU lookup table (indexed by the int8 input: 256).
    gelu_lut_depth: int = 256
    #: Width of the DMA engine's data path, in bytes per cycle.  A power of two, 1..128.
    dma_bytes_per_cycle: int = 16
    #: Sustained DRAM bandwidth seen by the DMA, in bytes per cycle (<= the DMA width).
    dram_bytes_per_cycle: int = 16
    #: Cycles from a DRAM request to its first data beat.
    dram_latency_cycles: int = 64
    #: Target clock frequency in MHz (for latency in seconds and frames per second).
    clock_mhz: float = 100.0

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            want = float if f.type in ("float", float) else int
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (want is int and not isinstance(v, int)):
                raise ConfigError(f"{f.name} must be {'a number' if want is float else 'an integer'}, got {v!r}")
        need(2 <= self.array_rows <= 64, f"array_rows must be in 2..64, got {self.array_rows}")
        need(2 <= self.array_cols <= 64, f"array_cols must be in 2..64, got {self.array_cols}")
        need(_pow2(self.vector_lanes) and self.vector_lanes <= 64,
             f"vector_lanes must be a power of two in 1..64, got {self.vector_lanes}")
        need((self.weight_bits, self.act_bits, self.acc_bits) == (8, 8, 32),
             "weight_bits/act_bits/acc_bits must be 8/8/32 (the integer reference's widths), "
             f"got {self.weight_bits}/{self.act_bits}/{self.acc_bits}")
        need(self.scratchpad_kib >= 1, f"scratchpad_kib must be >= 1, got {self.scratchpad_kib}")
        need(self.accumulator_kib >= 1, f"accumulator_kib must be >= 1, got {self.accumulator_kib}")
        need(self.max_seq_len >= 8, f"max_seq_len must be >= 8, got {self.max_seq_len}")
        need(self.max_channels >= 8, f"max_channels must be >= 8, got {self.max_channels}")
        need(self.gelu_lut_depth == 256, f"gelu_lut_depth must be 256 (int8 index), got {self.gelu_lut_depth}")
        need(_pow2(self.dma_bytes_per_cycle) and self.dma_bytes_per_cycle <= 128,
             f"dma_bytes_per_cycle must be a power of two in 1..128, got {self.dma_bytes_per_cycle}")
        need(1 <= self.dram_bytes_per_cycle <= self.dma_bytes_per_cycle,
             f"dram_bytes_per_cycle must be in 1..dma_bytes_per_cycle ({self.dma_bytes_per_cycle}), "
             f"got {self.dram_bytes_per_cycle}")
        need(0 <= self.dram_latency_cycles <= 100_000,
             f"dram_latency_cycles must be in 0..100000, got {self.dram_latency_cycles}")
        need(1.0 <= self.clock_mhz <= 2000.0, f"clock_mhz must be in 1..2000, got {self.clock_mhz}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def macs_per_cycle(self) -> int:
        """Peak multiply-accumulates per cycle of the array."""
        return self.array_rows * self.array_cols

    @property
    def scratchpad_bytes(self) -> int:
        return self.scratchpad_kib * 1024

    @property
    def accumulator_words(self) -> int:
        """Number of 32-bit words the accumulator memory holds."""
        return self.accumulator_kib * 1024 // 4

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


#: Named configurations.
PRESETS: dict[str, AcceleratorConfig] = {
    "default": AcceleratorConfig(),
    "small": AcceleratorConfig(array_rows=8, array_cols=8, vector_lanes=8,
                               scratchpad_kib=256, accumulator_kib=64),
    "tiny": AcceleratorConfig(array_rows=4, array_cols=4, vector_lanes=4,
                              scratchpad_kib=64, accumulator_kib=16),
}


def load_config(spec: str | None = None, **overrides) -> AcceleratorConfig:
    """A config from a preset name or a JSON file path (``None``: the default), then overrides.

    ``overrides`` are field values (e.g. from ``--set array_rows=8`` on the command line).
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
        base = {**PRESETS["default"].to_dict(), **base}
    return AcceleratorConfig.from_dict({**base, **overrides})


def parse_overrides(items: list[str]) -> dict:
    """``["array_rows=8", "clock_mhz=150"]`` -> typed field values."""
    types = {f.name: f.type for f in dataclasses.fields(AcceleratorConfig)}
    out = {}
    for item in items:
        key, sep, val = item.partition("=")
        if not sep or key not in types:
            raise ConfigError(f"bad config override {item!r} (expected FIELD=VALUE with a known field)")
        try:
            out[key] = float(val) if types[key] in ("float", float) else int(val)
        except ValueError:
            raise ConfigError(f"bad value in {item!r}") from None
    return out
