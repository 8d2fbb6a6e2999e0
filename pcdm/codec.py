"""Lossless compression with bits-back ANS over the T-step model (SPEC §7).

Coding order (Bit-Swap recursion), for one batch of B images coded side by side in B
*lanes* that share one ANS stack (``constriction.stream.stack.AnsCoder``):

  encoder, volume-preserving maps (identity, haar, lp)
    1. pop z₀ of every level from q(z₀ | x) = N(α₀ c, σ₀²);  push x with p(x | z₀);
    2. for each level, finest first: for i = 1..T pop z_{tᵢ} from
       q(z_{tᵢ} | z_{tᵢ₋₁}) = N(α_{tᵢ|tᵢ₋₁} z, σ²_{tᵢ|tᵢ₋₁}) and push z_{tᵢ₋₁} with the
       model's p(z_{tᵢ₋₁} | z_{tᵢ}, z₀^{<s}); finally push z₁ with N(0, I).
  encoder, discrete maps (C-VDM's cascade, the integer lifting): every level is a discrete
    image x_s with its own decoder over its own value range, so steps 1–2 run once per
    level, finest first, conditioned on the clean coarser levels. The code length is
    Σₛ −ELBOₛ (for C-VDM the redundant coarse pixels are paid for; lifting has none).

The decoder runs the exact mirror image, so the coarsest level of a batch comes out
first; batches are chained in one stream (batch 0 is encoded first and therefore decoded
last), so the initial random bits that the very first pops consume are needed only once.

Every op is one ``constriction`` call over all lanes of the batch; the symbol arrays are
laid out lane-major (lane 0's coordinates, then lane 1's, …), levels concatenated in
order for the z₀ pop. Each level is coded in an orthonormal basis of its subspace: the
level tensor itself for identity / haar / cascade, and the octave's Haar detail
coordinates for the lp detail levels (so exactly d continuous numbers per image).

Grid: latent variable z_{tᵢ} (shared by all levels) lives on the lattice δᵢ ℤ with
δᵢ = 2^⌊log₂(2^−GRID_BITS · min(std it is popped with, std it is pushed with))⌋; a
power of two so j·δ is exact. Each op codes the integer j − round(μ/δ) with a quantised
Gaussian of mean offset (rounded to 2^−12 bin, for robustness) and std
√((σ/δ)² − 1/12) (Sheppard's correction: a bin's mass is the density integrated over the
bin, which adds δ²/12 of variance). Pops from q use the support ±⌈5 σ/δ⌉; pushes under the
model ±⌈7 σ/δ⌉, doubled w times where a latent lies further out, with w = 0 coded at
probability 1 − 2^−16 (≈ 2·10⁻⁵ bits), so a poor model costs bits but never fails.

Per-step overhead (``benchmarks/codec_overhead.py``: an exact model, where the ideal net
code length is known): version 2 spent ≈ 1.1·10⁻⁴ bits per latent and step with 64-lane
batches and ≈ 5·10⁻³ with one-lane ramp batches — mostly a uniformly coded 4-bit support
exponent per push (4 bits / latents in the batch), then the unexpected δ²/12 variance
(≈ (δ/σ)²/24 nats per latent and step) and the 2^−24 probability floor of every bin of a
±10σ support (24-bit probabilities). Now: ≈ 5·10⁻⁶ bits per latent and step. All chain
inputs are the quantised values, so the decoder sees exactly what the encoder saw; network
calls run single-threaded (torch thread count restored after) so their outputs do not
depend on the caller's thread count.

Clean bits: ANS hands a pop the quantiles of the symbols pushed last; where the model
fits the pushed data imperfectly those are not uniform, the popped latents are then not
samples of q and the code exceeds the ELBO (measured: +7 % at T = 16 for a briefly trained
model). Before every pop from q the top 16-bit chunks of the stack (1.25 × the pop's
expected bits + 64) are replaced by (u + r) mod 2¹⁶ with r from a PRNG seeded by
(batch, level, step): a bijection done with uniform pops/pushes, free in bits and undone
exactly by the decoder. With it the same case is within 0.2 % of the ELBO.

Initial bits and the seed: the first pops of a stream need bits that nothing pushed yet.
The container stores the first m images classically (JPEG-XL or PNG lossless, the smaller:
:func:`classical_record`) anyway, so their bytes (:func:`seed_words`) are the bottom of the
stack and the first pops draw on them; the decoder gets them back intact once the chain is
undone, and decodes those images from them. m is the fewest images whose records hold what
the first one-lane batch draws (:func:`seed_need_bits`, ≈ 11 kbit for Fashion-MNIST, about
4 images). Below the seed lies a deterministic pseudo-random reservoir of words (fixed seed)
for whatever the seed does not cover; the encoder records the lowest stack position ever
reached (``kmin``), the reservoir words below it were never touched and are dropped from
the file, and the decoder checks that its stack ends in exactly the reservoir's top part and
the seed. ``initial_bits`` = 32 (n_init − kmin) reservoir bits consumed (with no seed, 32
(n_init − 2 − kmin) + 64: the ANS head then comes from the reservoir). Each lane's first z₀
pop costs more bits than an image's net code length, so full batches from the start would
need one pop's worth of initial bits per lane; the default *lane ramp* (``batch_layout``)
grows the batches from one lane as the stream grows and needs about one lane's worth in all
(measured: 600 kbit → 9.5 kbit for 300 Fashion-MNIST images at 64 lanes, same speed).

Container: ``codec_cli.compress`` builds both the all-classical file (m = N: no stream, no
model needed to decode) and the seeded bits-back file, and keeps the smaller (FLAG_CLASSICAL
says which), so a file is never larger than the images' best JPEG-XL/PNG files + ≤ 3 bytes
each (codec id, LEB128 length, below 16 KiB per file) + 104 header bytes + ≤ 8 padding bytes
+ the names or array shape.

File format (all integers little-endian)::

    offset size  field
    0      4     magic b"PCDM"
    4      1     version (3)
    5      1     input kind: 0 = .npy array, 1 = image folder
    6      1     GRID_BITS (grid fraction 2^−g of the smallest std)
    7      1     flags: bit 0 = lane ramp (see ``batch_layout``), bit 1 = classical (every
                 image in the seed, no stream); other bits 0
    8      32    model fingerprint (checkpoint.fingerprint, SHA-256)
    40     4×15  T, B (lanes), N (images), C, H, W, K, n_init (reservoir words),
                 kmin (pruned reservoir words), meta_len, payload_words,
                 CRC-32 of the pixels (uint8, N×H×W×C), CRC-32 of the payload,
                 m (seed images: the first m, stored classically), seed_words
    100    4     CRC-32 of bytes 0..99 and the meta block
    104    meta  kind 0: ndim (u8), ndim × u32 shape, dtype length (u8) + dtype string
                 kind 1: N × (u16 length + UTF-8 relative name), in coding order
    …      4·payload_words  ANS words (uint32 LE), as ``AnsCoder.get_compressed()``: the
                 reservoir words kmin … n_init − 1, then the seed (m classical records:
                 codec id u8 = index into ``baselines.CODECS``, LEB128 length, file; zero
                 padding and a last byte p = padding bytes, 1..8), then the stream

Every header field is bounds-checked before anything is allocated; the file length must
match exactly. Any mismatch (model, size, checksum, stream) is a :class:`CodecError`
(a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import contextlib
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import constriction
import numpy as np
import torch

from . import baselines
from .model import PCDM

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


# ---------------------------------------------------------------------------
# Level coordinates (orthonormal basis of each level's subspace).


class _Levels:
    def __init__(self, model: PCDM):
        self.model = model
        self.vp = not model.map.discrete
        self.shapes = model.level_shapes
        self.S = len(self.shapes)

    def n(self, k: int) -> int:
        return self.model.level_dims[k]

    def to_coords(self, k: int, v: torch.Tensor) -> np.ndarray:
        """Level k in the map's orthonormal coordinates of its subspace (what is coded)."""
        return self.model.map.to_coords(k, v).double().numpy()

    def from_coords(self, k: int, u: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(u)).to(self.model.dtype)
        return self.model.map.from_coords(k, t, self.shapes[k])


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


