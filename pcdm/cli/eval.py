"""``pcdm eval``: the test bpd of a trained run, with its parts and a standard error."""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluate import evaluate_run


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="test bpd of a trained run, with its parts and a standard error")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--data", help="DATA (default: the run's training data)")
    p.add_argument(
        "--split",
        choices=["train", "test", "all"],
        help="default: the held-out test part of the run's own data or of a named dataset; "
        "all images of any other folder or array",
    )
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--n-t", type=int, default=1, help="average K Monte-Carlo time samples per image")
    p.add_argument("--steps", type=int, help="discrete-time bound with T steps (default: continuous time)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--no-compare", action="store_true", help="skip PNG / JPEG-XL on the same images (done up to 5000)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    out = evaluate_run(
        args.run,
        args.data,
        args.split,
        args.limit,
        args.n_t,
        args.steps,
        args.batch,
        not args.no_ema,
        progress=not args.json,
        device=args.device,
        compare_codecs=not args.no_compare,
    )
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['model']} on {out['data']}: {out['n_images']} images ({out['split_reason']}), "
            f"d = {out['dims']}"
        )
        bound = f"{out['bpd']:.4f} ± {out['bpd_se']:.4f} bpd"
        print(f"  bound  {bound} (an upper bound on −log2 P(x)/d; lower is better)")
        for key in sorted(k for k in out if k.startswith("bpd_") and k != "bpd_se"):
            print(f"  {key[4:]:<10} {out[key]:.4f}")
        for level, bands in out.get("diffusion_bands", {}).items():
            cells = "  ".join(f"{label} {v:.4f}" for label, v in bands.items())
            print(f"  {level} diffusion by γ band: {cells}")
        if "classical_bpd" in out:
            cells = ", ".join(f"{k} {v:.4f}" for k, v in out["classical_bpd"].items())
            print(f"  for reference, lossless codecs on the same images (each its own file): {cells} bpd")
    return 0
