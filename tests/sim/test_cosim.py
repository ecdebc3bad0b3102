"""The accelerator's RTL co-simulated (Verilator, cocotb, AxiRam, AXI4-Lite) against the
cycle model and the integer reference.

For every program: the RTL's cycle counter equals the cycle model's prediction (memory model
at its fixed latency, no back-pressure), every per-engine busy counter equals the model's,
and the final DRAM (every output integer) equals the model's data path, which equals the
integer reference executor on compiled graphs.  The model and the executor both compute with
``sw.intops``; the RTL computes with its own units, so the DRAM comparison checks the RTL's
arithmetic, addressing and ordering.  With random back-pressure on every AXI channel the
outputs stay the same.  Bad programs stop with the model's verdict, in bounded time.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from compiler.isa import ErrorCode, Opcode, Queue, decode, encode, encode_program
from compiler.lower import compile_graph
from compiler.testgraphs import random_image, tiny_swin, tiny_vit
from hw.config import load_config
from sim import cosim
from sim.machine import ProgramError, run_words, simulate
from sw.executor import execute

from cosim_programs import dedicated_programs, random_dma_chain

pytestmark = pytest.mark.cocotb


def _config(n: int, norm_lanes: int = 0):
    return cosim.cosim_config(load_config("tiny", array_rows=n, scratchpad_kib=64, accumulator_kib=16,
                                          instr_buffer=64, norm_lanes=norm_lanes))


_BUILDS = {}


def _build(n: int, norm_lanes: int = 0) -> cosim.Build:
    if (n, norm_lanes) not in _BUILDS:
        _BUILDS[n, norm_lanes] = cosim.build(_config(n, norm_lanes))
    return _BUILDS[n, norm_lanes]


def _margin(cycles: int) -> int:
    return 4 * cycles + 5000


def _image_run(image, inputs: dict, name: str, **kw) -> tuple[cosim.Run, object]:
    """The co-simulation run of ``image`` on ``inputs`` and the model's result."""
    res = simulate(image, inputs)
    dram = image.initial_dram()
    for t in image.inputs:
        t.write(dram, inputs[t.name])
    return cosim.Run(encode_program(image.instructions), dram, _margin(res.cycles), name, **kw), res


def _same(out: cosim.Outcome, res, name: str, cycles: bool = True) -> None:
    assert not out.timeout and out.error == 0, (name, out.error, out.error_index)
    np.testing.assert_array_equal(out.dram, res.dram, err_msg=f"{name}: final DRAM")
    if cycles:
        assert out.cycles == res.cycles, f"{name}: RTL {out.cycles} cycles, model {res.cycles}"
        assert out.busy == res.schedule.busy, f"{name}: busy counters"


@pytest.mark.parametrize("n", [2, 4])
def test_every_opcode_and_mode(n):
    cfg = _config(n)
    runs, results = [], []
    for name, image in dedicated_programs(cfg, seed=n).items():
        run, res = _image_run(image, {}, name)
        runs.append(run)
        results.append(res)
    for run, res, out in zip(runs, results, cosim.run(_build(n), runs)):
        _same(out, res, run.name)


@pytest.mark.parametrize("n, variant, norm_lanes", [
    (2, dict(), 0), (4, dict(), 0),
    (4, dict(softmax_mode="uniform", pool="mean", fc_norm=True), 0),
    (4, dict(), 2)])
def test_one_block_tiny_vit(n, variant, norm_lanes):
    """A one-block tiny ViT, bit-exact with the integer executor and cycle-exact; last with
    the LayerNorm and softmax two lanes wide behind their lane adapters (``norm_lanes``)."""
    cfg = _config(n, norm_lanes)
    graph = tiny_vit(seed=n, depth=1, **variant)
    image = compile_graph(graph, cfg)
    x = random_image(graph, seed=1)
    run, res = _image_run(image, {graph.inputs[0]: x}, "tiny ViT")
    ref = execute(graph, x[None], keep=True)
    for name, place in image.tensors.items():
        np.testing.assert_array_equal(place.read(res.dram), ref[name][0], err_msg=name)
    (out,) = cosim.run(_build(n, norm_lanes), [run])
    _same(out, res, "tiny ViT")


