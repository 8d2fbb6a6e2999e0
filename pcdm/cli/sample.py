"""``pcdm sample``: draw images (and per-level previews) from a trained run."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import load_run
from ..sample import save_grid


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw samples (and per-level previews) from a trained run")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--out", required=True, help="PNG grid to write")
    p.add_argument("--steps", type=int, default=256, help="ancestral steps T per level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    model, _ = load_run(args.run, ema=not args.no_ema, device=args.device)
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    with tqdm(total=args.steps * len(model.level_shapes), desc="sample", unit="step") as bar:
        x, previews = model.sample(args.n, steps=args.steps, generator=g, progress=bar)
    out = Path(args.out)
    save_grid(x, out, K=model.config.K)
    written = [str(out)]
    if len(previews) > 1:  # coarse-to-fine previews of the coarser levels (the last is the grid)
        for s, p in enumerate(previews[:-1], 1):
            path = out.with_name(f"{out.stem}_level{s}{out.suffix or '.png'}")
            save_grid(p, path, min_tile=1, K=model.config.K)  # native resolution of each level
            written.append(str(path))
    print("\n".join(written))
    return 0
