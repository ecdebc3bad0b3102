"""DeiT-Tiny, quantized from timm, compiles and simulates bit-exact with the executor:
every DRAM tensor of three random images (about 10 s)."""
import numpy as np
import pytest

from compiler.lower import compile_graph
from hw.config import PRESETS
from sim.machine import simulate
from sw.executor import execute


@pytest.mark.slow
def test_deit_tiny_bit_exact_through_compiler_and_cycle_model():
    from sw.quantize import create_model, quantize, quantize_input, random_images
    import torch
    torch.manual_seed(0)
    model = create_model("deit_tiny_patch16_224")
    images = random_images(model, 3, seed=4)
    graph = quantize(model, images[:2], progress=False)
    x = quantize_input(images, graph)
    ref = execute(graph, x, keep=True)
    image = compile_graph(graph, PRESETS["default"])
    result = simulate(image, {graph.inputs[0]: x})
    out = graph.outputs[0]
    assert result.outputs[out].shape == (3, 1000)
    np.testing.assert_array_equal(result.outputs[out], ref[out])
    # Every tensor the program keeps in DRAM, every image, every integer.
    assert len(image.tensors) > 100
    for name, place in image.tensors.items():
        got = np.stack([place.read(d) for d in result.dram])
        np.testing.assert_array_equal(got, ref[name], err_msg=name)
