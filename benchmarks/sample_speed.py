"""Sampling and FID feature-extraction speed of a preset: images/s per device.

    python benchmarks/sample_speed.py --preset cifar10 --device cuda
    python benchmarks/sample_speed.py --preset tiny --shape 1,8,8 --device cpu --n 4

Untrained weights: the cost of a network evaluation does not depend on them. Samplers are
``heun:N`` (EDM's Heun on N σ's, 2 (N − 1) evaluations per level) and ``ancestral:T``; the
Inception-v3 of FID is timed on random images at 299×299 (weights are not needed for the
timing, so none are loaded), under bf16 autocast on CUDA as the samplers are.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pcdm import edm
from pcdm.features import InceptionV3
from pcdm.model import PCDM, ModelConfig
from pcdm.presets import get_preset


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def sample_rate(model: PCDM, sampler: str, steps: int, n: int, device) -> float:
    g = torch.Generator(device=device).manual_seed(0)
    bf16 = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        edm.draw(model, min(n, 2), sampler, 2 if sampler == "heun" else 1, 0.0, g)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        edm.draw(model, n, sampler, steps, 0.0, g)
        _sync(device)
    return n / (time.perf_counter() - t0)


@torch.no_grad()
def inception_rate(n: int, device, batch: int) -> float:
    net = InceptionV3().to(device).eval()
    x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    bf16 = device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        net(net.preprocess(x))
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(max(1, n // batch)):
            net(net.preprocess(x))
        _sync(device)
    return max(1, n // batch) * batch / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cifar10")
    p.add_argument("--models", default="vdm,w-pcdm,lp-pcdm")
    p.add_argument("--shape", help="C,H,W (default: the preset's, else 3,32,32)")
    p.add_argument("--samplers", default="heun:18,ancestral:256")
    p.add_argument("--n", type=int, default=256, help="images per timing")
    p.add_argument("--inception-n", type=int, default=0, help="images through Inception-v3 (0: skip)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for name in args.models.split(","):
        preset = get_preset(args.preset if args.preset in ("small", "tiny") else f"{args.preset}-{name}")
        m = dict(preset["model"], model=name)
        if args.shape:
            m["image_shape"] = tuple(int(v) for v in args.shape.split(","))
        m.setdefault("image_shape", (3, 32, 32))
        model = PCDM(ModelConfig(**m)).to(device).eval()
        for spec in args.samplers.split(","):
            sampler, _, steps = spec.partition(":")
            rate = sample_rate(model, sampler, int(steps), args.n, device)
            rows.append({"model": name, "sampler": spec, "images_per_s": round(rate, 3)})
            print(f"{name:10s} {spec:14s} {rate:10.2f} images/s ({args.n} images, {device})", flush=True)
    if args.inception_n:
        rate = inception_rate(args.inception_n, device, batch=min(250, args.inception_n))
        rows.append({"model": "inception-v3", "sampler": "features", "images_per_s": round(rate, 1)})
        print(f"inception-v3 features  {rate:10.1f} images/s ({device})")
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
