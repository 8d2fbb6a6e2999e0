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
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from . import dist, edm, levels, machine
from .checkpoint import (
    RunError,
    atomic_write,
    latest_checkpoint,
    load_tensors,
    restore_checkpoint,
    save_checkpoint,
    write_json,
)
from .data import load, to_nchw
from .model import PCDM, ModelConfig, Noise, count_parameters, to_bpd
from .sample import save_grid
from .timesampling import TimeSampler


@dataclass
class TrainConfig:
    data: str = "fashion-mnist"  # DATA spec (docs/math.md §9)
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
    t_sampling: str = "uniform"  # uniform | importance (per-level time density, unbiased)
    # per-level training (docs/math.md §10, "Per-level training"; pcdm/levels.py)
    levels_only: str | None = None  # "s[,s…]": train only these levels' networks, into RUN/levels/
    level_budget: str | None = None  # auto | proportional | W0:W1:…: split --steps/--minutes over levels
    level_rounds: int = 8  # rounds of --level-budget auto


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
    schedule's parameters are never decayed (decay drags γ(0) up every step, docs/math.md §3), nor
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


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    run: Path,
    resume: bool = False,
    device="auto",
    level=None,
    leave_group: bool = True,
) -> dict:
    """Train every level in lockstep, or (``level`` = k) only level k's network into
    RUN/levels/level_k/ (docs/math.md §10, "Per-level training"). ``leave_group=False``
    keeps a torchrun process group for another call in the same processes (a process
    group cannot be joined twice)."""
    device = dist.init(device)
    rank, world = dist.rank(), dist.world()
    machine.cap_torch_threads()  # threads from the cores this process may use (docs/math.md §10)
    torch.manual_seed(cfg.seed)
    data = load(cfg.data, "train", limit=cfg.limit)
    images = to_nchw(data.images).contiguous()
    if model_cfg.objective == "edm" and model_cfg.sigma_data is None and not resume:
        # EDM's preconditioning needs each level's data RMS: measured once, stored in config.json
        model_cfg.sigma_data = edm.measure_sigma_data(PCDM(model_cfg), images[:10000])
    model = PCDM(model_cfg).to(device)
    full, top = model, Path(run)
    if level is not None:  # only level k's parameters train; its files live in its own folder
        if model_cfg.objective == "edm":
            raise ValueError("--levels-only trains the bound (objective elbo)")
        if not 0 <= level < len(model.level_shapes):
            raise ValueError(f"level {level} is not a level of this {len(model.level_shapes)}-level model")
        model = levels.LevelPart(full, level)
        run = levels.level_dir(top, level)
        if not resume and latest_checkpoint(run) is not None:
            raise ValueError(
                f"level {level} of {top} is already trained; use --resume {top} --levels-only {level}"
            )
    ema = AveragedModel(model, avg_fn=ema_with_warmup(cfg.ema), use_buffers=True)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, cfg.beta2))
    if cfg.t_sampling not in ("uniform", "importance"):
        raise ValueError(f"--t-sampling must be uniform or importance, got {cfg.t_sampling!r}")
    if cfg.t_sampling == "importance" and model_cfg.objective == "edm":
        raise ValueError("--t-sampling importance applies to the elbo objective (edm draws σ log-normally)")
    sampler = TimeSampler(len(full.level_shapes)) if cfg.t_sampling == "importance" else None
    step = 0
    if not resume and level is not None and level != levels.OWNER:
        try:  # γ frozen at the owner's newest weights (every rank), else the initial γ
            owned = load_tensors(levels.level_weights_file(top, levels.OWNER))
            gamma = {n[len("schedule.") :]: t for n, t in owned.items() if n.startswith("schedule.")}
            full.schedule.load_state_dict(gamma)
            ema.module.schedule.load_state_dict(gamma)
        except RunError:
            pass
    if resume:
        state = restore_checkpoint(run, world, model, ema, opt, device)
        step = state["step"]
        if sampler is not None:
            if "time_sampler" not in state:
                raise RunError(f"{run}: its checkpoint has no time-sampler state to resume from")
            sampler.load_state_dict(state["time_sampler"])
        if dist.is_main():
            _truncate_metrics(run / "metrics.jsonl", step)
    elif dist.is_main():
        run_config = {
            "model": model_cfg.to_dict(),
            "train": asdict(cfg),
            "data": {"spec": cfg.data, "K": data.K, "shape": list(data.shape_chw), "n_train": len(data)},
        }
        run.mkdir(parents=True, exist_ok=True)
        if level is not None:  # written once by whichever level's job comes first
            levels.create_run_config(top, {**run_config, "per_level": True})
            write_json(run / "train.json", asdict(cfg))
        else:
            write_json(run / "config.json", run_config)

    def extra_state() -> dict:
        """What a checkpoint needs beyond weights and optimiser to resume exactly."""
        state = {"seed": cfg.seed, "world": world}
        return state if sampler is None else {**state, "time_sampler": sampler.state_dict()}

    net = full if level is None else levels.LevelLoss(full, level)
    ddp = DistributedDataParallel(net) if world > 1 else net
    if world > 1:
        dist.barrier()  # rank 0 made the level's folder
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    global_batch = cfg.batch * world
    n_params = count_parameters(full)
    dist.print0(
        f"pcdm train: {model_cfg.model}, {n_params / 1e6:.3f}M parameters, {len(images)} images "
        f"{tuple(data.shape_chw)} K={data.K}, world {world}, global batch {global_batch * cfg.accum}"
    )
    writer = _tensorboard(run) if cfg.tensorboard and dist.is_main() else None
    log = open(run / "metrics.jsonl", "a") if dist.is_main() else None
    bar = tqdm(total=cfg.steps, initial=step, disable=not dist.is_main(), desc="train", unit="step")
    first_step = step
    # what else used this run's cores (docs/math.md §10): this process's tree; under torchrun
    # the local ranks' (their parent's); PCDM_JOB_ROOT names another process whose tree is
    # the job (e.g. the launcher of concurrent per-level jobs, which then do not count as load)
    root = os.getppid() if world > 1 and "LOCAL_RANK" in os.environ else None
    if os.environ.get("PCDM_JOB_ROOT", "").isdigit():
        root = int(os.environ["PCDM_JOB_ROOT"])
    monitor = machine.Monitor(root=root).start(step) if dist.is_main() else None
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
        terms, stats = {}, None
        for m in range(cfg.accum):
            micro = step * cfg.accum + m
            idx = batch_indices(len(images), global_batch, cfg.seed, micro)
            x = images[idx[rank * cfg.batch : (rank + 1) * cfg.batch]].to(device)
            torch.manual_seed(dropout_seed(cfg.seed, step, m, rank))
            g = torch.Generator().manual_seed(noise_seed(cfg.seed, step, m))
            noise = Noise.draw((global_batch, *x.shape[1:]), len(full.level_shapes), g)
            if sampler is not None:  # the same draw on every rank, before slicing
                noise = Noise(noise.eps0, noise.eps, *sampler.transform(noise.t))
            noise = noise.slice(rank * cfg.batch, (rank + 1) * cfg.batch).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, bound = _loss(ddp, x, noise) if level is None else _level_loss(ddp, x, noise)
            if sampler is not None:  # ℓ_k(t) = weighted term / weight, binned by t
                new = sampler.statistics(noise.t, bound.extras["diffusion_levels"].T / noise.w)
                stats = new if stats is None else tuple(a + b for a, b in zip(stats, new))
            (loss / cfg.accum).backward()
            total += loss.detach() / cfg.accum
            reported = {"level_bpd": loss} if level is not None else bound.bpd() if bound is not None else {}
            for k, v in reported.items():  # an EDM loss is no bound
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
        if sampler is not None:
            sampler.update(*(dist.all_sum(v, device) for v in stats))
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
        if monitor is not None and (note := monitor.sample(step)):
            bar.write(note)  # once: throughput fell far below its first minute's
        bar.set_postfix({"loss": f"{loss_val:.3f}", ("bpd" if terms else "avg"): f"{running:.3f}"})
        last = {
            "step": step,
            "loss": loss_val,
            "lr": lr_at(step - 1, cfg),
            "grad_norm": float(gnorm),
            **terms,
            **gamma_ends(full),
        }
        if log and (step % cfg.log_every == 0 or step == cfg.steps):
            last["time_s"] = round(time.time() - start, 2)
            log.write(json.dumps(last) + "\n")
            log.flush()
            if writer:
                for k, v in last.items():
                    writer.add_scalar(f"train/{k}", v, step)
        if step % cfg.ckpt_every == 0 and dist.is_main():
            save_checkpoint(run, step, model, ema, opt, extra_state(), cfg.keep)
        if cfg.sample_every and step % cfg.sample_every == 0 and dist.is_main() and level is None:
            sample_grid(ema.module, run / "samples" / f"step_{step:08d}.png", 36, cfg.sample_steps, cfg.seed)
    bar.close()
    summary = monitor.summary() if monitor is not None else None
    if log and last and step % cfg.log_every and step != cfg.steps:  # always log the final step
        last["time_s"] = round(time.time() - start, 2)
        log.write(json.dumps(last) + "\n")
        log.flush()
    if dist.is_main():
        if latest_checkpoint(run) is None or latest_checkpoint(run).name != f"step_{step:08d}":
            save_checkpoint(run, step, model, ema, opt, extra_state(), cfg.keep)
        if cfg.sample_steps > 0 and level is None:  # a level alone cannot sample
            sample_grid(ema.module, run / "samples" / f"step_{step:08d}.png", 36, cfg.sample_steps, cfg.seed)
        log.close()
        if writer:
            writer.close()
    if summary is not None:
        _write_machine(run / "machine.json", summary)
    dist.barrier()
    if leave_group:
        dist.cleanup()
    return {"step": step, "params": n_params, **last, "machine": summary}


