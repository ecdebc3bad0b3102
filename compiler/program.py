"""A program image: instructions, the initial DRAM image and a JSON manifest.

On disk a program image is a folder of three files:

``program.bin``
    The instructions, :data:`compiler.isa.INSTR_BYTES` bytes each (see docs/ISA.md).
``dram.bin``
    The initialized start of DRAM (weights, biases, requantizer records, tables, constant
    tokens); the rest of DRAM (``dram_size`` bytes in all) starts as zeros.
``manifest.json``
    The config the program was compiled for, where the host writes each input and reads
    each output, where every materialized tensor lives, the graph op each instruction
    belongs to and its multiply-accumulates, and a SHA-256 of both binaries.

Each file is written atomically (temporary file and rename), the manifest last; the loader
checks the checksums, so a half-written image is refused, never run.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hw.config import AcceleratorConfig
from sw.graph import atomic_write_bytes

from .isa import IllegalInstructionError, Instruction, decode_program, encode_program

__all__ = ["TensorPlacement", "ProgramImage", "ProgramFormatError", "IMAGE_FORMAT", "IMAGE_VERSION"]

IMAGE_FORMAT = "vitamin-program"
IMAGE_VERSION = 3


class ProgramFormatError(ValueError):
    """A program image on disk is missing, damaged or of another version."""


@dataclass(frozen=True)
class TensorPlacement:
    """A tensor stored in DRAM as ``rows`` rows of ``cols`` elements, ``row_stride`` bytes apart."""
    name: str
    addr: int
    rows: int
    cols: int
    elem_bytes: int
    row_stride: int
    shape: tuple[int, ...]
    signed: bool = True

    @property
    def dtype(self) -> np.dtype:
        kind = "i" if self.signed else "u"
        return np.dtype(f"<{kind}{self.elem_bytes}")

    def read(self, dram: np.ndarray) -> np.ndarray:
        """The tensor's integers (int64, its declared shape) from a DRAM byte array."""
        width = self.cols * self.elem_bytes
        rows = [dram[self.addr + r * self.row_stride: self.addr + r * self.row_stride + width]
                for r in range(self.rows)]
        flat = np.concatenate(rows).view(self.dtype)
        return flat.astype(np.int64).reshape(self.shape)

    def write(self, dram: np.ndarray, value: np.ndarray) -> None:
        """Write integers of the tensor's shape into a DRAM byte array."""
        value = np.asarray(value)
        if tuple(value.shape) != tuple(self.shape):
            raise ValueError(f"tensor {self.name!r} has shape {self.shape}, got {tuple(value.shape)}")
        data = value.astype(self.dtype).reshape(self.rows, self.cols).view(np.uint8)
        for r in range(self.rows):
            start = self.addr + r * self.row_stride
            dram[start:start + data.shape[1]] = data[r]

    def to_json(self) -> dict:
        return {"name": self.name, "addr": self.addr, "rows": self.rows, "cols": self.cols,
                "elem_bytes": self.elem_bytes, "row_stride": self.row_stride,
                "shape": list(self.shape), "signed": self.signed}

    @classmethod
    def from_json(cls, d: dict) -> "TensorPlacement":
        return cls(d["name"], d["addr"], d["rows"], d["cols"], d["elem_bytes"], d["row_stride"],
                   tuple(d["shape"]), d["signed"])


@dataclass
class ProgramImage:
    """Everything the accelerator (or the cycle model) needs to run one inference."""
    config: AcceleratorConfig
    instructions: list[Instruction]
    #: Initialized DRAM prefix (uint8).
    dram_init: np.ndarray
    dram_size: int
    inputs: list[TensorPlacement]
    outputs: list[TensorPlacement]
    #: Every tensor the program writes to DRAM (for debugging and bit-exact checks).
    tensors: dict[str, TensorPlacement]
    #: Graph op names; ``instr_op[i]`` indexes this list.
    op_names: list[str]
    instr_op: list[int]
    #: Useful multiply-accumulates of each instruction (non-zero for MATMUL only).
    instr_macs: list[int]
    info: dict = field(default_factory=dict)

    def initial_dram(self) -> np.ndarray:
        """A fresh DRAM array: the initialized prefix, zeros after it."""
        dram = np.zeros(self.dram_size, dtype=np.uint8)
        dram[:len(self.dram_init)] = self.dram_init
        return dram

    # ------------------------------------------------------------------ files
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        program = encode_program(self.instructions)
        dram = np.ascontiguousarray(self.dram_init, dtype=np.uint8).tobytes()
        atomic_write_bytes(folder / "program.bin", program)
        atomic_write_bytes(folder / "dram.bin", dram)
        manifest = {
            "format": IMAGE_FORMAT, "version": IMAGE_VERSION,
            "config": self.config.to_dict(), "dram_size": self.dram_size,
            "instructions": len(self.instructions),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "tensors": [t.to_json() for t in self.tensors.values()],
            "op_names": self.op_names, "instr_op": self.instr_op, "instr_macs": self.instr_macs,
            "info": self.info,
            "sha256": {"program.bin": hashlib.sha256(program).hexdigest(),
                       "dram.bin": hashlib.sha256(dram).hexdigest()},
        }
        atomic_write_bytes(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "ProgramImage":
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        mpath = folder / "manifest.json"
        if not mpath.is_file():
            raise ProgramFormatError(f"{folder}: no manifest.json (not a program image)")
        try:
            m = json.loads(mpath.read_text())
        except ValueError as exc:
            raise ProgramFormatError(f"{mpath}: damaged manifest ({exc})") from None
        if m.get("format") != IMAGE_FORMAT or m.get("version") != IMAGE_VERSION:
            raise ProgramFormatError(f"{mpath}: not a version-{IMAGE_VERSION} program image")
        blobs = {}
        for name in ("program.bin", "dram.bin"):
            path = folder / name
            if not path.is_file():
                raise ProgramFormatError(f"{folder}: {name} is missing")
            blobs[name] = path.read_bytes()
            if hashlib.sha256(blobs[name]).hexdigest() != m.get("sha256", {}).get(name):
                raise ProgramFormatError(f"{path}: checksum mismatch (damaged or half-written image)")
        try:
            instructions = decode_program(blobs["program.bin"])
        except IllegalInstructionError as exc:
            raise ProgramFormatError(f"{folder / 'program.bin'}: {exc}") from None
        try:
            return cls(
                config=AcceleratorConfig.from_dict(m["config"]),
                instructions=instructions,
                dram_init=np.frombuffer(blobs["dram.bin"], dtype=np.uint8).copy(),
                dram_size=m["dram_size"],
                inputs=[TensorPlacement.from_json(d) for d in m["inputs"]],
                outputs=[TensorPlacement.from_json(d) for d in m["outputs"]],
                tensors={d["name"]: TensorPlacement.from_json(d) for d in m["tensors"]},
                op_names=m["op_names"], instr_op=m["instr_op"], instr_macs=m["instr_macs"],
                info=m.get("info", {}))
        except (KeyError, TypeError) as exc:
            raise ProgramFormatError(f"{mpath}: damaged manifest (missing or bad {exc})") from None
