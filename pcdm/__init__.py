"""pcdm: probabilistic cascaded diffusion models with exact multi-scale likelihoods.

The public names a user needs: a model is ``PCDM(ModelConfig(model=NAME, ...))``, NAME one of
``pcdm.registry.names()`` (its map is ``config.build_map()``; the maps themselves, by map
name, are in ``pcdm.maps``); a trained run is ``load_run(RUN)``.
"""

from .checkpoint import load_run
from .model import PCDM, Bound, ModelConfig, count_parameters, to_bpd

__all__ = ["PCDM", "Bound", "ModelConfig", "count_parameters", "load_run", "to_bpd"]
__version__ = "0.1.0"
