"""The .pcdm container (codec docstring): the classical fallback, the classically stored
seed of the bits-back stream, and forged fields of both. Untrained tiny models, T ≤ 3, so
every test takes a few seconds."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
import torch

from pcdm import classical, codec, data
from pcdm.checkpoint import save_tensors, write_json
from pcdm.cli import main
from pcdm.codec import container
from pcdm.model import PCDM, ModelConfig


def tiny(seed: int = 0) -> PCDM:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        model="w-pcdm", levels=2, image_shape=(1, 28, 28), width=8, depth=1, attention=False,
        schedule="fixed", gamma_min=-6.0, gamma_max=4.0,
    )  # fmt: skip
    return PCDM(cfg).eval()


@pytest.fixture(scope="module")
def model() -> PCDM:
    return tiny()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return data.load("fashion-mnist", split="test", limit=12).images


def npy_header(images: np.ndarray) -> codec.Header:
    h = codec.Header(codec.KIND_NPY, b"", *[0] * 10)
    h.shape, h.dtype = tuple(images.shape), images.dtype.str
    return h


def compress(model, images, container="auto", steps=2):
    h = npy_header(images)
    return codec.compress(model, images, h, steps, 4, progress=False, container=container)


def save_run(path, model: PCDM):
    path.mkdir(parents=True)
    save_tensors(path / "model.safetensors", model.state_dict())
    write_json(path / "config.json", {"model": model.config.to_dict()})
    return path


def forge(blob: bytes, offset: int, value: int, fmt: str = "<I") -> bytes:
    """Edit a header field and fix the header checksum."""
    b = bytearray(blob)
    struct.pack_into(fmt, b, offset, value)
    meta_len = struct.unpack_from("<I", b, 40 + 4 * 9)[0]
    fixed, full = codec.HEADER.size, codec.HEADER_SIZE
    crc = zlib.crc32(bytes(b[full : full + meta_len]), zlib.crc32(bytes(b[:fixed])))
    struct.pack_into("<I", b, fixed, crc)
    return bytes(b)


def forge_payload(blob: bytes, pos: int, xor: int) -> bytes:
    """Flip payload bits at ``pos`` (from the payload start) and fix the payload checksum."""
    b = bytearray(blob)
    start = codec.HEADER_SIZE + struct.unpack_from("<I", b, 40 + 4 * 9)[0]
    b[start + pos] ^= xor
    return forge(bytes(b), 40 + 4 * 12, zlib.crc32(bytes(b[start:])))


def test_auto_is_the_smaller_and_within_the_classical_guarantee(model, images, tmp_path, capsys):
    files = {c: compress(model, images, c) for c in codec.CONTAINERS}
    auto, stats = files["auto"]
    assert stats["bytes"] == len(auto) == min(stats["bits_back_bytes"], stats["classical_bytes"])
    assert len(files["bits-back"][0]) == stats["bits_back_bytes"]
    assert files["bits-back"][1]["container"] == "bits-back"
    assert len(files["classical"][0]) == stats["classical_bytes"]
    # The guarantee: ≤ Σ min(JPEG-XL, PNG) files + 3 bytes per image + header + padding + metadata.
    meta = len(container._meta_bytes(npy_header(images)))
    best = sum(min(len(classical.encode(x, c)) for c in codec.classical_codecs()) for x in images)
    assert stats["bytes"] <= stats["classical_bytes"] <= best + 3 * len(images) + codec.HEADER_SIZE + 8 + meta
    for blob, st in files.values():
        h, back = codec.decompress(model, blob)
        assert np.array_equal(back, images) and h.classical == (st["container"] == "classical")
    # --json says which container and both sizes.
    src, out = tmp_path / "x.npy", tmp_path / "x.pcdm"
    np.save(src, images[:5, ..., 0])
    run = save_run(tmp_path / "run", model)
    assert main(["compress", str(run), str(src), "-o", str(out), "--steps", "2", "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["container"] in ("bits-back", "classical") and js["bytes"] == out.stat().st_size
    assert js["classical_bytes"] >= js["bytes"] and js["classical_codecs"]


def test_one_image_is_stored_classically_and_needs_no_model(model, images, tmp_path):
    blob, stats = compress(model, images[:1])
    assert stats["container"] == "classical" and "bits_back_bytes" not in stats
    h, back = codec.decompress(tiny(seed=1), blob)  # another model's weights: not needed
    assert h.classical and np.array_equal(back, images[:1])
    (tmp_path / "one.pcdm").write_bytes(blob)  # through the CLI, with another run folder
    other = save_run(tmp_path / "other", tiny(seed=1))
    assert main(["decompress", str(other), str(tmp_path / "one.pcdm"), "-o", str(tmp_path / "o.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "o.npy"), images[:1])
    _, preview = codec.decompress(model, blob, preview_level=1)
    assert preview.shape == (1, 14, 14, 1)


def test_seed_replaces_the_initial_bits(model, images):
    """The first images, stored classically, are the stack's starting bits: the stream needs
    (almost) no pseudo-random initial bits, and the decoder gets the seed back intact."""
    blob, stats = compress(model, images, "bits-back")
    m = stats["seed_images"]
    assert 1 <= m < len(images) and stats["initial_bits"] < 1024
    plain = codec.encode_images(model, images[m:], 2, 4, ramp=True)
    assert plain.initial_bits > 4000  # what the seed saves
    h, words = codec.unpack(blob)
    back, _, seed = codec.decode_stream(
        model, words, len(images) - m, 2, 4, h.n_init, h.kmin, ramp=True, seed_words=h.seed_words
    )
    assert np.array_equal(back, images[m:])
    records = b"".join(codec.classical_record(x) for x in images[:m])
    assert np.array_equal(seed, codec.seed_words(records))
    assert np.array_equal(codec.decode_records(codec.seed_bytes(seed), m, 28, 28, 1), images[:m])
    _, preview = codec.decompress(model, blob, preview_level=1)  # seeded: decoded in full
    assert preview.shape == (len(images), 14, 14, 1)


@pytest.mark.parametrize("n", range(13))
def test_seed_words_round_trip(n):
    blob = bytes(range(1, n + 1))
    words = codec.seed_words(blob)
    assert len(words) >= 2 and words[-1] != 0 and codec.seed_bytes(words) == blob


def test_classical_records_reject_garbage(images):
    rec = b"".join(codec.classical_record(x) for x in images[:2])
    assert np.array_equal(codec.decode_records(rec, 2, 28, 28, 1), images[:2])
    for bad, what in [
        (rec[:-1], "truncated|trailing|decode"),
        (rec + b"\0", "trailing"),
        (b"\x09" + rec[1:], "codec id"),
        (rec[:1] + b"\xff\xff\xff\xff\xff\x01" + rec[2:], "length|truncated"),
    ]:
        with pytest.raises(codec.CodecError, match=what):
            codec.decode_records(bad, 2, 28, 28, 1)
    with pytest.raises(codec.CodecError, match="does not decode"):  # a record of another size
        codec.decode_records(rec, 2, 14, 56, 1)
    with pytest.raises(codec.CodecError, match="padding"):
        codec.seed_bytes(np.array([7, 9 << 24], dtype=np.uint32))


FIELDS = {"n_init": 7, "kmin": 8, "payload_words": 10, "seed_images": 13, "seed_words": 14}


@pytest.mark.parametrize("container", ["classical", "bits-back"])
def test_forged_container_fields_fail_cleanly(model, images, container):
    blob, _ = compress(model, images[:8], container)
    h, words = codec.unpack(blob)
    if container == "classical":  # the version-3 header these fields belong to (files written
        assert blob[4] == 4  # before the compact header; test_classical_fallback forges that)
        blob = codec.pack(h, words)
        assert blob[4] == 3 and np.array_equal(codec.decompress(model, blob)[1], images[:8])
    rng = np.random.default_rng(7)
    cases = []
    for name, i in FIELDS.items():
        for value in {0, 1, 2, 3, 7, 8, h.seed_words - 1, h.seed_words + 1, len(words), 2**31, 2**32 - 1}:
            cases.append((f"{name}={value}", forge(blob, 40 + 4 * i, value & 0xFFFFFFFF)))
    flags = blob[7] ^ codec.FLAG_CLASSICAL  # the classical flag flipped
    cases.append(("flag", forge(blob, 7, flags, "<B")))
    n_seed_bytes = 4 * h.seed_words
    payload_start = 4 * (len(words) - h.seed_words)  # the seed is the bottom of the payload
    for _ in range(12):  # bits of the classical images, payload checksum fixed
        pos = payload_start + int(rng.integers(n_seed_bytes))
        cases.append((f"seed byte {pos}", forge_payload(blob, pos, int(rng.integers(1, 256)))))
    for what, bad in cases:
        if bad == blob:
            continue
        try:
            _, back = codec.decompress(model, bad)
        except ValueError as err:  # CodecError is a ValueError
            assert "\n" not in str(err), what
            continue
        pytest.fail(f"{what}: a forged {container} file decoded without error")
