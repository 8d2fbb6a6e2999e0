"""The probability-flow ODE likelihood (pcdm.ode, docs/math.md §12) against exact answers.

* Gaussian data with the exact ε̂: the PF-ODE flow of a Gaussian is affine, so
  log p_ODE(z₀) = log N(z₁; 0, I) + ½ log det(V₁ V₀⁻¹) with z₁ = α₁ m + V₁^½ V₀^−½ (z₀ − α₀ m),
  V_t = α_t² Σ + σ_t² I: a closed form the solver must reach to its tolerance — for vdm and,
  level by level with the detail level conditioned on the coarse z₀, for a two-level Haar
  model (and the chain rule: the two levels add up to the joint Gaussian density of z₀).
* Discrete data with the Bayes-optimal ε̂ of tests/test_oracle.py (4×4, K = 4): the
  dequantized ODE bound is an upper bound on −log P(x) and within a stated margin of it.
* The divergence: the exact trace over a level's subspace equals tr(Π J Π) of the full
  Jacobian; Hutchinson's estimate averaged over all sign vectors is exact, its random
  probes are unbiased, and a seed fixes the result.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_oracle import PI, Oracle, exact_nll, make_model, sample_x

from pcdm import PCDM, ModelConfig
from pcdm.cli import main
from pcdm.model import to_bpd
from pcdm.ode import (
    ODEOptions,
    level_log_density,
    log_density,
    ode_bound,
    probe_trace,
    rademacher_probes,
    subspace_basis,
)
from pcdm.schedules import alpha_sigma

DT = torch.float64
TIGHT = ODEOptions(rtol=1e-8, atol=1e-8)


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian_model(name: str, levels: int, gamma_max: float = 8.0) -> PCDM:
    cfg = ModelConfig(
        model=name,
        levels=levels,
        image_shape=(1, 4, 4),
        K=4,
        width=8,
        depth=1,
        attention=False,
        schedule="fixed",
        gamma_min=-13.3,
        gamma_max=gamma_max,
    )
    return PCDM(cfg).double()


def ends(model):
    a0, s0 = alpha_sigma(model.schedule(torch.zeros((), dtype=DT)))
    a1, s1 = alpha_sigma(model.schedule(torch.ones((), dtype=DT)))
    return a0, s0, a1, s1


def affine_flow_logp(z0, m, cov, a0, s0, a1, s1):
    """Closed-form log p_ODE for z₀ ~ N(α₀ m, α₀² Σ + σ₀² I) in the last axis (…, n)."""
    lam, Q = torch.linalg.eigh(cov)
    v0, v1 = a0**2 * lam + s0**2, a1**2 * lam + s1**2
    u = ((z0 - a0 * m)[..., None, :] @ Q)[..., 0, :]  # eigen-coordinates
    z1 = a1 * m + ((u * (v1 / v0).sqrt())[..., None, :] @ Q.mT)[..., 0, :]
    n = z0.shape[-1]
    return -0.5 * (n * math.log(2 * math.pi) + z1.pow(2).sum(-1)) + 0.5 * torch.log(v1 / v0).sum(-1), z1


def test_gaussian_level_vdm_matches_the_closed_form():
    model = gaussian_model("vdm", 1)
    gen = torch.Generator().manual_seed(0)
    mu = 0.5 * torch.randn(1, 1, 4, 4, generator=gen, dtype=DT)
    s = 0.1 + 0.5 * torch.rand(1, 1, 4, 4, generator=gen, dtype=DT)

    def exact_eps(k, z, gamma, cond):  # −σ ∇log p_t = σ (z − α μ) / (α² s² + σ²)
        a, sg = (v.view(-1, 1, 1, 1) for v in alpha_sigma(gamma))
        return sg * (z - a * mu) / (a**2 * s**2 + sg**2)

    a0, s0, a1, s1 = ends(model)
    n = 40
    c = mu + s * torch.randn(n, 1, 4, 4, generator=gen, dtype=DT)
    z0 = a0 * c + s0 * torch.randn(n, 1, 4, 4, generator=gen, dtype=DT)
    var = s.flatten().pow(2).reshape(16, 1, 1)  # 16 independent 1-d flows
    want, z1 = affine_flow_logp(z0.reshape(n, 16, 1), mu.reshape(16, 1), var, a0, s0, a1, s1)
    want, z1 = want.sum(1), z1.reshape(n, 1, 4, 4)
    got = level_log_density(model, 0, z0, None, TIGHT, exact_eps)
    assert (got.log_p - want).abs().max() < 1e-5  # nats per image, at rtol = atol = 1e-8
    assert (got.z1 - z1).abs().max() < 1e-6
    loose = level_log_density(model, 0, z0, None, ODEOptions(rtol=1e-4, atol=1e-4), exact_eps)
    assert loose.nfe < got.nfe and (loose.log_p - want).abs().max() < 1e-2  # tolerance buys accuracy


def test_two_level_haar_gaussian_chain_rule():
    """c¹ ~ N(μ₁, s₁²) per site; the three detail bands c² = b c¹ + μ₂ + s₂ ξ. Given its
    conditioning z₀¹ = α₀ c¹ + σ₀ η the detail level is Gaussian with mean b m₁ + μ₂ and
    covariance diag(s₂²) + r b bᵀ (m₁, r: the posterior of c¹), the same at every site."""
    model = gaussian_model("w-pcdm", 2, gamma_max=20.0)  # α₁ = 5e−5: the N(0, I) prior is ~exact
    gen = torch.Generator().manual_seed(1)
    mu1, s1_ = torch.tensor(0.3, dtype=DT), torch.tensor(0.6, dtype=DT)
    b = torch.tensor([0.8, -0.5, 0.3], dtype=DT)
    mu2 = torch.tensor([0.1, 0.0, -0.2], dtype=DT)
    s2 = torch.tensor([0.2, 0.4, 0.3], dtype=DT)
    a0, s0, a1, s1 = ends(model)
    r = 1 / (1 / s1_**2 + a0**2 / s0**2)  # Var(c¹ | z₀¹)
    cov2 = s2.pow(2).diag() + r * torch.outer(b, b)

    def detail_mean(cond):  # (N, 1, 2, 2) → (N, 2, 2, 3)
        m1 = r * (mu1 / s1_**2 + a0 * cond[:, 0] / s0**2)
        return m1[..., None] * b + mu2

    def exact_eps(k, z, gamma, cond):
        a, sg = alpha_sigma(gamma)
        if k == 0:
            a, sg = a.view(-1, 1, 1, 1), sg.view(-1, 1, 1, 1)
            return sg * (z - a * mu1) / (a**2 * s1_**2 + sg**2)
        a, sg = a.view(-1, 1, 1, 1), sg.view(-1, 1, 1, 1)
        v = a[..., None] ** 2 * cov2 + sg[..., None] ** 2 * torch.eye(3, dtype=DT)  # (N, 1, 1, 3, 3)
        d = z.permute(0, 2, 3, 1) - a * detail_mean(cond)
        return (sg * torch.linalg.solve(v, d[..., None])[..., 0]).permute(0, 3, 1, 2)

    n = 30
    c1 = mu1 + s1_ * torch.randn(n, 1, 2, 2, generator=gen, dtype=DT)
    c2 = (c1.permute(0, 2, 3, 1) * b + mu2 + s2 * torch.randn(n, 2, 2, 3, generator=gen, dtype=DT)).permute(
        0, 3, 1, 2
    )
    f = model.map.reconstruct([c1, c2])
    z0 = a0 * f + s0 * torch.randn(f.shape, generator=gen, dtype=DT)  # pixel noise: iid in Haar coordinates
    levels = log_density(model, z0, TIGHT, exact_eps)
    zs = model.map(z0)
    var1 = torch.full((1, 1), float(s1_**2), dtype=DT)
    want0, _ = affine_flow_logp(zs[0].reshape(n, 4, 1), mu1.reshape(1, 1), var1, a0, s0, a1, s1)
    want1, _ = affine_flow_logp(zs[1].permute(0, 2, 3, 1), detail_mean(zs[0]), cov2, a0, s0, a1, s1)
    assert (levels[0].log_p - want0.sum(1)).abs().max() < 1e-5
    assert (levels[1].log_p - want1.flatten(1).sum(1)).abs().max() < 1e-5  # conditioned on z₀¹
    # The chain rule: both levels together are the joint density of z₀ (in Haar coordinates,
    # orthonormal: no Jacobian), up to the prior's mismatch at t = 1: O(α₁ ‖m‖ ‖z₁‖) per image.
    mean = torch.cat([mu1.reshape(1), b * mu1 + mu2])  # one site: (c¹, c²) jointly Gaussian
    joint = torch.zeros(4, 4, dtype=DT)
    joint[0, 0], joint[0, 1:], joint[1:, 0] = s1_**2, b * s1_**2, b * s1_**2
    joint[1:, 1:] = s2.pow(2).diag() + s1_**2 * torch.outer(b, b)
    site = torch.cat([zs[0].permute(0, 2, 3, 1), zs[1].permute(0, 2, 3, 1)], -1)  # (N, 2, 2, 4)
    cov0 = a0**2 * joint + s0**2 * torch.eye(4, dtype=DT)
    logp = torch.distributions.MultivariateNormal(a0 * mean, cov0).log_prob(site).flatten(1).sum(1)
    total = levels[0].log_p + levels[1].log_p
    assert (total - logp).abs().max() < 1e-3
    # a level conditioned on the wrong thing (the clean c¹) is visibly off: the test can fail
    wrong = level_log_density(model, 1, zs[1], c1, ODEOptions(rtol=1e-6, atol=1e-6), exact_eps)
    assert (wrong.log_p - levels[1].log_p).abs().max() > 1e-2


def test_discrete_bound_with_the_exact_model_vdm():
    """4×4, K = 4, the Bayes-optimal ε̂ of tests/test_oracle.py, exact trace. The bound is
    E_q[−log p(x|z₀) − log p_ODE(z₀) + log q(z₀|x)] = −log P(x) + E KL(q(z₀|x) ‖ p(z₀|x)-ish)
    + the prior's mismatch at t = 1 + solver error; with σ₀/α₀ ≈ 1.3e−3 against the half bin
    1/K = 0.25 the first is ~0 and the second ≲ ½ α₁² E c² ≤ 3e−4 nats/dim (γ_max = 8). Stated
    margin: bound − (−log P(x)) ∈ [−3 s.e., 1e−3] nats/dim on average (measured: 7e−5 ± 8e−5)."""
    model = make_model("vdm", 1)
    gen = torch.Generator().manual_seed(1)
    x = sample_x(PI, 150, gen)
    b = ode_bound(model, x, ODEOptions(rtol=1e-6, atol=1e-6), denoiser=Oracle(model, PI), generator=gen)
    d = x[0].numel()
    gap = (b.total - exact_nll(PI, x)) / d
    mean, se = float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))
    print(f"vdm: ODE bound − (−log P(x)) = {mean:+.5f} ± {se:.5f} nats/dim, NFE {b.nfe}")
    assert -3 * se <= mean <= 1e-3 and se < 2e-4
    assert b.recon.abs().max() < 1e-6  # the decoder is certain at γ₀ = −13.3
    # the dequantization term: log q(z₀|x) = −½ d log(2π e σ₀²) on average, in the same nats
    _, s0, _, _ = ends(model)
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * s0**2)
    assert abs(float(b.log_q.mean()) + entropy) < 3 * math.sqrt(d / 2 / 150)  # Var log q = d/2
    bpd = b.bpd()
    torch.testing.assert_close(bpd["bpd"], to_bpd(b.total, d))
    torch.testing.assert_close(bpd["bpd"], bpd["bpd_ode"] + bpd["bpd_dequant"] + bpd["bpd_recon"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["w-pcdm", "lp-pcdm"])
def test_discrete_bound_with_the_exact_model_two_levels(name):
    """The chain over levels with the exact oracle: each level's ODE term (with its own
    dequantization) is the exact conditional information of that level, and the total is
    −log P(x) within the margin above. ~60 s each."""
    from test_oracle import octave_logp

    model = make_model(name, 2)
    gen = torch.Generator().manual_seed(2)
    x = sample_x(PI, 200, gen)
    b = ode_bound(model, x, ODEOptions(rtol=1e-6, atol=1e-6), denoiser=Oracle(model, PI), generator=gen)
    d = x[0].numel()
    gap = (b.total - exact_nll(PI, x)) / d
    mean, se = float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))
    assert -3 * se <= mean <= 1e-3
    lp1 = octave_logp(PI, x, 1)
    refs = [-lp1, exact_nll(PI, x) + lp1]  # −log P(y⁽¹⁾), −log P(x) + log P(y⁽¹⁾)
    for k in range(2):
        g = (b.per_level[:, k] + (b.recon if k == 1 else 0) - refs[k]) / d
        assert abs(float(g.mean())) <= 4 * float(g.std() / math.sqrt(len(g))) + 1e-3


@pytest.mark.slow
def test_discrete_bound_with_the_exact_model_lift():
    """lift-pcdm: every level its own discrete image with its own dequantization and decoder;
    with the exact oracle the chain is −log P(x) (the lifting is a bijection)."""
    from test_oracle import LiftOracle

    model = make_model("lift-pcdm", 2)
    gen = torch.Generator().manual_seed(3)
    x = sample_x(PI, 100, gen)
    b = ode_bound(model, x, ODEOptions(rtol=1e-6, atol=1e-6), denoiser=LiftOracle(model, PI), generator=gen)
    gap = (b.total - exact_nll(PI, x)) / x[0].numel()
    mean, se = float(gap.mean()), float(gap.std() / math.sqrt(len(gap)))
    print(f"lift-pcdm: ODE bound − (−log P(x)) = {mean:+.5f} ± {se:.5f} nats/dim, NFE {b.nfe}")
    assert -3 * se <= mean <= 1e-3


# --- the divergence ---------------------------------------------------------------------


def scrambled_lp_model(scale: float = 0.3) -> PCDM:
    """A small network with a non-trivial Jacobian: lp-pcdm S = 2 on 4×4 (the detail level
    lives in a 12-dimensional subspace of its 16 pixels), every weight redrawn."""
    torch.manual_seed(0)
    model = gaussian_model("lp-pcdm", 2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn_like(p))
    return model.eval()


def detail_level(model, n):
    gen = torch.Generator().manual_seed(4)
    z = model.map.project(1, torch.randn(n, 1, 4, 4, generator=gen, dtype=DT))
    cond = torch.randn(n, 1, 2, 2, generator=gen, dtype=DT).repeat_interleave(2, -1).repeat_interleave(2, -2)
    gamma = torch.tensor(-2.0, dtype=DT)

    def fn(zr, copies):
        return model.eps_hat(1, zr, gamma.expand(zr.shape[0]), cond.repeat(copies, 1, 1, 1))

    fn.cond, fn.gamma = cond, gamma
    return z, fn


def test_exact_trace_is_the_trace_over_the_subspace():
    model = scrambled_lp_model()
    z, fn = detail_level(model, 2)
    _, tr = probe_trace(fn, z, subspace_basis(model, 1, 2, DT, "cpu"))
    eye = torch.eye(16, dtype=DT).reshape(16, 1, 1, 4, 4)
    proj = model.map.project(1, eye.reshape(16, 1, 4, 4)).reshape(16, 16)  # Π (symmetric)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v, c=fn.cond[i : i + 1]: model.eps_hat(1, v, fn.gamma.reshape(1), c).flatten(),
            z[i : i + 1],
        )
        want = torch.trace(proj @ jac.reshape(16, 16) @ proj)
        torch.testing.assert_close(tr[i], want, rtol=1e-10, atol=1e-10)
    # ¾ of the pixels: 12 probes, and the −σ z part of the drift has divergence −12 σ, not −16 σ
    assert model.level_dims[1] == 12 and subspace_basis(model, 1, 2, DT, "cpu").shape[0] == 12


def test_hutchinson_over_all_sign_vectors_is_exact_and_random_probes_are_unbiased():
    model = scrambled_lp_model()
    z, fn = detail_level(model, 1)
    _, exact = probe_trace(fn, z, subspace_basis(model, 1, 1, DT, "cpu"))
    # E over u uniform on {±1}¹² is a finite average: all 4096 sign vectors give it exactly
    signs = torch.cartesian_prod(*[torch.tensor([-1.0, 1.0], dtype=DT)] * 12)
    probes = model.map.from_coords(1, signs, (1, 4, 4))[:, None] / math.sqrt(len(signs))
    _, all_signs = probe_trace(fn, z, probes)
    torch.testing.assert_close(all_signs, exact, rtol=1e-10, atol=1e-10)
    # random probes: one estimate per copy of z (the copies are independent images)
    many = 3000
    zs = z.expand(many, -1, -1, -1)
    v = rademacher_probes(model, 1, many, 1, torch.Generator().manual_seed(5), DT, "cpu")
    _, est = probe_trace(lambda zr, copies: fn(zr, many * copies), zs, v)
    mean, se = float(est.mean()), float(est.std() / math.sqrt(many))
    assert se > 1e-3, "the Jacobian must be non-diagonal in the probes' basis for the test to mean anything"
    assert abs(mean - float(exact)) < 4 * se
    assert torch.allclose(model.map.project(1, v[0]), v[0])  # the probes live in the subspace


def test_hutchinson_is_deterministic_given_a_seed():
    model = scrambled_lp_model(0.05)  # a gentler network: a few dozen steps
    z, _ = detail_level(model, 3)
    cond = torch.zeros(3, 1, 4, 4, dtype=DT)
    opts = ODEOptions(rtol=1e-2, atol=1e-2, hutchinson=2)
    runs = [
        level_log_density(model, 1, z, cond, opts, generator=torch.Generator().manual_seed(s)).log_p
        for s in (7, 7, 8)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert (
        opts.probes_for(12) == 2 and ODEOptions().probes_for(12) is None and ODEOptions().probes_for(65) == 1
    )


# --- the command line ---------------------------------------------------------------------


TINY = ["--preset", "tiny", "--sample-steps", "0", "--log-every", "5", "--steps", "1"]
ODE_KEYS = {"bpd", "bpd_se", "elbo_bpd", "elbo_bpd_se", "ode_minus_elbo", "bpd_ode", "bpd_dequant"}
ODE_KEYS |= {"bpd_recon", "bpd_level1", "bpd_level2", "elbo_bpd_level1", "nfe", "nfe_level1", "seconds"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs on digits (8×8, K = 17): one continuous map, one with discrete levels."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: set before the per-test fixture runs
    out = {}
    for name in ("w-pcdm", "lift-pcdm"):
        path = tmp_path_factory.mktemp("ode") / name
        assert main(["train", "--model", name, "--data", "digits", "--out", str(path), *TINY]) == 0
        out[name] = path
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", ["w-pcdm", "lift-pcdm"])
def test_cli_eval_ode(runs, name, capsys):
    args = [
        "eval",
        str(runs[name]),
        "--ode",
        "--limit",
        "6",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
        "--no-compare",
    ]
    capsys.readouterr()
    assert main([*args, "--hutchinson", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert ODE_KEYS <= set(out) and out["n_images"] == 6
    assert out["bpd"] == pytest.approx(out["bpd_ode"] + out["bpd_dequant"] + out["bpd_recon"], rel=1e-5)
    assert out["nfe"] > 0 and np.isfinite(out["elbo_bpd"])
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "ODE bound" in text and "ELBO" in text and "function evaluations" in text


def test_cli_eval_ode_errors(runs, capsys):
    run = str(runs["w-pcdm"])
    for extra in (["--hutchinson", "1"], ["--ode", "--hutchinson", "0"], ["--ode", "--rtol", "0"]):
        capsys.readouterr()
        assert main(["eval", run, "--limit", "2", "--no-compare", *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "error" in err
