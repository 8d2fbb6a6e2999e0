"""Sample quality mode: EDM's preconditioning, loss and Heun sampler per level (docs/math.md §11).

Each level is its own diffusion, seen in its variance-exploding coordinates

    x = z_t / α_t,   σ = σ_t / α_t = exp(γ_t / 2),   x = cᵏ + σ ε,

so the VP latent of the likelihood code and EDM's x are one variable in two units. A level's
denoiser is EDM's D(x; σ) = c_skip x + c_out F(c_in x; c_noise, cond), with that level's own
σ_data (measured on the training data and stored in the run's config). Any denoiser is also
a noise prediction, ε̂ = (x − D)/σ, which is what ``PCDM.eps_hat`` returns for an EDM model:
the bound, eval, OOD scores and the codec use it unchanged, and their numbers stay honest
upper bounds. The networks are the existing per-level U-Nets; the U-Net's own output skip
(ε̂ = z + net) is taken back out, so that F is the network's residual alone.

The sampler (Heun, 2nd order, on EDM's ρ = 7 grid) works from ε̂, so it draws from any
model whatever its objective: dx/dσ = (x − D)/σ = ε̂.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

P_MEAN, P_STD = -1.2, 1.2  # EDM's log-normal training σ, for data of std 0.5
EDM_SIGMA_DATA = 0.5  # the data std EDM's P_MEAN was chosen for
RHO = 7.0  # EDM's grid exponent


# --- preconditioning ------------------------------------------------------------------


def preconditioning(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's (c_skip, c_out, c_in, c_noise) at noise level σ for data of RMS σ_data: c_in
    gives the network a unit-variance input, c_skip and c_out a unit-variance target, and
    for Gaussian data with F = 0 the denoiser is the exact posterior mean."""
    s2, d2 = sigma**2, sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """λ(σ) = (σ² + σ_d²)/(σ σ_d)² = 1/c_out²: every σ's loss is the network's unit-variance
    regression error ‖F − F_target‖²."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def ve(gamma: Tensor) -> Tensor:
    """σ = exp(γ/2) (= σ_t/α_t)."""
    return (gamma / 2).exp()


def vp_alpha(sigma: Tensor) -> Tensor:
    """α_t of the VP latent z = α_t x at VE noise level σ: α² = sigmoid(−γ) = 1/(1 + σ²)."""
    return (1 + sigma**2).rsqrt()


def sigma_data_of(model, k: int) -> float:
    sd = model.config.sigma_data
    if sd is None:
        raise ValueError(
            "this EDM model has no σ_data: it is measured on the training data when a run starts "
            "(pcdm train --objective edm)"
        )
    return float(sd[k])


def network_residual(model, k: int, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
    """Πₖ F(c_in x; c_noise, cond) of level k, x (N, …) in VE units, σ (N,). The U-Net embeds
    γ = 2 ln σ = 8 c_noise, an affine function of c_noise, so it is fed γ; its lattice features
    are computed from the VP latent z = α x exactly as for an ELBO model."""
    sd = sigma_data_of(model, k)
    s = sigma.view(-1, 1, 1, 1)
    _, _, c_in, _ = preconditioning(s, sd)
    gamma = 2 * sigma.log()
    u = c_in * x
    features = model.lattice_features(k, vp_alpha(s) * x, cond)
    return model.map.project(k, model.nets[k](u, gamma, cond, features) - u)


def denoise(model, k: int, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
    """D(x; σ, cond) = c_skip x + c_out F of an EDM model's level k (x in its subspace)."""
    sd = sigma_data_of(model, k)
    c_skip, c_out, _, _ = preconditioning(sigma.view(-1, 1, 1, 1), sd)
    return c_skip * x + c_out * network_residual(model, k, x, sigma, cond)


def eps_hat(model, k: int, z: Tensor, gamma: Tensor, cond: Tensor | None) -> Tensor:
    """ε̂ = (x − D)/σ of an EDM model at the VP latent z, γ (docs/math.md §11). Written as
    σ x/(σ² + σ_d²) − σ_d F/√(σ² + σ_d²), the same number without the cancellation of x − D
    at small σ (where x and D agree to many digits)."""
    gamma = gamma.expand(z.shape[0]) if gamma.dim() == 0 else gamma
    sd = sigma_data_of(model, k)
    sigma = ve(gamma)
    s = sigma.view(-1, 1, 1, 1)
    x = z * (1 + s**2).sqrt()  # z / α
    F = network_residual(model, k, x, sigma, cond)
    return s * x / (s**2 + sd**2) - sd * F / (s**2 + sd**2).sqrt()


