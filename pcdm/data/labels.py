"""Class labels of the labelled named datasets, in the order ``pcdm.data.load`` returns their
images: what the domain feature space of ``pcdm fid`` is trained on (docs/math.md §11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core import DEBIAN_FASHION_MNIST, DataError, _check_limit, _check_split, _standard_split, data_root
from .formats import _CIFAR_SOURCE, _CIFAR_TRAIN, _cifar_dir, _read_batches, read_cifar_labels, read_idx

_IDX_LABELS = {"train": "train-labels-idx1-ubyte.gz", "test": "t10k-labels-idx1-ubyte.gz"}
LABELLED = ("fashion-mnist", "mnist", "digits", "cifar10", "svhn")


def _idx_labels(name: str, root: Path | None, split: str, limit: int | None) -> np.ndarray:
    dirs = [root or data_root() / name]
    if name == "fashion-mnist" and root is None:
        dirs.append(DEBIAN_FASHION_MNIST)

    def read(part: str, n: int | None) -> np.ndarray:
        gz = _IDX_LABELS[part]
        for d in dirs:
            for path in (d / gz, d / gz[:-3]):
                if path.is_file():
                    labels = read_idx(path, n)
                    if labels.ndim != 1:
                        raise DataError(f"{path}: expected a 1-D idx label file, got shape {labels.shape}")
                    return labels.astype(np.int64)
        raise DataError(f"{name}: missing the label file {gz} in {dirs[0]}; put it beside the images")

    return _standard_split(read, split, limit)


def load_labels(spec: str, split: str = "train", limit: int | None = None) -> np.ndarray:
    """int64 labels of ``split`` of a labelled dataset (first ``limit``), aligned with
    ``load(spec, split, limit).images``."""
    _check_split(split)
    _check_limit(limit)
    name, sep, root = str(spec).partition(":")
    root_dir = Path(root).expanduser() if sep and root else None
    if name in ("fashion-mnist", "mnist"):
        return _idx_labels(name, root_dir, split, limit)
    if name == "cifar10":
        folder = _cifar_dir(root_dir or data_root() / "cifar10", download=False)
        parts = {"train": _CIFAR_TRAIN, "test": ["test_batch"]}

        def read(part: str, n: int | None) -> np.ndarray:
            return _read_batches(folder, parts[part], n, read_cifar_labels, "cifar10", _CIFAR_SOURCE)

        return _standard_split(read, split, limit)
    if name == "svhn":
        return _svhn_labels(root_dir or data_root() / "svhn", split, limit)
    if name == "digits":
        from sklearn.datasets import load_digits

        target = load_digits().target.astype(np.int64)
        start, stop = {"train": (0, 1500), "test": (1500, len(target)), "all": (0, len(target))}[split]
        return target[start:stop][:limit]
    raise DataError(
        f"{spec}: no class labels known for this data (labelled: {', '.join(LABELLED)}); "
        "use --features inception"
    )


def _svhn_labels(root: Path, split: str, limit: int | None) -> np.ndarray:
    """SVHN's ``y`` (1–10, where 10 is the digit 0) as the digit 0–9."""
    import scipy.io

    def read(part: str, n: int | None) -> np.ndarray:
        path = root / f"{part}_32x32.mat"
        if not path.is_file():
            raise DataError(f"svhn: missing {path.name} in {root}")
        try:
            y = scipy.io.loadmat(path, variable_names=["y"]).get("y")
        except (OSError, ValueError, TypeError, NotImplementedError) as err:
            raise DataError(f"{path}: cannot read MATLAB file ({err}); re-download it") from None
        if not isinstance(y, np.ndarray) or y.size == 0:
            raise DataError(f"{path}: no 'y' label array")
        y = y.ravel().astype(np.int64)
        if y.min() < 1 or y.max() > 10:
            raise DataError(f"{path}: labels outside 1–10")
        return (y % 10)[:n]

    return _standard_split(read, split, limit)
