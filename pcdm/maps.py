"""Hierarchical maps h: f ↦ (c¹ … cˢ), coarse first (SPEC §2).

Every map here is linear and works on batches ``(N, C, H, W)``. The volume-preserving
ones (identity, Haar, exact Laplacian pyramid) satisfy ``hᵀh = I``, so the joint density
of the levels *is* the density of the image (paper Lemma 4.1, no Jacobian term). The
cascade map is the paper's non-volume-preserving baseline (C-VDM, appendix C).

Each map also knows, per level:
  * ``project(k, v)``  Πₖ, the orthogonal projector onto the subspace the level lives in
    (identity except for the Laplacian pyramid's detail levels, where it is I − P);
  * ``dims(shape)``    nₖ, the dimension of that subspace (Σ nₖ = d for exact maps);
  * ``condition(cs, k)`` the image rebuilt from the coarser levels ``cs[:k]`` at level k's
    spatial size, which the level-k ε-network receives (SPEC §4);
  * ``view(k, z, cond)`` the *octave view*: the pixels of level k's octave rebuilt from
    the conditioning and the level's own latent, space-to-depth to level k's size;
  * ``lattice(k)`` how finely the coefficients, the conditioning and the view are
    quantised, so the networks get Fourier features at the right frequencies (SPEC §4).

Discrete maps (``discrete = True``: the C-VDM cascade and the integer Haar lifting) take
*integer* images to integer levels; every level is then a discrete image with its own
value range (``value_range``) and its own decoder, conditioned on the clean coarser levels.
Levels are indexed from 0 in code (level 1 of the paper is ``k = 0``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# ---------------------------------------------------------------------------
# One orthonormal Haar step on 2×2 blocks [[a, b], [c, d]] (SPEC §2).


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


def down(y: Tensor) -> Tensor:
    """D: 2×2 block sum / 2 (the Haar LL band). Rows orthonormal: D Dᵀ = I."""
    return (y[..., 0::2, 0::2] + y[..., 0::2, 1::2] + y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2


def up(y: Tensor) -> Tensor:
    """U = Dᵀ: nearest-neighbour upsampling times ½."""
    return y.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1) / 2


def check_divisible(shape: tuple[int, ...], levels: int) -> None:
    """S levels need H and W divisible by 2^(S−1) (SPEC §2)."""
    h, w = shape[-2:]
    m = 2 ** (levels - 1)
    if h % m or w % m:
        raise ValueError(
            f"image size {h}×{w} is not divisible by 2^(S−1) = {m} for S = {levels} levels; "
            f"use fewer levels or crop/pad the images"
        )


def octave_shapes(chw: tuple[int, int, int], levels: int) -> list[tuple[int, int, int]]:
    """C channels at each octave, coarse first: the level shapes of the LP and the cascade."""
    c, h, w = chw
    check_divisible(chw, levels)
    return [(c, h // 2 ** (levels - 1 - k), w // 2 ** (levels - 1 - k)) for k in range(levels)]


def octave_analysis(y: Tensor, levels: int, step) -> list[Tensor]:
    """Apply one analysis ``step`` (y ↦ (LL, details)) recursively on LL: levels coarse
    first, [LL of the last octave, its details, …, the finest details]."""
    details = []
    for _ in range(levels - 1):
        y, d = step(y)
        details.append(d)
    return [y, *reversed(details)]


def octave_synthesis(cs: list[Tensor], step) -> Tensor:
    """Inverse of :func:`octave_analysis` with the matching synthesis ``step``."""
    y = cs[0]
    for d in cs[1:]:
        y = step(y, d)
    return y


# ---------------------------------------------------------------------------


class Lattice(NamedTuple):
    """Octaves o of the value lattices a level's network sees: a quantity at octave o takes
    values on a grid of spacing (2/K)/2^o in the model's units (o = 0: the pixel grid; each
    orthonormal 2×2 sum / 2 halves the spacing). None: the network does not get it."""

    z: int  # the level's own coefficients
    cond: int | None = None  # the conditioning image
    view: int | None = None  # the octave view


class HierarchicalMap:
    """Base class: a linear map from pixel space to S levels, coarse first."""

    name = "identity"
    volume_preserving = True  # hᵀh = I and each level modelled in its own subspace
    discrete = False  # integer levels, each with its own discrete decoder

    def __init__(self, levels: int = 1):
        if levels < 1:
            raise ValueError(f"levels must be ≥ 1, got {levels}")
        self.levels = levels

    # --- shapes -----------------------------------------------------------
    def level_shapes(self, chw: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        return [tuple(chw)]

    def dims(self, chw: tuple[int, int, int]) -> list[int]:
        """nₖ: dimension of the subspace each level lives in."""
        return [c * h * w for c, h, w in self.level_shapes(chw)]

    def condition_channels(self, chw: tuple[int, int, int], k: int) -> int:
        return 0 if k == 0 else chw[0]

    def lattice(self, k: int) -> Lattice:
        """Octaves of the lattices level k's network sees (see :class:`Lattice`)."""
        return Lattice(z=0)

    def view_channels(self, chw: tuple[int, int, int], k: int) -> int:
        return 0

    # --- the map ----------------------------------------------------------
    def forward(self, f: Tensor) -> list[Tensor]:
        return [f]

    def inverse(self, cs: list[Tensor]) -> Tensor:
        return cs[0]

    def project(self, k: int, v: Tensor) -> Tensor:
        """Πₖ: orthogonal projector onto level k's subspace."""
        return v

    def condition(self, cs: list[Tensor], k: int) -> Tensor | None:
        """Image rebuilt from levels < k, at level k's spatial size (None for k = 0)."""
        return None

    def view(self, k: int, z: Tensor, cond: Tensor | None) -> Tensor | None:
        """Octave view of level k: its octave's pixels rebuilt from ``cond`` and ``z``
        (a function of the network's inputs only, so the bound stays an exact ELBO)."""
        return None

    def __call__(self, f: Tensor) -> list[Tensor]:
        return self.forward(f)


