"""Data loading: each real file format written small in tmp_path, read back exactly."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from pcdm import data
from pcdm.data import DataError, ImageSet, load, read_image_folder

RNG = np.random.default_rng(0)


def rand_images(n: int, h: int, w: int, c: int | None = None, K: int = 256) -> np.ndarray:
    shape = (n, h, w) if c is None else (n, h, w, c)
    return RNG.integers(0, K, size=shape, dtype=np.uint8)


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No test may touch the network or the user's data folder."""

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(data.download.urllib.request, "urlopen", no_network)
    monkeypatch.setenv("PCDM_DATA", str(tmp_path / "data-root"))


# ---------------------------------------------------------------------------
# writers for the distributors' formats


def write_idx(path: Path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


def write_cifar_batch(path: Path, images: np.ndarray) -> None:
    """Like the distributor's batches: dict with b'data' (N, 3072) CHW rows, b'labels'."""
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    batch = {b"batch_label": b"test", b"data": rows, b"labels": [0] * len(images)}
    path.write_bytes(pickle.dumps(batch, protocol=4))


def write_imagenet_batch(path: Path, images: np.ndarray) -> None:
    rows = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    np.savez(path, data=rows, labels=np.arange(len(images)))


def write_png_folder(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(folder / f"img_{i:03d}.png")


# ---------------------------------------------------------------------------
# core helpers


def test_data_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PCDM_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    monkeypatch.delenv("PCDM_DATA")
    assert data.data_root() == Path.home() / ".cache" / "pcdm" / "data"


def test_imageset_shape_chw():
    s = ImageSet(np.zeros((2, 5, 7, 3), np.uint8), 256, "x")
    assert s.shape_chw == (3, 5, 7)


@pytest.mark.parametrize("n", [2, 3, 10, 11, 100])
def test_split_bounds_cover_everything(n):
    a, b = data.split_bounds(n, "train")
    c, d = data.split_bounds(n, "test")
    assert a == 0 and b == c and d == n and b >= 1 and d - c >= 1
    assert data.split_bounds(n, "all") == (0, n)


# ---------------------------------------------------------------------------
# arrays


def test_npy_splits_and_limit(tmp_path):
    x = rand_images(20, 4, 6)
    np.save(tmp_path / "x.npy", x)
    train = load(str(tmp_path / "x.npy"))
    test = load(str(tmp_path / "x.npy"), "test")
    assert train.images.shape == (18, 4, 6, 1) and train.K == 256
    np.testing.assert_array_equal(train.images[..., 0], x[:18])
    np.testing.assert_array_equal(test.images[..., 0], x[18:])
    assert load(str(tmp_path / "x.npy"), "all").images.shape[0] == 20
    np.testing.assert_array_equal(load(str(tmp_path / "x.npy"), "test", limit=1).images[0, ..., 0], x[18])
    assert test.name == "x.npy:test"


def test_npz_images_K_and_int_dtype(tmp_path):
    x = rand_images(10, 8, 8, K=17).astype(np.int64)
    np.savez(tmp_path / "d.npz", images=x, K=np.int64(17))
    s = load(str(tmp_path / "d.npz"), "all")
    assert s.K == 17 and s.images.dtype == np.uint8
    np.testing.assert_array_equal(s.images[..., 0], x)


def test_npz_train_test_keys(tmp_path):
    tr, te = rand_images(5, 4, 4, 3), rand_images(3, 4, 4, 3)
    np.savez(tmp_path / "s.npz", train=tr, test=te)
    np.testing.assert_array_equal(load(str(tmp_path / "s.npz")).images, tr)
    np.testing.assert_array_equal(load(str(tmp_path / "s.npz"), "test").images, te)
    both = load(str(tmp_path / "s.npz"), "all", limit=6).images
    np.testing.assert_array_equal(both, np.concatenate([tr, te[:1]]))


def test_array_errors(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 4, 4), np.float32))
    with pytest.raises(DataError, match="float32"):
        load(str(tmp_path / "f.npy"))
    np.savez(tmp_path / "k.npz", images=np.full((4, 3, 3), 17, np.uint8), K=17)
    with pytest.raises(DataError, match="K=17"):
        load(str(tmp_path / "k.npz"))
    np.save(tmp_path / "c.npy", np.zeros((4, 3, 3, 2), np.uint8))
    with pytest.raises(DataError, match="channels"):
        load(str(tmp_path / "c.npy"))
    np.save(tmp_path / "d.npy", np.zeros((4, 3), np.uint8))
    with pytest.raises(DataError, match="shape"):
        load(str(tmp_path / "d.npy"))
    with pytest.raises(DataError, match="split"):
        load(str(tmp_path / "d.npy"), "valid")


