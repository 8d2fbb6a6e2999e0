"""Variants of one model at equal training steps: what one option changes, all else equal.

Every run uses the ablation's settings (``benchmarks/ablation.py``: preset small, batch
32, seed 0, one thread) and the same number of steps, so networks, data order and noise
draws are the same and only the option differs (an option that costs no time per step,
like ``--t-sampling``, is then also an equal-time comparison). Each run is evaluated on the
whole test split with the same evaluation noise. A finished run with the same number of
steps is reused (the ablation's 12-minute runs are the plain variants).

    python benchmarks/equal_steps.py --variant haar= --variant db4="--wavelet db4" \\
        --results benchmarks/results/wavelets.md                       # w-pcdm, 3412 steps
    python benchmarks/equal_steps.py --variant uniform= --variant importance="--t-sampling importance" \\
        --results benchmarks/results/timesampling.md                   # w-pcdm
    python benchmarks/equal_steps.py --model vdm --steps 1209 --variant uniform= \\
        --variant importance="--t-sampling importance" --results benchmarks/results/timesampling_vdm.md

A variant named like a plain run (empty FLAGS) trains into ``OUT_DIR/MODEL``; the others
into ``OUT_DIR/MODEL-NAME``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PCDM = [sys.executable, "-m", "pcdm.cli"]


def train_command(run: Path, model: str, flags: list[str], steps: int, data: str) -> list[str]:
    cmd = ["train", "--model", model, "--data", data, "--out", str(run), "--preset", "small", *flags]
    if model != "vdm":
        cmd += ["--levels", "2"]
    cmd += ["--steps", str(steps), "--ckpt-every", "100", "--keep", "1000"]
    return cmd + ["--log-every", "10", "--seed", "0", "--sample-steps", "0", "--device", "cpu"]


def finished_step(run: Path) -> int | None:
    try:
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        return max(r["step"] for r in rows if "step" in r)
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="w-pcdm")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS", help="repeatable")
    p.add_argument(
        "--steps", type=int, default=3412, help="training steps of every run (default: the ablation's w-pcdm)"
    )
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=None, help="test images (default: the whole test split)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/work/ablation/fashion-mnist")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/equal_steps.md")
    args = p.parse_args(argv)
    variants = dict(v.split("=", 1) for v in args.variant) or {"plain": ""}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = {}
    for name, flags in variants.items():
        flags = shlex.split(flags)
        run = args.out_dir / (args.model if not flags else f"{args.model}-{name}")
        cmd = train_command(run, args.model, flags, args.steps, args.data)
        if finished_step(run) != args.steps:
            print(f"$ pcdm {shlex.join(cmd)}", file=sys.stderr, flush=True)
            start = time.time()
            subprocess.run([*PCDM, *cmd], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            print(f"  {name}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        ev = [
            "eval",
            str(run),
            "--data",
            args.data,
            "--split",
            "test",
            "--n-t",
            "1",
            "--json",
            "--no-compare",
        ]
        if args.limit:
            ev += ["--limit", str(args.limit)]
        out = subprocess.run([*PCDM, *ev], check=True, env=env, cwd=ROOT, capture_output=True, text=True)
        shown = [c.replace(f"{ROOT}/", "") for c in cmd]  # paths relative to the repository
        rows[name] = {"run": shown[shown.index("--out") + 1], "train": "pcdm " + shlex.join(shown)}
        rows[name].update(json.loads(out.stdout))
    levels = sorted(k for k in next(iter(rows.values())) if k.startswith("bpd_level"))
    lines = [
        f"# {args.model}: variants at equal steps ({args.data})",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `python benchmarks/equal_steps.py "
        f"{shlex.join(argv if argv is not None else sys.argv[1:])}` on {platform.machine()}, "
        f"Python {platform.python_version()}. Every run: {args.steps} steps of the ablation's settings "
        "(preset small, batch 32, seed 0); bounds on the test split, one draw of t per image, the same "
        "evaluation noise for every run.",
        "",
        "| variant | test bpd | "
        + " | ".join(k.replace("bpd_level", "level ") for k in levels)
        + " | recon | images |",
        "|---|---:|" + "---:|" * len(levels) + "---:|---:|",
    ]
    for name, r in rows.items():
        cells = " | ".join(f"{r[k]:.3f}" for k in levels)
        total = f"{r['bpd']:.3f} ± {r['bpd_se']:.3f}"
        lines.append(f"| {name} | {total} | {cells} | {r['bpd_recon']:.3f} | {r['n_images']} |")
    lines += ["", "Training commands:", ""] + [f"- {n}: `{r['train']}`" for n, r in rows.items()]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")
    args.results.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
