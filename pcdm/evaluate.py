"""Batched evaluation of the bound: per-image bpd by term, and means with standard errors."""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .model import PCDM


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) on disk → (N, C, H, W) for the model."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def to_images(x: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) → uint8 (N, H, W, C)."""
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


@torch.no_grad()
def per_image_bpd(
    model: PCDM,
    images: np.ndarray,
    n_t: int = 1,
    steps: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """Bound of each image in bpd, by term, averaged over ``n_t`` Monte-Carlo draws of
    (t, ε, ε₀). ``steps`` = T selects the discrete-time bound."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=len(images), desc=desc, disable=not progress, unit="img", leave=False)
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size]).to(device)
        acc: dict[str, torch.Tensor] = {}
        for _ in range(n_t):
            for k, v in model.nelbo(x, steps=steps).bpd().items():
                acc[k] = acc.get(k, 0) + v.detach() / n_t
        for k, v in acc.items():
            out.setdefault(k, []).append(v.float().cpu().numpy())
        bar.update(len(x))
    bar.close()
    return {k: np.concatenate(v) for k, v in out.items()}


def summarize(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of every term, plus the standard error of the total (``bpd_se``)."""
    out = {k: float(v.mean()) for k, v in per_image.items()}
    total = per_image["bpd"]
    out["bpd_se"] = float(total.std(ddof=1) / math.sqrt(len(total))) if len(total) > 1 else float("nan")
    out["n_images"] = int(len(total))
    return out
