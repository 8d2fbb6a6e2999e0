"""Closed-form lattice posteriors (docs/math.md §4): where a noisy coefficient's clean value must lie.

Every exact map's coefficients are integers in disguise. At octave o a quantity is
``u_o · n + offset`` with n an integer block sum of 4^o pixels, u_o = 2^{1−o}/K the grid
step (o = 0: the pixel grid, f = 2(x + ½)/K − 1) and offset = 2^o (1/K − 1) for sums of
pixels (0 for Haar details). For one Haar step, the parent sum s₀ and the three detail
coefficients (s₁, s₂, s₃) = H b of the four child sums b satisfy

    sᵢ ≡ s₀ (mod 2)  and  s₀ + s₁ + s₂ + s₃ = 4 b₀ ≡ 0 (mod 4),

so the conditioning fixes which coset of a sparser lattice the details lie on.

Given a noisy view n = m + τ ε (lattice units) of integers m, a *flat* prior over the
admissible m gives E[m | n] in closed form: sums of Gaussian weights over the few lattice
points within ±7τ of n. Near t = 0 this is the exact denoiser whatever the data (the
likelihood dominates any smooth prior); at large τ it tends to n itself (ε̂ → 0). The model
adds its network to it (``ModelConfig.lattice_posterior``), so the network only has to learn
the data-dependent part and never the snapping.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

TAU_MAX = 3.0  # beyond this noise (lattice units) the posterior mean is n to ~e⁻¹¹: use n
_REACH = 7.0  # lattice points farther than 7τ from n carry weight < e⁻²⁴


def residue_moments(n: Tensor, tau: Tensor, period: int) -> tuple[Tensor, Tensor]:
    """For each residue r of m mod ``period``: log Σ_m w(m) and E[m] over m ≡ r, with
    w(m) = exp(−(n − m)²/2τ²). ``tau`` broadcasts against n and must be ≤ TAU_MAX.
    Returns two tensors of shape n.shape + (period,)."""
    half = math.ceil(_REACH * float(tau.detach().max()) / period) + 1  # the points within reach
    j = torch.arange(-half, half + 1, device=n.device, dtype=n.dtype)
    r = torch.arange(period, device=n.device, dtype=n.dtype)
    centre = torch.round((n.detach()[..., None] - r) / period)  # (..., P): nearest m ≡ r
    m = r[:, None] + period * (centre[..., None] + j)  # (..., P, J)
    logw = -0.5 * ((n[..., None, None] - m) / tau[..., None, None]) ** 2
    log_z = torch.logsumexp(logw, -1)
    mean = (torch.softmax(logw, -1) * m).sum(-1)
    return log_z, mean


def octave_grid(o: int, K: int) -> tuple[float, float]:
    """(step, offset) of block sums of 4^o pixels at octave o in model units: the value is
    step · n + offset for the integer sum n (offset 0 for Haar details)."""
    return 2.0 ** (1 - o) / K, 2.0**o * (1 / K - 1)


def sum_residual(u: Tensor, s: Tensor, octave: int, K: int) -> Tensor:
    """u − E[c | u] in model units for block sums of 4^octave pixels seen with noise s (one
    per site: the pixels themselves at octave 0, a Haar LL band above)."""
    step, offset = octave_grid(octave, K)
    n = (u - offset) / step
    return (n - grid_mean(n, s / step)) * step


def haar_detail_residual(u: Tensor, s: Tensor, cond: Tensor, s_cond: Tensor, octave: int, K: int) -> Tensor:
    """u − E[details | u, cond] in model units for the Haar details at ``octave``, whose parent
    block sums are the conditioning ``cond`` (the LL band there) seen with noise s_cond."""
    step, offset = octave_grid(octave, K)
    n = u / step
    return (n - haar_detail_mean((cond - offset) / step, s_cond / step, n, s / step)) * step


def within_reach(mean, n: Tensor, tau: Tensor, *also: Tensor) -> Tensor:
    """``mean(n, τ, *also)`` on the rows of the batch n whose τ ≤ TAU_MAX (τ one value, or
    one per row broadcasting against n; ``also``: more per-row tensors); every other row is
    its view n itself (its posterior mean to ~e⁻¹¹) and costs nothing."""
    per_row = tau.reshape(-1).expand(len(n)) if tau.numel() == 1 else tau.reshape(len(n))
    rows = (per_row <= TAU_MAX).nonzero().squeeze(1)
    if len(rows) == len(n):
        return mean(n, tau, *also)
    out = n.clone()
    if len(rows):
        shape = (len(rows),) + (1,) * (n.dim() - 1)
        out[rows] = mean(n[rows], per_row[rows].view(shape), *(a[rows] for a in also))
    return out


def grid_mean(n: Tensor, tau: Tensor) -> Tensor:
    """E[m | n] for m ∈ ℤ under a flat prior (one coefficient per site, no coupling)."""
    return within_reach(lambda n, tau: residue_moments(n, tau, 1)[1][..., 0], n, tau)


# The admissible residues (s₀, s₁, s₂, s₃) mod 4: sᵢ ≡ s₀ (mod 2), Σ ≡ 0 (mod 4).
_HAAR_COSETS = [
    rs
    for rs in itertools.product(range(4), repeat=4)
    if all((x - rs[0]) % 2 == 0 for x in rs) and sum(rs) % 4 == 0
]


def haar_detail_mean(n_parent: Tensor, tau_parent: Tensor, n_detail: Tensor, tau: Tensor) -> Tensor:
    """E[(s₁, s₂, s₃) | views] for one Haar step under a flat prior on the admissible
    lattice: ``n_parent`` (N, C, h, w) a noisy view of s₀ (noise ``tau_parent``),
    ``n_detail`` (N, 3C, h, w) of the details in pywt band order (noise ``tau``)."""
    tau_parent = tau_parent.clamp(max=TAU_MAX)
    return within_reach(lambda d, t, p: _haar_mean(p, tau_parent, d, t), n_detail, tau, n_parent)


def _haar_mean(n_parent: Tensor, tau_parent: Tensor, n_detail: Tensor, tau: Tensor) -> Tensor:
    c = n_parent.shape[1]
    lz0, _ = residue_moments(n_parent, tau_parent, 4)  # (N, C, h, w, 4)
    lz, mean = residue_moments(n_detail, tau, 4)  # (N, 3C, h, w, 4)
    lz, mean = lz.unflatten(1, (3, c)), mean.unflatten(1, (3, c))  # band i, channel
    logits, means = [], []
    for r0, r1, r2, r3 in _HAAR_COSETS:
        logits.append(lz0[..., r0] + lz[:, 0, ..., r1] + lz[:, 1, ..., r2] + lz[:, 2, ..., r3])
        means.append(torch.stack([mean[:, 0, ..., r1], mean[:, 1, ..., r2], mean[:, 2, ..., r3]], 1))
    weights = torch.softmax(torch.stack(logits, -1), -1)  # (N, C, h, w, cosets)
    out = (torch.stack(means, -1) * weights[:, None]).sum(-1)  # (N, 3, C, h, w)
    return out.flatten(1, 2)
