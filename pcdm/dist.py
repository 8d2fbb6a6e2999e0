"""A tiny launcher-agnostic distributed shim: under ``torchrun`` it joins the process group
(NCCL on CUDA, gloo on CPU); started plainly it is a world of one. Every command works
either way."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init(device: str = "auto") -> torch.device:
    """Join the process group if torchrun launched us; return this rank's device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device(device)


def rank() -> int:
    """This process's rank; under torchrun also after the group is gone (one report, not N)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs, flush=True)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_true(flag: bool, device: torch.device) -> bool:
    """True only if ``flag`` holds on every rank (so all ranks take the same branch)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([0 if flag else 1], device=device)
    dist.all_reduce(t)
    return int(t.item()) == 0


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's decision, for everyone (e.g. 'time is up')."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def broadcast_value(value: float) -> float:
    """Rank 0's number, for everyone (a decision every rank must take alike)."""
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.broadcast(t, 0)
    return float(t.item())


def mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalars over ranks (for logging the global-batch loss)."""
    if not dist.is_initialized():
        return values
    keys = sorted(values)
    t = all_sum(torch.tensor([values[k] for k in keys], dtype=torch.float64), device)
    return {k: float(v) / world() for k, v in zip(keys, t.tolist())}


def all_sum(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sum a tensor over ranks (on ``device`` for the collective); returned where it was."""
    if not dist.is_initialized():
        return t
    out = t.to(device)
    dist.all_reduce(out)
    return out.to(t.device)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
