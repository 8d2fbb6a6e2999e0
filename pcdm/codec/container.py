"""The .pcdm container: the classical records (the fallback and the seed of the bits-back
stream) and the header, metadata and payload, every field bounded before use."""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import torch

from .. import classical
from ..data import to_nchw
from ..model import PCDM
from .ans import (
    GRID_BITS,
    HEADER,
    HEADER_CRC,
    HEADER_SIZE,
    KIND_FOLDER,
    KIND_NPY,
    MAGIC,
    MAX_IMAGES,
    MAX_LANES,
    MAX_NAME,
    MAX_SIDE,
    MAX_T,
    VERSION,
    CodecError,
    _single_thread,
    make_grid,
)

# ---------------------------------------------------------------------------
# Classical images: the fallback container, and the seed of the bits-back stream.

FLAG_RAMP = 1  # header flags: lane ramp on
FLAG_CLASSICAL = 2  # every image stored classically (no bits-back stream)
FLAG_CONTINUED = 4  # another part follows (a file coded in parallel parts, ``split_parts``)
MAX_PARTS = 4096
CLASSICAL_CODECS = ("jpegxl", "webp", "png")  # tried for every image; the smallest file is kept
CODEC_IDS = classical.CODECS  # a record's first byte indexes this tuple
SEED_MARGIN = 1.25  # whitening reads 1.25 × a pop's expected bits ahead (+ 64)


def classical_codecs() -> list[str]:
    names = [c for c in CLASSICAL_CODECS if c in classical.available_codecs()]
    if not names:
        raise CodecError("no classical lossless codec is available (Pillow's PNG is needed)")
    return names


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def classical_record(image: np.ndarray) -> bytes:
    """One uint8 image (H, W, C) as the smallest of its CLASSICAL_CODECS files, framed as
    codec id (1 byte, index into ``classical.CODECS``), file length (LEB128), file bytes;
    the file is decoded and checked bit-exact here, so the container always decodes."""
    H, W, C = image.shape
    best = None
    for name in classical_codecs():
        data = classical.encode(image, name)
        if best is not None and len(data) >= len(best[1]):
            continue  # ties go to the earlier codec of CLASSICAL_CODECS
        try:  # only a file that this decoder reads back bit-exact may be kept
            ok = np.array_equal(_decode_file(name, data, H, W, C), image)
        except Exception:  # the codec libraries raise their own types
            ok = False
        if ok:
            best = (name, data)
    if best is None:
        raise CodecError("no classical codec of this build round-trips this image")
    name, data = best
    return bytes([CODEC_IDS.index(name)]) + _leb128(len(data)) + data


def _decode_file(name: str, data: bytes, H: int, W: int, C: int) -> np.ndarray:
    """Decode one classical file into (H, W, C) uint8, refusing any other size before the
    pixels are allocated (a forged file cannot make the decoder allocate more)."""
    if name == "png":
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data), formats=["PNG"]) as pil:
            if pil.size != (W, H) or pil.mode != ("L" if C == 1 else "RGB"):
                raise ValueError(f"PNG is {pil.mode} {pil.size}")
            out = np.asarray(pil, dtype=np.uint8)
    elif name == "jpegxl":
        import imagecodecs

        out = np.empty((H, W) if C == 1 else (H, W, C), dtype=np.uint8)
        imagecodecs.jpegxl_decode(data, out=out, numthreads=1)
    elif name == "webp":
        import imagecodecs

        # Only the simple lossless layout (RIFF, WEBP, one VP8L chunk) that libwebp writes for
        # ``classical.encode``; its 14-bit sizes are checked before any pixel is allocated.
        if len(data) < 25 or data[:4] != b"RIFF" or data[8:16] != b"WEBPVP8L" or data[20] != 0x2F:
            raise ValueError("not a lossless WebP file")
        bits = int.from_bytes(data[21:25], "little")
        if ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1) != (W, H):
            raise ValueError("WebP file has another size")
        rgb = np.asarray(imagecodecs.webp_decode(data, hasalpha=False), dtype=np.uint8)
        if rgb.shape != (H, W, 3):
            raise ValueError(f"WebP file decodes to {rgb.shape}")
        # A grayscale image is stored replicated to RGB (classical.encode): the channels must agree.
        if C == 1 and not (
            np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])
        ):
            raise ValueError("WebP file of a grayscale image has unequal channels")
        out = rgb[..., :1] if C == 1 else rgb
    else:
        raise ValueError(f"codec {name} is not used by the container")
    return np.ascontiguousarray(out.reshape(H, W, C))


