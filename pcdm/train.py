"""``pcdm train``: one training loop from one CPU to many GPUs (torchrun + DDP).

Reproducibility is by construction, so that ``--resume`` after ``kill -9`` continues
exactly and W processes compute what one process computes on the same global batch:
  * the data order is a pure function of (seed, step): every epoch is a seeded
    permutation, cut into global batches, each rank taking its contiguous slice;
  * the noise of each step (ε₀, ε, t) is drawn for the whole global batch from a
    generator seeded by (seed, step, micro-step), and each rank keeps its slice;
  * dropout draws from the global generator, reseeded before every micro-step from
    (seed, step, micro-step, rank): masks differ across ranks and never depend on what ran
    before (in-training sample grids use the EMA weights in eval mode and their own
    generator, so they draw nothing from it).
Checkpoints are safetensors + JSON, written atomically; a non-finite loss or gradient
skips the step (and stops with a clear error after repeated failures).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import dist, registry
from .checkpoint import (
    RunError,
    atomic_write,
    latest_checkpoint,
    load_tensors,
    read_config,
    save_tensors,
    write_json,
)
from .commands import save_grid
from .data import load, resolve_spec
from .model import PCDM, ModelConfig, Noise, count_parameters, to_bpd
from .presets import get_preset


@dataclass
class TrainConfig:
    data: str = "fashion-mnist"  # DATA spec (SPEC §8)
    steps: int | None = None  # stop after this many optimiser steps …
    minutes: float | None = None  # … or after this much wall-clock time
    batch: int = 32  # per-rank micro-batch
    accum: int = 1  # gradient-accumulation steps; global batch = batch × world × accum
    lr: float = 2e-3
    weight_decay: float = 0.01
    beta2: float = 0.99
    warmup: int = 100  # linear learning-rate warm-up, in steps
    grad_clip: float = 1.0
    ema: float = 0.999
    seed: int = 0
    limit: int | None = None  # use only the first N training images
    log_every: int = 10
    ckpt_every: int = 500
    keep: int = 3  # checkpoints kept
    sample_every: int = 0  # 0: a sample grid at the end only
    sample_steps: int = 100
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16
    max_bad_steps: int = 5  # consecutive non-finite steps before giving up
    tensorboard: bool = False


# --- deterministic data order --------------------------------------------------------


def batch_indices(n_data: int, global_batch: int, seed: int, micro: int) -> np.ndarray:
    """Indices of global micro-batch number ``micro`` (drop-last epochs of a seeded
    permutation). Pure function: resuming needs only the step counter."""
    per_epoch = n_data // global_batch
    if per_epoch == 0:
        raise ValueError(f"global batch {global_batch} is larger than the {n_data} training images")
    epoch, j = divmod(micro, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_data)
    return perm[j * global_batch : (j + 1) * global_batch]


def noise_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the noise of one micro-step: the same on every rank and after a resume."""
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1, np.uint64)[0] >> 1)


def dropout_seed(seed: int, step: int, micro: int, rank: int) -> int:
    """Seed of the global generator (dropout) for one micro-step of one rank."""
    return int(np.random.SeedSequence([seed, step, micro, rank, 1]).generate_state(1, np.uint64)[0] >> 1)


def ema_with_warmup(decay: float):
    """EMA whose rate ramps up, min(decay, (1 + n) / (10 + n)): short runs are not
    dominated by the random initial weights (the EMA weights are what eval uses)."""

    def avg_fn(averaged, current, n_averaged):
        n = float(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        return d * averaged + (1 - d) * current

    return avg_fn


def param_groups(model: PCDM, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on the networks' weight matrices and kernels only. The
    schedule's parameters are never decayed (decay drags γ(0) up every step, SPEC §3), nor
    are biases and normalisation gains (1-D tensors), as is usual for transformers/U-Nets."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.startswith("schedule.") or p.dim() <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def gamma_ends(model: PCDM) -> dict[str, float]:
    """γ(0) and γ(1) of the schedule, for the training log."""
    with torch.no_grad():
        ends = model.schedule(torch.tensor([0.0, 1.0], device=model._device, dtype=model.dtype))
    return {"gamma_0": float(ends[0]), "gamma_1": float(ends[1])}


def lr_at(step: int, cfg: TrainConfig) -> float:
    return cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))


