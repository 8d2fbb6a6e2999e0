"""Named presets: the paper's appendix-B settings and a small CPU model.

A preset fixes the model architecture (``ModelConfig`` fields) and the training options
(``TrainConfig`` fields). Paper sizes (appendix B, VDM's optimiser): AdamW, lr 2e-4,
weight decay 0.01, β = (0.9, 0.99), EMA 0.9999, batch 128, no downsampling in the U-Net.
"""

from __future__ import annotations

from . import registry

# dataset → (image shape, levels, base width, detail width, depth, dropout, train steps)
_PAPER = {
    "cifar10": ((3, 32, 32), 2, 128, 64, 32, 0.1, 2_000_000),
    "imagenet32": ((3, 32, 32), 2, 256, 128, 32, 0.0, 10_000_000),
    "imagenet64": ((3, 64, 64), 3, 256, 128, 64, 0.0, 10_000_000),
    "imagenet128": ((3, 128, 128), 4, 256, 128, 64, 0.0, 10_000_000),
}
# The paper's parameter counts (base / conditional model), for the README comparison.
PAPER_PARAMS = {
    "cifar10": "35M / 42M",
    "imagenet32": "65M / 70M",
    "imagenet64": "299M / 329M",
    "imagenet128": "400M / 440M",
}

PAPER_TRAIN = dict(lr=2e-4, weight_decay=0.01, beta2=0.99, ema=0.9999, batch=128, warmup=1000, grad_clip=1.0)


def _paper_preset(dataset: str, model: str) -> dict:
    shape, levels, width, detail, depth, dropout, steps = _PAPER[dataset]
    m = dict(
        model=model,
        image_shape=shape,
        levels=levels,
        width=width,
        depth=depth,
        attention=True,
        dropout=dropout,
    )
    fixed = registry.get(model).levels
    if fixed == 1:  # a single-scale model (vdm) keeps the base width at full resolution
        m.update(levels=1, detail_width=None)
    else:
        m.update(detail_width=detail)
    return {"model": m, "train": dict(PAPER_TRAIN, steps=steps)}


# Paper presets "DATASET-MODEL" for the built-in models (models registered later get theirs
# from get_preset).
PRESETS: dict[str, dict] = {
    f"{dataset}-{model}": _paper_preset(dataset, model) for dataset in _PAPER for model in registry.names()
}
# Small CPU model (~0.2–0.4 M parameters): a useful Fashion-MNIST model in minutes.
PRESETS["small"] = {
    "model": dict(width=32, depth=2, attention=True, dropout=0.0),
    "train": dict(lr=2e-3, weight_decay=0.01, beta2=0.99, ema=0.999, batch=32, warmup=100, grad_clip=1.0),
}
PRESETS["tiny"] = {  # for tests and smoke runs
    "model": dict(width=16, depth=1, attention=False, dropout=0.0),
    "train": dict(lr=2e-3, weight_decay=0.0, beta2=0.99, ema=0.99, batch=16, warmup=10, grad_clip=1.0),
}

# The best CPU settings found so far (docs/math.md §10): lp-pcdm, no attention (at full
# resolution it costs about half a CPU step), a narrow full-resolution detail network, and
# importance-sampled diffusion times. Trains lockstep or level by level (--levels-only).
PRESETS["lp-pcdm-cpu"] = {
    "model": dict(
        model="lp-pcdm", levels=2, width=32, detail_width=16, depth=2, attention=False, dropout=0.0
    ),
    "train": dict(PRESETS["small"]["train"], t_sampling="importance"),
}


def get_preset(name: str) -> dict:
    if name in PRESETS:
        return PRESETS[name]
    for dataset in _PAPER:
        model = name.removeprefix(f"{dataset}-")
        if model != name and model in registry.names():
            return _paper_preset(dataset, model)
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
