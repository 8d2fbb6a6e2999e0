"""Closed-form lattice posteriors (pcdm.lattice) and the model option that adds them to ε̂.

The posterior means are checked against brute-force enumeration of integer pixel blocks,
and the model's ε near t = 0 against the true noise of real images' Haar coefficients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcdm import codec, data
from pcdm.checkpoint import fingerprint
from pcdm.data import to_nchw
from pcdm.lattice import TAU_MAX, grid_mean, haar_detail_mean
from pcdm.model import PCDM, ModelConfig, Noise
from pcdm.schedules import alpha_sigma

HADAMARD = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.2, 0.7, 1.5, 2.9])
def test_haar_detail_mean_is_the_posterior_over_pixel_blocks(tau):
    gen = torch.Generator().manual_seed(int(tau * 10))
    r = 9  # blocks within ±9 of the true one: weight beyond is below e⁻⁴⁰
    offsets = torch.stack(
        torch.meshgrid(*[torch.arange(-r, r + 1.0, dtype=torch.float64)] * 4, indexing="ij"), -1
    )
    offsets = offsets.reshape(-1, 4)
    for _ in range(3):
        v = torch.randint(0, 256, (4,), generator=gen).double()
        tau_p = torch.tensor(0.4, dtype=torch.float64)
        tau_t = torch.tensor(tau, dtype=torch.float64)
        s = HADAMARD @ v
        n = s + torch.cat([tau_p * torch.randn(1, generator=gen, dtype=torch.float64),
                           tau_t * torch.randn(3, generator=gen, dtype=torch.float64)])  # fmt: skip
        blocks = (v + offsets) @ HADAMARD.T  # every candidate (s₀, s₁, s₂, s₃) near the truth
        logw = -0.5 * ((n[0] - blocks[:, 0]) / tau_p) ** 2 - 0.5 * (
            ((n[1:] - blocks[:, 1:]) / tau_t) ** 2
        ).sum(1)
        brute = (torch.softmax(logw, 0)[:, None] * blocks[:, 1:]).sum(0)
        ours = haar_detail_mean(n[:1].view(1, 1, 1, 1), tau_p.view(1, 1, 1, 1), n[1:].view(1, 3, 1, 1),
                                tau_t.view(1, 1, 1, 1))  # fmt: skip
        torch.testing.assert_close(ours.flatten(), brute, atol=1e-7, rtol=0)  # reach 7τ: e⁻²⁴ tails


def test_grid_mean_and_the_reach():
    n = torch.tensor([0.3, 5.5, -2.2, 100.49], dtype=torch.float64)
    m = torch.arange(-60, 161, dtype=torch.float64)
    for tau in (0.1, 0.5, 1.0, 2.5):
        t = torch.tensor(tau, dtype=torch.float64)
        brute = (torch.softmax(-0.5 * ((n[:, None] - m) / t) ** 2, 1) * m).sum(1)
        torch.testing.assert_close(grid_mean(n, t), brute, atol=1e-9, rtol=0)
    assert torch.equal(grid_mean(n, torch.tensor(TAU_MAX + 0.1, dtype=torch.float64)), n)
    big = torch.tensor(TAU_MAX * 1.5, dtype=torch.float64).view(1, 1, 1, 1)
    d = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    assert torch.equal(
        haar_detail_mean(torch.zeros(1, 1, 2, 2, dtype=torch.float64), big * 0 + 0.3, d, big), d
    )


def _config(model: str, **kw) -> ModelConfig:
    args = dict(
        model=model, image_shape=(1, 28, 28), width=8, depth=1, attention=False, lattice_posterior=True
    )
    return ModelConfig(**{**args, **kw})


@pytest.mark.parametrize(
    "model_name, levels", [("vdm", 1), ("w-pcdm", 2), ("w-pcdm", 3), ("lp-pcdm", 2), ("lp-pcdm", 3)]
)
def test_lattice_eps_is_the_true_noise_near_t0(model_name, levels):
    """Real images, tiny noise on every level (γ ≈ −20: τ ≈ 0.006 lattice steps): the flat
    lattice posterior recovers each level's clean coefficients, so its ε is the true ε."""
    model = PCDM(_config(model_name, levels=levels, schedule="fixed", gamma_min=-20.0)).double()
    x = to_nchw(data.load("fashion-mnist", split="test", limit=8).images)
    f = model.pixels_to_f(x)
    alpha_0, sigma_0 = alpha_sigma(model.schedule(torch.zeros((), dtype=torch.float64)))
    conds = model.map(alpha_0 * f + sigma_0 * torch.randn_like(f))
    gamma = torch.full((len(x),), -19.0, dtype=torch.float64)
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in alpha_sigma(gamma))
    for k, c in enumerate(model.map(f)):
        eps = model.map.project(k, torch.randn_like(c))  # the level's noise lives in its subspace
        got = model.lattice_eps(k, alpha * c + sigma * eps, gamma, model.map.condition(conds, k))
        torch.testing.assert_close(got, eps, atol=1e-6, rtol=0)
        # Far from t = 0 the lattice is hidden: the term is exactly zero.
        g1 = torch.full((len(x),), 2.0, dtype=torch.float64)
        a1, s1 = (v.view(-1, 1, 1, 1) for v in alpha_sigma(g1))
        assert (
            torch.count_nonzero(model.lattice_eps(k, a1 * c + s1 * eps, g1, model.map.condition(conds, k)))
            == 0
        )


