"""The compiler: token discipline, DRAM layout, fitting errors, program image files."""
import hashlib
import json

import numpy as np
import pytest

from compiler.isa import NQ, Opcode, QUEUE_OF
from compiler.lower import CompileError, compile_graph
from compiler.program import ProgramFormatError, ProgramImage
from compiler.testgraphs import tiny_vit
from hw.config import AcceleratorConfig


def _cfg(n=4, spad_kib=16, acc_kib=4, **kw):
    return AcceleratorConfig(array_rows=n, array_cols=n, vector_lanes=n,
                             scratchpad_kib=spad_kib, accumulator_kib=acc_kib, **kw)


@pytest.mark.parametrize("graph_kw,cfg_kw", [
    (dict(), dict(n=2)),
    (dict(depth=2, image=12, dim=24, heads=3), dict(n=4, spad_kib=4, acc_kib=1)),
])
def test_every_wait_has_an_earlier_signal(graph_kw, cfg_kw):
    """Per queue pair, the k-th wait is preceded in program order by the k-th signal: tokens
    balance and the program cannot deadlock."""
    prog = compile_graph(tiny_vit(**graph_kw), _cfg(**cfg_kw))
    signals = np.zeros((NQ, NQ), dtype=int)
    waits = np.zeros((NQ, NQ), dtype=int)
    for ins in prog.instructions:
        q = QUEUE_OF[ins.op]
        if q is None:
            continue
        for s in range(NQ):
            if (ins.wait >> s) & 1:
                waits[s, q] += 1
                assert waits[s, q] <= signals[s, q]
        for d in range(NQ):
            if (ins.signal >> d) & 1:
                signals[q, d] += 1
    np.testing.assert_array_equal(signals, waits)
    assert waits.sum() > 0
    assert prog.instructions[-1].op == Opcode.HALT


def test_weights_are_zero_padded_in_dram():
    g = tiny_vit(dim=12, heads=2, depth=1)             # K = 12 on a 8-row array: padded to 16
    for op in g.ops:                                   # 12 channels need a 4-lane LayerNorm:
        if op.kind in ("layernorm", "add"):            # keep the linear layers only
            op.kind, op.params, op.attrs = "gelu", {"table": np.zeros(256, dtype=np.int8)}, {}
            op.inputs = op.inputs[:1]
    prog = compile_graph(g, _cfg(n=8))
    w = g.op("blocks.0.attn.proj").params["weight"]
    raw = prog.dram_init.view(np.int8)
    padded = np.zeros((16, 16), dtype=np.int8)
    padded[:12, :12] = w
    hits = [i for i in range(0, len(raw) - 256, 64) if np.array_equal(raw[i:i + 256], padded.ravel())]
    assert hits, "padded weight matrix not found in the DRAM image"


def test_placements_do_not_overlap():
    prog = compile_graph(tiny_vit(depth=2), _cfg())
    spans = sorted((p.addr, p.addr + p.rows * p.row_stride, n) for n, p in prog.tensors.items()
                   if n not in ("tokens",))
    for (a0, a1, n0), (b0, b1, n1) in zip(spans, spans[1:]):
        assert a1 <= b0 or n0 == "patch_embed.out" or n1 == "patch_embed.out", (n0, n1)


def test_scratchpad_too_small_says_by_how_much():
    g = tiny_vit(image=16, dim=64, heads=2)
    with pytest.raises(CompileError, match=r"op 'patch_embed.proj' \(linear\) does not fit even one "
                                           r"row at a time: the weight memory needs 768 bytes, the "
                                           r"config has 192 \(short by 576 bytes\)"):
        compile_graph(g, _cfg(n=16, spad_kib=1))


def test_accumulator_too_small_says_by_how_much():
    g = tiny_vit(image=16, dim=512, heads=2, classes=2)
    with pytest.raises(CompileError, match=r"the attn_acc memory needs 768 words, the config has 64 "
                                           r"\(short by 704 words = 2816 bytes\)"):
        compile_graph(g, _cfg(n=4, spad_kib=256, acc_kib=1))


