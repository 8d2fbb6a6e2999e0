"""Importance sampling of diffusion times: unbiased for any learned density, weights
bounded, identical to uniform sampling until it has learned, and resumable exactly."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from pcdm import train as train_module
from pcdm.cli import main
from pcdm.model import PCDM, ModelConfig, Noise
from pcdm.timesampling import TimeSampler


def learned_sampler(levels=2, bins=16, seed=0) -> TimeSampler:
    s = TimeSampler(levels, bins=bins, warmup=1)
    g = torch.Generator().manual_seed(seed)
    s.second_moment = torch.rand(levels, bins, generator=g, dtype=torch.float64) ** 4 * 100
    s.updates = 5
    return s


def test_weighted_estimate_is_unbiased_for_any_learned_density():
    s = learned_sampler()
    u = torch.rand(2, 400_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t, w = s.transform(u)
    assert (t >= 0).all() and (t < 1).all()
    assert w.max() <= 1 / s.floor + 1e-12  # the uniform mixture bounds every weight
    for f, integral in ((lambda t: torch.exp(3 * t), (math.e**3 - 1) / 3), (lambda t: t**2, 1 / 3)):
        est = (w * f(t)).mean(1)
        se = (w * f(t)).std(1) / math.sqrt(u.shape[1])
        assert (est - integral).abs().max() < 4 * se.max(), (est, integral)
    # the draws follow the density: the share of each bin is its probability
    q = s.probabilities()
    share = (
        torch.stack([torch.bincount((t[k] * s.bins).long(), minlength=s.bins) for k in range(2)]) / u.shape[1]
    )
    torch.testing.assert_close(share.double(), q, atol=3e-3, rtol=0)
    assert not torch.allclose(q, torch.full_like(q, 1 / s.bins))  # really non-uniform


def test_uniform_until_warm_and_statistics_by_bin():
    s = TimeSampler(2, bins=4, warmup=3)
    u = torch.rand(2, 10, dtype=torch.float64)
    t, w = s.transform(u)
    torch.testing.assert_close(t, u)
    assert (w == 1).all()
    times = torch.tensor([[0.1, 0.2, 0.9], [0.5, 0.55, 0.6]], dtype=torch.float64)
    values = torch.tensor([[1.0, 3.0, 2.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    sums, counts = s.statistics(times, values)
    assert sums.tolist() == [[10.0, 0.0, 0.0, 4.0], [0.0, 0.0, 3.0, 0.0]]
    assert counts.tolist() == [[2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 3.0, 0.0]]
    s.update(sums, counts)
    assert s.second_moment[0].tolist() == [5.0, 1.0, 1.0, 4.0]  # unseen bins keep their prior
    again = TimeSampler(2, bins=4, warmup=3)
    again.load_state_dict(s.state_dict())
    assert torch.equal(again.second_moment, s.second_moment) and again.updates == s.updates


def test_unit_weights_give_the_uniform_bound():
    torch.manual_seed(0)
    model = PCDM(ModelConfig(model="w-pcdm", levels=2, image_shape=(1, 8, 8), K=17, width=8, depth=1))
    x = torch.randint(0, 17, (4, 1, 8, 8))
    noise = Noise.draw(x.shape, 2, torch.Generator().manual_seed(3))
    plain = model.nelbo(x, noise=noise).total
    ones = model.nelbo(x, noise=Noise(noise.eps0, noise.eps, noise.t, torch.ones_like(noise.t))).total
    torch.testing.assert_close(plain, ones, rtol=0, atol=0)
    doubled = model.nelbo(x, noise=Noise(noise.eps0, noise.eps, noise.t, 2 * torch.ones_like(noise.t)))
    torch.testing.assert_close(doubled.diffusion, 2 * model.nelbo(x, noise=noise).diffusion)


def test_training_with_importance_sampling_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "TimeSampler", lambda levels: TimeSampler(levels, warmup=2))
    args = ["--data", "digits", "--preset", "tiny", "--model", "w-pcdm", "--t-sampling", "importance"]
    args += ["--log-every", "1", "--sample-steps", "0", "--device", "cpu", "--ckpt-every", "3"]
    assert main(["train", *args, "--out", str(tmp_path / "a"), "--steps", "6"]) == 0
    assert main(["train", *args, "--out", str(tmp_path / "b"), "--steps", "3"]) == 0
    assert main(["train", "--resume", str(tmp_path / "b"), "--steps", "6"]) == 0
    a, b = (load_file(tmp_path / r / "model.safetensors") for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = (tmp_path / "a/ckpt/step_00000006/state.json").read_text()
    assert state == (tmp_path / "b/ckpt/step_00000006/state.json").read_text()
    assert '"time_sampler"' in state


def test_unknown_t_sampling_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", "digits", "--out", str(tmp_path / "r"), "--steps", "1", "--t-sampling", "x"])
    assert "invalid choice" in capsys.readouterr().err
