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
    spatial size, which the level-k ε-network receives (SPEC §4).
Levels are indexed from 0 in code (level 1 of the paper is ``k = 0``).
"""

from __future__ import annotations

import torch
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


# ---------------------------------------------------------------------------


class HierarchicalMap:
    """Base class: a linear map from pixel space to S levels, coarse first."""

    name = "identity"
    volume_preserving = True  # hᵀh = I and each level modelled in its own subspace

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

    def octaves(self, k: int) -> int:
        """How many halvings of the pixel grid spacing level k's coefficients carry
        (each 2×2 sum / 2 refines the lattice of possible values by 2)."""
        if self.name in ("haar", "lp"):
            return self.levels - 1 if k == 0 else self.levels - k
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
        details, y = [], f
        for _ in range(self.levels - 1):
            y, d = haar_analysis(y)
            details.append(d)
        return [y, *reversed(details)]

    def inverse(self, cs):
        y = cs[0]
        for d in cs[1:]:
            y = haar_synthesis(y, d)
        return y

    def condition(self, cs, k):
        # The LL band at level k's resolution, rebuilt from the coarser levels only.
        return None if k == 0 else self.inverse(cs[:k])


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
        y = cs[0]
        for c in cs[1:]:
            y = up(y) + c
        return y

    def project(self, k, v):
        return v if k == 0 else v - up(down(v))

    def condition(self, cs, k):
        # Dᵀ y⁽ᵏ⁾: the block-constant part of level k's octave, rebuilt from coarser levels.
        return None if k == 0 else up(self.inverse(cs[:k]))


class Cascade(HierarchicalMap):
    """C-VDM's subsampling cascade (paper §4.1, appendix C): NOT volume-preserving.

    Level k is the image subsampled by keeping the top-left pixel of each 2×2 block,
    S−1−k times; the finest level is the image itself. Each level is a discrete image with
    its own VDM, so the bound Σₛ −ELBOₛ counts Σ dₛ > d numbers for d pixels.
    """

    name = "cascade"
    volume_preserving = False

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


MAPS = {"identity": Identity, "haar": Haar, "lp": LaplacianPyramid, "cascade": Cascade}


def build_map(name: str, levels: int) -> HierarchicalMap:
    if name not in MAPS:
        raise ValueError(f"unknown map {name!r}; choose one of {sorted(MAPS)}")
    return MAPS[name](levels)
