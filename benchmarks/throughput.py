"""Training throughput of a preset on synthetic data: images/s per device and peak memory.

    python benchmarks/throughput.py --preset cifar10 --device cuda --seconds 60
    python benchmarks/throughput.py --preset tiny --shape 1,8,8 --device cpu --seconds 5

Runs the real training step (bound, backward, clipping, AdamW, EMA) under bf16 autocast
on CUDA, fp32 on CPU. Synthetic uint8 images: the network cost does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pcdm.model import PCDM, ModelConfig, count_parameters
from pcdm.presets import get_preset


def measure(model_name: str, args) -> dict:
    preset = get_preset(args.preset)
    m = dict(preset["model"], model=model_name)
    if args.shape:
        m["image_shape"] = tuple(int(v) for v in args.shape.split(","))
    m.setdefault("image_shape", (3, 32, 32))
    device = torch.device(args.device)
    model = PCDM(ModelConfig(**m)).to(device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9999), use_buffers=True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, betas=(0.9, 0.99), weight_decay=0.01)
    x = torch.randint(0, model.config.K, (args.batch, *model.config.image_shape), device=device)
    bf16 = device.type == "cuda"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update_parameters(model)
        return loss

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds or n < 2:
        loss = step()
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return {
        "model": model_name,
        "params_M": round(count_parameters(model) / 1e6, 3),
        "images_per_s": round(n * args.batch / elapsed, 2),
        "peak_mem_GiB": round(peak, 2),
        "steps": n,
        "loss": round(float(loss.detach()), 3),
        "precision": "bf16" if bf16 else "fp32",
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="small", help="small, tiny, or a dataset: cifar10, imagenet32, …")
    p.add_argument("--models", default="vdm,w-pcdm")
    p.add_argument("--shape", help="C,H,W (default: the preset's, else 3,32,32)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    results = []
    for name in args.models.split(","):
        # "cifar10" → the paper preset "cifar10-<model>"; "small"/"tiny" apply to every model
        preset_name = args.preset if args.preset in ("small", "tiny") else f"{args.preset}-{name}"
        r = measure(name, argparse.Namespace(**{**vars(args), "preset": preset_name}))
        print(json.dumps(r), flush=True)
        results.append(r)
    if len(results) == 2 and results[0]["images_per_s"] > 0:
        print(
            f"ratio {results[1]['model']}/{results[0]['model']}: "
            f"{results[1]['images_per_s'] / results[0]['images_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