def test_unknown_name_lists_known():
    with pytest.raises(DataError) as err:
        load("not-a-dataset")
    msg = str(err.value)
    assert "fashion-mnist" in msg and "cifar10" in msg and "\n" not in msg


# ---------------------------------------------------------------------------
# folders


def test_folder_rgb_gray_palette_alpha(tmp_path):
    rgb = rand_images(10, 5, 7, 3)
    write_png_folder(tmp_path / "rgb", rgb)
    names, arr = read_image_folder(tmp_path / "rgb")
    assert names[0] == "img_000.png" and arr.shape == (10, 5, 7, 3)
    np.testing.assert_array_equal(arr, rgb)
    np.testing.assert_array_equal(load(str(tmp_path / "rgb"), "test").images, rgb[9:])

    gray = rand_images(4, 6, 6, 1, K=17)
    write_png_folder(tmp_path / "gray", gray)
    (tmp_path / "gray" / "pcdm.json").write_text(json.dumps({"K": 17}))
    s = load(str(tmp_path / "gray"), "all")
    assert s.K == 17 and s.images.shape == (4, 6, 6, 1)
    np.testing.assert_array_equal(s.images, gray)

    opaque = np.concatenate([rgb[:1], np.full((1, 5, 7, 1), 255, np.uint8)], -1)
    (tmp_path / "rgba").mkdir()
    Image.fromarray(opaque[0]).save(tmp_path / "rgba" / "a.png")
    Image.fromarray(rgb[1]).convert("P").save(tmp_path / "rgba" / "b.png")
    _, arr = read_image_folder(tmp_path / "rgba")
    np.testing.assert_array_equal(arr[0], rgb[0])
    assert arr.shape == (2, 5, 7, 3)

    opaque[0, 0, 0, 3] = 10
    Image.fromarray(opaque[0]).save(tmp_path / "rgba" / "a.png")
    with pytest.raises(DataError, match="transparency"):
        read_image_folder(tmp_path / "rgba")


def test_folder_mixed_sizes(tmp_path):
    write_png_folder(tmp_path / "m", rand_images(2, 4, 4, 3))
    Image.fromarray(rand_images(1, 5, 4, 3)[0]).save(tmp_path / "m" / "z.png")
    with pytest.raises(DataError, match="z.png"):
        load(str(tmp_path / "m"))


def test_empty_folder(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="no images"):
        load(str(tmp_path / "e"))


# ---------------------------------------------------------------------------
# MNIST / Fashion-MNIST


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_roundtrip(tmp_path, name):
    tr, te = rand_images(7, 28, 28), rand_images(3, 28, 28)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", te)
    s = load(f"{name}:{tmp_path}")
    assert s.images.shape == (7, 28, 28, 1) and s.K == 256 and s.name == f"{name}:train"
    np.testing.assert_array_equal(s.images[..., 0], tr)
    np.testing.assert_array_equal(load(f"{name}:{tmp_path}", "test").images[..., 0], te)
    np.testing.assert_array_equal(load(f"{name}:{tmp_path}", limit=2).images[..., 0], tr[:2])
    all_ = load(f"{name}:{tmp_path}", "all", limit=9).images[..., 0]
    np.testing.assert_array_equal(all_, np.concatenate([tr, te[:2]]))


def test_idx_missing_files_named(tmp_path):
    with pytest.raises(DataError) as err:
        load(f"mnist:{tmp_path}", download=False)
    assert "train-images-idx3-ubyte.gz" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load(f"fashion-mnist:{tmp_path}", "test", download=True)  # network is off


def test_idx_corrupt_header(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x01\x08\x03" + bytes(100))
    with pytest.raises(DataError, match="magic"):
        load(f"mnist:{tmp_path}")
    write_idx(path, rand_images(3, 28, 28))
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-5]))  # truncated data
    with pytest.raises(DataError, match="truncated or corrupt"):
        load(f"mnist:{tmp_path}")
    write_idx(path, np.arange(5, dtype=np.uint8))  # a label file
    with pytest.raises(DataError, match="label"):
        load(f"mnist:{tmp_path}")


def test_download_checksum(tmp_path, monkeypatch):
    payload = io.BytesIO()
    with gzip.GzipFile(fileobj=payload, mode="wb") as f:
        x = rand_images(2, 28, 28)
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2, 28, 28) + x.tobytes())
    blob = payload.getvalue()
    md5 = hashlib.md5(blob).hexdigest()
    monkeypatch.setattr(data.download.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(blob))
    remote = {"train-images-idx3-ubyte.gz": (("https://example.invalid/",), "md5", "0" * 32)}
    monkeypatch.setitem(data.download.REMOTE, "mnist", remote)
    with pytest.raises(DataError, match="expected"):
        load(f"mnist:{tmp_path}")
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    remote["train-images-idx3-ubyte.gz"] = (("https://example.invalid/",), "md5", md5)
    np.testing.assert_array_equal(load(f"mnist:{tmp_path}").images[..., 0], x)
    assert (tmp_path / "train-images-idx3-ubyte.gz").read_bytes() == blob


