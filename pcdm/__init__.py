"""pcdm: probabilistic cascaded diffusion models with exact multi-scale likelihoods."""

from .maps import build_map
from .model import PCDM, Bound, ModelConfig, count_parameters, to_bpd

__all__ = ["PCDM", "Bound", "ModelConfig", "build_map", "count_parameters", "to_bpd"]
__version__ = "0.1.0"