def test_tiny_swin_shifted_block_and_merge():
    """A tiny Swin: a shifted-window block (cyclic shift, relative position bias, shift
    mask), patch merging, a block whose window covers the grid; bit-exact with the integer
    executor and cycle-exact."""
    n = 4
    cfg = _config(n)
    graph = tiny_swin(seed=5, image=16, patch=2, dim=8, depths=(1, 1), heads=(2, 2), window=4,
                      shift="all")
    image = compile_graph(graph, cfg)
    assert any(i.op == Opcode.SOFTMAX and i.args["bias"] and i.args["mask_value"]
               for i in image.instructions)
    x = random_image(graph, seed=1)
    run, res = _image_run(image, {graph.inputs[0]: x}, "tiny Swin")
    ref = execute(graph, x[None], keep=True)
    for name, place in image.tensors.items():
        np.testing.assert_array_equal(place.read(res.dram), ref[name][0], err_msg=name)
    (out,) = cosim.run(_build(n), [run])
    _same(out, res, "tiny Swin")
    print(f"tiny Swin: RTL {out.cycles} cycles, model {res.cycles} cycles")


def test_bus_errors_then_a_clean_run():
    """The memory answers the first LOAD's first byte, then the first STORE's, with
    ``SLVERR``: ``BUS`` at that instruction (the oldest in flight of its engine when the
    response arrives), the run ends (done and error set); then the same program on the same
    core runs clean, bit-exact and cycle-exact (no error is left over from the failed runs)."""
    n = 4
    cfg = _config(n)
    graph = tiny_vit(seed=n, depth=1)
    image = compile_graph(graph, cfg)
    x = random_image(graph, seed=1)
    clean, res = _image_run(image, {graph.inputs[0]: x}, "clean after errors")
    first = {}
    for i, ins in enumerate(image.instructions):
        if ins.op in (Opcode.LOAD, Opcode.STORE):
            first.setdefault(ins.op, (i, ins.args["dram_addr"]))
    (load, load_addr), (store, store_addr) = first[Opcode.LOAD], first[Opcode.STORE]
    runs = [dataclasses.replace(clean, name="LOAD error", bad_reads=((load_addr, load_addr + 1),)),
            dataclasses.replace(clean, name="STORE error", bad_writes=((store_addr, store_addr + 1),)),
            clean]
    outs = cosim.run(_build(n), runs)
    for out, run, index in zip(outs, runs, (load, store)):
        assert not out.timeout, run.name
        assert (ErrorCode(out.error), out.error_index) == (ErrorCode.BUS, index), run.name
        assert out.status & 0b110 == 0b110, run.name            # done, error
    _same(outs[2], res, "clean after errors")


def test_random_dma_chains():
    """Random LOAD -> STORE chains (shapes, alignments, padding, page crossings, which LOAD
    waits for the STORE before it): the RTL's cycles, busy counters and DRAM equal the
    model's, program by program."""
    n = 4
    cfg = _config(n)
    runs, results = [], []
    for seed in range(60):
        image = random_dma_chain(cfg, seed)
        try:
            run, res = _image_run(image, {}, f"dma chain {seed}")
        except ProgramError as exc:
            assert "hazard" in str(exc), exc
            continue
        runs.append(run)
        results.append(res)
    assert len(runs) >= 45, f"only {len(runs)} of the random chains are hazard-free"
    for run, res, out in zip(runs, results, cosim.run(_build(n), runs)):
        _same(out, res, run.name)


def test_backpressure_keeps_outputs():
    """Random pauses on all five AXI channels (three seeds): the same DRAM, more cycles."""
    n = 4
    graph = tiny_vit(seed=7, depth=1)
    image = compile_graph(graph, _config(n))
    x = random_image(graph, seed=2)
    runs = []
    for seed in (1, 2, 3):
        run, res = _image_run(image, {graph.inputs[0]: x}, f"pauses {seed}", pause_seed=seed,
                              pause_probability=0.35)
        runs.append(run)
    for out in cosim.run(_build(n), runs):
        _same(out, res, "back-pressure", cycles=False)
        assert out.cycles > res.cycles


