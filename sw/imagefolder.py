"""Image folders (``torchvision.datasets.ImageFolder`` layout) for calibration and evaluation.

``ROOT/<class>/<image>`` (any depth below the class folder), classes in sorted folder-name
order, images with torchvision's extensions (``.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff
.webp``), e.g. the ImageNet validation set sorted into its 1000 synset folders.  Every image
goes through the model's own evaluation preprocessing
(``timm.data.resolve_data_config`` + ``timm.data.create_transform``: resize, center crop,
normalize) and is loaded by a ``torch.utils.data.DataLoader`` with worker processes.

Labels: the model's class index of each folder comes from, in this order,

1. a class-map file (``--class-map``): a JSON object ``{"folder": index}``, or a text file
   whose line ``i`` starts with the folder name of class ``i`` (the format of ImageNet's
   ``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca``);
2. for folders that are all WordNet ids (``n01440764``) and a model timm knows as an
   ImageNet classifier (1k, 12k, 22k): timm's synset list of that label set, so a folder
   holding a subset of ImageNet's classes gets the right indices;
3. otherwise the sorted folder order (torchvision's), which needs exactly as many folders as
   the model has classes.

Every problem (a missing or empty folder, an unreadable image, a folder without a class
index, a class-count mismatch) is an :class:`ImageFolderError` with a one-line message.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ImageFolderError", "ImageFolder", "open_folder", "data_config", "class_indices",
           "batches", "sample_indices", "load_images", "default_workers"]

_WNID = re.compile(r"^n\d{8}$")


class ImageFolderError(ValueError):
    """An image folder that cannot be used, with a one-line reason."""


def default_workers() -> int:
    """Data-loading worker processes: the cores of this process, at most 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def data_config(model) -> dict:
    """The model's evaluation preprocessing (``timm.data.resolve_data_config``)."""
    from timm.data import resolve_data_config
    return resolve_data_config({}, model=model)


@dataclass
class ImageFolder:
    """The images of a folder, each with its folder's class index."""
    root: Path
    classes: list[str]                   # folder names, sorted
    samples: list[tuple[str, int]]       # (path, folder index)
    transform: object

    def __len__(self) -> int:
        return len(self.samples)


def open_folder(root, model) -> ImageFolder:
    """Scan ``root`` (ImageFolder layout) and attach the model's evaluation transform."""
    from timm.data import create_transform
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
    root = Path(root)
    if not root.exists():
        raise ImageFolderError(f"no such folder: {root}")
    if not root.is_dir():
        raise ImageFolderError(f"{root} is not a folder")
    try:
        classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    except OSError as exc:
        raise ImageFolderError(f"cannot read folder {root}: {exc.strerror or exc}") from None
    if not classes:
        raise ImageFolderError(f"{root} has no class folders (expected {root}/<class>/<image>)")
    samples = make_dataset(str(root), {c: i for i, c in enumerate(classes)}, IMG_EXTENSIONS, allow_empty=True)
    if not samples:
        raise ImageFolderError(f"{root} has {len(classes)} class folder(s) but no images "
                               f"({', '.join(IMG_EXTENSIONS)})")
    return ImageFolder(root, classes, samples, create_transform(**data_config(model)))


def _read_class_map(path) -> dict[str, int]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ImageFolderError(f"cannot read class map {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ImageFolderError(f"class map {path} is not a text file") from None
    if text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except ValueError as exc:
            raise ImageFolderError(f"class map {path}: not valid JSON ({exc})") from None
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in mapping.values()):
            raise ImageFolderError(f"class map {path}: every value must be an integer class index")
        return {str(k): v for k, v in mapping.items()}
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ImageFolderError(f"class map {path}: a folder name appears twice")
    return {n: i for i, n in enumerate(names)}


