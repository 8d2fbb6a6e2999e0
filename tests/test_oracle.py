"""The bound with a Bayes-optimal denoiser equals the exact entropy (the key test).

Tiny images (C = 1, 4×4, K = 4) are drawn from a known factorised categorical
distribution π (a different random π per pixel). For such data the Bayes-optimal ε̂ of
every level can be computed exactly by enumeration, and plugged into ``PCDM.nelbo`` —
the same ELBO code training uses. With the optimal denoiser the expected continuous-time
bound is

    E[−ELBO] = H(x) + Σₛ KL(q(z₁ˢ | cond) ‖ N(0, I)) + (decoder mismatch at t = 0)

(I-MMSE: the diffusion term is I(x; z₀) − I(x; z₁), the prior I(x; z₁) + the KL above).
Schedule: fixed, γ_min = −13.3 (the paper's), γ_max = 8. Why 8: α₁² = sigmoid(−8) =
3.4e−4, so the prior mismatch KL(q(z₁) ‖ N(0, I)) ≲ ½ α₁² E[c]² ≤ 3e−4 nats/dim even for the
coarsest Haar LL (|c| ≤ 4 here), far below the 0.01 nats/dim standard error; at γ_min the
decoder noise σ₀/α₀ ≈ 1.3e−3 is 190× smaller than the half bin 1/K, so log p(x | z₀) ≈ 0 and
the conditioning z₀^{<s} pins the coarser levels down. So the mean bound must equal the
mean exact −log P(x) = Σ −log π(x_pixel) over the same images, within sampling error.

How the oracle is conditioned exactly as the model is:
  * the octave images y⁽ʲ⁾ = Dʲ f (block sums / 2ʲ) have independent entries whose
    distributions are convolutions of the pixel distributions;
  * the base level (the coarsest octave) is independent per entry: posterior over one
    entry's support given z_t;
  * a detail level k depends, per 2×2 block of its octave image, only on the 4 entries of
    the block; its conditioning image carries the block's noisy LL, α₀ LL + σ₀ η
    (haar: ``cond`` itself; lp: ``cond`` = Dᵀ of it, so LL = D cond). The posterior over
    the 4 entries given (noisy LL, z_t of the block) is an enumeration over the product of
    the 4 supports; E[details | …] gives x̂ and ε̂ = (z_t − α_t x̂)/σ_t.
  * C-VDM (cascade) conditions on the clean coarser image, the top-left pixel of each 2×2
    block (maps.Cascade keeps ``f[..., ::2, ::2]``).
  * lift-pcdm (integer lifting) conditions on the clean integer LL; per 2×2 block the
    posterior is an enumeration over the K⁴ pixel values of the block.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from pcdm import PCDM, ModelConfig
from pcdm.maps import lift_analysis

K, H, W = 4, 4, 4
D = H * W
GAMMA_MIN, GAMMA_MAX = -13.3, 8.0
DT = torch.float64


def make_pi(seed: int = 0) -> torch.Tensor:
    """A random categorical distribution per pixel, (H, W, K)."""
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.dirichlet(np.ones(K), size=(H, W)), dtype=DT)


def sample_x(pi: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    flat = pi.reshape(-1, K)
    x = torch.multinomial(flat, n, replacement=True, generator=gen)  # (D, n)
    return x.T.reshape(n, 1, H, W)


def exact_nll(pi: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """−log P(x) = Σ −log π(x_pixel), per image (nats)."""
    logpi = pi.log()
    idx = x[:, 0].long()
    rows = torch.arange(H)[:, None].expand(H, W)
    cols = torch.arange(W)[None, :].expand(H, W)
    return -logpi[rows, cols, idx].flatten(1).sum(1)


# --- distributions of the octave images ----------------------------------------------


def octave_pmfs(pi: torch.Tensor, octaves: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For j = 0 … octaves−1: (pmf (h, w, M), values (M,)) of y⁽ʲ⁾ = Dʲ f, whose entries
    are (Σ of 4ʲ pixel values f)/2ʲ. Entry j+1 sums the 4 children of a 2×2 block, so its
    distribution over the integer sum of pixel indices is the convolution of theirs."""
    out = []
    pmf = pi
    for j in range(octaves):
        n = 4**j
        s = torch.arange(pmf.shape[-1], dtype=DT)
        values = (2 * s / K + n * (1 / K - 1)) / 2**j
        out.append((pmf, values))
        h, w, m = pmf.shape
        nxt = torch.zeros(h // 2, w // 2, 4 * (m - 1) + 1, dtype=DT)
        for p, q in itertools.product(range(h // 2), range(w // 2)):
            acc = torch.ones(1, dtype=DT)
            for a, b in itertools.product((0, 1), (0, 1)):
                acc = torch.from_numpy(np.convolve(acc.numpy(), pmf[2 * p + a, 2 * q + b].numpy()))
            nxt[p, q] = acc
        pmf = nxt
    return out


def alpha_sigma64(gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = gamma.to(DT)
    return torch.sigmoid(-g).sqrt(), torch.sigmoid(g).sqrt()


def entrywise_eps(z, gamma, pmf, values):
    """Bayes ε̂ for independent entries y ~ pmf (h, w, M) given z = α y + σ ε: (N, 1, h, w)."""
    alpha, sigma = (v.view(-1, 1, 1, 1) for v in alpha_sigma64(gamma))
    z = z.to(DT)
    logw = pmf.log()[None] - (z[..., None] - alpha[..., None] * values) ** 2 / (2 * sigma[..., None] ** 2)
    x_hat = (torch.softmax(logw[:, 0], -1) * values).sum(-1)[:, None]
    return (z - alpha * x_hat) / sigma


class BlockTable:
    """All joint values of the 4 entries (a, b, c, d) = [[a, b], [c, d]] of one 2×2 block of
    an octave image: their LL (a+b+c+d)/2 and their detail coordinates (haar: the three
    bands of maps.haar_analysis; lp: the block minus its mean, (I − P) y)."""

    def __init__(self, values: torch.Tensor, kind: str):
        m = len(values)
        ia, ib, ic, id_ = (g.flatten() for g in torch.meshgrid(*[torch.arange(m)] * 4, indexing="ij"))
        self.index = (ia, ib, ic, id_)
        a, b, c, d = values[ia], values[ib], values[ic], values[id_]
        self.ll = (a + b + c + d) / 2
        if kind == "haar":
            self.T = torch.stack([(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2], 1)
        else:
            mean = (a + b + c + d) / 4
            self.T = torch.stack([a - mean, b - mean, c - mean, d - mean], 1)
        self.T2 = self.T.pow(2).sum(1)

    def log_prior(self, pmfs4):
        lp = [p.log() for p in pmfs4]
        ia, ib, ic, id_ = self.index
        return lp[0][ia] + lp[1][ib] + lp[2][ic] + lp[3][id_]

    def posterior_mean(self, logprior, ll_obs, z, alpha_t, sigma_t, alpha_0, sigma_0, chunk=256):
        """E[T(y) | ll_obs = α₀ LL + σ₀ η, z = α_t T(y) + σ_t ε] per image, (N, n_T)."""
        out = []
        for s in range(0, z.shape[0], chunk):
            zc, lc = z[s : s + chunk], ll_obs[s : s + chunk]
            at, st = alpha_t[s : s + chunk, None], sigma_t[s : s + chunk, None]
            logw = (
                logprior[None]
                - (lc[:, None] - alpha_0 * self.ll[None]) ** 2 / (2 * sigma_0**2)
                + (at * (zc @ self.T.T) - 0.5 * at**2 * self.T2[None]) / st**2
            )
            out.append(torch.softmax(logw, 1) @ self.T)
        return torch.cat(out)


def logconv(la: torch.Tensor, lb: torch.Tensor) -> torch.Tensor:
    """log of the convolution of exp(la) and exp(lb) along the last axis, batched (N, ·),
    done entirely in the log domain (no underflow however peaked the factors are)."""
    n, na = la.shape
    nb = lb.shape[1]
    idx = (torch.arange(na)[:, None] + torch.arange(nb)[None, :]).expand(n, na, nb)
    full = la.new_full((n, na, na + nb - 1), -math.inf)
    full.scatter_(2, idx, la[:, :, None] + lb[:, None, :])
    top = full.amax(1, keepdim=True)  # finite: every index sum is reachable (π > 0)
    return (full - top).exp().sum(1).log() + top[:, 0]


def block_posterior_mean(logpri, values, quad, g):
    """E[y] of the 4 entries of a block, posterior ∝ Πₑ exp(φₑ(mₑ)) · exp(g(Σₑ mₑ)).

    The entries take values v_m = v₀ + m δ (m = 0 … M−1), so the block LL depends only on
    the index sum s = Σ mₑ. φₑ(m) = log πₑ(m) − λ (uₑ − v_m)² / 2 (λ = α_t²/σ_t²) and g(s)
    holds everything that depends on s only. The marginal of entry e is
    exp(φₑ(m)) Σ_r exp(g(m + r)) · (conv of the other three exp(φ))(r): O(M²) per entry
    instead of the O(M⁴) enumeration of :class:`BlockTable` (tested equal below).
    logpri (R, 4, M) log prior of each entry; quad (R, 4, M) the −λ (uₑ − v_m)²/2 terms;
    g (R, 4M − 3). Returns E[y] (R, 4)."""
    phi = logpri + quad  # (R, 4, M)
    n, _, m = phi.shape
    means = []
    for e in range(4):
        rest = [phi[:, o] for o in range(4) if o != e]
        conv = logconv(logconv(rest[0], rest[1]), rest[2])  # (N, 3M − 2)
        idx = torch.arange(m)[:, None] + torch.arange(3 * m - 2)[None, :]  # (M, 3M − 2)
        terms = g[:, idx] + conv[:, None, :]  # (N, M, 3M − 2)
        top = terms.amax(-1, keepdim=True)
        r = (terms - top).exp().sum(-1).log() + top[..., 0]  # (N, M)
        post = torch.softmax(phi[:, e] + r, -1)
        means.append(post @ values)
    return torch.stack(means, 1)  # (N, 4)


class Oracle:
    """Bayes-optimal ε̂ of every level of a haar / lp / identity model for data ~ π.

    For a detail block with entries y (4 values) the two observations are the noisy LL
    ℓ = α₀ LL(y) + σ₀ η (from ``cond``) and z = α_t T(y) + σ_t ε (T: the 3 Haar bands, or
    the 4 values minus their mean for lp, with ε in that subspace). With u the pixel-space
    image of z / α_t (haar: synthesis with LL = 0; lp: z / α_t itself),
    ‖z − α_t T(y)‖² = α_t² (‖u − y‖² − LL(y)²), so the log-likelihood is a sum over entries
    plus a function of LL(y) (i.e. of the index sum): see :func:`block_posterior_mean`.
    """

    def __init__(self, model: PCDM, pi: torch.Tensor):
        self.kind = model.map.name
        self.S = len(model.level_shapes)
        self.pmfs = octave_pmfs(pi, self.S)
        self.alpha_0, self.sigma_0 = alpha_sigma64(model.schedule(torch.zeros((), dtype=DT)))

    def __call__(self, k, z, gamma, cond):
        j = self.S - 1 - k  # octave of level k's image (0 = pixels)
        pmf, values = self.pmfs[j]
        if k == 0:
            return entrywise_eps(z, gamma, pmf, values).to(z.dtype)
        alpha_t, sigma_t = alpha_sigma64(gamma)
        lam = (alpha_t**2 / sigma_t**2)[:, None]
        lam_0 = self.alpha_0**2 / self.sigma_0**2  # precision of the LL seen through cond
        zd, cd = z.to(DT), cond.to(DT)
        if self.kind == "haar":  # z: (N, 3, h, w) bands; cond: the noisy LL (N, 1, h, w)
            ll_obs = cd[:, 0]
            z1, z2, z3 = zd[:, 0], zd[:, 1], zd[:, 2]
            u = torch.stack(  # [[a, b], [c, d]] of haar synthesis with LL = 0
                [(z1 + z2 + z3) / 2, (-z1 + z2 - z3) / 2, (z1 - z2 - z3) / 2, (-z1 - z2 + z3) / 2], 1
            )
        else:  # lp: z (N, 1, 2h, 2w) in range(I − P); cond = Dᵀ(noisy LL), so LL = D cond
            c0 = cd[:, 0]
            ll_obs = (c0[:, 0::2, 0::2] + c0[:, 0::2, 1::2] + c0[:, 1::2, 0::2] + c0[:, 1::2, 1::2]) / 2
            z0 = zd[:, 0]
            u = torch.stack([z0[:, 0::2, 0::2], z0[:, 0::2, 1::2], z0[:, 1::2, 0::2], z0[:, 1::2, 1::2]], 1)
        # Put the LL estimated from cond into u, so that φ and g both peak near the truth:
        # ‖z − α_t T(y)‖² = α_t² (‖u − y‖² − (ℓ/α₀ − LL(y))²), u = z-part/α_t + ℓ/(2α₀).
        u = u / alpha_t.view(-1, 1, 1, 1) + (ll_obs / (2 * self.alpha_0))[:, None]
        m = len(values)
        sums = torch.arange(4 * m - 3, dtype=DT)
        ll_s = (4 * values[0] + (values[1] - values[0]) * sums) / 2  # LL as a function of Σ m
        # All blocks of all images at once: rows = (image, block).
        n, _, h, w = u.shape
        logpri = torch.stack(
            [pmf[a::2, b::2].log() for a, b in itertools.product((0, 1), (0, 1))], 0
        )  # (4, h, w, M): entry e of block (p, q)
        logpri = logpri.permute(1, 2, 0, 3).reshape(1, h * w, 4, m).expand(n, -1, -1, -1)
        u_rows = u.permute(0, 2, 3, 1).reshape(n, h * w, 4)
        quad = -0.5 * lam[:, :, None, None] * (u_rows[..., None] - values) ** 2  # (n, hw, 4, M)
        # g(s) = λ/2 (ℓ/α₀ − LL)² − (ℓ − α₀ LL)²/(2σ₀²) = (λ − λ₀)/2 (ℓ/α₀ − LL)²
        ll_rows = ll_obs.reshape(n, h * w, 1) / self.alpha_0
        g = 0.5 * (lam[:, :, None] - lam_0) * (ll_rows - ll_s) ** 2  # (n, hw, 4M − 3)
        y_hat = block_posterior_mean(
            logpri.reshape(-1, 4, m), values, quad.reshape(-1, 4, m), g.reshape(n * h * w, -1)
        )
        y_hat = y_hat.reshape(n, h, w, 4).permute(0, 3, 1, 2)  # (n, 4, h, w)
        a, b, c, d = y_hat.unbind(1)
        if self.kind == "haar":  # x̂ = T(E[y]) since T is linear
            x_hat = torch.stack([(a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2], 1)
        else:
            mean = (a + b + c + d) / 4
            x_hat = torch.zeros_like(zd)
            x_hat[:, 0, 0::2, 0::2], x_hat[:, 0, 0::2, 1::2] = a - mean, b - mean
            x_hat[:, 0, 1::2, 0::2], x_hat[:, 0, 1::2, 1::2] = c - mean, d - mean
        at, st = alpha_t.view(-1, 1, 1, 1), sigma_t.view(-1, 1, 1, 1)
        return ((zd - at * x_hat) / st).to(z.dtype)


class CascadeOracle:
    """C-VDM, S = 2: level 0 = top-left pixels (independent, π of those pixels); level 1 =
    the full image. ``exact``: knows the copied coarse pixels from the clean ``cond``
    (posterior there is a delta); otherwise the per-scale marginal oracle (ignores cond)."""

    def __init__(self, pi, exact: bool):
        self.pi, self.exact = pi, exact
        self.values = (2 * torch.arange(K, dtype=DT) + 1) / K - 1

    def __call__(self, k, z, gamma, cond):
        pmf = self.pi[::2, ::2] if k == 0 else self.pi
        zd = z.to(DT)
        eps = entrywise_eps(zd, gamma, pmf, self.values)
        if k == 1 and self.exact:
            alpha, sigma = (v.view(-1, 1, 1, 1) for v in alpha_sigma64(gamma))
            known = cond.to(DT)[..., 0::2, 0::2]  # clean f of the copied pixels
            eps[..., 0::2, 0::2] = (zd[..., 0::2, 0::2] - alpha * known) / sigma
        return eps.to(z.dtype)


class LiftOracle:
    """lift-pcdm, S = 2: the blocks are independent, so enumerate the K⁴ values (a, b, c, d)
    of each 2×2 block with their prior π and their integer lifting (LL, [LH, HL, HH]).
    Level 0: posterior over the block given its noisy LL; level 1: given the clean LL (read
    from ``cond``) and the noisy detail bands."""

    def __init__(self, model, pi):
        combos = torch.cartesian_prod(*[torch.arange(K)] * 4)  # (M, 4): a, b, c, d
        ll, det = lift_analysis(combos.view(-1, 1, 2, 2))
        self.ll = ll.flatten()
        self.ll_enc = model.level_to_f(0, ll).flatten().to(DT)
        self.det_enc = model.level_to_f(1, det).flatten(1).to(DT)  # (M, 3)
        logpi = pi.log()  # prior of each block's combos, rows = blocks (p, q) row-major
        self.logprior = torch.stack(
            [
                sum(logpi[2 * p + a, 2 * q + b][combos[:, 2 * a + b]] for a in (0, 1) for b in (0, 1))
                for p in range(H // 2)
                for q in range(W // 2)
            ]
        )  # (h·w, M)

    def __call__(self, k, z, gamma, cond):
        alpha, sigma = (v.view(-1, 1, 1) for v in alpha_sigma64(gamma))
        zd = z.to(DT).flatten(2).transpose(1, 2)  # (N, h·w, channels)
        if k == 0:
            logw = self.logprior[None] - (zd - alpha * self.ll_enc) ** 2 / (2 * sigma**2)
            x_hat = (torch.softmax(logw, -1) * self.ll_enc).sum(-1, keepdim=True)
        else:
            ll = torch.round((cond.to(DT).flatten(1) + 1) * K / 2 - 0.5).long()  # (N, h·w)
            dist = ((zd[..., None, :] - alpha[..., None] * self.det_enc) ** 2).sum(-1)
            logw = self.logprior[None] - dist / (2 * sigma**2)
            logw = logw.masked_fill(self.ll[None, None] != ll[..., None], -math.inf)
            x_hat = torch.einsum("nbm,mc->nbc", torch.softmax(logw, -1), self.det_enc)
        eps = (zd - alpha * x_hat) / sigma
        return eps.transpose(1, 2).reshape(z.shape).to(z.dtype)


def make_model(name: str, levels: int, shape=(1, H, W), k_values: int = K, **options) -> PCDM:
    torch.manual_seed(0)
    cfg = ModelConfig(
        model=name,
        levels=levels,
        image_shape=shape,
        K=k_values,
        **options,
        width=8,
        depth=1,
        attention=False,
        schedule="fixed",
        gamma_min=GAMMA_MIN,
        gamma_max=GAMMA_MAX,
    )
    return PCDM(cfg).double()  # the nets are never called: ε̂ comes from the oracle


def octave_logp(pi: torch.Tensor, x: torch.Tensor, j: int) -> torch.Tensor:
    """log P(y⁽ʲ⁾(x)) per image: the octave-j image's entries are independent."""
    idx = x[:, 0].long()
    for _ in range(j):  # index sums over 2×2 blocks
        idx = idx[:, 0::2, 0::2] + idx[:, 0::2, 1::2] + idx[:, 1::2, 0::2] + idx[:, 1::2, 1::2]
    logpmf = octave_pmfs(pi, j + 1)[j][0].log()
    h, w = idx.shape[1:]
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    return logpmf[rows, cols, idx].flatten(1).sum(1)


def run(model, denoiser, n_batches, batch, seed, steps=None, reference=None):
    """Bound minus reference, nats/dim: per batch mean (N_batches,) of the total and of each
    level. Default reference: −log P(x); per level −log P(y⁽ʲ⁾) + log P(y⁽ʲ⁺¹⁾), the exact
    conditional information of level k (octave j = S−1−k) given the coarser ones. The
    times are stratified over each batch, so batches (not images) are the iid replicates."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    S = len(model.level_shapes)
    totals, levels = [], []
    with torch.no_grad():
        for _ in range(n_batches):
            x = sample_x(PI, batch, gen)
            b = model.nelbo(x, steps=steps, denoiser=denoiser)
            if reference is not None:
                totals.append(((b.total - reference(x)) / D).mean())
                continue
            lps = [octave_logp(PI, x, j) for j in range(S)] + [0]
            refs = torch.stack([-lps[S - 1 - k] + lps[S - k] for k in range(S)], 1)
            lv = b.per_level.clone()
            lv[:, -1] += b.recon  # the decoder belongs to the finest level's information
            totals.append(((b.total - exact_nll(PI, x)) / D).mean())
            levels.append(((lv - refs) / D).mean(0))
    return torch.stack(totals), (torch.stack(levels) if levels else None)


def mean_se(v):
    return v.mean(0), v.std(0) / math.sqrt(v.shape[0])


def check_zero(v, label, k=3.0):
    mean, se = (float(a) for a in mean_se(v))
    print(f"{label}: gap {mean:+.4f} ± {se:.4f} nats/dim ({len(v)} batches)")
    assert se <= 0.01, f"{label}: standard error {se:.4f} nats/dim too large"
    assert abs(mean) <= k * se, f"{label}: bound − reference = {mean:+.4f} ± {se:.4f} nats/dim"
    return mean, se


PI = make_pi(0)


pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [("vdm", 1, 48), ("w-pcdm", 2, 32), ("w-pcdm", 3, 32), ("lp-pcdm", 2, 32), ("lp-pcdm", 3, 32)]


@pytest.mark.parametrize("name,levels,n_batches", CASES)
def test_oracle_bound_equals_entropy(name, levels, n_batches):
    model = make_model(name, levels)
    totals, per_level = run(model, Oracle(model, PI), n_batches, 1500, seed=10 * levels + len(name))
    check_zero(totals, f"{name} S={levels}")
    for k in range(levels):  # each level carries exactly its conditional information
        check_zero(per_level[:, k], f"{name} S={levels} level {k}", k=4.0)


def test_block_oracle_matches_brute_force():
    """The O(M²) posterior (index-sum trick) equals the O(M⁴) enumeration."""
    gen = torch.Generator().manual_seed(3)
    a0, s0 = alpha_sigma64(torch.tensor(GAMMA_MIN))
    for kind, j in [("haar", 0), ("haar", 1), ("lp", 1)]:
        pmf, values = octave_pmfs(PI, 2)[j]
        tab = BlockTable(values, kind)
        entries = [pmf[a, b] for a, b in itertools.product((0, 1), (0, 1))]
        n = 40
        gamma = torch.linspace(-12, 7, n, dtype=DT)
        at, st = alpha_sigma64(gamma)
        true = torch.randint(0, len(tab.ll), (n,), generator=gen)
        ll_obs = a0 * tab.ll[true] + s0 * torch.randn(n, generator=gen, dtype=DT)
        noise = torch.randn(n, tab.T.shape[1], generator=gen, dtype=DT)
        if kind == "lp":
            noise = noise - noise.mean(1, keepdim=True)
        z = at[:, None] * tab.T[true] + st[:, None] * noise
        brute = tab.posterior_mean(tab.log_prior(entries), ll_obs, z, at, st, a0, s0)
        # the same through the Oracle's code path: the block sits at block (0, 0) of level k
        model = make_model("w-pcdm" if kind == "haar" else "lp-pcdm", 2 + j)
        oracle = Oracle(model, PI)
        k = model.map.levels - 1 - j
        if kind == "haar":
            zi = z[:, :, None, None]
            cond = ll_obs.view(n, 1, 1, 1)
        else:
            zi = z.view(n, 1, 2, 2)
            cond = (ll_obs / 2).view(n, 1, 1, 1).expand(n, 1, 2, 2)
        eps = oracle(k, _embed(zi, kind, model, k), gamma, _embed_cond(cond, kind, model, k))
        got = eps[..., :2, :2] if kind == "lp" else eps[..., :1, :1]
        want = (zi - at.view(-1, 1, 1, 1) * _block(brute, kind)) / st.view(-1, 1, 1, 1)
        torch.testing.assert_close(got, want, atol=1e-7, rtol=1e-7)


def _block(t_vals, kind):
    n = t_vals.shape[0]
    return t_vals[:, :, None, None] if kind == "haar" else t_vals.view(n, 1, 2, 2)


def _embed(zi, kind, model, k):
    """Place one block's coefficients at block (0, 0) of level k; zeros elsewhere."""
    shape = model.level_shapes[k]
    out = torch.zeros(zi.shape[0], *shape, dtype=DT)
    out[..., : zi.shape[2], : zi.shape[3]] = zi
    return out


def _embed_cond(cond, kind, model, k):
    shape = model.level_shapes[k]
    out = torch.zeros(cond.shape[0], 1, *shape[1:], dtype=DT)
    out[..., : cond.shape[2], : cond.shape[3]] = cond
    return out


def test_lp_and_haar_bounds_coincide():
    """Same draws: the exact LP and Haar bounds are equal image by image — the LP detail
    level is the Haar detail level in another orthonormal basis of the same subspace, so
    its noise, its prior dimension (3/4 of the pixels) and its loss must all agree."""
    out = []
    for name in ("w-pcdm", "lp-pcdm"):
        model = make_model(name, 3)
        gen = torch.Generator().manual_seed(5)
        torch.manual_seed(5)
        x = sample_x(PI, 300, gen)
        b = model.nelbo(x, denoiser=Oracle(model, PI))
        out.append(torch.stack([b.prior, b.diffusion, b.recon]))
    torch.testing.assert_close(out[0], out[1], atol=1e-7, rtol=1e-9)


def test_wrong_oracle_gives_the_cross_entropy():
    """The test can see small errors: an oracle that is Bayes-optimal for a different
    π' = ½ π + ½ π₂ gives a bound equal to −log P'(x) (the cross-entropy, since E[bound(x)]
    = −log P'(x) for the optimal denoiser of P'), which exceeds −log P(x) by KL(π ‖ π')."""
    pi2 = 0.5 * PI + 0.5 * make_pi(1)
    model = make_model("vdm", 1)
    oracle = Oracle(model, pi2)
    cross, _ = run(model, oracle, 48, 1500, seed=3, reference=lambda x: exact_nll(pi2, x))
    check_zero(cross, "vdm, oracle for π' vs −log P'(x)")
    vs_true, _ = run(model, oracle, 48, 1500, seed=3, reference=lambda x: exact_nll(PI, x))
    kl = float((PI * (PI / pi2).log()).sum() / D)
    mean, se = (float(a) for a in mean_se(vs_true))
    print(f"bound − H(x) with the π' oracle: {mean:.4f} ± {se:.4f}, KL(π‖π') = {kl:.4f}")
    assert mean > 5 * se and abs(mean - kl) <= 3 * se


def test_discrete_time_bound():
    """T steps with the oracle: ≥ the continuous bound on average, close to it, and
    converging to it as O(1/T) (a right Riemann sum over the SNR of a decreasing MMSE).
    The same seeds give the same images, noise and t, so the differences are paired and
    their standard errors tiny. Measured: excess ≈ 12/T nats/dim for this data."""
    model = make_model("w-pcdm", 2)
    oracle = Oracle(model, PI)
    cont, _ = run(model, oracle, 8, 1500, seed=11)
    excess = {}
    for steps in (10, 1000, 4000):
        disc, _ = run(model, oracle, 8, 1500, seed=11, steps=steps)
        excess[steps] = mean_se(disc - cont)
        print(
            f"discrete (T={steps}) − continuous: {float(excess[steps][0]):+.5f} "
            f"± {float(excess[steps][1]):.5f} nats/dim"
        )
    for mean, se in excess.values():
        assert mean > 10 * se  # the discrete bound is looser, as it must be
    assert excess[1000][0] < 0.02  # ~1% of H(x) ≈ 1.1 nats/dim
    ratio = float(excess[1000][0] / excess[4000][0])
    assert 3.0 < ratio < 5.0, f"excess should scale as 1/T, got ratio {ratio:.2f} for 4× steps"
    assert excess[10][0] > 10 * excess[1000][0]


def test_cascade_oracles():
    """C-VDM, S = 2. (a) Conditioned exactly (the fine level knows the copied top-left
    pixels from the clean cond): bound ≈ H(x). (b) Per-scale marginal oracle: each scale
    costs its own entropy, bound ≈ H(x) + H(x_coarse), x_coarse = x[..., ::2, ::2]."""
    model = make_model("c-vdm", 2)
    exact, _ = run(model, CascadeOracle(PI, exact=True), 48, 1500, seed=21)
    check_zero(exact, "c-vdm, exact oracle vs H(x)")

    def both(x):
        return exact_nll(PI, x) + exact_nll_coarse(PI, x)

    marg, _ = run(model, CascadeOracle(PI, exact=False), 48, 1500, seed=22, reference=both)
    check_zero(marg, "c-vdm, marginal oracle vs H(x) + H(x_coarse)")
    # ... and that excess is far from negligible: the bits of the extra coarse scale.
    h_coarse = float(-(PI[::2, ::2] * PI[::2, ::2].log()).sum() / D)
    assert h_coarse > 20 * float(mean_se(marg)[1])


def exact_nll_coarse(pi, x):
    """−log P(x[..., ::2, ::2]): maps.Cascade keeps the top-left pixel of each 2×2 block."""
    sub = pi[::2, ::2].log()
    idx = x[:, 0, ::2, ::2].long()
    h, w = sub.shape[:2]
    rows = torch.arange(h)[:, None].expand(h, w)
    cols = torch.arange(w)[None, :].expand(h, w)
    return -sub[rows, cols, idx].flatten(1).sum(1)


def test_lift_oracle_bound_equals_entropy():
    """lift-pcdm, S = 2: the integer lifting is a bijection, so with Bayes-optimal
    denoisers the chain of per-level bounds equals −log P(x), and level 0 alone equals
    −log P(LL) (the entropy of the coarse integer image)."""
    model = make_model("lift-pcdm", 2)
    oracle = LiftOracle(model, PI)
    totals, _ = run(model, oracle, 32, 1500, seed=31, reference=lambda x: exact_nll(PI, x))
    check_zero(totals, "lift-pcdm S=2")

    def coarse_nll(x):  # −log P(LL) with P(LL) = Σ over the blocks' combos with that LL
        ll = model.map(x)[0].flatten(1)  # (N, h·w)
        log_p = torch.stack(
            [
                torch.logsumexp(oracle.logprior.masked_fill(oracle.ll[None] != v, -math.inf), -1)
                for v in range(K)
            ],
            -1,
        )  # (h·w, K): log P(LL of block = v)
        return -log_p[torch.arange(ll.shape[1]), ll].sum(1)

    gen = torch.Generator().manual_seed(32)
    gaps = []
    with torch.no_grad():
        for _ in range(32):
            x = sample_x(PI, 1500, gen)
            b = model.nelbo(x, denoiser=oracle)
            gaps.append(((b.per_level[:, 0] - coarse_nll(x)) / D).mean())
    check_zero(torch.stack(gaps), "lift-pcdm S=2 level 0 vs −log P(LL)")


# --- any orthonormal map, by enumerating every image ---------------------------------


class EnumerationOracle:
    """Bayes-optimal ε̂ for any orthonormal wavelet map (haar, db4, …) on images small
    enough to enumerate: all M = K^d images with their prior π(x). Level k sees
    z_t = α_t cₖ(x) + σ_t ε and cond = α₀ aₖ(x) + σ₀ η, with aₖ(x) the approximation at level
    k's size (``map.condition`` of the clean levels). cond is an orthonormal image of the
    coarser levels' z₀, so η is iid N(0, I) and the posterior over the M images is
    ∝ π(x) N(cond; α₀ aₖ(x), σ₀²) N(z_t; α_t cₖ(x), σ_t²): exact, whatever the filters."""

    def __init__(self, model, logpi, images):
        cs = model.map(model.pixels_to_f(images))
        self.c = [c.flatten(1) for c in cs]
        self.a = [None] + [model.map.condition(cs, k).flatten(1) for k in range(1, len(cs))]
        self.logprior = logpi
        self.alpha_0, self.sigma_0 = alpha_sigma64(model.schedule(torch.zeros((), dtype=DT)))

    @staticmethod
    def _loglik(obs, alpha, sigma, table):
        """log N(obs; α · table, σ²) up to terms constant in the image, (N, M)."""
        return (alpha * obs @ table.T - 0.5 * alpha**2 * table.pow(2).sum(1)) / sigma**2

    def __call__(self, k, z, gamma, cond):
        alpha, sigma = (v[:, None] for v in alpha_sigma64(gamma))
        zf = z.to(DT).flatten(1)
        logw = self.logprior[None] + self._loglik(zf, alpha, sigma, self.c[k])
        if k > 0:
            logw = logw + self._loglik(cond.to(DT).flatten(1), self.alpha_0, self.sigma_0, self.a[k])
        x_hat = torch.softmax(logw, 1) @ self.c[k]
        return ((zf - alpha * x_hat) / sigma).reshape(z.shape).to(z.dtype)


SMALL, K2 = (1, 2, 4), 2  # 2⁸ = 256 images to enumerate


def small_gaps(model, oracle, logpi_img, images, batches=48, batch=2000, seed=41):
    """Per batch: mean (bound + log P(x)) / d in nats/dim, images drawn from P."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    gaps = []
    with torch.no_grad():
        for _ in range(batches):
            idx = torch.multinomial(logpi_img.exp(), batch, replacement=True, generator=gen)
            b = model.nelbo(images[idx], denoiser=oracle)
            gaps.append(((b.total + logpi_img[idx]) / images[0].numel()).mean())
    return torch.stack(gaps)


@pytest.mark.parametrize("wavelet", ["db4", "haar"])
def test_oracle_bound_equals_entropy_for_any_orthogonal_wavelet(wavelet):
    """W-PCDM with db4 (8 taps wrapped around a 2×4 image: an orthonormal map other than
    Haar's) has an exact likelihood: with Bayes-optimal denoisers the bound equals −log P(x)
    within sampling error. Haar through the same oracle checks the oracle; and the Haar
    oracle on the db4 model is far off, so the test sees which map the model uses."""
    model = make_model("w-pcdm", 2, shape=SMALL, k_values=K2, wavelet=wavelet)
    pi = torch.tensor(np.random.default_rng(7).dirichlet(np.ones(K2), size=8), dtype=DT)  # (d, K)
    images = torch.cartesian_prod(*[torch.arange(K2)] * 8).view(-1, *SMALL)  # all of them
    logpi_img = pi.log()[torch.arange(8), images.flatten(1)].sum(1)
    gaps = small_gaps(model, EnumerationOracle(model, logpi_img, images), logpi_img, images)
    check_zero(gaps, f"w-pcdm {wavelet} S=2 (enumeration oracle) vs H(x)")
    if wavelet != "haar":
        haar = make_model("w-pcdm", 2, shape=SMALL, k_values=K2)
        wrong = small_gaps(model, EnumerationOracle(haar, logpi_img, images), logpi_img, images, batches=8)
        mean, se = (float(v) for v in mean_se(wrong))
        print(f"db4 model, Haar oracle: gap {mean:+.4f} ± {se:.4f} nats/dim")
        assert mean > 20 * max(se, float(mean_se(gaps)[1]))
