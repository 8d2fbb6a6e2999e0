"""The classical fallback (docs/format.md): per image the smallest of PNG, lossless WebP and
JPEG-XL, recorded in the image's record, behind the compact classical header (version 4);
the size guarantees; bit-exact round trips; version-3 files still decode."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from pcdm import classical, codec, data
from pcdm.codec import container

FIXTURES = Path(__file__).parent / "fixtures"
THREE = ("png", "webp", "jpegxl")

pytestmark = pytest.mark.skipif(
    not set(THREE) <= set(classical.available_codecs()), reason="imagecodecs without WebP/JPEG-XL"
)


def header(images: np.ndarray, names: list[str] | None = None) -> codec.Header:
    N, H, W, C = images.shape
    kind = codec.KIND_FOLDER if names else codec.KIND_NPY
    h = codec.Header(kind, bytes(32), 1, 1, N, C, H, W, 256, 0, 0, codec.pixel_crc(images))
    if names:
        h.names = names
    else:
        h.shape, h.dtype = tuple(images.shape), images.dtype.str
    return h


def pack(images: np.ndarray, names=None) -> tuple[bytes, list[bytes]]:
    records = [codec.classical_record(x) for x in images]
    return codec.pack_classical(header(images, names), records), records


def unpack(blob: bytes) -> tuple[codec.Header, np.ndarray]:
    h, words = codec.unpack(blob)
    assert h.classical
    return h, codec.decode_records(codec.seed_bytes(words), h.N, h.H, h.W, h.C)


def best_sizes(images: np.ndarray) -> list[dict[str, int]]:
    return [{c: len(classical.encode(x, c)) for c in THREE} for x in images]


def mixed(C: int, n: int = 9, seed: int = 0) -> np.ndarray:
    """16×16 images of three kinds, each made for one codec to win: uniform noise (PNG's
    stored deflate blocks cost least), a 40-value run repeated (WebP's backward references),
    a smooth gradient with a little noise (JPEG-XL's predictors)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            x = rng.integers(0, 256, (16, 16, C))
        elif kind == 1:
            x = np.resize(rng.integers(0, 256, 40 * C), (16, 16, C))
        else:
            g = np.add.outer(np.arange(16), 2 * np.arange(16))[..., None] * (3 + i % 2)
            x = g + np.arange(C) * 20 + rng.integers(0, 2, (16, 16, C))
        out.append(x % 256)
    return np.stack(out).astype(np.uint8)


@pytest.mark.parametrize("C", [1, 3])
def test_each_codec_wins_and_the_record_keeps_the_smallest(C):
    images = mixed(C)
    blob, records = pack(images)
    sizes = best_sizes(images)
    winners = [codec.CODEC_IDS[r[0]] for r in records]
    for s, r, w in zip(sizes, records, winners):
        assert s[w] == min(s.values())  # the recorded codec is the smallest of the three
        n, pos = container._uleb(r, 1, "length")
        assert n == s[w] and len(r) == pos + n
    if C == 3:  # on grayscale noise WebP (replicated to RGB) still beats PNG: two winners there
        assert all(winners.count(c) >= 1 for c in THREE), (winners, sizes)
    else:
        assert {"webp", "jpegxl"} <= set(winners), (winners, sizes)
    # never larger than Σ per-image best + the stated header (compact_overhead)
    best = sum(min(s.values()) for s in sizes)
    h = header(images)
    overhead = codec.compact_overhead(h, [min(s.values()) for s in sizes])
    assert len(blob) == best + overhead
    assert overhead <= 128
    back_h, back = unpack(blob)
    assert np.array_equal(back, images) and back_h.shape == images.shape


@pytest.fixture(scope="module")
def fashion() -> np.ndarray:
    return data.load("fashion-mnist", split="test", limit=40).images


def test_one_image_within_32_bytes_and_40_within_128(fashion):
    for n, slack in ((1, 32), (40, 128)):
        images = fashion[:n]
        blob, _ = pack(images)
        best = sum(min(s.values()) for s in best_sizes(images))
        assert best < len(blob) <= best + slack, (n, len(blob) - best)
        assert np.array_equal(unpack(blob)[1], images)
    # Generated images of one size: the same bounds hold.
    for n, slack in ((1, 32), (40, 128)):
        images = mixed(3, n, seed=n)
        blob, _ = pack(images)
        best = sum(min(s.values()) for s in best_sizes(images))
        assert len(blob) <= best + slack and np.array_equal(unpack(blob)[1], images)


def test_folder_names_round_trip_and_cost_their_bytes(fashion):
    names = [f"d/img{i}.png" for i in range(5)]
    blob, _ = pack(fashion[:5], names)
    h, back = unpack(blob)
    assert h.names == names and np.array_equal(back, fashion[:5])
    plain, _ = pack(fashion[:5])
    npy_meta = 2 + len(fashion.dtype.str)  # rank, dtype length, dtype
    assert len(blob) == len(plain) - npy_meta + sum(1 + len(n) for n in names)  # LEB128 length + name


def test_through_compress_and_decompress(fashion):
    import torch

    from pcdm.model import PCDM, ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        model="w-pcdm", levels=2, image_shape=(1, 28, 28), width=8, depth=1, attention=False,
        schedule="fixed", gamma_min=-6.0, gamma_max=4.0,
    )  # fmt: skip
    model = PCDM(cfg).eval()
    h = codec.Header(codec.KIND_NPY, b"", *[0] * 10)
    h.shape, h.dtype = tuple(fashion[:3].shape), fashion.dtype.str
    blob, stats = codec.compress(model, fashion[:3], h, 2, 4, progress=False, container="classical")
    assert blob[4] == container.COMPACT_VERSION and stats["classical_bytes"] == len(blob)
    assert sum(stats["classical_codecs"].values()) == 3
    _, back = codec.decompress(model, blob)
    assert np.array_equal(back, fashion[:3])


def test_version_3_classical_file_still_decodes():
    blob = (FIXTURES / "classical_v3.pcdm").read_bytes()
    want = np.load(FIXTURES / "classical_v3_images.npy")
    assert blob[4] == 3
    h, back = unpack(blob)
    assert np.array_equal(back.reshape(want.shape), want)


def test_forged_compact_files_fail_in_one_line(fashion):
    blob, _ = pack(fashion[:4])

    def refix(b: bytearray) -> bytes:
        return bytes(b[:-4]) + struct.pack("<I", zlib.crc32(bytes(b[:-4])))

    cases = {
        "truncated": blob[:-10],
        "crc": blob[:-1] + bytes([blob[-1] ^ 1]),
        "short": blob[:10],
    }
    b = bytearray(blob)
    b[5] = 9  # unknown kind
    cases["kind"] = refix(b)
    b = bytearray(blob)
    b[8] = 0  # N = 0
    cases["count"] = refix(b)
    b = bytearray(blob)
    b[-5] ^= 0xFF  # a pixel byte of the last file (checksum fixed): the file or CRC must catch it
    cases["payload"] = refix(b)
    b = bytearray(blob) + b"xx"
    cases["padded"] = refix(b)
    for what, bad in cases.items():
        with pytest.raises(codec.CodecError) as err:
            h, words = codec.unpack(bad)
            back = codec.decode_records(codec.seed_bytes(words), h.N, h.H, h.W, h.C)
            if codec.pixel_crc(back) != h.pixel_crc:
                raise codec.CodecError("pixel checksum mismatch")
        assert "\n" not in str(err.value), what


def test_other_versions_are_refused_in_one_line():
    blob = bytearray((FIXTURES / "classical_v3.pcdm").read_bytes())
    for version in (1, 2, 5, 255):
        blob[4] = version
        with pytest.raises(codec.CodecError, match=f"unsupported .pcdm version {version}") as err:
            codec.unpack(bytes(blob))
        assert "\n" not in str(err.value)
