"""W-PCDM with any orthogonal PyWavelets wavelet (docs/math.md §2 "wavelet NAME"): the torch
transform against ``pywt.wavedec2(mode='periodization')``, exact orthonormality from the
Jacobian, refusals of wavelets whose likelihood would not be exact, and the wavelet in the
run's config (and so in the codec fingerprint, which hashes it)."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
import pywt
import torch
import torch.nn.functional as F

from pcdm import PCDM, ModelConfig
from pcdm.checkpoint import fingerprint
from pcdm.cli import main
from pcdm.maps import Haar, Wavelet, build_map

DT = torch.float64


def rand(shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("name", ["db2", "db4", "sym5", "coif2", "haar"])
@pytest.mark.parametrize("levels", [1, 2, 3, 4])
def test_matches_pywavelets(name, levels):
    """Every coefficient, band order and sign included, to 1e-10 in float64 — also where the
    filter (db4: 8 taps, coif2: 12) is longer than the octave it wraps around (2×3 at S = 4)."""
    x = rand((2, 3, 16, 24), seed=levels)
    ours = Wavelet(levels, name)(x)
    with warnings.catch_warnings():  # pywt warns when every coefficient feels the boundary
        warnings.simplefilter("ignore", UserWarning)
        theirs = pywt.wavedec2(x.numpy(), name, mode="periodization", level=levels - 1, axes=(-2, -1))
    assert len(ours) == len(theirs) == levels
    np.testing.assert_allclose(ours[0].numpy(), theirs[0], rtol=0, atol=1e-10)
    for k in range(1, levels):
        for b, ref in enumerate(theirs[k]):  # (cH, cV, cD), band b of channel c at b·C + c
            np.testing.assert_allclose(ours[k][:, 3 * b : 3 * b + 3].numpy(), ref, rtol=0, atol=1e-10)


def jacobian(m, chw):
    d = int(np.prod(chw))

    def flat(v):
        return torch.cat([c.reshape(-1) for c in m(v.reshape(1, *chw))])

    return torch.autograd.functional.jacobian(flat, torch.zeros(d, dtype=DT))


@pytest.mark.parametrize(
    "name,levels,chw", [("db4", 3, (2, 8, 8)), ("sym4", 2, (1, 4, 12)), ("coif1", 4, (1, 8, 8))]
)
def test_orthonormal_from_the_jacobian(name, levels, chw):
    """AᵀA = AAᵀ = I (so log|det| = 0 and h⁻¹ = hᵀ); the inverse and adjoint are Aᵀ."""
    m = Wavelet(levels, name)
    A = jacobian(m, chw)
    d = A.shape[1]
    assert A.shape == (d, d) and sum(m.dims(chw)) == d
    eye = torch.eye(d, dtype=DT)
    torch.testing.assert_close(A.T @ A, eye, atol=1e-10, rtol=0)
    torch.testing.assert_close(A @ A.T, eye, atol=1e-10, rtol=0)
    cs = [rand((3, *s), seed=k) for k, s in enumerate(m.level_shapes(chw))]
    coef = torch.cat([c.flatten(1) for c in cs], 1)
    want = (coef @ A).reshape(3, *chw)  # Aᵀ c
    torch.testing.assert_close(m.reconstruct(cs), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(m.adjoint(cs), want, atol=1e-12, rtol=0)
    # and not trivially: the Haar map is a different orthonormal map
    assert not torch.allclose(A, jacobian(Haar(levels), chw), atol=1e-3)


def test_conditioning_view_and_lattice():
    """cond = the approximation at level k's size from the coarser levels only; the view is
    one synthesis step of (cond, z), space-to-depth; only the finest level's view (the image
    itself, on the pixel grid) is given lattice features."""
    m = Wavelet(3, "db4")
    x = rand((2, 1, 16, 16), seed=5)
    cs = m(x)
    for k in (1, 2):
        cond = m.condition(cs, k)
        approx = Wavelet(4 - k, "db4")(x)[0]  # S − k analysis steps
        torch.testing.assert_close(cond, approx, atol=1e-12, rtol=0)
        assert m.condition_channels((1, 16, 16), k) == 1
        changed = cs[:k] + [c + 1 for c in cs[k:]]
        torch.testing.assert_close(m.condition(changed, k), cond, atol=0, rtol=0)
        view = m.view(k, cs[k], cond)
        assert view.shape[1] == m.view_channels((1, 16, 16), k) == 4
        torch.testing.assert_close(F.pixel_shuffle(view, 2), m.reconstruct(cs[: k + 1]), atol=1e-12, rtol=0)
    torch.testing.assert_close(F.pixel_shuffle(m.view(2, cs[2], m.condition(cs, 2)), 2), x)
    assert [m.lattice(k) for k in range(3)] == [(2, None, None), (2, None, None), (1, None, 0)]
    # the preview of the finished coarse levels is in pixel units: a constant image stays put
    flat = torch.full((1, 1, 16, 16), 0.3, dtype=DT)
    torch.testing.assert_close(m.preview(m(flat)[:1]), torch.full((1, 1, 4, 4), 0.3, dtype=DT))


@pytest.mark.parametrize("name", ["bior2.2", "rbio1.3", "dmey", "morl", "db99"])
def test_wavelets_without_an_exact_likelihood_are_refused(name):
    with pytest.raises(ValueError) as err:
        ModelConfig(model="w-pcdm", wavelet=name, image_shape=(1, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg and name in msg
    if name.startswith(("bior", "rbio")):
        assert "not orthogonal" in msg and "not be exact" in msg
    if name == "dmey":  # PyWavelets calls it orthogonal; its FIR filters are not, quite
        assert "not be exact" in msg


def test_cli_refuses_bior_in_one_line(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 8, 8), np.uint8))
    args = ["train", "--model", "w-pcdm", "--wavelet", "bior2.2", "--data", str(tmp_path / "x.npy")]
    assert main([*args, "--out", str(tmp_path / "run"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "bior2.2" in err and "not orthogonal" in err and "likelihood would not be exact" in err
    assert not (tmp_path / "run").exists()
    lp = ["train", "--model", "lp-pcdm", "--wavelet", "db4", *args[5:], "--steps", "1"]
    assert main([*lp, "--out", str(tmp_path / "r2")]) == 2
    assert "applies to w-pcdm" in capsys.readouterr().err


def test_config_records_the_wavelet_and_old_configs_load_as_haar():
    cfg = ModelConfig(model="w-pcdm", wavelet="db4", image_shape=(1, 8, 8), width=8, depth=1)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["wavelet"] == "db4"
    assert ModelConfig.from_dict(d).wavelet == "db4"
    assert isinstance(PCDM(ModelConfig.from_dict(d)).map, Wavelet)
    old = {k: v for k, v in d.items() if k != "wavelet"}  # a config.json from before --wavelet
    assert ModelConfig.from_dict(old).wavelet == "haar"
    assert isinstance(PCDM(ModelConfig.from_dict(old)).map, Haar)
    # models without a wavelet keep their config as it was
    assert "wavelet" not in ModelConfig(model="lp-pcdm", image_shape=(1, 8, 8)).to_dict()
    # the codec fingerprint hashes the config: same weights, other wavelet → other fingerprint
    torch.manual_seed(0)
    a = PCDM(cfg)
    b = PCDM(ModelConfig.from_dict({**d, "wavelet": "sym4"}))
    b.load_state_dict(a.state_dict())
    assert fingerprint(a) != fingerprint(b)
    # a Haar run's fingerprint is the one it had before --wavelet (config without the key),
    # so .pcdm files made by runs from before still decode
    haar = PCDM(ModelConfig.from_dict(old))
    before = {k: v for k, v in haar.config.to_dict().items() if k != "wavelet"}
    h = hashlib.sha256(json.dumps(before, sort_keys=True).encode())
    for name, t in sorted(haar.state_dict().items()):
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    assert fingerprint(haar) == h.digest()


def test_db4_model_bound_is_finite_and_trains():
    """A w-pcdm db4 model computes its bound, and its lattice channels are what the map
    declares (none at the middle level, the pixel-grid view at the finest)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        model="w-pcdm", wavelet="db4", levels=3, image_shape=(1, 16, 16), K=17, width=8, depth=1
    )
    model = PCDM(cfg)
    assert model.nets[1].extra_channels == 0 and model.nets[2].extra_channels > 0
    x = torch.randint(0, 17, (8, 1, 16, 16), generator=torch.Generator().manual_seed(1))
    b = model.nelbo(x)
    assert torch.isfinite(b.total).all() and b.per_level.shape == (8, 3)
    assert build_map("wavelet", 3, wavelet="db4").level_shapes((1, 16, 16)) == model.level_shapes
