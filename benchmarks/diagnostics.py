"""Where a multi-scale model pays its bits, and whether its detail networks read the lattice.

    python benchmarks/diagnostics.py RUN [--data DATA] [--split test] [--limit N] [--json]

Prints, for a trained run (EMA weights):

* γ(0), γ(1) of the schedule (σ₀ relative to the pixel grid says how much the decoder pays);
* the bound with its parts and each level's diffusion term split into γ bands (the same
  numbers as ``pcdm eval --json``'s ``diffusion_bands``): a band that holds much more than
  its share is where the network is poor;
* the **conditioning-sensitivity probe** of every level s ≥ 2 at t = 0 and a few small t:
  the mean square change of ε̂ when every conditioning value is shifted by one and by two
  steps of its own lattice (for Haar the coarse LL moves by 1/K or 2/K, which changes the
  sub-lattice of the detail coefficients: an exact denoiser's ε̂ changes by O(1) at t = 0).
  A probe near zero means the network ignores the fine structure of its conditioning.
* with ``--lattice-swap TAU …`` (vdm, Haar w-pcdm): the bound when the network's ε̂ is
  replaced by the closed-form flat-lattice posterior's (``pcdm.lattice``) wherever the noise
  is at most TAU lattice steps, on the same noise draws as the plain bound (paired): a
  swap that lowers the bound means the network snaps worse than a flat prior does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pcdm.checkpoint import load_run  # noqa: E402
from pcdm.data import load, to_nchw  # noqa: E402
from pcdm.evaluate import (  # noqa: E402
    check_matches,  # noqa: E402
    per_image_bpd,
    summarize,
)
from pcdm.lattice import octave_grid  # noqa: E402
from pcdm.model import PCDM, Noise  # noqa: E402
from pcdm.schedules import alpha_sigma  # noqa: E402


def lattice_step(model: PCDM, k: int) -> float:
    """One step of the lattice the conditioning of level k lives on, in model units."""
    octave = model.map.lattice(k).cond or 0
    return 2 / model.config.K / 2**octave


@torch.no_grad()
def sensitivity(model: PCDM, x: torch.Tensor, times=(0.0, 0.05, 0.1), seed: int = 0) -> dict:
    """Mean square change of ε̂ᵏ (per coordinate) when the conditioning is shifted by one
    and two lattice steps, for every level k ≥ 1, at the given times."""
    g = torch.Generator().manual_seed(seed)
    noise = Noise.draw(x.shape, len(model.level_shapes), generator=g, dtype=model.dtype)
    gamma_0 = model.schedule(torch.zeros((), dtype=model.dtype))
    alpha_0, sigma_0 = alpha_sigma(gamma_0)
    if model.map.discrete:
        xs = model.map(x.long())
        levels = [model.level_to_f(k, v) for k, v in enumerate(xs)]
        eps = model.map.noise_levels(noise.eps)
        conds = [model.discrete_condition(xs, k) for k in range(len(levels))]
    else:
        f = model.pixels_to_f(x)
        levels, eps = model.map(f), model.map(noise.eps)
        z0s = model.map(alpha_0 * f + sigma_0 * noise.eps0)
        conds = [model.map.condition(z0s, k) for k in range(len(levels))]
    out = {}
    for k in range(1, len(levels)):
        step = lattice_step(model, k)
        for t in times:
            gamma = model.schedule(torch.tensor(float(t), dtype=model.dtype)).expand(len(x))
            alpha, sigma = alpha_sigma(gamma[0])
            z = alpha * levels[k] + sigma * eps[k]
            base = model.eps_hat(k, z, gamma, conds[k])
            row = {}
            for n in (1, 2):
                moved = model.eps_hat(k, z, gamma, conds[k] + n * step)
                row[f"shift{n}"] = float((moved - base).pow(2).mean())
            out[f"level{k + 1}@t={t:g}"] = dict(row, gamma=float(gamma[0]))
    return out


def lattice_swap(model: PCDM, x: torch.Tensor, taus, batch: int = 250, seed: int = 0) -> dict:
    """Mean bound (bpd) and its paired difference to the plain bound (± standard error over
    images) when ε̂ is the flat-lattice posterior's wherever τ ≤ τ*, for each τ* in taus."""
    K = model.config.K

    def swapped(tau_max):
        def denoiser(k, z, gamma, cond):
            net = model.eps_hat(k, z, gamma, cond)
            if tau_max is None:
                return net
            alpha, sigma = (v.reshape(-1, 1, 1, 1) for v in alpha_sigma(gamma))
            tau = sigma / alpha / octave_grid(model.map.lattice(k).z, K)[0]
            return torch.where(tau <= tau_max, model.lattice_eps(k, z, gamma, cond), net)

        return denoiser

    totals = {}
    for tau_max in [None, *taus]:
        g = torch.Generator().manual_seed(seed)
        parts = []
        for start in range(0, len(x), batch):
            xb = x[start : start + batch]
            noise = Noise.draw(xb.shape, len(model.level_shapes), generator=g, dtype=model.dtype)
            parts.append(model.nelbo(xb, denoiser=swapped(tau_max), noise=noise).bpd()["bpd"])
        totals[tau_max] = torch.cat(parts).double()
    plain = totals.pop(None)
    out = {"plain": float(plain.mean())}
    for tau_max, v in totals.items():
        d = v - plain
        out[f"tau<={tau_max:g}"] = {"bpd": float(v.mean()), "delta": float(d.mean()),
                                    "delta_se": float(d.std() / len(d) ** 0.5)}  # fmt: skip
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data", help="DATA spec (default: the run's own data)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--limit", type=int, default=1000, help="images for the bound (default 1000)")
    p.add_argument("--probe-images", type=int, default=64, help="images for the sensitivity probe")
    p.add_argument(
        "--lattice-swap",
        type=float,
        nargs="+",
        metavar="TAU",
        help="also the bound with ε̂ swapped (see above)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    model, cfg = load_run(args.run)
    data = load(args.data or cfg["data"]["spec"], args.split, limit=args.limit)
    check_matches(model, data)
    with torch.no_grad():
        ends = model.schedule(torch.tensor([0.0, 1.0], dtype=model.dtype))
    out = {"run": str(args.run), "model": model.config.model, "data": data.name}
    out.update(gamma_0=float(ends[0]), gamma_1=float(ends[1]))
    out.update(summarize(per_image_bpd(model, data.images, progress=not args.json)))
    out["sensitivity"] = sensitivity(model, to_nchw(data.images[: args.probe_images]))
    if args.lattice_swap:
        with torch.no_grad():
            out["lattice_swap"] = lattice_swap(model, to_nchw(data.images), args.lattice_swap)
    if args.json:
        print(json.dumps(out))
        return 0
    head = f"{out['model']} on {out['data']} ({out['n_images']} images)"
    print(f"{head}: γ(0) {out['gamma_0']:.2f}, γ(1) {out['gamma_1']:.2f}")
    print(f"  bound {out['bpd']:.4f} ± {out['bpd_se']:.4f} bpd (lower is better)")
    for key in ("bpd_prior", "bpd_diffusion", "bpd_recon"):
        print(f"  {key[4:]:<10} {out[key]:.4f}")
    for level, bands in out.get("diffusion_bands", {}).items():
        print(f"  {level} diffusion by γ band: " + "  ".join(f"{b} {v:.4f}" for b, v in bands.items()))
    print("  conditioning sensitivity: mean square change of ε̂ for a shift of 1 / 2 lattice steps")
    for key, row in out["sensitivity"].items():
        print(f"    {key:<14} γ {row['gamma']:7.2f}   {row['shift1']:.3e}   {row['shift2']:.3e}")
    if "lattice_swap" in out:
        swap = out["lattice_swap"]
        print(f"  flat-lattice swap (same noise; plain bound {swap['plain']:.4f} bpd):")
        for key, row in swap.items():
            if key != "plain":
                print(
                    f"    ε̂ swapped where {key:<9} {row['bpd']:.4f} bpd "
                    f"({row['delta']:+.4f} ± {row['delta_se']:.4f})"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
