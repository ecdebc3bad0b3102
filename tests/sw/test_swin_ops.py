"""Swin's integer data movement and score bias against timm's own functions."""
import numpy as np
import pytest
import torch

from sw import intops
from sw.executor import run_attn_value, run_qk_scores
from sw.graph import Op

swin = pytest.importorskip("timm.models.swin_transformer")


@pytest.mark.parametrize("grid,window,shift", [((8, 8), (4, 4), (0, 0)), ((8, 8), (4, 4), (2, 2)),
                                                ((6, 12), (3, 4), (1, 3)), ((7, 7), (7, 7), (0, 0))])
def test_window_partition_matches_timm(grid, window, shift):
    rng = np.random.default_rng(0)
    h, w = grid
    x = rng.integers(-128, 128, size=(2, h * w, 5))
    t = torch.from_numpy(x).reshape(2, h, w, 5)
    ref = swin.window_partition(torch.roll(t, (-shift[0], -shift[1]), (1, 2)), window)
    got = intops.window_partition(x, grid, window, shift)
    assert np.array_equal(got, ref.reshape(2, h * w, 5).numpy())
    back = intops.window_reverse(got, grid, window, shift)
    assert np.array_equal(back, x)
    ref_back = torch.roll(swin.window_reverse(ref, window, h, w), shift, (1, 2))
    assert np.array_equal(back, ref_back.reshape(2, h * w, 5).numpy())


def test_patch_merge_matches_timm():
    rng = np.random.default_rng(1)
    x = rng.integers(-128, 128, size=(3, 6 * 4, 7))
    pm = swin.PatchMerging(dim=7)
    pm.norm = torch.nn.Identity()
    pm.reduction = torch.nn.Identity()
    ref = pm(torch.from_numpy(x).reshape(3, 6, 4, 7).double()).reshape(3, 6, 28).numpy()
    assert np.array_equal(intops.patch_merge(x, (6, 4)), ref)


def test_grid_errors():
    x = np.zeros((1, 64, 3), np.int64)
    with pytest.raises(ValueError, match="not a multiple"):
        intops.window_partition(x, (8, 8), (3, 3))
    with pytest.raises(ValueError, match="inside"):
        intops.window_partition(x, (8, 8), (4, 4), (4, 0))
    with pytest.raises(ValueError, match="grid"):
        intops.patch_merge(x, (4, 8))
    with pytest.raises(ValueError, match="even"):
        intops.patch_merge(np.zeros((1, 15, 3)), (3, 5))


def test_score_bias_saturates_and_checks():
    s = np.array([32000, -32000, 5, 0]).reshape(1, 1, 1, 2, 2)
    bias = np.array([1000, -1000, -5, 0]).reshape(1, 2, 2)
    mask = np.array([0, 0, -100, -32768]).reshape(1, 2, 2)
    assert intops.score_bias(s, bias, mask).ravel().tolist() == [32767, -32768, -100, -32768]
    with pytest.raises(ValueError, match="0 or negative"):
        intops.score_bias(s, None, np.array([0, 0, 1, 0]).reshape(1, 2, 2))
    with pytest.raises(ValueError, match="shape"):
        intops.score_bias(s, bias[:, :1], None)


def test_windowed_attention_is_per_window_attention():
    """Windowed qk_scores / attn_value equal the plain ops run on each window alone, with
    the bias and mask added per head and per window."""
    rng = np.random.default_rng(2)
    nw, n, heads, dh = 3, 4, 2, 5
    qkv = rng.integers(-20, 20, size=(2, nw * n, 3 * heads * dh))
    params = {"mult": np.array(23000), "shift": np.array(14)}
    bias = rng.integers(-300, 300, size=(heads, n, n))
    mask = np.where(rng.random((nw, n, n)) < 0.3, -500, 0)
    attrs = {"heads": heads, "head_dim": dh}
    win = Op("s", "qk_scores", ["qkv"], ["s"], dict(attrs, windows=nw),
             dict(params, bias=bias, mask=mask))
    got = run_qk_scores(win, qkv).reshape(2, nw, heads, n, n)
    for w in range(nw):
        plain = Op("s", "qk_scores", ["qkv"], ["s"], attrs, params)
        one = run_qk_scores(plain, qkv[:, w * n:(w + 1) * n])
        assert np.array_equal(got[:, w], np.clip(one + bias + mask[w], -32768, 32767))
    codes = rng.integers(0, 16, size=(2, nw * heads, n, n))
    av_attrs = dict(attrs, mode="lis", zp_out=3)
    av = run_attn_value(Op("a", "attn_value", ["c", "qkv"], ["o"], dict(av_attrs, windows=nw), params),
                        codes, qkv)
    for w in range(nw):
        one = run_attn_value(Op("a", "attn_value", ["c", "qkv"], ["o"], av_attrs, params),
                             codes[:, w * heads:(w + 1) * heads], qkv[:, w * n:(w + 1) * n])
        assert np.array_equal(av[:, w * n:(w + 1) * n], one)
