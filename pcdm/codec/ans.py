"""ANS primitives of the codec: the T-step grid, quantised Gaussians on it (pushed and
popped with escape-coded supports and Sheppard-corrected stds), bit whitening, the pixel
decoder's categoricals, and the counter-based initial reservoir."""

from __future__ import annotations

import contextlib
import math
import struct
from dataclasses import dataclass, field

import constriction
import numpy as np
import torch

from ..model import PCDM

MAGIC = b"PCDM"
VERSION = 3  # 3: escape-coded supports, Sheppard-corrected stds, 2^-3 grid (2: 4-bit support exponents)
KIND_NPY, KIND_FOLDER = 0, 1
GRID_BITS = 3  # bin width = 2^-3 × the smallest std a variable is coded with (floor to 2^k)
MEAN_QUANT = 2.0**-12  # mean offsets rounded to this fraction of a bin
POP_STDS = 5.0  # support of a pop from q: ±5 std (bins beyond hold < 2^−24 each anyway)
PUSH_STDS = 7.0  # default support of a push under p: ±7 std (≥ POP_STDS + a margin), wider on escape
ESCAPE = 2.0**-16  # probability given to "this push needs a wider support"
MAX_SUPPORT = 1 << 22  # ±2^22 bins at most (constriction needs < 2^24 symbols)
WORK_PER_BIT = 64  # a decoder runs at most this many batch chain steps per payload bit
RESERVOIR_SEED = 0x50434D44
WHITEN_SEED = 0x57484954
PIXEL_CHUNK = 8192  # rows of the categorical pixel model per constriction call
HEADER = struct.Struct("<4sBBBB32s15I")
HEADER_CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size + HEADER_CRC.size  # 104
MAX_T = 100_000
MAX_LANES = 65_536
MAX_IMAGES = 1 << 26
MAX_SIDE = 1 << 14
MAX_NAME = 4096

_AnsCoder = constriction.stream.stack.AnsCoder
_QG = constriction.stream.model.QuantizedGaussian
_CAT = constriction.stream.model.Categorical(perfect=False)
_UNIFORM = constriction.stream.model.Uniform
_CHUNK = _UNIFORM(1 << 16)


class CodecError(ValueError):
    """A .pcdm file that cannot be decoded (or data that cannot be encoded), in one line."""


class _Dry(Exception):
    """The encoder's initial reservoir was too small; retried with a bigger one."""


# ---------------------------------------------------------------------------
# The schedule on the T-step grid, in float64.


@dataclass
class Grid:
    T: int
    alpha: np.ndarray  # α_{tᵢ}, i = 0..T
    sigma: np.ndarray  # σ_{tᵢ}
    a_q: np.ndarray  # α_{tᵢ|tᵢ₋₁} (index i, entry 0 unused)
    s_q: np.ndarray  # σ_{tᵢ|tᵢ₋₁}: std of the pop of z_{tᵢ}, i ≥ 1; s_q[0] = σ₀
    s_p: np.ndarray  # std of the push of z_{tᵢ}: p(z_{tᵢ} | z_{tᵢ₊₁}); s_p[T] = 1
    delta: np.ndarray  # bin width of z_{tᵢ}
    gammas: list[float] = field(default_factory=list)


def make_grid(model: PCDM, T: int) -> Grid:
    with torch.no_grad():
        g = [float(model.schedule(torch.tensor(i / T, dtype=model.dtype))) for i in range(T + 1)]
    gam = np.array(g, dtype=np.float64)
    if not np.all(np.isfinite(gam)) or np.any(np.diff(gam) <= 0):
        raise CodecError("the model's γ schedule is not strictly increasing on the T-step grid")
    sig2 = 1 / (1 + np.exp(-gam))
    alp2 = 1 / (1 + np.exp(gam))
    alpha, sigma = np.sqrt(alp2), np.sqrt(sig2)
    a_q, s_q, s_p = np.ones(T + 1), np.empty(T + 1), np.empty(T + 1)
    s_q[0] = sigma[0]
    for i in range(1, T + 1):
        var_ts = -np.expm1(gam[i - 1] - gam[i]) * sig2[i]
        a_q[i] = alpha[i] / alpha[i - 1]
        s_q[i] = math.sqrt(var_ts)
        s_p[i - 1] = math.sqrt(var_ts * sig2[i - 1] / sig2[i])
    s_p[T] = 1.0
    smallest = np.minimum(s_q, s_p) * 2.0**-GRID_BITS
    delta = 2.0 ** np.floor(np.log2(smallest))
    return Grid(T, alpha, sigma, a_q, s_q, s_p, delta, g)


# ---------------------------------------------------------------------------
# Quantised Gaussian pops and pushes on a lattice δℤ. Latents are int64 bin indices j.


