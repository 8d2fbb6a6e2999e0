"""Classical lossless image codecs (PNG, JPEG-XL, …): what pcdm's code lengths are compared with.

Every image is compressed as its own file, the way a user would store it, and
the *whole* file is counted (headers and container included).  The cost of an
image of shape ``(H, W, C)`` is reported in bits per dimension::

    bpd = 8 * len(file_bytes) / (H * W * C)

which is directly comparable with the negative log-likelihood (in bits per
dimension) of a model over 8-bit pixels.  Per-file header overhead is a real
cost for small images (28x28, 32x32) and is deliberately not subtracted.

Codecs
------
``png``
    Pillow, ``optimize=True, compress_level=9``.  Grayscale is stored as mode
    ``"L"``, colour as ``"RGB"``.
``webp``
    imagecodecs (libwebp) lossless, ``level=100, method=6`` (the strongest
    setting, ``cwebp -lossless -z 9``).  WebP has no grayscale mode, so a
    grayscale image is replicated to RGB before encoding; the cost is still
    divided by ``H * W * C`` of the *original* image (C = 1), i.e. WebP is
    charged for the file a user would actually have to store.
``jpegxl``
    imagecodecs (libjxl) lossless (``lossless=True``, i.e. distance 0) with
    ``effort=JPEGXL_EFFORT`` (9 by default; 10 is a few percent smaller but
    far slower on larger images).  Grayscale is encoded as a one-channel image.
``jpegls``
    imagecodecs (CharLS) JPEG-LS, lossless (``near=0``) by default.

Grayscale may be given as ``(H, W)`` or ``(H, W, 1)``; :func:`decode` always
returns ``(H, W, C)``.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np

from .stats import standard_error

__all__ = [
    "CODECS",
    "JPEGXL_EFFORT",
    "WEBP_LEVEL",
    "WEBP_METHOD",
    "available_codecs",
    "encode",
    "decode",
    "codec_bpd",
    "compare",
]

CODECS: tuple[str, ...] = ("png", "webp", "jpegxl", "jpegls")

#: libjxl effort (1..10).  9 is near the best size at ~2 ms per 28x28 image.
JPEGXL_EFFORT: int = 9
#: libwebp lossless settings: level 100 + method 6 is ``cwebp -lossless -z 9``.
WEBP_LEVEL: int = 100
WEBP_METHOD: int = 6

_AVAILABLE: list[str] | None = None


def _check_codec(codec: str) -> None:
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")


def _as_hwc(image: np.ndarray) -> np.ndarray:
    """Validate an image and return it as a C-contiguous uint8 ``(H, W, C)`` array."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must be non-empty, got {image.shape}")
    return np.ascontiguousarray(image)


def _to_hwc(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array, dtype=np.uint8)


def encode(image: np.ndarray, codec: str) -> bytes:
    """Losslessly encode one uint8 image ``(H, W, C)`` (C in {1, 3}) as a complete file."""
    _check_codec(codec)
    image = _as_hwc(image)
    channels = image.shape[2]
    if codec == "png":
        from PIL import Image

        pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
        buf = io.BytesIO()
        pil.save(buf, format="PNG", optimize=True, compress_level=9)
        return buf.getvalue()

    import imagecodecs

    if codec == "webp":
        rgb = np.repeat(image, 3, axis=2) if channels == 1 else image
        data = imagecodecs.webp_encode(rgb, level=WEBP_LEVEL, lossless=True, method=WEBP_METHOD)
    elif codec == "jpegxl":
        arr = image[:, :, 0] if channels == 1 else image
        data = imagecodecs.jpegxl_encode(arr, lossless=True, effort=JPEGXL_EFFORT)
    else:  # jpegls
        arr = image[:, :, 0] if channels == 1 else image
        data = imagecodecs.jpegls_encode(arr)
    return bytes(data)


def decode(data: bytes, codec: str, channels: int | None = None) -> np.ndarray:
    """Decode a file produced by :func:`encode`; returns ``(H, W, C)`` uint8.

    WebP stores grayscale images as RGB, so without ``channels`` a WebP file
    decodes to three (equal) channels.  Pass ``channels=1`` to get the
    original grayscale image back (a ``RuntimeError`` is raised if the
    channels are not equal, i.e. the file was not a replicated grayscale).
    For the other codecs ``channels`` is only checked.
    """
    _check_codec(codec)
    if codec == "png":
        from PIL import Image

        with Image.open(io.BytesIO(data)) as pil:
            if pil.mode not in ("L", "RGB"):
                raise RuntimeError(f"unexpected PNG mode {pil.mode!r}")
            out = _to_hwc(np.asarray(pil))
    else:
        import imagecodecs

        if codec == "webp":
            out = _to_hwc(imagecodecs.webp_decode(data, hasalpha=False))
        elif codec == "jpegxl":
            out = _to_hwc(imagecodecs.jpegxl_decode(data))
        else:
            out = _to_hwc(imagecodecs.jpegls_decode(data))

    if channels is not None and out.shape[2] != channels:
        if channels == 1 and out.shape[2] == 3:
            if not (np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])):
                raise RuntimeError("decoded RGB image is not a replicated grayscale image")
            out = np.ascontiguousarray(out[:, :, :1])
        else:
            raise RuntimeError(f"decoded {out.shape[2]} channels, expected {channels}")
    return out