def class_indices(classes: list[str], model, num_classes: int, class_map=None) -> tuple[list[int], str]:
    """The model's class index of each folder, and how it was found (see the module doc)."""
    if class_map is not None:
        mapping, how = _read_class_map(class_map), f"class map {class_map}"
    elif all(_WNID.match(c) for c in classes) and _imagenet_synsets(model, num_classes):
        synsets = _imagenet_synsets(model, num_classes)
        mapping, how = {s: i for i, s in enumerate(synsets)}, f"ImageNet synsets ({len(synsets)} classes)"
    else:
        if len(classes) != num_classes:
            raise ImageFolderError(
                f"class-count mismatch: the folder has {len(classes)} classes, the model's head "
                f"{num_classes} (name the folders by WordNet id or give --class-map FILE)")
        return list(range(num_classes)), "sorted folder names"
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise ImageFolderError(f"{how} has no class index for folder(s) {', '.join(missing[:5])}"
                               + (" ..." if len(missing) > 5 else ""))
    idx = [mapping[c] for c in classes]
    bad = [i for i in idx if not 0 <= i < num_classes]
    if bad:
        raise ImageFolderError(f"class-count mismatch: {how} gives class index {bad[0]}, "
                               f"the model's head has {num_classes} classes")
    return idx, how


def _imagenet_synsets(model, num_classes: int) -> list[str] | None:
    """timm's WordNet ids of the model's ImageNet label set, if it is one of ``num_classes``."""
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset
        subset = infer_imagenet_subset(model)
        names = ImageNetInfo(subset).label_names() if subset else None
    except Exception:                 # an unknown label set: no synset map
        return None
    return list(names) if names is not None and len(names) == num_classes else None


def sample_indices(n_images: int, limit: int | None, seed: int) -> np.ndarray:
    """All images in folder order, or ``limit`` of them drawn at random (seeded) and kept in
    folder order (the first ``limit`` of a sorted folder would be its first classes only)."""
    if limit is None or limit >= n_images:
        return np.arange(n_images)
    return np.sort(np.random.default_rng(seed).choice(n_images, size=limit, replace=False))


class _Dataset:
    """``(image tensor, folder index, error text)``; a failed image yields its error instead
    of raising inside a worker (which would come back as a multi-line traceback)."""

    def __init__(self, folder: ImageFolder, indices: np.ndarray, shape):
        self.folder, self.indices, self.shape = folder, indices, tuple(shape)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        import torch
        from PIL import Image
        path, cls = self.folder.samples[int(self.indices[i])]
        try:
            with open(path, "rb") as f:
                img = Image.open(f)
                img = img.convert("RGB")
            x = self.folder.transform(img)
            if tuple(x.shape) != self.shape:
                raise ValueError(f"preprocessed to {tuple(x.shape)}, expected {self.shape}")
        except Exception as exc:      # PIL and transforms raise many kinds for bad files
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return torch.zeros(self.shape), cls, f"cannot read image {path}: {msg}"
        return x, cls, ""


def batches(folder: ImageFolder, indices: np.ndarray, shape, batch: int, workers: int):
    """Yield ``(float32 images [n, C, H, W], folder indices [n])`` in order, loaded by
    ``workers`` processes; an unreadable image raises :class:`ImageFolderError`."""
    from torch.utils.data import DataLoader
    loader = DataLoader(_Dataset(folder, indices, shape), batch_size=batch, shuffle=False,
                        num_workers=workers, persistent_workers=False)
    for x, cls, errors in loader:
        for e in errors:
            if e:
                raise ImageFolderError(e)
        yield x.numpy(), cls.numpy()


def load_images(root, model, n: int, seed: int = 0, workers: int | None = None,
                progress: bool = True) -> np.ndarray:
    """``n`` images drawn at random (seeded) from an image folder, preprocessed for the
    model: float32 ``[n, C, H, W]`` (fewer when the folder has fewer images)."""
    folder = open_folder(root, model)
    shape = data_config(model)["input_size"]
    idx = sample_indices(len(folder), n, seed)
    from tqdm.auto import tqdm
    out = []
    with tqdm(total=len(idx), desc="loading images", unit="img",
              disable=None if progress else True, leave=False) as bar:
        for x, _ in batches(folder, idx, shape, 32, default_workers() if workers is None else workers):
            out.append(x)
            bar.update(len(x))
    return np.concatenate(out).astype(np.float32)
