"""Small hand-written programs that run every opcode in every mode the compiler's programs
leave out (or use rarely), for any datapath width ``N``.

Each program loads random data and parameter records from DRAM, runs the instructions under
test and stores every result back to DRAM, so comparing the whole final DRAM of the RTL with
the cycle model's compares every output integer.  Dependencies are hand-placed tokens; the
cycle model's hazard checker proves them sufficient.
"""
from __future__ import annotations

import numpy as np

from compiler.isa import (NO_SCORE_BIAS, FORMATS, Instruction, MatMode, Mem, Opcode, OutType, Queue,
                          SoftmaxMode)
from compiler.program import ProgramImage
from hw.config import AcceleratorConfig
from sw import intops

__all__ = ["dedicated_programs", "MODES"]

L, M, A, V, S = Queue.LOAD, Queue.MATRIX, Queue.ATTN, Queue.VECTOR, Queue.STORE

#: (opcode, mode) pairs the dedicated programs cover, for the coverage check.
MODES = {
    "LOAD unaligned + pad", "LOAD bursts split at 4 KiB and 256 beats", "LOAD PARAM unaligned",
    "STORE unaligned", "ADD broadcast, records loaded", "ADD records reused",
    "LAYERNORM records loaded", "LAYERNORM records reused", "GELU_TABLE", "GELU",
    "MATMUL INT8", "MATMUL INT8 transposed", "MATMUL UINT8", "REQUANT int8 per channel",
    "REQUANT int16 records reused", "REQUANT int8 per tensor", "SOFTMAX UNIFORM",
    "SOFTMAX LIS", "ATTNV", "REQUANT of ATTN results",
}