def available_codecs() -> list[str]:
    """Codecs that round-trip losslessly in this environment (probed once, cached)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        rng = np.random.default_rng(0)
        probes = [
            rng.integers(0, 256, (8, 8, 1), dtype=np.uint8),
            rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
        ]
        found = []
        for codec in CODECS:
            try:
                ok = all(
                    np.array_equal(decode(encode(p, codec), codec, channels=p.shape[2]), p) for p in probes
                )
            except Exception:  # missing library / codec not compiled in
                ok = False
            if ok:
                found.append(codec)
        _AVAILABLE = found
    return list(_AVAILABLE)


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {images.dtype}")
    if images.ndim == 3:  # (N, H, W) grayscale
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W, C) with C in {{1, 3}}, got {images.shape}")
    return images


def codec_bpd(images: np.ndarray, codec: str, check: bool = True) -> np.ndarray:
    """Per-image bits per dimension, ``8 * len(file) / (H * W * C)``.

    ``images`` is uint8 ``(N, H, W, C)`` (``(N, H, W)`` is read as grayscale).
    With ``check=True`` every file is decoded and compared bit-exactly with
    its image; a mismatch raises ``RuntimeError``.
    """
    _check_codec(codec)
    images = _as_nhwc(images)
    n, h, w, c = images.shape
    dims = h * w * c
    out = np.empty(n, dtype=np.float64)
    for i in range(n):
        data = encode(images[i], codec)
        if check:
            try:
                back = decode(data, codec, channels=c)
            except Exception as exc:
                raise RuntimeError(f"{codec}: image {i} failed to decode: {exc}") from exc
            if back.shape != images[i].shape or not np.array_equal(back, images[i]):
                raise RuntimeError(f"{codec}: round trip of image {i} is not bit-exact")
        out[i] = 8.0 * len(data) / dims
    return out


def _summary(bpd: np.ndarray) -> dict:
    n = int(bpd.size)
    return {"bpd": float(bpd.mean()) if n else float("nan"), "se": standard_error(bpd), "n": n}


def compare(
    images: np.ndarray,
    codecs: Iterable[str] | None = None,
    progress: bool = True,
    check: bool = True,
) -> dict[str, dict]:
    """Compress every image with every codec; summarise bits per dimension.

    Returns ``{codec: {"bpd", "se", "n", "best_per_image", "per_image"}}`` for
    each codec, where ``best_per_image`` is the fraction of images on which
    that codec gives the smallest file (ties go to the first codec in order)
    and ``per_image`` is the array of per-image bpd.  An extra entry
    ``"best"`` summarises the per-image minimum over codecs (the "best
    classical codec per image"), with ``per_image`` the minima and ``argmin``
    the winning codec name per image.  ``codecs=None`` uses
    :func:`available_codecs`.
    """
    images = _as_nhwc(images)
    names = available_codecs() if codecs is None else list(codecs)
    if not names:
        raise ValueError("no codecs to compare")
    for name in names:
        _check_codec(name)
    n = images.shape[0]
    table = np.empty((len(names), n), dtype=np.float64)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n * len(names), desc="classical codecs", unit="img")
    for k, name in enumerate(names):
        if bar is not None:
            bar.set_postfix_str(name)
        for i in range(n):
            table[k, i] = codec_bpd(images[i : i + 1], name, check=check)[0]
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()

    winner = table.argmin(axis=0) if n else np.zeros(0, dtype=int)
    results: dict[str, dict] = {}
    for k, name in enumerate(names):
        entry = _summary(table[k])
        entry["best_per_image"] = float(np.mean(winner == k)) if n else float("nan")
        entry["per_image"] = table[k]
        results[name] = entry
    best = table.min(axis=0) if n else np.zeros(0)
    entry = _summary(best)
    entry["best_per_image"] = 1.0 if n else float("nan")
    entry["per_image"] = best
    entry["argmin"] = [names[j] for j in winner]
    results["best"] = entry
    return results


REFERENCE_MAX = 5000  # images: a classical reference beside a result only when that is cheap


def reference_bpd(images: np.ndarray) -> dict[str, float] | None:
    """PNG, lossless WebP and JPEG-XL bpd of ``images`` (each its own file), the reference point
    printed beside a bound or a code length; None when there are more than REFERENCE_MAX
    images or none of the codecs is available (the three the .pcdm container picks from)."""
    names = [c for c in ("png", "webp", "jpegxl") if c in available_codecs()]
    if not names or len(images) > REFERENCE_MAX:
        return None
    table = compare(images, codecs=names, progress=False)
    return {name: round(table[name]["bpd"], 4) for name in names}