# --- training ---------------------------------------------------------------------------


def level_targets(model, x: Tensor, eps0: Tensor) -> list[tuple[Tensor, Tensor | None]]:
    """(cᵏ, condᵏ) per level, exactly as the bound sees them (docs/math.md §3): continuous
    maps condition on the t = 0 latents z₀^{<s} of the same ε₀ draw, discrete maps on the
    clean coarser levels, each level's cᵏ its integers in model units."""
    gamma_0 = model.schedule(torch.zeros((), device=x.device, dtype=model.dtype))
    if model.map.discrete:
        xs = model.map(x.long())
        return [(model.level_to_f(k, v), model.discrete_condition(xs, k)) for k, v in enumerate(xs)]
    from .schedules import alpha_sigma

    alpha_0, sigma_0 = alpha_sigma(gamma_0)
    f = model.pixels_to_f(x)
    conds = model.map(alpha_0 * f + sigma_0 * eps0)
    return [(c, model.map.condition(conds, k)) for k, c in enumerate(model.map(f))]


def training_sigma(t: Tensor, sigma_data: float) -> Tensor:
    """ln σ = P_mean + ln(σ_d/0.5) + P_std Φ⁻¹(t): EDM's log-normal, drawn from the bound's
    stratified times t (so the draws stay a pure function of the step's seed), and moved
    with the level's σ_d so that every level sees the same distribution of σ/σ_d."""
    u = t.clamp(1e-6, 1 - 1e-6)
    normal = math.sqrt(2) * torch.erfinv(2 * u - 1)
    return (P_MEAN + math.log(sigma_data / EDM_SIGMA_DATA) + P_STD * normal).exp()


def edm_loss(model, x: Tensor, noise) -> Tensor:
    """EDM's loss, mean over the batch of Σₖ λ(σ) ‖D(cᵏ + σ εᵏ; σ) − cᵏ‖² / d: each level at its
    own log-normal σ, its noise εᵏ = h(ε)ᵏ in its subspace as in the bound."""
    model.check_input(x)
    eps_levels = model.map.noise_levels(noise.eps) if model.map.discrete else model.map(noise.eps)
    total = x.new_zeros(x.shape[0], dtype=model.dtype)
    for k, (c, cond) in enumerate(level_targets(model, x, noise.eps0)):
        sd = sigma_data_of(model, k)
        sigma = training_sigma(noise.t[k].to(model.dtype), sd)
        xk = c + sigma.view(-1, 1, 1, 1) * eps_levels[k]
        err = denoise(model, k, xk, sigma, cond) - c
        total = total + loss_weight(sigma, sd) * err.flatten(1).pow(2).sum(1)
    return (total / model.dims).mean()


@torch.no_grad()
def measure_sigma_data(model, images: Tensor, batch: int = 1000) -> tuple[float, ...]:
    """σ_d of every level: the RMS of its coefficients cᵏ over ``images`` (uint8 N, C, H, W),
    over the level's nₖ dimensions. RMS about zero, not the standard deviation: EDM's c_skip
    minimises the target's variance for uncentred data with the second moment (a Haar
    coarse level of Fashion-MNIST has a large mean)."""
    sums = torch.zeros(len(model.level_shapes), dtype=torch.float64)
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        eps0 = torch.zeros(x.shape, dtype=model.dtype)
        for k, (c, _) in enumerate(level_targets(model, x, eps0)):
            sums[k] += c.double().pow(2).sum()
    n = len(images) * torch.tensor(model.level_dims, dtype=torch.float64)
    rms = (sums / n).sqrt()
    if not bool((rms > 0).all()):
        k = int((rms > 0).logical_not().nonzero()[0]) + 1
        raise ValueError(f"level {k} of the training data is zero in every image: EDM needs its σ_data > 0")
    return tuple(float(v) for v in rms)


# --- sampling ---------------------------------------------------------------------------


