"""Out-of-distribution detection with the typicality test (SPEC §6, paper §6.2).

The statistic of one image (M = 1) is

    h(x) = | NLL(x) − Ĥ |

with NLL(x) the likelihood bound in bits per dimension (the same number ``pcdm eval``
prints), averaged over N Monte-Carlo draws of (t, ε, ε₀), and Ĥ ≈ H(p_θ) the mean NLL of
*held-out* in-distribution images (Nalisnick et al., 2019). A raw-likelihood detector
(score = NLL) is reported next to it: likelihood models give some outliers (constant
images, SVHN under a CIFAR model) a *higher* likelihood than the data, and only the
two-sided typicality statistic catches them.

Which images play which part, from the in-distribution DATA's ``test`` split of n images:

    negatives  test[0 : m]          scored, labelled 0 (m ≤ n − n_H, or ``--limit``)
    Ĥ          test[n − n_H : n]    never scored as negatives, never seen in training

The test split is used for Ĥ because it is held out from training (a memorised training
set would bias Ĥ low and make typical test images look atypical); the two slices never
overlap. Ĥ is cached in the run folder (``ood_entropy.json``) under a key that holds the
SHA-256 of the weights file, of the model config and of the exact Ĥ images, plus N,
the seed and the batch size: retraining, new data or other settings recompute it.

OOD sets (positives, labelled 1) are ``const`` (each image one random solid value per
channel, uniform over 0..K−1), ``uniform`` (iid uniform pixels over 0..K−1), or any DATA.
A DATA of another shape is adapted to the model and the adaptation is reported: RGB→gray
by ITU-R 601 luma (Pillow's ``L``), gray→RGB by replication, centre crop to the model's
aspect ratio and Lanczos resize (Pillow) to H×W, then requantisation of the values to the
model's K by bin centres. AUROC uses equal counts of negatives and positives; the larger
side is subsampled deterministically.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BUILTIN_OOD = ("const", "uniform")
CACHE_FILE = "ood_entropy.json"
ROC_FILE = "ood_roc.png"
CACHE_VERSION = 1


# ---------------------------------------------------------------------------
# The statistic and its evaluation.


def typicality(nll: np.ndarray, entropy: float) -> np.ndarray:
    """Typicality-test statistic with M = 1: |NLL(x) − Ĥ| (any unit, here bpd)."""
    return np.abs(np.asarray(nll, dtype=np.float64) - entropy)


def auroc(inlier_scores: np.ndarray, outlier_scores: np.ndarray) -> float:
    """Area under the ROC curve of ``score > threshold ⇒ OOD``; 1 = perfect, 0.5 = chance."""
    from sklearn.metrics import roc_auc_score

    labels, scores = _labelled(inlier_scores, outlier_scores)
    return float(roc_auc_score(labels, scores))


def roc_curve(inlier_scores: np.ndarray, outlier_scores: np.ndarray):
    """(false-positive rate, true-positive rate) of ``score > threshold ⇒ OOD``."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    labels, scores = _labelled(inlier_scores, outlier_scores)
    fpr, tpr, _ = sk_roc_curve(labels, scores)
    return fpr, tpr


def _labelled(inlier_scores, outlier_scores) -> tuple[np.ndarray, np.ndarray]:
    inlier_scores = np.asarray(inlier_scores, dtype=np.float64).ravel()
    outlier_scores = np.asarray(outlier_scores, dtype=np.float64).ravel()
    if not len(inlier_scores) or not len(outlier_scores):
        raise ValueError("AUROC needs at least one in-distribution and one OOD score")
    labels = np.r_[np.zeros(len(inlier_scores)), np.ones(len(outlier_scores))]
    return labels, np.r_[inlier_scores, outlier_scores]


