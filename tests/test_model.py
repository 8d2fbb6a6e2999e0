"""The model: bound bookkeeping, training signal, input errors, sampling, schedules, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from pcdm import PCDM, ModelConfig, count_parameters, to_bpd
from pcdm.model import Noise
from pcdm.schedules import build_schedule
from pcdm.unet import UNet

MODELS = [
    ("vdm", 1),
    ("c-vdm", 2),
    ("lp-pcdm", 2),
    ("w-pcdm", 2),
    ("w-pcdm", 3),
    ("lp-pcdm", 3),
    ("lift-pcdm", 2),
    ("lift-pcdm", 3),
]
DISCRETE = ("c-vdm", "lift-pcdm")  # every level has its own decoder


def tiny(model="w-pcdm", levels=2, shape=(1, 8, 8), K=17, **kw) -> PCDM:
    torch.manual_seed(0)
    cfg = dict(width=16, depth=1, attention=True, fourier=(6, 7))
    cfg.update(kw)
    return PCDM(ModelConfig(model=model, levels=levels, image_shape=shape, K=K, **cfg))


def digits(n=64) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images[:n].astype("int64"))  # 8×8, values 0..16
    return x[:, None]


@pytest.mark.parametrize("name,levels", MODELS)
def test_bound_terms_add_up(name, levels):
    model = tiny(name, levels, shape=(3, 8, 8))
    x = torch.randint(0, 17, (5, 3, 8, 8))
    b = model.nelbo(x)
    for v in (b.prior, b.diffusion, b.recon, b.total):
        assert v.shape == (5,) and torch.isfinite(v).all()
    assert b.per_level.shape == (5, levels)
    assert (b.prior > 0).all() and (b.diffusion >= 0).all() and (b.recon >= 0).all()
    # per-level sums: levels hold prior + diffusion (+ the level's decoder for discrete maps)
    per_level = b.per_level.sum(1)
    if name in DISCRETE:
        torch.testing.assert_close(per_level, b.total)
    else:
        torch.testing.assert_close(per_level + b.recon, b.total)
    parts = b.bpd()
    levels_bpd = sum(parts[f"bpd_level{s + 1}"] for s in range(levels))
    extra = 0 if name in DISCRETE else parts["bpd_recon"]
    torch.testing.assert_close(levels_bpd + extra, parts["bpd"])
    # the training loss is the mean bound in bpd of the same draws
    noise = Noise.draw(x.shape, levels, generator=torch.Generator().manual_seed(1))
    fixed = model.nelbo(x, noise=noise).total
    torch.testing.assert_close(model(x, noise=noise), (fixed / (3 * 64 * math.log(2))).mean())
    assert not torch.equal(fixed, model.nelbo(x).total)  # …and those draws matter
    # the γ-band diagnostics split each level's diffusion term exactly (one band per draw)
    from pcdm.evaluate import band_terms

    bands = band_terms(b, b.dims)
    for s in range(levels):
        got = sum(v for k, v in bands.items() if k.startswith(f"band:{s + 1}:"))
        torch.testing.assert_close(got, to_bpd(b.extras["diffusion_levels"][:, s], b.dims))
    torch.testing.assert_close(b.extras["diffusion_levels"].sum(1), b.diffusion)


def test_prior_counts_subspace_dimensions():
    """lp detail levels count 3/4 of their pixels in the prior KL (docs/math.md §2, §3)."""
    model = tiny("lp-pcdm", 3, shape=(1, 8, 8))
    assert model.level_dims == [4, 12, 48]
    zero = torch.zeros(1, 1, 2, 2)
    g1 = model.schedule(torch.ones(()))
    per_dim = model.prior_kl(zero, 1, g1)
    torch.testing.assert_close(model.prior_kl(torch.zeros(1, 1, 8, 8), 48, g1), 48 * per_dim)


def test_training_lowers_the_loss():
    model = tiny("w-pcdm", 2)
    x = digits(64)

    def evaluate():
        with torch.no_grad():
            vals = []
            for seed in range(6):
                torch.manual_seed(1000 + seed)
                vals.append(model(x).item())
        return sum(vals) / len(vals)

    before = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(30):
        opt.zero_grad()
        loss = model(x)
        loss.backward()
        opt.step()
    after = evaluate()
    print(f"bpd before {before:.3f} after {after:.3f}")
    assert after < before - 0.1


@pytest.mark.parametrize("name", ["vdm", "w-pcdm", "lp-pcdm", "c-vdm"])
def test_input_errors(name):
    model = tiny(name, 2)
    good = torch.randint(0, 17, (2, 1, 8, 8))
    model.nelbo(good)
    with pytest.raises(ValueError, match="1 channels?, got 3"):
        model.nelbo(torch.randint(0, 17, (2, 3, 8, 8)))
    with pytest.raises(ValueError, match="dtype"):
        model.nelbo(good.float())
    with pytest.raises(ValueError, match=r"0\.\.16.*K = 17"):
        model.nelbo(torch.full((2, 1, 8, 8), 17))
    with pytest.raises(ValueError, match=r"0\.\.16"):
        model.nelbo(-good - 1)
    with pytest.raises(ValueError, match="16×16"):
        model.nelbo(torch.randint(0, 17, (2, 1, 16, 16)))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        model.nelbo(good[0])
    if name != "vdm":
        with pytest.raises(ValueError, match="7×8"):
            model.nelbo(torch.randint(0, 17, (2, 1, 7, 8)))


def test_config_errors():
    with pytest.raises(ValueError, match="6×6"):
        ModelConfig(model="w-pcdm", levels=3, image_shape=(1, 6, 6))
    with pytest.raises(ValueError, match="unknown model"):
        ModelConfig(model="pcdm-xl")
    with pytest.raises(ValueError, match="K"):
        ModelConfig(K=1000)
    with pytest.raises(ValueError, match="C, H, W"):
        ModelConfig(image_shape=(2, 8, 8))


@pytest.mark.parametrize(
    "name,levels", [("vdm", 1), ("c-vdm", 2), ("lp-pcdm", 3), ("w-pcdm", 3), ("lift-pcdm", 3)]
)
def test_sample(name, levels):
    model = tiny(name, levels, shape=(3, 8, 8), K=17)
    gen = torch.Generator().manual_seed(0)
    x, previews = model.sample(3, steps=4, generator=gen)
    assert x.dtype == torch.uint8 and x.shape == (3, 3, 8, 8)
    assert int(x.max()) <= 16
    assert len(previews) == levels
    sizes = [p.shape[-1] for p in previews]
    assert sizes == [8 // 2 ** (levels - 1 - k) for k in range(levels)]  # coarse to fine
    for p in previews:
        assert p.dtype == torch.uint8 and p.shape[:2] == (3, 3) and int(p.max()) <= 16
    torch.testing.assert_close(previews[-1], x)
    model.nelbo(x.long())  # samples are valid inputs


def test_preview_is_the_block_mean():
    """A preview of the coarse levels decodes the LL / octave image back to pixel units."""
    model = tiny("w-pcdm", 3, shape=(1, 8, 8))
    x = torch.randint(0, 17, (2, 1, 8, 8))
    f = model.pixels_to_f(x)
    cs = model.map(f)
    coarse = model.preview(cs[:1])  # 2×2: means of 4×4 blocks
    mean = f.unfold(2, 4, 4).unfold(3, 4, 4).mean((-1, -2))
    ref = torch.clamp(torch.round((mean + 1) * 17 / 2 - 0.5), 0, 16).to(torch.uint8)
    assert (coarse.long() - ref.long()).abs().max() <= 1  # α₀ ≈ 1 − 1e−6 rounding
    torch.testing.assert_close(model.preview(cs), x.to(torch.uint8))


@pytest.mark.parametrize("name,levels", [("w-pcdm", 2), ("lp-pcdm", 2), ("vdm", 1)])
@torch.no_grad()
def test_reverse_step(name, levels):
    model = tiny(name, levels)
    shapes = model.level_shapes
    for k, shape in enumerate(shapes):
        z = model.map.project(k, torch.randn(2, *shape))
        cond = None if k == 0 else torch.randn(2, 1, *shape[1:])
        for t, s in [(1.0, 0.99), (0.5, 0.25), (0.01, 0.0), (1e-3, 0.0)]:
            mean, std = model.reverse_step(k, z, torch.tensor(t), torch.tensor(s), cond)
            assert mean.shape == z.shape
            assert torch.isfinite(mean).all() and torch.isfinite(std).all()
            assert (std > 0).all()
            # std² = σ²_{t|s} σ_s²/σ_t² < σ_s²: less noise than the marginal at s
            sigma2_s = torch.sigmoid(model.schedule(torch.tensor(s))).detach()
            assert float(std) ** 2 < float(sigma2_s)
            if name == "lp-pcdm" and k > 0:  # the mean stays in the level's subspace
                torch.testing.assert_close(model.map.project(k, mean), mean, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["fixed", "learned", "monotone"])
def test_schedules(name):
    torch.manual_seed(0)
    sched = build_schedule(name, -13.3, 5.0)
    t = torch.linspace(0.02, 0.98, 49, dtype=torch.float64)
    sched = sched.double()
    g, slope = sched.gamma_and_slope(t)
    assert (g.diff() > 0).all(), "γ must increase"
    assert (slope > 0).all()
    h = 1e-5
    fd = (sched(t + h) - sched(t - h)) / (2 * h)
    torch.testing.assert_close(slope, fd, atol=1e-5, rtol=1e-5)
    ends = sched(torch.tensor([0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(ends, torch.tensor([-13.3, 5.0], dtype=torch.float64), atol=1e-5, rtol=0)
    if name != "fixed":  # trained by the ELBO: gradients reach the parameters
        g.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sched.parameters())


def test_monotone_schedule_stays_monotone_after_perturbation():
    torch.manual_seed(1)
    sched = build_schedule("monotone", -13.3, 5.0).double()
    with torch.no_grad():
        for p in sched.parameters():
            p.add_(torch.randn_like(p))
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert (sched(t).diff() > 0).all() == (sched.gamma_1 > sched.gamma_0)


def test_paper_cifar10_parameter_count():
    """Appendix B, CIFAR-10: width 128, 32 ResNet blocks, attention; the paper reports 35M
    (base) and 42M (conditional) parameters."""
    # Lattice features of the detail level (docs/math.md §4): the 3 conditioning channels at octave 1
    # get exponents 6..9 and the 12 octave-view channels (one Haar synthesis, space-to-depth)
    # at octave 0 get 6..8, sin and cos each: 3·4·2 + 12·3·2 = 96 extra input channels.
    base = UNet(channels=3, width=128, depth=32, attention=True)
    cond = UNet(channels=9, cond_channels=3, width=128, depth=32, attention=True, extra_channels=96)
    nb, nc = count_parameters(base), count_parameters(cond)
    assert (nb, nc) == (30_593_155, 30_762_505)  # the README's 30.6M base network
    model = PCDM(
        ModelConfig(model="w-pcdm", levels=2, image_shape=(3, 32, 32), width=128, depth=32, attention=True)
    )
    assert model.level_shapes == [(3, 16, 16), (9, 16, 16)]
    assert count_parameters(model) == nb + nc + count_parameters(model.schedule)


def test_double_precision_and_fixed_noise():
    """model.double() computes the bound in float64; a given Noise makes it deterministic."""
    from pcdm.model import Noise

    model = tiny("lp-pcdm", 2).double()
    x = torch.randint(0, 17, (3, 1, 8, 8))
    noise = Noise.draw(x.shape, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b = model.nelbo(x, noise=noise), model.nelbo(x, noise=noise)
    assert a.total.dtype == torch.float64
    torch.testing.assert_close(a.total, b.total, atol=0, rtol=0)
    c = model.nelbo(x)
    assert not torch.equal(a.total, c.total)


@pytest.mark.parametrize("K", [2, 17, 256])
@pytest.mark.parametrize("gamma_0", [-13.3, -9.0, -4.0, 2.0])
def test_decoder_window_is_exact(K, gamma_0):
    """log p(x | z₀) with the windowed normaliser equals the full K-way log-softmax (value
    and gradient), including z₀ far outside [−1, 1] and any x."""
    model = tiny("vdm", 1, K=K).double()
    g0 = torch.tensor(gamma_0, dtype=torch.float64)
    alpha_0 = torch.sigmoid(-g0).sqrt()
    sigma_0 = torch.sigmoid(g0).sqrt()
    gen = torch.Generator().manual_seed(K)
    x = torch.randint(0, K, (4, 1, 8, 8), generator=gen)
    f = model.pixels_to_f(x)
    z0 = alpha_0 * f + sigma_0 * torch.randn(f.shape, generator=gen, dtype=torch.float64)
    z0[0, 0, 0, :4] = torch.tensor([-3.0, 3.0, -1.0, 1.0], dtype=torch.float64)
    z0[1] = torch.rand(z0[1].shape, generator=gen, dtype=torch.float64) * 2.4 - 1.2  # any x
    z0.requires_grad_(True)
    got = model.log_p_x_given_z0(x, z0, g0)
    (g_got,) = torch.autograd.grad(got.sum(), z0)
    values = 2 * (torch.arange(K, dtype=torch.float64) + 0.5) / K - 1
    logits = -0.5 * ((z0[..., None] / alpha_0 - values) / (sigma_0 / alpha_0)) ** 2
    full = (logits.gather(-1, x[..., None])[..., 0] - torch.logsumexp(logits, -1)).flatten(1)
    want = full.sum(1)
    (g_want,) = torch.autograd.grad(want.sum(), z0)
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-12)
    torch.testing.assert_close(g_got, g_want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("K", [17, 256])
@pytest.mark.parametrize("gamma_0", [-13.3, -6.0, 1.0])
def test_level_decoder_window_is_exact(K, gamma_0):
    """The decoder of a lifting detail level (values in ±(K−1) and ±2(K−1), per channel)
    equals the full log-softmax over each channel's whole range."""
    model = tiny("lift-pcdm", 2, K=K).double()
    g0 = torch.tensor(gamma_0, dtype=torch.float64)
    alpha_0, sigma_0 = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0).sqrt()
    gen = torch.Generator().manual_seed(K)
    x = torch.randint(0, K, (4, 1, 8, 8), generator=gen)
    v = model.map(x)[1]  # (4, 3, 4, 4) detail bands
    c = model.level_to_f(1, v)
    z0 = alpha_0 * c + sigma_0 * torch.randn(c.shape, generator=gen, dtype=torch.float64)
    z0[0, 2, 0, :2] = torch.tensor([-9.0, 9.0], dtype=torch.float64)  # far outside the range
    got = model.log_p_x_given_z0(v, z0, g0, k=1)
    want = torch.zeros(4, dtype=torch.float64)
    for ch, (lo, hi) in enumerate(model.map.value_range(1, (1, 8, 8), K)):
        values = 2 * (torch.arange(lo, hi + 1, dtype=torch.float64) - (lo + hi) / 2) / K
        logits = -0.5 * ((z0[:, ch, ..., None] / alpha_0 - values) / (sigma_0 / alpha_0)) ** 2
        idx = (v[:, ch] - lo)[..., None]
        want += (logits.gather(-1, idx)[..., 0] - torch.logsumexp(logits, -1)).flatten(1).sum(1)
    torch.testing.assert_close(got, want, atol=1e-8, rtol=1e-12)


