"""What a hierarchical map is (docs/math.md §2): the one extension point of pcdm.

A map h: f ↦ (c¹ … cˢ) is linear, works on batches ``(N, C, H, W)`` and returns S levels,
coarse first. Levels are indexed from 0 in code (level 1 of the paper is ``k = 0``). A map
class declares everything the model, the networks, the sampler and the codec need:

  * shapes      ``level_shapes(chw)``, ``dims(chw)`` nₖ = dimension of the subspace level k
                lives in (Σ nₖ = d for the exact continuous maps);
  * the map     ``forward`` (= ``__call__``), ``reconstruct`` (a left inverse), ``adjoint`` hᵀ;
  * subspaces   ``project(k, v)`` Πₖ, the orthogonal projector onto level k's subspace;
                ``to_coords`` / ``from_coords``: an orthonormal basis of it (what the codec
                codes, exactly nₖ numbers per image);
  * networks    ``condition(cs, k)`` the image rebuilt from the coarser levels at level k's
                size, ``condition_channels``; ``view(k, z, cond)`` the octave view and
                ``view_channels``; ``lattice(k)`` which value lattices they sit on (docs/math.md §4);
  * the bound   ``exact``: −ELBO bounds −log P(x) with equality for the optimal model;
                ``discrete``: every level is a discrete image with its own decoder (then
                also ``value_range``, ``noise_levels``, ``octave_image``);
  * preview     ``preview(zs)``: the finished coarse levels as pixels at their resolution.

The continuous exact maps satisfy hᵀh = I with each level modelled in its own subspace, so
the joint density of the levels *is* the density of the image (paper Lemma 4.1, no
Jacobian term). A new map subclasses :class:`HierarchicalMap` and is registered as a model
in ``pcdm.registry`` (docs/maps.md); nothing else changes.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from .. import lattice


def check_divisible(shape: tuple[int, ...], levels: int) -> None:
    """S levels need H and W divisible by 2^(S−1) (docs/math.md §2)."""
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


def band_shapes(chw: tuple[int, int, int], levels: int) -> list[tuple[int, int, int]]:
    """Wavelet level shapes: the final LL (C channels), then the 3C detail bands of each
    octave, coarse first. For S = 2 on 32×32×3: [16×16×3, 16×16×9] (paper appendix B)."""
    c, h, w = chw
    check_divisible(chw, levels)
    m = 2 ** (levels - 1)
    shapes = [(c, h // m, w // m)]
    for k in range(1, levels):
        m = 2 ** (levels - k)
        shapes.append((3 * c, h // m, w // m))
    return shapes


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


class Lattice(NamedTuple):
    """Octaves o of the value lattices a level's network sees: a quantity at octave o takes
    values on a grid of spacing (2/K)/2^o in the model's units (o = 0: the pixel grid; each
    orthonormal 2×2 sum / 2 halves the spacing). None: the quantity sits on no lattice the
    network could use, and it gets no lattice features of it."""

    z: int  # the level's own coefficients (also sets the frequencies of the U-Net's own features)
    cond: int | None = None  # the conditioning image
    view: int | None = None  # the octave view


class HierarchicalMap:
    """Base class: a linear map from pixel space to S levels, coarse first. As it stands it
    is the identity with one level; subclasses override what differs (module docstring)."""

    name = "identity"
    exact = True  # −ELBO ≥ −log P(x), with equality for the optimal model
    discrete = False  # integer levels, each with its own discrete decoder

    def __init__(self, levels: int = 1):
        if levels < 1:
            raise ValueError(f"levels must be ≥ 1, got {levels}")
        self.levels = levels

    def describe(self) -> str:
        """One line for logs: the map and its options."""
        return f"{self.name}, S = {self.levels}"

    # --- shapes -----------------------------------------------------------
    def level_shapes(self, chw: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        return [tuple(chw)]

    def dims(self, chw: tuple[int, int, int]) -> list[int]:
        """nₖ: dimension of the subspace each level lives in."""
        return [c * h * w for c, h, w in self.level_shapes(chw)]

    # --- the map ----------------------------------------------------------
    def forward(self, f: Tensor) -> list[Tensor]:
        return [f]

    def reconstruct(self, cs: list[Tensor]) -> Tensor:
        """The image rebuilt from its levels, a left inverse of ``forward``:
        ``reconstruct(forward(f)) == f``."""
        return cs[0]

    def adjoint(self, cs: list[Tensor]) -> Tensor:
        """hᵀ. For the exact continuous maps hᵀh = I, so the left inverse is the adjoint
        (the pixel-space z₀ = hᵀ(z₀¹ … z₀ˢ) of docs/math.md §3); a map where they differ overrides."""
        return self.reconstruct(cs)

    def __call__(self, f: Tensor) -> list[Tensor]:
        return self.forward(f)

    # --- subspaces ----------------------------------------------------------
    def project(self, k: int, v: Tensor) -> Tensor:
        """Πₖ: orthogonal projector onto level k's subspace."""
        return v

    def to_coords(self, k: int, v: Tensor) -> Tensor:
        """Level k → its nₖ coordinates in an orthonormal basis of its subspace, (N, nₖ)."""
        return v.reshape(v.shape[0], -1)

    def from_coords(self, k: int, u: Tensor, shape: tuple[int, int, int]) -> Tensor:
        """Inverse of :meth:`to_coords`; ``shape`` is level k's (C, H, W)."""
        return u.reshape(u.shape[0], *shape)

    # --- what the networks see (docs/math.md §4) -------------------------------------
    def condition(self, cs: list[Tensor], k: int) -> Tensor | None:
        """Image rebuilt from levels < k, at level k's spatial size (None for k = 0)."""
        return None

    def condition_channels(self, chw: tuple[int, int, int], k: int) -> int:
        return 0 if k == 0 else chw[0]

    def view(self, k: int, z: Tensor, cond: Tensor | None) -> Tensor | None:
        """Octave view of level k: its octave's pixels rebuilt from ``cond`` and ``z``
        (a function of the network's inputs only, so the bound stays an exact ELBO)."""
        return None

    def view_channels(self, chw: tuple[int, int, int], k: int) -> int:
        return 0

    def lattice(self, k: int) -> Lattice:
        """Octaves of the lattices level k's network sees (see :class:`Lattice`)."""
        return Lattice(z=0)

    def lattice_residual(
        self, k: int, u: Tensor, s: Tensor, cond: Tensor | None, s_cond: Tensor, K: int
    ) -> Tensor | None:
        """u − E[cᵏ | u, cond] under a flat prior on level k's admissible values
        (pcdm.lattice), in model units: u = cᵏ + s ε is the level's noisy view, ``cond`` its
        conditioning seen with noise s_cond (both already divided by α); exactly 0 where the
        noise hides the lattice. None: the map has no closed form."""
        return None

    # --- previews -----------------------------------------------------------
    def preview(self, zs: list[Tensor]) -> Tensor:
        """The finished coarse levels ``zs`` of a continuous map as an image in pixel units
        (f) at their resolution. For the octave maps the rebuilt image is the octave's
        approximation, whose DC gain is 2 per octave (2×2 sum / 2)."""
        return self.reconstruct(zs) / 2 ** (self.levels - len(zs))


class Identity(HierarchicalMap):
    """S = 1: the single-scale VDM baseline."""

    def lattice_residual(self, k, u, s, cond, s_cond, K):
        return lattice.sum_residual(u, s, 0, K)  # the pixel grid

    def __init__(self, levels: int = 1):
        if levels != 1:
            raise ValueError(f"the identity map (model 'vdm') has exactly 1 level, got {levels}")
        super().__init__(1)
