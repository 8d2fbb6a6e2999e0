"""``pcdm sample``: draw images (and per-level previews) from a trained run."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import edm
from ..checkpoint import load_run
from ..sample import save_grid, save_npz


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw samples (and per-level previews) from a trained run")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--out", required=True, help="PNG grid to write (FILE.npz: the uint8 images instead)")
    p.add_argument("--npz", metavar="FILE.npz", help="also write the uint8 images (for pcdm fid --samples)")
    p.add_argument(
        "--sampler",
        choices=["ancestral", "heun"],
        default="ancestral",
        help="ancestral VDM steps, or EDM's Heun sampler on the ρ = 7 σ grid (docs/math.md §11)",
    )
    p.add_argument(
        "--steps",
        type=int,
        help="ancestral steps T per level (default 256), or Heun σ grid "
        "points per level (default 18; 2 (N − 1) network evaluations)",
    )
    p.add_argument("--churn", type=float, default=0.0, help="Heun only: EDM's S_churn (0: deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    model, _ = load_run(args.run, ema=not args.no_ema, device=args.device)
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    steps = args.steps or (18 if args.sampler == "heun" else 256)
    if steps < (2 if args.sampler == "heun" else 1):
        raise ValueError(f"--steps must be at least {2 if args.sampler == 'heun' else 1}, got {steps}")
    if args.churn and args.sampler != "heun":
        raise ValueError("--churn applies to --sampler heun")
    n_steps = steps - 1 if args.sampler == "heun" else steps
    with tqdm(total=n_steps * len(model.level_shapes), desc=f"sample ({args.sampler})", unit="step") as bar:
        if args.sampler == "heun":
            x, previews = edm.sample_heun(model, args.n, steps, args.churn, generator=g, progress=bar)
        else:
            x, previews = model.sample(args.n, steps=steps, generator=g, progress=bar)
    out = Path(args.out)
    if out.suffix.lower() == ".npz":
        save_npz(x, out, K=model.config.K)
        print(out)
        return 0
    save_grid(x, out, K=model.config.K)
    written = [str(out)]
    if args.npz:
        save_npz(x, Path(args.npz), K=model.config.K)
        written.append(str(args.npz))
    if len(previews) > 1:  # coarse-to-fine previews of the coarser levels (the last is the grid)
        for s, p in enumerate(previews[:-1], 1):
            path = out.with_name(f"{out.stem}_level{s}{out.suffix or '.png'}")
            save_grid(p, path, min_tile=1, K=model.config.K)  # native resolution of each level
            written.append(str(path))
    print("\n".join(written))
    return 0