def sigma_grid(sigma_min: float, sigma_max: float, n: int, rho: float = RHO) -> Tensor:
    """EDM's σ_i = (σ_max^{1/ρ} + i/(n−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, i = 0 … n−1 (float64)."""
    if n < 2:
        raise ValueError(f"the Heun sampler needs at least 2 σ values (steps ≥ 2), got {n}")
    i = torch.arange(n, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (a + i / (n - 1) * (b - a)) ** rho


def sigma_range(model) -> tuple[float, float]:
    """σ_min, σ_max from the model's γ(0), γ(1): the interval its bound and decoder cover."""
    with torch.no_grad():
        g = model.schedule(torch.tensor([0.0, 1.0], dtype=model.dtype, device=model._device))
    return math.exp(float(g[0]) / 2), math.exp(float(g[1]) / 2)


def heun_level(
    model,
    k: int,
    n: int,
    cond: Tensor | None,
    steps: int,
    churn: float = 0.0,
    generator: torch.Generator | None = None,
    denoiser=None,
    progress=None,
) -> Tensor:
    """Level k by EDM's Heun sampler, σ_max → σ_min on the ρ = 7 grid of ``steps`` values
    (2 (steps − 1) evaluations). Starts from the model's prior z₁ ~ N(0, I) (x = z₁/α₁) and
    stops at σ_min, returning the VP latent z₀ = α₀ x: the finer levels are conditioned on
    it as on an ancestral sample, and the decoder reads it. ``churn`` is EDM's S_churn
    (0: the deterministic probability-flow ODE). ``denoiser`` (k, z, γ, cond) ↦ ε̂ defaults
    to ``model.eps_hat``."""
    denoiser = denoiser or model.eps_hat
    device, dtype = model._device, model.dtype
    sigma_min, sigma_max = sigma_range(model)
    grid = sigma_grid(sigma_min, sigma_max, steps).tolist()
    shape = (n, *model.level_shapes[k])

    def draw():
        e = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return model.map.project(k, e)

    def slope(x, sigma):  # dx/dσ = (x − D)/σ = ε̂
        s = torch.tensor(sigma, device=device, dtype=dtype)
        gamma = (2 * s.log()).expand(n)
        return model.map.project(k, denoiser(k, x * vp_alpha(s), gamma, cond))

    x = draw() * math.sqrt(1 + sigma_max**2)
    gain = min(churn / (steps - 1), math.sqrt(2) - 1)
    for s_cur, s_next in zip(grid[:-1], grid[1:]):
        if gain > 0:  # churn: raise the noise to σ̂ = σ (1 + γ), then step from there
            s_hat = s_cur * (1 + gain)
            x = x + math.sqrt(s_hat**2 - s_cur**2) * draw()
            s_cur = s_hat
        d = slope(x, s_cur)
        x_euler = x + (s_next - s_cur) * d
        x = x + (s_next - s_cur) * (d + slope(x_euler, s_next)) / 2
        if progress is not None:
            progress.update(1)
    return x / math.sqrt(1 + sigma_min**2)  # z₀ = α₀ x


@torch.no_grad()
def sample_heun(
    model,
    n: int,
    steps: int = 18,
    churn: float = 0.0,
    generator: torch.Generator | None = None,
    progress=None,
    denoiser=None,
) -> tuple[Tensor, list[Tensor]]:
    """Heun sampling level by level, coarse first, each level conditioned on the finished
    coarser ones exactly as ``PCDM.sample`` does; returns the uint8 images and the
    per-level previews."""
    kind = model.level_kind
    done, previews = [], []
    for k in range(len(model.level_shapes)):
        cond = kind.condition(model, done, k)
        z0 = heun_level(model, k, n, cond, steps, churn, generator, denoiser, progress)
        done.append(kind.finish(model, k, z0))
        previews.append(kind.preview(model, done))
    return previews[-1], previews


def draw(model, n: int, sampler: str = "ancestral", steps: int = 256, churn: float = 0.0,
         generator=None, progress=None, batch: int | None = None) -> Tensor:  # fmt: skip
    """n uint8 images (N, C, H, W) by ``sampler`` (ancestral | heun), in batches of ``batch``."""
    if sampler not in ("ancestral", "heun"):
        raise ValueError(f"--sampler must be ancestral or heun, got {sampler!r}")
    if sampler == "ancestral" and churn:
        raise ValueError("--churn applies to the heun sampler")
    batch = batch or n
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        if sampler == "heun":
            x, _ = sample_heun(model, m, steps, churn, generator, progress)
        else:
            x, _ = model.sample(m, steps=steps, generator=generator, progress=progress)
        out.append(x)
    return torch.cat(out)


def evaluations_per_level(sampler: str, steps: int) -> int:
    """Network evaluations per level: T for ancestral, 2 (N − 1) for Heun on N σ's."""
    return steps if sampler == "ancestral" else 2 * (steps - 1)