def test_fashion_mnist_debian():
    if not (data.core.DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"{data.core.DEBIAN_FASHION_MNIST} missing (apt install dataset-fashion-mnist)")
    test = load("fashion-mnist", "test", download=False)
    assert test.images.shape == (10000, 28, 28, 1) and test.K == 256
    assert test.images.max() == 255
    train = load("fashion-mnist", "train", limit=100, download=False)
    assert train.images.shape == (100, 28, 28, 1)


# ---------------------------------------------------------------------------
# CIFAR-10


def _cifar_tree(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train = rand_images(10, 32, 32, 3)
    for i in range(5):
        write_cifar_batch(folder / f"data_batch_{i + 1}", train[2 * i : 2 * i + 2])
    test = rand_images(3, 32, 32, 3)
    write_cifar_batch(folder / "test_batch", test)
    return folder, train, test


def test_cifar_batches(tmp_path):
    _, train, test = _cifar_tree(tmp_path)
    s = load(f"cifar10:{tmp_path}")
    assert s.images.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(s.images, train)
    np.testing.assert_array_equal(load(f"cifar10:{tmp_path}", "test").images, test)
    np.testing.assert_array_equal(load(f"cifar10:{tmp_path}", limit=3).images, train[:3])


def test_cifar_tar_gz(tmp_path):
    folder, train, test = _cifar_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(dest / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    np.testing.assert_array_equal(load(f"cifar10:{dest}", "all").images, np.concatenate([train, test]))
    assert (dest / "cifar-10-batches-py" / "test_batch").is_file()


def test_cifar_extraction_is_all_or_nothing(tmp_path, monkeypatch):
    """An extraction that breaks mid-way (disk full, kill) leaves no half-extracted folder
    that would later pass for a complete one; the next try extracts normally."""
    folder, train, test = _cifar_tree(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(dest / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    real, calls = tarfile.TarFile.extractfile, []

    def breaks_on_third_file(self, member):
        calls.append(member)
        if len(calls) == 3:
            raise OSError("No space left on device")
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", breaks_on_third_file)
    with pytest.raises(DataError, match="No space left"):
        load(f"cifar10:{dest}", "test")
    assert len(calls) == 3  # two files were written before the failure ...
    assert not (dest / "cifar-10-batches-py").exists()  # ... but none is visible
    assert [p.name for p in dest.iterdir()] == ["cifar-10-python.tar.gz"]  # no temporary left
    monkeypatch.setattr(tarfile.TarFile, "extractfile", real)
    np.testing.assert_array_equal(load(f"cifar10:{dest}", "test").images, test)


def test_cifar_tar_path_traversal(tmp_path):
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py/../../evil")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="refusing"):
        load(f"cifar10:{tmp_path}")
    assert not (tmp_path.parent / "evil").exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_cifar_py2_style_pickle(tmp_path):
    """The distributed batches name numpy.core.multiarray and use protocol 2."""
    x = rand_images(2, 32, 32, 3)
    rows = x.transpose(0, 3, 1, 2).reshape(2, -1)
    blob = pickle.dumps({"data": rows, "labels": [1, 2]}, protocol=2)
    blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    (tmp_path / "b").write_bytes(blob)
    np.testing.assert_array_equal(data.read_cifar_batch(tmp_path / "b"), x)


def test_cifar_malicious_pickle_refused(tmp_path):
    folder, _, _ = _cifar_tree(tmp_path)
    marker = tmp_path / "pwned"
    payload = {b"data": np.zeros((1, 3072), np.uint8), b"x": _Evil(marker)}
    (folder / "data_batch_1").write_bytes(pickle.dumps(payload, protocol=4))
    with pytest.raises(DataError, match=r"refused global (posix|nt|os)\.system"):
        load(f"cifar10:{tmp_path}")
    assert not marker.exists()


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz"):
        load(f"cifar10:{tmp_path}", download=False)


# ---------------------------------------------------------------------------
# SVHN and downsampled ImageNet


def test_svhn_mat(tmp_path):
    tr, te = rand_images(6, 32, 32, 3), rand_images(2, 32, 32, 3)
    scipy.io.savemat(tmp_path / "train_32x32.mat", {"X": tr.transpose(1, 2, 3, 0), "y": np.ones(6)})
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": te.transpose(1, 2, 3, 0), "y": np.ones(2)})
    np.testing.assert_array_equal(load(f"svhn:{tmp_path}").images, tr)
    np.testing.assert_array_equal(load(f"svhn:{tmp_path}", "test", limit=1).images, te[:1])
    assert load(f"svhn:{tmp_path}", "all").images.shape == (8, 32, 32, 3)


def test_svhn_missing(tmp_path):
    with pytest.raises(DataError, match="train_32x32.mat"):
        load(f"svhn:{tmp_path}", download=False)


@pytest.mark.parametrize("size", [32, 64])
def test_imagenet_npz(tmp_path, size):
    batches = [rand_images(3, size, size, 3) for _ in range(10)]
    for i, b in enumerate(batches):
        write_imagenet_batch(tmp_path / f"train_data_batch_{i + 1}.npz", b)
    val = rand_images(4, size, size, 3)
    write_imagenet_batch(tmp_path / "val_data.npz", val)
    name = f"imagenet{size}:{tmp_path}"
    np.testing.assert_array_equal(load(name).images, np.concatenate(batches))
    np.testing.assert_array_equal(load(name, "test").images, val)
    # limit is served from the first batches: the later ones are never opened
    for i in range(2, 11):
        (tmp_path / f"train_data_batch_{i}.npz").write_bytes(b"garbage")
    np.testing.assert_array_equal(load(name, limit=3).images, batches[0])


def test_imagenet_missing_and_wrong_size(tmp_path):
    with pytest.raises(DataError) as err:
        load(f"imagenet32:{tmp_path}")
    assert "val_data.npz" in str(err.value) and "image-net.org" in str(err.value)
    write_imagenet_batch(tmp_path / "val_data.npz", rand_images(2, 64, 64, 3))
    with pytest.raises(DataError, match="expected"):
        load(f"imagenet32:{tmp_path}", "test")


# ---------------------------------------------------------------------------
# shipped sets


def test_digits():
    tr, te = load("digits"), load("digits", "test")
    assert tr.images.shape == (1500, 8, 8, 1) and te.images.shape == (297, 8, 8, 1)
    assert tr.K == 17 and tr.images.max() == 16
    assert load("digits", "all", limit=5).images.shape == (5, 8, 8, 1)


def test_skimage32():
    tr, te = load("skimage32"), load("skimage32", "test")
    assert tr.images.shape[1:] == (32, 32, 3) and te.images.shape[1:] == (32, 32, 3)
    assert tr.K == 256 and len(tr) > 1000 and len(te) > 100
    np.testing.assert_array_equal(load("skimage32", limit=7).images, tr.images[:7])
    assert len(load("skimage32", "all")) == len(tr) + len(te)


def test_cifar_and_svhn_labels_align_with_their_images(tmp_path):
    """The domain feature space of pcdm fid trains on these (docs/math.md §11)."""
    from pcdm.data.labels import load_labels

    folder = tmp_path / "c" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    labels = {}
    for i, name in enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"]):
        images = rand_images(2, 32, 32, 3)
        rows = images.transpose(0, 3, 1, 2).reshape(2, -1)
        labels[name] = [(2 * i) % 10, (2 * i + 1) % 10]
        (folder / name).write_bytes(pickle.dumps({b"data": rows, b"labels": labels[name]}, protocol=4))
    train = [v for k, lab in labels.items() if k != "test_batch" for v in lab]
    np.testing.assert_array_equal(load_labels(f"cifar10:{tmp_path / 'c'}", "train"), train)
    np.testing.assert_array_equal(load_labels(f"cifar10:{tmp_path / 'c'}", "test"), labels["test_batch"])
    np.testing.assert_array_equal(load_labels(f"cifar10:{tmp_path / 'c'}", "train", limit=3), train[:3])
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": rows, b"labels": [3, 11]}, protocol=4))
    with pytest.raises(DataError, match="labels"):
        load_labels(f"cifar10:{tmp_path / 'c'}", "test")

    tr = rand_images(4, 32, 32, 3)
    scipy.io.savemat(
        tmp_path / "train_32x32.mat", {"X": tr.transpose(1, 2, 3, 0), "y": np.array([[10], [1], [5], [9]])}
    )
    te = rand_images(1, 32, 32, 3)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": te.transpose(1, 2, 3, 0), "y": np.array([[3]])})
    np.testing.assert_array_equal(load_labels(f"svhn:{tmp_path}", "train"), [0, 1, 5, 9])
    np.testing.assert_array_equal(load_labels(f"svhn:{tmp_path}", "test"), [3])
    assert len(load_labels(f"svhn:{tmp_path}", "train")) == len(load(f"svhn:{tmp_path}").images)
