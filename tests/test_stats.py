"""pcdm.stats against what its numbers mean: the spread of the estimate over repeated samples."""

import math

import numpy as np
import pytest

from pcdm.stats import format_mean_se, mean_se, paired, standard_error


def test_standard_error_is_the_spread_of_the_mean_over_repeated_samples():
    rng = np.random.default_rng(0)
    samples = rng.gamma(2.0, 1.5, size=(4000, 50))  # skewed, like per-image bpd
    means = samples.mean(1)
    ses = np.array([standard_error(s) for s in samples])
    assert ses.mean() == pytest.approx(means.std(), rel=0.03)
    assert mean_se(samples[0]) == (pytest.approx(samples[0].mean()), ses[0])
    assert math.isnan(standard_error([1.0])) and format_mean_se(2.0, float("nan")) == "2.000"
    assert format_mean_se(3.14159, 0.0234) == "3.142 ± 0.023"


def test_paired_ratio_and_difference_errors_match_a_bootstrap():
    rng = np.random.default_rng(1)
    n = 400
    hardness = rng.gamma(4.0, 0.8, n)  # shared by both models: why pairing helps
    a = 1.05 * hardness + rng.normal(0, 0.05, n)
    b = hardness + rng.normal(0, 0.05, n)
    got = paired(a, b)
    boot = rng.integers(0, n, size=(4000, n))
    ratios = a[boot].mean(1) / b[boot].mean(1)
    diffs = (a - b)[boot].mean(1)
    assert got["ratio"] == pytest.approx(a.mean() / b.mean())
    assert got["ratio_se"] == pytest.approx(ratios.std(), rel=0.1)
    assert got["difference_se"] == pytest.approx(diffs.std(), rel=0.1)
    # pairing: far smaller than the error of the difference of two independent means
    assert got["difference_se"] < 0.2 * math.hypot(standard_error(a), standard_error(b))
    same = paired(a, a)
    assert (same["difference"], same["difference_se"], same["ratio"], same["ratio_se"]) == (0, 0, 1, 0)
    with pytest.raises(ValueError, match="same images"):
        paired(a, b[:-1])
