"""Run folders and checkpoints: safetensors weights + JSON state, never pickle.

A run folder holds

    config.json          model config, training options, data description (K, shape)
    model.safetensors    latest raw weights
    ema.safetensors      latest EMA weights (what eval / sample / codec use by default)
    metrics.jsonl        one JSON object per logged step
    samples/             periodic sample grids
    ckpt/step_XXXXXXXX/  full training state: weights, EMA, optimiser (safetensors),
                         state.json (step, RNG states, data position)

Every file is written to a temporary name in the same folder and renamed into place, so a
crash (even ``kill -9``) leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
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


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint ``RUN/ckpt/step_N`` (its state.json written last)."""
    ckpts = sorted((Path(run) / "ckpt").glob("step_*"))
    complete = [c for c in ckpts if (c / "state.json").is_file()]
    return complete[-1] if complete else None


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
    files = [run / "ema.safetensors", run / "model.safetensors"]
    for ck in sorted((run / "ckpt").glob("step_*"), reverse=True):
        files += [ck / "ema.safetensors", ck / "model.safetensors"]
    return [f for f in files if f.is_file()]


def fingerprint(model: PCDM) -> bytes:
    """SHA-256 over the config and every weight's bytes: identifies a model exactly. The
    Haar wavelet is what w-pcdm meant before ``--wavelet`` existed, so it is left out of
    the hash and files made by those runs still decode."""
    config = model.config.to_dict()
    if config.get("wavelet") == "haar":
        del config["wavelet"]
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()
