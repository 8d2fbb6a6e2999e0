"""``pcdm fid``: FID and KID of a run's samples (or of a ``.npz`` of images made elsewhere)
against a dataset, in Inception-v3 or the dataset's own "domain" feature space
(docs/math.md §11). Every number is printed with N, the reference and the feature space."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import edm
from ..checkpoint import load_run, read_config, split_run
from ..fid import Reference, read_samples, score
from ..sample import save_npz


def add_parser(sub) -> None:
    p = sub.add_parser(
        "fid",
        help="FID / KID of samples against a dataset (Inception-v3, or a domain classifier's features)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "run", type=Path, nargs="?", metavar="RUN", help="run to sample from (and whose data to use)"
    )
    p.add_argument("--n", type=int, help="samples scored (default 2000 drawn; all of --samples)")
    p.add_argument("--samples", type=Path, metavar="FILE.npz", help="score these images instead of sampling")
    p.add_argument("--ref", metavar="DATA", help="reference data (default: the run's training data)")
    p.add_argument("--ref-split", default="train", choices=["train", "test", "all"])
    p.add_argument("--n-ref", type=int, help="reference images used (default: the whole split)")
    p.add_argument(
        "--features",
        choices=["domain", "inception"],
        default="domain",
        help="domain: a small classifier trained once on the reference data's labels (a Fréchet "
        "classifier distance, reported as 'domain FID'); inception: standard FID's Inception-v3",
    )
    p.add_argument("--inception-weights", type=Path, metavar="PATH", help="pt_inception-2015-12-05 weights")
    p.add_argument("--sampler", choices=["ancestral", "heun"], default="heun")
    p.add_argument("--steps", type=int, help="ancestral steps T or Heun σ grid points per level (256 / 18)")
    p.add_argument("--churn", type=float, default=0.0, help="Heun: EDM's S_churn (0: deterministic)")
    p.add_argument("--batch", type=int, default=500, help="images per sampling batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-samples", type=Path, metavar="FILE.npz", help="also keep the drawn images")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.run is None and (args.samples is None or args.ref is None):
        raise ValueError("give a RUN to sample from, or --samples FILE.npz with --ref DATA")
    for name in ("n", "n_ref", "steps", "batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")
    config = read_config(split_run(args.run)[0]) if args.run is not None else None
    ref = Reference(args.ref or config["train"]["data"], args.ref_split, args.n_ref)
    if args.samples is not None:  # everything checked before anything is computed or written
        x, K = read_samples(args.samples)
        if args.n is not None and len(x) < args.n:
            raise ValueError(f"{args.samples} holds {len(x)} images, fewer than the {args.n} asked (--n)")
        x = x[: args.n] if args.n else x
        ref.check(x, K)
        source = str(args.samples)
    else:
        model, _ = load_run(args.run, device=args.device)
        K, n = model.config.K, args.n or 2000
        ref.check(torch.zeros((1, *model.config.image_shape), dtype=torch.uint8), K)
        steps = args.steps or (18 if args.sampler == "heun" else 256)
        per_level = edm.evaluations_per_level(args.sampler, steps)
        g = torch.Generator(device=args.device).manual_seed(args.seed)
        start = time.time()
        total = (
            (steps - 1 if args.sampler == "heun" else steps) * len(model.level_shapes) * -(-n // args.batch)
        )
        with tqdm(total=total, desc=f"sample ({args.sampler})", unit="step", file=sys.stderr) as bar:
            x = edm.draw(model, n, args.sampler, steps, args.churn, g, bar, args.batch)
        seconds = time.time() - start
        source = f"{args.run} ({args.sampler}, {steps} steps, {per_level} evaluations per level)"
        if args.save_samples:
            save_npz(x, args.save_samples, K=K)
    space = feature_space(args, ref)
    out = score(x, K, space, ref)
    out["samples"] = source
    if args.samples is None:
        out.update(sampler=args.sampler, steps=steps, churn=args.churn, sample_seconds=round(seconds, 2))
    if getattr(space, "accuracy", None) is not None:
        out["classifier_test_accuracy"] = space.accuracy
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{out['metric']}: {out['fid']:.3f}; KID {out['kid']:.5f} ± {out['kid_std']:.5f}\n"
            f"  {out['n']} samples of {source}\n"
            f"  against {out['n_ref']} images of {out['ref']}:{out['ref_split']}, features {out['features']}"
            + (
                f" (classifier test accuracy {space.accuracy:.4f})"
                if out.get("classifier_test_accuracy")
                else ""
            )
        )
    return 0


def feature_space(args, ref: Reference):
    from ..features import domain_space, inception_space

    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731 (stdout stays one JSON object)
    if args.features == "inception":
        return inception_space(args.inception_weights, device=args.device)
    return domain_space(ref.spec, device=args.device, log=log)
