"""Integer Haar lifting (the S-transform): a bijection of the integer pixel lattice."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import band_shapes, check_divisible, octave_analysis, octave_synthesis
from .cascade import DiscreteMap
from .haar import haar_analysis


def _lift_pairs(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """(a, b) ↦ (⌊(a + b)/2⌋, a − b): integer to integer and invertible."""
    return torch.div(a + b, 2, rounding_mode="floor"), a - b


def _unlift_pairs(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`_lift_pairs`: a = low + ⌊(high + 1)/2⌋, b = a − high (a + b and
    a − b share their parity, so ⌊(a + b)/2⌋ loses nothing that high does not hold)."""
    a = low + torch.div(high + 1, 2, rounding_mode="floor")
    return a, a - high


def lift_analysis(y: Tensor) -> tuple[Tensor, Tensor]:
    """One integer Haar step, rows then columns: (N,C,H,W) ints → LL (values in the range
    of y) and the three detail bands [LH, HL, HH] stacked as 3C channels."""
    low, high = _lift_pairs(y[..., 0::2], y[..., 1::2])
    ll, lh = _lift_pairs(low[..., 0::2, :], low[..., 1::2, :])
    hl, hh = _lift_pairs(high[..., 0::2, :], high[..., 1::2, :])
    return ll, torch.cat([lh, hl, hh], dim=1)


def lift_synthesis(ll: Tensor, details: Tensor) -> Tensor:
    """Exact inverse of :func:`lift_analysis`."""
    lh, hl, hh = details.chunk(3, dim=1)
    n, c, h, w = ll.shape
    low = ll.new_empty(n, c, 2 * h, w)
    high = ll.new_empty(n, c, 2 * h, w)
    low[..., 0::2, :], low[..., 1::2, :] = _unlift_pairs(ll, lh)
    high[..., 0::2, :], high[..., 1::2, :] = _unlift_pairs(hl, hh)
    y = ll.new_empty(n, c, 2 * h, 2 * w)
    y[..., 0::2], y[..., 1::2] = _unlift_pairs(low, high)
    return y


class Lifting(DiscreteMap):
    """Integer Haar lifting: level 0 = the final integer LL (values 0..K−1), level k ≥ 1 =
    the integer detail bands [LH, HL, HH] of that octave (3C channels), as the Haar map.

    The map is a bijection of integer images, so P(x) = Πₛ P(levelₛ | levels<ₛ) exactly:
    conditioning on the clean coarser levels is the chain rule, and every level is a
    discrete image with no lattice shared between levels. Ranges: LL in 0..K−1, LH and HL
    in ±(K−1), HH in ±2(K−1).
    """

    name = "lift"

    def level_shapes(self, chw):
        return band_shapes(chw, self.levels)

    def forward(self, x):
        check_divisible(x.shape, self.levels)
        if x.dtype.is_floating_point:
            raise TypeError("the integer lifting map takes integer images")
        return octave_analysis(x, self.levels, lift_analysis)

    def reconstruct(self, cs):
        return octave_synthesis(cs, lift_synthesis)

    octave_image = reconstruct

    def adjoint(self, cs):
        raise NotImplementedError("the integer lifting is not linear: no adjoint")

    def condition(self, cs, k):
        # The integer LL image at level k's resolution (values 0..K−1), from coarser levels.
        return None if k == 0 else self.reconstruct(cs[:k])

    def value_range(self, k, chw, K):
        c = chw[0]
        if k == 0:
            return [(0, K - 1)] * c
        m = K - 1
        return [(-m, m)] * (2 * c) + [(-2 * m, 2 * m)] * c

    def noise_levels(self, eps):
        # The orthonormal Haar map has the same level shapes: iid noise per level.
        return octave_analysis(eps, self.levels, haar_analysis)
