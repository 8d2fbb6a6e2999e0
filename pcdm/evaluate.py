"""Evaluation of the bound: per-image bpd by term, means with standard errors, and a trained
run on a data set (what ``pcdm eval`` prints)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .checkpoint import load_run
from .classical import reference_bpd
from .data import ImageSet, default_split, load, to_nchw
from .machine import Monitor
from .model import PCDM, to_bpd
from .stats import standard_error

# γ bands of the diffusion-term diagnostics: where along the noise scale the bits are paid.
GAMMA_BANDS = ((-math.inf, -10.0, "gamma<-10"), (-10.0, -5.0, "-10<=gamma<-5"), (-5.0, 0.0, "-5<=gamma<0"))
GAMMA_BANDS += ((0.0, math.inf, "gamma>=0"),)


def band_terms(bound, dims: int) -> dict[str, torch.Tensor]:
    """Each level's one-sample diffusion term split by the γ band its time fell in, bpd per
    image: ``band:<level>:<label>``. Averaged over images and time draws, the bands of a
    level add up to its diffusion term (the split is by t, which the estimate samples)."""
    gamma_t, diff = bound.extras["gamma_t"], bound.extras["diffusion_levels"]
    out = {}
    for s in range(diff.shape[1]):
        for lo, hi, label in GAMMA_BANDS:
            inside = (gamma_t[:, s] >= lo) & (gamma_t[:, s] < hi)
            out[f"band:{s + 1}:{label}"] = to_bpd(diff[:, s] * inside, dims)
    return out


@torch.no_grad()
def per_image_bpd(
    model: PCDM,
    images: np.ndarray,
    n_t: int = 1,
    steps: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """Bound of each image in bpd, by term, averaged over ``n_t`` Monte-Carlo draws of
    (t, ε, ε₀). ``steps`` = T selects the discrete-time bound."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=len(images), desc=desc, disable=not progress, unit="img", leave=False)
    for start in range(0, len(images), batch_size):
        x = to_nchw(images[start : start + batch_size]).to(device)
        acc: dict[str, torch.Tensor] = {}
        for _ in range(n_t):
            bound = model.nelbo(x, steps=steps)
            for k, v in {**bound.bpd(), **band_terms(bound, model.dims)}.items():
                acc[k] = acc.get(k, 0) + v.detach() / n_t
        for k, v in acc.items():
            out.setdefault(k, []).append(v.float().cpu().numpy())
        bar.update(len(x))
    bar.close()
    return {k: np.concatenate(v) for k, v in out.items()}


def per_image_ode_bpd(
    model: PCDM,
    images: np.ndarray,
    options=None,
    batch_size: int = 64,
    seed: int = 0,
    n_t: int = 1,
    progress: bool = True,
    desc: str = "ode",
) -> dict[str, np.ndarray]:
    """The probability-flow ODE bound of each image (pcdm.ode, docs/math.md §12) in bpd, by
    term (``bpd_ode``, ``bpd_dequant``, ``bpd_recon``, ``bpd_level<s>``), with the solver's
    function evaluations (``nfe``, ``nfe_level<s>``: those of the image's batch) and
    ``seconds`` per image; and the ELBO of the same images (``per_image_bpd`` with ``n_t``
    draws) under ``elbo_``. One seed fixes ε₀ and the Hutchinson probes."""
    from .ode import ODEOptions, ode_bound  # torchdiffeq only where the ODE is used

    options = options or ODEOptions()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, list[np.ndarray]] = {}
    bar = tqdm(total=len(images), desc=desc, disable=not progress, unit="img", leave=False)
    for start in range(0, len(images), batch_size):
        x = to_nchw(images[start : start + batch_size]).to(device)
        bound = ode_bound(model, x, options, generator=generator)
        n = len(x)
        cols = {k: v.detach().float().cpu().numpy() for k, v in bound.bpd().items()}
        cols["nfe"] = np.full(n, float(sum(bound.nfe)))
        for s, nfe in enumerate(bound.nfe):
            cols[f"nfe_level{s + 1}"] = np.full(n, float(nfe))
        cols["seconds"] = np.full(n, bound.seconds / n)
        for k, v in cols.items():
            out.setdefault(k, []).append(v)
        bar.update(n)
    bar.close()
    result = {k: np.concatenate(v) for k, v in out.items()}
    elbo = per_image_bpd(model, images, n_t=n_t, batch_size=batch_size, seed=seed, progress=False)
    result.update({f"elbo_{k}": v for k, v in elbo.items() if not k.startswith("band:")})
    return result


