"""``pcdm train`` on the command line: options, presets, the run folder, the end report."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

from . import dist, registry
from .checkpoint import RunError, read_config
from .data import load, resolve_spec
from .model import PCDM, ModelConfig, count_parameters
from .presets import get_preset
from .train import TrainConfig, train


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a dataset", description=__doc__.split("\n")[0])
    p.add_argument(
        "--model",
        choices=registry.names(),
        help="model family (default w-pcdm): "
        + "; ".join(f"{s.name}: {s.summary}" for s in map(registry.get, registry.names())),
    )
    p.add_argument(
        "--wavelet",
        metavar="NAME",
        help="w-pcdm only: any orthogonal PyWavelets wavelet, periodized (default haar; e.g. db4, sym8, "
        "coif2); biorthogonal wavelets are refused, their likelihood would not be exact",
    )
    p.add_argument(
        "--data", help="dataset name, name:root, image folder or .npy/.npz (default fashion-mnist)"
    )
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument(
        "--preset", default="small", help="small (CPU), tiny, or a paper preset e.g. cifar10-w-pcdm"
    )
    p.add_argument("--levels", type=int, help="number of levels S (default 2 for PCDM models)")
    p.add_argument("--steps", type=int, help="stop after N optimiser steps")
    p.add_argument("--minutes", type=float, help="stop after M minutes of wall-clock time")
    for name, typ in [("width", int), ("detail-width", int), ("depth", int), ("dropout", float)]:
        p.add_argument(f"--{name}", type=typ, help="network knob (overrides the preset)")
    p.add_argument("--no-attention", action="store_true", help="drop the middle attention block")
    p.add_argument(
        "--no-lattice-features",
        action="store_true",
        help="do not give the networks Fourier features of the conditioning and octave view (ablation)",
    )
    p.add_argument(
        "--lattice-posterior",
        action="store_true",
        help="add the closed-form flat-lattice posterior to each ε-network (vdm, lp-pcdm, w-pcdm with haar)",
    )
    p.add_argument(
        "--schedule", choices=["fixed", "learned", "monotone"], help="γ schedule (default learned)"
    )
    for name, typ in [
        ("batch", int),
        ("accum", int),
        ("lr", float),
        ("warmup", int),
        ("ema", float),
        ("grad-clip", float),
        ("seed", int),
        ("limit", int),
        ("log-every", int),
        ("ckpt-every", int),
        ("keep", int),
        ("sample-every", int),
        ("sample-steps", int),
    ]:
        p.add_argument(f"--{name}", type=typ, help=f"training option {name} (overrides the preset)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument(
        "--t-sampling",
        choices=["uniform", "importance"],
        help="how training draws each level's diffusion time: uniform (default), or importance "
        "sampling learned per level (same bound in expectation, less variance; pcdm/timesampling.py)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--tensorboard", action="store_true", help="also log to RUN/tb (needs tensorboard)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved config and parameter count, then exit",
    )
    p.set_defaults(func=run_train)


def resolve(args) -> tuple[ModelConfig, TrainConfig]:
    """preset < command-line flags; image shape and K come from the data."""
    preset = get_preset(args.preset)
    m = dict(preset["model"])
    t = {k: v for k, v in preset["train"].items() if k in {f.name for f in fields(TrainConfig)}}
    if args.model:
        m["model"] = args.model
    m.setdefault("model", "w-pcdm")
    if args.levels is not None:
        m["levels"] = args.levels
    for key in ("wavelet", "width", "detail_width", "depth", "dropout", "schedule"):
        if getattr(args, key) is not None:
            m[key] = getattr(args, key)
    if args.no_attention:
        m["attention"] = False
    if args.no_lattice_features:
        m["lattice_features"] = False
    if args.lattice_posterior:
        m["lattice_posterior"] = True
    for f in fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None and v is not False:
            t[f.name] = v
    tcfg = TrainConfig(**t)
    tcfg.data = resolve_spec(tcfg.data)  # the run evaluates from any working directory
    if tcfg.keep < 1:
        raise ValueError(f"--keep must be ≥ 1 (the newest checkpoint is always kept), got {tcfg.keep}")
    if tcfg.steps is None and tcfg.minutes is None:
        raise ValueError("say how long to train: --steps N or --minutes M")
    data = load(tcfg.data, "train", limit=1)
    m["image_shape"], m["K"] = data.shape_chw, data.K
    return ModelConfig(**m), tcfg


def run_train(args) -> int:
    if args.resume is not None:
        saved = read_config(args.resume)
        try:
            mcfg = ModelConfig.from_dict(saved["model"])
            tcfg = TrainConfig(**saved["train"])
        except (KeyError, TypeError, ValueError) as err:
            raise RunError(f"{args.resume / 'config.json'} is not a valid run config ({err})") from None
        for key in ("steps", "minutes"):  # a resumed run may be given a new stopping point
            if getattr(args, key) is not None:
                setattr(tcfg, key, getattr(args, key))
        result = train(mcfg, tcfg, args.resume, resume=True, device=args.device)
    else:
        if args.out is None:
            raise ValueError("--out RUN is required (or --resume RUN)")
        mcfg, tcfg = resolve(args)
        if args.dry_run:
            n = count_parameters(PCDM(mcfg))
            print(json.dumps({"model": mcfg.to_dict(), "train": asdict(tcfg), "params": n}, indent=2))
            return 0
        if (args.out / "config.json").exists():
            raise ValueError(f"{args.out} already holds a run; use --resume {args.out} or another --out")
        result = train(mcfg, tcfg, args.out, device=args.device)
    if dist.is_main():
        report_end(args.resume or args.out, tcfg, result, args.device)
    return 0


def report_end(run: Path, cfg: TrainConfig, result: dict, device: str, n_images: int = 256) -> None:
    """What a user needs when training stops: the EMA bound on a fixed held-out subset
    (not the last batch), where the files are, and what to run next."""
    from .commands import evaluate_run

    try:
        out = evaluate_run(run, limit=n_images, progress=False, device="cpu" if device == "auto" else device)
        bound = (
            f"EMA bound {out['bpd']:.4f} ± {out['bpd_se']:.4f} bpd on the first {out['n_images']} held-out "
            f"images of {out['data']} (an upper bound on −log2 P(x)/d; lower is better)"
        )
    except (ValueError, OSError) as err:  # e.g. data too small for a held-out part
        bound = f"no held-out bound ({err})"
    samples = sorted((run / "samples").glob("*.png"))
    lines = [
        f"trained to step {result['step']}; {bound}",
        f"  weights: {run / 'ema.safetensors'} (EMA, used by default) and {run / 'model.safetensors'}",
        f"  log:     {run / 'metrics.jsonl'}" + (f"; samples: {samples[-1]}" if samples else ""),
        f"  next:    pcdm eval {run}  |  pcdm sample {run} -n 64 --out samples.png  |  "
        f"pcdm compress {run} IMAGES -o out.pcdm",
    ]
    print("\n".join(lines), file=sys.stderr)
