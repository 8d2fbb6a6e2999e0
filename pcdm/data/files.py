"""Data the user gives: folders of images and ``.npy``/``.npz`` arrays."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .core import (
    IMAGE_SUFFIXES,
    DataError,
    ImageSet,
    _check_K,
    _standard_split,
    _take,
    as_images,
    split_bounds,
)


def _load_array_file(path: Path, split: str, limit: int | None) -> ImageSet:
    """A ``.npy`` array, or a ``.npz`` with ``images`` (or one array) or ``train``/``test``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    where = str(path)
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return _from_single(array, 256, split, limit, where, path.name)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{path}: cannot read as a numpy array file ({err})") from None
    K = _check_K(arrays.pop("K"), where) if "K" in arrays else 256
    if "train" in arrays or "test" in arrays:

        def read(part: str, n: int | None) -> np.ndarray:
            if part not in arrays:
                raise DataError(f"{path}: has no '{part}' array; add it or use another split")
            return as_images(arrays[part][:n], K, f"{where}[{part}]")

        images = _standard_split(read, split, limit)
        return ImageSet(as_images(images, K, where), K, f"{path.name}:{split}")
    if "images" in arrays:
        array = arrays["images"]
    elif len(arrays) == 1:
        (array,) = arrays.values()
    else:
        raise DataError(
            f"{path}: holds arrays {sorted(arrays)}; name the image array 'images' (or 'train'/'test')"
        )
    return _from_single(array, K, split, limit, where, path.name)


def _from_single(
    array: np.ndarray, K: int, split: str, limit: int | None, where: str, label: str
) -> ImageSet:
    """Split one array 90/10 by position, then validate only the part that is used."""
    if array.ndim not in (3, 4):
        raise DataError(f"{where}: expected images shaped (N,H,W) or (N,H,W,C), got {array.shape}")
    start, stop = _take(*split_bounds(len(array), split), limit)
    images = as_images(np.asarray(array[start:stop]), K, where)
    return ImageSet(images, K, f"{label}:{split}")


def _folder_K(path: Path) -> int:
    """K from an optional ``pcdm.json`` in the folder (e.g. ``{"K": 17}``), else 256."""
    meta = path / "pcdm.json"
    if not meta.is_file():
        return 256
    try:
        K = json.loads(meta.read_text()).get("K", 256)
    except (OSError, ValueError, AttributeError) as err:
        raise DataError(f'{meta}: not a JSON object like {{"K": 17}} ({err})') from None
    return _check_K(K, str(meta))


def _load_folder(path: Path, split: str, limit: int | None) -> ImageSet:
    """A folder of images; ``train/`` and ``test/`` subfolders, if both exist, are the splits."""
    K = _folder_K(path)
    if (path / "train").is_dir() and (path / "test").is_dir():

        def read(part: str, n: int | None) -> np.ndarray:
            return read_image_folder(path / part)[1][:n]

        images = _standard_split(read, split, limit)
        return ImageSet(as_images(images, K, str(path)), K, f"{path.name}:{split}")
    _, images = read_image_folder(path)
    return _from_single(images, K, split, limit, str(path), path.name)


def image_array(file: Path) -> np.ndarray:
    """One image file as uint8 ``(H, W, C)``.

    Grayscale stays one channel (no point tripling the dimension d); palette images become
    RGB; an alpha channel is dropped only when it is fully opaque, because discarding real
    transparency would change what the image looks like.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif mode == "1":
                img = img.convert("L")
            elif mode in ("CMYK", "YCbCr"):
                img = img.convert("RGB")
            array = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DataError(f"{file}: cannot read image ({err})") from None
    if array.dtype != np.uint8:
        raise DataError(f"{file}: {mode} image is not 8-bit; convert it to 8-bit gray or RGB")
    if array.ndim == 2:
        return array[..., None]
    if array.shape[-1] in (2, 4):  # LA / RGBA
        if (array[..., -1] != 255).any():
            raise DataError(
                f"{file}: image has transparency (mode {mode}); flatten it onto a "
                "background and save without alpha"
            )
        array = array[..., :-1]
    if array.shape[-1] not in (1, 3):
        raise DataError(f"{file}: unsupported image mode {mode}; save it as gray or RGB")
    return array


def read_image_folder(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """All images below ``path`` (recursively, sorted by relative name) as uint8 (N,H,W,C).

    Images must all have the same size and channel count: resizing or colour conversion
    would change the data, so mismatches are errors naming the two files.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    files = sorted(
        (f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda f: f.relative_to(root).as_posix(),
    )
    if not files:
        raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_SUFFIXES)} files)")
    names = [f.relative_to(root).as_posix() for f in files]
    arrays = [image_array(f) for f in files]
    for name, array in zip(names[1:], arrays[1:]):
        if array.shape[:2] == arrays[0].shape[:2] and array.shape != arrays[0].shape:
            raise DataError(
                f"{root}: images differ in channels: {names[0]} is {_hwc(arrays[0])} but "
                f"{name} is {_hwc(array)}; convert them all to grayscale or all to RGB first"
            )
        if array.shape != arrays[0].shape:
            raise DataError(
                f"{root}: images differ in size: {names[0]} is {_hwc(arrays[0])} but "
                f"{name} is {_hwc(array)}; resize them to one size first"
            )
    return names, np.stack(arrays)


def _hwc(array: np.ndarray) -> str:
    h, w, c = array.shape
    return f"{w}x{h} with {c} channel{'s' if c > 1 else ''}"
