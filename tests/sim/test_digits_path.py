"""The digits ViT classifies its whole test set identically through compiler + cycle model.

The trained digits ViT (:func:`sw.digits.load_or_train`) is quantized, every test image goes
through the integer reference executor and through the compiled program on the cycle-level
model with the data path on, and every output integer (so every label) must agree.
"""
import numpy as np
import pytest

from compiler.lower import compile_graph
from hw.config import PRESETS
from sim.machine import simulate
from sw.executor import execute

#: Images per data-path pass (bounds the memory of the batched run).
BATCH = 150


@pytest.fixture(scope="module")
def digits_graph():
    from sw.digits import load_or_train
    from sw.quantize import quantize, quantize_input
    model, split = load_or_train(seed=0, progress=False)
    graph = quantize(model, split.train_x[:64])
    return graph, quantize_input(split.test_x, graph), split.test_y


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["default", "tiny"])
def test_test_set_identical_through_the_cycle_model(digits_graph, preset):
    graph, x, labels = digits_graph
    ref = execute(graph, x)[graph.outputs[0]]
    image = compile_graph(graph, PRESETS[preset])
    got = np.concatenate([simulate(image, {graph.inputs[0]: x[b:b + BATCH]}).outputs[graph.outputs[0]]
                          for b in range(0, len(x), BATCH)])
    assert got.shape == ref.shape == (len(labels), 10)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got.argmax(axis=1), ref.argmax(axis=1))
    assert (got.argmax(axis=1) == labels).mean() > 0.8      # a trained model, not noise
