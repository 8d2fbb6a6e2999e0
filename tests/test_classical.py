import numpy as np
import pytest

from pcdm import classical
from pcdm.classical import CODECS, available_codecs, codec_bpd, compare, decode, encode

AVAILABLE = available_codecs()
SIZES = [(8, 8), (28, 28), (32, 32)]


def _random(h, w, c, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def _smooth(h, w, c):
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127.5 + 100 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    img = np.stack([base + 10 * k for k in range(c)], axis=-1)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def test_codecs_available():
    assert set(AVAILABLE) <= set(CODECS)
    for name in ("png", "jpegxl", "jpegls", "webp"):
        assert name in AVAILABLE, f"{name} should work with pillow + imagecodecs installed"
    assert available_codecs() == AVAILABLE  # cached, stable


@pytest.mark.parametrize("codec", AVAILABLE)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kind", ["random", "smooth"])
def test_round_trip_exact(codec, size, channels, kind):
    h, w = size
    img = _random(h, w, channels) if kind == "random" else _smooth(h, w, channels)
    data = encode(img, codec)
    assert isinstance(data, bytes) and len(data) > 0
    back = decode(data, codec, channels=channels)
    assert back.dtype == np.uint8 and back.shape == img.shape
    np.testing.assert_array_equal(back, img)
    if codec != "webp" or channels == 3:  # WebP stores grayscale as RGB
        np.testing.assert_array_equal(decode(data, codec), img)


@pytest.mark.parametrize("codec", AVAILABLE)
def test_grayscale_2d_input_same_as_hw1(codec):
    img = _smooth(28, 28, 1)
    assert encode(img[:, :, 0], codec) == encode(img, codec)
    back = decode(encode(img[:, :, 0], codec), codec, channels=1)
    assert back.shape == (28, 28, 1)
    np.testing.assert_array_equal(back, img)


def test_webp_gray_decodes_to_replicated_rgb():
    if "webp" not in AVAILABLE:
        pytest.skip("webp unavailable")
    img = _random(8, 8, 1)
    rgb = decode(encode(img, "webp"), "webp")
    assert rgb.shape == (8, 8, 3)
    np.testing.assert_array_equal(rgb, np.repeat(img, 3, axis=2))
    with pytest.raises(RuntimeError):
        decode(encode(_random(8, 8, 3), "webp"), "webp", channels=1)


@pytest.mark.parametrize("codec", AVAILABLE)
def test_constant_far_below_noise(codec):
    const = np.full((4, 32, 32, 1), 117, dtype=np.uint8)
    noise = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 1), dtype=np.uint8)
    b_const = codec_bpd(const, codec)
    b_noise = codec_bpd(noise, codec)
    assert b_const.shape == (4,) and b_noise.shape == (4,)
    assert b_const.max() < 0.5 * b_noise.min()
    assert b_const.max() < 2.0


@pytest.mark.parametrize("codec", AVAILABLE)
def test_noise_cannot_beat_entropy(codec):
    noise = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert codec_bpd(noise, codec).min() >= 7.5


def test_bpd_definition():
    img = _smooth(28, 28, 1)
    bpd = codec_bpd(img[None], "png")
    assert bpd[0] == pytest.approx(8 * len(encode(img, "png")) / (28 * 28))
    # (N, H, W) is read as grayscale
    np.testing.assert_allclose(codec_bpd(img[None, :, :, 0], "png"), bpd)


def test_check_detects_broken_codec(monkeypatch):
    real = classical.decode

    def corrupt(data, codec, channels=None):
        out = real(data, codec, channels).copy()
        out[0, 0, 0] ^= 1
        return out

    monkeypatch.setattr(classical, "decode", corrupt)
    with pytest.raises(RuntimeError):
        codec_bpd(_smooth(8, 8, 1)[None], "png")
    codec_bpd(_smooth(8, 8, 1)[None], "png", check=False)


def test_invalid_inputs():
    with pytest.raises(ValueError):
        encode(_smooth(8, 8, 1), "gif")
    with pytest.raises(TypeError):
        encode(np.zeros((8, 8, 1), dtype=np.float32), "png")
    with pytest.raises(ValueError):
        encode(np.zeros((8, 8, 4), dtype=np.uint8), "png")


def test_compare_best_le_every_codec():
    rng = np.random.default_rng(3)
    imgs = [_smooth(28, 28, 1)]
    imgs += [rng.integers(0, 256, (28, 28, 1), dtype=np.uint8) for _ in range(2)]
    imgs += [(rng.random((28, 28, 1)) < 0.2).astype(np.uint8) * 255 for _ in range(3)]
    images = np.stack(imgs)
    res = compare(images, progress=False)
    assert set(res) == set(AVAILABLE) | {"best"}
    for name in AVAILABLE:
        entry = res[name]
        assert entry["n"] == len(images)
        assert entry["se"] >= 0
        assert 0.0 <= entry["best_per_image"] <= 1.0
        assert res["best"]["bpd"] <= entry["bpd"] + 1e-12
        assert np.all(res["best"]["per_image"] <= entry["per_image"] + 1e-12)
    assert sum(res[name]["best_per_image"] for name in AVAILABLE) == pytest.approx(1.0)
    assert res["best"]["n"] == len(images)
    assert len(res["best"]["argmin"]) == len(images)


def test_compare_subset_and_progress(capsys):
    res = compare(_smooth(8, 8, 3)[None].repeat(2, 0), codecs=["png", "jpegls"], progress=True)
    assert set(res) == {"png", "jpegls", "best"}
    assert res["png"]["n"] == 2
