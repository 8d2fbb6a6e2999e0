"""File sizes per image count: the .pcdm container against the classical files.

    python benchmarks/codec_sizes.py RUN [--data fashion-mnist] [--counts 1 10 40 1000]
        [--steps 100] [--reuse benchmarks/results/codec.json] [--out benchmarks/results/codec_sizes.md]

For every count n the first n test images are compressed as ``pcdm compress`` does by
default (``--container auto``: the smaller of the bits-back file, whose first images are
stored classically as the stream's seed, and the all-classical file) and decoded again
(checked bit-exact). Beside it: the bits-back and classical candidates, the sum of the
per-image JPEG-XL and PNG files, and of the best classical file per image (PNG, WebP,
JPEG-XL, JPEG-LS, each image its own file, from :func:`pcdm.classical.compare`).

``--reuse TABLE.json``: a count that ``benchmarks/codec_table.py`` already coded with the same
model, T and lanes (its row of that T and image count, decoded bit-exact there, with both
candidates' sizes) is taken from that table instead of being coded again (hours on one core
for large counts); the classical files are computed here either way.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdm import classical, codec  # noqa: E402
from pcdm.checkpoint import load_run  # noqa: E402
from pcdm.data import load  # noqa: E402


def size_row(model, images: np.ndarray, steps: int, lanes: int, reuse: dict | None = None) -> dict:
    t0 = time.perf_counter()
    if reuse is not None:  # a codec_table row: the bits-back file, decoded bit-exact there
        bb, cl = reuse["bytes"], reuse["classical_bytes"]
        stats = {"bytes": min(bb, cl), "container": "bits-back" if bb < cl else "classical"}
        stats.update(bits_back_bytes=bb, classical_bytes=cl, seed_images=reuse["seed_images"])
        stats["initial_bits"] = reuse["initial_bits"]
    else:
        h = codec.Header(codec.KIND_NPY, b"", *[0] * 10)
        h.shape, h.dtype = tuple(images.shape), images.dtype.str
        blob, stats = codec.compress(model, images, h, steps, lanes, progress=False)
        t0 = time.perf_counter()
        _, back = codec.decompress(model, blob)
        if not np.array_equal(back, images):
            raise SystemExit(f"n={len(images)}: decoded images differ from the input")
    dims = int(np.prod(images.shape[1:]))
    table = classical.compare(images, progress=False)
    files = {k: int(round(float(np.sum(v["per_image"])) * dims / 8)) for k, v in table.items()}
    return {
        "n": len(images),
        "bytes": stats["bytes"],
        "container": stats["container"],
        "bits_back_bytes": stats.get("bits_back_bytes"),
        "classical_bytes": stats["classical_bytes"],
        "seed_images": stats.get("seed_images"),
        "initial_bits": stats.get("initial_bits"),
        "files": files,  # Σ bytes of one file per image, per codec, and "best" per image
        "vs_best": stats["bytes"] / files["best"] - 1,
        "over_best_classical_bytes": stats["bytes"] - files["best"],
        "decode_s": None if reuse is not None else time.perf_counter() - t0,
        "from_table": reuse is not None,
    }


def markdown(run: str, data: str, steps: int, rows: list[dict]) -> str:
    lines = [
        "# File sizes per image count",
        "",
        f"Model `{run}`, the first *n* `{data}` test images, T = {steps}, `pcdm compress` defaults "
        "(`--container auto`), every file decoded and checked bit-exact. *bits-back*: the file "
        "whose first *seed* images are stored classically as the stream's seed; *classical*: all "
        "images as JPEG-XL/PNG lossless (the smaller per image) in the container; the file is the "
        "smaller of the two. The last columns sum one file per image (headers included). "
        "*from table*: the count was coded (and decoded bit-exact) by `codec_table.py` at the same "
        "T and lanes; its row is reused.",
        "",
        "| n | .pcdm bytes | container | bits-back bytes | seed | initial bits | classical container "
        "| Σ JPEG-XL files | Σ PNG files | Σ best classical file per image | .pcdm vs best |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        f = r["files"]
        bb = "–" if r["bits_back_bytes"] is None else str(r["bits_back_bytes"])
        seed = "–" if r["seed_images"] is None else str(r["seed_images"])
        init = "–" if r["initial_bits"] is None else str(r["initial_bits"])
        lines.append(
            f"| {r['n']}{' (from table)' if r['from_table'] else ''} | {r['bytes']} | {r['container']} "
            f"| {bb} | {seed} | {init} | "
            f"{r['classical_bytes']} | {f.get('jpegxl', '–')} | {f.get('png', '–')} | {f['best']} | "
            f"{100 * r['vs_best']:+.1f} % |"
        )
    return "\n".join(lines + [""])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--counts", type=int, nargs="+", default=[1, 10, 40, 1000])
    p.add_argument("--steps", type=int, default=codec.DEFAULT_STEPS)
    p.add_argument("--batch", type=int, default=codec.DEFAULT_LANES)
    p.add_argument("--reuse", default=None, help="codec_table.py JSON whose rows may be reused")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "codec_sizes.md"))
    args = p.parse_args(argv)
    table = json.loads(Path(args.reuse).read_text())["rows"] if args.reuse else []
    torch.set_num_threads(1)
    model, _ = load_run(args.run)
    images = load(args.data, split="test", limit=max(args.counts)).images
    rows = []
    for n in args.counts:
        same = [
            r
            for r in table
            if (r["steps"], r["images"], r.get("lanes", args.batch)) == (args.steps, n, args.batch)
        ]
        rows.append(size_row(model, images[:n], args.steps, args.batch, same[0] if same else None))
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/codec_sizes.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    text = markdown(args.run, args.data, args.steps, rows)
    out.write_text(text + f"\nCommand: `{command}`; torch {torch.__version__}, {platform.platform()}.\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows}, indent=2))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
