"""FID and KID of generated images against a dataset (docs/math.md §11).

FID is the Fréchet distance between Gaussians fitted to two sets of features,
‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}), computed from symmetric eigendecompositions
(checked against ``scipy.linalg.sqrtm``). KID is the unbiased MMD² with the cubic
polynomial kernel k(x, y) = (xᵀy/D + 1)³, averaged over random subsets. Both are here
rather than from torch-fidelity: that package imports torchvision at import time (its
``__init__`` pulls in its CLIP and VGG extractors), which does not import beside our torch,
and its Inception loader unpickles arbitrary code (``torch.load(weights_only=False)``). The
formulas are short and are checked against direct reference computations in
tests/test_fid.py.

Reference statistics (μ, Σ and a subset of features for KID) are cached per (data, split,
number of images, feature space) under ``cache_root()/fid``. FID is biased in N: compare
numbers only at equal N; KID is unbiased.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .features import FeatureSpace, cache_root

KID_SUBSET, KID_SUBSETS = 1000, 100
KID_REF_FEATURES = 10_000  # reference features kept in the cache for KID


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (N − 1)-normalised covariance of (N, D) features."""
    f = np.asarray(features, dtype=np.float64)
    if len(f) < 2:
        raise ValueError(f"FID needs at least 2 images, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^{1/2}. The trace term is computed in the
    symmetric form tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} (the same eigenvalues, real and ≥ 0 by
    construction) with two symmetric eigendecompositions: as exact as ``scipy.linalg.sqrtm``
    of Σ₁Σ₂ (tests/test_fid.py checks them against each other), without its complex Schur
    form, several times faster, and with no ridge needed when Σ is singular."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    s1, s2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"feature statistics of different sizes: {mu1.shape} and {mu2.shape}")
    r1 = _psd_sqrt(s1)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def frechet_to_features(features: np.ndarray, mu2, sigma2) -> float:
    """The Fréchet distance of (N, D) features to (μ₂, Σ₂). With fewer images than
    dimensions (Inception's 2048 at N ≤ 2048) Σ₁ = AᵀA, A = (F − μ₁)/√(N − 1), has rank < N, and
    the nonzero eigenvalues of Σ₁Σ₂ are those of A Σ₂ Aᵀ (N × N): the same number at a fraction
    of the cost of D × D eigendecompositions."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    mu1, sigma1 = statistics(f)
    if n - 1 >= d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    a = (f - mu1) / np.sqrt(n - 1)
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(a @ sigma2 @ a.T), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + (a * a).sum() + np.trace(sigma2) - 2 * trace_sqrt)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two equal-size sets with k(a, b) = (aᵀb/D + 1)³: the within-set means
    leave out the diagonal."""
    m, d = x.shape
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, subset: int = KID_SUBSET, subsets: int = KID_SUBSETS, seed: int = 0):
    """KID: mean and standard deviation of ``polynomial_mmd2`` over random subsets of size
    min(subset, |x|, |y|), drawn without replacement within each subset."""
    m = min(subset, len(x), len(y))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images in each set, got {len(x)} and {len(y)}")
    rng = np.random.default_rng(seed)
    values = [
        polynomial_mmd2(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
        for _ in range(subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


# --- reference statistics -------------------------------------------------------------


class Reference:
    """A dataset's side of the comparison: images' shape and K, and cached statistics."""

    def __init__(self, spec: str, split: str, n: int | None):
        from .data import load, resolve_spec

        self.spec, self.split = resolve_spec(spec), split
        data = load(self.spec, split)
        if n is not None and len(data) < n:
            raise ValueError(
                f"only {len(data)} reference images in {spec}:{split}, fewer than the {n} asked (--n-ref)"
            )
        self.images = data.images if n is None else data.images[:n]
        self.K, self.shape_chw, self.n = data.K, data.shape_chw, len(self.images)

    def check(self, x: torch.Tensor, K: int) -> None:
        """Samples must be images of the reference's shape and K (one clear line otherwise)."""
        if tuple(x.shape[1:]) != tuple(self.shape_chw) or K != self.K:
            raise ValueError(
                f"samples are {tuple(x.shape[1:])} images with K = {K}, the reference "
                f"{self.spec}:{self.split} has {tuple(self.shape_chw)} with K = {self.K}"
            )

    def cache_path(self, space: FeatureSpace) -> Path:
        key = json.dumps([self.spec, self.split, self.n, space.id])
        name = self.spec.rsplit("/", 1)[-1].partition(":")[0]
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return cache_root() / "fid" / f"{name}-{self.split}-{self.n}-{space.id}-{digest}.npz"

    def statistics(self, space: FeatureSpace, progress: bool = True) -> dict:
        """μ, Σ and up to KID_REF_FEATURES features of the reference, from the cache if there."""
        path = self.cache_path(space)
        if path.is_file():
            with np.load(path) as z:
                return {k: z[k] for k in ("mu", "sigma", "kid_features")}
        x = torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2)
        f = space.extract(x, self.K, progress, desc="reference")
        mu, sigma = statistics(f)
        keep = f[np.random.default_rng(0).permutation(len(f))[:KID_REF_FEATURES]]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, kid_features=keep)
        os.replace(tmp, path)
        return {"mu": mu, "sigma": sigma, "kid_features": keep}


def score(x: torch.Tensor, K: int, space: FeatureSpace, ref: Reference, progress: bool = True) -> dict:
    """FID and KID of uint8 images x (N, C, H, W) against ``ref`` in ``space``, with what a
    reader needs to interpret them: N, the reference, the feature space and the metric's name."""
    ref.check(x, K)
    if len(x) < 2:
        raise ValueError(f"FID needs at least 2 samples, got {len(x)}")
    f = space.extract(x, K, progress, desc="samples")
    stats = ref.statistics(space, progress)
    kid_mean, kid_std = kid(f, stats["kid_features"])
    return {
        "fid": frechet_to_features(f, stats["mu"], stats["sigma"]),
        "kid": kid_mean,
        "kid_std": kid_std,
        "metric": space.metric,
        "features": space.name,
        "n": len(x),
        "ref": ref.spec,
        "ref_split": ref.split,
        "n_ref": ref.n,
    }


def read_samples(path: str | Path) -> tuple[torch.Tensor, int]:
    """A ``.npz`` of samples (``images`` (N, H, W[, C]) uint8, optional ``K``) as (N, C, H, W), K."""
    from .data import load

    data = load(str(path), "all")
    x = torch.from_numpy(np.ascontiguousarray(data.images)).permute(0, 3, 1, 2)
    return x, data.K
