"""The integer graph: a small, serializable IR of integer ops with integer parameters.

A graph is a list of :class:`Op` in execution order over named tensors (:class:`Tensor`).
Every tensor is an integer array whose shape excludes the batch axis.  Op parameters
(``Op.params``) are integer numpy arrays only: int8 weights, int32 biases, dyadic
requantizers, PTF shifts, LayerNorm constants, GELU tables.  Float values (scales, the
float LayerNorm affine, ...) ride along in ``Op.meta`` / ``Tensor.scale`` as metadata: the
integer executor never reads them.

File format (``.npz``)
    One numpy ``.npz`` archive.  Entry ``__header__`` holds UTF-8 JSON: format name and
    version, tensors, ops (kind, inputs, outputs, attrs, names of their arrays), graph
    inputs/outputs, free-form ``info``, and a SHA-256 of every array.  Every array is an
    entry ``<op name>/<param>`` (integer params), ``<op name>/meta/<key>`` (float
    metadata) or ``host/<key>`` (float arrays the host applies before the graph input, e.g.
    a patch embedding kept in float).  A file of another format version, or one whose arrays do not match their
    checksums, is refused with :class:`GraphFormatError`.  Files are written atomically
    (temporary file, then rename): an interrupted save never leaves a half-written file.

Op kinds (inputs -> output; shapes per sample)
    ``patchify``     image int8 [C, H, W] -> [T, C p p]; attrs ``patch``.
    ``linear``       x int8 [..., K] -> [..., N]; params ``weight`` int8 [N, K], ``bias``
                     int32 [N], ``mult`` int16 [N], ``shift`` [N]; attrs ``zp_out``,
                     ``out_bits`` (8 or 16).  ``requantize(linear(x, W, b), mult, shift, zp_out)``.
    ``concat_tokens`` x [T, D] -> [P + T, D]; params ``tokens`` int8 [P, D] (prefix tokens
                     already quantized at x's scale and zero point).
    ``add``          a, b int8 (b either a second input or param ``const`` int8) -> int8;
                     params ``mult_a``, ``mult_b``, ``shift`` (per channel [D]); attrs
                     ``zp_a``, ``zp_b``, ``zp_out``.  :func:`sw.intops.residual_add`.
    ``layernorm``    x int8 [..., C] -> int8; params ``alpha`` [C], ``mult`` [C], ``shift`` [C],
                     ``offset`` [C] (:func:`sw.intops.ln_params`); attrs ``zp_in``.
                     :func:`sw.intops.ptf_layernorm`.
    ``qk_scores``    qkv int8 [T, 3D] -> int16 [H, T, T]; params ``mult``, ``shift`` (scalars);
                     attrs ``heads``, ``head_dim``.  Per head ``requantize(q_h @ k_h.T)`` to
                     the softmax input scale ``ln 2 / 2**frac_bits``, clamped to int16.
    ``softmax``      int16 [H, T, T] -> uint8 [H, T, T]; attrs ``mode`` ("lis": 4-bit log2
                     codes, or "uniform": 8-bit probabilities), ``frac_bits``, ``b_int``, ``c_int``.
    ``attn_value``   codes [H, T, T], qkv int8 [T, 3D] -> int8 [T, D]; params ``mult``,
                     ``shift`` (scalars); attrs ``heads``, ``head_dim``, ``mode``, ``zp_out``.
                     Heads are concatenated in head order, as timm does before ``proj``.
    ``gelu``         int8 -> int8; params ``table`` int8 [256].
    ``select_tokens`` x [T, D] -> [n D]; attrs ``indices`` (flattened in that order).
    ``token_mean``   x [T, D] -> [D]; params ``mult``, ``shift`` [D]; attrs ``start``,
                     ``zp_in``, ``zp_out``.

Swin (windows, the cyclic shift, patch merging; tokens of a ``[H, W]`` grid in row-major order)
    ``window_partition`` x [H W, C] -> [nW wh ww, C]; attrs ``grid`` [H, W], ``window``
                     [wh, ww], ``shift`` [sh, sw].  Roll by ``-shift``, then windows in
                     row-major order, tokens row-major inside each.  :func:`sw.intops.window_partition`.
    ``window_reverse`` the inverse (roll by ``+shift``); same attrs.
    ``patch_merge``  x [H W, C] -> [(H/2)(W/2), 4C]; attrs ``grid``.  :func:`sw.intops.patch_merge`.
    ``qk_scores`` / ``softmax`` / ``attn_value`` take an optional attr ``windows`` (nW,
                     default 1): qkv is [nW N, 3D], the scores [nW H, N, N] window-major,
                     attention runs per window.  ``qk_scores`` takes optional params ``bias``
                     int16 [H, N, N] (relative position bias at the scores' scale) and ``mask``
                     int16 [nW, N, N] (0 or negative): :func:`sw.intops.score_bias` after the
                     requantization.

    ``linear`` may carry ``out_bits`` below 8 (6: PTQ4ViT's W6A6; 2-4: Q-ViT) and
    ``layernorm`` and ``attn_value`` an optional ``out_bits`` attr (default 8): they clamp to
    that signed width.  ``linear`` may carry ``weight_bits`` (Q-ViT: 2-4): its int8 weights
    then hold values of that signed width (range-checked by the executor).

Op kinds of I-ViT (``info["method"] == "ivit"``; :mod:`sw.methods.ivit`)
    ``ilayernorm``   x int16 [..., C] (symmetric) -> int8; params ``mult``, ``shift``,
                     ``offset`` [C] (:func:`sw.intops.ilayernorm_params`).
                     :func:`sw.intops.ilayernorm`.
    ``add_wide``     a, b int16 (b a second input or param ``const``) -> int16, symmetric;
                     params ``mult_a``, ``mult_b``, ``shift`` (per channel [D]); attrs
                     ``out_bits``.  :func:`sw.intops.residual_add_wide`.
    ``shiftmax``     int16 [H, T, T] -> uint16 probabilities at ``2**-(out_bits-1)``; attrs
                     ``x0``, ``n``, ``out_bits``.  :func:`sw.intops.shiftmax`.
    ``attn_value_wide`` probs [H, T, T], qkv int8 [T, 3D] -> int8 [T, D]; params ``mult``,
                     ``shift`` (scalars); attrs ``heads``, ``head_dim``, ``zp_out``.
    ``shiftgelu``    int8 -> int8; params ``mult``, ``shift`` (scalars); attrs ``x0``, ``n``,
                     ``zp_out``.  :func:`sw.intops.shiftgelu`.

Op kinds of PTQ4ViT (``info["method"] == "ptq4vit"``; :mod:`sw.methods.ptq4vit`)
    ``twin_softmax`` int16 [H, T, T] -> unsigned ``bits``-bit twin codes; attrs ``frac_bits``,
                     ``b_int``, ``c_int``, ``m``, ``bits``.  :func:`sw.intops.twin_softmax`.
    ``attn_value_twin`` codes [H, T, T], qkv int8 [T, 3D] -> [T, D]; params ``mult``,
                     ``shift`` (scalars); attrs ``heads``, ``head_dim``, ``zp_out``, ``m``,
                     ``bits``, ``out_bits``.  :func:`sw.intops.attn_value_twin`.
    ``twin_gelu``    int8 -> signed twin codes; params ``table`` int8 [256]; attrs ``m``,
                     ``bits``.  :func:`sw.intops.gelu_lut`.

    A twin tensor's ``scale`` is its small step; its producer's ``m`` and ``bits`` decode it.
    ``linear_twin``  signed twin codes [..., K] -> [..., N]; params ``weight``, ``bias``,
                     ``mult``, ``shift``; attrs ``zp_out``, ``out_bits``, ``m``, ``bits``.
                     :func:`sw.intops.linear_twin`, then :func:`sw.intops.requantize`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_NAME = "vitamin-integer-graph"
FORMAT_VERSION = 2

#: For each op kind: (number of inputs, required integer params, required attrs).
OP_SCHEMA: dict[str, tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...]]] = {
    "patchify": ((1,), (), ("patch",)),
    "linear": ((1,), ("weight", "bias", "mult", "shift"), ("zp_out", "out_bits")),
    "concat_tokens": ((1,), ("tokens",), ()),
    "add": ((1, 2), ("mult_a", "mult_b", "shift"), ("zp_a", "zp_b", "zp_out")),
    "layernorm": ((1,), ("alpha", "mult", "shift", "offset"), ("zp_in",)),
    "qk_scores": ((1,), ("mult", "shift"), ("heads", "head_dim")),
    "softmax": ((1,), (), ("mode", "frac_bits", "b_int", "c_int")),
    "attn_value": ((2,), ("mult", "shift"), ("heads", "head_dim", "mode", "zp_out")),
    "gelu": ((1,), ("table",), ()),
    "select_tokens": ((1,), (), ("indices",)),
    "token_mean": ((1,), ("mult", "shift"), ("start", "zp_in", "zp_out")),
    # Swin
    "window_partition": ((1,), (), ("grid", "window", "shift")),
    "window_reverse": ((1,), (), ("grid", "window", "shift")),
    "patch_merge": ((1,), (), ("grid",)),
    # I-ViT
    "ilayernorm": ((1,), ("mult", "shift", "offset"), ()),
    "add_wide": ((1, 2), ("mult_a", "mult_b", "shift"), ("out_bits",)),
    "shiftmax": ((1,), (), ("x0", "n", "out_bits")),
    "attn_value_wide": ((2,), ("mult", "shift"), ("heads", "head_dim", "zp_out")),
    "shiftgelu": ((1,), ("mult", "shift"), ("x0", "n", "zp_out")),
    # PTQ4ViT
    "twin_softmax": ((1,), (), ("frac_bits", "b_int", "c_int", "m", "bits")),
    "attn_value_twin": ((2,), ("mult", "shift"), ("heads", "head_dim", "zp_out", "m", "bits", "out_bits")),
    "twin_gelu": ((1,), ("table",), ("m", "bits")),
    "linear_twin": ((1,), ("weight", "bias", "mult", "shift"), ("zp_out", "out_bits", "m", "bits")),
}

#: The quantization methods a graph can come from (``info["method"]``; files without the
#: field are FQ-ViT graphs).
METHODS = ("fqvit", "ivit", "ptq4vit", "qvit")


def graph_method(graph: "IntGraph") -> str:
    """The method that produced ``graph`` (``"fqvit"`` for files written before the field)."""
    return str(graph.info.get("method", "fqvit"))


class GraphFormatError(ValueError):
    """A graph file or graph object is malformed, damaged or of another version."""


@dataclass
class Tensor:
    """An integer tensor of the graph.

    ``scale`` (float, or a list of per-channel floats) and ``zero_point`` give its real
    value ``scale * (q - zero_point)``; they are metadata for the host and for reports.
    """
    name: str
    shape: tuple[int, ...]
    bits: int = 8
    signed: bool = True
    scale: float | list[float] | None = None
    zero_point: int = 0

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "bits": self.bits,
                "signed": self.signed, "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_json(cls, d: dict) -> "Tensor":
        return cls(d["name"], tuple(d["shape"]), d["bits"], d["signed"], d["scale"], d["zero_point"])

    @property
    def range(self) -> tuple[int, int]:
        """Smallest and largest integer the tensor's width holds."""
        if self.signed:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1