def equal_counts(n_in: int, n_out: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices giving both sides min(n_in, n_out) items: the larger side is subsampled
    without replacement by a seeded generator (sorted, so the choice is reproducible)."""
    n = min(n_in, n_out)

    def pick(total: int, salt: int) -> np.ndarray:
        if total == n:
            return np.arange(n)
        rng = np.random.default_rng([seed, salt, total, n])
        return np.sort(rng.choice(total, n, replace=False))

    return pick(n_in, 0), pick(n_out, 1)


# ---------------------------------------------------------------------------
# Built-in OOD sets and adaptation of real ones.


def constant_images(n: int, shape_hwc: tuple[int, int, int], K: int, seed: int = 0) -> np.ndarray:
    """``n`` solid images: each image draws one value per channel uniformly from 0..K−1
    (for gray images: one value for the whole image), as the paper's constant set."""
    h, w, c = shape_hwc
    rng = np.random.default_rng([seed, 1])
    values = rng.integers(0, K, size=(n, 1, 1, c), dtype=np.int64)
    return np.ascontiguousarray(np.broadcast_to(values, (n, h, w, c)), dtype=np.uint8)


def uniform_images(n: int, shape_hwc: tuple[int, int, int], K: int, seed: int = 0) -> np.ndarray:
    """``n`` images of iid pixels uniform over 0..K−1."""
    rng = np.random.default_rng([seed, 2])
    return rng.integers(0, K, size=(n, *shape_hwc), dtype=np.int64).astype(np.uint8)


def requantise(images: np.ndarray, K_from: int, K_to: int) -> np.ndarray:
    """Map values of K_from levels to K_to levels by bin centres: v ↦ ⌊(v + ½) K_to / K_from⌋,
    which keeps the encoded value 2(v + ½)/K − 1 as close as the new grid allows."""
    if K_from == K_to:
        return images
    v = (images.astype(np.float64) + 0.5) * K_to / K_from
    return np.clip(np.floor(v), 0, K_to - 1).astype(np.uint8)


def adapt_images(
    images: np.ndarray, K: int, shape_hwc: tuple[int, int, int], K_model: int
) -> tuple[np.ndarray, list[str]]:
    """Bring uint8 (N, H, W, C) images with K levels to the model's shape and K.
    Returns the adapted images and one short note per change made (empty if none)."""
    from PIL import Image

    h, w, c = shape_hwc
    n, h0, w0, c0 = images.shape
    notes: list[str] = []
    if c0 != c:
        notes.append("RGB→gray (luma)" if c == 1 else "gray→RGB (replicated)")
    crop = _centre_crop_box(h0, w0, h, w)
    if crop != (0, 0, w0, h0):
        notes.append(f"centre-cropped {h0}×{w0}→{crop[3] - crop[1]}×{crop[2] - crop[0]}")
    resize = (crop[3] - crop[1], crop[2] - crop[0]) != (h, w)
    if resize:
        notes.append(f"resized to {h}×{w} (Lanczos)")
    if c0 != c or crop != (0, 0, w0, h0) or resize:
        out = np.empty((n, h, w, c), dtype=np.uint8)
        for i, im in enumerate(images):
            img = Image.fromarray(np.ascontiguousarray(im[..., 0] if c0 == 1 else im))
            img = img.convert("L" if c == 1 else "RGB")
            img = img.crop(crop)
            if resize:
                img = img.resize((w, h), Image.Resampling.LANCZOS)
            a = np.asarray(img)
            out[i] = a[..., None] if c == 1 else a
        images = np.minimum(out, K - 1)  # Lanczos may overshoot the source's top level
    if K != K_model:
        notes.append(f"requantised K {K}→{K_model}")
        images = requantise(images, K, K_model)
    return images, notes


def _centre_crop_box(h0: int, w0: int, h: int, w: int) -> tuple[int, int, int, int]:
    """Largest centred (left, top, right, bottom) box of aspect ratio h:w inside h0×w0."""
    if h0 * w > w0 * h:  # too tall
        ch, cw = max(1, round(w0 * h / w)), w0
    else:
        ch, cw = h0, max(1, round(h0 * w / h))
    top, left = (h0 - ch) // 2, (w0 - cw) // 2
    return (left, top, left + cw, top + ch)


# ---------------------------------------------------------------------------
# Ĥ and its cache.


def weights_path(run: Path, ema: bool = True) -> Path:
    """The weights file ``checkpoint.load_run(run, ema)`` reads: EMA if wanted and present."""
    run = Path(run)
    path = run / "ema.safetensors"
    return path if ema and path.exists() else run / "model.safetensors"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def entropy_cache_key(
    run: Path,
    config: dict,
    images: np.ndarray,
    spec: str,
    n_t: int,
    seed: int,
    batch: int,
    ema: bool = True,
) -> dict:
    """Everything Ĥ depends on. Content hashes, not names or mtimes, so a retrained model
    or changed data files always invalidate it and a copied run folder keeps it."""
    wpath = weights_path(run, ema)
    return {
        "data": spec,
        "images_sha256": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
        "count": int(len(images)),
        "n_t": int(n_t),
        "seed": int(seed),
        "batch": int(batch),
        "bound": "continuous",
        "weights": wpath.name,
        "weights_sha256": _sha256_file(wpath),
        "model_sha256": hashlib.sha256(
            json.dumps(config.get("model", {}), sort_keys=True).encode()
        ).hexdigest(),
    }


def cached_entropy(
    run: Path, key: dict, compute: Callable[[], np.ndarray], warn=None
) -> tuple[float, float, bool]:
    """Ĥ for ``key`` from ``run/ood_entropy.json``, or ``compute()`` (per-image bpd) and
    store it. Returns (Ĥ, its standard error, whether the cache was used). Entries for
    other weights are dropped on write; an unreadable cache is ignored and rewritten."""
    from .checkpoint import write_json

    path = Path(run) / CACHE_FILE
    entries: list[dict] = []
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") == CACHE_VERSION and isinstance(doc.get("entries"), list):
                entries = [e for e in doc["entries"] if isinstance(e, dict)]
        except (OSError, ValueError, AttributeError):
            entries = []
    for e in entries:
        if e.get("key") == key:
            return float(e["entropy_bpd"]), float(e.get("entropy_se_bpd", math.nan)), True
    bpd = np.asarray(compute(), dtype=np.float64)
    value = float(bpd.mean())
    se = float(bpd.std(ddof=1) / math.sqrt(len(bpd))) if len(bpd) > 1 else math.nan
    entries = [e for e in entries if e.get("key", {}).get("weights_sha256") == key["weights_sha256"]]
    entries.append({"key": key, "entropy_bpd": value, "entropy_se_bpd": se})
    try:
        write_json(path, {"version": CACHE_VERSION, "entries": entries})
    except OSError as err:
        if warn:
            warn(f"could not cache Ĥ in {path} ({err})")
    return value, se, False


def split_test(n_test: int, limit: int | None, entropy_count: int) -> tuple[int, int]:
    """(m, h_start): negatives are test[:m], Ĥ images test[h_start:], disjoint."""
    if n_test < 2:
        raise ValueError(
            f"the in-distribution test split has {n_test} image(s); need at least 2 "
            "(some for Ĥ, the others as negatives)"
        )
    n_h = min(entropy_count, n_test // 2)
    if limit is not None:
        n_h = min(n_h, limit)
    n_h = max(1, n_h)
    m = n_test - n_h if limit is None else min(limit, n_test - n_h)
    return m, n_test - n_h


# ---------------------------------------------------------------------------
# The whole experiment.


@dataclass
class OODResult:
    entropy_bpd: float
    entropy_se_bpd: float
    entropy_n: int
    entropy_cached: bool
    in_name: str
    in_nll: np.ndarray
    auroc: dict[str, float] = field(default_factory=dict)
    auroc_raw_nll: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    mean_bpd: dict[str, float] = field(default_factory=dict)
    std_bpd: dict[str, float] = field(default_factory=dict)
    adapted: dict[str, list[str]] = field(default_factory=dict)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "auroc": self.auroc,
            "auroc_raw_nll": self.auroc_raw_nll,
            "n": self.n,
            "entropy_bpd": self.entropy_bpd,
            "entropy_se_bpd": _finite(self.entropy_se_bpd),
            "entropy_n": self.entropy_n,
            "entropy_cached": self.entropy_cached,
            "in": self.in_name,
            "n_in": int(len(self.in_nll)),
            "mean_bpd": {"in": float(self.in_nll.mean()), **self.mean_bpd},
            "std_bpd": {"in": float(self.in_nll.std()), **self.std_bpd},
            "adapted": self.adapted,
        }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def load_ood_set(
    spec: str, n: int, shape_hwc: tuple[int, int, int], K: int, seed: int
) -> tuple[np.ndarray, str, list[str]]:
    """(images, display name, adaptation notes) for one ``--ood`` argument."""
    from .data import load

    if spec == "const":
        return constant_images(n, shape_hwc, K, seed), "const", []
    if spec == "uniform":
        return uniform_images(n, shape_hwc, K, seed), "uniform", []
    data = load(spec, "test", limit=n)
    images, notes = adapt_images(data.images, data.K, shape_hwc, K)
    return images, data.name, notes


def run_ood(
    model,
    config: dict,
    run: Path,
    in_spec: str,
    ood_specs: list[str],
    n_t: int = 20,
    limit: int | None = None,
    batch_size: int = 64,
    entropy_count: int = 1000,
    seed: int = 0,
    ema: bool = True,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: None,
    split: str = "test",
    min_images: int = 20,
    force: bool = False,
) -> OODResult:
    """Score the in-distribution test images, Ĥ and every OOD set; AUROC per set."""
    from .data import load
    from .evaluate import per_image_bpd

    if n_t < 1:
        raise ValueError(f"--n-t must be at least 1, got {n_t}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {limit}")
    if batch_size < 1:
        raise ValueError(f"--batch must be at least 1, got {batch_size}")
    if entropy_count < 1:
        raise ValueError(f"--entropy-count must be at least 1, got {entropy_count}")
    if len(set(ood_specs)) != len(ood_specs):
        raise ValueError(f"an --ood set is given twice: {ood_specs}")
    c, h, w = model.config.image_shape
    K = model.config.K
    shape_hwc = (h, w, c)

    test = load(in_spec, split)
    if test.images.shape[1:] != shape_hwc or test.K != K:
        _, h0, w0, c0 = test.images.shape
        raise ValueError(
            f"in-distribution data {test.name} is {h0}×{w0}×{c0} with K={test.K}, but the "
            f"model expects {h}×{w}×{c} with K={K}; give the data the model was trained on"
        )
    m, h_start = split_test(len(test), limit, entropy_count)
    negatives, held_out = test.images[:m], test.images[h_start:]
    if m < min_images and not force:
        raise ValueError(
            f"only {m} in-distribution {split} images are left as negatives (need ≥ {min_images} "
            f"for an AUROC worth reporting); give more data, or --force to report it anyway"
        )
    if len(held_out) < entropy_count:
        log(
            f"--entropy-count {entropy_count} capped at {len(held_out)}: Ĥ uses at most half of the "
            f"{len(test)} in-distribution {split} images (and --limit), the rest are the negatives"
        )

    # Every OOD set is loaded (and adapted) before any scoring, so bad DATA fails fast.
    ood_sets: dict[str, tuple[np.ndarray, list[str]]] = {}
    for spec in ood_specs:
        images, name, notes = load_ood_set(spec, m, shape_hwc, K, seed)
        if len(images) < min_images and not force:
            raise ValueError(
                f"--ood {spec} has {len(images)} images (need ≥ {min_images} for an AUROC worth "
                f"reporting); give more, or --force to report it anyway"
            )
        if notes:
            log(f"--ood {spec}: adapted {name} to the model: {', '.join(notes)}")
        ood_sets[spec] = images, notes

    def score(images: np.ndarray, desc: str) -> np.ndarray:
        out = per_image_bpd(
            model, images, n_t=n_t, batch_size=batch_size, seed=seed, progress=progress, desc=desc
        )
        return out["bpd"].astype(np.float64)

    key = entropy_cache_key(run, config, held_out, f"{test.name}[{h_start}:]", n_t, seed, batch_size, ema)
    entropy, entropy_se, hit = cached_entropy(
        run, key, lambda: score(held_out, "Ĥ"), warn=lambda s: log(f"warning: {s}")
    )
    log(
        f"Ĥ = {entropy:.4f} bpd from {len(held_out)} held-out images {test.name}[{h_start}:]"
        + (" (cached)" if hit else "")
    )
    in_nll = score(negatives, "in-dist")
    result = OODResult(
        entropy_bpd=entropy,
        entropy_se_bpd=entropy_se,
        entropy_n=len(held_out),
        entropy_cached=hit,
        in_name=f"{test.name}[:{m}]",
        in_nll=in_nll,
    )
    in_typ = typicality(in_nll, entropy)
    for spec, (images, notes) in ood_sets.items():
        nll = score(images, spec)
        i_in, i_out = equal_counts(len(in_nll), len(nll), seed)
        typ = typicality(nll, entropy)
        result.auroc[spec] = auroc(in_typ[i_in], typ[i_out])
        result.auroc_raw_nll[spec] = auroc(in_nll[i_in], nll[i_out])
        result.n[spec] = int(len(i_in))
        result.mean_bpd[spec] = float(nll.mean())
        result.std_bpd[spec] = float(nll.std())
        result.adapted[spec] = notes
        result.curves[spec] = {
            "typicality": roc_curve(in_typ[i_in], typ[i_out]),
            "raw NLL": roc_curve(in_nll[i_in], nll[i_out]),
        }
    return result


def plot_roc(result: OODResult, path: Path, title: str = "") -> None:
    """ROC curves of every OOD set: typicality solid, raw NLL dashed (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls=":")
    for i, (spec, curves) in enumerate(result.curves.items()):
        color = f"C{i % 10}"
        for stat, ls in (("typicality", "-"), ("raw NLL", "--")):
            fpr, tpr = curves[stat]
            a = result.auroc[spec] if stat == "typicality" else result.auroc_raw_nll[spec]
            ax.plot(fpr, tpr, color=color, ls=ls, label=f"{spec}, {stat} (AUROC {a:.3f})")
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate (OOD flagged)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_title(title or f"OOD vs {result.in_name}, |NLL − Ĥ| (solid) and NLL (dashed)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def format_table(result: OODResult) -> str:
    lines = [
        f"in-distribution: {result.in_name}, {len(result.in_nll)} images, "
        f"mean {result.in_nll.mean():.4f} bpd",
        f"Ĥ = {result.entropy_bpd:.4f} bpd (mean over {result.entropy_n} held-out images"
        + (", cached)" if result.entropy_cached else ")"),
        "",
        "Ĥ: the typical bound of in-distribution images; |NLL − Ĥ| flags images whose bound is "
        "atypically high or low.",
        "AUROC: probability that a random OOD image scores above a random in-distribution one "
        "(1 = perfect separation, 0.5 = chance); n images per class.",
        "",
        f"{'OOD set':<24} {'n':>6} {'mean bpd':>9} {'AUROC |NLL-Ĥ|':>14} {'AUROC NLL':>10}",
    ]
    for spec in result.auroc:
        lines.append(
            f"{spec[:24]:<24} {result.n[spec]:>6} {result.mean_bpd[spec]:>9.4f} "
            f"{result.auroc[spec]:>14.4f} {result.auroc_raw_nll[spec]:>10.4f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# CLI.


def add_ood_parser(sub) -> None:
    p = sub.add_parser(
        "ood",
        help="out-of-distribution detection (typicality test), AUROC per OOD set",
        description="Score in-distribution test images and OOD sets with the typicality "
        "statistic |NLL(x) − Ĥ| (M = 1) and with the raw NLL; print the AUROC of each OOD "
        "set against the in-distribution test images (equal counts). Ĥ is the mean NLL of "
        "the last images of the in-distribution test split, which are never used as "
        f"negatives; it is cached in RUN/{CACHE_FILE}.",
    )
    p.add_argument("run", metavar="RUN", help="run folder (config.json + weights)")
    p.add_argument(
        "--in",
        dest="in_data",
        required=True,
        metavar="DATA",
        help="in-distribution data (the model's training data set)",
    )
    p.add_argument(
        "--ood",
        action="append",
        required=True,
        metavar="DATA",
        help="OOD set: 'const', 'uniform' or any DATA (adapted to the model's "
        "shape and K if needed); repeatable",
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
        help="held-out test images for Ĥ (at most half the test split)",
    )
    p.add_argument(
        "--split",
        default="test",
        choices=["train", "test", "all"],
        help="split of the in-distribution data for Ĥ and the negatives (default test: held out)",
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
    p.set_defaults(func=cmd_ood)


def cmd_ood(args) -> int:
    import torch

    from .checkpoint import load_run

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
    )
    roc: Path | None = args.roc or run / ROC_FILE
    try:
        plot_roc(result, roc)
    except OSError as err:  # e.g. a read-only run folder: keep the numbers, say why no plot
        log(f"warning: could not write the ROC plot {roc} ({err})")
        roc = None
    out = result.to_json()
    out["roc"] = str(roc) if roc else None
    if args.json:
        print(json.dumps(out))
    else:
        print(format_table(result))
        if roc:
            print(f"ROC curves: {roc}")
    return 0
