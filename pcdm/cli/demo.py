"""``pcdm demo``: the newcomer's main job on data that needs no download."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from ..checkpoint import load_run
from ..classical import compare
from ..data import load
from ..evaluate import evaluate_run
from ..sample import save_grid


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small w-pcdm on bundled data and compare with PNG/JPEG-XL")
    p.add_argument("--data", default="digits", help="DATA (default: scikit-learn's digits, no download)")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--n-t", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=200)
    p.set_defaults(func=run)


def run(args) -> int:
    """The newcomer's main job: train a small w-pcdm on data that ships with a dependency,
    then compare its test bpd with PNG and JPEG-XL lossless on the same images."""
    from . import main as cli_main  # the demo is `pcdm train` followed by eval and sample

    out = Path(args.out)
    if (out / "config.json").exists():
        print(f"reusing the trained model in {out} (delete it to retrain)", file=sys.stderr)
    else:
        code = cli_main(
            [
                "train",
                "--model",
                "w-pcdm",
                "--data",
                args.data,
                "--out",
                str(out),
                "--minutes",
                str(args.minutes),
                "--preset",
                "small",
                "--sample-steps",
                "0",
            ]
        )
        if code:
            return code
    res = evaluate_run(out, args.data, "test", args.limit, n_t=args.n_t, progress=True)
    test = load(args.data, "test", limit=args.limit)
    codecs = compare(test.images, codecs=["png", "jpegxl"], progress=False)
    print(f"\n{test.name}: {res['n_images']} test images, d = {res['dims']}, K = {test.K}")
    print(f"  pcdm w-pcdm   {res['bpd']:.3f} ± {res['bpd_se']:.3f} bpd   (upper bound on -log2 P(x) / d)")
    for name in ("png", "jpegxl"):
        print(
            f"  {name:<12} {codecs[name]['bpd']:.3f} ± {codecs[name]['se']:.3f} bpd   (file size per image)"
        )
    grid = out / "demo_samples.png"
    model, _ = load_run(out)
    x, _ = model.sample(64, steps=args.sample_steps, generator=torch.Generator().manual_seed(0))
    save_grid(x, grid, K=model.config.K)
    print(f"  samples: {grid}")
    return 0
