"""W-PCDM with other orthonormal wavelets beside Haar, at equal training steps.

Every run uses the ablation's settings (``benchmarks/ablation.py``: preset small, S = 2,
batch 32, seed 0, one thread) and the same number of steps, so the networks, data order
and noise draws are the same and only the map differs; each is evaluated on the full
test split with the same evaluation noise. A finished run with the same command is reused
(the ablation's 12-minute Haar run is one).

    python benchmarks/wavelets.py                         # haar and db4, 3412 steps each
    python benchmarks/wavelets.py --wavelets haar db4 sym8 --steps 3412
    python benchmarks/wavelets.py --steps 20 --limit 200 --out-dir /tmp/w   # smoke test

Writes ``benchmarks/results/wavelets.md`` and ``wavelets.json``.
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


def run_dir(out_dir: Path, wavelet: str) -> Path:
    return out_dir / ("w-pcdm" if wavelet == "haar" else f"w-pcdm-{wavelet}")


def train_command(run: Path, wavelet: str, steps: int, data: str) -> list[str]:
    cmd = ["train", "--model", "w-pcdm", "--data", data, "--out", str(run), "--preset", "small"]
    if wavelet != "haar":
        cmd += ["--wavelet", wavelet]
    cmd += ["--levels", "2", "--steps", str(steps), "--ckpt-every", "100", "--keep", "1000"]
    return cmd + ["--log-every", "10", "--seed", "0", "--sample-steps", "0", "--device", "cpu"]


def finished_step(run: Path) -> int | None:
    try:
        rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        return max(r["step"] for r in rows if "step" in r)
    except (OSError, ValueError, KeyError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wavelets", nargs="+", default=["haar", "db4"])
    p.add_argument(
        "--steps", type=int, default=3412, help="training steps of every run (default: the ablation's w-pcdm)"
    )
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=None, help="test images (default: the whole test split)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks/work/ablation/fashion-mnist")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks/results/wavelets.md")
    args = p.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    rows = {}
    for wavelet in args.wavelets:
        run = run_dir(args.out_dir, wavelet)
        cmd = train_command(run, wavelet, args.steps, args.data)
        if finished_step(run) != args.steps:
            print(f"$ pcdm {shlex.join(cmd)}", file=sys.stderr, flush=True)
            start = time.time()
            subprocess.run([*PCDM, *cmd], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            print(f"  {wavelet}: {time.time() - start:.0f} s", file=sys.stderr, flush=True)
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
        rows[wavelet] = {"run": shown[shown.index("--out") + 1], "train": "pcdm " + shlex.join(shown)}
        rows[wavelet].update(json.loads(out.stdout))
    lines = [
        f"# W-PCDM: orthonormal wavelets at equal steps ({args.data})",
        "",
        f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC} by `python benchmarks/wavelets.py "
        f"{shlex.join(argv if argv is not None else sys.argv[1:])}` on {platform.machine()}, "
        f"Python {platform.python_version()}. Every run: {args.steps} steps of the ablation's settings "
        "(preset small, S = 2, batch 32, seed 0); bounds on the test split, one draw of t per image.",
        "",
        "| wavelet | test bpd | level 1 | level 2 | recon | images |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for w, r in rows.items():
        lines.append(
            f"| {w} | {r['bpd']:.3f} ± {r['bpd_se']:.3f} | {r['bpd_level1']:.3f} | {r['bpd_level2']:.3f} | "
            f"{r['bpd_recon']:.3f} | {r['n_images']} |"
        )
    lines += ["", "Training commands:", ""] + [f"- {w}: `{r['train']}`" for w, r in rows.items()]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")
    args.results.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(args.results.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
