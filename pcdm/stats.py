"""The statistics every reported number carries: a mean with its standard error, and paired
comparisons of two models on the same images (difference and ratio, each with its standard
error). Written once here; the library, the benchmarks and the reports all use it."""

from __future__ import annotations

import math

import numpy as np


def standard_error(values) -> float:
    """s / √n of a sample (ddof = 1); NaN for fewer than two values."""
    v = np.asarray(values, dtype=float).ravel()
    if len(v) < 2:
        return float("nan")
    return float(v.std(ddof=1) / math.sqrt(len(v)))


def mean_se(values) -> tuple[float, float]:
    """(mean, standard error of the mean)."""
    v = np.asarray(values, dtype=float).ravel()
    return float(v.mean()), standard_error(v)


def paired(a, b) -> dict[str, float]:
    """Model a against model b on the same images: mean difference a − b and ratio
    mean(a) / mean(b), each with its standard error. The ratio's is by the delta method,
    the standard error of uᵢ = (aᵢ − r bᵢ) / mean(b)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same images: {len(a)} against {len(b)}")
    r = a.mean() / b.mean()
    return {
        "difference": float((a - b).mean()),
        "difference_se": standard_error(a - b),
        "ratio": float(r),
        "ratio_se": standard_error((a - r * b) / b.mean()),
    }


def format_mean_se(mean: float, se: float, digits: int = 3) -> str:
    """'3.142 ± 0.023' (the ± omitted when the standard error is undefined)."""
    if not math.isfinite(se):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"
