"""Hierarchical maps (docs/math.md §2): Haar against PyWavelets, the exact Laplacian pyramid as a
tight frame checked through its full matrix, the cascade, errors and conditioning."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from pcdm.maps import build_map


def rand(shape, seed=0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- Haar ----------------------------------------------------------------------------


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_haar_matches_pywavelets(levels):
    n, c, h, w = 2, 3, 16, 24
    x = rand((n, c, h, w), seed=levels, dtype=torch.float64)
    ours = build_map("haar", levels)(x)
    theirs = pywt.wavedec2(x.numpy(), "haar", mode="periodization", level=levels - 1, axes=(-2, -1))
    assert len(ours) == len(theirs) == levels
    np.testing.assert_allclose(ours[0].numpy(), theirs[0], atol=1e-12)  # the final LL
    for k in range(1, levels):
        mine = ours[k].numpy()  # (N, 3C, h, w): band b of channel ch at index b·C + ch
        assert mine.shape == (n, 3 * c, *theirs[k][0].shape[-2:])
        for ch in range(c):
            matched = set()
            for b in range(3):
                band = mine[:, b * c + ch]
                hits = [
                    (i, sign)
                    for i, ref in enumerate(theirs[k])
                    for sign in (1, -1)
                    if np.allclose(band, sign * ref[:, ch], atol=1e-12)
                ]
                assert len(hits) == 1, f"level {k} band {b} channel {ch}: no unique pywt match"
                matched.add(hits[0][0])
            assert matched == {0, 1, 2}  # a permutation of (cH, cV, cD)


@pytest.mark.parametrize("name", ["identity", "haar", "lp", "cascade"])
def test_inverse_exact(name):
    levels = 1 if name == "identity" else 3
    m = build_map(name, levels)
    x = rand((3, 2, 8, 12), seed=1)
    y = m.reconstruct(m(x))
    assert y.shape == x.shape
    torch.testing.assert_close(y, x, atol=2e-6, rtol=0)


@pytest.mark.parametrize("name", ["haar", "lp"])
@pytest.mark.parametrize("levels", [1, 2, 3])
def test_norm_preserved(name, levels):
    m = build_map(name, levels)
    x = rand((4, 3, 8, 8), seed=2, dtype=torch.float64)
    cs = m(x)
    lhs = sum(c.pow(2).flatten(1).sum(1) for c in cs)
    torch.testing.assert_close(lhs, x.pow(2).flatten(1).sum(1), atol=1e-10, rtol=1e-12)
    # and not trivially: a wrong map (e.g. LP without the (I − P) projection) fails this
    if name == "lp" and levels > 1:
        from pcdm.maps import down

        naive = [down(x)] + [x]
        assert sum(c.pow(2).sum() for c in naive) > 1.1 * x.pow(2).sum()


# --- matrices ------------------------------------------------------------------------


def level_matrices(m, chw):
    """The map as matrices A_k (n_k × d), via the autograd Jacobian."""
    d = int(np.prod(chw))

    def flat(v):
        return torch.cat([c.reshape(-1) for c in m(v.reshape(1, *chw))])

    A = torch.autograd.functional.jacobian(flat, torch.zeros(d, dtype=torch.float64))
    sizes = [int(np.prod(s)) for s in m.level_shapes(chw)]
    return A, list(torch.split(A, sizes, 0))


def projector_matrix(m, k, shape):
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return m.project(k, basis).reshape(n, n).T  # column i = Π e_i


def test_lp_is_a_tight_frame_with_exact_subspaces():
    chw, levels = (1, 8, 8), 3
    m = build_map("lp", levels)
    A, blocks = level_matrices(m, chw)
    d = 64
    assert A.shape == (4 + 16 + 64, d)  # redundant: R^d → R^(d + d/4 + d/16)
    torch.testing.assert_close(A.T @ A, torch.eye(d, dtype=torch.float64), atol=1e-12, rtol=0)
    ranks, shapes = [], m.level_shapes(chw)
    for k, (Ak, shape) in enumerate(zip(blocks, shapes)):
        n = Ak.shape[0]
        cov = Ak @ Ak.T  # Cov(h(ε)ᵏ) for ε ~ N(0, I_d)
        P = projector_matrix(m, k, shape)
        torch.testing.assert_close(P, P.T, atol=1e-12, rtol=0)
        torch.testing.assert_close(P @ P, P, atol=1e-12, rtol=0)
        torch.testing.assert_close(cov, P, atol=1e-12, rtol=0)  # iid noise in the subspace
        torch.testing.assert_close(P @ Ak, Ak, atol=1e-12, rtol=0)  # the level lives there
        rank = int(torch.linalg.matrix_rank(P))
        assert rank == (n if k == 0 else 3 * n // 4)
        ranks.append(rank)
    assert sum(ranks) == d
    assert m.dims(chw) == ranks


@pytest.mark.parametrize("name", ["identity", "haar"])
def test_orthonormal_maps_matrix(name):
    chw = (2, 4, 4)
    m = build_map(name, 1 if name == "identity" else 3)
    A, blocks = level_matrices(m, chw)
    eye = torch.eye(32, dtype=torch.float64)
    torch.testing.assert_close(A.T @ A, eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(A @ A.T, eye, atol=1e-12, rtol=0)
    assert m.dims(chw) == [b.shape[0] for b in blocks]
    assert sum(m.dims(chw)) == 32


# --- cascade ---------------------------------------------------------------------------


def test_cascade_levels_are_subsamples():
    m = build_map("cascade", 3)
    x = rand((2, 3, 8, 8), seed=3)
    cs = m(x)
    assert [tuple(c.shape[1:]) for c in cs] == [(3, 2, 2), (3, 4, 4), (3, 8, 8)]
    torch.testing.assert_close(cs[0], x[..., 0::4, 0::4], atol=0, rtol=0)  # top-left pixels
    torch.testing.assert_close(cs[1], x[..., 0::2, 0::2], atol=0, rtol=0)
    torch.testing.assert_close(cs[2], x, atol=0, rtol=0)
    torch.testing.assert_close(m.reconstruct(cs), x, atol=0, rtol=0)
    assert not m.exact
    assert sum(m.dims((3, 8, 8))) > 3 * 8 * 8  # Σ dₛ > d: not volume-preserving


# --- errors and conditioning ------------------------------------------------------------


@pytest.mark.parametrize("name", ["haar", "lp", "cascade"])
def test_non_divisible_sizes_raise(name):
    m = build_map(name, 3)  # needs H, W divisible by 4
    with pytest.raises(ValueError, match="6×8"):
        m(rand((1, 1, 6, 8)))
    with pytest.raises(ValueError, match="8×10"):
        m.level_shapes((1, 8, 10))
    m.level_shapes((1, 8, 12))  # fine


def test_bad_map_and_levels():
    with pytest.raises(ValueError, match="unknown map"):
        build_map("daubechies-99", 2)
    with pytest.raises(ValueError, match="1 level"):
        build_map("identity", 2)


@pytest.mark.parametrize("name", ["haar", "lp", "cascade"])
@pytest.mark.parametrize("levels", [2, 3])
def test_condition_shapes_and_content(name, levels):
    chw = (3, 8, 8)
    m = build_map(name, levels)
    x = rand((2, *chw), seed=4, dtype=torch.float64)
    cs = m(x)
    shapes = m.level_shapes(chw)
    assert m.condition(cs, 0) is None
    assert m.condition_channels(chw, 0) == 0
    for k in range(1, levels):
        cond = m.condition(cs, k)
        assert cond.shape == (2, 3, *shapes[k][1:])  # C channels at level k's resolution
        assert m.condition_channels(chw, k) == 3
        # It is built from the coarser levels only.
        changed = cs[:k] + [c + 1.0 for c in cs[k:]]
        torch.testing.assert_close(m.condition(changed, k), cond, atol=0, rtol=0)
        # And it is the right image: the LL / octave / subsampled image of x there.
        octave = levels - k  # level k's coefficients sit at resolution H / 2^(octave - …)
        if name == "haar":  # LL at level k's resolution: block sums of 2^o × 2^o / 2^o
            o = octave
            ref = x.unfold(2, 2**o, 2**o).unfold(3, 2**o, 2**o).sum((-1, -2)) / 2**o
        elif name == "lp":  # Dᵀ D y⁽ᵏ⁾: block mean of the octave image, replicated
            o = octave - 1
            y = x.unfold(2, 2**o, 2**o).unfold(3, 2**o, 2**o).sum((-1, -2)) / 2**o
            mean = y.unfold(2, 2, 2).unfold(3, 2, 2).mean((-1, -2))
            ref = mean.repeat_interleave(2, 2).repeat_interleave(2, 3)
        else:  # nearest-neighbour upsampled coarser subsample
            coarse = x[..., :: 2**octave, :: 2**octave]
            ref = coarse.repeat_interleave(2, 2).repeat_interleave(2, 3)
        torch.testing.assert_close(cond, ref, atol=1e-12, rtol=0)


def test_paper_shapes():
    """docs/math.md §2: haar S = 2 on 32×32×3 gives [16×16×3, 16×16×9]."""
    assert build_map("haar", 2).level_shapes((3, 32, 32)) == [(3, 16, 16), (9, 16, 16)]
    assert build_map("lp", 2).level_shapes((3, 32, 32)) == [(3, 16, 16), (3, 32, 32)]
    assert build_map("lp", 2).dims((3, 32, 32)) == [768, 2304]


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_integer_lifting_is_a_bijection_with_its_ranges(levels):
    """lift: integer images ↔ integer levels exactly; level shapes as Haar's; every value
    inside the declared range, and the extremes of the ranges are reached."""
    from pcdm.maps import Lifting

    K = 256
    gen = torch.Generator().manual_seed(levels)
    x = torch.randint(0, K, (6, 3, 16, 16), generator=gen)
    x[0] = 0
    x[1, :, 0::2, :], x[1, :, 1::2, :] = K - 1, 0  # extreme horizontal/vertical differences
    x[2] = ((torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * (K - 1)).expand(3, 16, 16)
    m = Lifting(levels)
    cs = m(x)
    assert [tuple(c.shape[1:]) for c in cs] == build_map("haar", levels).level_shapes((3, 16, 16))
    assert all(not c.dtype.is_floating_point for c in cs)
    assert torch.equal(m.reconstruct(cs), x)
    hit_hh = False
    for k, c in enumerate(cs):
        for ch, (lo, hi) in enumerate(m.value_range(k, (3, 16, 16), K)):
            assert lo <= int(c[:, ch].min()) and int(c[:, ch].max()) <= hi
            hit_hh |= k > 0 and int(c[:, ch].abs().max()) == 2 * (K - 1)
    assert hit_hh or levels == 1  # the checkerboard reaches HH = ±2(K − 1)
    # conditioning: the integer image of the octave, which the lifting of x itself gives
    for k in range(1, levels):
        octave = x
        for _ in range(levels - k):
            octave = Lifting(2)(octave)[0]
        assert torch.equal(m.condition(cs, k), octave)
    with pytest.raises(TypeError):
        m(x.float())


@pytest.mark.parametrize("levels", [2, 3])
def test_lp_inverse_is_the_adjoint(levels):
    """⟨A f, c⟩ = ⟨f, Aᵀ c⟩ for any levels c, also ones outside the detail subspaces."""
    m = build_map("lp", levels)
    gen = torch.Generator().manual_seed(levels)
    f = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float64)
    cs = [torch.randn(2, *s, generator=gen, dtype=torch.float64) for s in m.level_shapes((3, 8, 8))]
    lhs = sum((a * c).sum() for a, c in zip(m(f), cs))
    torch.testing.assert_close(lhs, (f * m.reconstruct(cs)).sum())
    torch.testing.assert_close(m.reconstruct(m(f)), f)


@pytest.mark.parametrize(
    "name,levels,options",
    [("identity", 1, {}), ("haar", 3, {}), ("lp", 3, {}), ("wavelet", 2, {"wavelet": "db4"})],
)
def test_orthonormal_coordinates_of_each_level(name, levels, options):
    """What the codec codes: ``to_coords`` gives nₖ = dims[k] coordinates of level k in an
    orthonormal basis of its subspace (rows orthonormal, spanning range(Πₖ)), and
    ``from_coords`` maps them back onto the level."""
    m = build_map(name, levels, **options)
    chw = (2, 4, 8)
    for k, (shape, n) in enumerate(zip(m.level_shapes(chw), m.dims(chw))):
        size = int(np.prod(shape))
        basis = torch.eye(size, dtype=torch.float64).reshape(size, *shape)
        B = m.to_coords(k, m.project(k, basis)).T  # (nₖ × size): coordinates of Πₖ eᵢ
        assert B.shape == (n, size)
        torch.testing.assert_close(B @ B.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
        torch.testing.assert_close(B.T @ B, projector_matrix(m, k, shape), atol=1e-12, rtol=0)
        v = m.project(k, rand((3, *shape), seed=k, dtype=torch.float64))
        torch.testing.assert_close(m.from_coords(k, m.to_coords(k, v), shape), v, atol=1e-12, rtol=0)


@pytest.mark.parametrize("levels", [2, 3])
def test_lp_and_haar_levels_are_the_same_coordinates(levels):
    """The exact LP and the Haar wavelet split pixel space into the same subspaces with the
    same orthonormal coordinates: LP's coarse level is Haar's LL, and the codec coordinates
    of each LP detail level are Haar's detail bands at that octave. So lp-pcdm and Haar
    w-pcdm are one probabilistic model; they differ only in the networks' layout (a full-
    resolution U-Net on the octave image against a half-resolution one on 3C bands)."""
    lp, haar = build_map("lp", levels), build_map("haar", levels)
    f = rand((2, 3, 16, 8), seed=levels, dtype=torch.float64)
    for k, (a, b) in enumerate(zip(lp(f), haar(f))):
        if k == 0:
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0)
        else:
            torch.testing.assert_close(lp.to_coords(k, a), b.flatten(1), atol=1e-12, rtol=0)