def test_lattice_features_read_the_coarse_lattice():
    """The detail net's extra inputs change by O(1) when the conditioning moves by one step
    of its lattice (1/K for the Haar LL at octave 1), which raw values (a 1/K change) and the
    net without features cannot resolve; and they are functions of (z_t, cond) only."""
    K = 256
    model = tiny("w-pcdm", 2, shape=(1, 8, 8), K=K, fourier="auto")
    plain = tiny("w-pcdm", 2, shape=(1, 8, 8), K=K, fourier="auto", lattice_features=False)
    assert model.nets[1].conv_in.in_channels > plain.nets[1].conv_in.in_channels
    assert model.nets[0].conv_in.in_channels == plain.nets[0].conv_in.in_channels  # base level: none
    x = torch.randint(0, K, (2, 1, 8, 8))
    c = model.map(model.pixels_to_f(x))
    feats = model.lattice_features(1, c[1], c[0])
    assert feats.shape[1] == model.nets[1].extra_channels
    moved = model.lattice_features(1, c[1], c[0] + 1 / K)
    assert (moved - feats).abs().max() > 0.5
    torch.testing.assert_close(model.lattice_features(1, c[1], c[0]), feats)
    # the octave view at t = 0 with clean inputs is the image itself, block by block
    view = model.map.view(1, c[1], c[0])
    torch.testing.assert_close(view, torch.nn.functional.pixel_unshuffle(model.pixels_to_f(x), 2))


def test_double_model_samples_and_schedule_graph():
    """A float64 model samples in float64; the monotone schedule's slope builds no graph
    under no_grad (it would be a double-backward graph)."""
    model = tiny("w-pcdm", 2, shape=(1, 8, 8), K=17, schedule="monotone").double()
    x, _ = model.sample(2, steps=2, generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 8, 8)
    with torch.no_grad():
        g, slope = model.schedule.gamma_and_slope(torch.rand(4, dtype=torch.float64))
    assert not g.requires_grad and not slope.requires_grad
    g, slope = model.schedule.gamma_and_slope(torch.rand(4, dtype=torch.float64))
    assert slope.requires_grad  # training: the slope is differentiable in the parameters