def _bad_programs(cfg):
    graph = tiny_vit(seed=3, depth=1)
    image = compile_graph(graph, cfg)
    words = [encode(i) for i in image.instructions]
    load = decode(words[0])
    far = dataclasses.replace(load, args={**load.args, "dram_addr": image.dram_size - 1})
    reserved = bytearray(words[9])
    reserved[-1] |= 0x40
    matmul = next(i for i, w in enumerate(words) if decode(w).op == Opcode.MATMUL)
    return image, {
        "unknown opcode": words[:7] + [bytes([0x5A]) + bytes(31)] + words[7:],
        "reserved bits": words[:9] + [bytes(reserved)] + words[10:],
        "DRAM out of range": words[:4] + [encode(far)] + words[4:],
        "missing HALT": words[:-1],
        "HALT too early": words[:12] + [words[-1]] + words[12:],
        "deadlock": words[:matmul] + [encode(dataclasses.replace(decode(words[matmul]),
                                                                 wait=1 << Queue.STORE))]
                    + words[matmul + 1:],
        "tokens left": [encode(dataclasses.replace(load, signal=1 << Queue.STORE))] + words[1:],
        "empty": [],
    }


def test_bad_programs_same_verdict_as_the_model():
    n = 4
    cfg = _config(n)
    image, cases = _bad_programs(cfg)
    runs, verdicts = [], []
    for name, words in cases.items():
        sched, _ = run_words(cfg, words, image.dram_size)
        assert sched.error is not None, name
        verdicts.append(sched.error)
        bound = _margin(int(max(sched.retire.max(initial=0), sched.verdict.max(initial=0))))
        runs.append(cosim.Run(b"".join(words), image.initial_dram(), bound, name))
    codes = {v[0] for v in verdicts}
    assert codes >= {ErrorCode.ILLEGAL, ErrorCode.RANGE, ErrorCode.NO_HALT, ErrorCode.DEADLOCK,
                     ErrorCode.TOKENS}
    for run, (code, index, _), out in zip(runs, verdicts, cosim.run(_build(n), runs)):
        assert not out.timeout, f"{run.name}: no done within {run.max_cycles} cycles"
        assert (ErrorCode(out.error), out.error_index) == (code, index), run.name
        assert out.status & 0b110 == 0b110, run.name            # done, error


@pytest.fixture(scope="module")
def digits():
    from sw.digits import load_or_train
    from sw.quantize import quantize, quantize_input
    model, split = load_or_train(seed=0, progress=False)
    graph = quantize(model, split.train_x[:64], progress=False)
    return graph, quantize_input(split.test_x[:2], graph)


def test_digits_vit_whole_model(digits):
    """The trained digits ViT: two test images, logits equal to the executor's."""
    graph, x = digits
    n = 4
    image = compile_graph(graph, _config(n))
    ref = execute(graph, x)[graph.outputs[0]]
    runs, results = [], []
    for k in range(len(x)):
        run, res = _image_run(image, {graph.inputs[0]: x[k]}, f"digits image {k}")
        runs.append(run)
        results.append(res)
    outs = cosim.run(_build(n), runs)
    for k, (res, out) in enumerate(zip(results, outs)):
        _same(out, res, f"digits image {k}")
        got = image.outputs[0].read(out.dram)
        np.testing.assert_array_equal(got, ref[k])


@pytest.mark.long
def test_deit_tiny_block_default_config():
    """One DeiT-Tiny block (197 tokens, 192 channels, 3 heads) with its patch embedding and
    head, on the default 16 x 16 machine."""
    from sw.quantize import create_model, quantize, random_images
    import torch
    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224", depth=1)
    graph = quantize(model, random_images(model, 8, seed=0), progress=False)
    cfg = cosim.cosim_config(load_config(None))
    image = compile_graph(graph, cfg)
    from sw.quantize import quantize_input
    x = quantize_input(random_images(model, 1, seed=1), graph)[0]
    run, res = _image_run(image, {graph.inputs[0]: x}, "DeiT-Tiny block")
    (out,) = cosim.run(cosim.build(cfg), [run])
    _same(out, res, "DeiT-Tiny block")
    np.testing.assert_array_equal(image.outputs[0].read(out.dram),
                                  execute(graph, x[None])[graph.outputs[0]][0])
