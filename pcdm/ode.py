"""Probability-flow ODE likelihood of each level, and the discrete-data bound it gives by
variational dequantization through the model's own q(z₀ | x) (docs/math.md §12).

For level s the VP diffusion zₜ = α_t cˢ + σ_t ε has the probability-flow ODE

    dz/dt = ½ γ'(t) σ_t (ε̂ − σ_t z)            (score = −ε̂ / σ_t)

whose flow carries the t = 0 marginal to the t = 1 marginal, so with the prior N(0, I) at
t = 1 (the ELBO's prior) the instantaneous change of variables gives

    log p_ODE(z₀ˢ | z₀^{<s}) = log N(z₁ˢ; 0, I_{nₛ}) + ∫₀¹ div(dz/dt) dt,
    div(dz/dt) = ½ γ'(t) σ_t (tr Πₛ ∂ε̂/∂z Πₛ − σ_t nₛ),

everything over the nₛ-dimensional subspace of the level (lp-pcdm's detail levels live in
range(I − P), docs/math.md §2). The trace is exact (one probe per basis vector of the
subspace) for small levels and Hutchinson's estimate with K Rademacher probes otherwise;
the probes are drawn once per level and batch, from a seeded generator, and held fixed
during the integration, so the integrand is a smooth function of t and a result is
reproducible from its seed.

Solver: torchdiffeq's adaptive Dormand–Prince 5(4) (``dopri5``) by default, with relative
and absolute tolerances on the state (z, ∫ div). The whole batch is one ODE system, so the
steps are those the hardest image of the batch needs; every image of a batch reports the
batch's number of function evaluations (NFE).

Discrete data (docs/math.md §12): −log P(x) ≤ E_{z₀~q}[−log p(x | z₀) − log p_ODE(z₀) +
log q(z₀ | x)], with z₀ = α₀ f + σ₀ ε₀ the ELBO's own draw, levels by the chain rule and
each level conditioned on the coarser levels' z₀ exactly as in the ELBO. For lift-pcdm and
c-vdm every level is its own discrete image: the same bound level by level, with that
level's decoder and its own q(z₀ˢ | cˢ), conditioned on the clean coarser levels.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from torchdiffeq import odeint

from .model import PCDM, Denoiser, to_bpd
from .schedules import alpha_sigma

EXACT_MAX = 64  # "auto": the exact trace for levels of at most this many dimensions
METHODS = ("dopri5", "bosh3", "adaptive_heun", "dopri8")  # torchdiffeq's adaptive solvers


@dataclass
class ODEOptions:
    """How the ODE is solved and its divergence estimated. ``hutchinson`` = K probes, or
    None with ``exact_trace`` False: exact for levels of ≤ ``exact_max`` dimensions, one
    probe otherwise. ``max_batch`` caps images × probes in one network call."""

    rtol: float = 1e-5
    atol: float = 1e-5
    method: str = "dopri5"
    hutchinson: int | None = None
    exact_trace: bool = False
    exact_max: int = EXACT_MAX
    max_batch: int = 4096

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"ODE method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not (self.rtol > 0 and self.atol > 0):
            raise ValueError(f"ODE tolerances must be positive, got rtol {self.rtol}, atol {self.atol}")
        if self.hutchinson is not None and self.hutchinson < 1:
            raise ValueError(f"--hutchinson needs K ≥ 1 probes, got {self.hutchinson}")
        if self.hutchinson is not None and self.exact_trace:
            raise ValueError("choose either Hutchinson probes or the exact trace, not both")

    def probes_for(self, n: int) -> int | None:
        """Hutchinson probes for a level of n dimensions, or None for the exact trace."""
        if self.exact_trace or (self.hutchinson is None and n <= self.exact_max):
            return None
        return self.hutchinson or 1


# --- the divergence --------------------------------------------------------------------


def subspace_basis(model: PCDM, k: int, n_images: int, dtype, device) -> Tensor:
    """An orthonormal basis of level k's subspace as probes, (nₖ, N, C, H, W): with them
    Σ_p v_pᵀ J v_p is the exact trace of J restricted to the subspace."""
    shape = model.level_shapes[k]
    n = model.level_dims[k]
    eye = torch.eye(n, dtype=dtype, device=device)
    basis = model.map.from_coords(k, eye, shape)  # (n, C, H, W)
    return basis[:, None].expand(n, n_images, *shape)


def rademacher_probes(
    model: PCDM, k: int, n_images: int, probes: int, generator: torch.Generator, dtype, device
) -> Tensor:
    """K Rademacher vectors in an orthonormal basis of level k's subspace, (K, N, C, H, W).
    v = B u with u ∈ {±1}^{nₖ}: E[v vᵀ] = B Bᵀ = Πₖ, so E[vᵀ J v] = tr(Πₖ J Πₖ)."""
    shape = model.level_shapes[k]
    n = model.level_dims[k]
    u = torch.randint(0, 2, (probes * n_images, n), generator=generator).to(dtype=dtype, device=device)
    return model.map.from_coords(k, 2 * u - 1, shape).reshape(probes, n_images, *shape)


def probe_trace(fn, z: Tensor, probes: Tensor, max_batch: int = 4096) -> tuple[Tensor, Tensor]:
    """(fn(z), Σ_p v_pᵀ J_fn(z) v_p per image) for probes (P, N, …): one vector–Jacobian
    product per probe, the N·P copies of z batched through fn in chunks of at most
    ``max_batch``. fn must treat the images of a batch independently (any denoiser does)."""
    P, N = probes.shape[:2]
    per_call = max(1, max_batch // N)
    value, trace = None, z.new_zeros(N)
    for start in range(0, P, per_call):
        v = probes[start : start + per_call]
        p = v.shape[0]
        with torch.enable_grad():
            zr = z.detach().unsqueeze(0).expand(p, *z.shape).reshape(p * N, *z.shape[1:])
            zr = zr.clone().requires_grad_(True)
            out = fn(zr, p)
            (vjp,) = torch.autograd.grad(out, zr, v.reshape_as(zr))
        trace = trace + (vjp * v.reshape_as(zr)).reshape(p, N, -1).sum(-1).sum(0)
        if value is None:
            value = out.detach()[:N]
    return value, trace.detach()


# --- one level ------------------------------------------------------------------------


@dataclass
class LevelDensity:
    """log p_ODE(z₀ | cond) per image (nats), its parts, and what the solver spent."""

    log_p: Tensor  # (N,) = log_prior + divergence
    log_prior: Tensor  # (N,) log N(z₁; 0, I) over the level's nₛ dimensions
    divergence: Tensor  # (N,) ∫₀¹ div(dz/dt) dt
    z1: Tensor  # the latent at t = 1
    nfe: int
    seconds: float


def level_log_density(
    model: PCDM,
    k: int,
    z0: Tensor,
    cond: Tensor | None,
    options: ODEOptions | None = None,
    denoiser: Denoiser | None = None,
    generator: torch.Generator | None = None,
) -> LevelDensity:
    """log p_ODE(z₀ᵏ | cond) of level k by integrating the PF-ODE from t = 0 to 1
    (docs/math.md §12); z₀ must lie in the level's subspace."""
    options = options or ODEOptions()
    denoiser = denoiser or model.eps_hat
    n = model.level_dims[k]
    N, dtype, device = z0.shape[0], z0.dtype, z0.device
    n_probes = options.probes_for(n)
    if n_probes is None:
        probes = subspace_basis(model, k, N, dtype, device)
    else:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        probes = rademacher_probes(model, k, N, n_probes, generator, dtype, device) / math.sqrt(n_probes)
    nfe = 0

    def eps_of(t_gamma):
        def fn(zr, copies):
            gamma = t_gamma.expand(zr.shape[0])
            c = None if cond is None else cond.repeat(copies, *[1] * (cond.dim() - 1))
            return model.map.project(k, denoiser(k, zr, gamma, c))

        return fn

    def drift(t, state):
        nonlocal nfe
        nfe += 1
        z, _ = state
        gamma, slope = model.schedule.gamma_and_slope(t.reshape(()).to(dtype))
        _, sigma = alpha_sigma(gamma)
        eps, tr = probe_trace(eps_of(gamma), z, probes, options.max_batch)
        dz = model.map.project(k, 0.5 * slope * sigma * (eps - sigma * z))
        ddiv = 0.5 * slope * sigma * (tr - sigma * n)  # div of −σ z over the subspace is −σ n exactly
        return dz, ddiv

    start = time.perf_counter()
    ts = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    with torch.no_grad():
        zs, divs = odeint(
            drift, (z0, z0.new_zeros(N)), ts, rtol=options.rtol, atol=options.atol, method=options.method
        )
    z1, divergence = zs[-1], divs[-1]
    log_prior = -0.5 * (n * math.log(2 * math.pi) + z1.flatten(1).pow(2).sum(1))
    return LevelDensity(log_prior + divergence, log_prior, divergence, z1, nfe, time.perf_counter() - start)


