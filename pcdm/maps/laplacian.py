"""The exact Laplacian pyramid as a tight frame (docs/math.md §2): LP-PCDM's map."""

from __future__ import annotations

from torch import Tensor

from .base import HierarchicalMap, Lattice, check_divisible, octave_shapes
from .haar import Haar, haar_analysis, haar_synthesis


def down(y: Tensor) -> Tensor:
    """D: 2×2 block sum / 2 (the Haar LL band). Rows orthonormal: D Dᵀ = I."""
    return (y[..., 0::2, 0::2] + y[..., 0::2, 1::2] + y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2


def up(y: Tensor) -> Tensor:
    """U = Dᵀ: nearest-neighbour upsampling times ½."""
    return y.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) / 2


class LaplacianPyramid(HierarchicalMap):
    """Exact Laplacian pyramid as a tight frame.

    y⁽ˢ⁾ = D^(S−s) f, c¹ = y⁽¹⁾, cˢ = (I − P) y⁽ˢ⁾ with P = DᵀD. AᵀA = I, and each detail
    level lives in range(I − P): 3/4 of its pixels. Its noise, predicted noise and KL
    dimension are restricted to that subspace, so Σ nₛ = d and the density normalises on x.
    """

    name = "lp"

    def level_shapes(self, chw):
        return octave_shapes(chw, self.levels)

    def dims(self, chw):
        return [
            c * h * w if k == 0 else 3 * c * h * w // 4 for k, (c, h, w) in enumerate(self.level_shapes(chw))
        ]

    def forward(self, f):
        check_divisible(f.shape, self.levels)
        ys = [f]
        for _ in range(self.levels - 1):
            ys.append(down(ys[-1]))
        ys = ys[::-1]  # coarse first
        return [ys[0]] + [self.project(k, ys[k]) for k in range(1, self.levels)]

    def reconstruct(self, cs):
        # y ← Dᵀ y + (I − P) c: the adjoint Aᵀ, which is the inverse on the range of A (the
        # projection is a no-op on levels that already live in their subspaces).
        y = cs[0]
        for k, c in enumerate(cs[1:], 1):
            y = up(y) + self.project(k, c)
        return y

    def project(self, k, v):
        return v if k == 0 else v - up(down(v))

    def to_coords(self, k, v):
        # range(I − P) of one octave image is spanned by its Haar detail bands: an
        # orthonormal basis with exactly 3/4 of the pixels as coordinates.
        if k > 0:
            v = haar_analysis(v)[1]
        return v.reshape(v.shape[0], -1)

    def from_coords(self, k, u, shape):
        if k == 0:
            return u.reshape(u.shape[0], *shape)
        c, h, w = shape
        d = u.reshape(u.shape[0], 3 * c, h // 2, w // 2)
        return haar_synthesis(d.new_zeros(u.shape[0], c, h // 2, w // 2), d)

    def condition(self, cs, k):
        # Dᵀ y⁽ᵏ⁾: the block-constant part of level k's octave, rebuilt from coarser levels.
        return None if k == 0 else up(self.reconstruct(cs[:k]))

    def lattice(self, k):
        # y⁽ᵏ⁾ = D^(S−1−k) f is at octave S−1−k; Dᵀ and I − P = I − DᵀD refine it further.
        o = self.levels - 1 - k
        if k == 0:
            return Lattice(z=o)
        return Lattice(z=o + 1, cond=o + 2, view=o)

    def lattice_residual(self, k, u, s, cond, s_cond, K):
        # The levels have Haar's coordinates (coarse = LL; a detail level's coordinates are
        # the Haar bands of its octave, tests/test_maps.py), so Haar's posterior applies: on
        # the bands of u, with the LL at that octave = D(cond) as the parent, and back.
        haar = Haar(self.levels)
        if k == 0:
            return haar.lattice_residual(0, u, s, None, s_cond, K)
        ll = down(cond)
        r = haar.lattice_residual(k, haar_analysis(u)[1], s, ll, s_cond, K)
        return haar_synthesis(ll.new_zeros(ll.shape), r)

    def view_channels(self, chw, k):
        return 0 if k == 0 else chw[0]

    def view(self, k, z, cond):
        # up(cond) + z_t: the octave image y⁽ᵏ⁾ seen through the level's noise.
        return None if k == 0 else cond + z
