"""ε-networks (docs/math.md §4): VDM's no-downsampling U-Net, optionally conditional.

The network takes (z_t, γ_t, cond) and knows nothing of losses. Ingredients from VDM:
Fourier features of the input, an embedding of γ, ResNet blocks with skip connections
from the "down" to the "up" half, one attention block in the middle, dropout, and the
output skip ε̂ = z_t + net(…) (the base measure). The conditional variant concatenates
the coarser-level image on channels, and any precomputed features (the model's lattice
features) after it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _groups(channels: int) -> int:
    for g in (32, 16, 8, 4, 2, 1):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, c_emb: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(c_emb, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


def fourier_features(z: Tensor, n_min: int, n_max: int) -> Tensor:
    """sin/cos(2ⁿ·2π·z) for n = n_min … n_max: lets the net see fine detail of z (VDM)."""
    freqs = (2.0 ** torch.arange(n_min, n_max + 1, device=z.device, dtype=z.dtype)) * 2 * math.pi
    zf = (z[:, :, None] * freqs[None, None, :, None, None]).flatten(1, 2)
    return torch.cat([zf.sin(), zf.cos()], dim=1)


def gamma_embedding(gamma: Tensor, dim: int, gamma_min: float, gamma_max: float) -> Tensor:
    """Sinusoidal embedding of γ rescaled to [0, 1000]."""
    t = (gamma - gamma_min) / (gamma_max - gamma_min) * 1000
    half = dim // 2
    freqs = torch.exp(
        -math.log(10000) * torch.arange(half, device=t.device, dtype=t.dtype) / max(half - 1, 1)
    )
    arg = t[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=1)


class UNet(nn.Module):
    def __init__(
        self,
        channels: int,  # channels of z_t (the level's coefficients)
        cond_channels: int = 0,  # channels of the coarser-level image (0 for the base level)
        width: int = 32,  # convolution width
        depth: int = 2,  # ResNet blocks on the way down (depth + 1 on the way up)
        attention: bool = True,  # one attention block in the middle
        dropout: float = 0.0,
        fourier: tuple[int, int] | None = (6, 8),  # exponents n of the Fourier features
        gamma_range: tuple[float, float] = (-13.3, 5.0),  # for the γ embedding only
        extra_channels: int = 0,  # precomputed input features (lattice features, docs/math.md §4)
    ):
        super().__init__()
        self.channels, self.cond_channels, self.width = channels, cond_channels, width
        self.extra_channels = extra_channels
        self.fourier, self.gamma_range = fourier, gamma_range
        n_fourier = 0 if fourier is None else 2 * (fourier[1] - fourier[0] + 1) * channels
        c_emb = 4 * width
        self.emb = nn.Sequential(nn.Linear(width, c_emb), nn.SiLU(), nn.Linear(c_emb, c_emb), nn.SiLU())
        self.conv_in = nn.Conv2d(channels + n_fourier + cond_channels + extra_channels, width, 3, padding=1)
        self.down = nn.ModuleList(ResBlock(width, width, c_emb, dropout) for _ in range(depth))
        self.mid1 = ResBlock(width, width, c_emb, dropout)
        self.attn = Attention(width) if attention else nn.Identity()
        self.mid2 = ResBlock(width, width, c_emb, dropout)
        self.up = nn.ModuleList(ResBlock(2 * width, width, c_emb, dropout) for _ in range(depth + 1))
        self.norm_out = nn.GroupNorm(_groups(width), width)
        self.conv_out = _zero(nn.Conv2d(width, channels, 3, padding=1))

    def forward(
        self, z: Tensor, gamma: Tensor, cond: Tensor | None = None, extra: Tensor | None = None
    ) -> Tensor:
        if z.shape[1] != self.channels:
            raise ValueError(f"ε-network expects {self.channels} channels, got {z.shape[1]}")
        gamma = gamma.expand(z.shape[0]) if gamma.dim() == 0 else gamma
        emb = self.emb(gamma_embedding(gamma.to(z.dtype), self.width, *self.gamma_range))
        parts = [z]
        if self.fourier is not None:
            parts.append(fourier_features(z, *self.fourier))
        if self.cond_channels:
            parts.append(cond)
        if self.extra_channels:
            parts.append(extra)
        h = self.conv_in(torch.cat(parts, dim=1))
        hs = [h]
        for block in self.down:
            h = block(h, emb)
            hs.append(h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return z + self.conv_out(F.silu(self.norm_out(h)))
