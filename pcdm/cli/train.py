"""``pcdm train``: options, presets, the run folder, the end report.

Every field of :class:`~pcdm.model.ModelConfig` and :class:`~pcdm.train.TrainConfig` is a
flag, generated from the dataclasses (``detail_width`` → ``--detail-width``; a boolean whose
default is on → ``--no-NAME``), so the two can never drift apart. What a run uses is, in
increasing priority: the preset, ``--config FILE`` (JSON or TOML: ``{"model": {…}, "train":
{…}}``, e.g. a run's own ``config.json``, or the same keys flat), the flags. The image
shape and K always come from the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import tomllib

from .. import dist, levels, machine, registry
from ..checkpoint import RunError, read_config
from ..data import load, resolve_spec
from ..evaluate import evaluate_run
from ..model import PCDM, ModelConfig, count_parameters
from ..presets import get_preset
from ..train import TrainConfig, train

# Fields that are not flags: the data decide them, or they are not scalars.
DERIVED = {"image_shape", "K", "fourier"}

HELP = {
    "model": "model family: "
    + "; ".join(f"{s.name}: {s.summary}" for s in map(registry.get, registry.names())),
    "levels": "number of levels S (PCDM models)",
    "wavelet": "w-pcdm only: any orthogonal PyWavelets wavelet, periodized (e.g. db4, sym8, coif2); "
    "biorthogonal wavelets are refused, their likelihood would not be exact",
    "width": "U-Net width of the base level",
    "detail_width": "U-Net width of the levels s ≥ 2 (default: --width)",
    "depth": "ResNet blocks per direction",
    "attention": "the middle attention block (about half a CPU step at full resolution)",
    "dropout": "dropout rate of the ResNet blocks",
    "lattice_features": "Fourier features of the conditioning and octave view (docs/math.md §4)",
    "lattice_posterior": "add the closed-form flat-lattice posterior to each ε-network "
    "(vdm, lp-pcdm, w-pcdm with haar; docs/math.md §4)",
    "schedule": "γ schedule",
    "gamma_min": "γ(0) at initialisation (default −13.3 + 2 ln(256/K))",
    "gamma_max": "γ(1) at initialisation",
    "objective": "elbo: train the bound (docs/math.md §3); edm: EDM's preconditioning, log-normal σ and "
    "weighting per level, for sample quality (pcdm eval still reports its honest bound; docs/math.md §11)",
    "data": "dataset name, name:root, image folder or .npy/.npz",
    "steps": "stop after N optimiser steps",
    "minutes": "stop after M minutes of wall-clock time",
    "batch": "per-process micro-batch",
    "accum": "gradient-accumulation steps (global batch = batch × processes × accum)",
    "lr": "AdamW learning rate",
    "weight_decay": "AdamW weight decay (never on the γ schedule, biases or norm gains)",
    "beta2": "AdamW β₂",
    "warmup": "linear learning-rate warm-up, in steps",
    "grad_clip": "gradient-norm clipping",
    "ema": "EMA decay of the weights eval and sample use",
    "seed": "seed of the data order, noise and initialisation",
    "limit": "use only the first N training images",
    "log_every": "steps between lines of metrics.jsonl",
    "ckpt_every": "steps between checkpoints",
    "keep": "checkpoints kept (the newest always)",
    "sample_every": "steps between sample grids (0: one at the end)",
    "sample_steps": "ancestral steps of those grids (0: none)",
    "precision": "auto: bf16 autocast on CUDA, fp32 on CPU",
    "max_bad_steps": "consecutive non-finite steps before giving up",
    "tensorboard": "also log to RUN/tb (needs tensorboard)",
    "levels_only": "train only these levels' networks (e.g. 0 or 0,1) into RUN/levels/level_K/, each with "
    "its own steps, batch, lr, EMA and checkpoints; other processes may train the other levels of the same "
    "RUN at the same time (pass the same --out); resume one with --resume RUN --levels-only K",
    "level_budget": "split the total --steps/--minutes between the levels of a new per-level run: "
    "proportional (by each level's dimension count), W0:W1:… (explicit weights), or auto (rounds, each "
    "given to the level whose held-out bound fell fastest per second)",
    "level_rounds": "number of rounds of --level-budget auto",
    "t_sampling": "how each level's diffusion time is drawn: uniform, or importance sampling learned "
    "per level (same bound in expectation, less variance)",
}
CHOICES = {
    "model": registry.names,
    "schedule": lambda: ("fixed", "learned", "monotone"),
    "objective": lambda: ("elbo", "edm"),
    "precision": lambda: ("auto", "fp32", "bf16"),
    "t_sampling": lambda: ("uniform", "importance"),
}


def _scalar_type(hint) -> type | None:
    """int / float / str / bool of a field's annotation (``int | None`` → int), or None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    return args[0] if len(args) == 1 and args[0] in (int, float, str, bool) else None


