"""Run folders and checkpoints: safetensors weights + JSON state, never pickle.

A run folder holds

    config.json          model config, training options, data description (K, shape)
    model.safetensors    latest raw weights
    ema.safetensors      latest EMA weights (what eval / sample / codec use by default)
    metrics.jsonl        one JSON object per logged step
    samples/             periodic sample grids
    ckpt/step_XXXXXXXX/  full training state: weights, EMA, optimiser (safetensors),
                         state.json (step, RNG states, data position)

A per-level run (``pcdm train --levels-only``, ``"per_level": true`` in config.json) holds
instead one such set per level under ``levels/level_K/`` (see pcdm/levels.py); loading it
assembles every level's newest complete weights and refuses a level never trained.

Every file is written to a temporary name in the same folder and renamed into place, so a
crash (even ``kill -9``) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .model import PCDM, ModelConfig


class RunError(ValueError):
    """A run folder or checkpoint that cannot be used, with the reason in one line."""


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; keep the user's umask
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise RunError(f"refusing to write a checkpoint with non-finite values in {name!r}")
    meta = {k: str(v) for k, v in (metadata or {}).items()} or None
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def saved_step(path: Path) -> str | None:
    """The training step recorded in a weights file's metadata (None if absent)."""
    try:
        with safe_open(str(path), "pt") as fh:
            return (fh.metadata() or {}).get("step")
    except (SafetensorError, OSError, ValueError):
        return None


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors only: a file that is anything else (a pickle, say) is refused."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"missing weights file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunError(f"{path} is not a valid safetensors file ({err})") from None


def read_config(run: Path) -> dict:
    run = Path(run)
    path = run / "config.json"
    if not path.is_file():
        raise RunError(f"{run} is not a pcdm run folder (no config.json)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is corrupt: {err}") from None


def checkpoints(run: Path) -> list[tuple[int, Path]]:
    """Every complete checkpoint ``RUN/ckpt/step_N`` (its state.json written last) as
    (N, folder), oldest first."""
    found = [(int(c.name[len("step_") :]), c) for c in (Path(run) / "ckpt").glob("step_*")]
    return sorted((n, c) for n, c in found if (c / "state.json").is_file())


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint ``RUN/ckpt/step_N``."""
    complete = checkpoints(run)
    return complete[-1][1] if complete else None


def split_run(path: Path) -> tuple[Path, Path]:
    """(run folder, weights folder): a run folder is both; ``RUN/ckpt/step_N`` names one of
    its checkpoints (weights there, config.json in RUN)."""
    path = Path(path)
    if (path / "state.json").is_file() and path.parent.name == "ckpt":
        return path.parent.parent, path
    return path, path


def load_run(run: Path, ema: bool = True, device: str | torch.device = "cpu") -> tuple[PCDM, dict]:
    """Build the model of a run folder (or of one of its checkpoints, ``RUN/ckpt/step_N``)
    and load its (EMA) weights; returns (model, config)."""
    run, weights = split_run(run)
    config = read_config(run)
    if config.get("per_level"):
        return _load_per_level(run, config, ema, device)
    if weights == run and saved_step(run / "ema.safetensors") != saved_step(run / "model.safetensors"):
        # The two top-level mirrors are from different steps (a crash between their two
        # renames): the newest complete checkpoint holds a consistent pair.
        weights = latest_checkpoint(run) or weights
    try:
        model = PCDM(ModelConfig.from_dict(config["model"]))
    except (TypeError, KeyError, ValueError) as err:
        raise RunError(f"{run / 'config.json'} has an invalid model config: {err}") from None
    name = "ema.safetensors" if ema and (weights / "ema.safetensors").exists() else "model.safetensors"
    load_weights(model, weights / name)
    return model.to(device).eval(), config


def _load_per_level(run: Path, config: dict, ema: bool, device) -> tuple[PCDM, dict]:
    from . import levels

    try:
        model = PCDM(ModelConfig.from_dict(config["model"]))
    except (TypeError, KeyError, ValueError) as err:
        raise RunError(f"{run / 'config.json'} has an invalid model config: {err}") from None
    state = levels.assemble_state(run, model, ema)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0].strip()
        raise RunError(f"{run}: its levels' weights do not match config.json: {first}") from None
    return model.to(device).eval(), config


def load_weights(model: PCDM, path: Path) -> None:
    """Load a safetensors file into ``model``; a file of another config is one clear line."""
    state = load_tensors(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same names, other shapes
        first = str(err).strip().splitlines()[-1].strip()
        raise RunError(f"{path} does not match the run's config.json: {first}") from None
    if missing or unexpected:
        raise RunError(
            f"{path} does not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )


def weight_files(run: Path) -> list[Path]:
    """Every weights file of a run, newest first: top-level EMA and raw weights, then each
    checkpoint's (for finding the weights a .pcdm file was made with)."""
    run, _ = split_run(run)
    if (run / "levels").is_dir() and not (run / "model.safetensors").exists():
        return []  # a per-level run: its weights are only meaningful assembled (load_run)
    files = [run / "ema.safetensors", run / "model.safetensors"]
    for ck in sorted((run / "ckpt").glob("step_*"), reverse=True):
        files += [ck / "ema.safetensors", ck / "model.safetensors"]
    return [f for f in files if f.is_file()]


def fingerprint(model: PCDM) -> bytes:
    """SHA-256 over the config and every weight's bytes: identifies a model exactly. A model
    option at its registry default (w-pcdm's Haar wavelet) is what the model meant before
    the option existed, so it is left out of the hash and files made by older runs decode."""
    from . import registry

    config = model.config.to_dict()
    defaults = registry.get(config["model"]).options
    config = {k: v for k, v in config.items() if not (k in defaults and v == defaults[k])}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


# --- training checkpoints ---------------------------------------------------------


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


def restore_checkpoint(run: Path, world: int, model, ema, opt, device) -> dict:
    """Load the newest complete checkpoint of ``run`` into model, EMA, optimiser and the
    torch RNG; return its state (``step`` and what else training saved). Refuses another
    world size (the data order would change)."""
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
    return state
