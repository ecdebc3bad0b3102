# amaranth: UnusedElaboratable=no
"""The RTL decoder against the ISA table's verdict (``compiler.isa.check_instruction``).

The decoder is generated from the same rules and patterns the verdict evaluates, so a
disagreement here means the generation (field offsets, signedness, enum bounds, reserved
bits, masks, the multiplier's widths, region bounds, priorities) is wrong.  Words: every
instruction of compiled tiny ViTs (legal), and from them words with one field set to values
that break each check (unknown opcodes, reserved bits, masks, enum values, zero counts,
unaligned addresses, patterns just inside and just outside each region, DRAM bounds),
random fields and random bit flips.
"""
from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from compiler.isa import (FORMATS, HEADER_BITS, INSTR_BITS, NQ, OPCODE_BITS, QUEUE_OF, ErrorCode,
                          Opcode, Violation, check_instruction, encode)
from compiler.lower import compile_graph
from compiler.testgraphs import tiny_vit
from hw.config import load_config
from hw.core.decoder import DECODE_LATENCY, Decoder


def expected(cfg, word: int, last: bool, dram_size: int) -> tuple[int, int]:
    """(error code, queue) the ISA table gives for a word."""
    raw = word.to_bytes(INSTR_BITS // 8, "little")
    try:
        ins, _ = check_instruction(cfg, raw, 0, last, dram_size)
    except Violation as exc:
        return int(exc.code), None
    q = QUEUE_OF[ins.op]
    return int(ErrorCode.NONE), NQ if q is None else int(q)


def run_decoder(cfg, cases: list[tuple[int, bool]], dram_size: int) -> list[tuple[int, int, int]]:
    """Decode every ``(word, last)``; (error, queue, cycles from start to valid) of each."""
    dut = Decoder(cfg)
    out = []

    async def bench(ctx):
        ctx.set(dut.dram_size, dram_size)
        for word, last in cases:
            ctx.set(dut.word, word)
            ctx.set(dut.last, last)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.word, 0)
            cycles = 0
            while True:
                cycles += 1
                if ctx.get(dut.valid):
                    break
                assert cycles < 50, "decoder never answered"
                await ctx.tick()
            out.append((ctx.get(dut.error), ctx.get(dut.queue), cycles))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out


def _field_pos(op: Opcode) -> dict[str, tuple[int, int, bool]]:
    pos, out = HEADER_BITS, {}
    for f in FORMATS[op]:
        out[f.name] = (pos, f.bits, f.signed)
        pos += f.bits
    return out


def _set_field(word: int, op: Opcode, name: str, value: int) -> int:
    pos, bits, _ = _field_pos(op)[name]
    mask = ((1 << bits) - 1) << pos
    return (word & ~mask) | ((value & ((1 << bits) - 1)) << pos)


def _interesting_values(cfg, ins, name: str, bits: int, signed: bool, dram_size: int,
                        rng: random.Random) -> list[int]:
    n = cfg.lanes
    current = ins.args[name]
    vals = {0, 1, n, n - 1, n + 1, current + 1, current - 1, current + n,
            (1 << bits) - 1, rng.randrange(1 << bits)}
    for region in cfg.regions.values():
        for edge in (region.base, region.end):
            vals.update({edge - n, edge, edge - 1, edge + n, edge - current % n})
    vals.update({dram_size - 1, dram_size, dram_size - current % 64})
    # An address that puts a pattern's end exactly on a region's end (or one row past it).
    for acc in ins.spec.accesses(cfg, ins.args):
        if acc.addr == current:
            span = acc.hi - acc.lo
            ends = [dram_size] if acc.mem == "dram" else [cfg.regions[r].end for r in acc.regions]
            for end in ends:
                vals.update({end - span, end - span + 1, end - span + n})
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return sorted(v for v in vals if lo <= v <= hi)


