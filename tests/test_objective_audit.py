"""benchmarks/objective_audit.py: the true bound next to the public code's training objective.

A tiny w-pcdm with random (non-zero) network weights, saved as a run folder; the checks are
the properties the audit's docstring derives: its "bpd" is ``PCDM.nelbo`` on the seeded
draws, the level-1 terms differ by exactly 4^−(S−1), the detail levels differ only through
the conditioning, prior and reconstruction agree, and other models are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_benchmark

from pcdm.checkpoint import load_run, save_tensors, write_json
from pcdm.data import load, to_nchw
from pcdm.model import PCDM, ModelConfig, Noise, to_bpd

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(image_shape=(1, 8, 8), K=17, width=8, depth=1, attention=False)  # digits: 8×8, K = 17


@pytest.fixture(scope="module")
def audit():
    return load_benchmark("objective_audit")


def _model(model="w-pcdm", levels=2, seed=0) -> PCDM:
    """Untrained, but every network weight perturbed: the zero-initialised output layers
    would otherwise make ε̂ = z_t and hide any mistake in how a network is called."""
    torch.manual_seed(seed)
    m = PCDM(ModelConfig(model=model, levels=levels, **SMALL))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("nets."):
                p.add_(0.1 * torch.randn_like(p))
    return m.eval()


def _save_run(path: Path, model: PCDM) -> Path:
    """A run folder as training writes it (config.json + ema.safetensors)."""
    write_json(
        path / "config.json",
        {"model": model.config.to_dict(), "data": {"spec": "digits", "K": 17, "shape": [1, 8, 8]}},
    )
    save_tensors(path / "ema.safetensors", model.state_dict())
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _save_run(tmp_path_factory.mktemp("wpcdm"), _model())


@pytest.fixture(scope="module")
def images():
    return load("digits", "test", limit=6).images


def _json(audit, capsys, argv):
    assert audit.main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_bpd_is_the_bound_on_the_same_draws(audit, run, images, capsys):
    out = _json(audit, capsys, [str(run), "--data", "digits", "--limit", "6", "--batch", "4", "--seed", "3"])
    # Independent recomputation: one generator, one Noise per batch of 4, PCDM.nelbo.
    model, _ = load_run(run)
    g = torch.Generator().manual_seed(3)
    totals, priors, recons = [], [], []
    with torch.no_grad():
        for start in (0, 4):
            x = to_nchw(images[start : start + 4])
            bound = model.nelbo(x, noise=Noise.draw(x.shape, 2, generator=g, dtype=model.dtype))
            totals.append(to_bpd(bound.total, model.dims))
            priors.append(to_bpd(bound.prior, model.dims))
            recons.append(to_bpd(bound.recon, model.dims))
    total = torch.cat(totals).double().numpy()
    assert out["n_images"] == 6 and out["data"] == "digits:test" and out["levels"] == 2
    assert out["bpd"] == pytest.approx(total.mean(), rel=1e-6)
    assert out["bpd_se"] == pytest.approx(total.std(ddof=1) / np.sqrt(6), rel=1e-4)

    b, a = out["bound_parts"], out["authors_objective_parts"]
    assert set(b) == set(a) == {"prior", "diffusion_level1", "diffusion_level2", "recon", "total"}
    assert b["prior"] == pytest.approx(float(torch.cat(priors).mean()), rel=1e-6)
    assert b["recon"] == pytest.approx(float(torch.cat(recons).mean()), rel=1e-6)
    for parts in (b, a):  # the parts add up to each total
        assert parts["prior"] + parts["diffusion_level1"] + parts["diffusion_level2"] + parts["recon"] == (
            pytest.approx(parts["total"], rel=1e-5)
        )
    assert a["total"] == pytest.approx(out["authors_objective_bpd"], rel=1e-9)
    # Pixel-space prior (public code) = Σ of the orthonormal level priors; same decoder on the same ε₀.
    assert a["prior"] == pytest.approx(b["prior"], rel=1e-5)
    assert a["recon"] == pytest.approx(b["recon"], rel=1e-6)
    assert a["diffusion_level1"] == pytest.approx(b["diffusion_level1"] / 4, rel=1e-5)
    assert out["difference_bpd"] == pytest.approx(out["bpd"] - out["authors_objective_bpd"], abs=1e-6)
    assert out["difference_se"] > 0 and out["level1_factor"] == 0.25
    assert "objective_audit.py" in out["command"] and str(run) in out["command"]

    # Without --json: a table that says which number is the bound.
    assert audit.main([str(run), "--limit", "2"]) == 0
    text = capsys.readouterr().out
    assert "upper bound on −log2 P(x)/d" in text and "NOT a bound" in text


@pytest.mark.parametrize("levels", [2, 3])
def test_level1_terms_differ_by_the_missing_noise_variance(audit, images, levels):
    """Block-mean coordinates u = c¹/m, m = 2^(S−1): the noise there has variance 1/m², the
    ELBO weights the squared error by m², the public code does not, so its term is ours / m²."""
    model = _model(levels=levels).double()
    x = to_nchw(images)
    f = model.pixels_to_f(x)
    m = 2 ** (levels - 1)
    # The premise of the derivation: the orthonormal LL band is m × the pixel block mean.
    torch.testing.assert_close(model.map(f)[0], m * F.avg_pool2d(f, m))
    per = audit.audit_images(model, images, seed=1, batch=4, progress=False)
    ours, theirs = per["bound/diffusion_level1"], per["authors_objective/diffusion_level1"]
    assert (ours > 0).all()
    np.testing.assert_allclose(theirs, ours / m**2, rtol=1e-9)
    np.testing.assert_allclose(per["authors_objective/prior"], per["bound/prior"], rtol=1e-9)
    np.testing.assert_allclose(per["authors_objective/recon"], per["bound/recon"], rtol=1e-9)
    total = (
        per["bound/prior"]
        + per["bound/recon"]
        + sum(per[f"bound/diffusion_level{s}"] for s in range(1, levels + 1))
    )
    np.testing.assert_allclose(per["bound/total"], total, rtol=1e-9)


def test_detail_levels_differ_only_by_conditioning(audit, images):
    model = _model(levels=3).double()

    def blind(k, z, gamma, cond):  # the real networks, told nothing about the coarser levels
        return model.eps_hat(k, z, gamma, None if cond is None else torch.zeros_like(cond))

    blind_per = audit.audit_images(model, images, seed=2, batch=4, denoiser=blind, progress=False)
    real_per = audit.audit_images(model, images, seed=2, batch=4, progress=False)
    for s in (2, 3):
        key = f"diffusion_level{s}"
        np.testing.assert_allclose(
            blind_per[f"authors_objective/{key}"], blind_per[f"bound/{key}"], rtol=1e-9
        )
        # With conditioning, clean coefficients vs z₀^{<s} give a different number.
        assert np.abs(real_per[f"authors_objective/{key}"] - real_per[f"bound/{key}"]).max() > 1e-6
    # The custom denoiser reached both objectives (level 1 has no conditioning: unchanged).
    np.testing.assert_allclose(
        blind_per["bound/diffusion_level1"], real_per["bound/diffusion_level1"], rtol=1e-12
    )
    assert np.abs(blind_per["bound/diffusion_level2"] - real_per["bound/diffusion_level2"]).max() > 1e-6


@pytest.mark.parametrize("model", ["vdm", "lp-pcdm", "c-vdm"])
def test_refuses_other_models(audit, tmp_path, capsys, model):
    run = _save_run(tmp_path / model, _model(model=model, levels=1 if model == "vdm" else 2))
    assert audit.main([str(run), "--limit", "2", "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "w-pcdm" in lines[0] and model in lines[0], captured.err
