"""What every data source shares: the image set, its validation, the standard splits."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "test", "all")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DOWNLOAD_TIMEOUT_S = 15.0


class DataError(ValueError):
    """Bad or missing data; the message is one line: what is wrong and how to fix it."""

    def __init__(self, message: str):
        # Wrapped library errors can span lines; the CLI prints exactly one.
        super().__init__(" ".join(str(message).splitlines()))


@dataclass
class ImageSet:
    """uint8 images ``(N, H, W, C)``, C ∈ {1, 3}, with values in ``[0, K)``."""

    images: np.ndarray
    K: int
    name: str

    @property
    def shape_chw(self) -> tuple[int, int, int]:
        """Per-image shape in the model's layout ``(C, H, W)``."""
        _, h, w, c = self.images.shape
        return (c, h, w)

    def __len__(self) -> int:
        return len(self.images)


def data_root() -> Path:
    """Where named datasets live: ``$PCDM_DATA`` or ``~/.cache/pcdm/data``."""
    env = os.environ.get("PCDM_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "pcdm" / "data"


# ---------------------------------------------------------------------------
# Validation and splitting, shared by every source.


def _check_K(K: object, where: str) -> int:
    """K must be an integer in [2, 256]: the images are stored as uint8."""
    if isinstance(K, np.ndarray) and K.ndim == 0:
        K = K.item()
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or not 2 <= int(K) <= 256:
        raise DataError(f"{where}: K must be an integer between 2 and 256, got {K!r}")
    return int(K)


def as_images(array: np.ndarray, K: int, where: str) -> np.ndarray:
    """Validate an image array and return it as uint8 ``(N, H, W, C)``.

    Integer arrays of another dtype are accepted when every value lies in ``[0, K)``,
    because saving digits as int64 is common and loses nothing; floats are refused since
    rounding them would silently change the data the likelihood is measured on.
    """
    array = np.asarray(array)
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise DataError(
            f"{where}: images have dtype {array.dtype}; save them as uint8 (integer pixel values 0..{K - 1})"
        )
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise DataError(f"{where}: expected images shaped (N,H,W) or (N,H,W,C), got shape {array.shape}")
    if array.shape[-1] not in (1, 3):
        raise DataError(
            f"{where}: images have {array.shape[-1]} channels (shape {array.shape}); "
            "only 1 (grayscale) or 3 (RGB) are supported"
        )
    if array.size == 0:
        raise DataError(f"{where}: no images (shape {array.shape})")
    lo, hi = int(array.min()), int(array.max())
    if lo < 0 or hi >= K:
        raise DataError(
            f"{where}: pixel values span {lo}..{hi} but K={K} allows only 0..{K - 1}; "
            "fix the data or declare the right K"
        )
    return np.ascontiguousarray(array, dtype=np.uint8)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise DataError(f"limit must be a positive number of images, got {limit!r}")


def split_bounds(n: int, split: str) -> tuple[int, int]:
    """Index range of ``split`` in a set without its own splits: 90 % train, 10 % test.

    The split is by position, not random, so it is the same on every machine; with at
    least two images each part gets at least one.
    """
    n_train = n if n < 2 else min(n - 1, max(1, (9 * n) // 10))
    if split == "train":
        return 0, n_train
    if split == "test":
        if n_train == n:
            raise DataError(f"only {n} image, nothing left for a test split; use split='all'")
        return n_train, n
    return 0, n


def _take(start: int, stop: int, limit: int | None) -> tuple[int, int]:
    return start, stop if limit is None else min(stop, start + limit)


def _standard_split(
    read: Callable[[str, int | None], np.ndarray], split: str, limit: int | None
) -> np.ndarray:
    """Read a dataset with its own train/test parts; ``all`` is train then test.

    ``read(part, limit)`` may stop early, so a small ``limit`` never reads the whole set.
    """
    if split != "all":
        return read(split, limit)
    train = read("train", limit)
    if limit is not None and len(train) >= limit:
        return train
    rest = None if limit is None else limit - len(train)
    test = read("test", rest)
    if train.shape[1:] != test.shape[1:]:
        raise DataError(
            f"train images {train.shape[1:]} and test images {test.shape[1:]} differ in "
            "shape; load the splits separately"
        )
    return np.concatenate([train, test])


def to_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 images as stored, (N, H, W, C), → the model's layout (N, C, H, W). A read-only
    array (a memory-mapped file) is copied: torch cannot share memory it may not write."""
    array = np.ascontiguousarray(images)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).permute(0, 3, 1, 2)


def to_nhwc(x: torch.Tensor) -> np.ndarray:
    """The model's (N, C, H, W) integer images → uint8 (N, H, W, C) as stored."""
    return x.detach().cpu().to(torch.uint8).permute(0, 2, 3, 1).numpy()