# --- checkpoints ---------------------------------------------------------------------


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Split the optimiser state into tensors (safetensors) and plain values (JSON)."""
    sd = opt.state_dict()
    tensors, plain = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{name}"] = v
            else:
                plain["state"].setdefault(str(idx), {})[name] = v
    return tensors, plain


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict, plain: dict) -> None:
    state: dict = {int(k): dict(v) for k, v in plain["state"].items()}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def save_checkpoint(run: Path, step: int, model, ema, opt, extra: dict, keep: int) -> None:
    """ckpt/step_N/ written in a temporary folder and renamed: complete or absent."""
    ckdir = run / "ckpt"
    final = ckdir / f"step_{step:08d}"
    tmp = ckdir / f".tmp_step_{step:08d}_{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    opt_t, opt_plain = optimizer_tensors(opt)
    save_tensors(tmp / "model.safetensors", model.state_dict(), {"step": step})
    save_tensors(tmp / "ema.safetensors", ema.module.state_dict(), {"step": step})
    save_tensors(tmp / "optim.safetensors", opt_t)
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["torch_cuda"] = torch.cuda.get_rng_state()
    save_tensors(tmp / "rng.safetensors", rng)
    state = dict(extra, step=step, optimizer=opt_plain, ema_n_averaged=int(ema.n_averaged))
    write_json(tmp / "state.json", state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    # The run's top-level weights always mirror the newest checkpoint.
    shutil.copyfile(final / "model.safetensors", run / ".model.tmp")
    os.replace(run / ".model.tmp", run / "model.safetensors")
    shutil.copyfile(final / "ema.safetensors", run / ".ema.tmp")
    os.replace(run / ".ema.tmp", run / "ema.safetensors")
    for old in sorted(ckdir.glob("step_*"))[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckdir.glob(".tmp_step_*"):  # left by a crash mid-checkpoint
        shutil.rmtree(stale, ignore_errors=True)


# --- the loop ------------------------------------------------------------------------


def sample_grid(model: PCDM, path: Path, n: int, steps: int, seed: int) -> None:
    """A grid of samples in eval mode (no dropout) with its own generator: drawing it leaves
    the training's random state untouched."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        x, _ = model.sample(n, steps=steps, generator=g)
    finally:
        model.train(was_training)
    save_grid(x, path, K=model.config.K)