def summarize_ode(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """``summarize`` of an ODE evaluation, plus the ELBO's standard error and the paired
    difference ODE − ELBO on the same images (``ode_minus_elbo``, ``ode_minus_elbo_se``)."""
    out = summarize(per_image)
    out["elbo_bpd_se"] = standard_error(per_image["elbo_bpd"])
    diff = per_image["bpd"] - per_image["elbo_bpd"]
    out["ode_minus_elbo"], out["ode_minus_elbo_se"] = float(diff.mean()), standard_error(diff)
    return out


def summarize(per_image: dict[str, np.ndarray]) -> dict[str, float]:
    """Mean of every term, plus the standard error of the total (``bpd_se``); the γ-band
    terms go into ``diffusion_bands`` = {"level<s>": {band: bpd}}."""
    out = {k: float(v.mean()) for k, v in per_image.items() if not k.startswith("band:")}
    bands = {}
    for key, v in per_image.items():
        if key.startswith("band:"):
            _, level, label = key.split(":")
            bands.setdefault(f"level{level}", {})[label] = float(v.mean())
    if bands:
        out["diffusion_bands"] = bands
    total = per_image["bpd"]
    out["bpd_se"] = standard_error(total)
    out["n_images"] = int(len(total))
    return out


def check_matches(model, data: ImageSet) -> None:
    """The data must have the model's shape and K: say which, clearly."""
    want = tuple(model.config.image_shape)
    if tuple(data.shape_chw) != want:
        raise ValueError(
            f"{data.name} has images of shape (C,H,W) = {data.shape_chw}, the model expects {want}"
        )
    if data.K > model.config.K:
        raise ValueError(
            f"{data.name} has K = {data.K} pixel values, the model was trained for K = {model.config.K}"
        )


def evaluate_run(
    run,
    data_spec=None,
    split=None,
    limit=None,
    n_t=1,
    steps=None,
    batch=128,
    ema=True,
    progress=True,
    device="cpu",
    compare_codecs=False,
    ode=None,
) -> dict:
    """The bound of a run on data (with ``compare_codecs``, PNG and JPEG-XL lossless on the
    same images when that is cheap: ``classical.reference_bpd``). Default split: the run's
    own data → its held-out test split; a named dataset → its test split; any other folder
    or array → all of it."""
    model, cfg = load_run(run, ema=ema, device=device)
    own = cfg["data"]["spec"]
    spec = data_spec or own
    split, why = default_split(data_spec, own, split)  # the rule pcdm ood uses too
    data = load(spec, split, limit=limit)
    check_matches(model, data)
    monitor = Monitor().start()  # what else used the cores while it timed (docs/math.md §10)
    if ode is not None:  # the PF-ODE bound and the ELBO on the same images (docs/math.md §12)
        per_image = per_image_ode_bpd(model, data.images, ode, batch_size=batch, n_t=n_t, progress=progress)
        out = summarize_ode(per_image)
        out.update(ode_options=dataclasses.asdict(ode))
    else:
        per_image = per_image_bpd(model, data.images, n_t, steps, batch_size=batch, progress=progress)
        out = summarize(per_image)
    out["machine"] = monitor.summary()
    out.update(dims=model.dims, data=data.name, split=split, split_reason=why, n_t=n_t, steps=steps)
    out.update(model=model.config.model)
    if compare_codecs and (reference := reference_bpd(data.images)):
        out["classical_bpd"] = reference
    return out
