"""Lossless compression table: the bits-back codec at several T vs classical codecs.

    python benchmarks/codec_table.py RUN [--data fashion-mnist] [--n 1000]
        [--steps 50 100 250 1000] [--limit-for 1000=100] [--batch 64] [--elbo] [--jobs 2]
        [--elbo-draws 16] [--elbo-draws-for 1000=128] [--keep-from OLD.json]
        [--out benchmarks/results/codec.md]

For every T the first ``--n`` test images (``--limit-for T=N``: the first N, for the
largest T whose coding takes hours on a CPU) are compressed into one bits-back file
(``--container bits-back``: the first few images classically coded as the stream's seed)
and decoded again (checked bit-exact); the table reports the total bpd (file bytes, header,
seed and initial bits included), the net bpd (the stream's growth per pixel value of the
bits-back-coded images: what a long stream approaches), the seed images, the pseudo-random
initial bits, encode / decode images per second, and with ``--elbo`` the model's T-step
−ELBO on the images coded at that T (Monte-Carlo time draws per image, so cheap at any T;
the T-step estimate samples one of T steps, so large T needs more draws:
``--elbo-draws-for``), the ratio of the net code length to the −ELBO of the images actually
bits-back coded, and the file's size against the best classical codec per image on the same
images. ``--keep-from`` carries the other T's rows (with their commands) from an earlier
JSON, so one T can be re-run without the others.
Classical codecs (PNG, WebP, JPEG-XL, JPEG-LS, each image its own file) come from
:func:`pcdm.classical.compare`. The codec runs its network single-threaded, so ``--jobs J``
codes J values of T at once in separate processes (one core each; the speeds stay per core).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdm import classical, codec  # noqa: E402
from pcdm.checkpoint import load_run  # noqa: E402
from pcdm.data import load  # noqa: E402
from pcdm.evaluate import per_image_bpd  # noqa: E402

ELBO_DRAWS = 16  # Monte-Carlo draws of (t, ε) per image for the −ELBO column


def code_at(
    model,
    images: np.ndarray,
    steps: int,
    lanes: int,
    elbo: bool,
    limit: int | None,
    progress: bool = True,
    draws: int = ELBO_DRAWS,
) -> dict:
    images = images[:limit] if limit else images
    h = codec.Header(codec.KIND_NPY, b"", *[0] * 10)
    h.shape, h.dtype = tuple(images.shape), images.dtype.str
    blob, stats = codec.compress(model, images, h, steps, lanes, progress=progress, container="bits-back")
    t0 = time.perf_counter()
    _, back = codec.decompress(model, blob, progress=progress)
    dec_s = time.perf_counter() - t0
    if not np.array_equal(back, images):
        raise SystemExit(f"T={steps}: decoded images differ from the input")
    row = {
        "steps": steps,
        "images": len(images),
        "bpd": stats["bpd"],
        "net_bpd": stats["net_bpd"],
        "initial_bits": stats["initial_bits"],
        "seed_images": stats["seed_images"],
        "classical_bytes": stats["classical_bytes"],
        "ramp": stats["ramp"],
        "enc_ips": stats["images_per_s"],
        "dec_ips": len(images) / dec_s,
        "bytes": stats["bytes"],
        "lanes": lanes,
    }
    if elbo:  # on the images coded at this T
        bound = per_image_bpd(
            model, images, n_t=draws, steps=steps, desc=f"ELBO T={steps}", progress=progress
        )
        row["elbo_bpd"] = float(bound["bpd"].mean())
        row["elbo_se"] = float(bound["bpd"].std(ddof=1) / np.sqrt(len(images)))
        row["elbo_draws"] = draws
        m = stats["seed_images"]  # the bits-back coded images are m … limit − 1
        row["elbo_coded_bpd"] = float(bound["bpd"][m:].mean())
    return row


def _code_in_worker(
    run: str, data: str, n: int, steps: int, lanes: int, elbo: bool, limit, draws: int
) -> dict:
    torch.set_num_threads(1)
    model, _ = load_run(run)
    images = load(data, split="test", limit=n).images
    return code_at(model, images, steps, lanes, elbo, limit, progress=False, draws=draws)


def pairs(items: list[str], what: str, error) -> dict[int, int]:
    """``T=N`` options → {T: N}."""
    out = {}
    for item in items:
        t, _, n = item.partition("=")
        if not (t.isdigit() and n.isdigit() and int(n) > 0):
            error(f"{what} wants T=N with positive integers, got {item!r}")
        out[int(t)] = int(n)
    return out


def markdown(run: str, data: str, n: int, lanes: int, rows: list[dict], classic: dict) -> str:
    lines = [
        "# Lossless compression",
        "",
        f"Model `{run}`, the first {n} `{data}` test images, bits-back ANS with up to {lanes} lanes"
        f"{' (lane ramp: batches grow from one lane)' if all(r.get('ramp') for r in rows) else ''} "
        "(one file per T, decoded and checked bit-exact). *images*: how many of the "
        f"{n} were coded at that T (the first ones); *seed*: how many of those the file stores "
        "classically (JPEG-XL/PNG) as the bits-back stream's seed, so the first pops draw on "
        "them instead of on pseudo-random *initial bits*. *bpd* counts the whole file (header, "
        "seed, initial bits); *net* is the stream's growth per pixel value of the bits-back "
        "coded images (what a long stream approaches). The T-step −ELBO (± standard error over "
        "images; *draws*: Monte-Carlo draws of t per image) is over the images coded at that T; "
        "*net / −ELBO* compares the net code length with the −ELBO of the images actually "
        "bits-back coded (the seed images excluded). *vs best classical*: the "
        "file's bpd against the best classical codec per image on the same images (negative = "
        "smaller than the classical files).",
        "",
        "| codec | T | images | seed | bpd | net bpd | T-step −ELBO | draws | net / −ELBO | initial bits "
        "| encode img/s | decode img/s | vs best classical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        elbo = f"{r['elbo_bpd']:.4f} ± {r['elbo_se']:.4f}" if "elbo_bpd" in r else "–"
        ratio = f"{r['net_bpd'] / r['elbo_coded_bpd']:.4f}" if "elbo_coded_bpd" in r else "–"
        saving = (
            f"{100 * (r['bpd'] / r['best_classical_bpd'] - 1):+.1f} %" if "best_classical_bpd" in r else "–"
        )
        lines.append(
            f"| PCDM bits-back | {r['steps']} | {r['images']} | {r['seed_images']} | {r['bpd']:.4f} "
            f"| {r['net_bpd']:.4f} "
            f"| {elbo} | {r.get('elbo_draws', '–')} | {ratio} | {r['initial_bits']} "
            f"| {r['enc_ips']:.2f} | {r['dec_ips']:.2f} | {saving} |"
        )
    for name, entry in classic.items():
        label = "best classical per image" if name == "best" else name
        lines.append(f"| {label} | – | {n} | – | {entry['bpd']:.4f} ± {entry['se']:.4f} " + "| – " * 8 + "|")
    lines += ["", "Classical codecs: every image is its own file, headers included.", ""]
    lines += [f"- T = {r['steps']}: `{r['command']}`" for r in rows if r.get("command")]
    if any(r.get("command") for r in rows):
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, nargs="+", default=[50, 100, 250, 1000])
    p.add_argument(
        "--limit-for",
        action="append",
        default=[],
        metavar="T=N",
        help="code only the first N images at T steps (repeatable)",
    )
    p.add_argument("--batch", type=int, default=codec.DEFAULT_LANES)
    p.add_argument("--elbo", action="store_true", help="also evaluate the T-step −ELBO")
    p.add_argument("--elbo-draws", type=int, default=ELBO_DRAWS, help="draws of t per image for the −ELBO")
    p.add_argument(
        "--elbo-draws-for", action="append", default=[], metavar="T=D", help="D draws at T steps (repeatable)"
    )
    p.add_argument(
        "--keep-from",
        metavar="JSON",
        help="carry the rows of other T from an earlier table's JSON (one T re-run, the table whole)",
    )
    p.add_argument("--jobs", type=int, default=1, help="code this many values of T at once (processes)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "codec.md"))
    args = p.parse_args(argv)
    limits = pairs(args.limit_for, "--limit-for", p.error)
    draws_for = pairs(args.elbo_draws_for, "--elbo-draws-for", p.error)
    draws = {t: draws_for.get(t, args.elbo_draws) for t in args.steps}
    kept = json.loads(Path(args.keep_from).read_text())["rows"] if args.keep_from else []
    command = "python benchmarks/codec_table.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    images = load(args.data, split="test", limit=args.n).images
    if args.jobs > 1:  # each worker loads the model itself
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            todo = sorted(args.steps, key=lambda t: -t * (limits.get(t) or len(images)))  # longest first
            futures = {
                t: pool.submit(
                    _code_in_worker,
                    args.run,
                    args.data,
                    args.n,
                    t,
                    args.batch,
                    args.elbo,
                    limits.get(t),
                    draws[t],
                )
                for t in todo
            }
            rows = [futures[t].result() for t in args.steps]
    else:
        model, _ = load_run(args.run)
        rows = [
            code_at(model, images, t, args.batch, args.elbo, limits.get(t), draws=draws[t])
            for t in args.steps
        ]
    for r in rows:
        r["command"] = command
    carried = [r for r in kept if r["steps"] not in args.steps]
    rows = sorted(rows + carried, key=lambda r: r["steps"])
    compared = classical.compare(images)
    best = compared["best"]["per_image"]
    for r in rows:  # the classical reference on exactly the images coded at that T
        r["best_classical_bpd"] = float(np.mean(best[: r["images"]]))
    classic = {k: {"bpd": v["bpd"], "se": v["se"]} for k, v in compared.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(args.run, args.data, len(images), args.batch, rows, classic)
    out.write_text(text + f"Last command: `{command}`; torch {torch.__version__}, {platform.platform()}.\n")
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "classical": classic}, indent=2))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
