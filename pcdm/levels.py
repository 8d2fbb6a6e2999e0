"""Levels that train on their own (docs/math.md §10, "Per-level training").

A per-level run folder holds the shared, write-once ``config.json`` (``"per_level": true``)
and one folder per level, written only by the job that trains that level:

    levels/level_K/train.json          that level's TrainConfig (steps, batch, lr, EMA, …)
    levels/level_K/model.safetensors   newest raw weights of level K (``nets.K.*``, ``schedule.*``)
    levels/level_K/ema.safetensors     newest EMA weights of level K
    levels/level_K/metrics.jsonl       that level's log (``level_bpd``: its share of the bound)
    levels/level_K/ckpt/step_N/        full training state of level K (exact resume)

Every file is written atomically (temporary name + ``os.replace``), and no file is written
by two levels' jobs, so any number of processes may train different levels of one run at
the same time. Which level is at which step is ``level_steps(run)``. The γ schedule is
owned by level 0 (trained there if learned); the other levels train with it frozen.

The budget allocator splits a total budget (``--steps`` or ``--minutes``) between levels:
``proportional`` (by each level's dimension count), explicit weights ``W0:W1:…``, or
``auto`` (rounds, each given to the level whose held-out bound fell fastest per second in
its last round).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from .checkpoint import (
    RunError,
    checkpoints,
    current_umask,
    latest_checkpoint,
    load_tensors,
    read_config,
    saved_step,
)
from .model import PCDM, ModelConfig, Noise, to_bpd

OWNER = 0  # the level that owns (and trains) the γ schedule


def level_dir(run: Path, k: int) -> Path:
    return Path(run) / "levels" / f"level_{k}"


def is_per_level(config: dict) -> bool:
    return bool(config.get("per_level"))


def parse_levels(spec: str, n_levels: int) -> list[int]:
    """``"0,1"`` → [0, 1]; every entry an integer level of the model."""
    try:
        ks = [int(s) for s in str(spec).split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--levels-only takes level indices like 0 or 0,1, got {spec!r}") from None
    if not ks or any(not 0 <= k < n_levels for k in ks) or len(set(ks)) != len(ks):
        raise ValueError(f"--levels-only {spec!r}: levels are distinct indices in 0..{n_levels - 1}")
    return ks


class LevelPart(nn.Module):
    """The parameters one level's job owns: ``nets.K`` and the γ schedule (trained only by
    the owner level; a frozen copy elsewhere, so resume is exact). State-dict names are the
    full model's, so the files assemble by name."""

    def __init__(self, model: PCDM, k: int):
        super().__init__()
        self.nets = nn.ModuleDict({str(k): model.nets[k]})
        self.schedule = model.schedule
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self.nets.parameters():
            p.requires_grad_(True)
        for p in self.schedule.parameters():
            p.requires_grad_(k == OWNER)


def level_nats(model: PCDM, bound) -> torch.Tensor:
    """Level k's share of −ELBO (N, S) in nats: prior + diffusion (+ reconstruction for
    discrete maps; for continuous maps the one reconstruction term goes to the γ owner)."""
    per = bound.per_level.clone()
    if not model.map.discrete:
        per[:, OWNER] = per[:, OWNER] + bound.recon
    return per


class LevelLoss(nn.Module):
    """What level k's job minimises, with only level k's network evaluated (the other
    levels' terms are not computed: their denoiser is a zero stand-in)."""

    def __init__(self, model: PCDM, k: int, denoiser=None):
        super().__init__()
        self.model, self.k = model, k
        self.config, self.dims = model.config, model.dims
        self.denoiser = denoiser  # default: the model's own ε-network of level k

    def forward(self, x, noise=None):
        m = self.model
        eps_hat = self.denoiser or m.eps_hat

        def denoiser(j, z, gamma, cond):
            return eps_hat(j, z, gamma, cond) if j == self.k else torch.zeros_like(z)

        bound = m.nelbo(x, noise=noise, denoiser=denoiser)
        return level_nats(m, bound)[:, self.k], bound