def decode_records(blob: bytes, n: int, H: int, W: int, C: int) -> np.ndarray:
    """Mirror of ``b"".join(classical_record(x) for x in images)``: (n, H, W, C) uint8."""
    out, pos = [], 0  # one image at a time: memory follows the records actually present
    for i in range(n):
        if pos >= len(blob) or blob[pos] >= len(CODEC_IDS):
            raise CodecError(f"corrupt .pcdm payload: classical image {i} has no valid codec id")
        name, pos = CODEC_IDS[blob[pos]], pos + 1
        size, shift = 0, 0
        while True:
            if pos >= len(blob) or shift > 28:
                raise CodecError(f"corrupt .pcdm payload: classical image {i} has a bad length")
            size |= (blob[pos] & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not blob[pos - 1] & 0x80:
                break
        if pos + size > len(blob):
            raise CodecError(f"corrupt .pcdm payload: classical image {i} is truncated")
        try:
            out.append(_decode_file(name, bytes(blob[pos : pos + size]), H, W, C))
        except Exception as err:  # the codec libraries raise their own types
            raise CodecError(f"corrupt .pcdm payload: classical image {i} does not decode ({err})") from None
        pos += size
    if pos != len(blob):
        raise CodecError("corrupt .pcdm payload: trailing bytes after the classical images")
    return np.stack(out) if out else np.zeros((0, H, W, C), dtype=np.uint8)


def seed_words(blob: bytes) -> np.ndarray:
    """Bytes as uint32 words (LE) for the bottom of the stack: padded with zeros and a last
    byte p = the number of padding bytes (1..8), so the last word is non-zero (ANS needs it)
    and there are at least two words."""
    pad = 4 - len(blob) % 4
    if (len(blob) + pad) // 4 < 2:
        pad += 4
    raw = bytes(blob) + bytes(pad - 1) + bytes([pad])
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


def seed_bytes(words: np.ndarray) -> bytes:
    """Mirror of :func:`seed_words`."""
    raw = np.asarray(words, dtype="<u4").tobytes()
    pad = raw[-1] if raw else 0
    if not 1 <= pad <= min(8, len(raw)) or any(raw[len(raw) - pad : -1]):
        raise CodecError("corrupt .pcdm payload: bad padding of the classical images")
    return raw[: len(raw) - pad]


def seed_need_bits(model: PCDM, steps: int) -> float:
    """Bits the first (one-lane) batch draws below the top of the stack: its z₀ pop and the
    first pop of its first chain, each read 1.25 × ahead by the whitening (the ramp keeps
    later batches paid from the bits already pushed); the seed should hold this much."""
    grid = make_grid(model, steps)
    bits = np.log2(np.sqrt(2 * np.pi * np.e) * grid.s_q / grid.delta)
    finest = model.level_dims[-1]
    z0_dims = finest if model.map.discrete else model.dims
    return SEED_MARGIN * (z0_dims * bits[0] + finest * bits[1]) + 128


def seed_count(record_sizes: Sequence[int], need_bits: float) -> int:
    """How many leading images to store classically as the seed: the fewest whose records
    hold ``need_bits`` (each costs its classical size instead of its bits-back size, ≈ 20 %
    more, while every bit of seed the stream draws on saves a pseudo-random initial bit)."""
    total = 0
    for m, size in enumerate(record_sizes):
        if 8 * total >= need_bits:
            return m
        total += size
    return len(record_sizes)


def clean_previews(model: PCDM, images: np.ndarray, level: int) -> np.ndarray:
    """Previews of level ``level`` (0-based) made from known images (the classically stored
    ones): the same resolution and kind as the progressive decoder's, from clean levels."""
    x = to_nchw(images).long()
    with _single_thread():
        if model.map.discrete:
            xs = model.map(x)[: level + 1]
            out = model.map.octave_image(xs).clamp(0, model.config.K - 1).to(torch.uint8)
        else:
            gam0 = float(model.schedule(torch.zeros((), dtype=model.dtype)))
            alpha0 = math.sqrt(1 / (1 + math.exp(gam0)))
            cs = model.map(model.pixels_to_f(x))[: level + 1]
            out = model.preview([alpha0 * c for c in cs])
    return out.permute(0, 2, 3, 1).numpy()


# ---------------------------------------------------------------------------
# Container.


@dataclass
class Header:
    kind: int
    fingerprint: bytes
    T: int
    B: int
    N: int
    C: int
    H: int
    W: int
    K: int
    n_init: int
    kmin: int
    pixel_crc: int
    ramp: bool = False
    names: list[str] | None = None  # kind folder
    shape: tuple[int, ...] | None = None  # kind npy
    dtype: str | None = None
    seed_images: int = 0  # the first images, stored classically as the stream's seed
    seed_words: int = 0  # their words at the bottom of the payload
    continued: bool = False  # another part follows in the same file

    @property
    def classical(self) -> bool:
        """All images stored classically: no bits-back stream, no model needed."""
        return self.seed_images == self.N


def _meta_bytes(h: Header) -> bytes:
    if h.kind == KIND_NPY:
        dt = h.dtype.encode("ascii")
        return (
            struct.pack("<B", len(h.shape))
            + struct.pack(f"<{len(h.shape)}I", *h.shape)
            + struct.pack("<B", len(dt))
            + dt
        )
    out = bytearray()
    for name in h.names:
        raw = name.encode("utf-8")
        out += struct.pack("<H", len(raw)) + raw
    return bytes(out)


def pack(h: Header, words: np.ndarray) -> bytes:
    meta = _meta_bytes(h)
    payload = np.asarray(words, dtype="<u4").tobytes()
    flags = (FLAG_RAMP if h.ramp else 0) | (FLAG_CLASSICAL if h.classical else 0)
    flags |= FLAG_CONTINUED if h.continued else 0
    fixed = HEADER.pack(
        MAGIC, VERSION, h.kind, GRID_BITS, flags, h.fingerprint,
        h.T, h.B, h.N, h.C, h.H, h.W, h.K, h.n_init, h.kmin, len(meta), len(words),
        h.pixel_crc, zlib.crc32(payload), h.seed_images, h.seed_words,
    )  # fmt: skip
    crc = zlib.crc32(meta, zlib.crc32(fixed))
    return fixed + HEADER_CRC.pack(crc) + meta + payload


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """Parse and validate a .pcdm file (bounds on every field before any allocation)."""
    if len(data) > 4 and data[:4] == MAGIC and data[4] == COMPACT_VERSION:
        return unpack_compact(data)
    if len(data) < HEADER_SIZE:
        raise CodecError(f"not a .pcdm file: only {len(data)} bytes (truncated?)")
    fields = HEADER.unpack_from(data, 0)
    magic, version, kind, grid_bits, flags, fp = fields[:6]
    T, B, N, C, H, W, K, n_init, kmin, meta_len, n_words, pixel_crc, payload_crc = fields[6:19]
    seed_images, seed_words = fields[19:]
    if magic != MAGIC:
        raise CodecError("not a .pcdm file (bad magic bytes)")
    if version != VERSION:
        raise CodecError(
            f"unsupported .pcdm version {version} (this build reads {VERSION} and {COMPACT_VERSION})"
        )
    if meta_len > len(data) - HEADER_SIZE:
        raise CodecError("corrupt .pcdm header: metadata length beyond the end of the file")
    meta = bytes(data[HEADER_SIZE : HEADER_SIZE + meta_len])
    (crc,) = HEADER_CRC.unpack_from(data, HEADER.size)
    if zlib.crc32(meta, zlib.crc32(bytes(data[: HEADER.size]))) != crc:
        raise CodecError("corrupt .pcdm header (checksum mismatch)")
    # Belt and braces: the header checksum can be forged, the bounds cannot be skipped.
    if grid_bits != GRID_BITS:
        raise CodecError(f"unsupported grid setting {grid_bits} in .pcdm header")
    if flags & ~(FLAG_RAMP | FLAG_CLASSICAL | FLAG_CONTINUED):
        raise CodecError(f"corrupt .pcdm header: unknown flags {flags:#04x}")
    if kind not in (KIND_NPY, KIND_FOLDER):
        raise CodecError(f"corrupt .pcdm header: unknown input kind {kind}")
    if not (1 <= T <= MAX_T and 1 <= B <= MAX_LANES and 1 <= N <= MAX_IMAGES):
        raise CodecError(f"corrupt .pcdm header: T={T}, B={B}, N={N} out of range")
    if C not in (1, 3) or not (1 <= H <= MAX_SIDE and 1 <= W <= MAX_SIDE) or not 2 <= K <= 256:
        raise CodecError(f"corrupt .pcdm header: image shape {C}×{H}×{W}, K={K} invalid")
    classical = bool(flags & FLAG_CLASSICAL)
    if (
        seed_images > N
        or classical != (seed_images == N)
        or (seed_images == 0) != (seed_words == 0)
        or seed_words == 1
        or seed_words > n_words
        or (classical and (seed_words != n_words or n_init or kmin))
    ):
        raise CodecError("corrupt .pcdm header: invalid classical-images record")
    head = 0 if seed_words else 2
    if not classical and not (
        head <= n_init < 2**31 and kmin <= n_init - head and n_init - kmin + seed_words <= n_words
    ):
        # The decoder ends with the reservoir words kmin … n_init − 1 (and the seed) on its
        # stack, which a valid payload holds: checked before any of them is built.
        raise CodecError("corrupt .pcdm header: invalid initial-bits record")
    if HEADER_SIZE + meta_len + 4 * n_words != len(data):
        raise CodecError(
            f"truncated or padded .pcdm file: {len(data)} bytes, header says "
            f"{HEADER_SIZE + meta_len + 4 * n_words}"
        )
    if n_words < 2:
        raise CodecError("corrupt .pcdm file: empty payload")
    payload = bytes(data[HEADER_SIZE + meta_len :])
    if zlib.crc32(payload) != payload_crc:
        raise CodecError("corrupt .pcdm payload (checksum mismatch)")
    h = Header(kind, fp, T, B, N, C, H, W, K, n_init, kmin, pixel_crc, bool(flags & FLAG_RAMP))
    h.seed_images, h.seed_words, h.continued = seed_images, seed_words, bool(flags & FLAG_CONTINUED)
    _parse_meta(h, meta)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    if words[-1] == 0:
        raise CodecError("corrupt .pcdm payload (ends in a zero word)")
    return h, words


# ---------------------------------------------------------------------------
# The compact header of an all-classical file (header version 4; docs/format.md): no model
# fingerprint, stream fields or word padding, and the records' codec ids and lengths packed
# as bits. A classical-only file that is one part of a ``--jobs`` file but not the last keeps
# the version-3 header (``split_parts`` needs its length); version-3 classical files decode.

COMPACT_VERSION = 4
COMPACT_FIXED = 12  # magic 4, version 1, kind 1, C 1, K − 1 1, CRC-32 of the pixels 4
CODEC_BITS = 2  # a record's codec id (index into classical.CODECS, which has 4 entries)


def _uleb(blob: bytes, pos: int, what: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(blob) or shift > 28:
            raise CodecError(f"corrupt .pcdm header: bad {what}")
        value |= (blob[pos] & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not blob[pos - 1] & 0x80:
            return value, pos


def split_records(blob: bytes, n: int) -> list[tuple[int, bytes]]:
    """The (codec id, file) pairs of ``n`` records framed by :func:`classical_record`."""
    out, pos = [], 0
    for i in range(n):
        if pos >= len(blob) or blob[pos] >= len(CODEC_IDS):
            raise CodecError(f"corrupt .pcdm payload: classical image {i} has no valid codec id")
        size, start = _uleb(blob, pos + 1, f"length of classical image {i}")
        if start + size > len(blob):
            raise CodecError(f"corrupt .pcdm payload: classical image {i} is truncated")
        out.append((blob[pos], bytes(blob[start : start + size])))
        pos = start + size
    if pos != len(blob):
        raise CodecError("corrupt .pcdm payload: trailing bytes after the classical images")
    return out


def _compact_head(h: Header, sizes: Sequence[int], cids: Sequence[int]) -> bytes:
    """Everything of a compact file before the records' files (docs/format.md, "The compact
    classical header"): fixed fields, LEB128 N, H, W, pixel CRC, metadata, the smallest
    record length, the spread width b and the bit-packed (codec id, length − smallest) index."""
    lo = min(sizes)
    b = (max(sizes) - lo).bit_length()
    acc = 0
    for i, (cid, size) in enumerate(zip(cids, sizes)):  # little-endian bits: record i at bit i (2 + b)
        acc |= (cid | (size - lo) << CODEC_BITS) << (i * (CODEC_BITS + b))
    index = acc.to_bytes((h.N * (CODEC_BITS + b) + 7) // 8, "little")
    out = bytearray(MAGIC + bytes([COMPACT_VERSION, h.kind, h.C, h.K - 1]))
    out += _leb128(h.N) + _leb128(h.H) + _leb128(h.W) + struct.pack("<I", h.pixel_crc)
    if h.kind == KIND_NPY:
        dt = h.dtype.encode("ascii")
        out += bytes([len(h.shape), len(dt)]) + dt
    else:
        for name in h.names:
            raw = name.encode("utf-8")
            out += _leb128(len(raw)) + raw
    return bytes(out + _leb128(lo) + bytes([b]) + index)


def compact_overhead(h: Header, sizes: Sequence[int], cids: Sequence[int] | None = None) -> int:
    """Bytes a compact file adds to its records' files (of lengths ``sizes``): its header
    (:func:`_compact_head`) and the final CRC-32 (docs/format.md, "Guarantees")."""
    return len(_compact_head(h, sizes, cids or [0] * len(sizes))) + 4


def pack_classical(h: Header, records: Sequence[bytes]) -> bytes:
    """An all-classical file from the images' :func:`classical_record` s: the compact
    header (version 4), or version 3 (:func:`pack`) for a part that another part follows."""
    if h.continued:
        words = seed_words(b"".join(records))
        h.seed_images, h.seed_words, h.n_init, h.kmin = h.N, len(words), 0, 0
        return pack(h, words)
    pairs = split_records(b"".join(records), h.N)
    if h.K > 256 or h.C not in (1, 3):
        raise CodecError(f"the compact classical header holds uint8 images only (K={h.K}, C={h.C})")
    out = _compact_head(h, [len(f) for _, f in pairs], [cid for cid, _ in pairs])
    out += b"".join(f for _, f in pairs)
    return out + struct.pack("<I", zlib.crc32(out))


def unpack_compact(data: bytes) -> tuple[Header, np.ndarray]:
    """Parse a version-4 file into the header and payload words a version-3 all-classical
    file of the same records has (so decoding is one path); every field bounded first."""
    if len(data) < COMPACT_FIXED + 4 + 3:
        raise CodecError(f"not a .pcdm file: only {len(data)} bytes (truncated?)")
    if zlib.crc32(bytes(data[:-4])) != struct.unpack_from("<I", data, len(data) - 4)[0]:
        raise CodecError("corrupt .pcdm file (checksum mismatch)")
    kind, C, K = data[5], data[6], data[7] + 1
    pos = 8
    N, pos = _uleb(data, pos, "image count")
    H, pos = _uleb(data, pos, "image height")
    W, pos = _uleb(data, pos, "image width")
    (crc,) = struct.unpack_from("<I", data, pos)
    pos += 4
    if kind not in (KIND_NPY, KIND_FOLDER):
        raise CodecError(f"corrupt .pcdm header: unknown input kind {kind}")
    if not 1 <= N <= MAX_IMAGES:
        raise CodecError(f"corrupt .pcdm header: N={N} out of range")
    if C not in (1, 3) or not (1 <= H <= MAX_SIDE and 1 <= W <= MAX_SIDE) or K < 2:
        raise CodecError(f"corrupt .pcdm header: image shape {C}×{H}×{W}, K={K} invalid")
    h = Header(kind, bytes(32), 1, 1, N, C, H, W, K, 0, 0, crc)
    meta = bytearray()  # the version-3 metadata, parsed by the same code
    if kind == KIND_NPY:
        if pos + 2 > len(data) or data[pos] not in (3, 4) or pos + 2 + data[pos + 1] > len(data):
            raise CodecError("corrupt .pcdm header: bad array metadata")
        ndim, n = data[pos], data[pos + 1]
        shape = (N, H, W) + ((C,) if ndim == 4 else ())
        meta += (
            struct.pack("<B", ndim)
            + struct.pack(f"<{ndim}I", *shape)
            + bytes([n])
            + data[pos + 2 : pos + 2 + n]
        )
        pos += 2 + n
    else:
        for _ in range(N):
            n, pos = _uleb(data, pos, "file name length")
            if not 1 <= n <= MAX_NAME or pos + n > len(data):
                raise CodecError("corrupt .pcdm header: bad file name length")
            meta += struct.pack("<H", n) + data[pos : pos + n]
            pos += n
    _parse_meta(h, bytes(meta))
    lo, pos = _uleb(data, pos, "record lengths")
    if pos >= len(data) or data[pos] > 32:
        raise CodecError("corrupt .pcdm header: bad record length width")
    b, pos = data[pos], pos + 1
    width = CODEC_BITS + b
    n_index = (N * width + 7) // 8
    if pos + n_index > len(data) - 4:
        raise CodecError("truncated .pcdm file: the record index is cut off")
    acc = int.from_bytes(data[pos : pos + n_index], "little")
    pos += n_index
    framed = bytearray()
    for i in range(N):
        field = (acc >> (i * width)) & ((1 << width) - 1)
        cid, size = field & 3, lo + (field >> CODEC_BITS)
        if pos + size > len(data) - 4:
            raise CodecError(f"truncated .pcdm file: classical image {i} is cut off")
        framed += bytes([cid]) + _leb128(size) + data[pos : pos + size]
        pos += size
    if pos != len(data) - 4:
        raise CodecError("truncated or padded .pcdm file: bytes after the classical images")
    words = seed_words(bytes(framed))
    h.seed_images, h.seed_words = N, len(words)
    return h, words


def split_parts(data: bytes) -> list[bytes]:
    """A file coded in parallel parts is the parts' files back to back, each but the last
    flagged FLAG_CONTINUED; a one-part file is itself. Only the lengths are read here (each
    part is validated by :func:`unpack`)."""
    parts, pos = [], 0
    while True:
        if data[pos : pos + 4] == MAGIC and data[pos + 4 : pos + 5] == bytes([COMPACT_VERSION]):
            return [*parts, bytes(data[pos:])]  # a compact file is never continued: the rest
        if len(data) - pos < HEADER_SIZE:
            have = len(data) - pos
            raise CodecError(f"not a .pcdm file: part {len(parts)} has only {have} bytes (truncated?)")
        fields = HEADER.unpack_from(data, pos)
        if fields[0] != MAGIC:
            raise CodecError(f"not a .pcdm file (bad magic bytes{f' in part {len(parts)}' if parts else ''})")
        meta_len, n_words = fields[15], fields[16]
        end = pos + HEADER_SIZE + meta_len + 4 * n_words
        continued = bool(fields[4] & FLAG_CONTINUED)
        if end > len(data) or (not continued and end != len(data)):
            end = len(data)  # let unpack name the truncation or padding
        parts.append(bytes(data[pos:end]))
        if not continued or end == len(data):
            if continued:
                raise CodecError("truncated .pcdm file: the last part says another follows")
            return parts
        if len(parts) >= MAX_PARTS:
            raise CodecError(f"corrupt .pcdm file: more than {MAX_PARTS} parts")
        pos = end


def _parse_meta(h: Header, meta: bytes) -> None:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(meta):
            raise CodecError("corrupt .pcdm header: metadata truncated")
        out = meta[pos : pos + n]
        pos += n
        return out

    if h.kind == KIND_NPY:
        (ndim,) = struct.unpack("<B", take(1))
        if ndim not in (3, 4):
            raise CodecError(f"corrupt .pcdm header: array rank {ndim}")
        shape = struct.unpack(f"<{ndim}I", take(4 * ndim))
        want = (h.N, h.H, h.W) + ((h.C,) if ndim == 4 else ())
        if shape != want or (ndim == 3 and h.C != 1):
            raise CodecError(f"corrupt .pcdm header: array shape {shape} vs images {want}")
        (n,) = struct.unpack("<B", take(1))
        try:
            dt = np.dtype(take(n).decode("ascii"))
        except (UnicodeDecodeError, TypeError, ValueError):
            raise CodecError("corrupt .pcdm header: bad dtype") from None
        if dt.kind not in "uib" or dt.itemsize > 8:
            raise CodecError(f"corrupt .pcdm header: dtype {dt} is not an integer type")
        h.shape, h.dtype = tuple(shape), dt.str
    else:
        names = []
        for _ in range(h.N):
            (n,) = struct.unpack("<H", take(2))
            if not 1 <= n <= MAX_NAME:
                raise CodecError("corrupt .pcdm header: bad file name length")
            try:
                name = take(n).decode("utf-8")
            except UnicodeDecodeError:
                raise CodecError("corrupt .pcdm header: file name is not UTF-8") from None
            names.append(check_name(name))
        if len(set(names)) != len(names):
            raise CodecError("corrupt .pcdm header: duplicate file names")
        h.names = names
    if pos != len(meta):
        raise CodecError("corrupt .pcdm header: trailing metadata")


def check_name(name: str) -> str:
    """A relative POSIX path that stays inside the output folder."""
    p = PurePosixPath(name)
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise CodecError(f"corrupt .pcdm header: unsafe file name {name!r}")
    return name


def pixel_crc(images: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