class Identity(HierarchicalMap):
    """S = 1: the single-scale VDM baseline."""

    def __init__(self, levels: int = 1):
        if levels != 1:
            raise ValueError(f"the identity map (model 'vdm') has exactly 1 level, got {levels}")
        super().__init__(1)


class Haar(HierarchicalMap):
    """Orthonormal Haar wavelet: level 0 = final LL (C ch), level k ≥ 1 = 3C detail bands.

    For S = 2 on 32×32×3 the levels are [16×16×3, 16×16×9] (paper appendix B).
    """

    name = "haar"

    def level_shapes(self, chw):
        c, h, w = chw
        check_divisible(chw, self.levels)
        m = 2 ** (self.levels - 1)
        shapes = [(c, h // m, w // m)]
        for k in range(1, self.levels):
            m = 2 ** (self.levels - k)
            shapes.append((3 * c, h // m, w // m))
        return shapes

    def condition_channels(self, chw, k):
        return 0 if k == 0 else chw[0]

    def forward(self, f):
        check_divisible(f.shape, self.levels)
        return octave_analysis(f, self.levels, haar_analysis)

    def inverse(self, cs):
        return octave_synthesis(cs, haar_synthesis)

    def condition(self, cs, k):
        # The LL band at level k's resolution, rebuilt from the coarser levels only.
        return None if k == 0 else self.inverse(cs[:k])

    def lattice(self, k):
        # LL and details at level k's size are sums of 4^o pixels / 2^o: octave o = S − k
        # (k ≥ 1) or S − 1 (k = 0); one synthesis step gives the next finer octave.
        if k == 0:
            return Lattice(z=self.levels - 1)
        o = self.levels - k
        return Lattice(z=o, cond=o, view=o - 1)

    def view_channels(self, chw, k):
        return 0 if k == 0 else 4 * chw[0]

    def view(self, k, z, cond):
        # One synthesis step (cond = LL, z = details), then space-to-depth: the 2×2 block of
        # the finer octave's values sits on one site, where the lattice of s = Hv is visible.
        return None if k == 0 else F.pixel_unshuffle(haar_synthesis(cond, z), 2)


class LaplacianPyramid(HierarchicalMap):
    """Exact Laplacian pyramid as a tight frame (SPEC §2).

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

    def inverse(self, cs):
        # y ← Dᵀ y + (I − P) c: the adjoint Aᵀ, which is the inverse on the range of A (the
        # projection is a no-op on levels that already live in their subspaces).
        y = cs[0]
        for k, c in enumerate(cs[1:], 1):
            y = up(y) + self.project(k, c)
        return y

    def project(self, k, v):
        return v if k == 0 else v - up(down(v))

    def condition(self, cs, k):
        # Dᵀ y⁽ᵏ⁾: the block-constant part of level k's octave, rebuilt from coarser levels.
        return None if k == 0 else up(self.inverse(cs[:k]))

    def lattice(self, k):
        # y⁽ᵏ⁾ = D^(S−1−k) f is at octave S−1−k; Dᵀ and I − P = I − DᵀD refine it further.
        o = self.levels - 1 - k
        if k == 0:
            return Lattice(z=o)
        return Lattice(z=o + 1, cond=o + 2, view=o)

    def view_channels(self, chw, k):
        return 0 if k == 0 else chw[0]

    def view(self, k, z, cond):
        # up(cond) + z_t: the octave image y⁽ᵏ⁾ seen through the level's noise.
        return None if k == 0 else cond + z


class DiscreteMap(HierarchicalMap):
    """A map of integer images to integer levels, each a discrete image of its own.

    Every level gets its own VDM with its own discrete decoder over ``value_range`` and is
    conditioned on the *clean* coarser levels (``condition`` takes the integer levels and
    returns an integer image in 0..K−1 at level k's size). Diffusion noise is mapped by
    ``noise_levels``, an orthonormal map onto the same level shapes where one exists.
    """

    volume_preserving = False
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
    its own VDM, so the bound Σₛ −ELBOₛ counts Σ dₛ > d numbers for d pixels.
    """

    name = "cascade"

    def level_shapes(self, chw):
        return octave_shapes(chw, self.levels)

    def forward(self, f):
        check_divisible(f.shape, self.levels)
        return [
            f[..., :: 2 ** (self.levels - 1 - k), :: 2 ** (self.levels - 1 - k)] for k in range(self.levels)
        ]

    def inverse(self, cs):
        return cs[-1]

    def condition(self, cs, k):
        # The coarser discrete image, nearest-neighbour upsampled to level k's size.
        if k == 0:
            return None
        return cs[k - 1].repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


# ---------------------------------------------------------------------------
# Integer Haar lifting (the S-transform): a bijection of the integer pixel lattice.


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

    level_shapes = Haar.level_shapes

    def forward(self, x):
        check_divisible(x.shape, self.levels)
        if x.dtype.is_floating_point:
            raise TypeError("the integer lifting map takes integer images")
        return octave_analysis(x, self.levels, lift_analysis)

    def inverse(self, cs):
        return octave_synthesis(cs, lift_synthesis)

    octave_image = inverse

    def condition(self, cs, k):
        # The integer LL image at level k's resolution (values 0..K−1), from coarser levels.
        return None if k == 0 else self.inverse(cs[:k])

    def value_range(self, k, chw, K):
        c = chw[0]
        if k == 0:
            return [(0, K - 1)] * c
        m = K - 1
        return [(-m, m)] * (2 * c) + [(-2 * m, 2 * m)] * c

    def noise_levels(self, eps):
        # The orthonormal Haar map has the same level shapes: iid noise per level.
        return octave_analysis(eps, self.levels, haar_analysis)


MAPS = {
    "identity": Identity,
    "haar": Haar,
    "lp": LaplacianPyramid,
    "cascade": Cascade,
    "lift": Lifting,
}


def build_map(name: str, levels: int) -> HierarchicalMap:
    if name not in MAPS:
        raise ValueError(f"unknown map {name!r}; choose one of {sorted(MAPS)}")
    return MAPS[name](levels)
