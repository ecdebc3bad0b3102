"""Tests of the digits data split, the digits ViT trainer and its weight cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from timm.models.vision_transformer import VisionTransformer

from sw import digits
from sw.digits import (DIGITS_IMAGE, cache_path, digits_model_config, evaluate_float,
                       load_digits_split, load_or_train, train_digits_vit)


def _expected_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images prepared independently: nearest upsampling is pixel repetition."""
    bundled = load_digits()
    repeat = DIGITS_IMAGE // 8
    scaled = bundled.images / 16.0
    upsampled = np.repeat(np.repeat(scaled, repeat, axis=1), repeat, axis=2)
    return ((upsampled - 0.5) / 0.5)[:, None].astype(np.float32), bundled.target


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Image-and-label rows in lexicographic order, to compare data sets as multisets."""
    rows = np.concatenate([x.reshape(len(x), -1), y[:, None].astype(np.float32)], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_split_shapes_dtypes_and_normalization():
    split = load_digits_split()
    assert split.train_x.shape == (1347, 1, DIGITS_IMAGE, DIGITS_IMAGE)
    assert split.test_x.shape == (450, 1, DIGITS_IMAGE, DIGITS_IMAGE)
    assert split.train_x.dtype == split.test_x.dtype == np.float32
    assert split.train_y.dtype == split.test_y.dtype == np.int64
    assert split.train_y.shape == (1347,) and split.test_y.shape == (450,)
    for x in (split.train_x, split.test_x):
        assert x.min() == -1.0 and x.max() == 1.0


def test_split_is_a_partition_of_the_prepared_digits():
    split = load_digits_split()
    all_x, all_y = _expected_images()
    together_x = np.concatenate([split.train_x, split.test_x])
    together_y = np.concatenate([split.train_y, split.test_y])
    np.testing.assert_array_equal(_sorted_rows(together_x, together_y),
                                  _sorted_rows(all_x, all_y))


def test_split_is_stratified():
    split = load_digits_split()
    all_y = load_digits().target
    for label in range(10):
        in_class = int((all_y == label).sum())
        held_out = int((split.test_y == label).sum())
        assert abs(held_out - 0.25 * in_class) <= 1, (label, held_out, in_class)


def test_split_depends_only_on_seed():
    a, b, other = load_digits_split(0), load_digits_split(0), load_digits_split(1)
    for field in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.test_y, other.test_y)


def test_config_builds_stock_timm_vit():
    config = digits_model_config()
    model = VisionTransformer(**config)
    assert config["img_size"] == DIGITS_IMAGE and config["in_chans"] == 1
    assert model.global_pool == "token"
    logits = model(torch.zeros(2, 1, DIGITS_IMAGE, DIGITS_IMAGE))
    assert logits.shape == (2, 10)


def test_short_training_beats_chance_and_restores_global_state():
    rng_before = torch.random.get_rng_state()
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    model, split = train_digits_vit(seed=0, epochs=12, progress=False)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before
    assert torch.are_deterministic_algorithms_enabled() == deterministic_before
    assert isinstance(model, VisionTransformer) and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    top1 = float((evaluate_float(model, split.test_x) == split.test_y).mean())
    assert top1 > 0.5, top1  # chance is 0.1; 12 epochs reach about 0.74


def test_same_seed_gives_identical_weights():
    first, _ = train_digits_vit(seed=0, epochs=2, progress=False)
    second, _ = train_digits_vit(seed=0, epochs=2, progress=False)
    other_seed, _ = train_digits_vit(seed=1, epochs=2, progress=False)
    assert _state_dicts_equal(first, second)
    assert not _state_dicts_equal(first, other_seed)


def test_evaluate_float_matches_direct_argmax_across_batches():
    model, split = train_digits_vit(seed=0, epochs=1, progress=False)
    with torch.no_grad():
        direct = model(torch.from_numpy(split.test_x)).argmax(dim=-1).numpy()
    batched = evaluate_float(model, split.test_x, batch=7)
    assert batched.dtype == np.int64
    np.testing.assert_array_equal(batched, direct)
    assert evaluate_float(model, split.test_x[:0]).shape == (0,)


@pytest.fixture
def counted_training(monkeypatch):
    """Make load_or_train train for one epoch and count how often it trains."""
    calls = []
    train = digits.train_digits_vit

    def counting(**kwargs):
        calls.append(kwargs)
        return train(**kwargs)

    monkeypatch.setattr(digits, "DEFAULT_EPOCHS", 1)
    monkeypatch.setattr(digits, "train_digits_vit", counting)
    return calls


def test_cache_round_trip(tmp_path, counted_training):
    trained, split = load_or_train(seed=1, cache_dir=tmp_path, progress=False)
    assert len(counted_training) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["digits_vit_seed1.pt"]
    reloaded, reloaded_split = load_or_train(seed=1, cache_dir=tmp_path, progress=False)
    assert len(counted_training) == 1
    assert not reloaded.training
    assert _state_dicts_equal(trained, reloaded)
    np.testing.assert_array_equal(reloaded_split.test_x, split.test_x)
    np.testing.assert_array_equal(evaluate_float(reloaded, split.test_x),
                                  evaluate_float(trained, split.test_x))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other_recipe"])
def test_damaged_cache_is_retrained(tmp_path, counted_training, damage):
    load_or_train(seed=0, cache_dir=tmp_path, progress=False, retrain=True)
    assert len(counted_training) == 1
    path = cache_path(0, tmp_path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        saved = torch.load(path, weights_only=True)
        saved["key"]["config"]["embed_dim"] = 32
        torch.save(saved, path)
    model, split = load_or_train(seed=0, cache_dir=tmp_path, progress=False, retrain=True)
    assert len(counted_training) == 2
    reloaded, _ = load_or_train(seed=0, cache_dir=tmp_path, progress=False, retrain=True)
    assert len(counted_training) == 2
    assert _state_dicts_equal(model, reloaded)


def test_cache_path_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_path(3) == tmp_path / "xdg" / "vitamin" / "digits_vit_seed3.pt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_path(3) == tmp_path / "home" / ".cache" / "vitamin" / "digits_vit_seed3.pt"
    assert cache_path(3, tmp_path / "elsewhere") == tmp_path / "elsewhere" / "digits_vit_seed3.pt"


def test_shipped_model_is_used_for_its_seed_without_training(tmp_path, monkeypatch):
    """Seed 0 comes from the package (the same float model on every machine); its file was
    written by the current training recipe (load_shipped refuses another recipe's file)."""
    calls = []
    monkeypatch.setattr(digits, "train_digits_vit", lambda **kw: calls.append(kw))
    model, split = load_or_train(seed=0, cache_dir=tmp_path, progress=False)
    assert calls == [] and list(tmp_path.iterdir()) == []
    assert _state_dicts_equal(model, digits.load_shipped(0))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    top1 = float((evaluate_float(model, split.test_x) == split.test_y).mean())
    assert top1 >= 0.96, top1          # docs/ACCURACY.md: 97.33 %


def test_shipped_model_of_another_recipe_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(digits, "DEFAULT_EPOCHS", digits.DEFAULT_EPOCHS + 1)
    with pytest.raises(RuntimeError, match="another recipe"):
        digits.load_shipped(0)
    assert digits.load_shipped(5) is None


def test_export_round_trip(tmp_path, monkeypatch):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        model = digits.build_digits_model().eval()
    monkeypatch.setattr(digits, "SHIPPED_DIR", tmp_path)
    digits.export_shipped(model, 0, digits.shipped_path(0))
    assert _state_dicts_equal(digits.load_shipped(0), model)
