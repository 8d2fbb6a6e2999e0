"""OOD scores of one image from one evaluation pass (docs/math.md §8). Larger = more OOD.

The *features* of an image, all in bits per dimension of the image:

    nll        the bound −log₂ p(x) / d, the number ``pcdm eval`` prints
    level<s>   level s's share of it (prior + diffusion; + its decoder for discrete maps);
               level 1 is the coarsest
    recon      the pixel decoder −log p(x | z₀) of continuous maps (0 for discrete maps)
    L          the best classical lossless code length: min(PNG, JPEG-XL, raw ⌈log₂ K⌉ bits)

The scores, all with a fixed direction (nothing learned from OOD data):

    nll            the raw likelihood bound
    level<s>       each level alone
    recon          the decoder term alone
    detail         bits of everything finer than level 1: nll − level1, i.e. −log₂ p(x | x_coarse)
    detail-level1  detail − level1: a log-likelihood ratio between the scales (hierarchical
                   models know what they don't know: Havtorn et al. 2021; Schirrmeister et
                   al. 2020). Smooth, simple images have cheap details *and* cheap coarse
                   images; the difference removes the part of complexity both share.
    detail-share   detail / nll, the fraction of the bits spent on detail
    nll-L          nll − L: the likelihood ratio against a generic image codec, which
                   corrects for input complexity (Serrà et al. 2020)
    nll/L          nll / L: the model's code length as a fraction of the classical one, a
                   complexity correction by ratio; the default of ``pcdm ood``, chosen on
                   validation OOD sets only (pcdm/ood/select.py, docs/math.md §8)
    L              complexity alone (no model): how much of a separation is just simplicity
    typ:<score>    |score − its mean over held-out in-distribution images| (the typicality
                   test, Nalisnick et al. 2019, applied to each score); typ:nll is the
                   paper's statistic
    joint          Σⱼ zⱼ² over the features (level1, …, levelS, recon, L), each zⱼ the
                   feature standardised by held-out in-distribution images: the typicality
                   tests of every scale and of the complexity, combined. (Diagonal: a full
                   covariance, tried on the benchmark, was no better and is fragile in the
                   tails; the choice was made on the benchmark's sets, see its report.)

Only held-out in-distribution images are used for fitting (the means of ``typ:`` and the
mean and covariance of ``joint``). A single-scale VDM has one level: its ``detail`` would
be the pixel decoder only, so ``detail``, ``detail-level1`` and ``detail-share`` (and their
typicality) are not defined for it, and its ``joint`` sees (level1, recon, L).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Features = dict[str, np.ndarray]  # name → (N,) bpd per image


def levels_of(features: Features) -> int:
    return sum(1 for k in features if k.startswith("level"))


def raw_scores(f: Features) -> dict[str, np.ndarray]:
    """Every fixed-direction score of every image (before typicality)."""
    S = levels_of(f)
    out = {"nll": f["nll"]}
    out.update({f"level{s}": f[f"level{s}"] for s in range(1, S + 1)})
    out["recon"] = f["recon"]
    if S > 1:
        detail = f["nll"] - f["level1"]
        out["detail"] = detail
        out["detail-level1"] = detail - f["level1"]
        out["detail-share"] = detail / np.maximum(f["nll"], 1e-12)
    out["nll-L"] = f["nll"] - f["L"]
    out["nll/L"] = np.asarray(f["nll"], dtype=np.float64) / np.maximum(f["L"], 1e-12)
    out["L"] = f["L"]
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def joint_features(f: Features) -> np.ndarray:
    """(N, S + 2): the bits of each level, of the decoder beyond them, and L."""
    S = levels_of(f)
    cols = [f[f"level{s}"] for s in range(1, S + 1)]
    beyond = f["nll"] - sum(cols)  # the decoder of continuous maps; 0 for discrete ones
    return np.stack([*cols, beyond, f["L"]], axis=1).astype(np.float64)


@dataclass
class Reference:
    """What the scores learn from held-out in-distribution images, and nothing else: the
    mean of every score, and the mean and standard deviation of every joint feature."""

    means: dict[str, float]
    joint_mean: np.ndarray
    joint_std: np.ndarray
    n: int

    @classmethod
    def fit(cls, held_out: Features) -> Reference:
        raw = raw_scores(held_out)
        x = joint_features(held_out)
        if len(x) < 2:
            raise ValueError("the scores need at least 2 held-out images; raise --entropy-count")
        return cls(
            means={k: float(v.mean()) for k, v in raw.items()},
            joint_mean=x.mean(0),
            joint_std=x.std(0, ddof=1),
            n=len(x),
        )

    def to_json(self) -> dict:
        return {
            "means": self.means,
            "joint_mean": self.joint_mean.tolist(),
            "joint_std": self.joint_std.tolist(),
            "n": self.n,
        }

    @classmethod
    def from_json(cls, d: dict) -> Reference:
        if "nll/L" not in d["means"]:
            raise KeyError("a reference from before the nll/L score: refit")
        return cls(
            means={k: float(v) for k, v in d["means"].items()},
            joint_mean=np.asarray(d["joint_mean"], dtype=np.float64),
            joint_std=np.asarray(d["joint_std"], dtype=np.float64),
            n=int(d["n"]),
        )


def typicality(values: np.ndarray, mean: float) -> np.ndarray:
    """Typicality-test statistic with M = 1: |value − its in-distribution mean|."""
    return np.abs(np.asarray(values, dtype=np.float64) - mean)


def scores(f: Features, ref: Reference) -> dict[str, np.ndarray]:
    """All scores of every image: raw, ``typ:`` of each, and ``joint``. Each image's score
    depends on its own features and ``ref`` only, never on the other images scored."""
    raw = raw_scores(f)
    out = dict(raw)
    out.update({f"typ:{k}": typicality(v, ref.means[k]) for k, v in raw.items()})
    # A feature constant on held-out images (the decoder column of a discrete map, 0 for every
    # image) gets a floor of 10⁻⁶ bpd: any image that departs from it is atypical by far.
    z = (joint_features(f) - ref.joint_mean) / np.maximum(ref.joint_std, 1e-6)
    out["joint"] = (z**2).sum(1)
    return out


def score_names(levels: int) -> list[str]:
    """The scores a model with ``levels`` levels has, in report order."""
    raw = ["nll", *(f"level{s}" for s in range(1, levels + 1)), "recon"]
    if levels > 1:
        raw += ["detail", "detail-level1", "detail-share"]
    raw += ["nll-L", "nll/L", "L"]
    return [*raw, *(f"typ:{k}" for k in raw), "joint"]


# ---------------------------------------------------------------------------
# AUROC of ``score > threshold ⇒ OOD``.


def auroc(inlier_scores: np.ndarray, outlier_scores: np.ndarray) -> float:
    """Area under the ROC curve of ``score > threshold ⇒ OOD``; 1 = perfect, 0.5 = chance."""
    from sklearn.metrics import roc_auc_score

    labels, values = _labelled(inlier_scores, outlier_scores)
    return float(roc_auc_score(labels, values))


def roc_curve(inlier_scores: np.ndarray, outlier_scores: np.ndarray):
    """(false-positive rate, true-positive rate) of ``score > threshold ⇒ OOD``."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    labels, values = _labelled(inlier_scores, outlier_scores)
    fpr, tpr, _ = sk_roc_curve(labels, values)
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
