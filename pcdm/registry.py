"""The one table of models: a model is a hierarchical map (``pcdm.maps``) and its options.

Model names, the ``pcdm train --model`` choices and the paper presets all come from here.
A new map is a :class:`~pcdm.maps.HierarchicalMap` subclass plus one :func:`register`
call; no other file changes (docs/maps.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .maps import Cascade, HierarchicalMap, Identity, LaplacianPyramid, Lifting, wavelet_map


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the --model value
    build: Callable[..., HierarchicalMap]  # (levels, **options) → the map
    summary: str  # one line for --help and docs
    levels: int | None = None  # a fixed S (vdm: 1); None: S is chosen (--levels, default 2)
    options: dict = field(default_factory=dict)  # ModelConfig fields passed to ``build``, with defaults


_MODELS: dict[str, ModelSpec] = {}


def register(
    name: str,
    build: Callable[..., HierarchicalMap],
    summary: str,
    levels: int | None = None,
    options: dict | None = None,
    replace: bool = False,
) -> ModelSpec:
    """Make ``pcdm train --model NAME`` (and ``ModelConfig(model=NAME)``) build this map.
    ``build(levels, **options)`` is usually the map class itself; ``options`` maps the
    ModelConfig fields it takes to their defaults (w-pcdm: ``{"wavelet": "haar"}``)."""
    if name in _MODELS and not replace:
        raise ValueError(f"model {name!r} is already registered")
    spec = ModelSpec(name, build, summary, levels, dict(options or {}))
    _MODELS[name] = spec
    return spec


def unregister(name: str) -> None:
    _MODELS.pop(name, None)


def names() -> tuple[str, ...]:
    """Registered model names, in registration order (built-ins first)."""
    return tuple(_MODELS)


def get(name: str) -> ModelSpec:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(_MODELS)}")
    return _MODELS[name]


def build_model_map(name: str, levels: int, **options) -> HierarchicalMap:
    """The map of model ``name`` with S levels and the model's options."""
    spec = get(name)
    return spec.build(spec.levels or levels, **{k: options[k] for k in spec.options})


register("vdm", Identity, "single-scale VDM baseline (identity map, S = 1)", levels=1)
register("c-vdm", Cascade, "C-VDM: cascade of subsampled images, not volume-preserving (a loose bound)")
register("lp-pcdm", LaplacianPyramid, "exact Laplacian pyramid (tight frame, detail subspaces)")
register("w-pcdm", wavelet_map, "orthonormal wavelet (--wavelet, default haar)", options={"wavelet": "haar"})
register("lift-pcdm", Lifting, "integer Haar lifting: every level a discrete image")