def gaussian_log_q(eps0: Tensor, n: int, sigma_0: Tensor) -> Tensor:
    """log q(z₀ˢ | cˢ) = log N(α₀ cˢ + σ₀ ε₀ˢ; α₀ cˢ, σ₀² I_{nₛ}) per image, ε₀ˢ in the subspace."""
    return -0.5 * (n * math.log(2 * math.pi) + 2 * n * torch.log(sigma_0) + eps0.flatten(1).pow(2).sum(1))


# --- the bound on discrete x ----------------------------------------------------------


@dataclass
class ODEBound:
    """−log P(x) ≤ recon + Σₛ (nll_ode + log_q), nats per image (docs/math.md §12).
    ``per_level[:, s]`` = nll_ode + log_q of level s (+ its own decoder for discrete maps),
    comparable with ``Bound.per_level`` of the ELBO; ``nfe`` per level; ``seconds`` for
    the batch."""

    nll_ode: Tensor  # (N, S) −log p_ODE(z₀ˢ | z₀^{<s})
    log_q: Tensor  # (N, S) log q(z₀ˢ | cˢ): the dequantization term, −(its entropy) on average
    recon: Tensor  # (N,) −log p(x | z₀), all levels
    per_level: Tensor  # (N, S)
    dims: int
    nfe: list[int]
    seconds: float

    @property
    def total(self) -> Tensor:
        return self.recon + self.nll_ode.sum(1) + self.log_q.sum(1)

    def bpd(self) -> dict[str, Tensor]:
        """Every term in bits per dimension of the original image (the ELBO's units)."""
        out = {
            "bpd": to_bpd(self.total, self.dims),
            "bpd_ode": to_bpd(self.nll_ode.sum(1), self.dims),
            "bpd_dequant": to_bpd(self.log_q.sum(1), self.dims),
            "bpd_recon": to_bpd(self.recon, self.dims),
        }
        for s in range(self.per_level.shape[1]):
            out[f"bpd_level{s + 1}"] = to_bpd(self.per_level[:, s], self.dims)
        return out


