"""The distributors' own file formats: MNIST idx, CIFAR-10 pickles (read with a restricted
unpickler), SVHN MATLAB files, downsampled-ImageNet npz batches."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .core import DEBIAN_FASHION_MNIST, DataError, _standard_split, data_root
from .download import _find_or_fetch, _missing

# ---------------------------------------------------------------------------
# MNIST and Fashion-MNIST: idx files.

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """Read an idx file (optionally gzipped), first ``limit`` entries of the first axis.

    Header: two zero bytes, a dtype code, the number of dimensions, then each dimension
    as a big-endian uint32. The header is checked against the data length so a truncated
    or foreign file fails loudly instead of yielding garbage images.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[:2] != b"\0\0" or head[2] not in _IDX_DTYPES:
                raise DataError(f"{path}: not an idx file (bad magic {head.hex()}); re-download it")
            dtype, ndim = _IDX_DTYPES[head[2]], head[3]
            if ndim == 0:
                raise DataError(f"{path}: corrupt idx header (0 dimensions); re-download it")
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) != 4 * ndim:
                raise DataError(f"{path}: truncated idx header; re-download it")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            count = dims[0] if limit is None else min(dims[0], limit)
            want = count * int(np.prod(dims[1:], dtype=np.int64)) * dtype.itemsize
            data = f.read(want)
            trailing = f.read(1) if limit is None else b""
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        raise DataError(f"{path}: cannot read ({err}); re-download it") from None
    if len(data) != want or trailing:
        raise DataError(
            f"{path}: idx header says shape {dims} but the data has a different length; "
            "the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(data, dtype).reshape((count, *dims[1:])).astype(dtype.newbyteorder("="))


def _idx_loader(dataset: str, source: str) -> Callable:
    files = {"train": "train-images-idx3-ubyte.gz", "test": "t10k-images-idx3-ubyte.gz"}

    def load_split(root: Path | None, split: str, limit: int | None, download: bool):
        dirs = [root or data_root() / dataset]
        if dataset == "fashion-mnist" and root is None:
            dirs.append(DEBIAN_FASHION_MNIST)  # Debian package dataset-fashion-mnist

        def read(part: str, n: int | None) -> np.ndarray:
            gz = files[part]
            unpacked = [d / gz[:-3] for d in dirs if (d / gz[:-3]).is_file()]
            if unpacked and not any((d / gz).is_file() for d in dirs):
                path = unpacked[0]  # an already-gunzipped idx file is fine too
            else:
                path = _find_or_fetch(dataset, dirs, gz, download, source, list(files.values()))
            return _idx_images(read_idx(path, n), path)

        return _standard_split(read, split, limit)

    return load_split


def _idx_images(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3:
        raise DataError(
            f"{path}: idx holds {array.dtype} shaped {array.shape}, expected uint8 images "
            "(N,H,W); is this a label file?"
        )
    return array


# ---------------------------------------------------------------------------
# CIFAR-10: python pickles, read with a restricted unpickler.

_CIFAR_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)"
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_SAFE_GLOBALS = {
    *((mod, name) for mod in ("builtins", "__builtin__") for name in ("dict", "list", "bytes", "str", "int")),
    ("_codecs", "encode"),  # how Python 3 writes bytes at protocol 2; a pure data codec
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
# Python 2 names and numpy < 2 names (numpy 2 warns on ``numpy.core``) mapped to today's.
_RENAMED_MODULES = {"__builtin__": "builtins", "numpy.core.multiarray": "numpy._core.multiarray"}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that can only build dicts, lists, strings, ints and numpy arrays.

    The CIFAR batches are pickles, and unpickling can call any importable function;
    refusing every other global means a tampered file cannot run code.
    """

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        module = _RENAMED_MODULES.get(module, module)
        if module == "numpy._core.multiarray" and not hasattr(np, "_core"):
            module = "numpy.core.multiarray"  # numpy 1.x
        return super().find_class(module, name)


def _cifar_field(path: Path, key: str):
    try:
        with path.open("rb") as f:
            batch = _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as err:
        raise DataError(
            f"{path}: not a valid CIFAR batch ({err}); re-download cifar-10-python.tar.gz"
        ) from None
    return batch.get(key.encode(), batch.get(key)) if isinstance(batch, dict) else None


def read_cifar_labels(path: Path) -> np.ndarray:
    """The class labels (0–9) of one CIFAR python batch, in its image order."""
    labels = _cifar_field(path, "labels")
    try:
        out = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        out = None
    if out is None or out.ndim != 1 or (out.size and (out.min() < 0 or out.max() > 9)):
        raise DataError(f"{path}: CIFAR batch has no 'labels' list of classes 0–9")
    return out


def read_cifar_batch(path: Path) -> np.ndarray:
    """One CIFAR python batch: ``data`` (N, 3072) in CHW order → uint8 (N, 32, 32, 3)."""
    data = _cifar_field(path, "data")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: CIFAR batch has no 'data' array of shape (N, 3072)")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract only regular files and folders under ``cifar-10-batches-py/``.

    Absolute names, ``..`` components, links and devices are refused, so a crafted
    archive cannot write outside ``dest``.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = Path(m.name).parts
                bad = m.name.startswith(("/", "\\")) or ".." in parts or not (m.isfile() or m.isdir())
                if bad or not parts or parts[0] != _CIFAR_DIR:
                    raise DataError(
                        f"{archive}: unexpected entry {m.name!r}; refusing to extract, "
                        "re-download cifar-10-python.tar.gz"
                    )
            # Into a temporary folder renamed into place at the end: a crash mid-extraction
            # leaves no truncated batch that would pass for a complete one later.
            dest.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
            try:
                for m in members:
                    target = tmp.joinpath(*Path(m.name).parts)
                    if m.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(m)
                    assert source is not None
                    target.write_bytes(source.read())
                shutil.rmtree(dest / _CIFAR_DIR, ignore_errors=True)  # an incomplete earlier one
                os.replace(tmp / _CIFAR_DIR, dest / _CIFAR_DIR)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"{archive}: cannot extract ({err}); re-download it") from None


def _cifar_dir(root: Path, download: bool) -> Path:
    """Folder holding the batches: ``root/cifar-10-batches-py``, ``root`` itself, or the
    extracted ``root/cifar-10-python.tar.gz`` (downloaded first if allowed)."""
    for folder in (root / _CIFAR_DIR, root):
        if (folder / "test_batch").is_file() or (folder / _CIFAR_TRAIN[0]).is_file():
            return folder
    needed = ["cifar-10-python.tar.gz (or its folder cifar-10-batches-py/)"]
    archive = _find_or_fetch("cifar10", [root], "cifar-10-python.tar.gz", download, _CIFAR_SOURCE, needed)
    _safe_extract(archive, root)
    return root / _CIFAR_DIR


def _load_cifar10(root: Path | None, split: str, limit: int | None, download: bool):
    root = root or data_root() / "cifar10"
    folder = _cifar_dir(root, download)
    parts = {"train": _CIFAR_TRAIN, "test": ["test_batch"]}

    def read(part: str, n: int | None) -> np.ndarray:
        return _read_batches(folder, parts[part], n, read_cifar_batch, "cifar10", _CIFAR_SOURCE)

    return _standard_split(read, split, limit)


def _read_batches(
    folder: Path,
    names: list[str],
    limit: int | None,
    reader: Callable[[Path], np.ndarray],
    dataset: str,
    source: str,
) -> np.ndarray:
    """Concatenate batch files in order, stopping once ``limit`` images are in hand."""
    out, have = [], 0
    for name in names:
        if limit is not None and have >= limit:
            break
        path = folder / name
        if not path.is_file():
            raise _missing(dataset, folder, names, source)
        images = reader(path)
        out.append(images if limit is None else images[: limit - have])
        have += len(out[-1])
    return np.concatenate(out)


# ---------------------------------------------------------------------------
# SVHN: MATLAB files.

_SVHN_SOURCE = "http://ufldl.stanford.edu/housenumbers/ (format 2, cropped digits)"


def _load_svhn(root: Path | None, split: str, limit: int | None, download: bool):
    root = root or data_root() / "svhn"
    files = {"train": "train_32x32.mat", "test": "test_32x32.mat"}

    def read(part: str, n: int | None) -> np.ndarray:
        import scipy.io

        path = _find_or_fetch("svhn", [root], files[part], download, _SVHN_SOURCE, list(files.values()))
        try:
            x = scipy.io.loadmat(path, variable_names=["X"]).get("X")
        except (OSError, ValueError, TypeError, NotImplementedError) as err:
            raise DataError(f"{path}: cannot read MATLAB file ({err}); re-download it") from None
        if not isinstance(x, np.ndarray) or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            raise DataError(f"{path}: no 'X' array shaped (32,32,3,N); re-download it")
        return np.moveaxis(x[..., :n], 3, 0)

    return _standard_split(read, split, limit)


# ---------------------------------------------------------------------------
# Downsampled ImageNet: npz batches.


def _imagenet_loader(size: int) -> Callable:
    dataset = f"imagenet{size}"
    train = [f"train_data_batch_{i}.npz" for i in range(1, 11)]
    source = (
        f"https://image-net.org/download-images.php (login required; 'Downsampled ImageNet "
        f"{size}x{size}': Imagenet{size}_train_npz and Imagenet{size}_val_npz, unzipped)"
    )

    def read_batch(path: Path) -> np.ndarray:
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = npz["data"]
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise DataError(f"{path}: not a downsampled-ImageNet batch ({err})") from None
        if data.ndim != 2 or data.shape[1] != 3 * size * size:
            raise DataError(
                f"{path}: 'data' has shape {data.shape}, expected (N, {3 * size * size}) "
                f"for {size}x{size} images; is this the right resolution?"
            )
        return data.reshape(-1, 3, size, size).transpose(0, 2, 3, 1)

    def load_split(root: Path | None, split: str, limit: int | None, download: bool):
        root = root or data_root() / dataset
        parts = {"train": train, "test": ["val_data.npz"]}

        def read(part: str, n: int | None) -> np.ndarray:
            names = parts[part]
            if not (root / names[0]).is_file():
                raise _missing(dataset, root, [*train, "val_data.npz"], source)
            return _read_batches(root, names, n, read_batch, dataset, source)

        return _standard_split(read, split, limit)

    return load_split
