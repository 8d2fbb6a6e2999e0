"""Downloads of the distributors' files, checked against their published digests."""

from __future__ import annotations

import hashlib
import urllib.request
from pathlib import Path

from .core import DOWNLOAD_TIMEOUT_S, DataError

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
