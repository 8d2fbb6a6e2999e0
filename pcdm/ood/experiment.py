"""The OOD experiment: which images play which part, one evaluation pass, the cache of
what is fitted on held-out images, and the AUROC of every score against every OOD set.

From the n in-distribution images read from DATA (the split ``pcdm eval`` would read,
``data.default_split``: the run's own training data → its held-out ``test`` split, any other
file or folder → all of it, unless ``--split``):

    negatives  test[0 : m]          scored, labelled 0 (m ≤ n − n_H, or ``--limit``)
    reference  test[n − n_H : n]    held out: Ĥ (the mean NLL), the mean of every score for
                                    its typicality test, and the joint score's mean and
                                    covariance are fitted here and nowhere else

The test split is used for the reference because it is held out from training (a
memorised training set would bias Ĥ low and make typical test images look atypical); the
two slices never overlap, and OOD images are never used for fitting. The reference is
cached in the run folder (``ood_entropy.json``) under a key that holds the SHA-256 of the
weights file, of the model config and of the exact held-out images, plus N, the seed and
the batch size: retraining, new data or other settings recompute it.

Every image is evaluated once: N Monte-Carlo draws of the bound (t, ε, ε₀) give its total
and per-level bits, and the classical codecs give its complexity L(x); all scores
(``pcdm.ood.scores``) are functions of those. AUROC uses equal counts of negatives and
positives; the larger side is subsampled deterministically.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..stats import standard_error
from .scores import Features, Reference, auroc, equal_counts, roc_curve, score_names, scores
from .sets import load_ood_set

CACHE_FILE = "ood_entropy.json"
ROC_FILE = "ood_roc.png"
CACHE_VERSION = 2


# ---------------------------------------------------------------------------
# One evaluation pass.


def complexity_codecs() -> list[str]:
    """The classical codecs L(x) takes the minimum over: PNG, and JPEG-XL where available."""
    from ..classical import available_codecs

    return [c for c in ("png", "jpegxl") if c in available_codecs()]


def complexity_bpd(images: np.ndarray, K: int) -> np.ndarray:
    """L(x): the shortest of :func:`complexity_codecs` and raw ⌈log₂ K⌉-bit storage, bits
    per dimension, whole files (headers included) — a code length any user has."""
    from ..classical import codec_bpd

    best = np.full(len(images), float(math.ceil(math.log2(K))))
    for codec in complexity_codecs():
        best = np.minimum(best, codec_bpd(images, codec, check=False))
    return best


def features(
    model, images: np.ndarray, n_t: int, batch_size: int, seed: int, progress: bool = False, desc: str = ""
) -> Features:
    """Per-image nll, level<s>, recon (bpd, averaged over ``n_t`` draws) and L."""
    from ..evaluate import per_image_bpd

    out = per_image_bpd(
        model, images, n_t=n_t, batch_size=batch_size, seed=seed, progress=progress, desc=desc
    )
    f = {"nll": out["bpd"], "recon": out["bpd_recon"]}
    f.update({k.removeprefix("bpd_"): v for k, v in out.items() if k.startswith("bpd_level")})
    f = {k: np.asarray(v, dtype=np.float64) for k, v in f.items()}
    f["L"] = complexity_bpd(images, model.config.K)
    return f


# ---------------------------------------------------------------------------
# The reference and its cache.


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


def _complexity_key() -> str:
    """Which codecs L(x) uses, with their versions (part of the cache key)."""
    import imagecodecs
    import PIL

    used = "+".join(complexity_codecs())
    return f"{used}+raw; Pillow {PIL.__version__}; imagecodecs {imagecodecs.__version__}"


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
    if (Path(run) / "levels").is_dir() and not (Path(run) / "model.safetensors").exists():
        # a per-level run (docs/math.md §10): the hash of every level's newest weights file
        from ..levels import level_steps, level_weights_file

        files = [level_weights_file(run, k, ema) for k in level_steps(run)]
        wname = "+".join(f"level_{k}/{f.name}" for k, f in enumerate(files))
        wsha = hashlib.sha256("".join(_sha256_file(f) for f in files).encode()).hexdigest()
    else:
        wpath = weights_path(run, ema)
        wname, wsha = wpath.name, _sha256_file(wpath)
    return {
        "data": spec,
        "images_sha256": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
        "count": int(len(images)),
        "n_t": int(n_t),
        "seed": int(seed),
        "batch": int(batch),
        "bound": "continuous",
        "complexity": _complexity_key(),
        "weights": wname,
        "weights_sha256": wsha,
        "model_sha256": hashlib.sha256(
            json.dumps(config.get("model", {}), sort_keys=True).encode()
        ).hexdigest(),
    }


def cached_reference(
    run: Path, key: dict, compute: Callable[[], Features], warn=None
) -> tuple[Reference, float, bool]:
    """The reference for ``key`` from ``run/ood_entropy.json``, or fitted on ``compute()``
    (the held-out images' features) and stored. Returns (reference, standard error of Ĥ,
    whether the cache was used). Entries for other weights are dropped on write; an
    unreadable or older cache is ignored and rewritten."""
    from ..checkpoint import write_json

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
            try:
                return Reference.from_json(e["reference"]), float(e["entropy_se_bpd"]), True
            except (KeyError, TypeError, ValueError):
                break  # a damaged entry: refit
    held_out = compute()
    reference = Reference.fit(held_out)
    nll = held_out["nll"]
    se = standard_error(nll)
    same_weights = [e for e in entries if e.get("key", {}).get("weights_sha256") == key["weights_sha256"]]
    entries = [e for e in same_weights if e.get("key") != key]
    entry = {"entropy_bpd": reference.means["nll"], "entropy_se_bpd": se, "reference": reference.to_json()}
    entries.append({"key": key, **entry})
    try:
        write_json(path, {"version": CACHE_VERSION, "entries": entries})
    except OSError as err:
        if warn:
            warn(f"could not cache the reference in {path} ({err})")
    return reference, se, False


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
    reference: Reference
    entropy_se_bpd: float
    entropy_n: int
    entropy_cached: bool
    in_name: str
    in_features: Features
    score_names: list[str]
    in_split: str = "test"
    in_split_reason: str = ""
    in_available: int = 0  # images in the in-distribution split read (negatives + reference + unused)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # set → images used per side
    auroc: dict[str, dict[str, float]] = field(default_factory=dict)  # score → set → AUROC
    n: dict[str, int] = field(default_factory=dict)
    mean_bpd: dict[str, dict[str, float]] = field(default_factory=dict)  # set → feature → mean
    adapted: dict[str, list[str]] = field(default_factory=dict)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)

    @property
    def entropy_bpd(self) -> float:
        return self.reference.means["nll"]

    def to_json(self) -> dict:
        means = {"in": {k: float(v.mean()) for k, v in self.in_features.items()}, **self.mean_bpd}
        return {
            "auroc": self.auroc["typ:nll"],
            "auroc_raw_nll": self.auroc["nll"],
            "scores": {s: self.auroc[s] for s in self.score_names},
            "n": self.n,
            "entropy_bpd": self.entropy_bpd,
            "entropy_se_bpd": _finite(self.entropy_se_bpd),
            "entropy_n": self.entropy_n,
            "entropy_cached": self.entropy_cached,
            "fitted_on": f"{self.entropy_n} held-out in-distribution images only",
            "in": self.in_name,
            "n_in": int(len(self.in_features["nll"])),
            "split": self.in_split,
            "split_reason": self.in_split_reason,
            "counts": {
                "in_available": self.in_available,
                "reference": self.entropy_n,
                "negatives": int(len(self.in_features["nll"])),
                "sets": self.counts,
            },
            "mean_bpd": {k: v["nll"] for k, v in means.items()},
            "mean_features": means,
            "adapted": self.adapted,
        }


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


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
    split: str | None = None,
    min_images: int = 20,
    force: bool = False,
    score_filter: list[str] | None = None,
) -> OODResult:
    """Score the in-distribution test images, the reference and every OOD set; AUROC of
    every score (or of ``score_filter``'s, plus typ:nll and nll) per set. ``split`` None:
    the rule of ``pcdm eval`` (``data.default_split``): the run's own training data → its
    held-out test split, another named dataset → its test split, any other file or folder →
    all of it (then split into negatives and reference as below)."""
    from ..data import default_split, load

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
    levels = len(model.level_shapes)
    names = score_names(levels)
    if score_filter:
        unknown = [s for s in score_filter if s not in names]
        if unknown:
            raise ValueError(
                f"unknown --score {', '.join(unknown)} for a {levels}-level model; "
                f"choose from {', '.join(names)}"
            )
        names = [s for s in names if s in {*score_filter, "nll", "typ:nll"}]
    c, h, w = model.config.image_shape
    K = model.config.K
    shape_hwc = (h, w, c)

    split, split_reason = default_split(in_spec, (config.get("data") or {}).get("spec"), split)
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
        images, name, notes = load_ood_set(spec, m, shape_hwc, K, seed, negatives)
        if len(images) < min_images and not force:
            raise ValueError(
                f"--ood {spec} has {len(images)} images (need ≥ {min_images} for an AUROC worth "
                f"reporting); give more, or --force to report it anyway"
            )
        if notes:
            log(f"--ood {spec}: {name}: {', '.join(notes)}")
        ood_sets[spec] = images, notes

    def evaluate(images: np.ndarray, desc: str) -> Features:
        return features(model, images, n_t, batch_size, seed, progress=progress, desc=desc)

    key = entropy_cache_key(run, config, held_out, f"{test.name}[{h_start}:]", n_t, seed, batch_size, ema)
    reference, entropy_se, hit = cached_reference(
        run, key, lambda: evaluate(held_out, "reference"), warn=lambda s: log(f"warning: {s}")
    )
    log(
        f"Ĥ = {reference.means['nll']:.4f} bpd from {len(held_out)} held-out images {test.name}[{h_start}:]"
        + (" (cached)" if hit else "")
    )
    in_features = evaluate(negatives, "in-dist")
    result = OODResult(
        reference=reference,
        entropy_se_bpd=entropy_se,
        entropy_n=len(held_out),
        entropy_cached=hit,
        in_name=f"{test.name}[:{m}]",
        in_split=split,
        in_split_reason=split_reason,
        in_available=len(test),
        in_features=in_features,
        score_names=names,
        auroc={s: {} for s in names},
    )
    in_scores = scores(in_features, reference)
    for spec, (images, notes) in ood_sets.items():
        out_features = evaluate(images, spec)
        out_scores = scores(out_features, reference)
        i_in, i_out = equal_counts(len(negatives), len(images), seed)
        result.curves[spec] = {}
        for s in names:
            a, b = in_scores[s][i_in], out_scores[s][i_out]
            result.auroc[s][spec] = auroc(a, b)
            result.curves[spec][s] = roc_curve(a, b)
        result.n[spec] = int(len(i_in))
        result.counts[spec] = {
            "negatives": int(len(i_in)),
            "ood": int(len(i_out)),
            "ood_available": len(images),
        }
        result.mean_bpd[spec] = {k: float(v.mean()) for k, v in out_features.items()}
        result.adapted[spec] = notes
    return result
