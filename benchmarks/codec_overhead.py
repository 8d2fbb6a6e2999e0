"""Per-step overhead of the bits-back chain, measured without sampling noise.

    python benchmarks/codec_overhead.py [RUN] [--steps 100 1000] [--latents 8192] [--lanes 64]

The image is taken as known (x = 0, a point mass), so the reverse model
p(z_{i-1} | z_i) = q(z_{i-1} | z_i, x = 0) is exact and the chain's log-ratio
log q(z_{0:T} | x) / p(z_{0:T}) collapses to log q(z_T | x) / N(z_T; 0, 1): the ideal net
code length is n · KL(N(0, σ_T²) ‖ N(0, 1)) with almost no variance. Whatever the codec's
chain (z₀ pop, T pops from q, T pushes under p, final push of z_T; grid, quantised
probabilities, supports, whitening, support-size side information) costs beyond that is
overhead, reported in bits per latent per step. RUN supplies the γ schedule (default: a
fixed linear schedule −13.3 … 5).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pcdm import codec  # noqa: E402
from pcdm.codec import ans  # noqa: E402


def chain_overhead(grid: codec.Grid, n: int, lanes: int) -> dict:
    """Run one exact chain over n latents (lanes latents per support-size record)."""
    T = grid.T
    coder = ans._AnsCoder(codec.reservoir(64 + int(n * 40 / 32)))
    guard = ans._Guard(encoder=True)
    start = coder.num_bits()
    j_prev = codec.pop_q(coder, np.zeros(n), grid.s_q[0], grid.delta[0], guard, (0, 0, 0))
    z_prev = j_prev * grid.delta[0]
    for i in range(1, T + 1):
        j_i = codec.pop_q(coder, grid.a_q[i] * z_prev, grid.s_q[i], grid.delta[i], guard, (0, 0, i))
        z_i = j_i * grid.delta[i]
        # Exact posterior mean of z_{i-1} given z_i and x = 0: α_{t|s} σ_s² / σ_t² · z_t.
        c = grid.a_q[i] * grid.sigma[i - 1] ** 2 / grid.sigma[i] ** 2
        for part in np.array_split(np.arange(n), max(1, n // lanes)):
            codec.push_p(coder, j_prev[part], c * z_i[part], grid.s_p[i - 1], grid.delta[i - 1])
        j_prev, z_prev = j_i, z_i
    for part in np.array_split(np.arange(n), max(1, n // lanes)):
        codec.push_p(coder, j_prev[part], np.zeros(len(part)), 1.0, grid.delta[T])
    net = coder.num_bits() - start
    s2 = grid.sigma[T] ** 2
    ideal = n * 0.5 * (s2 - 1 - math.log(s2)) / math.log(2)
    return {
        "T": T,
        "net_bits_per_latent": net / n,
        "ideal_bits_per_latent": ideal / n,
        "overhead_bits_per_latent_step": (net - ideal) / (n * T),
        "overhead_bits_per_latent": (net - ideal) / n,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("run", nargs="?", default=None)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--latents", type=int, default=8192)
    p.add_argument("--lanes", type=int, default=64 * 784, help="latents per push (support record)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.run:
        from pcdm.checkpoint import load_run

        model, _ = load_run(args.run)
    else:
        from pcdm.model import PCDM, ModelConfig

        model = PCDM(ModelConfig(model="vdm", image_shape=(1, 8, 8), width=8, depth=1, schedule="fixed"))
    for T in args.steps:
        t0 = time.perf_counter()
        r = chain_overhead(codec.make_grid(model, T), args.latents, args.lanes)
        print(
            f"T={T:5d}: net {r['net_bits_per_latent']:.5f} bits/latent, ideal "
            f"{r['ideal_bits_per_latent']:.5f}, overhead {r['overhead_bits_per_latent']:.5f} "
            f"bits/latent = {r['overhead_bits_per_latent_step']:.2e} per step "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