def mutated_words(cfg, instrs, dram_size: int, rng: random.Random, per_field: int = 5):
    """Legal words and words with one change each (see the module docstring)."""
    cases = []
    seen_ops = {}
    for ins in instrs:
        seen_ops.setdefault(ins.op, []).append(ins)
    for op, group in sorted(seen_ops.items()):
        picks = rng.sample(group, min(3, len(group)))
        for ins in picks:
            word = int.from_bytes(encode(ins), "little")
            last = op == Opcode.HALT
            cases.append((word, last))
            cases.append((word, not last))                              # HALT placement
            for name, (pos, bits, signed) in _field_pos(op).items():
                vals = _interesting_values(cfg, ins, name, bits, signed, dram_size, rng)
                for v in rng.sample(vals, min(per_field, len(vals))):
                    cases.append((_set_field(word, op, name, v), last))
            for q in range(NQ):                                         # masks
                cases.append((word | (1 << (OPCODE_BITS + q)), last))
                cases.append((word | (1 << (OPCODE_BITS + NQ + q)), last))
            end = HEADER_BITS + sum(f.bits for f in FORMATS[op])
            if end < INSTR_BITS:                                        # reserved bits
                cases.append((word | (1 << rng.randrange(end, INSTR_BITS)), last))
                cases.append((word | (1 << (INSTR_BITS - 1)), last))
            for _ in range(2):                                          # random bit flips
                cases.append((word ^ (1 << rng.randrange(HEADER_BITS, INSTR_BITS)), last))
    for code in (len(Opcode), 0x7F, 0xFF):                              # unknown opcodes
        cases.append((code, False))
        cases.append((code, True))
    return cases


@pytest.mark.parametrize("preset, image, dim", [("tiny", 8, 16), ("small", 16, 32)])
def test_decoder_matches_isa_table(preset, image, dim):
    cfg = load_config(preset)
    program = compile_graph(tiny_vit(image=image, dim=dim), cfg)
    rng = random.Random(len(preset) * 7919 + dim)
    cases = mutated_words(cfg, program.instructions, program.dram_size, rng)
    results = run_decoder(cfg, cases, program.dram_size)
    verdicts = {}
    for (word, last), (error, queue, cycles) in zip(cases, results):
        want_error, want_queue = expected(cfg, word, last, program.dram_size)
        assert cycles == DECODE_LATENCY
        assert error == want_error, (f"word {word:#066x} last={last}: decoder {ErrorCode(error).name}, "
                                     f"ISA table {ErrorCode(want_error).name}")
        if want_queue is not None:
            assert queue == want_queue
        verdicts[ErrorCode(want_error)] = verdicts.get(ErrorCode(want_error), 0) + 1
    # The cases reach every verdict the decoder can give.
    assert set(verdicts) == {ErrorCode.NONE, ErrorCode.ILLEGAL, ErrorCode.NO_HALT,
                             ErrorCode.RANGE, ErrorCode.CONSTRAINT}, verdicts


def test_decoder_wide_strides_at_the_dram_end():
    """Strides of 2**16 and more (the product's upper half matters) with the DRAM
    pattern ending exactly at ``dram_size`` and one stride step past it, for several row
    counts: the compare must see the whole product."""
    from compiler.isa import decode
    cfg = load_config("tiny")
    program = compile_graph(tiny_vit(image=8, dim=16), cfg)
    dram_size = (1 << 32) - 4096
    cases = []
    for op in (Opcode.LOAD, Opcode.STORE):
        ins = next(i for i in program.instructions if i.op == op)
        word = int.from_bytes(encode(ins), "little")
        for rows in (2, 3, 300, 40_000, 65_535):
            w = _set_field(word, op, "rows", rows)
            dec = decode(w.to_bytes(INSTR_BITS // 8, "little"))
            acc = next(a for a in dec.spec.accesses(cfg, dec.args) if a.mem == "dram")
            stride = (dram_size - acc.addr - acc.width) // (acc.rows - 1)
            for s in (stride, stride + 1, stride - 1):
                if s >= 1 << 16 and s < 1 << 32:
                    cases.append((_set_field(w, op, "dram_stride", s), False))
    results = run_decoder(cfg, cases, dram_size)
    verdicts = []
    for (word, last), (error, _, _) in zip(cases, results):
        want, _ = expected(cfg, word, last, dram_size)
        assert error == want, (f"word {word:#066x}: decoder {ErrorCode(error).name}, "
                               f"ISA table {ErrorCode(want).name}")
        verdicts.append(ErrorCode(want))
    assert ErrorCode.NONE in verdicts and ErrorCode.RANGE in verdicts, verdicts