def _loss(ddp, x, noise):
    """Forward through DDP's wrapper (so gradients are all-reduced) and return the
    mean-bpd loss and the bound."""
    core = ddp.module if isinstance(ddp, DistributedDataParallel) else ddp
    if core.config.objective == "edm":  # EDM's weighted denoising loss (docs/math.md §11)
        return ddp(x, noise=noise), None
    bound = ddp(x, noise=noise, return_bound=True)
    return to_bpd(bound.total, core.dims).mean(), bound


def _write_machine(path: Path, summary: dict) -> None:
    """RUN/machine.json: this session's machine record; a resumed run keeps the earlier
    sessions' under "earlier" (each of them counts, pcdm.machine.disturbance)."""
    earlier = []
    if path.exists():
        try:
            old = json.loads(path.read_text())
            earlier = [*old.pop("earlier", []), old]
        except (json.JSONDecodeError, AttributeError):
            pass
    write_json(path, {**summary, "earlier": earlier} if earlier else summary)


def _level_loss(ddp, x, noise):
    """One level's job: its share of the bound (docs/math.md §10), in bpd of the image."""
    core = ddp.module if isinstance(ddp, DistributedDataParallel) else ddp
    nats, bound = ddp(x, noise=noise)
    return to_bpd(nats, core.dims).mean(), bound


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
