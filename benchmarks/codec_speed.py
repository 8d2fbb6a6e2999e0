"""Codec speed: encode / decode images per second on one core and on all cores, and where
the time goes.

    python benchmarks/codec_speed.py RUN [--data fashion-mnist] [--n 128] [--steps 100]
        [--jobs 1 2] [--out benchmarks/results/codec_speed.md]

For every ``--jobs J`` the first ``--n`` test images go through ``pcdm compress --jobs J``
and ``pcdm decompress --jobs J`` (the real code path: J parts coded at once, one process
each; J = 1 is one stream in this process), checked bit-exact, timed end to end. A profile
of the one-stream encoder splits its time into the network (``PCDM.reverse_step``, batched
across lanes) and everything else: the ANS coder, the numpy side, the maps. Speeds are only
comparable on an otherwise idle machine; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdm import codec  # noqa: E402
from pcdm.checkpoint import load_run  # noqa: E402
from pcdm.data import load  # noqa: E402


def header(images: np.ndarray) -> codec.Header:
    h = codec.Header(codec.KIND_NPY, b"", *[0] * 10)
    h.shape, h.dtype = tuple(images.shape), images.dtype.str
    return h


def network_share(model, images: np.ndarray, steps: int, lanes: int) -> dict:
    """Seconds of one bits-back encode, and the part spent in the network."""
    spent = [0.0]
    reverse_step = model.reverse_step

    def timed(*args, **kw):
        t0 = time.perf_counter()
        try:
            return reverse_step(*args, **kw)
        finally:
            spent[0] += time.perf_counter() - t0

    model.reverse_step = timed
    try:
        t0 = time.perf_counter()
        codec.encode_images(model, images, steps, lanes)
        total = time.perf_counter() - t0
    finally:
        del model.reverse_step
    return {"seconds": total, "network_s": spent[0], "other_share": 1 - spent[0] / total}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=codec.DEFAULT_LANES)
    p.add_argument("--jobs", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "codec_speed.md"))
    args = p.parse_args(argv)
    model, _ = load_run(args.run)
    images = load(args.data, split="test", limit=args.n).images
    load_before = os.getloadavg()
    rows = []
    for jobs in args.jobs:
        t0 = time.perf_counter()
        blob, stats = codec.compress_parts(
            args.run, model, images, header(images), args.steps, args.batch, jobs, container="bits-back"
        )
        enc_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, back = codec.decompress(model, blob, jobs=jobs, run=args.run)
        dec_s = time.perf_counter() - t0
        if not np.array_equal(back, images):
            raise SystemExit(f"--jobs {jobs}: decoded images differ from the input")
        rows.append({"jobs": jobs, "parts": stats.get("parts", 1), "encode_ips": len(images) / enc_s,
                     "decode_ips": len(images) / dec_s, "bpd": stats["bpd"]})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    profile = network_share(model, images, args.steps, args.batch)
    command = "python benchmarks/codec_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Codec speed",
        "",
        f"Model `{args.run}`, the first {len(images)} `{args.data}` test images, T = {args.steps}, "
        f"{args.batch} lanes, bits-back container. Wall-clock of `compress --jobs J` / `decompress "
        "--jobs J` end to end (model loading in the worker processes included), decoded and checked "
        "bit-exact. One stream runs its network on one thread (the decoder must reproduce the "
        "encoder's floats), so more cores help through parts: J streams at once.",
        "",
        "| jobs | parts | encode img/s | decode img/s | bpd (whole file) |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['jobs']} | {r['parts']} | {r['encode_ips']:.2f} | {r['decode_ips']:.2f} | {r['bpd']:.4f} |"
        for r in rows
    ]
    lines += [
        "",
        f"Where one stream's encode time goes: {profile['seconds']:.1f} s in all, "
        f"{profile['network_s']:.1f} s in the network (`PCDM.reverse_step`), so "
        f"**{100 * profile['other_share']:.1f} %** in the ANS coder, numpy and the maps.",
        "",
        f"Command: `{command}`; {os.cpu_count()} CPUs, torch {torch.__version__}, {platform.platform()}; "
        f"load average before {[round(v, 2) for v in load_before]}, after "
        f"{[round(v, 2) for v in os.getloadavg()]}.",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "profile": profile}, indent=2))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
