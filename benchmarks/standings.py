"""Where trained runs stand against a reference run: the bound of each on the same test
images, and its paired difference and ratio to the reference, with standard errors.

    python benchmarks/standings.py --reference vdm=benchmarks/work/ablation/fashion-mnist/vdm-importance \\
        --run lp-pcdm=benchmarks/work/ablation/fashion-mnist/lp-pcdm-importance \\
        --run w-pcdm=benchmarks/work/ablation/fashion-mnist/w-pcdm-importance/ckpt/step_00003000 \\
        [--data fashion-mnist] [--limit N] [--n-t K] [--results benchmarks/results/standings.md]

A RUN is a run folder (its final EMA weights) or one of its checkpoints ``RUN/ckpt/step_N``
(how an equal-time comparison picks the step a budget buys). Every run is evaluated on the
same images (the test split of ``--data``) with the same evaluation seed; the per-image
differences to the reference give a paired standard error, much smaller than the spread of
either bound over images, so "is this model better than the reference" gets an answer
the two ± of the separate means cannot give. ``ratio`` = mean bound / the reference's, its
standard error by the delta method over the same pairs.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from pcdm.checkpoint import load_run, saved_step, split_run
from pcdm.data import load
from pcdm.evaluate import per_image_bpd, summarize

ROOT = Path(__file__).resolve().parents[1]


def paired(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean difference a − b and ratio mean(a) / mean(b) over the same images, each with
    its standard error; the ratio's by the delta method, uᵢ = (aᵢ − r bᵢ) / mean(b)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    d = a - b
    r = a.mean() / b.mean()
    u = (a - r * b) / b.mean()
    se = (lambda v: float(v.std(ddof=1) / math.sqrt(n))) if n > 1 else (lambda v: float("nan"))
    return {"difference": float(d.mean()), "difference_se": se(d), "ratio": float(r), "ratio_se": se(u)}


def evaluate(path: Path, data: str | None, limit: int | None, n_t: int, batch: int) -> tuple[dict, str, str]:
    """Per-image bpd by term of one run (or checkpoint), its data spec and its step."""
    model, cfg = load_run(path)
    spec = data or cfg["data"]["spec"]
    images = load(spec, "test", limit=limit).images
    _, weights = split_run(path)
    step = saved_step(weights / "ema.safetensors") or "?"
    return per_image_bpd(model, images, n_t=n_t, batch_size=batch, desc=path.name), spec, step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--reference", required=True, metavar="NAME=RUN", help="the run the others are compared with"
    )
    p.add_argument("--run", action="append", default=[], metavar="NAME=RUN", help="repeatable")
    p.add_argument("--data", help="DATA whose test split is used (default: the reference run's)")
    p.add_argument("--limit", type=int, help="only the first N test images")
    p.add_argument("--n-t", type=int, default=1, help="Monte-Carlo draws of t per image")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--results", type=Path, help="write a .md report and a .json beside it")
    args = p.parse_args(argv)

    runs = {}
    for item in [args.reference, *args.run]:
        name, sep, path = item.partition("=")
        if not sep or not path:
            p.error(f"expected NAME=RUN, got {item!r}")
        runs[name] = Path(path)
    ref = next(iter(runs))
    data = args.data
    per, steps = {}, {}
    for name, path in runs.items():
        per[name], spec, steps[name] = evaluate(path, data, args.limit, args.n_t, args.batch)
        data = data or spec  # every run on the reference's test images
        n = {len(v["bpd"]) for v in per.values()}
        if len(n) > 1:
            sys.exit(f"{name}: evaluated on a different number of images ({sorted(n)}); use --limit")

    rows = {}
    for name, path in runs.items():
        row = {
            "run": str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else str(path)
        }
        row["step"] = steps[name]
        row.update({k: v for k, v in summarize(per[name]).items() if k.startswith("bpd")})  # ± and terms
        if name != ref:
            row.update(paired(per[name]["bpd"], per[ref]["bpd"]))
        rows[name] = row
    report = {
        "data": data,
        "images": len(per[ref]["bpd"]),
        "n_t": args.n_t,
        "reference": ref,
        "command": "python benchmarks/standings.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "runs": rows,
    }
    text = markdown(report)
    print(text)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
        args.results.with_suffix(".json").write_text(json.dumps(report, indent=1))
    return 0


def markdown(report: dict) -> str:
    ref = report["reference"]
    lines = [
        f"# Standings against {ref} ({report['data']})",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `{report['command']}` on "
        f"{platform.machine()}, Python {platform.python_version()}. {report['images']} test images, "
        f"{report['n_t']} draw(s) of t per image, the same images and evaluation seed for every run; "
        "differences and ratios are paired over images (± one standard error).",
        "",
        f"| run | step | test bpd | recon | − {ref} | ratio to {ref} | resolved? |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in report["runs"].items():
        if name == ref:
            cells = "— | — | reference"
        else:
            resolved = abs(r["difference"]) > 2 * r["difference_se"]
            diff = f"{r['difference']:+.3f} ± {r['difference_se']:.3f}"
            ratio = f"{r['ratio']:.3f} ± {r['ratio_se']:.3f}"
            cells = f"{diff} | {ratio} | " + ("yes" if resolved else "no (within 2 standard errors)")
        lines.append(
            f"| {name} | {r['step']} | {r['bpd']:.3f} ± {r['bpd_se']:.3f} | {r['bpd_recon']:.3f} | {cells} |"
        )
    lines += ["", "Runs:", ""] + [f"- {name}: `{r['run']}`" for name, r in report["runs"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
