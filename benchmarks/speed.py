"""CPU training speed of VDM vs W-PCDM (S = 2) at equal network width and depth.

    python benchmarks/speed.py --width 32 --depth 2 --batch 32 --seconds 10

One training step = the bound (forward), backward and an AdamW step, on random uint8
images (the cost does not depend on the pixel values). Prints images/s per model and
shape, the W-PCDM / VDM ratio, and the share of the step spent in the K-way discrete
decoder log p(x | z₀), which both models pay once per image at full resolution.

Why about 2× and not more: W-PCDM runs two ε-networks (base LL and conditional details)
at half resolution, i.e. each on 1/4 of the pixels, so its convolutions cost ~2 × 1/4 =
1/2 of VDM's (the detail net also has 3C + C input and 3C output channels, a small extra).
The decoder, the maps and the optimiser are shared costs that the ratio cannot remove.
"""

from __future__ import annotations

import argparse
import time

import torch

from pcdm.model import PCDM, ModelConfig, count_parameters


def images_per_second(model: PCDM, batch: int, seconds: float, warmup: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, model.config.K, (batch, *model.config.image_shape))

    def step():
        opt.zero_grad(set_to_none=True)
        model(x).backward()
        opt.step()

    for _ in range(warmup):
        step()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or n < 2:
        step()
        n += 1
    return n * batch / (time.perf_counter() - start)


def decoder_seconds(model: PCDM, batch: int, reps: int = 5) -> float:
    """Time of the discrete decoder term alone (forward + backward through z₀)."""
    x = torch.randint(0, model.config.K, (batch, *model.config.image_shape))
    f = model.pixels_to_f(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        gamma_0 = model.schedule(torch.zeros(()))
        z0 = (f + 1e-3 * torch.randn_like(f)).requires_grad_(True)
        model.log_p_x_given_z0(x, z0, gamma_0).sum().backward()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per model and shape")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best counts")
    p.add_argument("--K", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--shapes", default="3,32,32;1,28,28", help="C,H,W;C,H,W")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"width {args.width}, depth {args.depth}, batch {args.batch}, K {args.K}, "
        f"{torch.get_num_threads()} threads, {args.seconds:g} s per measurement"
    )
    for spec in args.shapes.split(";"):
        shape = tuple(int(v) for v in spec.split(","))
        models = {}
        for name in ("vdm", "w-pcdm"):
            cfg = ModelConfig(
                model=name,
                levels=2,
                image_shape=shape,
                K=args.K,
                width=args.width,
                depth=args.depth,
                attention=True,
            )
            models[name] = PCDM(cfg)
        # Interleaved rounds, best round per model: robust to other load on a shared CPU.
        rates = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                rates[name].append(
                    images_per_second(model, args.batch, args.seconds / args.rounds, args.warmup)
                )
        speeds = {name: max(r) for name, r in rates.items()}
        for name, model in models.items():
            share = decoder_seconds(model, args.batch) * speeds[name] / args.batch
            print(
                f"{'×'.join(map(str, shape)):>9} {name:7s} {count_parameters(model):>8,d} params "
                f"{speeds[name]:8.1f} img/s (rounds: {', '.join(f'{v:.1f}' for v in rates[name])})"
                f"   decoder ≈ {100 * share:4.1f}% of a step"
            )
        print(f"{'':>9} ratio w-pcdm / vdm = {speeds['w-pcdm'] / speeds['vdm']:.2f}×")


if __name__ == "__main__":
    main()
