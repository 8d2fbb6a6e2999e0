"""Drawing images from a trained model and writing them: a PNG grid for people, a ``.npz`` of
uint8 images for metrics (docs/math.md §5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .checkpoint import atomic_write
from .data import to_nhwc


def save_grid(x: torch.Tensor, path: Path, nrow: int | None = None, min_tile: int = 32, K: int = 256) -> None:
    """uint8 (N, C, H, W) with values 0..K−1 → one PNG grid for viewing: values stretched
    to 0..255, small images enlarged (nearest)."""
    x = x.detach().cpu().to(torch.int32)
    x = (x * 255 // max(K - 1, 1)).to(torch.uint8)
    n, c, h, w = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    ncol = int(np.ceil(n / nrow))
    scale = max(1, min_tile // max(h, w))
    grid = np.full((ncol * (h + 1) + 1, nrow * (w + 1) + 1, c), 255, np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = (
            x[i].permute(1, 2, 0).numpy()
        )
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))


def save_npz(x: torch.Tensor, path: Path, K: int = 256) -> None:
    """uint8 (N, C, H, W) with values 0..K−1 → ``path`` holding ``images`` (N, H, W, C) uint8
    and ``K``: the form ``pcdm fid --samples`` and ``pcdm eval --data`` read."""
    images = to_nhwc(x)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, images=images, K=np.int64(K))

    atomic_write(Path(path), write)