def ode_bound(
    model: PCDM,
    x: Tensor,
    options: ODEOptions | None = None,
    denoiser: Denoiser | None = None,
    generator: torch.Generator | None = None,
    eps0: Tensor | None = None,
) -> ODEBound:
    """The variational-dequantization bound of each image through the PF-ODE, in nats
    (docs/math.md §12). ε₀ (default: drawn from ``generator``) fixes z₀ = α₀ f + σ₀ ε₀, the
    draw the decoder and the coarser levels' conditioning share, as in the ELBO."""
    model.check_input(x)
    options = options or ODEOptions()
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    if eps0 is None:
        eps0 = torch.randn(x.shape, generator=generator, dtype=model.dtype).to(x.device)
    gamma_0 = model.schedule(torch.zeros((), device=x.device, dtype=model.dtype))
    alpha_0, sigma_0 = alpha_sigma(gamma_0.detach())
    with torch.no_grad():
        if model.map.discrete:
            levels = _discrete_levels(model, x, eps0, alpha_0, sigma_0, gamma_0)
        else:
            levels = _continuous_levels(model, x, eps0, alpha_0, sigma_0, gamma_0)
    nll, log_q, recon, recon_levels, nfe, seconds = [], [], 0, [], [], 0.0
    for k, (z0, cond, e0, rec) in enumerate(levels):
        res = level_log_density(model, k, z0, cond, options, denoiser, generator)
        nll.append(-res.log_p)
        log_q.append(gaussian_log_q(e0, model.level_dims[k], sigma_0))
        recon = recon + rec
        recon_levels.append(rec)
        nfe.append(res.nfe)
        seconds += res.seconds
    nll, log_q = torch.stack(nll, 1), torch.stack(log_q, 1)
    per_level = nll + log_q
    if model.map.discrete:
        per_level = per_level + torch.stack(recon_levels, 1)
    return ODEBound(nll, log_q, recon, per_level, model.dims, nfe, seconds)


def log_density(
    model: PCDM,
    z0: Tensor,
    options: ODEOptions | None = None,
    denoiser: Denoiser | None = None,
    generator: torch.Generator | None = None,
) -> list[LevelDensity]:
    """log p_ODE(z₀) of a pixel-space latent of a continuous map, level by level: entry s is
    log p_ODE(z₀ˢ | z₀^{<s}), so the sum is log p_ODE(z₀) by the chain rule (the map is
    orthonormal, or a tight frame with every level in its subspace: no Jacobian)."""
    if model.map.discrete:
        raise ValueError(f"{model.config.model} has discrete levels: use ode_bound on integer images")
    zs = model.map(z0)
    return [
        level_log_density(model, k, zs[k], model.map.condition(zs, k), options, denoiser, generator)
        for k in range(len(zs))
    ]


def _continuous_levels(model, x, eps0, alpha_0, sigma_0, gamma_0):
    """(z₀ᵏ, cond, ε₀ᵏ, recon) per level; the decoder once, for the whole image (on the last)."""
    f = model.pixels_to_f(x)
    z0 = alpha_0 * f + sigma_0 * eps0
    recon = -model.log_p_x_given_z0(x, z0, gamma_0)
    zs, e0s = model.map(z0), model.map(eps0)
    S = len(zs)
    zero = torch.zeros_like(recon)
    return [(zs[k], model.map.condition(zs, k), e0s[k], recon if k == S - 1 else zero) for k in range(S)]


def _discrete_levels(model, x, eps0, alpha_0, sigma_0, gamma_0):
    """Every level its own discrete image: own q(z₀ˢ | cˢ) and decoder, the clean coarser
    levels as conditioning (as in that model's ELBO)."""
    xs = model.map(x.long())
    e0s = model.map.noise_levels(eps0)
    out = []
    for k, v in enumerate(xs):
        z0 = alpha_0 * model.level_to_f(k, v) + sigma_0 * e0s[k]
        recon = -model.log_p_x_given_z0(v, z0, gamma_0, k)
        out.append((z0, model.discrete_condition(xs, k), e0s[k], recon))
    return out