# ---------------------------------------------------------------------------
# One batch: encoder and decoder, exact mirror images.


class _Batch:
    def __init__(self, model: PCDM, grid: Grid, coder, guard, bar=None, index: int = 0):
        self.index = index
        self.model, self.grid, self.coder, self.guard, self.bar = model, grid, coder, guard, bar
        self.L = _Levels(model)
        self.K = model.config.K
        self.alpha0, self.sigma0 = float(grid.alpha[0]), float(grid.sigma[0])
        if model.map.discrete:
            chw = model.config.image_shape
            self.ranges = [model.map.value_range(k, chw, self.K) for k in range(self.L.S)]

    def _mean_p(self, k, j_i, i, cond) -> np.ndarray:
        g, T = self.grid, self.grid.T
        z = self.L.from_coords(k, j_i * g.delta[i])
        dtype = self.model.dtype
        t, s = torch.tensor(i / T, dtype=dtype), torch.tensor((i - 1) / T, dtype=dtype)
        mean, _ = self.model.reverse_step(k, z, t, s, cond)
        return self.L.to_coords(k, mean)

    def _tick(self):
        if self.bar is not None:
            self.bar.update(1)

    # -- chain of one level -------------------------------------------------
    def chain_encode(self, k, j0, cond):
        g, c = self.grid, self.coder
        j_prev = j0
        for i in range(1, g.T + 1):
            mean_q = (g.a_q[i] * (j_prev * g.delta[i - 1])).ravel()
            j_i = pop_q(c, mean_q, g.s_q[i], g.delta[i], self.guard, (self.index, k, i))
            j_i = j_i.reshape(j_prev.shape)
            mean = self._mean_p(k, j_i, i, cond)
            push_p(c, j_prev.ravel(), mean.ravel(), g.s_p[i - 1], g.delta[i - 1])
            j_prev = j_i
            self._tick()
        push_p(c, j_prev.ravel(), np.zeros(j_prev.size), 1.0, g.delta[g.T])

    def chain_decode(self, k, b, cond):
        g, c, T = self.grid, self.coder, self.grid.T
        shape = (b, self.L.n(k))
        # Every latent is popped with a std of ≥ 2^GRID_BITS bins, so it costs ≥ GRID_BITS
        # bits: a stack that cannot pay for the first pop is refused before allocating it.
        if c.num_bits() < GRID_BITS * b * shape[1]:
            raise CodecError("corrupt stream: it ran out of data before the end")
        j_i = pop_p(c, np.zeros(b * shape[1]), 1.0, g.delta[T], self.guard).reshape(shape)
        for i in range(T, 0, -1):
            mean = self._mean_p(k, j_i, i, cond)
            j_prev = pop_p(c, mean.ravel(), g.s_p[i - 1], g.delta[i - 1], self.guard)
            j_prev = j_prev.reshape(shape)
            mean_q = g.a_q[i] * (j_prev * g.delta[i - 1])
            push_q(c, j_i.ravel(), mean_q.ravel(), g.s_q[i], g.delta[i], (self.index, k, i))
            j_i = j_prev
            self._tick()
        return j_i

    # -- z₀ and pixels --------------------------------------------------------
    def _z0_pop(self, coords: list[np.ndarray], k: int) -> list[np.ndarray]:
        g = self.grid
        mean = np.concatenate([self.alpha0 * u for u in coords], axis=1)
        j = pop_q(self.coder, mean.ravel(), g.s_q[0], g.delta[0], self.guard, (self.index, k, 0))
        j = j.reshape(mean.shape)
        return np.split(j, np.cumsum([u.shape[1] for u in coords])[:-1], axis=1)

    def _z0_push(self, js: list[np.ndarray], coords: list[np.ndarray], k: int) -> None:
        g = self.grid
        mean = np.concatenate([self.alpha0 * u for u in coords], axis=1)
        j = np.concatenate(js, axis=1)
        push_q(self.coder, j.ravel(), mean.ravel(), g.s_q[0], g.delta[0], (self.index, k, 0))

    def _z0_native(self, ks, js) -> list[torch.Tensor]:
        return [self.L.from_coords(k, j * self.grid.delta[0]) for k, j in zip(ks, js)]

    def encode(self, x: torch.Tensor) -> None:
        model, L = self.model, self.L
        if L.vp:
            cs = model.map(model.pixels_to_f(x))
            coords = [L.to_coords(k, c) for k, c in enumerate(cs)]
            js = self._z0_pop(coords, 0)
            z0s = self._z0_native(range(L.S), js)
            z0 = model.map.reconstruct(z0s)
            push_pixels(
                self.coder, x.reshape(-1).numpy(), z0.reshape(-1).double().numpy(),
                self.alpha0, self.sigma0, self.K,
            )  # fmt: skip
            for k in reversed(range(L.S)):
                self.chain_encode(k, js[k], model.map.condition(z0s, k))
        else:
            xs = model.map(x)
            for k in reversed(range(L.S)):
                coords = [L.to_coords(k, model.level_to_f(k, xs[k]))]
                (j0,) = self._z0_pop(coords, k)
                (z0,) = self._z0_native([k], [j0])
                self._push_level(k, xs[k], z0)
                self.chain_encode(k, j0, model.discrete_condition(xs, k))

    # -- discrete levels: one channel (one value range) at a time ---------------
    def _push_level(self, k: int, v: torch.Tensor, z0: torch.Tensor) -> None:
        for ch, (lo, hi) in enumerate(self.ranges[k]):
            args = (z0[:, ch].reshape(-1).double().numpy(), self.alpha0, self.sigma0, self.K)
            push_pixels(self.coder, v[:, ch].reshape(-1).numpy(), *args, lo=lo, hi=hi)

    def _pop_level(self, k: int, z0: torch.Tensor) -> torch.Tensor:
        out = torch.empty(z0.shape, dtype=torch.int64)
        for ch in reversed(range(len(self.ranges[k]))):
            lo, hi = self.ranges[k][ch]
            args = (z0[:, ch].reshape(-1).double().numpy(), self.alpha0, self.sigma0, self.K)
            out[:, ch] = torch.from_numpy(pop_pixels(self.coder, *args, self.guard, lo=lo, hi=hi)).view(
                out[:, ch].shape
            )
        return out

    def decode(self, b: int, stop_level: int | None = None):
        """Returns (pixels (b,C,H,W) uint8 or None if stopped early, previews per level)."""
        model, L = self.model, self.L
        C, H, W = model.config.image_shape
        previews = []
        last = L.S - 1 if stop_level is None else stop_level
        if L.vp:
            js = []
            for k in range(last + 1):
                cond = model.map.condition(self._z0_native(range(k), js), k)
                js.append(self.chain_decode(k, b, cond))
                previews.append(model.preview(self._z0_native(range(k + 1), js)))
            if last < L.S - 1:
                return None, previews
            z0 = model.map.reconstruct(self._z0_native(range(L.S), js))
            x = pop_pixels(
                self.coder, z0.reshape(-1).double().numpy(), self.alpha0, self.sigma0,
                self.K, self.guard,
            )  # fmt: skip
            x = torch.from_numpy(x).reshape(b, C, H, W)
            cs = model.map(model.pixels_to_f(x))
            self._z0_push(js, [L.to_coords(k, c) for k, c in enumerate(cs)], 0)
            return x.to(torch.uint8), previews
        xs = []
        for k in range(last + 1):
            j0 = self.chain_decode(k, b, model.discrete_condition(xs, k))
            (z0,) = self._z0_native([k], [j0])
            xs.append(self._pop_level(k, z0))
            self._z0_push([j0], [L.to_coords(k, model.level_to_f(k, xs[k]))], k)
            previews.append(model.map.octave_image(xs).clamp(0, self.K - 1).to(torch.uint8))
        if last < L.S - 1:
            return None, previews
        x = model.map.reconstruct(xs)
        # A free consistency check: the decoded levels must be those of a valid image (the
        # cascade's coarser scales are subsamples of it; lifting levels map back exactly).
        if (
            int(x.min()) < 0
            or int(x.max()) >= self.K
            or not all(torch.equal(a, b) for a, b in zip(model.map(x), xs))
        ):
            raise CodecError("corrupt stream: the decoded levels disagree")
        return x.to(torch.uint8), previews