def _centre(mean: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    mb = mean / delta
    if not np.all(np.isfinite(mb)) or np.abs(mb).max(initial=0) > 2.0**50:
        raise CodecError("corrupt stream: the model's predictions are not finite")
    centre = np.floor(mb + 0.5)
    off = np.round((mb - centre) / MEAN_QUANT) * MEAN_QUANT
    return centre.astype(np.int64), off


def _bins(std: float, delta: float, shape) -> np.ndarray:
    """The std handed to the quantised Gaussian, in bins, with Sheppard's correction.

    A bin's probability is the Gaussian's mass over the bin, so the lattice variable has
    variance σ² + δ²/12 (the density convolved with a width-δ box). Coding with
    σ'² = σ² − δ²/12 makes the lattice distribution match N(μ, σ²) in mean and variance:
    samples popped from q have exactly the forward process's variance, and −log of a cell
    under p equals −log(density · δ) up to O((δ/σ)⁴). Without it every step adds δ²/12 of
    noise that p does not expect, ≈ (δ/σ)²/24 nats per latent per step."""
    sb = std / delta
    return np.full(shape, math.sqrt(sb * sb - 1.0 / 12.0))


def _pop_support(std_bins: float) -> int:
    return int(math.ceil(POP_STDS * std_bins)) + 1


def _whiten_chunks(n: int, std_bins: float) -> int:
    """16-bit chunks to whiten before popping n symbols: 1.25 × their expected bits + 64."""
    bits = n * max(1.0, math.log2(math.sqrt(2 * math.pi * math.e) * std_bins))
    return int(math.ceil((1.25 * bits + 64) / 16))


def _whiten(coder, m: int, tag: tuple[int, ...], guard: _Guard | None, undo: bool) -> None:
    """Replace the top m 16-bit chunks u of the stack by (u ± r) mod 2^16, r pseudo-random.

    ANS hands a pop the quantile of the symbols pushed last. Under a model that fits the
    pushed data imperfectly those quantiles are not uniform ("dirty bits"), so the popped
    latents would not be samples of q and the code would exceed the ELBO. Adding a
    reproducible pseudo-random offset (a bijection, exactly undone by the decoder) makes
    them uniform again; it costs no bits (a uniform pop and push of the same size).
    """
    r = np.random.default_rng([WHITEN_SEED, *tag]).integers(0, 1 << 16, m, dtype=np.int64)
    u = coder.decode(_CHUNK, m).astype(np.int64)
    if guard is not None:
        guard.after_pop(coder)
    v = (u - r) % (1 << 16) if undo else (u + r) % (1 << 16)
    coder.encode_reverse(v.astype(np.int32), _CHUNK)


def pop_q(coder, mean: np.ndarray, std: float, delta: float, guard: _Guard, tag) -> np.ndarray:
    """Sample j ~ q on δℤ by popping (fixed ±POP_STDS σ support), from whitened bits."""
    centre, off = _centre(mean, delta)
    sb = std / delta
    R = _pop_support(sb)
    _whiten(coder, _whiten_chunks(off.size, sb), tag, guard, undo=False)
    sym = coder.decode(_QG(-R, R), off, _bins(std, delta, off.shape))
    guard.after_pop(coder)
    return centre + sym.astype(np.int64)


def push_q(coder, j: np.ndarray, mean: np.ndarray, std: float, delta: float, tag) -> None:
    """Inverse of :func:`pop_q` (decoder side): give the bits back."""
    centre, off = _centre(mean, delta)
    sb = std / delta
    R = _pop_support(sb)
    sym = j - centre
    if np.abs(sym).max(initial=0) > R:
        raise CodecError("corrupt stream: a latent lies outside its posterior's support")
    _encode(coder, sym.astype(np.int32), _QG(-R, R), off, _bins(std, delta, off.shape))
    _whiten(coder, _whiten_chunks(off.size, sb), tag, None, undo=True)


def _push_base(sb: float) -> tuple[int, int]:
    """Default support ±R₀ (R₀ = ⌈PUSH_STDS σ⌉ + 1 bins) of a push under p, and how many
    doublings of it (1 … n_wide) an escape may ask for."""
    r0 = int(math.ceil(PUSH_STDS * sb)) + 1
    if r0 > MAX_SUPPORT:
        raise CodecError("the T-step grid is too fine for the entropy coder; use fewer steps")
    return r0, (MAX_SUPPORT // r0).bit_length() - 1


def _escape_model():
    return _CAT, np.array([[1.0 - ESCAPE, ESCAPE]])


def push_p(coder, j: np.ndarray, mean: np.ndarray, std: float, delta: float) -> None:
    """Code j with the model's Gaussian on the support ±R₀ 2^w, then w (popped first).

    w = 0 (no latent beyond ±R₀) is coded with probability 1 − ESCAPE, so the side
    information costs ≈ 2·10⁻⁵ bits per push instead of a few bits (a few bits per batch and
    step were 0.25 bits per pixel at T = 1000 with small batches). A poor model costs
    ≈ 17 + log₂ n_wide bits per push where it needs a wider support, and never fails."""
    centre, off = _centre(mean, delta)
    sb = std / delta
    r0, n_wide = _push_base(sb)
    sym = j - centre
    far = int(np.abs(sym).max(initial=0))
    w = 0 if far <= r0 else (-(-far // r0) - 1).bit_length()
    if w > n_wide:
        raise CodecError(
            "a latent lies too far from the model's prediction to be coded; is the model "
            "trained on data like this?"
        )
    R = r0 << w
    _encode(coder, sym.astype(np.int32), _QG(-R, R), off, _bins(std, delta, off.shape))
    if w:
        _encode(coder, np.array([w - 1], dtype=np.int32), _UNIFORM(n_wide))
    _encode(coder, np.array([int(w > 0)], dtype=np.int32), *_escape_model())


def pop_p(coder, mean: np.ndarray, std: float, delta: float, guard: _Guard) -> np.ndarray:
    centre, off = _centre(mean, delta)
    sb = std / delta
    r0, n_wide = _push_base(sb)
    w = int(coder.decode(*_escape_model())[0])
    if w:
        w = 1 + int(coder.decode(_UNIFORM(n_wide), 1)[0])
    R = r0 << w
    sym = coder.decode(_QG(-R, R), off, _bins(std, delta, off.shape))
    guard.after_pop(coder)
    return centre + sym.astype(np.int64)


def _encode(coder, symbols, model, *params) -> None:
    try:
        coder.encode_reverse(symbols, model, *params)
    except (KeyError, ValueError) as err:
        raise CodecError(f"corrupt stream: cannot give back a symbol ({err})") from None


def level_probs(z0: np.ndarray, alpha0: float, sigma0: float, K: int, lo: int = 0, hi: int | None = None):
    """p(v | z₀) per entry (rows) over the integer values v = lo..hi (default: the K pixel
    values), float64, unnormalised (max = 1): VDM's decoder with e_v = 2 (v − mid)/K."""
    hi = K - 1 if hi is None else hi
    values = 2 * (np.arange(lo, hi + 1, dtype=np.float64) - (lo + hi) / 2) / K
    logits = -0.5 * ((z0[:, None] / alpha0 - values[None, :]) / (sigma0 / alpha0)) ** 2
    logits -= logits.max(axis=1, keepdims=True)
    return np.exp(logits)


def _chunk_rows(lo: int, hi: int) -> int:
    """Rows per constriction call, so a chunk holds about PIXEL_CHUNK × 256 probabilities."""
    return max(1, PIXEL_CHUNK * 256 // (hi - lo + 1))


def push_pixels(coder, x: np.ndarray, z0: np.ndarray, alpha0, sigma0, K, lo=0, hi=None) -> None:
    """Push integer values x (in lo..hi, default the pixel values) with p(x | z₀)."""
    hi = K - 1 if hi is None else hi
    step = _chunk_rows(lo, hi)
    for start in range(0, len(x), step):
        sl = slice(start, start + step)
        probs = level_probs(z0[sl], alpha0, sigma0, K, lo, hi)
        _encode(coder, (x[sl] - lo).astype(np.int32), _CAT, probs)


def pop_pixels(coder, z0: np.ndarray, alpha0, sigma0, K, guard, lo=0, hi=None) -> np.ndarray:
    """Mirror of :func:`push_pixels`."""
    if not np.all(np.isfinite(z0)):
        raise CodecError("corrupt stream: latents are not finite")
    hi = K - 1 if hi is None else hi
    step = _chunk_rows(lo, hi)
    out = np.empty(len(z0), dtype=np.int64)
    for start in reversed(range(0, len(z0), step)):
        sl = slice(start, start + step)
        out[sl] = coder.decode(_CAT, level_probs(z0[sl], alpha0, sigma0, K, lo, hi)) + lo
        guard.after_pop(coder)
    return out


class _Guard:
    """Tracks the lowest stack position (encoder) so the untouched reservoir is dropped."""

    def __init__(self, encoder: bool):
        self.encoder = encoder
        self.low = None

    def after_pop(self, coder) -> None:
        pos = coder.pos()[0]
        self.low = pos if self.low is None else min(self.low, pos)
        if self.encoder and pos == 0:
            raise _Dry()
        if not self.encoder and coder.pos()[1] < 2**32:
            # A valid stream never drains the ANS head: this one ran out of data.
            raise CodecError("corrupt stream: it ran out of data before the end")


def reservoir(n: int, start: int = 0) -> np.ndarray:
    """Words start … n−1 of the deterministic initial reservoir of n words. Word i is a
    fixed hash of (seed, i) (SplitMix64's finaliser), so the decoder builds the top part it
    checks without generating the pruned bottom: O(n − start) time and memory."""
    i = np.arange(start, n, dtype=np.uint64) + np.uint64(RESERVOIR_SEED)
    z = i * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    words = (z ^ (z >> np.uint64(31))).astype(np.uint32)
    if len(words):
        words[-1] |= 1  # ANS data never ends in a zero word
    return words


def _check_params(steps: int, lanes: int) -> None:
    if not 1 <= int(steps) <= MAX_T:
        raise CodecError(f"--steps must be in 1..{MAX_T}, got {steps}")
    if not 1 <= int(lanes) <= MAX_LANES:
        raise CodecError(f"--batch must be in 1..{MAX_LANES}, got {lanes}")


@contextlib.contextmanager
def _single_thread():
    """Network outputs must not depend on the thread count (decoder = encoder)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(before)
