"""EDM per level (docs/math.md §11): preconditioning against its definitions, the bound of an
EDM-parameterised denoiser equal to the ε parameterisation's, Heun sampling of a known
Gaussian level, and the config that keeps ELBO runs' fingerprints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from pcdm import edm
from pcdm.model import PCDM, ModelConfig, Noise
from pcdm.schedules import alpha_sigma

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name, levels=2, shape=(1, 4, 4), objective="edm", sigma_data=None, gamma_max=5.0, **kw):
    torch.manual_seed(0)
    if objective == "edm" and sigma_data is None:
        sigma_data = tuple(0.3 + 0.2 * k for k in range(1 if name == "vdm" else levels))
    cfg = ModelConfig(model=name, levels=levels, image_shape=shape, width=8, depth=1, attention=False,
                      schedule="fixed", gamma_min=-13.3, gamma_max=gamma_max, objective=objective,
                      sigma_data=sigma_data, **kw)  # fmt: skip
    return PCDM(cfg).double()


# --- preconditioning ------------------------------------------------------------------


def test_preconditioning_matches_definitions_and_design_properties():
    sigma = torch.logspace(-3, 2, 21, dtype=DT)
    for sd in (0.1, 0.5, 1.7):
        c_skip, c_out, c_in, c_noise = edm.preconditioning(sigma, sd)
        for i, s in enumerate(sigma.tolist()):  # the definitions, in plain floats
            assert math.isclose(float(c_skip[i]), sd**2 / (s**2 + sd**2), rel_tol=1e-12)
            assert math.isclose(float(c_out[i]), s * sd / math.sqrt(s**2 + sd**2), rel_tol=1e-12)
            assert math.isclose(float(c_in[i]), 1 / math.sqrt(s**2 + sd**2), rel_tol=1e-12)
            assert math.isclose(float(c_noise[i]), math.log(s) / 4, rel_tol=1e-12, abs_tol=1e-15)
        var_x = sigma**2 + sd**2  # x = c + σ n, Var c = σ_d²
        torch.testing.assert_close(c_in**2 * var_x, torch.ones_like(sigma))  # unit-variance input
        target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sigma**2) / c_out**2
        torch.testing.assert_close(target_var, torch.ones_like(sigma))  # unit-variance target
        torch.testing.assert_close(edm.loss_weight(sigma, sd) * c_out**2, torch.ones_like(sigma))
        # c_skip x is E[c | x] for c ~ N(0, σ_d²): the residual is orthogonal to x
        torch.testing.assert_close(sd**2 - c_skip * var_x, torch.zeros_like(sigma), atol=1e-12, rtol=0)


def test_c_skip_is_the_gaussian_posterior_mean_by_monte_carlo():
    """With F = 0, D = c_skip x: the regression of c on x for Gaussian c, drawn."""
    g = torch.Generator().manual_seed(1)
    sd = 0.6
    c = sd * torch.randn(400_000, generator=g, dtype=DT)
    for s in (0.05, 0.6, 3.0):
        x = c + s * torch.randn(c.shape, generator=g, dtype=DT)
        slope = float((c * x).sum() / (x * x).sum())
        c_skip = float(edm.preconditioning(torch.tensor(s, dtype=DT), sd)[0])
        se = math.sqrt(c_skip * (1 - c_skip) / len(c))  # s.e. of the slope: √(Var(c | x) / Σ x²)
        assert abs(slope - c_skip) < 6 * se, (s, slope, c_skip)


def test_sigma_grid_and_training_sigma():
    grid = edm.sigma_grid(0.002, 80.0, 18)
    assert len(grid) == 18 and float(grid[0]) == pytest.approx(80.0, rel=1e-12)
    assert float(grid[-1]) == pytest.approx(0.002, rel=1e-12)
    root = grid ** (1 / 7)
    np.testing.assert_allclose(np.diff(root.numpy()), np.diff(root.numpy())[0], rtol=1e-9)  # linear in i
    with pytest.raises(ValueError, match="at least 2"):
        edm.sigma_grid(0.002, 80.0, 1)
    # stratified t ↦ log-normal σ, shifted by ln(σ_d / 0.5)
    t = (torch.arange(20_000, dtype=DT) + 0.5) / 20_000
    for sd in (0.5, 1.2):
        log_s = edm.training_sigma(t, sd).log()
        assert float(log_s.mean()) == pytest.approx(-1.2 + math.log(sd / 0.5), abs=1e-3)
        assert float(log_s.std()) == pytest.approx(1.2, abs=5e-3)


# --- the bound through both parameterisations -----------------------------------------


def gaussian_D(x, sigma, s2, cond):
    """An exact Gaussian-posterior denoiser for c ~ N(0, s²), plus a term in cond (so that the
    conditioning path is checked too): any function of (x, σ, cond) is a valid denoiser."""
    s = sigma.view(-1, 1, 1, 1)
    out = s2 / (s**2 + s2) * x
    if cond is not None:
        out = out + 0.1 * cond.mean((1, 2, 3), keepdim=True)
    return out


class ExactNet(nn.Module):
    """Stands in for level k's U-Net of an EDM model: returns u + F* with F* = (D* − c_skip x)/c_out,
    recovering x = u / c_in and σ = exp(γ/2) from its inputs exactly as the model feeds them."""

    def __init__(self, sd, s2):
        super().__init__()
        self.sd, self.s2 = sd, s2

    def forward(self, u, gamma, cond, extra):
        sigma = (gamma / 2).exp()
        c_skip, c_out, c_in, _ = edm.preconditioning(sigma.view(-1, 1, 1, 1), self.sd)
        x = u / c_in
        return u + (gaussian_D(x, sigma, self.s2, cond) - c_skip * x) / c_out


@pytest.mark.parametrize("name,levels", [("vdm", 1), ("w-pcdm", 2), ("lp-pcdm", 2), ("lift-pcdm", 2)])
def test_exact_denoiser_gives_the_same_bound_through_both_parameterisations(name, levels):
    model = make(name, levels)
    S = len(model.level_shapes)
    s2 = [0.2 + 0.3 * k for k in range(S)]
    for k in range(S):
        model.nets[k] = ExactNet(model.config.sigma_data[k], s2[k])

    def eps_oracle(k, z, gamma, cond):  # the same denoiser as a noise prediction
        alpha, sigma_t = (v.view(-1, 1, 1, 1) for v in alpha_sigma(gamma))
        x, s = z / alpha, sigma_t / alpha
        return (x - gaussian_D(x, s.flatten(), s2[k], cond)) / s

    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (64, 1, 4, 4), generator=g)
    noise = Noise.draw(x.shape, S, generator=g, dtype=DT)
    for steps in (None, 10):
        b_edm = model.nelbo(x, steps=steps, noise=noise)  # through PCDM.eps_hat's EDM path
        b_eps = model.nelbo(x, steps=steps, noise=noise, denoiser=eps_oracle)
        torch.testing.assert_close(b_edm.per_level, b_eps.per_level, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(b_edm.total, b_eps.total, rtol=1e-10, atol=1e-9)
        assert float(b_edm.diffusion.abs().min()) > 0  # the terms compared are not empty


# --- Heun sampling ------------------------------------------------------------------


def gaussian_eps(mu, s2, count):
    """ε̂ of the exact denoiser of a level ~ N(μ, s²) per coordinate (in its subspace)."""

    def denoiser(k, z, gamma, cond):
        count[0] += 1
        alpha, sigma_t = (v.view(-1, 1, 1, 1) for v in alpha_sigma(gamma))
        x, s = z / alpha, sigma_t / alpha
        D = mu[k] + s2[k] / (s**2 + s2[k]) * (x - mu[k])
        return (x - D) / s

    return denoiser


@pytest.mark.parametrize("churn", [0.0, 20.0])
@pytest.mark.parametrize("name,levels", [("vdm", 1), ("lp-pcdm", 2)])
def test_heun_reaches_the_mean_and_variance_of_a_gaussian_level(name, levels, churn):
    # γ(1) = 12: σ_max ≈ 403, so the N(0, I) prior's mismatch with N(μ, s² + σ_max²) is < 1e-3 of s
    model = make(name, levels, objective="elbo", gamma_max=12.0)
    sigma_min = math.exp(-13.3 / 2)
    mu, s2 = [0.7, 0.0], [0.25, 0.09]  # the lp detail level lives in range(I − P): mean 0
    n, steps = 3000, 128  # at EDM's 18–24 steps a Gaussian's variance is off by ~10 % (see below)
    g = torch.Generator().manual_seed(5)
    for k in range(len(model.level_shapes)):
        count = [0]
        z0 = edm.heun_level(model, k, n, None, steps, churn, g, denoiser=gaussian_eps(mu, s2, count))
        assert count[0] == edm.evaluations_per_level("heun", steps) == 2 * (steps - 1)
        x = z0 * math.sqrt(1 + sigma_min**2)  # back to VE units
        torch.testing.assert_close(model.map.project(k, x), x)  # stays in the level's subspace
        nk = model.level_dims[k]
        mean = float(x.sum() / x.numel()) if k == 0 else 0.0
        var = float((x - mu[k]).pow(2).sum()) / (n * nk)
        want = s2[k] + sigma_min**2
        se_var = want * math.sqrt(2 / (n * nk))
        assert abs(var - want) < 5 * se_var, (k, var, want)
        if k == 0:
            assert abs(mean - mu[0]) < 5 * math.sqrt(want / (n * nk)), mean


def test_heun_is_second_order():
    """The deterministic sampler's error on a Gaussian level falls 4× per halving of the step
    (the same start, so no Monte Carlo noise): a Heun step, not an Euler one."""
    model = make("vdm", 1, objective="elbo", gamma_max=12.0)

    def final(steps):
        g = torch.Generator().manual_seed(7)
        return edm.heun_level(model, 0, 200, None, steps, 0.0, g, denoiser=gaussian_eps([0.7], [0.25], [0]))

    exact = final(1024)
    errors = [float((final(s) - exact).abs().max()) for s in (25, 49, 97)]  # 24, 48, 96 intervals
    for coarse, fine in zip(errors, errors[1:]):
        assert 3.3 < coarse / fine < 4.7, errors


def test_heun_sample_of_an_edm_model_is_uint8_images_with_previews():
    model = make("w-pcdm", 2, shape=(1, 8, 8))
    g = torch.Generator().manual_seed(0)
    x, previews = edm.sample_heun(model, 3, steps=4, generator=g)
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.uint8
    assert [tuple(p.shape[2:]) for p in previews] == [(4, 4), (8, 8)]
    y = edm.draw(model, 5, "heun", steps=3, batch=2)
    assert y.shape == (5, 1, 8, 8)
    with pytest.raises(ValueError, match="churn applies"):
        edm.draw(model, 2, "ancestral", steps=3, churn=1.0)
    with pytest.raises(ValueError, match="ancestral or heun"):
        edm.draw(model, 2, "euler", steps=3)


# --- configs and σ_data ---------------------------------------------------------------


def test_config_keeps_elbo_fingerprints_and_checks_edm_options():
    d = ModelConfig(model="w-pcdm").to_dict()
    assert "objective" not in d and "sigma_data" not in d  # runs from before hash as before
    e = ModelConfig(model="lp-pcdm", objective="edm", sigma_data=[0.5, 0.2]).to_dict()
    assert e["objective"] == "edm" and e["sigma_data"] == (0.5, 0.2)
    assert ModelConfig.from_dict(e).sigma_data == (0.5, 0.2)
    with pytest.raises(ValueError, match="objective must be"):
        ModelConfig(objective="score")
    with pytest.raises(ValueError, match="needs objective edm"):
        ModelConfig(sigma_data=(0.5, 0.5))
    with pytest.raises(ValueError, match="lattice_posterior"):
        ModelConfig(model="vdm", objective="edm", lattice_posterior=True)
    with pytest.raises(ValueError, match="2 levels"):
        PCDM(ModelConfig(model="w-pcdm", image_shape=(1, 4, 4), width=8, depth=1, objective="edm",
                         sigma_data=(0.5,)))  # fmt: skip
    model = PCDM(ModelConfig(model="vdm", image_shape=(1, 4, 4), width=8, depth=1, objective="edm"))
    with pytest.raises(ValueError, match="no σ_data"):
        model.nelbo(torch.zeros(1, 1, 4, 4, dtype=torch.long))


def test_measure_sigma_data_is_each_levels_rms():
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (50, 1, 8, 8), generator=g)
    model = make("w-pcdm", 2, shape=(1, 8, 8))
    sd = edm.measure_sigma_data(model, x, batch=16)
    f = (2 * (x.double() + 0.5) / 256 - 1).numpy()
    a, b, c, d = f[..., 0::2, 0::2], f[..., 0::2, 1::2], f[..., 1::2, 0::2], f[..., 1::2, 1::2]
    ll = (a + b + c + d) / 2
    details = np.stack([(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2])
    assert sd[0] == pytest.approx(math.sqrt((ll**2).mean()), rel=1e-12)
    assert sd[1] == pytest.approx(math.sqrt((details**2).mean()), rel=1e-12)
    flat = torch.full((4, 1, 8, 8), 128)  # constant images: no detail at all
    with pytest.raises(ValueError, match="level 2 .* zero"):
        edm.measure_sigma_data(model, flat)


def test_edm_training_loss_decreases_on_a_fixed_batch():
    """The loss is differentiable end to end and the preconditioned net can fit it."""
    model = make("lp-pcdm", 2, shape=(1, 8, 8)).float()
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 256, (16, 1, 8, 8), generator=g)
    noise = Noise.draw(x.shape, 2, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = model(x, noise=noise)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses[::5]


# --- the command line -----------------------------------------------------------------


def test_cli_train_edm_then_heun_sample_and_eval(tmp_path, capsys):
    import json

    from pcdm.cli import main

    run = tmp_path / "run"
    argv = ["train", "--model", "w-pcdm", "--data", "digits", "--objective", "edm", "--out", str(run),
            "--steps", "6", "--preset", "tiny", "--sample-steps", "0", "--log-every", "3"]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads((run / "config.json").read_text())["model"]
    assert cfg["objective"] == "edm" and len(cfg["sigma_data"]) == 2 and min(cfg["sigma_data"]) > 0
    capsys.readouterr()
    grid, npz = tmp_path / "s.png", tmp_path / "s.npz"
    argv = [
        "sample",
        str(run),
        "-n",
        "5",
        "--sampler",
        "heun",
        "--steps",
        "4",
        "--churn",
        "1",
        "--out",
        str(grid),
    ]
    assert main([*argv, "--npz", str(npz)]) == 0
    assert grid.is_file() and np.load(npz)["images"].shape == (5, 8, 8, 1) and int(np.load(npz)["K"]) == 17
    assert main(["eval", str(run), "--limit", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(out["bpd"]) and out["bpd"] > 0  # the honest bound of an EDM-trained model
    assert main(["sample", str(run), "-n", "2", "--sampler", "heun", "--steps", "1", "--out", str(grid)]) == 2
    assert "at least 2" in capsys.readouterr().err
    assert main(["sample", str(run), "-n", "2", "--churn", "1", "--out", str(grid)]) == 2
    assert "--churn applies" in capsys.readouterr().err
