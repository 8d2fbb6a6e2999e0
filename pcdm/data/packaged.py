"""Sets that ship with installed packages and need no download: scikit-learn's digits,
patches of scikit-image's photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core import DataError, _take

# ---------------------------------------------------------------------------
# Sets that ship with installed packages: no download.


def _load_digits(root: Path | None, split: str, limit: int | None, download: bool):
    """scikit-learn's 8×8 digits, 17 gray levels; train = first 1500, test = the other 297."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.uint8)
    bounds = {"train": (0, 1500), "test": (1500, len(images)), "all": (0, len(images))}
    start, stop = _take(*bounds[split], limit)
    return images[start:stop]


# Real RGB photographs inside the scikit-image wheel (no pooch/network). Synthetic images
# (logo, colorwheel) and retina (mostly black border) are left out. Whole photos are held
# out for the test split so test patches are never neighbours of training patches.
SKIMAGE_TRAIN = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "motorcycle")
SKIMAGE_TEST = ("chelsea", "coffee")


def _skimage_photo(name: str) -> np.ndarray:
    import skimage.data

    try:
        if name == "motorcycle":
            return skimage.data.stereo_motorcycle()[0]  # left view only: right nearly duplicates it
        return getattr(skimage.data, name)()
    except (AttributeError, OSError, ModuleNotFoundError, ValueError) as err:
        raise DataError(
            f"skimage32: scikit-image photo {name!r} is unavailable ({err}); install "
            "scikit-image>=0.22 from a wheel"
        ) from None


def skimage_patches(photo: np.ndarray, size: int = 32) -> np.ndarray:
    """Non-overlapping ``size``×``size`` patches in row-major order; the ragged edge is dropped."""
    h, w = (photo.shape[0] // size) * size, (photo.shape[1] // size) * size
    grid = photo[:h, :w, :3].reshape(h // size, size, w // size, size, 3)
    return grid.transpose(0, 2, 1, 3, 4).reshape(-1, size, size, 3)


def _load_skimage32(root: Path | None, split: str, limit: int | None, download: bool):
    names = {"train": SKIMAGE_TRAIN, "test": SKIMAGE_TEST, "all": SKIMAGE_TRAIN + SKIMAGE_TEST}
    out, have = [], 0
    for name in names[split]:
        if limit is not None and have >= limit:
            break
        patches = skimage_patches(_skimage_photo(name))
        out.append(patches if limit is None else patches[: limit - have])
        have += len(out[-1])
    return np.concatenate(out)