@dataclass
class Op:
    """One op: ``kind`` from :data:`OP_SCHEMA`, integer ``params``, float ``meta``."""
    name: str
    kind: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class IntGraph:
    """Ops in execution order, the tensors they read and write, and graph inputs/outputs."""
    tensors: dict[str, Tensor]
    ops: list[Op]
    inputs: list[str]
    outputs: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    #: Float arrays for the host side of the graph input (never read by the executor).
    host: dict[str, np.ndarray] = field(default_factory=dict)

    def op(self, name: str) -> Op:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)

    def producer(self) -> dict[str, Op]:
        """Map from tensor name to the op that writes it."""
        return {t: o for o in self.ops for t in o.outputs}

    def validate(self) -> None:
        """Check the graph's structure; raise :class:`GraphFormatError` on the first fault."""
        known = set(self.inputs)
        for name in self.inputs + self.outputs:
            if name not in self.tensors:
                raise GraphFormatError(f"graph input/output {name!r} has no tensor entry")
        names = set()
        for o in self.ops:
            if o.name in names or "/" in o.name:
                raise GraphFormatError(f"op name {o.name!r} is duplicated or contains '/'")
            names.add(o.name)
            if o.kind not in OP_SCHEMA:
                raise GraphFormatError(f"op {o.name!r}: unknown kind {o.kind!r}")
            n_in, req_params, req_attrs = OP_SCHEMA[o.kind]
            if len(o.inputs) not in n_in:
                raise GraphFormatError(f"op {o.name!r} ({o.kind}) takes {n_in} inputs, has {len(o.inputs)}")
            for p in req_params:
                if p not in o.params:
                    raise GraphFormatError(f"op {o.name!r} ({o.kind}) lacks param {p!r}")
            for p, v in o.params.items():
                if not isinstance(v, np.ndarray) or v.dtype.kind not in "iu":
                    raise GraphFormatError(f"op {o.name!r}: param {p!r} is not an integer array")
            for a in req_attrs:
                if a not in o.attrs:
                    raise GraphFormatError(f"op {o.name!r} ({o.kind}) lacks attr {a!r}")
            if o.kind in ("add", "add_wide") and len(o.inputs) == 1 and "const" not in o.params:
                raise GraphFormatError(f"op {o.name!r}: a one-input add needs param 'const'")
            for t in o.inputs:
                if t not in known:
                    raise GraphFormatError(f"op {o.name!r} reads {t!r} before it is written")
            for t in o.outputs:
                if t not in self.tensors:
                    raise GraphFormatError(f"op {o.name!r} writes {t!r}, which has no tensor entry")
                known.add(t)
        for t in self.outputs:
            if t not in known:
                raise GraphFormatError(f"graph output {t!r} is never written")

    # ------------------------------------------------------------------ serialization
    def save(self, path: str | os.PathLike) -> None:
        """Write the graph to ``path`` (``.npz``) atomically."""
        self.validate()
        arrays: dict[str, np.ndarray] = {f"host/{k}": v for k, v in self.host.items()}
        ops_json = []
        for o in self.ops:
            meta_json, meta_arrays = {}, []
            for k, v in o.meta.items():
                if isinstance(v, np.ndarray):
                    arrays[f"{o.name}/meta/{k}"] = v
                    meta_arrays.append(k)
                else:
                    meta_json[k] = v
            for k, v in o.params.items():
                arrays[f"{o.name}/{k}"] = v
            ops_json.append({"name": o.name, "kind": o.kind, "inputs": o.inputs,
                             "outputs": o.outputs, "attrs": o.attrs,
                             "params": sorted(o.params), "meta": meta_json,
                             "meta_arrays": meta_arrays})
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                  "tensors": [t.to_json() for t in self.tensors.values()],
                  "ops": ops_json, "inputs": self.inputs, "outputs": self.outputs,
                  "host": sorted(self.host),
                  "info": self.info,
                  "checksums": {k: _digest(v) for k, v in arrays.items()}}
        raw = json.dumps(header, default=_json_default).encode()
        arrays["__header__"] = np.frombuffer(raw, dtype=np.uint8)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(Path(path), buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "IntGraph":
        """Read a graph file; refuse another version or a damaged file."""
        path = Path(path)
        if not path.is_file():
            raise GraphFormatError(f"{path}: no such file")
        try:
            with np.load(path, allow_pickle=False) as z:
                files = {k: z[k] for k in z.files}
        except Exception as exc:  # zip, zlib and numpy errors all mean a damaged file
            raise GraphFormatError(f"{path}: not a readable integer-graph file ({exc})") from None
        if "__header__" not in files:
            raise GraphFormatError(f"{path}: not an integer-graph file (no header)")
        try:
            header = json.loads(files.pop("__header__").tobytes().decode())
        except ValueError:
            raise GraphFormatError(f"{path}: damaged header") from None
        if header.get("format") != FORMAT_NAME:
            raise GraphFormatError(f"{path}: not an integer-graph file")
        if header.get("version") != FORMAT_VERSION:
            raise GraphFormatError(f"{path}: format version {header.get('version')} "
                                   f"is not supported (this vitamin reads version {FORMAT_VERSION})")
        checksums = header.get("checksums", {})
        if set(checksums) != set(files):
            raise GraphFormatError(f"{path}: damaged file (array set does not match the header)")
        for k, v in files.items():
            if _digest(v) != checksums[k]:
                raise GraphFormatError(f"{path}: damaged file (array {k!r} fails its checksum)")
        try:
            tensors = {d["name"]: Tensor.from_json(d) for d in header["tensors"]}
            ops = []
            for d in header["ops"]:
                params = {p: files[f"{d['name']}/{p}"] for p in d["params"]}
                meta = dict(d["meta"])
                meta.update({k: files[f"{d['name']}/meta/{k}"] for k in d["meta_arrays"]})
                ops.append(Op(d["name"], d["kind"], list(d["inputs"]), list(d["outputs"]),
                              dict(d["attrs"]), params, meta))
            host = {k: files[f"host/{k}"] for k in header["host"]}
            graph = cls(tensors, ops, list(header["inputs"]), list(header["outputs"]),
                        dict(header.get("info", {})), host)
        except (KeyError, TypeError) as exc:
            raise GraphFormatError(f"{path}: damaged header ({exc})") from None
        graph.validate()
        return graph


def _digest(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _json_default(v):
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"cannot serialise {type(v).__name__}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)        # mkstemp's 0600 would surprise the user
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