def test_option_round_trips_and_leaves_old_fingerprints_alone():
    images = data.load("fashion-mnist", split="test", limit=6).images
    for name in ("w-pcdm", "vdm", "lp-pcdm"):
        # The default γ(0) = −13.3 and 20 steps: the first steps see the lattice (τ ≈ 0.3).
        model = PCDM(_config(name)).eval()
        enc = codec.encode_images(model, images, steps=20, lanes=4)
        back, _, _ = codec.decode_stream(model, enc.words, 6, 20, 4, enc.n_init, enc.kmin)
        assert np.array_equal(back, images)
        # The option changes the model (ε̂), so the bound: not a no-op.
        torch.manual_seed(0)
        noise = Noise.draw((6, 1, 28, 28), len(model.level_shapes))
        on = model.nelbo(to_nchw(images), noise=noise).total
        model.config.lattice_posterior = False
        off = model.nelbo(to_nchw(images), noise=noise).total
        assert not torch.allclose(on, off)
    # Off (the default) is not written into the config, so runs from before hash as before.
    plain = PCDM(ModelConfig(model="w-pcdm", width=8, depth=1, attention=False))
    assert "lattice_posterior" not in plain.config.to_dict()
    before = fingerprint(plain)
    plain.config.lattice_posterior = True
    assert fingerprint(plain) != before


@pytest.mark.parametrize("model_name, kw", [("w-pcdm", {"wavelet": "db4"}), ("lift-pcdm", {})])
def test_maps_without_a_closed_form_refuse_the_option(model_name, kw):
    with pytest.raises(ValueError, match="closed-form lattice posterior"):
        PCDM(_config(model_name, **kw))


def test_diagnostics_lattice_swap(tmp_path, capsys):
    """benchmarks/diagnostics.py --lattice-swap: paired with the plain bound (a swap below
    every noise level changes nothing, exactly), and a real swap changes the bound."""
    import importlib.util
    import json
    from pathlib import Path

    from pcdm.checkpoint import save_tensors, write_json

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("diagnostics", root / "benchmarks" / "diagnostics.py")
    diagnostics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(diagnostics)
    torch.manual_seed(0)
    model = PCDM(ModelConfig(model="w-pcdm", width=8, depth=1, attention=False))
    run = tmp_path / "run"
    run.mkdir()
    save_tensors(run / "model.safetensors", model.state_dict())
    write_json(run / "config.json", {"model": model.config.to_dict()})
    args = [str(run), "--data", "fashion-mnist", "--limit", "12", "--probe-images", "4"]
    assert diagnostics.main([*args, "--lattice-swap", "1e-9", "1", "--json"]) == 0
    swap = json.loads(capsys.readouterr().out)["lattice_swap"]
    assert swap["tau<=1e-09"]["delta"] == 0 and swap["tau<=1e-09"]["bpd"] == swap["plain"]
    assert swap["tau<=1"]["delta"] != 0 and swap["tau<=1"]["delta_se"] > 0
