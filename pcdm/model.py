"""The cascaded diffusion model and its likelihood bound: docs/math.md §1, §3 and §5 in one place.

A model is a hierarchical map h (maps/), one γ schedule shared by all levels
(schedules.py) and one ε-network per level (unet.py). ``PCDM.nelbo`` returns the negative
ELBO of each image in nats, split into its terms

    prior      Σₛ ½ (α₁² ‖cˢ‖² + nₛ (σ₁² − log σ₁² − 1))
    diffusion  Σₛ ½ E_t[γ'(t) ‖εˢ − Πₛ ε̂ˢ‖²]                         (continuous time)
               Σₛ ½ T E_i[expm1(γ(tᵢ) − γ(tᵢ₋₁)) ‖εˢ − Πₛ ε̂ˢ‖²]     (T steps)
    recon      −log p(x | z₀),  z₀ = hᵀ(z₀¹ … z₀ˢ) = α₀ f + σ₀ ε₀

The map (maps/, chosen by name in registry.py) decides which of two kinds of levels the
model has; each kind is one small class below (``ContinuousLevels``, ``DiscreteLevels``).
For the volume-preserving maps the joint over levels is the likelihood of x (paper
Lemma 4.1), so the total is an upper bound on −log P(x). For the discrete maps every level
is its own discrete image with its own decoder, conditioned on the clean coarser levels:
for the integer lifting (lift-pcdm) the levels are a bijection of x, so Σₛ −ELBOₛ bounds
−log P(x) exactly by the chain rule; for C-VDM (cascade map) it bounds −log P(x) by
dropping the sum over the other scales' values: valid, but loose.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from . import edm, registry
from .maps import HierarchicalMap, check_divisible
from .schedules import alpha_sigma, build_schedule
from .unet import UNet, fourier_features


@dataclass
class ModelConfig:
    model: str = "w-pcdm"  # a name in pcdm.registry: vdm | c-vdm | lp-pcdm | w-pcdm | lift-pcdm | …
    levels: int = 2  # S (fixed by the model for vdm: 1)
    wavelet: str | None = None  # w-pcdm's orthogonal wavelet (None: haar); other models take none
    image_shape: tuple[int, int, int] = (1, 28, 28)  # (C, H, W) of the original image
    K: int = 256  # number of pixel values
    width: int = 32  # U-Net width of the base level
    detail_width: int | None = None  # width of the levels s ≥ 2 (default: = width)
    depth: int = 2  # ResNet blocks per direction
    attention: bool = True  # middle attention block
    dropout: float = 0.0
    fourier: tuple[int, int] | str | None = "auto"  # Fourier exponents n (pixel grid), "auto", None
    lattice_features: bool = True  # Fourier features of the conditioning and octave view (docs/math.md §4)
    lattice_posterior: bool = False  # ε̂ = the flat-lattice posterior's ε + the network (pcdm.lattice)
    schedule: str = "learned"  # fixed | learned | monotone
    gamma_min: float | None = None  # γ(0) at init; None: −13.3 + 2 ln(256/K), VDM's σ₀ per bin width
    gamma_max: float = 5.0  # γ(1) at initialisation
    objective: str = "elbo"  # elbo (the bound, docs/math.md §3) | edm (EDM's weighting, docs/math.md §11)
    sigma_data: tuple[float, ...] | None = None  # EDM: each level's data RMS, measured when a run starts

    def __post_init__(self):
        spec = registry.get(self.model)
        self.image_shape = tuple(int(v) for v in self.image_shape)
        if self.gamma_min is None:
            # VDM's −13.3 is for K = 256; keep σ₀ the same fraction of the bin width 2/K.
            self.gamma_min = -13.3 + 2 * math.log(256 / self.K)
        if self.fourier == "auto":
            # VDM uses n = 6..8 for K = 256: frequencies around the grid spacing 2/K.
            c = round(math.log2(self.K / 2))
            self.fourier = (c - 1, c + 1)
        if self.fourier is not None:
            self.fourier = tuple(self.fourier)
        if spec.levels is not None:
            self.levels = spec.levels
        for name, default in spec.options.items():  # runs from before --wavelet were Haar
            if getattr(self, name) is None:
                setattr(self, name, default)
        if self.wavelet is not None and "wavelet" not in spec.options:
            raise ValueError(f"--wavelet applies to w-pcdm; model {self.model!r} has no wavelet")
        if len(self.image_shape) != 3 or self.image_shape[0] not in (1, 3):
            raise ValueError(f"image_shape must be (C, H, W) with C in {{1, 3}}, got {self.image_shape}")
        if not 2 <= self.K <= 256:
            raise ValueError(f"K (number of pixel values) must be in 2..256, got {self.K}")
        check_divisible(self.image_shape, self.levels)
        if self.objective not in ("elbo", "edm"):
            raise ValueError(f"objective must be elbo or edm, got {self.objective!r}")
        if self.sigma_data is not None:
            self.sigma_data = tuple(float(v) for v in self.sigma_data)
            if self.objective != "edm" or not all(v > 0 for v in self.sigma_data):
                raise ValueError(f"sigma_data {self.sigma_data} needs objective edm and positive values")
        if self.objective == "edm" and self.lattice_posterior:
            raise ValueError("lattice_posterior applies to the elbo objective, not edm")
        self.build_map()  # refuse a bad map option (e.g. a non-orthogonal wavelet) here

    def build_map(self) -> HierarchicalMap:
        """The model's hierarchical map, from the registry."""
        return registry.build_model_map(self.model, self.levels, wavelet=self.wavelet)

    def to_dict(self) -> dict:
        """What config.json (and the codec fingerprint) hold; ``wavelet`` only for models
        that take one and ``lattice_posterior`` only when on, so other configs are as before."""
        d = asdict(self)
        if d["wavelet"] is None:
            del d["wavelet"]
        if not d["lattice_posterior"]:  # runs from before the option hash as before
            del d["lattice_posterior"]
        if d["objective"] == "elbo":  # likewise for runs from before the EDM objective
            del d["objective"], d["sigma_data"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The config saved in a run. Every config written now holds every field; a key
        missing from an older run's config means what that run was trained with, which is
        not always today's default (``LEGACY``). Runs from before ``wavelet`` were Haar
        (``__post_init__`` fills it in)."""
        return cls(**{**LEGACY, **d})


# What a field missing from an old run's config.json meant: runs from before lattice
# features (docs/math.md §4) had none, although new models have them by default.
LEGACY = {"lattice_features": False}


@dataclass
class Bound:
    """Negative ELBO per image, in nats, by term. ``per_level[:, s]`` = prior + diffusion of
    level s (+ its reconstruction for discrete maps); ``dims`` = d of the original image.
    ``extras``: ``gamma_t`` and ``diffusion_levels``, (N, S) each: the γ(t) at which each
    level's one-sample diffusion term was drawn and that term (for γ-band diagnostics)."""

    prior: Tensor
    diffusion: Tensor
    recon: Tensor
    per_level: Tensor
    dims: int
    extras: dict = field(default_factory=dict)

    @property
    def total(self) -> Tensor:
        return self.prior + self.diffusion + self.recon

    def bpd(self) -> dict[str, Tensor]:
        """Every term converted to bits per dimension of the original image."""
        out = {
            "bpd": to_bpd(self.total, self.dims),
            "bpd_prior": to_bpd(self.prior, self.dims),
            "bpd_diffusion": to_bpd(self.diffusion, self.dims),
            "bpd_recon": to_bpd(self.recon, self.dims),
        }
        for s in range(self.per_level.shape[1]):
            out[f"bpd_level{s + 1}"] = to_bpd(self.per_level[:, s], self.dims)
        return out


def to_bpd(nats: Tensor, dims: int) -> Tensor:
    """The one place nats become bits per dimension: bpd = nats / (d ln 2)."""
    return nats / (dims * math.log(2))


def antithetic_times(n: int, device, generator=None, dtype=None) -> Tensor:
    """Stratified t ∈ [0, 1): one uniform offset, then n evenly spaced points (VDM)."""
    u = torch.rand((), device=device, generator=generator, dtype=dtype)
    return torch.remainder(u + torch.arange(n, device=device, dtype=u.dtype) / n, 1.0)


@dataclass
class Noise:
    """The randomness of one evaluation of the bound: ε₀ (decoder and conditioning), ε
    (diffusion), both in pixel space, and the diffusion time of each level, (S, N).
    Drawing it outside ``nelbo`` lets distributed ranks slice one global draw, so a run
    on W processes computes exactly what one process computes on the whole batch."""

    eps0: Tensor
    eps: Tensor
    t: Tensor
    w: Tensor | None = None  # (S, N) weights 1/p(t) when t was drawn from a density p (timesampling)

    @staticmethod
    def draw(shape, levels: int, generator=None, device="cpu", dtype=None) -> Noise:
        n = shape[0]
        eps0 = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        eps = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        t = torch.stack([antithetic_times(n, device, generator, dtype) for _ in range(levels)])
        return Noise(eps0, eps, t)

    def slice(self, start: int, stop: int) -> Noise:
        w = None if self.w is None else self.w[:, start:stop]
        return Noise(self.eps0[start:stop], self.eps[start:stop], self.t[:, start:stop], w)

    def to(self, device) -> Noise:
        w = None if self.w is None else self.w.to(device)
        return Noise(self.eps0.to(device), self.eps.to(device), self.t.to(device), w)

    def weight(self, k: int) -> Tensor | None:
        """Level k's importance weights, or None for uniform times."""
        return None if self.w is None else self.w[k]


# A denoiser maps (level k, z_t, γ_t, cond) ↦ ε̂; the networks are one, oracles another.
Denoiser = Callable[[int, Tensor, Tensor, Tensor | None], Tensor]


class PCDM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.map: HierarchicalMap = config.build_map()
        self.schedule = build_schedule(config.schedule, config.gamma_min, config.gamma_max)
        chw = config.image_shape
        self.level_kind = DISCRETE_LEVELS if self.map.discrete else CONTINUOUS_LEVELS
        self.level_shapes = self.map.level_shapes(chw)
        self.level_dims = self.map.dims(chw)
        if config.lattice_posterior and type(self.map).lattice_residual is HierarchicalMap.lattice_residual:
            raise ValueError(
                f"lattice_posterior needs a map with a closed-form lattice posterior (vdm, lp-pcdm, "
                f"w-pcdm with the Haar wavelet); {self.map.describe()} has none"
            )
        self.nets = nn.ModuleList(
            UNet(
                channels=shape[0],
                cond_channels=self.map.condition_channels(chw, k),
                width=config.width if k == 0 else (config.detail_width or config.width),
                depth=config.depth,
                attention=config.attention,
                dropout=config.dropout,
                fourier=_shift(config.fourier, self.map.lattice(k).z),
                gamma_range=(config.gamma_min, config.gamma_max),
                extra_channels=self._lattice_channels(k),
            )
            for k, shape in enumerate(self.level_shapes)
        )
        if config.sigma_data is not None and len(config.sigma_data) != len(self.level_shapes):
            raise ValueError(
                f"sigma_data has {len(config.sigma_data)} values for {len(self.level_shapes)} levels"
            )

    # --- data ---------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model (float64 after ``model.double()``)."""
        p = next(self.parameters(), None)
        return torch.get_default_dtype() if p is None else p.dtype

    @property
    def _device(self) -> torch.device:
        p = next(self.parameters(), None)
        return torch.device("cpu") if p is None else p.device

    @property
    def dims(self) -> int:
        c, h, w = self.config.image_shape
        return c * h * w

    def check_input(self, x: Tensor) -> None:
        """Clear errors for the mistakes users make with image batches."""
        c, h, w = self.config.image_shape
        if x.dim() != 4:
            raise ValueError(f"expected a batch (N, C, H, W), got shape {tuple(x.shape)}")
        if x.dtype.is_floating_point or x.dtype == torch.bool:
            raise ValueError(f"expected integer pixel values, got dtype {x.dtype}")
        if x.shape[1] != c:
            raise ValueError(f"model expects {c} channels, got {x.shape[1]}")
        if tuple(x.shape[2:]) != (h, w):
            check_divisible(x.shape, self.config.levels)
            raise ValueError(f"model expects {h}×{w} images, got {x.shape[2]}×{x.shape[3]}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.config.K):
            raise ValueError(
                f"pixel values must lie in 0..{self.config.K - 1} (K = {self.config.K}), "
                f"got range {int(x.min())}..{int(x.max())}"
            )

    def pixels_to_f(self, x: Tensor) -> Tensor:
        """f = 2 (x + 0.5) / K − 1 ∈ (−1, 1)."""
        return 2 * (x.to(self.dtype) + 0.5) / self.config.K - 1

    # --- pieces of the bound -------------------------------------------------
    def eps_hat(self, k: int, z: Tensor, gamma: Tensor, cond: Tensor | None) -> Tensor:
        """Πₖ ε̂_θᵏ(z_t, γ_t; cond): the noise prediction in level k's subspace; the network's
        alone, or added to the flat-lattice posterior's (``lattice_posterior``)."""
        if self.config.objective == "edm":  # ε̂ = (x − D)/σ of EDM's denoiser (docs/math.md §11)
            return self.map.project(k, edm.eps_hat(self, k, z, gamma, cond))
        eps = self.nets[k](z, gamma, cond, self.lattice_features(k, z, cond))
        if self.config.lattice_posterior:
            eps = eps + self.lattice_eps(k, z, gamma, cond)
        return self.map.project(k, eps)

    def lattice_eps(self, k: int, z: Tensor, gamma: Tensor, cond: Tensor | None) -> Tensor:
        """(z − α E[cᵏ | z, cond]) / σ for the flat-lattice posterior mean (pcdm.lattice): the
        exact noise near t = 0 whatever the data, 0 once the noise hides the lattice. A
        function of (z_t, γ_t, z₀^{<s}) only, like the network."""
        alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in alpha_sigma(gamma))
        alpha_0, sigma_0 = alpha_sigma(self.schedule(torch.zeros((), device=z.device, dtype=z.dtype)))
        u, s = z / alpha, sigma / alpha
        c = None if cond is None else cond / alpha_0
        return self.map.lattice_residual(k, u, s, c, sigma_0 / alpha_0, self.config.K) / s

    # --- lattice awareness (docs/math.md §4) -----------------------------------------
    def _exponents(self, octave: int, coarser: int = 0) -> tuple[int, int]:
        """Fourier exponents n for values on the grid (2/K)/2^octave: periods from 2^coarser
        grid steps (coarser = 2 reads a sum mod 4) down to half a grid step."""
        c = round(math.log2(self.config.K / 2)) + octave  # period 2^−c = one grid step
        return c - max(1, coarser), c + 1

    def _lattice_channels(self, k: int) -> int:
        lat = self.map.lattice(k)
        if not self.config.lattice_features or k == 0:
            return 0
        n = 0
        if lat.cond is not None:
            lo, hi = self._exponents(lat.cond, coarser=2)
            n += 2 * (hi - lo + 1) * self.map.condition_channels(self.config.image_shape, k)
        if lat.view is not None:
            lo, hi = self._exponents(lat.view)
            n += 2 * (hi - lo + 1) * self.map.view_channels(self.config.image_shape, k)
        return n

    def lattice_features(self, k: int, z: Tensor, cond: Tensor | None) -> Tensor | None:
        """Fourier features of the conditioning and of the octave view, at frequencies that
        resolve their lattices: the detail level can then read which sub-lattice its own
        coefficients lie on (for Haar, fixed by the coarse coefficient mod 4). Functions of
        (z_t, z₀^{<s}) only, so the bound, the sampler and the codec all see the same net."""
        if not self._lattice_channels(k):
            return None
        lat, parts = self.map.lattice(k), []
        if lat.cond is not None:
            parts.append(fourier_features(cond, *self._exponents(lat.cond, coarser=2)))
        if lat.view is not None:
            parts.append(fourier_features(self.map.view(k, z, cond), *self._exponents(lat.view)))
        return torch.cat(parts, dim=1)

    def value_range(self, k: int | None = None) -> tuple[Tensor, Tensor]:
        """Lowest and highest integer value per channel, (C, 1, 1) each: of the image
        (k = None) or of discrete level k."""
        if k is None:
            ranges = [(0, self.config.K - 1)] * self.config.image_shape[0]
        else:
            ranges = self.map.value_range(k, self.config.image_shape, self.config.K)
        lo, hi = torch.tensor(ranges, device=self._device).T
        return lo.view(-1, 1, 1), hi.view(-1, 1, 1)

    def level_to_f(self, k: int, v: Tensor) -> Tensor:
        """A discrete level's integers in model units: 2 (v − mid) / K, mid the centre of
        the channel's range (for pixels 2 (x + ½)/K − 1: one grid step is 2/K everywhere)."""
        lo, hi = self.value_range(k)
        return 2 * (v.to(self.dtype) - (lo + hi).to(self.dtype) / 2) / self.config.K

    def log_p_x_given_z0(self, x: Tensor, z0: Tensor, gamma_0: Tensor, k: int | None = None) -> Tensor:
        """VDM's discrete per-pixel decoder, summed over pixels: log p(x | z₀), (N,).

        For the image (k = None), logits over v: −½ ((u − e_v)/s)², u = z₀/α₀, s = σ₀/α₀,
        e_v = 2(v + ½)/K − 1; for discrete level k the values run over that level's range
        with ``level_to_f``'s e_v (same grid step Δ = 2/K).
        The normaliser only needs the values near u: with v* the value nearest to u, a value
        j ≥ 1 bins away has log-weight below the largest by at least ½ j(j−1) (Δ/s)²
        (Δ = 2/K), so all values more than W bins away together weigh less than
        R exp(−½ W(W+1) (Δ/s)²) ≤ 2⁻⁶⁰ times the largest (R values in the range) when W is
        chosen as below: the windowed log-sum-exp equals the full one to within
        floating-point rounding. For K = 256 at VDM's γ₀ that is 5 values instead of 256 (the
        N·d·K logits tensor was most of a W-PCDM training step); a wide s falls back to the
        whole range.
        """
        K = self.config.K
        alpha_0, sigma_0 = alpha_sigma(gamma_0)
        lo, hi = self.value_range(k)
        mid = (lo + hi).to(z0.dtype) / 2
        u, s = z0 / alpha_0, sigma_0 / alpha_0
        x = x.long()
        logit_x = -0.5 * ((u - 2 * (x - mid) / K) / s) ** 2
        R = int((hi - lo).max()) + 1  # values in the widest channel's range
        ratio2 = (2 / K / float(s.detach())) ** 2  # (Δ/s)²
        need = 2 * (60 * math.log(2) + math.log(R)) / ratio2  # W(W+1) ≥ need
        w = math.ceil((math.sqrt(1 + 4 * need) - 1) / 2)
        if 2 * w + 1 >= int((hi - lo).min()) + 1:
            offsets = torch.arange(R, device=z0.device)
            bins = lo[..., None] + offsets  # (C, 1, 1, R): every value of the channel
            valid = bins <= hi[..., None]
        else:
            v_cont = u.detach() * K / 2 + mid
            nearest = torch.minimum(
                torch.maximum(torch.round(v_cont), (lo + w).to(u.dtype)), (hi - w).to(u.dtype)
            )
            bins = nearest.long()[..., None] + torch.arange(-w, w + 1, device=z0.device)
            valid = None
        values = 2 * (bins.to(u.dtype) - mid[..., None]) / K
        logits = -0.5 * ((u[..., None] - values) / s) ** 2
        if valid is not None:
            logits = logits.masked_fill(~valid, -math.inf)
        logp = logit_x - torch.logsumexp(logits, -1)
        return logp.flatten(1).sum(1)

    def prior_kl(self, c: Tensor, n: int, gamma_1: Tensor) -> Tensor:
        """KL(q(z₁ | c) ‖ N(0, I)) over the level's n dimensions, (N,)."""
        alpha_1, sigma_1 = alpha_sigma(gamma_1)
        sq = c.flatten(1).pow(2).sum(1)
        return 0.5 * (alpha_1**2 * sq + n * (sigma_1**2 - torch.log(sigma_1**2) - 1))

    def diffusion_loss(
        self,
        k: int,
        c: Tensor,
        eps: Tensor,
        t: Tensor,
        cond: Tensor | None,
        steps: int | None,
        denoiser: Denoiser,
        w: Tensor | None = None,
    ) -> Tensor:
        """One-sample estimate of level k's diffusion term, (N,), at times t ∈ [0, 1)
        drawn uniformly, or from a density p with importance weights w = 1/p(t)."""
        if steps is None:  # continuous time: ½ γ'(t) ‖ε − ε̂‖²
            gamma_t, weight = self.schedule.gamma_and_slope(t)
        else:  # T steps: ½ T expm1(γ(tᵢ) − γ(tᵢ₋₁)) ‖ε − ε̂‖²
            i = torch.floor(t * steps) + 1
            gamma_t, gamma_s = self.schedule(i / steps), self.schedule((i - 1) / steps)
            weight = steps * torch.expm1(gamma_t - gamma_s)
        alpha_t, sigma_t = (v.view(-1, 1, 1, 1) for v in alpha_sigma(gamma_t))
        z_t = alpha_t * c + sigma_t * eps
        eps_hat = self.map.project(k, denoiser(k, z_t, gamma_t, cond))  # Πₖ ε̂ (docs/math.md §3)
        if w is not None:
            weight = weight * w
        return 0.5 * weight * (eps - eps_hat).flatten(1).pow(2).sum(1)

    # --- the bound ----------------------------------------------------------
    def nelbo(
        self,
        x: Tensor,
        steps: int | None = None,
        denoiser: Denoiser | None = None,
        noise: Noise | None = None,
    ) -> Bound:
        """−ELBO of each image in nats with its parts (docs/math.md §3). ``steps`` = T for the
        discrete-time bound (what the codec achieves), None for continuous time;
        ``noise`` fixes the random draws (default: fresh from the global generator)."""
        self.check_input(x)
        if noise is None:
            noise = Noise.draw(x.shape, len(self.level_shapes), device=x.device, dtype=self.dtype)
        denoiser = denoiser or self.eps_hat
        gamma_0 = self.schedule(torch.zeros((), device=x.device, dtype=self.dtype))
        gamma_1 = self.schedule(torch.ones((), device=x.device, dtype=self.dtype))
        return self.level_kind.nelbo(self, x, steps, denoiser, noise, gamma_0, gamma_1)

    def _extras(self, t: Tensor, steps: int | None, diff: Tensor) -> dict:
        """γ at each level's sampled time (the step's upper end for T steps), (N, S)."""
        with torch.no_grad():
            t_eval = t.T if steps is None else (torch.floor(t.T * steps) + 1) / steps
            gamma_t = self.schedule(t_eval.to(self.dtype))
        return {"gamma_t": gamma_t, "diffusion_levels": diff.detach()}

    def discrete_condition(self, xs: list[Tensor], k: int) -> Tensor | None:
        """What level k of a discrete map is conditioned on: the clean integer image rebuilt
        from the coarser levels ``xs[:k]``, encoded like pixels."""
        return None if k == 0 else self.pixels_to_f(self.map.condition(xs, k))

    def forward(
        self,
        x: Tensor,
        steps: int | None = None,
        noise: Noise | None = None,
        return_bound: bool = False,
    ):
        """Training loss: the mean bound in bits per dimension (or the whole Bound); for an
        EDM model, EDM's loss (not a bound, docs/math.md §11) unless the bound is asked for."""
        if self.config.objective == "edm" and not return_bound:
            if noise is None:
                noise = Noise.draw(x.shape, len(self.level_shapes), device=x.device, dtype=self.dtype)
            return edm.edm_loss(self, x, noise)
        bound = self.nelbo(x, steps, noise=noise)
        return bound if return_bound else to_bpd(bound.total, self.dims).mean()

    # --- generation (docs/math.md §5) ------------------------------------------------
    def reverse_step(
        self, k: int, z_t: Tensor, t: Tensor, s: Tensor, cond: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """Mean and std of p(z_s | z_t) for level k, s < t (shared by sampler and codec)."""
        gamma_t, gamma_s = self.schedule(t), self.schedule(s)
        alpha_t, sigma_t = alpha_sigma(gamma_t)
        alpha_s, sigma_s = alpha_sigma(gamma_s)
        alpha_ts = alpha_t / alpha_s
        var_ts = -torch.expm1(gamma_s - gamma_t) * sigma_t**2  # σ²_{t|s}, computed stably
        eps_hat = self.eps_hat(k, z_t, gamma_t.expand(z_t.shape[0]), cond)
        x_hat = (z_t - sigma_t * eps_hat) / alpha_t
        mean = (alpha_ts * sigma_s**2 / sigma_t**2) * z_t + (alpha_s * var_ts / sigma_t**2) * x_hat
        std = (var_ts * sigma_s**2 / sigma_t**2).sqrt()
        return mean, std

    def decode_pixels(self, z0: Tensor) -> Tensor:
        """argmax of p(x | z₀): the nearest pixel value to z₀/α₀, uint8."""
        return self.decode_level(None, z0).to(torch.uint8)

    def decode_level(self, k: int | None, z0: Tensor) -> Tensor:
        """argmax of the decoder of discrete level k (k = None: of the image): the nearest
        value of its range, int64."""
        alpha_0, _ = alpha_sigma(self.schedule(torch.zeros((), device=z0.device, dtype=z0.dtype)))
        lo, hi = self.value_range(k)
        v = torch.round(z0 / alpha_0 * self.config.K / 2 + (lo + hi).to(z0.dtype) / 2)
        return torch.minimum(torch.maximum(v, lo.to(v.dtype)), hi.to(v.dtype)).long()

    @torch.no_grad()
    def sample(
        self, n: int, steps: int = 256, generator: torch.Generator | None = None, progress=None
    ) -> tuple[Tensor, list[Tensor]]:
        """Ancestral sampling level by level, coarse first. Returns the uint8 images
        (N, C, H, W) and one uint8 preview per level (coarse to fine)."""
        device = next(self.parameters()).device
        kind = self.level_kind
        done, previews = [], []  # finished levels, as the finer levels are conditioned on them
        for k, shape in enumerate(self.level_shapes):
            cond = kind.condition(self, done, k)
            z = torch.randn((n, *shape), device=device, generator=generator, dtype=self.dtype)
            z = self.map.project(k, z)
            for i in range(steps, 0, -1):
                t = torch.tensor(i / steps, device=device, dtype=self.dtype)
                s = torch.tensor((i - 1) / steps, device=device, dtype=self.dtype)
                mean, std = self.reverse_step(k, z, t, s, cond)
                noise = torch.randn(z.shape, device=device, generator=generator, dtype=z.dtype)
                noise = self.map.project(k, noise)
                z = mean + std * noise
                if progress is not None:
                    progress.update(1)
            done.append(kind.finish(self, k, z))
            previews.append(kind.preview(self, done))
        return previews[-1], previews

    def preview(self, zs: list[Tensor]) -> Tensor:
        """uint8 image at the resolution of the finished levels ``zs`` (coarse first) of a
        continuous map."""
        return self.decode_pixels(self.map.preview(zs))


# --- how the levels make an image: the two kinds of map --------------------------------


class ContinuousLevels:
    """An exact continuous map (vdm, w-pcdm, lp-pcdm): the levels are one image at S
    scales, with continuous latents, one pixel decoder p(x | z₀) for z₀ = hᵀ(z₀¹ … z₀ˢ),
    and level s conditioned on the coarser t = 0 latents z₀^{<s} (docs/math.md §3)."""

    def nelbo(self, model: PCDM, x, steps, denoiser, noise, gamma_0, gamma_1) -> Bound:
        """The joint over levels is the likelihood of x (paper Lemma 4.1): no Jacobian."""
        alpha_0, sigma_0 = alpha_sigma(gamma_0)
        f = model.pixels_to_f(x)
        cs = model.map(f)
        # One ε₀ draw gives z₀ for the decoder and the coarser levels' conditioning.
        z0 = alpha_0 * f + sigma_0 * noise.eps0
        conds = model.map(z0)
        recon = -model.log_p_x_given_z0(x, z0, gamma_0)
        eps_levels = model.map(noise.eps)  # εˢ = h(ε)ˢ: iid within each subspace
        priors, diffs = [], []
        for k, c in enumerate(cs):
            cond = model.map.condition(conds, k)
            priors.append(model.prior_kl(c, model.level_dims[k], gamma_1))
            t, w = noise.t[k], noise.weight(k)
            diffs.append(model.diffusion_loss(k, c, eps_levels[k], t, cond, steps, denoiser, w))
        prior, diff = torch.stack(priors, 1), torch.stack(diffs, 1)
        extras = model._extras(noise.t, steps, diff)
        return Bound(prior.sum(1), diff.sum(1), recon, per_level=prior + diff, dims=model.dims, extras=extras)

    def condition(self, model: PCDM, done: list[Tensor], k: int) -> Tensor | None:
        return model.map.condition(done, k)

    def finish(self, model: PCDM, k: int, z: Tensor) -> Tensor:
        """A finished level is its z₀: the finer levels are conditioned on it."""
        return z

    def preview(self, model: PCDM, done: list[Tensor]) -> Tensor:
        return model.preview(done)


class DiscreteLevels:
    """A discrete map (c-vdm's cascade, lift-pcdm): every level is a discrete image of its
    own, with its own prior, diffusion and decoder, conditioned on the clean coarser levels.
    Σₛ −ELBOₛ bounds −log P(x): exactly by the chain rule when the map is a bijection of
    integer images (lifting), loosely otherwise (C-VDM drops the sum over the values of
    the other scales)."""

    def nelbo(self, model: PCDM, x, steps, denoiser, noise, gamma_0, gamma_1) -> Bound:
        alpha_0, sigma_0 = alpha_sigma(gamma_0)
        xs = model.map(x.long())
        eps0_levels, eps_levels = model.map.noise_levels(noise.eps0), model.map.noise_levels(noise.eps)
        priors, diffs, recons = [], [], []
        for k, v in enumerate(xs):
            c = model.level_to_f(k, v)
            cond = model.discrete_condition(xs, k)
            priors.append(model.prior_kl(c, model.level_dims[k], gamma_1))
            t, w = noise.t[k], noise.weight(k)
            diffs.append(model.diffusion_loss(k, c, eps_levels[k], t, cond, steps, denoiser, w))
            z0 = alpha_0 * c + sigma_0 * eps0_levels[k]
            recons.append(-model.log_p_x_given_z0(v, z0, gamma_0, k))
        prior, diff, recon = (torch.stack(v, 1) for v in (priors, diffs, recons))
        per_level = prior + diff + recon
        extras = model._extras(noise.t, steps, diff)
        return Bound(prior.sum(1), diff.sum(1), recon.sum(1), per_level, dims=model.dims, extras=extras)

    def condition(self, model: PCDM, done: list[Tensor], k: int) -> Tensor | None:
        return model.discrete_condition(done, k)

    def finish(self, model: PCDM, k: int, z: Tensor) -> Tensor:
        """A finished level is decoded to its integers; the next one sees it clean."""
        return model.decode_level(k, z)

    def preview(self, model: PCDM, done: list[Tensor]) -> Tensor:
        return model.map.octave_image(done).clamp(0, model.config.K - 1).to(torch.uint8)


CONTINUOUS_LEVELS, DISCRETE_LEVELS = ContinuousLevels(), DiscreteLevels()


def _shift(fourier, octaves):
    """Finer coefficient lattices at coarser octaves get higher Fourier frequencies."""
    return None if fourier is None else (fourier[0] + octaves, fourier[1] + octaves)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
