"""Integer graph IR: validation, save / load round trip, version and damage refusal."""
from __future__ import annotations

import json

import numpy as np
import pytest

from compiler.testgraphs import tiny_vit
from sw.graph import FORMAT_VERSION, GraphFormatError, IntGraph, Op


def _graphs_equal(a: IntGraph, b: IntGraph) -> None:
    assert a.inputs == b.inputs and a.outputs == b.outputs and a.info == b.info
    assert {k: v.to_json() for k, v in a.tensors.items()} == {k: v.to_json() for k, v in b.tensors.items()}
    assert [(o.name, o.kind, o.inputs, o.outputs, o.attrs) for o in a.ops] == \
           [(o.name, o.kind, o.inputs, o.outputs, o.attrs) for o in b.ops]
    for oa, ob in zip(a.ops, b.ops):
        assert oa.params.keys() == ob.params.keys()
        for k in oa.params:
            assert np.array_equal(oa.params[k], ob.params[k]) and oa.params[k].dtype == ob.params[k].dtype


def test_round_trip(tmp_path):
    g = tiny_vit(seed=1, depth=2)
    g.host["patch_weight"] = np.arange(6.0).reshape(2, 3)
    g.ops[0].meta["gamma"] = np.linspace(0, 1, 5)
    g.ops[0].meta["eps"] = 1e-6
    path = tmp_path / "g.npz"
    g.save(path)
    h = IntGraph.load(path)
    _graphs_equal(g, h)
    assert np.array_equal(h.host["patch_weight"], g.host["patch_weight"])
    assert np.array_equal(h.ops[0].meta["gamma"], g.ops[0].meta["gamma"]) and h.ops[0].meta["eps"] == 1e-6


def _rewrite(path, out, edit_header=None, edit_arrays=None):
    with np.load(path) as z:
        files = {k: z[k] for k in z.files}
    header = json.loads(files["__header__"].tobytes().decode())
    if edit_header:
        edit_header(header)
    if edit_arrays:
        edit_arrays(files)
    files["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(out, **files)


def test_other_version_refused(tmp_path):
    tiny_vit().save(tmp_path / "g.npz")
    _rewrite(tmp_path / "g.npz", tmp_path / "v.npz", lambda h: h.update(version=FORMAT_VERSION + 1))
    with pytest.raises(GraphFormatError, match="version"):
        IntGraph.load(tmp_path / "v.npz")


def test_damaged_array_refused(tmp_path):
    tiny_vit().save(tmp_path / "g.npz")

    def flip(files):
        k = next(k for k in files if k.endswith("/weight"))
        files[k] = files[k].copy()
        files[k].flat[0] ^= 1
    _rewrite(tmp_path / "g.npz", tmp_path / "d.npz", edit_arrays=flip)
    with pytest.raises(GraphFormatError, match="checksum"):
        IntGraph.load(tmp_path / "d.npz")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_unreadable_files_refused(tmp_path, damage):
    tiny_vit().save(tmp_path / "g.npz")
    raw = (tmp_path / "g.npz").read_bytes()
    data = {"truncate": raw[: len(raw) // 2], "garbage": b"\x00not a zip" * 10, "empty": b""}[damage]
    (tmp_path / "x.npz").write_bytes(data)
    with pytest.raises(GraphFormatError):
        IntGraph.load(tmp_path / "x.npz")


def test_missing_file_refused(tmp_path):
    with pytest.raises(GraphFormatError, match="no such file"):
        IntGraph.load(tmp_path / "nope.npz")


def test_validate_catches_structural_faults():
    g = tiny_vit()
    g.ops[1].inputs = ["does_not_exist"]
    with pytest.raises(GraphFormatError, match="before it is written"):
        g.validate()
    g = tiny_vit()
    g.ops.append(Op("bad", "convolution", [g.outputs[0]], [g.outputs[0]]))
    with pytest.raises(GraphFormatError, match="unknown kind"):
        g.validate()
    g = tiny_vit()
    g.ops[1].params["weight"] = g.ops[1].params["weight"].astype(np.float32)
    with pytest.raises(GraphFormatError, match="integer"):
        g.validate()


def test_failed_save_leaves_no_file(tmp_path):
    g = tiny_vit()
    g.ops[1].params["weight"] = g.ops[1].params["weight"].astype(np.float32)   # invalid
    with pytest.raises(GraphFormatError):
        g.save(tmp_path / "g.npz")
    assert list(tmp_path.iterdir()) == []
    good = tiny_vit()
    good.save(tmp_path / "g.npz")
    before = (tmp_path / "g.npz").read_bytes()
    with pytest.raises(GraphFormatError):
        g.save(tmp_path / "g.npz")                   # does not clobber the good file
    assert (tmp_path / "g.npz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]
