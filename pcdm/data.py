"""Real image data in standard file formats, as uint8 arrays (SPEC §1, §8).

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
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


# ---------------------------------------------------------------------------
# Arrays and folders.


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


# ---------------------------------------------------------------------------
# Downloads, with checksums.

# file name -> (mirror URLs, hash algorithm, expected hex digest)
Remote = tuple[tuple[str, ...], str, str]
_FASHION_URLS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)
REMOTE: dict[str, dict[str, Remote]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (_FASHION_URLS, "md5", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "t10k-images-idx3-ubyte.gz": (_FASHION_URLS, "md5", "bef4ecab320f06d8554ea6380940ec79"),
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": (_MNIST_URLS, "md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "t10k-images-idx3-ubyte.gz": (_MNIST_URLS, "md5", "9fb629c4189551a2d022fa330f9573f3"),
    },
    "cifar10": {
        "cifar-10-python.tar.gz": (
            ("https://www.cs.toronto.edu/~kriz/",),
            "md5",
            "c58f30108f718f92721af3b95e74349a",
        ),
    },
    "svhn": {
        "train_32x32.mat": (
            ("http://ufldl.stanford.edu/housenumbers/",),
            "md5",
            "e26dedcc434d2e4c54c9b2d4a06d8373",
        ),
        "test_32x32.mat": (
            ("http://ufldl.stanford.edu/housenumbers/",),
            "md5",
            "eb5a983be6a315427106f1b164d9cef3",
        ),
    },
}


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(dataset: str, filename: str, root: Path) -> bool:
    """Fetch ``filename`` of ``dataset`` into ``root``; False when no mirror answered.

    The file is written under a temporary name and only renamed once its checksum
    matches, so an interrupted or tampered download never looks like a dataset.
    A checksum mismatch is an error (retrying would not help); a network failure is not,
    so the caller can explain how to get the file by hand.
    """
    mirrors, algorithm, expected = REMOTE[dataset][filename]
    root.mkdir(parents=True, exist_ok=True)
    target, part = root / filename, root / (filename + ".part")
    for base in mirrors:
        try:
            with urllib.request.urlopen(base + filename, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                with part.open("wb") as out:
                    for block in iter(lambda r=resp: r.read(1 << 20), b""):
                        out.write(block)
        except (OSError, ValueError):
            part.unlink(missing_ok=True)
            continue
        got = _file_digest(part, algorithm)
        if got != expected:
            part.unlink(missing_ok=True)
            raise DataError(
                f"download of {base + filename} has {algorithm} {got}, expected {expected}; "
                f"fetch it by hand into {root}"
            )
        part.replace(target)
        return True
    return False


def _missing(dataset: str, root: Path, files: list[str], source: str) -> DataError:
    return DataError(
        f"{dataset}: missing {', '.join(files)} in {root}; get them from {source} and put "
        f"them in that folder (or pass {dataset}:/other/folder)"
    )


def _find_or_fetch(
    dataset: str, dirs: list[Path], filename: str, download: bool, source: str, needed: list[str]
) -> Path:
    """First ``dirs[i]/filename`` that exists, else download it into ``dirs[0]``."""
    for folder in dirs:
        if (folder / filename).is_file():
            return folder / filename
    if download and filename in REMOTE.get(dataset, {}) and _download(dataset, filename, dirs[0]):
        return dirs[0] / filename
    raise _missing(dataset, dirs[0], needed, source)


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


def read_cifar_batch(path: Path) -> np.ndarray:
    """One CIFAR python batch: ``data`` (N, 3072) in CHW order → uint8 (N, 32, 32, 3)."""
    try:
        with path.open("rb") as f:
            batch = _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as err:
        raise DataError(
            f"{path}: not a valid CIFAR batch ({err}); re-download cifar-10-python.tar.gz"
        ) from None
    data = batch.get(b"data", batch.get("data")) if isinstance(batch, dict) else None
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

__all__ = [
    "DataError",
    "ImageSet",
    "as_images",
    "data_root",
    "load",
    "read_cifar_batch",
    "read_idx",
    "read_image_folder",
    "skimage_patches",
    "split_bounds",
]
