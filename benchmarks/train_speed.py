"""End-to-end training speed: seconds per ``pcdm train`` step of each model, and the
speed-up over vdm at equal architecture (same preset, one thread, one model at a time).

    python benchmarks/train_speed.py [--data fashion-mnist] [--models vdm,w-pcdm,lift-pcdm]
                                     [--steps 40] [--preset small] [--width W]
                                     [--variant NAME=MODEL:FLAGS ...]

Each model runs ``pcdm train`` for 10 + ``--steps`` steps in a subprocess (data loading,
the bound, backward, AdamW, EMA, logging: everything a training step does); the time of
steps 10 … 10 + N from ``metrics.jsonl`` is divided by N. Run it on an otherwise idle
machine: the numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ablation():
    """benchmarks/ablation.py (its speed measurement), imported from beside this file."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ablation

    return ablation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default="fashion-mnist", help="DATA spec")
    p.add_argument("--models", default="vdm,w-pcdm,lift-pcdm", help="comma-separated model families")
    p.add_argument("--steps", type=int, default=40, help="timed steps per model (after 10 warm-up steps)")
    p.add_argument("--preset", default="small", help="preset shared by all models")
    p.add_argument("--width", type=int, help="network width for every model (default: the preset's)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=MODEL:FLAGS",
        help="also time a variant (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    ablation = _ablation()
    with tempfile.TemporaryDirectory() as work:
        abl = ablation.parse_args(
            ["--models", args.models, "--preset", args.preset, "--speed-steps", str(args.steps)]
            + ["--out-dir", work, "--threads", "1"]
            + [a for v in args.variant for a in ("--variant", v)]
        )
        if args.width:
            width = ["--width", str(args.width)]
            abl.runs = {name: (m, [*flags, *width]) for name, (m, flags) in abl.runs.items()}
        speeds = ablation.measure_speeds(abl, args.data, log=lambda msg: print(msg, file=sys.stderr))
    base = speeds.get("vdm")
    out = {
        "data": args.data,
        "preset": args.preset,
        "seconds_per_step": {m: round(v, 4) for m, v in speeds.items()},
        "speedup_vs_vdm": {m: round(base / v, 3) for m, v in speeds.items()} if base else None,
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"pcdm train on {args.data}, preset {args.preset}, one thread, {args.steps} timed steps:")
    for m, v in speeds.items():
        ratio = f"   {base / v:.2f}× vdm's steps/s" if base else ""
        print(f"  {m:<12} {v:.4f} s/step{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
