"""Hierarchical maps h: f ↦ (c¹ … cˢ), coarse first (docs/math.md §2), one module per map.

  base        what a map declares (:class:`HierarchicalMap`), shared octave helpers, identity
  haar        the orthonormal Haar wavelet (W-PCDM's default)
  wavelet     any orthogonal PyWavelets wavelet, periodized (``--wavelet NAME``)
  laplacian   the exact Laplacian pyramid as a tight frame (LP-PCDM)
  cascade     discrete maps, and C-VDM's subsampling cascade (not volume-preserving)
  lifting     the integer Haar lifting (lift-PCDM)

Models are made of these in ``pcdm.registry``.
"""

from __future__ import annotations

from .base import (
    HierarchicalMap,
    Identity,
    Lattice,
    band_shapes,
    check_divisible,
    octave_analysis,
    octave_shapes,
    octave_synthesis,
)
from .cascade import Cascade, DiscreteMap
from .haar import Haar, haar_analysis, haar_synthesis
from .laplacian import LaplacianPyramid, down, up
from .lifting import Lifting, lift_analysis, lift_synthesis
from .wavelet import Wavelet, wavelet_filters, wavelet_map

# map name → class (``map.name``); the models built from them are in pcdm.registry.
MAPS = {cls.name: cls for cls in (Identity, Haar, Wavelet, LaplacianPyramid, Cascade, Lifting)}


def build_map(name: str, levels: int, **options) -> HierarchicalMap:
    """A built-in map by its name (``haar``, ``lp``, …), e.g. ``build_map("wavelet", 3,
    wavelet="db4")``."""
    if name not in MAPS:
        raise ValueError(f"unknown map {name!r}; choose one of {sorted(MAPS)}")
    return MAPS[name](levels, **options)


__all__ = [
    "MAPS",
    "Cascade",
    "DiscreteMap",
    "Haar",
    "HierarchicalMap",
    "Identity",
    "LaplacianPyramid",
    "Lattice",
    "Lifting",
    "Wavelet",
    "band_shapes",
    "build_map",
    "check_divisible",
    "down",
    "haar_analysis",
    "haar_synthesis",
    "lift_analysis",
    "lift_synthesis",
    "octave_analysis",
    "octave_shapes",
    "octave_synthesis",
    "up",
    "wavelet_filters",
    "wavelet_map",
]