def train(model_cfg: ModelConfig, cfg: TrainConfig, run: Path, resume: bool = False, device="auto") -> dict:
    device = dist.init(device)
    rank, world = dist.rank(), dist.world()
    torch.manual_seed(cfg.seed)
    data = load(cfg.data, "train", limit=cfg.limit)
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous()
    model = PCDM(model_cfg).to(device)
    ema = AveragedModel(model, avg_fn=ema_with_warmup(cfg.ema), use_buffers=True)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, cfg.beta2))
    step = 0
    if resume:
        ck = latest_checkpoint(run)
        if ck is None:
            raise RunError(f"{run} has no complete checkpoint to resume from")
        try:
            state = json.loads((ck / "state.json").read_text())
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise ValueError("no integer 'step'")
        except ValueError as err:
            raise RunError(f"{ck / 'state.json'} is not a valid checkpoint state ({err})") from None
        if state.get("world", world) != world:
            raise RunError(
                f"{run} was trained on {state['world']} process(es) and is resumed on {world}: the "
                f"global batch and data order would change; resume with --nproc_per_node {state['world']}"
            )
        try:
            model.load_state_dict(load_tensors(ck / "model.safetensors"))
            ema.module.load_state_dict(load_tensors(ck / "ema.safetensors"))
            ema.n_averaged.fill_(state["ema_n_averaged"])
            load_optimizer(opt, load_tensors(ck / "optim.safetensors"), state["optimizer"])
            rng = load_tensors(ck / "rng.safetensors")
        except (KeyError, TypeError, RuntimeError) as err:  # weights or state from another config
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunError(f"{ck} does not match {run / 'config.json'}: {first}") from None
        torch.set_rng_state(rng["torch_cpu"])
        if "torch_cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["torch_cuda"])
        step = state["step"]
        if dist.is_main():
            _truncate_metrics(run / "metrics.jsonl", step)
    elif dist.is_main():
        run.mkdir(parents=True, exist_ok=True)
        write_json(
            run / "config.json",
            {
                "model": model_cfg.to_dict(),
                "train": asdict(cfg),
                "data": {
                    "spec": cfg.data,
                    "K": data.K,
                    "shape": list(data.shape_chw),
                    "n_train": len(data.images),
                },
            },
        )
    ddp = DistributedDataParallel(model) if world > 1 else model
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    global_batch = cfg.batch * world
    n_params = count_parameters(model)
    dist.print0(
        f"pcdm train: {model_cfg.model}, {n_params / 1e6:.3f}M parameters, {len(images)} images "
        f"{tuple(data.shape_chw)} K={data.K}, world {world}, global batch {global_batch * cfg.accum}"
    )
    writer = _tensorboard(run) if cfg.tensorboard and dist.is_main() else None
    log = open(run / "metrics.jsonl", "a") if dist.is_main() else None
    bar = tqdm(total=cfg.steps, initial=step, disable=not dist.is_main(), desc="train", unit="step")
    first_step = step
    start, bad, running = time.time(), 0, None
    last = {}
    while True:
        done = cfg.steps is not None and step >= cfg.steps
        if cfg.minutes is not None:
            done = done or dist.broadcast_flag((time.time() - start) / 60 >= cfg.minutes, device)
        if done:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        terms = {}
        for m in range(cfg.accum):
            micro = step * cfg.accum + m
            idx = batch_indices(len(images), global_batch, cfg.seed, micro)
            x = images[idx[rank * cfg.batch : (rank + 1) * cfg.batch]].to(device)
            torch.manual_seed(dropout_seed(cfg.seed, step, m, rank))
            g = torch.Generator().manual_seed(noise_seed(cfg.seed, step, m))
            noise = Noise.draw((global_batch, *x.shape[1:]), len(model.level_shapes), g)
            noise = noise.slice(rank * cfg.batch, (rank + 1) * cfg.batch)
            noise = Noise(noise.eps0.to(device), noise.eps.to(device), noise.t.to(device))
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, bound = _loss(ddp, x, noise)
            (loss / cfg.accum).backward()
            total += loss.detach() / cfg.accum
            for k, v in bound.bpd().items():
                terms[k] = terms.get(k, 0.0) + float(v.detach().mean()) / cfg.accum
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        finite = dist.all_true(bool(torch.isfinite(total)) and bool(torch.isfinite(gnorm)), device)
        if not finite:
            bad += 1
            warnings.warn(
                f"step {step}: non-finite loss or gradient, step skipped ({bad} in a row)",
                stacklevel=1,
            )
            if bad >= cfg.max_bad_steps:
                raise RunError(
                    f"{bad} consecutive non-finite steps at step {step}: lower --lr or check the data; "
                    f"the last good checkpoint is in {run / 'ckpt'}"
                )
            opt.zero_grad(set_to_none=True)
            step += 1
            continue
        bad = 0
        opt.step()
        ema.update_parameters(model)
        step += 1
        terms = dist.mean(dict(terms, loss=float(total)), device)
        loss_val = terms.pop("loss")
        running = loss_val if running is None else 0.98 * running + 0.02 * loss_val
        if cfg.steps is None and cfg.minutes:  # a time budget: total and ETA from the pace so far
            elapsed = time.time() - start
            pace = elapsed / max(step - first_step, 1)
            bar.total = step + max(0, int((cfg.minutes * 60 - elapsed) / pace))
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.3f}", bpd=f"{running:.3f}")
        last = {
            "step": step,
            "loss": loss_val,
            "lr": lr_at(step - 1, cfg),
            "grad_norm": float(gnorm),
            **terms,
            **gamma_ends(model),
        }
        if log and (step % cfg.log_every == 0 or step == cfg.steps):
            last["time_s"] = round(time.time() - start, 2)
            log.write(json.dumps(last) + "\n")
            log.flush()
            if writer:
                for k, v in last.items():
                    writer.add_scalar(f"train/{k}", v, step)
        if step % cfg.ckpt_every == 0 and dist.is_main():
            save_checkpoint(run, step, model, ema, opt, {"seed": cfg.seed, "world": world}, cfg.keep)
        if cfg.sample_every and step % cfg.sample_every == 0 and dist.is_main():
            sample_grid(ema.module, run / "samples" / f"step_{step:08d}.png", 36, cfg.sample_steps, cfg.seed)
    bar.close()
    if log and last and step % cfg.log_every and step != cfg.steps:  # always log the final step
        last["time_s"] = round(time.time() - start, 2)
        log.write(json.dumps(last) + "\n")
        log.flush()
    if dist.is_main():
        if latest_checkpoint(run) is None or latest_checkpoint(run).name != f"step_{step:08d}":
            save_checkpoint(run, step, model, ema, opt, {"seed": cfg.seed, "world": world}, cfg.keep)
        if cfg.sample_steps > 0:
            sample_grid(ema.module, run / "samples" / f"step_{step:08d}.png", 36, cfg.sample_steps, cfg.seed)
        log.close()
        if writer:
            writer.close()
    dist.barrier()
    dist.cleanup()
    return {"step": step, "params": n_params, **last}


def _loss(ddp, x, noise):
    """Forward through DDP's wrapper (so gradients are all-reduced) and return the
    mean-bpd loss and the bound."""
    core = ddp.module if isinstance(ddp, DistributedDataParallel) else ddp
    bound = ddp(x, noise=noise, return_bound=True)
    return to_bpd(bound.total, core.dims).mean(), bound


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint we restart from, and a last
    line torn by a crash mid-write."""
    if not path.exists():
        return
    lines = []
    for ln in path.read_text().splitlines():
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            continue  # torn by a crash
        if isinstance(row, dict) and row.get("step", step + 1) <= step:
            lines.append(ln)
    write_json_lines(path, lines)


def write_json_lines(path: Path, lines: list[str]) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text("".join(ln + "\n" for ln in lines)))


def _tensorboard(run: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RunError("--tensorboard needs the 'tensorboard' package: pip install tensorboard") from None
    return SummaryWriter(str(run / "tb"))


# --- command line --------------------------------------------------------------------


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
