"""The bits-back chain's per-step overhead (codec docstring, "Per-step overhead").

With the image known (x = 0) the reverse model p(z_{i-1} | z_i) = q(z_{i-1} | z_i, x) is
exact, so the chain's ideal net code length is KL(q(z_T | x) ‖ N(0, I)) per latent, with
almost no variance: everything above it is the codec's own overhead, measured here without
a network (a few seconds).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pcdm import codec
from pcdm.codec import ans
from pcdm.model import PCDM, ModelConfig


@pytest.fixture(scope="module")
def model() -> PCDM:
    cfg = ModelConfig(model="vdm", image_shape=(1, 4, 4), width=8, depth=1, attention=False, schedule="fixed")
    return PCDM(cfg).eval()


def exact_chain_overhead(grid: codec.Grid, n: int) -> float:
    """Net bits per latent beyond the ideal, for one chain over n latents in one batch."""
    coder = ans._AnsCoder(codec.reservoir(64 + n))
    guard = ans._Guard(encoder=True)
    start = coder.num_bits()
    j_prev = codec.pop_q(coder, np.zeros(n), grid.s_q[0], grid.delta[0], guard, (0, 0, 0))
    for i in range(1, grid.T + 1):
        z_prev = j_prev * grid.delta[i - 1]
        j_i = codec.pop_q(coder, grid.a_q[i] * z_prev, grid.s_q[i], grid.delta[i], guard, (0, 0, i))
        c = grid.a_q[i] * grid.sigma[i - 1] ** 2 / grid.sigma[i] ** 2  # posterior mean, x = 0
        codec.push_p(coder, j_prev, c * j_i * grid.delta[i], grid.s_p[i - 1], grid.delta[i - 1])
        j_prev = j_i
    codec.push_p(coder, j_prev, np.zeros(n), 1.0, grid.delta[grid.T])
    s2 = grid.sigma[grid.T] ** 2
    ideal = n * 0.5 * (s2 - 1 - math.log(s2)) / math.log(2)
    return (coder.num_bits() - start - ideal) / n


@pytest.mark.parametrize("T,n", [(400, 4096), (200, 256)])
def test_per_step_overhead_is_negligible(model, T, n):
    # Version 2 of the format spent ≈ 4 bits per push on the support exponent alone
    # (1.6e-2 bits per latent and step at n = 256) plus ≈ 3e-5 from the grid and floors.
    # The bound: 3e-5 bits per latent and step plus two 32-bit words of ANS granularity.
    over = exact_chain_overhead(codec.make_grid(model, T), n)
    assert over < 3e-5 * T + 64 / n, over


def test_sheppard_std_matches_the_lattice_variance():
    # The lattice distribution coded for N(μ, σ²) has variance σ² (not σ² + δ²/12).
    coder = ans._AnsCoder(codec.reservoir(200_000))
    guard = ans._Guard(encoder=True)
    n, std, delta = 200_000, 1.0, 2.0**-3
    j = codec.pop_q(coder, np.full(n, 0.3), std, delta, guard, (1, 2, 3))
    z = j * delta
    se = std**2 * math.sqrt(2 / n)
    assert abs(z.var() - std**2) < 4 * se
    assert abs(z.var() - std**2) < delta**2 / 12  # the uncorrected lattice would be off by that
    assert abs(z.mean() - 0.3) < 4 * std / math.sqrt(n)


def test_escape_to_a_wider_support_round_trips():
    # A latent far outside the default ±7σ support (a poor model) costs bits, never fails.
    rng = np.random.default_rng(0)
    mean = rng.normal(size=500)
    std, delta = 0.5, 2.0**-5
    j = np.round(mean / delta).astype(np.int64) + rng.integers(-3, 4, 500)
    j[17] += int(900 * std / delta)
    words = codec.reservoir(64)
    coder = ans._AnsCoder(words)
    before = coder.num_bits()
    codec.push_p(coder, j, mean, std, delta)
    far_bits = coder.num_bits() - before
    back = codec.pop_p(coder, mean, std, delta, ans._Guard(encoder=False))
    assert np.array_equal(back, j)
    assert np.array_equal(coder.get_compressed(), words)
    coder = ans._AnsCoder(words)
    near = j.copy()
    near[17] = np.round(mean[17] / delta)
    codec.push_p(coder, near, mean, std, delta)
    assert 0 < far_bits - (coder.num_bits() - before) < 64  # the escape, its width and the far symbol
    with pytest.raises(codec.CodecError, match="too far"):
        j[3] = 2**40
        codec.push_p(ans._AnsCoder(words), j, mean, std, delta)
