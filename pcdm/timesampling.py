"""Importance sampling of each level's diffusion time: the same bound, less variance.

The continuous-time diffusion term of level k is an integral over t ∈ [0, 1),

    L_k = ∫₀¹ ℓ_k(t) dt,    ℓ_k(t) = ½ γ'(t) E‖ε − ε̂‖²,

estimated from one t per image. Drawing t from a density p_k and weighting by 1/p_k(t)
keeps the estimate unbiased for any p_k > 0:  E_{t∼p_k}[ℓ_k(t) / p_k(t)] = L_k. Its
variance is smallest for p_k ∝ √E[ℓ_k(t)²]. A detail level whose bits are paid in a narrow
band of noise levels wastes most uniform draws; this sampler learns where they are.

p_k is piecewise constant on B equal bins of t, mixed with the uniform density so that
every weight is at most 1/floor:

    q_k(b) = (1 − floor) √m_k(b) / Σ_b′ √m_k(b′) + floor / B,    p_k(t) = B q_k(b(t)),

with m_k(b) a running mean of ℓ_k(t)² over the draws that fell in bin b (uniform until
``warmup`` updates). Only training uses it: evaluation, the codec and every printed number
draw t uniformly. Its state is part of a training checkpoint, so ``--resume`` continues the
same sequence of draws.
"""

from __future__ import annotations

import torch
from torch import Tensor


class TimeSampler:
    def __init__(
        self, levels: int, bins: int = 32, decay: float = 0.99, floor: float = 0.1, warmup: int = 100
    ):
        if not 0 < floor <= 1:
            raise ValueError(f"floor must be in (0, 1], got {floor}")
        self.bins, self.decay, self.floor, self.warmup = bins, decay, floor, warmup
        self.second_moment = torch.ones(levels, bins, dtype=torch.float64)
        self.updates = 0

    def probabilities(self) -> Tensor:
        """q_k(b), (S, B): the probability of each bin; each row sums to 1."""
        if self.updates < self.warmup:
            return torch.full_like(self.second_moment, 1.0 / self.bins)
        root = self.second_moment.sqrt()
        return (1 - self.floor) * root / root.sum(1, keepdim=True) + self.floor / self.bins

    def transform(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Uniform draws u ∈ [0, 1), (S, N) → times t ∼ p_k and weights 1/p_k(t), (S, N).
        The inverse CDF is monotone, so stratified (antithetic) u stay stratified."""
        q = self.probabilities()
        cdf = torch.cat([torch.zeros(len(q), 1, dtype=q.dtype), q.cumsum(1)], 1)
        cdf[:, -1] = 1.0
        u64 = u.detach().to("cpu", torch.float64)
        b = torch.searchsorted(cdf[:, 1:].contiguous(), u64.contiguous(), right=True)
        b = b.clamp_(max=self.bins - 1)
        q_b = q.gather(1, b)
        t = (b + (u64 - cdf.gather(1, b)) / q_b) / self.bins
        t = t.clamp_(0.0, torch.nextafter(torch.tensor(1.0, dtype=t.dtype), torch.tensor(0.0, dtype=t.dtype)))
        return t.to(u.device, u.dtype), (1.0 / (self.bins * q_b)).to(u.device, u.dtype)

    def statistics(self, t: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Per-bin sums of ℓ² and counts, (S, B) each, from unweighted integrand values
        ℓ_k(t) at times t, (S, N): what ``update`` needs (summed over ranks first)."""
        t, values = t.detach().to("cpu", torch.float64), values.detach().to("cpu", torch.float64)
        b = (t * self.bins).long().clamp_(0, self.bins - 1)
        sums = torch.zeros_like(self.second_moment).scatter_add_(1, b, values.pow(2))
        counts = torch.zeros_like(self.second_moment).scatter_add_(1, b, torch.ones_like(values))
        return sums, counts

    def update(self, sums: Tensor, counts: Tensor) -> None:
        seen = counts > 0
        if self.updates == 0:  # the first batch sets the level of every bin it saw
            self.second_moment[seen] = sums[seen] / counts[seen]
        else:
            mean = sums[seen] / counts[seen]
            self.second_moment[seen] = self.decay * self.second_moment[seen] + (1 - self.decay) * mean
        self.updates += 1

    def state_dict(self) -> dict:
        return {"second_moment": self.second_moment.tolist(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        m = torch.tensor(state["second_moment"], dtype=torch.float64)
        if m.shape != self.second_moment.shape:
            want = tuple(self.second_moment.shape)
            raise ValueError(f"time-sampler state has shape {tuple(m.shape)}, expected {want}")
        self.second_moment, self.updates = m, int(state["updates"])