def _default(f) -> object:
    return f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]


def config_flags(parser, cls) -> None:
    """One flag per scalar field of the dataclass ``cls``; unset flags are absent from the
    namespace, so only what the user typed overrides the preset and the config file."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(
        f"{cls.__name__} fields",
        "override --preset and --config; the defaults shown are the dataclass's, a preset may set its own",
    )
    for f in fields(cls):
        kind = _scalar_type(hints[f.name])
        if f.name in DERIVED or kind is None:
            continue
        flag, default = f.name.replace("_", "-"), _default(f)
        text = HELP.get(f.name, f.name.replace("_", " "))
        if kind is bool:
            if default:
                group.add_argument(f"--no-{flag}", dest=f.name, action="store_const", const=False,
                                   default=argparse.SUPPRESS, help=f"turn off: {text}")  # fmt: skip
            else:
                group.add_argument(f"--{flag}", dest=f.name, action="store_const", const=True,
                                   default=argparse.SUPPRESS, help=text)  # fmt: skip
            continue
        choices = CHOICES[f.name]() if f.name in CHOICES else None
        shown = "" if default is None else f" (default {default})"
        group.add_argument(f"--{flag}", dest=f.name, type=kind, choices=choices, default=argparse.SUPPRESS,
                           metavar=None if choices else f.name.upper(), help=text + shown)  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on a dataset", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="run folder to create")
    p.add_argument("--resume", type=Path, metavar="RUN", help="continue RUN from its last checkpoint")
    p.add_argument(
        "--preset", default="small", help="small (CPU), tiny, or a paper preset e.g. cifar10-w-pcdm"
    )
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="JSON or TOML of ModelConfig/TrainConfig overrides ({'model': {…}, 'train': {…}} as in a "
        "run's config.json, or flat); flags override it",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and parameter count, then exit"
    )
    config_flags(p, ModelConfig)
    config_flags(p, TrainConfig)
    p.set_defaults(func=run)


def read_overrides(path: Path) -> tuple[dict, dict]:
    """(model, train) overrides from a JSON or TOML file; unknown keys are an error."""
    try:
        text = path.read_text()
        d = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise ValueError(f"--config {path}: file not found") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: not valid {path.suffix.lstrip('.') or 'JSON'} ({err})") from None
    if not isinstance(d, dict):
        raise ValueError(f"--config {path}: expected a table of options")
    model_keys, train_keys = {f.name for f in fields(ModelConfig)}, {f.name for f in fields(TrainConfig)}
    if "model" in d and isinstance(d["model"], dict):  # a run's config.json, or the same layout
        m, t = dict(d["model"]), dict(d.get("train", {}))
    else:
        m = {k: v for k, v in d.items() if k in model_keys}
        t = {k: v for k, v in d.items() if k in train_keys}
        if unknown := sorted(set(d) - model_keys - train_keys):
            raise ValueError(f"--config {path}: unknown option(s) {', '.join(unknown)}")
    for name, got, known in (("model", m, model_keys), ("train", t, train_keys)):
        if unknown := sorted(set(got) - known):
            raise ValueError(f"--config {path}: unknown {name} option(s) {', '.join(unknown)}")
    return m, t


def resolve(args) -> tuple[ModelConfig, TrainConfig]:
    """preset < --config < flags; image shape and K come from the data."""
    preset = get_preset(args.preset)
    train_keys = {f.name for f in fields(TrainConfig)}
    m = dict(preset["model"])
    t = {k: v for k, v in preset["train"].items() if k in train_keys}
    if args.config is not None:
        cm, ct = read_overrides(args.config)
        m.update(cm)
        t.update(ct)
    for f in fields(ModelConfig):
        if hasattr(args, f.name) and f.name not in DERIVED:
            m[f.name] = getattr(args, f.name)
    for f in fields(TrainConfig):
        if hasattr(args, f.name):
            t[f.name] = getattr(args, f.name)
    m.setdefault("model", "w-pcdm")
    tcfg = TrainConfig(**t)
    tcfg.data = resolve_spec(tcfg.data)  # the run evaluates from any working directory
    if tcfg.keep < 1:
        raise ValueError(f"--keep must be ≥ 1 (the newest checkpoint is always kept), got {tcfg.keep}")
    if tcfg.steps is None and tcfg.minutes is None:
        raise ValueError("say how long to train: --steps N or --minutes M")
    data = load(tcfg.data, "train", limit=1)
    m["image_shape"], m["K"] = data.shape_chw, data.K
    return ModelConfig(**m), tcfg


def run_levels(args) -> int:
    """--levels-only / --level-budget: per-level jobs (pcdm/levels.py)."""
    if args.resume is not None:
        saved = read_config(args.resume)
        if not saved.get("per_level"):
            raise RunError(f"{args.resume} was trained in lockstep; --levels-only needs a per-level run")
        mcfg = ModelConfig.from_dict(saved["model"])
        ks = levels.parse_levels(args.levels_only, len(PCDM(mcfg).level_shapes))
        for k in ks:
            tcfg = levels.level_train_config(args.resume, k, TrainConfig)
            for key in ("steps", "minutes"):  # a resumed level may be given a new stopping point
                if hasattr(args, key):
                    setattr(tcfg, key, getattr(args, key))
            train(mcfg, tcfg, args.resume, resume=True, device=args.device, level=k)
        run_dir = args.resume
    else:
        if args.out is None:
            raise ValueError("--out RUN is required (or --resume RUN)")
        mcfg, tcfg = resolve(args)
        n_levels = len(PCDM(mcfg).level_shapes)
        if args.dry_run:
            n = count_parameters(PCDM(mcfg))
            print(json.dumps({"model": mcfg.to_dict(), "train": asdict(tcfg), "params": n}, indent=2))
            return 0
        if (args.out / "config.json").exists() and not read_config(args.out).get("per_level"):
            raise ValueError(
                f"{args.out} already holds a lockstep run; per-level training needs another --out"
            )
        if tcfg.level_budget is not None:
            if tcfg.levels_only is not None:
                raise ValueError("--level-budget trains every level: leave out --levels-only")
            levels.budget_weights(tcfg.level_budget, PCDM(mcfg).level_dims)  # a bad spec fails here
            levels.run_budget(mcfg, tcfg, args.out, device=args.device)
        else:
            for k in levels.parse_levels(tcfg.levels_only, n_levels):
                train(mcfg, tcfg, args.out, device=args.device, level=k, leave_group=False)
            dist.cleanup()
        run_dir = args.out
    if dist.is_main():
        steps = levels.level_steps(run_dir)
        shown = ", ".join(f"{k}: {v if v is not None else 'never trained'}" for k, v in steps.items())
        missing = [str(k) for k, v in steps.items() if v is None]
        nxt = (
            f"next: pcdm train --out {run_dir} --levels-only {','.join(missing)} --steps N (same options)"
            if missing
            else f"next: pcdm eval {run_dir}  |  pcdm sample {run_dir} -n 64 --out samples.png"
        )
        print(f"levels at step: {shown}\n  {nxt}", file=sys.stderr)
    return 0


def run(args) -> int:
    if getattr(args, "levels_only", None) is not None or getattr(args, "level_budget", None) is not None:
        return run_levels(args)
    if args.resume is not None:
        saved = read_config(args.resume)
        if saved.get("per_level"):
            raise RunError(
                f"{args.resume} is a per-level run: resume a level with --resume RUN --levels-only K"
            )
        try:
            mcfg = ModelConfig.from_dict(saved["model"])
            tcfg = TrainConfig(**saved["train"])
        except (KeyError, TypeError, ValueError) as err:
            raise RunError(f"{args.resume / 'config.json'} is not a valid run config ({err})") from None
        for key in ("steps", "minutes"):  # a resumed run may be given a new stopping point
            if hasattr(args, key):
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
        f"  {machine.describe(result.get('machine'))}",  # last: what the timing is worth
    ]
    print("\n".join(lines), file=sys.stderr)
