"""Two (or more) long runs compared at equal training time, checkpoint by checkpoint.

    python benchmarks/longer_pair.py --run vdm=benchmarks/work/pair60/vdm --s-per-step vdm=0.596 \\
        --run w-pcdm=benchmarks/work/pair60/w-pcdm --s-per-step w-pcdm=0.211 \\
        --minutes 12 24 36 48 60 --limit 2000 --out benchmarks/results/pair60.md

Each run's seconds per step were measured alone on one idle core (``benchmarks/train_speed.py``;
the ablation's numbers), so M minutes of training are ⌊60 M / (s/step)⌋ steps; the run's last
checkpoint at or below that step is evaluated (EMA weights) on the first ``--limit`` test
images, one draw of t per image, evaluation seed 0. The runs must have been trained (or
resumed) far enough: ``pcdm train --resume RUN --steps N``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PCDM = [sys.executable, "-m", "pcdm.cli"]


def checkpoint_at(run: Path, step: int) -> Path:
    """The run's last checkpoint at or below ``step``; the run must have got that far."""
    steps = sorted(int(p.name.split("_")[1]) for p in (run / "ckpt").glob("step_*"))
    below = [s for s in steps if s <= step]
    if not below or steps[-1] < step:
        have = steps[-1] if steps else 0
        raise SystemExit(f"{run}: trained to step {have}, the time asked for buys {step}: resume it further")
    return run / "ckpt" / f"step_{below[-1]:08d}"


def pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"{what} wants NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", action="append", required=True, metavar="NAME=RUN")
    p.add_argument("--s-per-step", action="append", required=True, metavar="NAME=SECONDS")
    p.add_argument("--minutes", type=float, nargs="+", default=[12, 24, 36, 48, 60])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pair60.md")
    args = p.parse_args(argv)
    runs = {k: Path(v) for k, v in pairs(args.run, "--run").items()}
    speed = {k: float(v) for k, v in pairs(args.s_per_step, "--s-per-step").items()}
    if set(runs) != set(speed):
        raise SystemExit("give --s-per-step for every --run")
    rows = []
    for minutes in args.minutes:
        row = {"minutes": minutes}
        for name, run in runs.items():
            ckpt = checkpoint_at(run, int(60 * minutes / speed[name]))
            cmd = ["eval", str(ckpt), "--data", args.data, "--split", "test", "--limit", str(args.limit)]
            cmd += ["--n-t", "1", "--json", "--no-compare"]
            res = subprocess.run([*PCDM, *cmd], check=True, capture_output=True, text=True, cwd=ROOT)
            ev = json.loads(res.stdout)
            row[name] = {"step": int(ckpt.name.split("_")[1]), "bpd": ev["bpd"], "se": ev["bpd_se"],
                         "recon": ev["bpd_recon"]}  # fmt: skip
            print(minutes, name, row[name], flush=True)
        rows.append(row)
    names = list(runs)
    lines = [
        f"# Equal training time, longer ({', '.join(names)}; {args.data})",
        "",
        f"Bounds (bpd, EMA weights) on the first {args.limit} test images, one draw of t per image, "
        "evaluation seed 0, at the checkpoint each run had reached after M minutes of one idle core "
        f"(seconds per step measured alone: {', '.join(f'{n} {speed[n]}' for n in names)}).",
        "",
        "| minutes | " + " | ".join(f"{n} step | {n} bpd | {n} recon" for n in names) + " |",
        "|---:|" + "---:|---:|---:|" * len(names),
    ]
    for r in rows:
        cells = " | ".join(
            f"{r[n]['step']} | {r[n]['bpd']:.3f} ± {r[n]['se']:.3f} | {r[n]['recon']:.3f}" for n in names
        )
        lines.append(f"| {r['minutes']:g} | {cells} |")
    command = "python benchmarks/longer_pair.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines += ["", f"Command: `{command}`.", ""]
    for name, run in runs.items():
        train = json.loads((run / "config.json").read_text())["train"]
        lines.append(f"- {name}: `{run}` (batch {train['batch']}, seed {train['seed']}, lr {train['lr']})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