def test_sequence_longer_than_softmax_unit():
    g = tiny_vit(image=16, patch=4)                        # 17 tokens
    with pytest.raises(CompileError, match=r"op 'blocks.0.attn.softmax': the softmax unit cannot "
                                           r"run rows of 17 tokens: .*1\.\.8, got 17"):
        compile_graph(g, _cfg(max_seq_len=8))


def test_add_channels_not_multiple_of_lanes():
    g = tiny_vit(dim=12, heads=2)
    for op in g.ops:
        if op.kind == "layernorm":
            op.kind = "gelu"
            op.params = {"table": np.zeros(256, dtype=np.int8)}
            op.attrs = {}
    with pytest.raises(CompileError, match=r"op 'pos_embed': the residual add cannot run rows of "
                                           r"12 channels: .*multiple of vector_lanes \(8\) .*got 12"):
        compile_graph(g, _cfg(n=8))


def test_channels_beyond_the_vector_units():
    with pytest.raises(CompileError, match=r"op 'pos_embed': the residual add cannot run rows of "
                                           r"16 channels: .*in 4\.\.8 \(max_channels\), got 16"):
        compile_graph(tiny_vit(dim=16), _cfg(n=4, max_channels=8))


def test_layernorm_channels_not_multiple_of_lanes():
    g = tiny_vit(dim=12, heads=2)
    pos = g.op("pos_embed")                      # the one-input add before the first LayerNorm
    pos.kind, pos.params, pos.attrs = "gelu", {"table": np.zeros(256, dtype=np.int8)}, {}
    with pytest.raises(CompileError, match=r"op 'blocks.0.norm1': the LayerNorm unit cannot run "
                                           r"rows of 12 channels: .*multiple of the LayerNorm's lanes \(8\)"):
        compile_graph(g, _cfg(n=8))


def test_unsupported_pattern():
    g = tiny_vit()
    g.outputs.append("blocks.0.attn.probs")
    with pytest.raises(CompileError, match="qk_scores -> softmax -> attn_value"):
        compile_graph(g, _cfg())


def test_image_files_round_trip_and_damage(tmp_path):
    prog = compile_graph(tiny_vit(), _cfg())
    folder = prog.save(tmp_path / "p")
    assert sorted(x.name for x in folder.iterdir()) == ["dram.bin", "manifest.json", "program.bin"]
    back = ProgramImage.load(folder)
    assert back.instructions == prog.instructions
    np.testing.assert_array_equal(back.dram_init, prog.dram_init)
    assert back.tensors == prog.tensors and back.instr_macs == prog.instr_macs
    raw = bytearray((folder / "program.bin").read_bytes())
    raw[40] ^= 1
    (folder / "program.bin").write_bytes(bytes(raw))
    with pytest.raises(ProgramFormatError, match="checksum"):
        ProgramImage.load(folder)
    m = json.loads((folder / "manifest.json").read_text())
    raw[0] = 0xEE                                  # an illegal opcode with a matching checksum
    (folder / "program.bin").write_bytes(bytes(raw))
    m["sha256"]["program.bin"] = hashlib.sha256(bytes(raw)).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ProgramFormatError, match="instruction 0: unknown opcode 238"):
        ProgramImage.load(folder)
    del m["op_names"]
    (folder / "manifest.json").write_text(json.dumps(m))
    raw[0] = prog.instructions[0].op
    (folder / "program.bin").write_bytes(bytes(raw))
    m["sha256"]["program.bin"] = hashlib.sha256(bytes(raw)).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ProgramFormatError, match="damaged manifest.*op_names"):
        ProgramImage.load(folder)
    m["version"] = 99
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ProgramFormatError, match="version"):
        ProgramImage.load(folder)


def test_macs_accounted_exactly():
    g = tiny_vit(dim=16, heads=2, mlp_ratio=2, image=8, patch=4, classes=10)
    prog = compile_graph(g, _cfg())
    T, D, H = 5, 16, 32
    expected = (4 * 48 * D            # patch embedding
                + T * D * 3 * D       # qkv
                + 2 * T * T * D       # q k^T and attention x V over both heads
                + T * D * D           # proj
                + 2 * T * D * H       # fc1, fc2
                + D * 10)             # head
    assert sum(prog.instr_macs) == expected
