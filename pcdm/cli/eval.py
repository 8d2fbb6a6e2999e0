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
    ode = p.add_argument_group("probability-flow ODE bound (docs/math.md §12)")
    ode.add_argument(
        "--ode", action="store_true", help="the PF-ODE bound by variational dequantization, beside the ELBO"
    )
    ode.add_argument("--rtol", type=float, default=1e-5, help="the adaptive solver's relative tolerance")
    ode.add_argument("--atol", type=float, default=1e-5, help="the adaptive solver's absolute tolerance")
    trace = ode.add_mutually_exclusive_group()
    trace.add_argument(
        "--hutchinson", type=int, metavar="K", help="K Rademacher probes (default: exact ≤ 64 dims, else 1)"
    )
    trace.add_argument("--exact-trace", action="store_true", help="exact divergence on every level (slow)")
    p.set_defaults(func=run)


def run(args) -> int:
    ode = None
    if args.ode:
        from ..ode import ODEOptions  # needs torchdiffeq only here

        ode = ODEOptions(args.rtol, args.atol, hutchinson=args.hutchinson, exact_trace=args.exact_trace)
    elif args.hutchinson is not None or args.exact_trace:
        raise ValueError("--hutchinson and --exact-trace apply to --ode")
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
        ode=ode,
    )
    if args.json:
        print(json.dumps(out))
    elif ode is not None:
        print_ode(out)
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


def print_ode(out: dict) -> None:
    """Text report of ``--ode``: which number is ODE-based and which is the ELBO."""
    o = out["ode_options"]
    trace = f"{o['hutchinson']} Hutchinson probes" if o["hutchinson"] else "auto"
    trace = "exact" if o["exact_trace"] else trace
    head = f"{out['model']} on {out['data']}: {out['n_images']} images ({out['split_reason']})"
    print(f"{head}, d = {out['dims']}")
    print(f"  ODE bound   {out['bpd']:.4f} ± {out['bpd_se']:.4f} bpd (PF-ODE + variational dequantization)")
    print(f"  ELBO        {out['elbo_bpd']:.4f} ± {out['elbo_bpd_se']:.4f} bpd (same images)")
    print(f"  ODE − ELBO  {out['ode_minus_elbo']:+.4f} ± {out['ode_minus_elbo_se']:.4f} bpd (paired)")
    print("  both are upper bounds on −log2 P(x)/d; lower is better")
    for key in ("ode", "dequant", "recon"):
        print(f"  {key:<10} {out['bpd_' + key]:.4f}")
    levels = sorted(k[len("bpd_level") :] for k in out if k.startswith("bpd_level"))
    for s in levels:
        elbo = out.get(f"elbo_bpd_level{s}", float("nan"))
        ode, nfe = out["bpd_level" + s], out["nfe_level" + s]
        print(f"  level {s}    ODE {ode:.4f}  ELBO {elbo:.4f}  NFE {nfe:.0f}")
    print(
        f"  solver {o['method']} rtol {o['rtol']:g} atol {o['atol']:g}, trace {trace}: "
        f"{out['nfe']:.0f} function evaluations, {out['seconds']:.3f} s per image"
    )