def level_steps(run: Path) -> dict[int, int | None]:
    """Step of the newest complete checkpoint of every level (None: never trained)."""
    config = read_config(run)
    n = len(PCDM(ModelConfig.from_dict(config["model"])).level_shapes)
    out = {}
    for k in range(n):
        ck = latest_checkpoint(level_dir(run, k))
        out[k] = None if ck is None else json.loads((ck / "state.json").read_text())["step"]
    return out


def level_weights_file(run: Path, k: int, ema: bool = True, step: int | None = None) -> Path:
    """The newest complete weights of level k (``step``: its newest checkpoint at or below
    that step); one clear line if it was never trained."""
    d = level_dir(run, k)
    ck = latest_checkpoint(d)
    if ck is None:
        raise RunError(
            f"{run}: level {k} was never trained (pcdm train --out {run} --levels-only {k} --steps N)"
        )
    name = "ema.safetensors" if ema else "model.safetensors"
    if step is not None:
        older = [c for n, c in checkpoints(d) if n <= step]
        if not older:
            raise RunError(f"{run}: level {k} has no checkpoint at or below step {step}")
        return older[-1] / name
    # the mirrors are from the newest checkpoint unless a crash fell between their renames
    if (
        saved_step(d / "ema.safetensors")
        == saved_step(d / "model.safetensors")
        == str(json.loads((ck / "state.json").read_text())["step"])
    ):
        return d / name
    return ck / name


def assemble_state(
    run: Path, model: PCDM, ema: bool = True, step: int | None = None
) -> dict[str, torch.Tensor]:
    """The full model's state dict from every level's newest weights (``step``: every level's
    newest checkpoint at or below that step): ``nets.K.*`` from level K, the γ schedule from
    its owner (level 0)."""
    state = {}
    for k in range(len(model.level_shapes)):
        part = load_tensors(level_weights_file(run, k, ema, step))
        for name, t in part.items():
            if name.startswith(f"nets.{k}.") or (k == OWNER and name.startswith("schedule.")):
                state[name] = t
    return state