# ---------------------------------------------------------------------------
# Whole streams.


@dataclass
class Encoded:
    words: np.ndarray  # uint32 payload
    n_init: int  # pseudo-random reservoir words below the seed at the start
    kmin: int  # reservoir words never touched (dropped from the payload)
    initial_bits: int  # reservoir bits the stream consumed (included in the payload)
    seed_words: int = 0  # words of the seed (bottom of the payload, above the reservoir)


# With the ramp, a batch of b lanes starts only once RAMP · b images are already on the stack.
RAMP = 4
FLAG_RAMP = 1
FLAG_CLASSICAL = 2  # header flag: every image stored classically (no bits-back stream)


class BatchLayout(Sequence):
    """The (start, stop) image ranges coded as one batch each, in coding order.

    Without the ramp every batch has ``lanes`` images, so every lane's first z₀ pop draws on
    the initial bits (≈ one z₀ pop per lane). With the ramp the batches grow from one lane
    as the stream grows: a batch of b lanes waits until ≥ RAMP·b images have been coded, so
    its pops are paid mostly from the bits already pushed (RAMP ≈ bits of a z₀ pop over the
    net bits of an image) and the initial bits stay near one lane's worth.

    Only the ramp (O(RAMP · log lanes) batches) is stored; the full-width batches after it
    are computed, so a header claiming millions of images costs no memory before the
    payload has shown it holds them."""

    def __init__(self, n: int, lanes: int, ramp: bool = False):
        self.n, self.lanes = n, lanes
        self.head, start = [], 0
        while ramp and start < n:
            size = min(lanes, max(1, start // RAMP))
            if size == lanes:
                break
            self.head.append((start, min(n, start + size)))
            start += size
        self.tail_start = min(start, n)
        self.n_tail = -(-(n - self.tail_start) // lanes)

    def __len__(self) -> int:
        return len(self.head) + self.n_tail

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = i + len(self) if i < 0 else i
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i < len(self.head):
            return self.head[i]
        start = self.tail_start + (i - len(self.head)) * self.lanes
        return start, min(self.n, start + self.lanes)


def batch_layout(n: int, lanes: int, ramp: bool = False) -> BatchLayout:
    """See :class:`BatchLayout`."""
    return BatchLayout(n, lanes, ramp)


def _estimate_reservoir(model: PCDM, grid: Grid, lanes: int) -> int:
    bits = np.log2(np.sqrt(2 * np.pi * np.e) * grid.s_q / grid.delta)
    per_dim = 5 * float(bits.max()) + 16  # z₀ pop, whitening, one chain step, margin
    return int(lanes * model.dims * per_dim / 32) + 64


def _tqdm(total, desc, progress):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)


def encode_images(
    model: PCDM,
    images: np.ndarray,
    steps: int,
    lanes: int,
    progress: bool = False,
    ramp: bool = False,
    seed: np.ndarray | None = None,
) -> Encoded:
    """Encode uint8 images (N, H, W, C) into one ANS stream (see module docstring).

    ``seed``: uint32 words that the file stores anyway (:func:`seed_words`); the stack starts
    from them, so the first pops draw on them instead of on pseudo-random initial bits, and
    the decoder gets them back once the chain is undone. Pops beyond the seed draw on the
    reservoir below it (counted in ``initial_bits``)."""
    model.eval()
    x_all = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    model.check_input(x_all)
    _check_params(steps, lanes)
    seed = np.zeros(0, dtype=np.uint32) if seed is None else np.asarray(seed, dtype=np.uint32)
    if len(seed) == 1 or (len(seed) and seed[-1] == 0):
        raise ValueError("a seed is ≥ 2 words and ends in a non-zero word (see seed_words)")
    head = 0 if len(seed) else 2  # without a seed the ANS head comes from the reservoir
    batches = batch_layout(len(images), lanes, ramp)
    with _single_thread():
        grid = make_grid(model, steps)
        n_init = _estimate_reservoir(model, grid, min(lanes, len(images)))
        while True:
            coder = _AnsCoder(np.concatenate([reservoir(n_init), seed]))
            guard = _Guard(encoder=True)
            bar = _tqdm(len(batches) * len(model.level_shapes) * steps, "compress", progress)
            try:
                for bi, (start, stop) in enumerate(batches):
                    _Batch(model, grid, coder, guard, bar, bi).encode(x_all[start:stop].long())
            except _Dry:
                n_init *= 4
                continue
            finally:
                bar.close()
            break
    words = coder.get_compressed()
    kmin = min(int(guard.low if guard.low is not None else n_init), n_init - head)
    return Encoded(words[kmin:].copy(), n_init, kmin, 32 * (n_init - head - kmin) + 32 * head, len(seed))


def decode_stream(
    model: PCDM,
    words: np.ndarray,
    n_images: int,
    steps: int,
    lanes: int,
    n_init: int,
    kmin: int,
    preview_level: int | None = None,
    progress: bool = False,
    ramp: bool = False,
    seed_words: int = 0,
):
    """Decode a stream; returns (images (N,H,W,C) uint8 or None, previews of level
    ``preview_level`` (0-based) as uint8 (N,h,w,C) or None, the seed's words (empty without
    one; None when stopped early))."""
    model.eval()
    S = len(model.level_shapes)
    batches = batch_layout(n_images, lanes, ramp)
    parts: dict[int, np.ndarray] = {}
    previews_out: dict[int, np.ndarray] = {}
    with _single_thread():
        grid = make_grid(model, steps)
        try:
            coder = _AnsCoder(words)
        except ValueError as err:
            raise CodecError(f"corrupt .pcdm payload ({err})") from None
        guard = _Guard(encoder=False)
        bar = _tqdm(len(batches) * S * steps, "decompress", progress)
        try:
            for bi in reversed(range(len(batches))):
                start, stop = batches[bi]
                stop_level = preview_level if (preview_level is not None and bi == 0) else None
                x, previews = _Batch(model, grid, coder, guard, bar, bi).decode(stop - start, stop_level)
                # Collected per batch (no allocation from the header's image count).
                if preview_level is not None:
                    previews_out[bi] = previews[preview_level].permute(0, 2, 3, 1).numpy()
                if x is not None:
                    parts[bi] = x.permute(0, 2, 3, 1).numpy()
        finally:
            bar.close()
    preview = None
    if preview_level is not None:
        preview = np.concatenate([previews_out[i] for i in range(len(batches))])
        if preview_level < S - 1:
            return None, preview, None
    images = np.concatenate([parts[i] for i in range(len(batches))])
    rest = coder.get_compressed()
    n_res = len(rest) - seed_words
    if n_res < 0 or not np.array_equal(rest[:n_res], reservoir(n_init, kmin)):
        raise CodecError("corrupt stream: it does not end in the expected initial bits")
    return images, preview, rest[n_res:].copy()


# ---------------------------------------------------------------------------
# Classical images: the fallback container, and the seed of the bits-back stream.

CLASSICAL_CODECS = ("jpegxl", "png")  # tried for every image; the smallest file is kept
CODEC_IDS = baselines.CODECS  # a record's first byte indexes this tuple
SEED_MARGIN = 1.25  # whitening reads 1.25 × a pop's expected bits ahead (+ 64)


def classical_codecs() -> list[str]:
    names = [c for c in CLASSICAL_CODECS if c in baselines.available_codecs()]
    if not names:
        raise CodecError("no classical lossless codec is available (Pillow's PNG is needed)")
    return names


def _leb128(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def classical_record(image: np.ndarray) -> bytes:
    """One uint8 image (H, W, C) as the smallest of its CLASSICAL_CODECS files, framed as
    codec id (1 byte, index into ``baselines.CODECS``), file length (LEB128), file bytes;
    the file is decoded and checked bit-exact here, so the container always decodes."""
    best = None
    for name in classical_codecs():
        data = baselines.encode(image, name)
        if best is None or len(data) < len(best[1]):
            best = (name, data)
    name, data = best
    H, W, C = image.shape
    if not np.array_equal(_decode_file(name, data, H, W, C), image):
        raise CodecError(f"the {name} codec of this build does not round-trip an image")
    return bytes([CODEC_IDS.index(name)]) + _leb128(len(data)) + data


def _decode_file(name: str, data: bytes, H: int, W: int, C: int) -> np.ndarray:
    """Decode one classical file into (H, W, C) uint8, refusing any other size before the
    pixels are allocated (a forged file cannot make the decoder allocate more)."""
    if name == "png":
        import io

        from PIL import Image

        with Image.open(io.BytesIO(data), formats=["PNG"]) as pil:
            if pil.size != (W, H) or pil.mode != ("L" if C == 1 else "RGB"):
                raise ValueError(f"PNG is {pil.mode} {pil.size}")
            out = np.asarray(pil, dtype=np.uint8)
    elif name == "jpegxl":
        import imagecodecs

        out = np.empty((H, W) if C == 1 else (H, W, C), dtype=np.uint8)
        imagecodecs.jpegxl_decode(data, out=out, numthreads=1)
    else:
        raise ValueError(f"codec {name} is not used by the container")
    return np.ascontiguousarray(out.reshape(H, W, C))


def decode_records(blob: bytes, n: int, H: int, W: int, C: int) -> np.ndarray:
    """Mirror of ``b"".join(classical_record(x) for x in images)``: (n, H, W, C) uint8."""
    out, pos = [], 0  # one image at a time: memory follows the records actually present
    for i in range(n):
        if pos >= len(blob) or blob[pos] >= len(CODEC_IDS):
            raise CodecError(f"corrupt .pcdm payload: classical image {i} has no valid codec id")
        name, pos = CODEC_IDS[blob[pos]], pos + 1
        size, shift = 0, 0
        while True:
            if pos >= len(blob) or shift > 28:
                raise CodecError(f"corrupt .pcdm payload: classical image {i} has a bad length")
            size |= (blob[pos] & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not blob[pos - 1] & 0x80:
                break
        if pos + size > len(blob):
            raise CodecError(f"corrupt .pcdm payload: classical image {i} is truncated")
        try:
            out.append(_decode_file(name, bytes(blob[pos : pos + size]), H, W, C))
        except Exception as err:  # the codec libraries raise their own types
            raise CodecError(f"corrupt .pcdm payload: classical image {i} does not decode ({err})") from None
        pos += size
    if pos != len(blob):
        raise CodecError("corrupt .pcdm payload: trailing bytes after the classical images")
    return np.stack(out) if out else np.zeros((0, H, W, C), dtype=np.uint8)


def seed_words(blob: bytes) -> np.ndarray:
    """Bytes as uint32 words (LE) for the bottom of the stack: padded with zeros and a last
    byte p = the number of padding bytes (1..8), so the last word is non-zero (ANS needs it)
    and there are at least two words."""
    pad = 4 - len(blob) % 4
    if (len(blob) + pad) // 4 < 2:
        pad += 4
    raw = bytes(blob) + bytes(pad - 1) + bytes([pad])
    return np.frombuffer(raw, dtype="<u4").astype(np.uint32)


def seed_bytes(words: np.ndarray) -> bytes:
    """Mirror of :func:`seed_words`."""
    raw = np.asarray(words, dtype="<u4").tobytes()
    pad = raw[-1] if raw else 0
    if not 1 <= pad <= min(8, len(raw)) or any(raw[len(raw) - pad : -1]):
        raise CodecError("corrupt .pcdm payload: bad padding of the classical images")
    return raw[: len(raw) - pad]


def seed_need_bits(model: PCDM, steps: int) -> float:
    """Bits the first (one-lane) batch draws below the top of the stack: its z₀ pop and the
    first pop of its first chain, each read 1.25 × ahead by the whitening (the ramp keeps
    later batches paid from the bits already pushed); the seed should hold this much."""
    grid = make_grid(model, steps)
    bits = np.log2(np.sqrt(2 * np.pi * np.e) * grid.s_q / grid.delta)
    finest = model.level_dims[-1]
    z0_dims = finest if model.map.discrete else model.dims
    return SEED_MARGIN * (z0_dims * bits[0] + finest * bits[1]) + 128


def seed_count(record_sizes: Sequence[int], need_bits: float) -> int:
    """How many leading images to store classically as the seed: the fewest whose records
    hold ``need_bits`` (each costs its classical size instead of its bits-back size, ≈ 20 %
    more, while every bit of seed the stream draws on saves a pseudo-random initial bit)."""
    total = 0
    for m, size in enumerate(record_sizes):
        if 8 * total >= need_bits:
            return m
        total += size
    return len(record_sizes)


def clean_previews(model: PCDM, images: np.ndarray, level: int) -> np.ndarray:
    """Previews of level ``level`` (0-based) made from known images (the classically stored
    ones): the same resolution and kind as the progressive decoder's, from clean levels."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).long()
    with _single_thread():
        if model.map.discrete:
            xs = model.map(x)[: level + 1]
            out = model.map.octave_image(xs).clamp(0, model.config.K - 1).to(torch.uint8)
        else:
            gam0 = float(model.schedule(torch.zeros((), dtype=model.dtype)))
            alpha0 = math.sqrt(1 / (1 + math.exp(gam0)))
            cs = model.map(model.pixels_to_f(x))[: level + 1]
            out = model.preview([alpha0 * c for c in cs])
    return out.permute(0, 2, 3, 1).numpy()


def _check_params(steps: int, lanes: int) -> None:
    if not 1 <= int(steps) <= MAX_T:
        raise CodecError(f"--steps must be in 1..{MAX_T}, got {steps}")
    if not 1 <= int(lanes) <= MAX_LANES:
        raise CodecError(f"--batch must be in 1..{MAX_LANES}, got {lanes}")


# ---------------------------------------------------------------------------
# Container.


@dataclass
class Header:
    kind: int
    fingerprint: bytes
    T: int
    B: int
    N: int
    C: int
    H: int
    W: int
    K: int
    n_init: int
    kmin: int
    pixel_crc: int
    ramp: bool = False
    names: list[str] | None = None  # kind folder
    shape: tuple[int, ...] | None = None  # kind npy
    dtype: str | None = None
    seed_images: int = 0  # the first images, stored classically as the stream's seed
    seed_words: int = 0  # their words at the bottom of the payload

    @property
    def classical(self) -> bool:
        """All images stored classically: no bits-back stream, no model needed."""
        return self.seed_images == self.N


def _meta_bytes(h: Header) -> bytes:
    if h.kind == KIND_NPY:
        dt = h.dtype.encode("ascii")
        return (
            struct.pack("<B", len(h.shape))
            + struct.pack(f"<{len(h.shape)}I", *h.shape)
            + struct.pack("<B", len(dt))
            + dt
        )
    out = bytearray()
    for name in h.names:
        raw = name.encode("utf-8")
        out += struct.pack("<H", len(raw)) + raw
    return bytes(out)


def pack(h: Header, words: np.ndarray) -> bytes:
    meta = _meta_bytes(h)
    payload = np.asarray(words, dtype="<u4").tobytes()
    flags = (FLAG_RAMP if h.ramp else 0) | (FLAG_CLASSICAL if h.classical else 0)
    fixed = HEADER.pack(
        MAGIC, VERSION, h.kind, GRID_BITS, flags, h.fingerprint,
        h.T, h.B, h.N, h.C, h.H, h.W, h.K, h.n_init, h.kmin, len(meta), len(words),
        h.pixel_crc, zlib.crc32(payload), h.seed_images, h.seed_words,
    )  # fmt: skip
    crc = zlib.crc32(meta, zlib.crc32(fixed))
    return fixed + HEADER_CRC.pack(crc) + meta + payload


def unpack(data: bytes) -> tuple[Header, np.ndarray]:
    """Parse and validate a .pcdm file (bounds on every field before any allocation)."""
    if len(data) < HEADER_SIZE:
        raise CodecError(f"not a .pcdm file: only {len(data)} bytes (truncated?)")
    fields = HEADER.unpack_from(data, 0)
    magic, version, kind, grid_bits, flags, fp = fields[:6]
    T, B, N, C, H, W, K, n_init, kmin, meta_len, n_words, pixel_crc, payload_crc = fields[6:19]
    seed_images, seed_words = fields[19:]
    if magic != MAGIC:
        raise CodecError("not a .pcdm file (bad magic bytes)")
    if version != VERSION:
        raise CodecError(f"unsupported .pcdm version {version} (this build reads {VERSION})")
    if meta_len > len(data) - HEADER_SIZE:
        raise CodecError("corrupt .pcdm header: metadata length beyond the end of the file")
    meta = bytes(data[HEADER_SIZE : HEADER_SIZE + meta_len])
    (crc,) = HEADER_CRC.unpack_from(data, HEADER.size)
    if zlib.crc32(meta, zlib.crc32(bytes(data[: HEADER.size]))) != crc:
        raise CodecError("corrupt .pcdm header (checksum mismatch)")
    # Belt and braces: the header checksum can be forged, the bounds cannot be skipped.
    if grid_bits != GRID_BITS:
        raise CodecError(f"unsupported grid setting {grid_bits} in .pcdm header")
    if flags & ~(FLAG_RAMP | FLAG_CLASSICAL):
        raise CodecError(f"corrupt .pcdm header: unknown flags {flags:#04x}")
    if kind not in (KIND_NPY, KIND_FOLDER):
        raise CodecError(f"corrupt .pcdm header: unknown input kind {kind}")
    if not (1 <= T <= MAX_T and 1 <= B <= MAX_LANES and 1 <= N <= MAX_IMAGES):
        raise CodecError(f"corrupt .pcdm header: T={T}, B={B}, N={N} out of range")
    if C not in (1, 3) or not (1 <= H <= MAX_SIDE and 1 <= W <= MAX_SIDE) or not 2 <= K <= 256:
        raise CodecError(f"corrupt .pcdm header: image shape {C}×{H}×{W}, K={K} invalid")
    classical = bool(flags & FLAG_CLASSICAL)
    if (
        seed_images > N
        or classical != (seed_images == N)
        or (seed_images == 0) != (seed_words == 0)
        or seed_words == 1
        or seed_words > n_words
        or (classical and (seed_words != n_words or n_init or kmin))
    ):
        raise CodecError("corrupt .pcdm header: invalid classical-images record")
    head = 0 if seed_words else 2
    if not classical and not (
        head <= n_init < 2**31 and kmin <= n_init - head and n_init - kmin + seed_words <= n_words
    ):
        # The decoder ends with the reservoir words kmin … n_init − 1 (and the seed) on its
        # stack, which a valid payload holds: checked before any of them is built.
        raise CodecError("corrupt .pcdm header: invalid initial-bits record")
    if HEADER_SIZE + meta_len + 4 * n_words != len(data):
        raise CodecError(
            f"truncated or padded .pcdm file: {len(data)} bytes, header says "
            f"{HEADER_SIZE + meta_len + 4 * n_words}"
        )
    if n_words < 2:
        raise CodecError("corrupt .pcdm file: empty payload")
    payload = bytes(data[HEADER_SIZE + meta_len :])
    if zlib.crc32(payload) != payload_crc:
        raise CodecError("corrupt .pcdm payload (checksum mismatch)")
    h = Header(kind, fp, T, B, N, C, H, W, K, n_init, kmin, pixel_crc, bool(flags & FLAG_RAMP))
    h.seed_images, h.seed_words = seed_images, seed_words
    _parse_meta(h, meta)
    words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
    if words[-1] == 0:
        raise CodecError("corrupt .pcdm payload (ends in a zero word)")
    return h, words


def _parse_meta(h: Header, meta: bytes) -> None:
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(meta):
            raise CodecError("corrupt .pcdm header: metadata truncated")
        out = meta[pos : pos + n]
        pos += n
        return out

    if h.kind == KIND_NPY:
        (ndim,) = struct.unpack("<B", take(1))
        if ndim not in (3, 4):
            raise CodecError(f"corrupt .pcdm header: array rank {ndim}")
        shape = struct.unpack(f"<{ndim}I", take(4 * ndim))
        want = (h.N, h.H, h.W) + ((h.C,) if ndim == 4 else ())
        if shape != want or (ndim == 3 and h.C != 1):
            raise CodecError(f"corrupt .pcdm header: array shape {shape} vs images {want}")
        (n,) = struct.unpack("<B", take(1))
        try:
            dt = np.dtype(take(n).decode("ascii"))
        except (UnicodeDecodeError, TypeError, ValueError):
            raise CodecError("corrupt .pcdm header: bad dtype") from None
        if dt.kind not in "uib" or dt.itemsize > 8:
            raise CodecError(f"corrupt .pcdm header: dtype {dt} is not an integer type")
        h.shape, h.dtype = tuple(shape), dt.str
    else:
        names = []
        for _ in range(h.N):
            (n,) = struct.unpack("<H", take(2))
            if not 1 <= n <= MAX_NAME:
                raise CodecError("corrupt .pcdm header: bad file name length")
            try:
                name = take(n).decode("utf-8")
            except UnicodeDecodeError:
                raise CodecError("corrupt .pcdm header: file name is not UTF-8") from None
            names.append(check_name(name))
        if len(set(names)) != len(names):
            raise CodecError("corrupt .pcdm header: duplicate file names")
        h.names = names
    if pos != len(meta):
        raise CodecError("corrupt .pcdm header: trailing metadata")


def check_name(name: str) -> str:
    """A relative POSIX path that stays inside the output folder."""
    p = PurePosixPath(name)
    if (
        not name
        or "\x00" in name
        or "\\" in name
        or p.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
    ):
        raise CodecError(f"corrupt .pcdm header: unsafe file name {name!r}")
    return name


def pixel_crc(images: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(images, dtype=np.uint8).tobytes())


__all__ = [
    "CodecError",
    "Encoded",
    "Header",
    "decode_stream",
    "encode_images",
    "make_grid",
    "pack",
    "pixel_crc",
    "unpack",
]
