"""The orthonormal Haar wavelet (docs/math.md §2): W-PCDM's default map."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import lattice
from .base import HierarchicalMap, Lattice, band_shapes, check_divisible, octave_analysis, octave_synthesis

# One orthonormal Haar step on 2×2 blocks [[a, b], [c, d]].


def haar_analysis(y: Tensor) -> tuple[Tensor, Tensor]:
    """(N,C,H,W) → LL (N,C,H/2,W/2) and the three detail bands stacked (N,3C,H/2,W/2)."""
    a, b = y[..., 0::2, 0::2], y[..., 0::2, 1::2]
    c, d = y[..., 1::2, 0::2], y[..., 1::2, 1::2]
    ll = (a + b + c + d) / 2
    details = torch.cat([(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2], dim=1)
    return ll, details


def haar_synthesis(ll: Tensor, details: Tensor) -> Tensor:
    """Exact inverse (= transpose) of :func:`haar_analysis`."""
    h1, h2, h3 = details.chunk(3, dim=1)
    a = (ll + h1 + h2 + h3) / 2
    b = (ll - h1 + h2 - h3) / 2
    c = (ll + h1 - h2 - h3) / 2
    d = (ll - h1 - h2 + h3) / 2
    n, ch, h, w = ll.shape
    y = ll.new_empty(n, ch, 2 * h, 2 * w)
    y[..., 0::2, 0::2], y[..., 0::2, 1::2] = a, b
    y[..., 1::2, 0::2], y[..., 1::2, 1::2] = c, d
    return y


class Haar(HierarchicalMap):
    """Orthonormal Haar wavelet: level 0 = final LL (C ch), level k ≥ 1 = 3C detail bands.

    For S = 2 on 32×32×3 the levels are [16×16×3, 16×16×9] (paper appendix B). Agrees with
    ``pywt.wavedec2(·, 'haar', mode='periodization')`` up to band order and sign (the band
    order is fixed by the weights of runs trained with it).
    """

    name = "haar"

    def level_shapes(self, chw):
        return band_shapes(chw, self.levels)

    def forward(self, f):
        check_divisible(f.shape, self.levels)
        return octave_analysis(f, self.levels, haar_analysis)

    def reconstruct(self, cs):
        return octave_synthesis(cs, haar_synthesis)

    def condition(self, cs, k):
        # The LL band at level k's resolution, rebuilt from the coarser levels only.
        return None if k == 0 else self.reconstruct(cs[:k])

    def lattice(self, k):
        # LL and details at level k's size are sums of 4^o pixels / 2^o: octave o = S − k
        # (k ≥ 1) or S − 1 (k = 0); one synthesis step gives the next finer octave.
        if k == 0:
            return Lattice(z=self.levels - 1)
        o = self.levels - k
        return Lattice(z=o, cond=o, view=o - 1)

    def lattice_residual(self, k, u, s, cond, s_cond, K):
        # Level 0 is the LL band: block sums, one per site. A detail level's three bands sit
        # on the coset that the parent sums (its conditioning, the LL at its octave) fix.
        octave = self.lattice(k).z
        if k == 0:
            return lattice.sum_residual(u, s, octave, K)
        return lattice.haar_detail_residual(u, s, cond, s_cond, octave, K)

    def view_channels(self, chw, k):
        return 0 if k == 0 else 4 * chw[0]

    def view(self, k, z, cond):
        # One synthesis step (cond = LL, z = details), then space-to-depth: the 2×2 block of
        # the finer octave's values sits on one site, where the lattice of s = Hv is visible.
        return None if k == 0 else F.pixel_unshuffle(haar_synthesis(cond, z), 2)
