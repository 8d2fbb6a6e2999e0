"""Discrete maps, whose levels are integer images, and C-VDM's subsampling cascade."""

from __future__ import annotations

from torch import Tensor

from .base import HierarchicalMap, Lattice, check_divisible, octave_shapes


class DiscreteMap(HierarchicalMap):
    """A map of integer images to integer levels, each a discrete image of its own.

    Every level gets its own VDM with its own discrete decoder over ``value_range`` and is
    conditioned on the *clean* coarser levels (``condition`` takes the integer levels and
    returns an integer image in 0..K−1 at level k's size). Diffusion noise is mapped by
    ``noise_levels``, an orthonormal map onto the same level shapes where one exists.
    The bound is Σₛ −ELBOₛ (``model.DiscreteLevels``); it is exact when the map is a
    bijection of the integer images.
    """

    discrete = True

    def value_range(self, k: int, chw: tuple[int, int, int], K: int) -> list[tuple[int, int]]:
        """(lowest, highest) integer value of each channel of level k."""
        return [(0, K - 1)] * self.level_shapes(chw)[k][0]

    def noise_levels(self, eps: Tensor) -> list[Tensor]:
        """Pixel-space Gaussian noise → one noise tensor per level (iid N(0, 1) in each)."""
        return self.forward(eps)

    def octave_image(self, xs: list[Tensor]) -> Tensor:
        """The integer image (values 0..K−1) at the resolution of the finished levels ``xs``."""
        return xs[-1]

    def lattice(self, k):
        return Lattice(z=0, cond=None if k == 0 else 0)


class Cascade(DiscreteMap):
    """C-VDM's subsampling cascade (paper §4.1, appendix C): NOT volume-preserving.

    Level k is the image subsampled by keeping the top-left pixel of each 2×2 block,
    S−1−k times; the finest level is the image itself. Each level is a discrete image with
    its own VDM, so the bound Σₛ −ELBOₛ counts Σ dₛ > d numbers for d pixels: a valid
    bound on −log P(x) (it drops the sum over the other scales' values), but not exact.
    """

    name = "cascade"
    exact = False

    def level_shapes(self, chw):
        return octave_shapes(chw, self.levels)

    def forward(self, f):
        check_divisible(f.shape, self.levels)
        return [
            f[..., :: 2 ** (self.levels - 1 - k), :: 2 ** (self.levels - 1 - k)] for k in range(self.levels)
        ]

    def reconstruct(self, cs):
        return cs[-1]

    def adjoint(self, cs):
        raise NotImplementedError("the cascade is not volume-preserving: no adjoint is used")

    def condition(self, cs, k):
        # The coarser discrete image, nearest-neighbour upsampled to level k's size.
        if k == 0:
            return None
        return cs[k - 1].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
