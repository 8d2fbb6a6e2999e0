"""``pcdm ood``: score in- and out-of-distribution sets with a trained run (docs/math.md §8)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..ood import BUILTIN, CACHE_FILE, ROC_FILE, TRANSFORMS, format_table, plot_roc, run_ood
from ..ood.select import DEFAULT_SCORE


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ood",
        help="out-of-distribution detection: AUROC of likelihood, per-level and complexity scores",
        description="Evaluate in-distribution test images and OOD sets once (the bound of every "
        "level, and the best classical lossless code length L), and print the AUROC of every "
        "score against the in-distribution test images (equal counts): the raw NLL, each "
        "level, the detail-vs-coarse ratio, the complexity-corrected NLL − L, their typicality "
        "|S − held-out mean|, and a joint typicality of all levels and L. The default score, "
        f"{DEFAULT_SCORE}, was chosen on validation OOD sets only and checked on unseen ones "
        "(docs/math.md §8); it is marked * in the table. Everything fitted "
        "comes from the last images of the in-distribution test split, never used as negatives "
        f"and never from OOD images; it is cached in RUN/{CACHE_FILE}.",
    )
    p.add_argument("run", metavar="RUN", help="run folder (config.json + weights)")
    p.add_argument(
        "--in",
        dest="in_data",
        required=True,
        metavar="DATA",
        help="in-distribution data: the model's training data (its held-out test part is used) "
        "or any other DATA of the model's shape (all of it, unless --split)",
    )
    p.add_argument(
        "--ood",
        action="append",
        required=True,
        metavar="DATA",
        help=f"OOD set: {', '.join(BUILTIN)}, {', '.join(TRANSFORMS)} (of the in-distribution "
        "negatives) or any DATA (adapted to the model's shape and K if needed); repeatable",
    )
    p.add_argument(
        "--score",
        action="append",
        default=None,
        metavar="NAME",
        help=f"report only these scores (repeatable; nll, typ:nll and the default {DEFAULT_SCORE} "
        "always); default: all",
    )
    p.add_argument(
        "--n-t", type=int, default=20, help="Monte-Carlo draws of the bound per image (paper: N = 20)"
    )
    p.add_argument(
        "--limit", type=int, default=None, help="at most this many images per set (also bounds Ĥ's count)"
    )
    p.add_argument(
        "--entropy-count",
        type=int,
        default=1000,
        help="held-out test images for the reference (at most half the test split)",
    )
    p.add_argument(
        "--split",
        default=None,
        choices=["train", "test", "all"],
        help="split of the in-distribution data for the reference and the negatives; default as "
        "in pcdm eval: the run's own training data (the same dataset or path) → its held-out test "
        "split, another named dataset → its test split, any other file or folder → all of it",
    )
    p.add_argument(
        "--min-images",
        type=int,
        default=20,
        help="refuse an AUROC from fewer images per class than this (default 20)",
    )
    p.add_argument("--force", action="store_true", help="report an AUROC even from fewer images")
    p.add_argument("--batch", type=int, default=64, help="images per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the bound's noise and OOD sets")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    p.add_argument(
        "--roc", type=Path, default=None, metavar="FILE.png", help=f"ROC-curve plot (default RUN/{ROC_FILE})"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from ..checkpoint import load_run

    def log(msg: str) -> None:
        print(f"pcdm ood: {msg}", file=sys.stderr, flush=True)

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    run = Path(args.run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {run} does not exist")
    model, config = load_run(run, ema=not args.no_ema, device=device)
    result = run_ood(
        model,
        config,
        run,
        args.in_data,
        args.ood,
        n_t=args.n_t,
        limit=args.limit,
        batch_size=args.batch,
        entropy_count=args.entropy_count,
        seed=args.seed,
        ema=not args.no_ema,
        progress=sys.stderr.isatty(),
        log=log,
        split=args.split,
        min_images=args.min_images,
        force=args.force,
        score_filter=[*args.score, DEFAULT_SCORE] if args.score else None,
    )
    roc: Path | None = args.roc or run / ROC_FILE
    try:
        plot_roc(result, roc, scores=args.score)
    except OSError as err:  # e.g. a read-only run folder: keep the numbers, say why no plot
        log(f"warning: could not write the ROC plot {roc} ({err})")
        roc = None
    out = result.to_json()
    out["default_score"] = DEFAULT_SCORE
    out["auroc_default"] = result.auroc[DEFAULT_SCORE]
    out["roc"] = str(roc) if roc else None
    if args.json:
        print(json.dumps(out))
    else:
        print(format_table(result))
        if roc:
            print(f"ROC curves: {roc}")
    return 0
