"""Real image data in standard file formats, as uint8 arrays (docs/math.md §1, §8).

Everything the models see comes through :func:`load`, which returns an :class:`ImageSet`:
uint8 images laid out ``(N, H, W, C)`` with C ∈ {1, 3} and the number of pixel values K.
The model code converts to ``(N, C, H, W)`` floats itself; keeping the data discrete here
is what lets every reported number be a bound on the *discrete* likelihood.

``spec`` may be
  * a dataset name, optionally ``name:root`` (``fashion-mnist``, ``mnist``, ``cifar10``,
    ``svhn``, ``imagenet32``, ``imagenet64``, ``digits``, ``skimage32``), read from the
    distributor's own file format in ``root`` (default ``data_root()/name``);
  * a folder of images (PNG/JPEG/BMP/TIFF/WebP), optionally with ``pcdm.json`` = ``{"K": 17}``;
  * a ``.npy``/``.npz`` array ``(N, H, W)`` or ``(N, H, W, C)``.

Every failure is a :class:`DataError` with a one-line message saying what is wrong and
how to fix it, so the CLI can print it without a traceback.

This file is the registry of named datasets and :func:`load`; the parts live in

    core      ImageSet, DataError, validation, the standard train/test splits
    files     folders of images and .npy/.npz arrays (what users give)
    download  fetching distributors' files, checked against their digests
    formats   idx (MNIST), CIFAR-10 batches (restricted unpickler), SVHN .mat, ImageNet npz
    packaged  sets inside installed packages: scikit-learn digits, scikit-image photos
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .core import (
    DataError,
    ImageSet,
    _check_limit,
    _check_split,
    as_images,
    data_root,
    split_bounds,
    to_nchw,
    to_nhwc,
)
from .files import _load_array_file, _load_folder, image_array, read_image_folder
from .formats import _idx_loader, _imagenet_loader, _load_cifar10, _load_svhn, read_cifar_batch, read_idx
from .packaged import _load_digits, _load_skimage32, skimage_patches

Loader = Callable[[Path | None, str, int | None, bool], np.ndarray]
DATASETS: dict[str, tuple[Loader, int]] = {
    "fashion-mnist": (
        _idx_loader(
            "fashion-mnist",
            "https://github.com/zalandoresearch/fashion-mnist (data/fashion/) or Debian "
            "package dataset-fashion-mnist",
        ),
        256,
    ),
    "mnist": (_idx_loader("mnist", "https://ossci-datasets.s3.amazonaws.com/mnist/"), 256),
    "cifar10": (_load_cifar10, 256),
    "svhn": (_load_svhn, 256),
    "imagenet32": (_imagenet_loader(32), 256),
    "imagenet64": (_imagenet_loader(64), 256),
    "digits": (_load_digits, 17),
    "skimage32": (_load_skimage32, 256),
}


# ---------------------------------------------------------------------------
# Public entry point.


def resolve_spec(spec: str) -> str:
    """A DATA spec that means the same from any working directory: folders and array files
    as absolute paths, dataset names (and name:root with root made absolute) as given."""
    spec = str(spec)
    name, sep, root = spec.partition(":")
    if name in DATASETS:
        return f"{name}:{Path(root).expanduser().resolve()}" if sep and root else spec
    return str(Path(spec).expanduser().resolve())


def has_own_splits(spec: str) -> bool:
    """Named datasets come with train/test splits; folders and arrays are split 90/10."""
    return str(spec).partition(":")[0] in DATASETS


def default_split(spec: str | None, own_spec: str | None, split: str | None = None) -> tuple[str, str]:
    """(split, reason) that ``pcdm eval`` and ``pcdm ood`` read from ``spec`` for a run trained
    on ``own_spec`` (docs/math.md §9): ``split`` if given; the run's own data (``spec`` None,
    or the same dataset or path) → its held-out test split; another named dataset → its test
    split; any other file or folder → all of it."""
    if split is not None:
        return split, "--split"
    if spec is None or (own_spec is not None and resolve_spec(spec) == resolve_spec(own_spec)):
        return "test", "held-out part of the run's training data"
    if has_own_splits(spec):
        return "test", "the dataset's test split"
    return "all", "not the run's training data: every image"


def load(spec: str, split: str = "train", limit: int | None = None, download: bool = True) -> ImageSet:
    """Load ``split`` (``train``/``test``/``all``) of ``spec``, first ``limit`` images."""
    _check_split(split)
    _check_limit(limit)
    spec = str(spec)
    name, sep, root = spec.partition(":")
    if name in DATASETS:
        root_dir = Path(root).expanduser() if sep and root else None
        loader, K = DATASETS[name]
        images = loader(root_dir, split, limit, download)
        return ImageSet(as_images(images, K, f"{name}:{split}"), K, f"{name}:{split}")
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, split, limit)
    if path.suffix.lower() in (".npy", ".npz"):
        return _load_array_file(path, split, limit)
    if path.exists():
        raise DataError(f"{spec}: unsupported file type; give a folder of images or a .npy/.npz array")
    raise DataError(
        f"unknown data {spec!r}: not a folder or .npy/.npz file, and not a dataset name "
        f"(known: {', '.join(DATASETS)}; optionally name:root)"
    )


__all__ = [
    "DataError",
    "ImageSet",
    "as_images",
    "data_root",
    "image_array",
    "load",
    "read_cifar_batch",
    "read_idx",
    "read_image_folder",
    "skimage_patches",
    "split_bounds",
    "default_split",
    "to_nchw",
    "to_nhwc",
]
