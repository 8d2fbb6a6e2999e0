"""Any orthogonal wavelet of PyWavelets, periodized: an orthonormal map on H×W (docs/math.md §2).

PyWavelets supplies only the filter coefficients; the transform is here, in torch. One
analysis step along an axis of even length n keeps every other output of the circular
filtering (periodization):

    a[i] = Σⱼ lo[j] · y[(2i + L/2 − j) mod n],   d[i] = Σⱼ hi[j] · y[(2i + L/2 − j) mod n]

(L the filter length; the offset L/2 is PyWavelets' alignment, so the coefficients agree
with ``pywt.wavedec2(·, name, mode='periodization')`` exactly, band order and sign
included). For an orthogonal wavelet the rows of the stacked (n × n) matrix [A_lo; A_hi]
are orthonormal for every even n (the filter's even shifts are orthonormal and wrapping
them around a period keeps that), so the 2-D step — rows, then columns — and its
recursion on the approximation are orthonormal: hᵀh = I, log|det| = 0, and W-PCDM's
likelihood is exact. Biorthogonal wavelets (bior*, rbio*) are not orthonormal and are
refused. The matrices are dense (n/2 × n per axis): simple and exact, and small beside
the networks at the image sizes pcdm trains on.

Levels are laid out as the Haar map's: level 0 = the final approximation (C channels),
level k ≥ 1 = that octave's detail bands [cH, cV, cD] (PyWavelets' order: detail along H,
detail along W, both) stacked as 3C channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import HierarchicalMap, Lattice, band_shapes, check_divisible, octave_analysis, octave_synthesis
from .haar import Haar

ORTHOGONAL_HINT = "haar, db1…db38, sym2…sym20, coif1…coif17"


def wavelet_filters(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The analysis (low-pass, high-pass) filters of an orthogonal PyWavelets wavelet, or a
    one-line ValueError saying why the wavelet cannot give an exact likelihood."""
    import pywt

    try:
        w = pywt.Wavelet(name)
    except ValueError:
        raise ValueError(
            f"unknown wavelet {name!r}; W-PCDM takes an orthogonal discrete wavelet of "
            f"PyWavelets ({ORTHOGONAL_HINT})"
        ) from None
    if not w.orthogonal:
        raise ValueError(
            f"wavelet {name!r} is not orthogonal, so the W-PCDM map would not be orthonormal and "
            f"the likelihood would not be exact; use an orthogonal wavelet ({ORTHOGONAL_HINT})"
        )
    lo, hi = tuple(w.dec_lo), tuple(w.dec_hi)
    n = 2 * len(lo)
    a = torch.cat(
        [analysis_matrix(lo, n, torch.float64, "cpu"), analysis_matrix(hi, n, torch.float64, "cpu")]
    )
    defect = float((a @ a.T - torch.eye(n, dtype=torch.float64)).abs().max())
    if defect > 1e-9:  # dmey: PyWavelets marks it orthogonal, but its FIR filters are not
        raise ValueError(
            f"wavelet {name!r} has filters that are orthonormal only to {defect:.0e}, so the likelihood "
            f"would not be exact; use an orthogonal wavelet ({ORTHOGONAL_HINT})"
        )
    return lo, hi


def analysis_matrix(filt: tuple[float, ...], n: int, dtype, device) -> Tensor:
    """(n/2 × n): row i holds the filter reversed and wrapped around, centred at 2i + L/2."""
    m = torch.zeros(n // 2, n, dtype=torch.float64)
    L = len(filt)
    for i in range(n // 2):
        for j, v in enumerate(filt):
            m[i, (2 * i + L // 2 - j) % n] += v
    return m.to(dtype=dtype, device=device)


class Wavelet(HierarchicalMap):
    """Orthonormal periodized wavelet transform with any orthogonal PyWavelets filter.

    Lattice features (docs/math.md §4) are Haar's argument and only part of it carries over: a
    longer filter mixes many pixels with irrational weights, so neither the coefficients nor
    the conditioning image (the approximation at level k's size) sit on a lattice. The
    octave view — one synthesis step of (cond, z), then space-to-depth — still rebuilds the
    next finer approximation from the network's inputs; at the finest level that is the
    image itself, on the pixel grid, so only there does it get lattice features. The
    coefficients keep Haar's Fourier frequencies (the approximation's gain is 2 per octave,
    as Haar's), a choice of scale, not a lattice claim.
    """

    name = "wavelet"

    def __init__(self, levels: int = 1, wavelet: str = "db4"):
        super().__init__(levels)
        self.wavelet = wavelet
        self.lo, self.hi = wavelet_filters(wavelet)
        self._matrices: dict = {}

    def describe(self):
        return f"{self.wavelet} wavelet, S = {self.levels}"

    def _pair(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """(A_lo, A_hi) for an axis of length n, cached per dtype and device."""
        if n % 2:
            raise ValueError(f"a wavelet step needs an even length, got {n}")
        key = (n, like.dtype, like.device)
        if key not in self._matrices:
            self._matrices[key] = tuple(
                analysis_matrix(f, n, like.dtype, like.device) for f in (self.lo, self.hi)
            )
        return self._matrices[key]

    def analysis(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """One 2-D step: (N,C,H,W) → approximation (N,C,H/2,W/2), details [cH, cV, cD]
        stacked (N,3C,H/2,W/2). Along H: A @ y; along W: y @ Aᵀ."""
        lo_h, hi_h = self._pair(y.shape[-2], y)
        lo_w, hi_w = self._pair(y.shape[-1], y)
        rows_lo, rows_hi = lo_h @ y, hi_h @ y
        a = rows_lo @ lo_w.T
        details = torch.cat([rows_hi @ lo_w.T, rows_lo @ hi_w.T, rows_hi @ hi_w.T], dim=1)
        return a, details

    def synthesis(self, a: Tensor, details: Tensor) -> Tensor:
        """Exact inverse (= transpose) of :meth:`analysis`."""
        lo_h, hi_h = self._pair(2 * a.shape[-2], a)
        lo_w, hi_w = self._pair(2 * a.shape[-1], a)
        d_h, d_w, d_hw = details.chunk(3, dim=1)
        rows_lo = a @ lo_w + d_w @ hi_w
        rows_hi = d_h @ lo_w + d_hw @ hi_w
        return lo_h.T @ rows_lo + hi_h.T @ rows_hi

    def level_shapes(self, chw):
        return band_shapes(chw, self.levels)

    def forward(self, f):
        check_divisible(f.shape, self.levels)
        return octave_analysis(f, self.levels, self.analysis)

    def reconstruct(self, cs):
        return octave_synthesis(cs, self.synthesis)

    def condition(self, cs, k):
        # The approximation at level k's resolution, rebuilt from the coarser levels only.
        return None if k == 0 else self.reconstruct(cs[:k])

    def lattice(self, k):
        z = self.levels - max(k, 1)  # Haar's frequency scale for the coefficients
        return Lattice(z=z, cond=None, view=0 if k == self.levels - 1 and k > 0 else None)

    def view_channels(self, chw, k):
        return 0 if k == 0 else 4 * chw[0]

    def view(self, k, z, cond):
        return None if k == 0 else F.pixel_unshuffle(self.synthesis(cond, z), 2)


def wavelet_map(levels: int, wavelet: str = "haar") -> HierarchicalMap:
    """W-PCDM's map: the Haar map for ``haar`` (its band layout is what runs were trained
    with), the periodized transform of this module for any other orthogonal wavelet."""
    return Haar(levels) if wavelet == "haar" else Wavelet(levels, wavelet)
