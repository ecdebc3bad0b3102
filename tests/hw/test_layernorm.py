# amaranth: UnusedElaboratable=no
"""PtfLayerNorm against sw.intops.ptf_layernorm (Amaranth simulation and cocotb)."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amaranth_streams import run_simulation, stream_through
from hw.config import AcceleratorConfig, ConfigError
from hw.layernorm import PtfLayerNorm, layernorm_beats, layernorm_timing
from lane_packing import pack, unpack_signed
from sim.cocotb_runner import run_cocotb
from sw import intops

LANES = 4
CONFIG = AcceleratorConfig(array_rows=LANES, array_cols=LANES, vector_lanes=LANES, max_channels=16)
#: The affine's legal shifts (sw.intops.ln_affine).
SHIFT_MIN, SHIFT_MAX = intops.LN_OFFSET_FRAC, intops.REQUANT_MAX_SHIFT


@dataclass
class Tensor:
    """One tensor of rows with its per-channel and per-tensor parameters."""
    rows: np.ndarray            # [n_rows, C] int8
    zp_in: int
    alpha: np.ndarray           # [C] 0..3
    mult: np.ndarray            # [C] int16
    shift: np.ndarray           # [C] 16..63
    offset: np.ndarray          # [C] int32, 16 fraction bits

    @property
    def channels(self) -> int:
        return self.rows.shape[1]

    def expected(self) -> np.ndarray:
        return intops.ptf_layernorm(self.rows, self.zp_in, self.alpha,
                                    self.mult, self.shift, self.offset)


@dataclass
class Run:
    outputs: list[np.ndarray]   # per tensor, [n_rows, C]
    first_in: list[int]         # per tensor: cycle of the first input handshake
    last_out: list[int]         # per tensor: cycle of the last output handshake


def simulate(config, tensors, *, in_gap=0.0, out_stall=0.0, seed=0, scramble=0) -> Run:
    """Load each tensor's parameters, stream its rows, collect every output beat.

    ``in_gap`` / ``out_stall``: probability of ``i.valid`` / ``o.ready`` being low in a cycle.
    Tensors run one after the other (the next is loaded once the previous has drained).
    ``scramble``: cycles of random rows (8 channels) before a reset (:func:`run_simulation`).
    """
    dut = PtfLayerNorm(config)
    lanes = config.vector_lanes
    rng = random.Random(seed)
    run = Run([], [], [])

    async def testbench(ctx):
        cycle = 0
        for tensor in tensors:
            channels = tensor.channels
            # ``channels`` a cycle ahead of the first beat at least (the unit registers C / L - 1).
            ctx.set(dut.channels, channels)
            for c in range(channels):
                ctx.set(dut.param.en, 1)
                ctx.set(dut.param.channel, c)
                ctx.set(dut.param.alpha, int(tensor.alpha[c]))
                ctx.set(dut.param.mult, int(tensor.mult[c]))
                ctx.set(dut.param.shift, int(tensor.shift[c]))
                ctx.set(dut.param.offset, int(tensor.offset[c]))
                await ctx.tick()
                cycle += 1
            ctx.set(dut.param.en, 0)
            ctx.set(dut.zp_in, tensor.zp_in)
            beats = [pack(row[b:b + lanes], 8) for row in tensor.rows
                     for b in range(0, channels, lanes)]
            words, accepted, delivered, cycle = await stream_through(
                ctx, dut, beats, rng, in_gap=in_gap, out_stall=out_stall, cycle=cycle,
                cycle_limit=cycle + 200 + 100 * len(beats),
                stopped_message="LayerNorm stopped producing output")
            got = [unpack_signed(word, 8, lanes) for word in words]
            run.outputs.append(np.array(got).reshape(tensor.rows.shape))
            run.first_in.append(accepted[0])
            run.last_out.append(delivered[-1])

    run_simulation(dut, testbench, scramble=scramble, seed=seed,
                   ranges=[(dut.channels, 8, 8), (dut.param.en, 0, 0)])
    return run


def check_bit_exact(tensors, run: Run) -> None:
    for tensor, got in zip(tensors, run.outputs):
        np.testing.assert_array_equal(got, tensor.expected())


def _matched_shift(mult, jitter):
    """Shifts that put ``n * mult / 2**shift`` (``|n| < 2**16`` for these channel counts)
    mostly inside int8."""
    bits = np.array([int(abs(int(v))).bit_length() for v in mult])
    return np.clip(bits + 9 + np.asarray(jitter), SHIFT_MIN, SHIFT_MAX)


def random_params(rng: np.random.Generator, channels: int, *, alpha=None, zp_in=None,
                  rows=None, n_rows=2) -> Tensor:
    """Parameters that put most outputs inside int8 (shift matched to the multiplier)."""
    mult = rng.integers(-(1 << 15), 1 << 15, channels)
    shift = _matched_shift(mult, rng.integers(-2, 3, channels))
    return Tensor(
        rows=rng.integers(-128, 128, (n_rows, channels)) if rows is None else np.asarray(rows),
        zp_in=int(rng.integers(-128, 128)) if zp_in is None else zp_in,
        alpha=rng.integers(0, 4, channels) if alpha is None else np.broadcast_to(alpha, channels),
        mult=mult, shift=shift,
        offset=rng.integers(-100 << 16, 101 << 16, channels))


# ---------------------------------------------------------------------------------- random
@st.composite
def tensors_strategy(draw):
    channels = draw(st.sampled_from([8, 16]))
    n_rows = draw(st.integers(1, 3))
    spread = draw(st.sampled_from([0, 1, 4, 40, 255]))
    centre = draw(st.integers(-128, 127))
    ints = st.integers(-spread, spread)
    rows = np.clip(centre + np.array(draw(st.lists(ints, min_size=n_rows * channels,
                                                   max_size=n_rows * channels))),
                   -128, 127).reshape(n_rows, channels)
    mult = np.array(draw(st.lists(st.integers(-(1 << 15), (1 << 15) - 1),
                                  min_size=channels, max_size=channels)))
    if draw(st.booleans()):      # matched shifts: outputs mostly inside int8
        shift = _matched_shift(mult, draw(st.lists(st.integers(-3, 3), min_size=channels,
                                                   max_size=channels)))
    else:
        shift = np.array(draw(st.lists(st.integers(SHIFT_MIN, SHIFT_MAX), min_size=channels,
                                       max_size=channels)))
    offset_range = draw(st.sampled_from([100 << 16, 1 << 31]))
    offset = np.array(draw(st.lists(st.integers(-offset_range, offset_range - 1),
                                    min_size=channels, max_size=channels)))
    alpha = np.array(draw(st.lists(st.integers(0, 3), min_size=channels, max_size=channels)))
    return Tensor(rows=rows, zp_in=draw(st.integers(-128, 127)), alpha=alpha, mult=mult,
                  shift=shift, offset=offset)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tensor=tensors_strategy(), in_gap=st.sampled_from([0.0, 0.3]),
       out_stall=st.sampled_from([0.0, 0.5]), seed=st.integers(0, 2**16))
def test_random_rows_bit_exact(tensor, in_gap, out_stall, seed):
    run = simulate(CONFIG, [tensor], in_gap=in_gap, out_stall=out_stall, seed=seed)
    check_bit_exact([tensor], run)


# ---------------------------------------------------------------------------------- edge cases
def _edge_tensor(name: str) -> Tensor:
    rng = np.random.default_rng(sum(map(ord, name)))
    c = 16
    if name == "all_min":
        return random_params(rng, c, alpha=1, rows=np.full((2, c), -128))
    if name == "all_max":
        return random_params(rng, c, alpha=3, rows=np.full((2, c), 127))
    if name == "all_min_mixed_alpha":                     # the factors alone make the variance
        return random_params(rng, c, zp_in=127, rows=np.full((2, c), -128))
    if name == "equal_rows_equal_alpha":
        return random_params(rng, c, alpha=2, rows=np.full((2, c), 37))
    if name == "input_at_zero_point":                      # xs = 0 whatever alpha is
        return random_params(rng, c, zp_in=-5, rows=np.full((2, c), -5))
    if name == "one_outlier":
        rows = np.zeros((3, c), dtype=np.int64)
        rows[0, 5], rows[1, 15], rows[2, 0] = 127, -128, 1
        return random_params(rng, c, zp_in=0, rows=rows)
    if name == "alpha_all_3_extremes":
        rows = np.tile(np.array([-128, 127] * (c // 2)), (2, 1))
        rows[1] = np.where(np.arange(c) < 3, 127, -128)
        return random_params(rng, c, alpha=3, zp_in=127, rows=rows)
    if name == "alpha_all_3_zp_min":
        return random_params(rng, c, alpha=3, zp_in=-128, n_rows=3)
    if name == "extreme_requantizers":
        t = random_params(rng, c, n_rows=3)
        t.mult = np.resize(np.array([-(1 << 15), (1 << 15) - 1, 0, 1]), c)
        t.shift = np.resize(np.array([SHIFT_MIN, SHIFT_MAX, 23, 17, 40]), c)
        t.offset = np.resize(np.array([-(1 << 31), (1 << 31) - 1, 0, 127 << 16, -128 << 16]), c)
        return t
    raise KeyError(name)


EDGE_CASES = ["all_min", "all_max", "all_min_mixed_alpha", "equal_rows_equal_alpha", "input_at_zero_point",
              "one_outlier", "alpha_all_3_extremes", "alpha_all_3_zp_min",
              "extreme_requantizers"]


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_bit_exact(name):
    tensor = _edge_tensor(name)
    run = simulate(CONFIG, [tensor], out_stall=0.3, seed=7)
    check_bit_exact([tensor], run)


@pytest.mark.parametrize("name", ["all_min", "all_max", "equal_rows_equal_alpha",
                                  "input_at_zero_point"])
def test_zero_variance_rows_give_clamped_offset(name):
    tensor = _edge_tensor(name)
    run = simulate(CONFIG, [tensor])
    rounded = (tensor.offset + (1 << 15)) >> 16          # K carries 16 fraction bits
    clamped = np.clip(rounded, intops.INT8_MIN, intops.INT8_MAX)
    np.testing.assert_array_equal(run.outputs[0], np.broadcast_to(clamped, tensor.rows.shape))


def test_many_rows_back_to_back_with_stalls():
    rng = np.random.default_rng(11)
    tensor = random_params(rng, 16, n_rows=8)
    run = simulate(CONFIG, [tensor], in_gap=0.2, out_stall=0.6, seed=3)
    check_bit_exact([tensor], run)


def test_output_stalled_for_long_stretches():
    """Long ready-low stretches fill every row slot; nothing is lost or reordered."""
    rng = np.random.default_rng(12)
    tensor = random_params(rng, 8, n_rows=7)
    run = simulate(CONFIG, [tensor], out_stall=0.9, seed=5)
    check_bit_exact([tensor], run)


@pytest.mark.parametrize("scramble", range(10, 130, 8))
def test_rows_after_a_reset_mid_work(scramble):
    """Random rows for ``scramble`` cycles leave statistics, the finish stage, the square
    root, the divider and the normalize pipeline part way; after the reset (the engine reset
    of a new run) the rows come out bit-exact: the reset-less registers never reach an
    output."""
    rng = np.random.default_rng(scramble)
    tensors = [random_params(rng, 16, n_rows=2), random_params(rng, 8, n_rows=3)]
    run = simulate(CONFIG, tensors, out_stall=0.3, seed=scramble, scramble=scramble)
    check_bit_exact(tensors, run)


def test_channel_count_and_parameters_change_between_tensors():
    rng = np.random.default_rng(13)
    tensors = [random_params(rng, 8, n_rows=2), random_params(rng, 16, n_rows=2),
               random_params(rng, 8, n_rows=1)]
    run = simulate(CONFIG, tensors, out_stall=0.2, seed=1)
    check_bit_exact(tensors, run)


@pytest.mark.parametrize("shift", [SHIFT_MIN, SHIFT_MAX])
def test_extreme_shifts_against_reference(shift):
    rng = np.random.default_rng(shift)
    tensor = random_params(rng, 8, n_rows=2)
    tensor.shift = np.full(8, shift)
    run = simulate(CONFIG, [tensor])
    check_bit_exact([tensor], run)


# ---------------------------------------------------------------------------------- timing
@pytest.mark.parametrize("channels, max_channels, n_rows", [
    (4, 16, 3),                                     # one beat a row: the first beat is the last
    (8, 16, 1), (16, 16, 1), (8, 16, 5), (16, 16, 5),
    (68, 128, 6), (72, 128, 6), (76, 128, 6),       # around B = 18, where the divider stops binding
])
def test_cycle_count_matches_layernorm_timing(channels, max_channels, n_rows):
    config = AcceleratorConfig(array_rows=LANES, array_cols=LANES, vector_lanes=LANES,
                               max_channels=max_channels)
    tensor = random_params(np.random.default_rng(channels), channels, n_rows=n_rows)
    run = simulate(config, [tensor])
    check_bit_exact([tensor], run)
    timing = layernorm_timing(config, channels)
    assert run.last_out[0] - run.first_in[0] == timing.total(n_rows)


def test_timing_formulas():
    timing = layernorm_timing(CONFIG, 8)
    assert (timing.latency, timing.interval) == (2 * 2 + 41, 18)
    big = AcceleratorConfig(max_channels=1024)
    timing = layernorm_timing(big, 768)
    assert (timing.latency, timing.interval) == (2 * 48 + 41, 48)


# ---------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("channels", [0, 2, 6, 20, 17, 4.0, True])
def test_layernorm_beats_rejects_bad_channel_counts(channels):
    with pytest.raises(ValueError):
        layernorm_beats(CONFIG, channels)


def test_layernorm_beats_accepts_multiples_of_lanes():
    assert [layernorm_beats(CONFIG, c) for c in (4, 8, 12, 16)] == [1, 2, 3, 4]


def test_component_rejects_unsupported_configs():
    with pytest.raises(ConfigError):
        PtfLayerNorm(AcceleratorConfig(max_channels=8192))
    with pytest.raises(ConfigError):
        PtfLayerNorm(AcceleratorConfig(max_channels=8))
    with pytest.raises(TypeError):
        PtfLayerNorm({"vector_lanes": 4})


# ---------------------------------------------------------------------------------- cocotb
def _cocotb_vectors(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    channels = 16
    random_tensor = random_params(rng, channels, n_rows=4)
    edge_rows = np.array([np.full(channels, 127), np.where(np.arange(channels) == 3, -128, 60)])
    timing_tensor = random_params(rng, channels, n_rows=3)
    timing = layernorm_timing(CONFIG, channels)

    def as_dict(t: Tensor) -> dict:
        return {
            "channels": t.channels, "zp_in": t.zp_in,
            "alpha": t.alpha.tolist(), "mult": t.mult.tolist(), "shift": t.shift.tolist(),
            "offset": t.offset.tolist(), "rows": t.rows.tolist(),
            "expected": t.expected().tolist(),
        }
    stalled = Tensor(rows=np.concatenate([random_tensor.rows, edge_rows]),
                     zp_in=random_tensor.zp_in, alpha=random_tensor.alpha,
                     mult=random_tensor.mult, shift=random_tensor.shift,
                     offset=random_tensor.offset)
    return {
        "lanes": LANES,
        "stalled": as_dict(stalled),
        "timed": as_dict(timing_tensor),
        "timed_total_cycles": timing.total(timing_tensor.rows.shape[0]),
        "seed": seed,
    }


@pytest.mark.cocotb
def test_cocotb_layernorm(tmp_path):
    run_cocotb(PtfLayerNorm(CONFIG), "ptf_layernorm", "cocotb_layernorm", tmp_path / "build",
               vectors=_cocotb_vectors(seed=2024))
