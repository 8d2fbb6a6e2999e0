"""Images in and out of the codec: what ``pcdm compress`` reads and ``pcdm decompress``
writes (docs/format.md).

INPUT is a folder of images (relative names kept, sorted as :func:`pcdm.data.read_image_folder`
reads them), one or more image files (their names kept), or a ``.npy``/``.npz`` integer
array ``(N, H, W)`` / ``(N, H, W, C)``. The output is what its path names: ``X.npy`` an
array (the input's shape and dtype when it was one), ``X.png`` a single image, anything
else a folder of lossless PNGs (the input's relative names, a non-PNG suffix becoming
``.png``; numbered for arrays). Writes are atomic: nothing is left behind on failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

import numpy as np

from .. import codec
from ..checkpoint import atomic_write, current_umask
from ..data import DataError, as_images, image_array, read_image_folder


def read_input(paths, K: int) -> tuple[np.ndarray, codec.Header]:
    """Images (N,H,W,C) uint8 and a partial header describing the input's form."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths)
    src = Path(paths[0])
    if len(paths) == 1 and src.is_dir():
        names, images = read_image_folder(src)
        return _named(names, images, K, str(src))
    if len(paths) == 1 and src.suffix.lower() in (".npy", ".npz"):
        return _array_input(src, K)
    files = [Path(p) for p in paths]
    for f in files:
        if f.is_dir() or f.suffix.lower() in (".npy", ".npz"):
            raise DataError(f"{f}: give one folder, one .npy/.npz array, or image files (not a mix)")
        if not f.is_file():
            raise DataError(f"{f}: file not found")
    names = [f.name for f in files]
    if len({n.lower() for n in names}) != len(names):
        raise DataError("two input files have the same name; put them in a folder instead")
    arrays = [image_array(f) for f in files]
    for f, a in zip(files[1:], arrays[1:]):
        if a.shape != arrays[0].shape:
            raise DataError(f"{files[0].name} is {arrays[0].shape} but {f.name} is {a.shape} (H, W, C)")
    return _named(names, np.stack(arrays), K, str(files[0].parent))


def _named(names, images, K, where):
    for name in names:
        codec.check_name(name)
    images = as_images(images, K, where)
    return images, codec.Header(codec.KIND_FOLDER, b"", 0, 0, 0, 0, 0, 0, K, 0, 0, 0, names=list(names))


def _array_input(src: Path, K: int):
    if not src.is_file():
        raise DataError(f"{src}: file not found")
    try:
        if src.suffix.lower() == ".npy":
            array = np.load(src, allow_pickle=False)
        else:
            with np.load(src, allow_pickle=False) as npz:
                keys = ["images"] if "images" in npz.files else npz.files
                if len(keys) != 1:
                    raise DataError(f"{src}: holds {npz.files}; give one array (or one named 'images')")
                array = npz[keys[0]]
    except (OSError, ValueError, EOFError) as err:
        raise DataError(f"{src}: cannot read as a {src.suffix} array ({err})") from None
    if array.ndim not in (3, 4) or array.dtype.kind not in "uib" or array.dtype.itemsize > 8:
        raise DataError(
            f"{src}: expected an integer array (N,H,W) or (N,H,W,C), got {array.dtype} {array.shape}"
        )
    images = as_images(array, K, str(src))
    h = codec.Header(codec.KIND_NPY, b"", 0, 0, 0, 0, 0, 0, K, 0, 0, 0)
    h.shape, h.dtype = tuple(int(v) for v in array.shape), array.dtype.str
    return images, h


def output_names(names: list[str]) -> list[str]:
    """Same relative names; non-PNG files get a .png suffix (the output is lossless PNG)."""
    out = [n if n.lower().endswith(".png") else str(PurePosixPath(n).with_suffix(".png")) for n in names]
    if len({n.lower() for n in out}) != len(out):
        out = [n if n.lower().endswith(".png") else n + ".png" for n in names]
    if len({n.lower() for n in out}) != len(out):
        raise codec.CodecError("cannot write PNG outputs: file names collide after renaming")
    return out


def write_output(h: codec.Header, images: np.ndarray, output: str) -> list[str]:
    """Write images in the form ``output`` names (``.npy`` array, ``.png`` single image,
    else a folder of PNGs); atomic (nothing is left behind on failure)."""
    out = Path(output)
    suffix = out.suffix.lower()
    if suffix == ".npy":
        if out.is_dir():
            raise codec.CodecError(f"{out} is a folder; -o X.npy writes an array file")
        n, hh, ww, c = images.shape
        if h.kind == codec.KIND_NPY:  # the input's own shape and dtype
            shape = (n, hh, ww) if len(h.shape) == 3 else (n, hh, ww, c)
            array = images.reshape(shape).astype(np.dtype(h.dtype))
        else:
            array = images[..., 0] if c == 1 else images

        def write(tmp):
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)

        atomic_write(out, write)
        return [str(out)]
    if suffix == ".png":
        if len(images) != 1:
            raise codec.CodecError(
                f"the file holds {len(images)} images; -o X.png is for one (give a folder)"
            )
        atomic_write(out, lambda tmp: _png(images[0]).save(tmp, format="PNG"))
        return [str(out)]
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise codec.CodecError(f"{out} already exists; give a new or empty folder")
    names = h.names if h.kind == codec.KIND_FOLDER else [f"{i:05d}.png" for i in range(len(images))]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; keep the user's umask
    try:
        written = []
        for name, img in zip(output_names(names), images):
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            _png(img).save(path, format="PNG")
            written.append(str(out / name))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return written


def _png(img: np.ndarray):
    from PIL import Image

    return Image.fromarray(img[..., 0], "L") if img.shape[-1] == 1 else Image.fromarray(img, "RGB")
