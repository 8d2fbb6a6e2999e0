"""The classical .pcdm container against its parts (issue 28, docs/format.md "Guarantees"):
for 1, 10 and 40 Fashion-MNIST test images, the all-classical file (compact header, the
smallest of PNG / lossless WebP / JPEG-XL per image) vs the per-image best of the three vs
each codec alone (one file per image, summed). No model is needed: the classical records
and header are built with the container functions directly, and the file is decoded back
and compared bit-exact.

    python benchmarks/codec_classical.py [--data fashion-mnist] [--out benchmarks/results/codec_classical]

Writes report.md (the table) and runs.json (every number) under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pcdm import classical, codec, data
from pcdm.codec import container

CODECS = ("png", "webp", "jpegxl")


def container_file(images: np.ndarray) -> tuple[bytes, list[str]]:
    """The all-classical .pcdm file of ``images`` and the codec each record chose."""
    N, H, W, C = images.shape
    h = codec.Header(codec.KIND_NPY, bytes(32), 1, 1, N, C, H, W, 256, 0, 0, codec.pixel_crc(images))
    h.shape, h.dtype = tuple(images.shape), images.dtype.str
    records = [codec.classical_record(x) for x in images]
    return codec.pack_classical(h, records), [codec.CODEC_IDS[r[0]] for r in records]


def before_file(images: np.ndarray, codecs=("jpegxl", "png")) -> bytes:
    """What the code before issue 28 wrote: version-3 header, JPEG-XL or PNG per image."""
    N, H, W, C = images.shape
    records = []
    for x in images:
        best = min((classical.encode(x, c) for c in codecs), key=len)
        cid = next(codec.CODEC_IDS.index(c) for c in codecs if classical.encode(x, c) == best)
        records.append(bytes([cid]) + container._leb128(len(best)) + best)
    h = codec.Header(codec.KIND_NPY, bytes(32), 1, 1, N, C, H, W, 256, 0, 0, codec.pixel_crc(images))
    h.shape, h.dtype, h.seed_images = tuple(images.shape), images.dtype.str, N
    words = codec.seed_words(b"".join(records))
    h.seed_words = len(words)
    blob = codec.pack(h, words)
    h2, w2 = codec.unpack(blob)
    assert np.array_equal(codec.decode_records(codec.seed_bytes(w2), N, H, W, C), images)
    return blob


def measure(images: np.ndarray) -> dict:
    sizes = {c: [len(classical.encode(x, c)) for x in images] for c in CODECS}
    best = [min(sizes[c][i] for c in CODECS) for i in range(len(images))]
    t0 = time.perf_counter()
    blob, chosen = container_file(images)
    seconds = time.perf_counter() - t0
    h, words = codec.unpack(blob)
    back = codec.decode_records(codec.seed_bytes(words), h.N, h.H, h.W, h.C)
    if not np.array_equal(back, images):
        raise SystemExit("the classical container did not round-trip")
    return {
        "n_images": len(images),
        "container_bytes": len(blob),
        "before_bytes": len(before_file(images)),  # version 3, JPEG-XL/PNG only
        "best_bytes": sum(best),
        "overhead_bytes": len(blob) - sum(best),
        "alone_bytes": {c: sum(v) for c, v in sizes.items()},
        "wins": {c: chosen.count(c) for c in CODECS},  # the codec each record holds
        "bpd": 8 * len(blob) / images[0].size / len(images),
        "encode_seconds": seconds,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 10, 40])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "codec_classical")
    args = ap.parse_args(argv)
    images = data.load(args.data, split="test", limit=max(args.counts)).images
    rows = [measure(images[:n]) for n in args.counts]
    head = (
        "| images | container | before (v3, JPEG-XL/PNG) | per-image best | overhead "
        "| PNG alone | WebP alone | JPEG-XL alone "
        "| chosen PNG/WebP/JPEG-XL |"
    )
    lines = [
        f"# Classical .pcdm container vs per-image best ({args.data} test images)",
        "",
        "Bytes. Container = compact classical header (docs/format.md) + the smallest of PNG, lossless",
        "WebP and JPEG-XL per image; before = the version-3 file of the code before it (JPEG-XL or",
        "PNG per image); 'alone' = one file per image with that codec, summed.",
        "",
        head,
        "|" + "---|" * 9,
    ]
    for r in rows:
        a, w = r["alone_bytes"], r["wins"]
        lines.append(
            f"| {r['n_images']} | {r['container_bytes']} | {r['before_bytes']} | {r['best_bytes']} "
            f"| +{r['overhead_bytes']} | "
            f"{a['png']} | {a['webp']} | {a['jpegxl']} | {w['png']}/{w['webp']}/{w['jpegxl']} |"
        )
    report = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text(report)
    meta = {"data": args.data, "python": sys.version.split()[0], "platform": platform.platform()}
    try:
        import imagecodecs

        meta["imagecodecs"] = imagecodecs.__version__
    except ImportError:
        pass
    (args.out / "runs.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(report, end="")
    print(f"wrote {args.out / 'report.md'} and {args.out / 'runs.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