def create_run_config(run: Path, config: dict) -> None:
    """Write ``config.json`` if absent, atomically and exactly once (``os.link`` fails if
    another job made it first); an existing one must describe the same model and data."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    path = run / "config.json"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=run, prefix=".config.json.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(config, indent=2) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~current_umask())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    have = read_config(run)
    if not is_per_level(have):
        raise RunError(f"{run} was trained in lockstep; --levels-only needs a per-level run (another --out)")
    mine = json.loads(json.dumps(config))  # tuples as JSON lists
    if have["model"] != mine["model"] or have["data"]["spec"] != mine["data"]["spec"]:
        raise RunError(f"{run}/config.json describes another model or data than this job's options")


# --- the budget allocator -------------------------------------------------------------


def budget_weights(spec: str, level_dims: list[int]) -> list[float] | None:
    """Fractions of the budget per level: ``proportional`` (∝ dimension count), ``W0:W1:…``
    (explicit, normalised); None for ``auto`` (decided round by round)."""
    n = len(level_dims)
    if spec == "auto":
        return None
    if spec == "proportional":
        w = [float(d) for d in level_dims]
    else:
        try:
            w = [float(v) for v in spec.split(":")]
        except ValueError:
            raise ValueError(f"--level-budget: auto, proportional or W0:W1:… got {spec!r}") from None
        if len(w) != n or any(v < 0 or not math.isfinite(v) for v in w) or sum(w) <= 0:
            raise ValueError(f"--level-budget {spec!r}: {n} non-negative weights, not all zero")
    s = sum(w)
    return [v / s for v in w]


def split_budget(total: int, fractions: list[float]) -> list[int]:
    """Integers summing to ``total`` closest to ``total × fractions`` (largest remainders)."""
    raw = [total * f for f in fractions]
    out = [int(math.floor(r)) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: out[i] - raw[i])[: total - sum(out)]:
        out[i] += 1
    return out


def next_level(gains: list[float | None]) -> int:
    """The level to give the next round: one never measured first, else the largest recent
    marginal gain (bits per dimension saved per second)."""
    for k, g in enumerate(gains):
        if g is None:
            return k
    return max(range(len(gains)), key=lambda k: gains[k])


def heldout_level_bpd(
    run: Path, model_cfg: ModelConfig, data_spec: str, k: int, n: int = 64, seed: int = 0, initial_seed=None
):
    """Level k's share of the bound (bpd) with its EMA weights on a fixed held-out batch and
    fixed noise: the same draws every time it is measured."""
    from .data import load, to_nchw

    if initial_seed is not None:  # the weights training starts from (train seeds the same way)
        torch.manual_seed(initial_seed)
    model = PCDM(model_cfg)
    if initial_seed is None:
        model.load_state_dict({**model.state_dict(), **load_tensors(level_weights_file(run, k))})
    model.eval()
    x = to_nchw(load(data_spec, "test", limit=n).images)
    g = torch.Generator().manual_seed(seed)
    noise = Noise.draw(x.shape, len(model.level_shapes), g)
    with torch.no_grad():
        nats, _ = LevelLoss(model, k)(x, noise=noise)
    return float(to_bpd(nats, model.dims).mean())


def run_budget(model_cfg: ModelConfig, cfg, run: Path, device="auto", log=print) -> list[dict]:
    """Train every level of a per-level run from one total budget (``cfg.steps`` or
    ``cfg.minutes``) split by ``cfg.level_budget``, one level after another in these processes
    (under torchrun every round is data-parallel over all of them). Returns one record per
    round (level, steps or minutes given, held-out level bpd before/after, seconds)."""
    from . import dist
    from .train import train

    n = len(PCDM(model_cfg).level_dims)
    dims = PCDM(model_cfg).level_dims
    fractions = budget_weights(cfg.level_budget, dims)
    by_steps = cfg.steps is not None
    total = cfg.steps if by_steps else cfg.minutes
    rounds = max(cfg.level_rounds, n) if fractions is None else n
    if fractions is None:  # auto: equal rounds, each to the level with the best recent gain
        per_round = split_budget(total, [1 / rounds] * rounds) if by_steps else [total / rounds] * rounds
    else:
        per_round = split_budget(total, fractions) if by_steps else [total * f for f in fractions]
    steps_done, gains, history = [0] * n, [None] * n, []
    began = time.time()
    for r, amount in enumerate(per_round):
        k = next_level(gains) if fractions is None else r
        if not by_steps:  # a time budget is wall-clock: each round's start-up and held-out
            # measurements count, so a round gets its share of the time still left
            left = total - dist.broadcast_value(time.time() - began) / 60
            amount = max(0.0, left * amount / sum(per_round[r:]))
        if not amount:
            continue
        resume = steps_done[k] > 0
        before = heldout_level_bpd(run, model_cfg, cfg.data, k, initial_seed=None if resume else cfg.seed)
        job = replace(
            cfg,
            levels_only=str(k),
            level_budget=None,
            steps=steps_done[k] + amount if by_steps else None,
            minutes=None if by_steps else amount,
        )
        t0 = time.time()
        result = train(model_cfg, job, run, resume=resume, device=device, level=k, leave_group=False)
        seconds = dist.broadcast_value(time.time() - t0)  # rank 0's clock: every rank picks alike
        steps_done[k] = result["step"]
        after = heldout_level_bpd(run, model_cfg, cfg.data, k)
        gains[k] = (before - after) / max(seconds, 1e-9)
        rec = {"round": r, "level": k, "amount": amount, "bpd_before": before, "bpd_after": after,
               "seconds": round(seconds, 2), "step": steps_done[k]}  # fmt: skip
        history.append(rec)
        if dist.is_main():
            log(json.dumps(rec))
    if dist.is_main():
        with open(Path(run) / "levels" / "budget.jsonl", "a") as fh:  # written by the driver only
            fh.writelines(json.dumps(h) + "\n" for h in history)
    dist.cleanup()
    return history


def level_train_config(run: Path, k: int, train_cls):
    """The TrainConfig a level was started with (its ``train.json``)."""
    path = level_dir(run, k) / "train.json"
    if not path.is_file():
        raise RunError(f"{run}: level {k} was never trained, nothing to resume (use --out {run})")
    return train_cls(**json.loads(path.read_text()))


__all__ = [
    "LevelLoss",
    "LevelPart",
    "assemble_state",
    "budget_weights",
    "level_steps",
    "next_level",
    "run_budget",
    "split_budget",
]
