"""``pcdm eval``, ``pcdm sample`` and ``pcdm demo``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .baselines import reference_bpd
from .checkpoint import atomic_write, load_run
from .data import ImageSet, has_own_splits, load, resolve_spec
from .evaluate import per_image_bpd, summarize


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


def check_matches(model, data: ImageSet) -> None:
    """The data must have the model's shape and K: say which, clearly."""
    want = tuple(model.config.image_shape)
    if tuple(data.shape_chw) != want:
        raise ValueError(
            f"{data.name} has images of shape (C,H,W) = {data.shape_chw}, the model expects {want}"
        )
    if data.K > model.config.K:
        raise ValueError(
            f"{data.name} has K = {data.K} pixel values, the model was trained for K = {model.config.K}"
        )


def evaluate_run(
    run,
    data_spec=None,
    split=None,
    limit=None,
    n_t=1,
    steps=None,
    batch=128,
    ema=True,
    progress=True,
    device="cpu",
    compare_codecs=False,
) -> dict:
    """The bound of a run on data (with ``compare_codecs``, PNG and JPEG-XL lossless on the
    same images when that is cheap: ``baselines.reference_bpd``). Default split: the run's
    own data → its held-out test split; a named dataset → its test split; any other folder
    or array → all of it."""
    model, cfg = load_run(run, ema=ema, device=device)
    own = cfg["data"]["spec"]
    spec = data_spec or own
    if split is None:
        if data_spec is None or resolve_spec(data_spec) == resolve_spec(own):
            split, why = "test", "held-out part of the run's training data"
        elif has_own_splits(spec):
            split, why = "test", "the dataset's test split"
        else:
            split, why = "all", "not the run's training data: every image"
    else:
        why = "--split"
    data = load(spec, split, limit=limit)
    check_matches(model, data)
    per_image = per_image_bpd(model, data.images, n_t=n_t, steps=steps, batch_size=batch, progress=progress)
    out = summarize(per_image)
    out.update(dims=model.dims, data=data.name, split=split, split_reason=why, n_t=n_t, steps=steps)
    out.update(model=model.config.model)
    if compare_codecs and (reference := reference_bpd(data.images)):
        out["classical_bpd"] = reference
    return out


def run_eval(args) -> int:
    out = evaluate_run(
        args.run,
        args.data,
        args.split,
        args.limit,
        args.n_t,
        args.steps,
        args.batch,
        not args.no_ema,
        progress=not args.json,
        device=args.device,
        compare_codecs=not args.no_compare,
    )
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['model']} on {out['data']}: {out['n_images']} images ({out['split_reason']}), "
            f"d = {out['dims']}"
        )
        bound = f"{out['bpd']:.4f} ± {out['bpd_se']:.4f} bpd"
        print(f"  bound  {bound} (an upper bound on −log2 P(x)/d; lower is better)")
        for key in sorted(k for k in out if k.startswith("bpd_") and k != "bpd_se"):
            print(f"  {key[4:]:<10} {out[key]:.4f}")
        for level, bands in out.get("diffusion_bands", {}).items():
            cells = "  ".join(f"{label} {v:.4f}" for label, v in bands.items())
            print(f"  {level} diffusion by γ band: {cells}")
        if "classical_bpd" in out:
            cells = ", ".join(f"{k} {v:.4f}" for k, v in out["classical_bpd"].items())
            print(f"  for reference, lossless codecs on the same images (each its own file): {cells} bpd")
    return 0


def run_sample(args) -> int:
    model, _ = load_run(args.run, ema=not args.no_ema, device=args.device)
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    from tqdm.auto import tqdm

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


def run_demo(args) -> int:
    """The newcomer's main job: train a small w-pcdm on data that ships with a dependency,
    then compare its test bpd with PNG and JPEG-XL lossless on the same images."""
    from .baselines import compare
    from .cli import main as cli_main

    out = Path(args.out)
    if (out / "config.json").exists():
        print(f"reusing the trained model in {out} (delete it to retrain)", file=sys.stderr)
    else:
        code = cli_main(
            [
                "train",
                "--model",
                "w-pcdm",
                "--data",
                args.data,
                "--out",
                str(out),
                "--minutes",
                str(args.minutes),
                "--preset",
                "small",
                "--sample-steps",
                "0",
            ]
        )
        if code:
            return code
    res = evaluate_run(out, args.data, "test", args.limit, n_t=args.n_t, progress=True)
    test = load(args.data, "test", limit=args.limit)
    codecs = compare(test.images, codecs=["png", "jpegxl"], progress=False)
    print(f"\n{test.name}: {res['n_images']} test images, d = {res['dims']}, K = {test.K}")
    print(f"  pcdm w-pcdm   {res['bpd']:.3f} ± {res['bpd_se']:.3f} bpd   (upper bound on -log2 P(x) / d)")
    for name in ("png", "jpegxl"):
        print(
            f"  {name:<12} {codecs[name]['bpd']:.3f} ± {codecs[name]['se']:.3f} bpd   (file size per image)"
        )
    grid = out / "demo_samples.png"
    model, _ = load_run(out)
    x, _ = model.sample(64, steps=args.sample_steps, generator=torch.Generator().manual_seed(0))
    save_grid(x, grid, K=model.config.K)
    print(f"  samples: {grid}")
    return 0


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="test bpd of a trained run, with its parts and a standard error")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--data", help="DATA (default: the run's training data)")
    p.add_argument(
        "--split",
        choices=["train", "test", "all"],
        help="default: the held-out test part of the run's own data or of a named dataset; "
        "all images of any other folder or array",
    )
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--n-t", type=int, default=1, help="average K Monte-Carlo time samples per image")
    p.add_argument("--steps", type=int, help="discrete-time bound with T steps (default: continuous time)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--no-compare", action="store_true", help="skip PNG / JPEG-XL on the same images (done up to 5000)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_eval)


def add_sample_parser(sub) -> None:
    p = sub.add_parser("sample", help="draw samples (and per-level previews) from a trained run")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("-n", type=int, default=64, help="number of samples")
    p.add_argument("--out", required=True, help="PNG grid to write")
    p.add_argument("--steps", type=int, default=256, help="ancestral steps T per level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run_sample)


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a small w-pcdm on bundled data and compare with PNG/JPEG-XL")
    p.add_argument("--data", default="digits", help="DATA (default: scikit-learn's digits, no download)")
    p.add_argument("--out", default="runs/demo", help="run folder")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--limit", type=int, help="evaluate on the first N test images only")
    p.add_argument("--n-t", type=int, default=4)
    p.add_argument("--sample-steps", type=int, default=200)
    p.set_defaults(func=run_demo)