class _Builder:
    def __init__(self, cfg: AcceleratorConfig, dram_size: int, seed: int):
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.dram = self.rng.integers(0, 256, size=dram_size, dtype=np.uint8)
        self.instrs: list[Instruction] = []
        self.base = {name: r.base for name, r in cfg.regions.items()}

    def put(self, addr: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        self.dram[addr:addr + raw.size] = raw

    def records(self, addr: int, rows: np.ndarray) -> None:
        self.put(addr, np.asarray(rows, dtype="<i4"))

    def add(self, op: Opcode, wait=(), signal=(), **args) -> None:
        full = {f.name: 0 for f in FORMATS[op]}
        full.update(args)
        mask = lambda qs: sum(1 << int(q) for q in qs)
        self.instrs.append(Instruction(op, mask(wait), mask(signal), full))

    def image(self) -> ProgramImage:
        self.add(Opcode.HALT)
        n = len(self.instrs)
        return ProgramImage(self.cfg, self.instrs, self.dram.copy(), len(self.dram), [], [], {},
                            ["program"], [0] * n, [0] * n)


def _dma(cfg, seed) -> ProgramImage:
    b = _Builder(cfg, 40960, seed)
    c = b.base["copy"]
    # Unaligned on both sides, rows padded; then read back shifted the other way.
    b.add(Opcode.LOAD, signal=[S], mem=Mem.SPAD, dram_addr=5, dram_stride=37, dst_addr=c + 3,
          dst_stride=29, rows=6, cols=13, pad=4)
    b.add(Opcode.STORE, wait=[L], src_addr=c + 1, src_stride=29, dram_addr=20007, dram_stride=41,
          rows=6, cols=19)
    # One long row across a 4 KiB boundary of the DRAM window (DRAM_BASE is 4 KiB aligned).
    b.add(Opcode.LOAD, signal=[S], mem=Mem.SPAD, dram_addr=4090, dram_stride=0, dst_addr=c + 256,
          dst_stride=0, rows=1, cols=700, pad=0)
    b.add(Opcode.STORE, wait=[L], src_addr=c + 258, src_stride=0, dram_addr=24003, dram_stride=0,
          rows=1, cols=690)
    return b.image()


def _vector(cfg, seed) -> ProgramImage:
    n = cfg.lanes
    cols, rows = 2 * n, 3
    b = _Builder(cfg, 32768, seed)
    vin, vin2, out = b.base["vin"], b.base["vin2"], b.base["out"]
    rng = b.rng
    # Records: residual add (mult_a, mult_b, shift), LayerNorm (alpha, mult, shift, offset).
    add_rec = np.zeros((cols, 4), np.int64)
    add_rec[:, 0] = rng.integers(200, 3000, cols)
    add_rec[:, 1] = rng.integers(200, 3000, cols)
    add_rec[:, 2] = 11
    b.records(8001, add_rec)                                     # unaligned in DRAM
    mult, shift, offset = intops.ln_params(rng.uniform(0.5, 2.0, cols), rng.uniform(-1, 1, cols),
                                           0.05, 3)
    ln_rec = np.stack([rng.integers(0, 4, cols), mult, shift, offset], axis=1)
    b.records(9000, ln_rec)
    b.put(10000, rng.integers(-128, 128, 256).astype(np.int8))  # a GELU table
    b.add(Opcode.LOAD, mem=Mem.PARAM, dram_addr=8001, dram_stride=0, dst_addr=0, dst_stride=0,
          rows=1, cols=4 * cols)
    b.add(Opcode.LOAD, mem=Mem.SPAD, dram_addr=100, dram_stride=cols, dst_addr=vin,
          dst_stride=cols, rows=rows, cols=cols, pad=0)
    b.add(Opcode.LOAD, signal=[V], mem=Mem.SPAD, dram_addr=300, dram_stride=0, dst_addr=vin2,
          dst_stride=0, rows=1, cols=cols, pad=0)
    b.add(Opcode.ADD, wait=[L], a_addr=vin, a_stride=cols, b_addr=vin2, b_stride=0, dst_addr=out,
          dst_stride=cols, rows=rows, cols=cols, param_addr=0, load_params=1, zp_a=3, zp_b=-5,
          zp_out=2)
    b.add(Opcode.ADD, a_addr=vin + cols, a_stride=cols, b_addr=vin2, b_stride=0,
          dst_addr=out + rows * cols, dst_stride=cols, rows=2, cols=cols, param_addr=0,
          load_params=0, zp_a=-1, zp_b=0, zp_out=-4)
    b.add(Opcode.LOAD, signal=[V], mem=Mem.PARAM, dram_addr=9000, dram_stride=0,
          dst_addr=4 * cols, dst_stride=0, rows=1, cols=4 * cols)
    b.add(Opcode.LAYERNORM, wait=[L], src_addr=vin, src_stride=cols, dst_addr=out + 5 * cols,
          dst_stride=cols, rows=rows, cols=cols, param_addr=4 * cols, load_params=1, zp_in=1)
    b.add(Opcode.LAYERNORM, src_addr=vin + cols, src_stride=0, dst_addr=out + 8 * cols,
          dst_stride=cols, rows=2, cols=cols, param_addr=4 * cols, load_params=0, zp_in=-7)
    b.add(Opcode.LOAD, signal=[V], mem=Mem.SPAD, dram_addr=10000, dram_stride=0,
          dst_addr=vin + 1024, dst_stride=0, rows=1, cols=256, pad=0)
    b.add(Opcode.GELU_TABLE, wait=[L], src_addr=vin + 1024)
    b.add(Opcode.GELU, signal=[S], src_addr=vin, src_stride=cols, dst_addr=out + 10 * cols,
          dst_stride=cols, rows=rows, cols=cols)
    b.add(Opcode.STORE, wait=[V], src_addr=out, src_stride=cols, dram_addr=20000, dram_stride=cols,
          rows=13, cols=cols)
    return b.image()


def _matrix(cfg, seed) -> ProgramImage:
    n = cfg.lanes
    m, k, w = 5, 2 * n, 2 * n                 # streaming rows, reduction, output channels
    b = _Builder(cfg, 32768, seed)
    act, weight, out = b.base["act"], b.base["weight"], b.base["out"]
    codes, value, acc = b.base["codes"], b.base["value"], b.base["acc"]
    attn_acc, prob = b.base["attn_acc"], b.base["prob"]
    rng = b.rng
    rq = np.stack([rng.integers(-3000, 3000, w), rng.integers(100, 3000, w),
                   rng.integers(12, 16, w), rng.integers(-4, 4, w)], axis=1)
    b.records(12000, rq)
    b.records(12500, np.array([[17, 1200, 14, -2]]))
    b.put(0, rng.integers(-128, 128, 4096).astype(np.int8))
    # Operands.
    b.add(Opcode.LOAD, mem=Mem.SPAD, dram_addr=0, dram_stride=k, dst_addr=act, dst_stride=k,
          rows=m, cols=k, pad=0)
    b.add(Opcode.LOAD, mem=Mem.SPAD, dram_addr=200, dram_stride=w, dst_addr=weight, dst_stride=w,
          rows=k, cols=w, pad=0)
    b.add(Opcode.LOAD, signal=[M], mem=Mem.SPAD, dram_addr=600, dram_stride=k,
          dst_addr=weight + k * w, dst_stride=k, rows=w, cols=k, pad=0)
    b.add(Opcode.LOAD, signal=[V], mem=Mem.PARAM, dram_addr=12000, dram_stride=0, dst_addr=0,
          dst_stride=0, rows=1, cols=4 * w)
    b.add(Opcode.MATMUL, wait=[L], mode=MatMode.INT8, transpose=0, m=m, n_tiles=w // n,
          k_tiles=k // n, a_addr=act, a_stride=k, w_addr=weight, w_stride=w, acc_addr=acc,
          acc_stride=w)
    b.add(Opcode.MATMUL, signal=[V], mode=MatMode.INT8, transpose=1, m=m, n_tiles=w // n,
          k_tiles=k // n, a_addr=act, a_stride=k, w_addr=weight + k * w, w_stride=k,
          acc_addr=acc + m * w, acc_stride=w)
    b.add(Opcode.REQUANT, wait=[L, M], src_addr=acc, src_stride=w, dst_addr=out, dst_stride=w,
          rows=m, cols=w, param_addr=0, load_params=1, per_channel=1, out_type=OutType.INT8)
    b.add(Opcode.REQUANT, src_addr=acc + m * w, src_stride=w, dst_addr=out + m * w,
          dst_stride=2 * w, rows=m, cols=w, param_addr=0, load_params=0, per_channel=1,
          out_type=OutType.INT16)
    soft = dict(frac_bits=4, b_int=62, c_int=1487, mult=26214, shift=17, **NO_SCORE_BIAS)
    b.add(Opcode.SOFTMAX, signal=[M], src_addr=acc, src_stride=w, dst_addr=prob, dst_stride=w,
          rows=m, cols=w, mode=SoftmaxMode.UNIFORM, **soft)
    # Probabilities (uint8) times the first weight block.
    b.add(Opcode.MATMUL, wait=[V], signal=[V], mode=MatMode.UINT8, transpose=0, m=m,
          n_tiles=w // n, k_tiles=w // n, a_addr=prob, a_stride=w, w_addr=weight, w_stride=w,
          acc_addr=acc + 2 * m * w, acc_stride=w)
    b.add(Opcode.LOAD, signal=[V], mem=Mem.PARAM, dram_addr=12500, dram_stride=0, dst_addr=4 * w,
          dst_stride=0, rows=1, cols=4)
    b.add(Opcode.REQUANT, wait=[L, M], src_addr=acc + 2 * m * w, src_stride=w,
          dst_addr=out + 3 * m * w, dst_stride=w, rows=m, cols=w, param_addr=4 * w, load_params=1,
          per_channel=0, out_type=OutType.INT8)
    # Log-Int-Softmax codes of the transposed product, times v on the ATTN engine.
    b.add(Opcode.SOFTMAX, signal=[A], src_addr=acc + m * w, src_stride=w, dst_addr=codes,
          dst_stride=w, rows=m, cols=w, mode=SoftmaxMode.LIS, **soft)
    b.add(Opcode.LOAD, signal=[A], mem=Mem.SPAD, dram_addr=1000, dram_stride=n, dst_addr=value,
          dst_stride=n, rows=w, cols=n, pad=0)
    b.add(Opcode.ATTNV, wait=[V, L], signal=[V], m=m, n_tiles=1, k_tiles=w // n, a_addr=codes,
          a_stride=w, w_addr=value, w_stride=n, acc_addr=attn_acc, acc_stride=n)
    b.add(Opcode.REQUANT, wait=[A], signal=[S], src_addr=attn_acc, src_stride=n,
          dst_addr=out + 4 * m * w, dst_stride=n, rows=m, cols=n, param_addr=4 * w,
          load_params=0, per_channel=0, out_type=OutType.INT8)
    b.add(Opcode.STORE, wait=[V], src_addr=out, src_stride=w, dram_addr=20000, dram_stride=w,
          rows=4 * m, cols=w)
    b.add(Opcode.STORE, src_addr=out + 4 * m * w, src_stride=n, dram_addr=24000, dram_stride=n,
          rows=m, cols=n)
    return b.image()


def dedicated_programs(cfg: AcceleratorConfig, seed: int = 0) -> dict[str, ProgramImage]:
    """The programs by name, for ``cfg`` (any width ``N``; scratchpad of 16 KiB or more)."""
    return {"dma": _dma(cfg, seed), "vector": _vector(cfg, seed + 1),
            "matrix": _matrix(cfg, seed + 2)}


def random_dma_chain(cfg: AcceleratorConfig, seed: int) -> ProgramImage:
    """One to four LOAD -> STORE pairs of random shapes (unaligned addresses, strides,
    padding, rows crossing 4 KiB pages) through the two halves of the copy region in turn;
    each STORE waits for its LOAD, and a LOAD waits for the STORE before it at random (else
    it may overwrite what an earlier STORE still reads: such programs are hazards, which the
    model rejects; the caller skips them)."""
    rng = np.random.default_rng(seed)
    b = _Builder(cfg, 40960, seed)
    copy = cfg.regions["copy"]
    pairs = int(rng.integers(1, 5))
    dep = [False] + [bool(rng.random() < 0.6) for _ in range(pairs - 1)]
    for j in range(pairs):
        rows, cols = int(rng.integers(1, 7)), int(rng.integers(1, 301))
        pad = int(rng.choice([0, 0, int(rng.integers(0, 5))]))
        dst_stride = cols + pad + int(rng.integers(0, 6)) if rows > 1 else 0
        # Alternate halves of the copy region (a LOAD that does not wait then misses the
        # STORE just before it).
        half = (copy.end - copy.base) // 2
        dst = copy.base + (j % 2) * half + int(rng.integers(0, 65))
        if dst + (rows - 1) * dst_stride + cols + pad > copy.base + (j % 2 + 1) * half:
            rows, dst_stride = 1, 0
        b.add(Opcode.LOAD, wait=[S] if dep[j] else [], signal=[S], mem=Mem.SPAD,
              dram_addr=int(rng.integers(0, 8001)),
              dram_stride=int(rng.integers(cols, cols + 51)) if rows > 1 else 0,
              dst_addr=dst, dst_stride=dst_stride, rows=rows, cols=cols, pad=pad)
        store_cols = int(rng.integers(1, cols + pad + 1))
        b.add(Opcode.STORE, wait=[L], signal=[L] if j + 1 < pairs and dep[j + 1] else [],
              src_addr=dst, src_stride=dst_stride, dram_addr=20000 + int(rng.integers(0, 4001)),
              dram_stride=int(rng.integers(store_cols, store_cols + 41)) if rows > 1 else 0,
              rows=rows, cols=store_cols)
    return b.image()
