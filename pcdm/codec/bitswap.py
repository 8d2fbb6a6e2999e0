"""The Bit-Swap coder: each batch of images encoded and decoded as exact mirror images,
level by level over the T-step model, and whole streams of batches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..data import to_nchw
from ..model import PCDM
from .ans import (
    GRID_BITS,
    CodecError,
    Grid,
    _AnsCoder,
    _check_params,
    _Dry,
    _Guard,
    _single_thread,
    make_grid,
    pop_p,
    pop_pixels,
    pop_q,
    push_p,
    push_pixels,
    push_q,
    reservoir,
)

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
    x_all = to_nchw(images)
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
