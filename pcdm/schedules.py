"""Noise schedules γ(t), t ∈ [0, 1], increasing (docs/math.md §3, VDM).

α_t² = sigmoid(−γ(t)), σ_t² = sigmoid(γ(t)). Every schedule returns γ and, for the
continuous-time diffusion loss, its slope γ'(t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def alpha_sigma(gamma: Tensor) -> tuple[Tensor, Tensor]:
    """Variance-preserving α, σ from γ = log(σ²/α²)."""
    return torch.sigmoid(-gamma).sqrt(), torch.sigmoid(gamma).sqrt()


class Schedule(nn.Module):
    def gamma_and_slope(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """γ(t) and γ'(t); the generic version differentiates through the module."""
        outer = torch.is_grad_enabled()  # a double-backward graph only when training
        with torch.enable_grad():
            t = t.detach().requires_grad_(True)
            g = self(t)
            (slope,) = torch.autograd.grad(g.sum(), t, create_graph=outer)
        return (g, slope) if outer else (g.detach(), slope.detach())


class FixedLinear(Schedule):
    """γ(t) = γ_min + (γ_max − γ_min) t, not trained."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        self.gamma_min, self.gamma_max = gamma_min, gamma_max

    def forward(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * t

    def gamma_and_slope(self, t):
        return self(t), torch.full_like(t, self.gamma_max - self.gamma_min)


class LearnedLinear(Schedule):
    """γ(t) = b + |w| t with b and w trained by the ELBO (VDM's scalar schedule)."""

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0):
        super().__init__()
        self.b = nn.Parameter(torch.tensor(float(gamma_min)))
        self.w = nn.Parameter(torch.tensor(float(gamma_max - gamma_min)))

    def forward(self, t):
        return self.b + self.w.abs() * t

    def gamma_and_slope(self, t):
        return self(t), self.w.abs().expand_as(t)


class _PositiveLinear(nn.Linear):
    """A linear layer whose weights are kept positive (softplus), for monotonicity."""

    def forward(self, x):
        return F.linear(x, F.softplus(self.weight), self.bias)


class MonotoneNet(Schedule):
    """VDM's monotone network: γ(t) = γ₀ + (γ₁ − γ₀) (γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)).

    γ̃(t) = l₁(t) + l₃(sigmoid(l₂(l₁(t)))) with positive weights, so γ̃ and γ increase;
    the endpoints γ₀ = γ(0), γ₁ = γ(1) are learned scalars.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, width: int = 1024):
        super().__init__()
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_min)))
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_max)))
        self.l1 = _PositiveLinear(1, 1)
        self.l2 = _PositiveLinear(1, width)
        self.l3 = _PositiveLinear(width, 1)

    def _tilde(self, t):
        h = self.l1(t[..., None])
        return (h + self.l3(torch.sigmoid(self.l2(h))))[..., 0]

    def forward(self, t):
        ends = self._tilde(torch.tensor([0.0, 1.0], device=t.device, dtype=t.dtype))
        unit = (self._tilde(t) - ends[0]) / (ends[1] - ends[0])
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * unit


SCHEDULES = {"fixed": FixedLinear, "learned": LearnedLinear, "monotone": MonotoneNet}


def build_schedule(name: str, gamma_min: float = -13.3, gamma_max: float = 5.0) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name](gamma_min, gamma_max)
