"""Out-of-distribution detection (docs/math.md §8, paper §6.2), in four small modules:

sets        OOD sets that need no download, and adaptation of foreign data
scores      the scores of one image from its per-level bits and complexity; AUROC
experiment  which images play which part, one evaluation pass, the cached reference
report      the table and ROC plot (the ``pcdm ood`` command is pcdm/cli/ood.py)
select      choosing the default score on validation OOD sets, checked on unseen ones
"""

from .experiment import (
    CACHE_FILE,
    ROC_FILE,
    OODResult,
    cached_reference,
    complexity_bpd,
    entropy_cache_key,
    features,
    run_ood,
    split_test,
    weights_path,
)
from .report import format_table, plot_roc
from .scores import Reference, auroc, equal_counts, raw_scores, roc_curve, score_names, scores, typicality
from .select import DEFAULT_SCORE, UNSEEN_SETS, VALIDATION_SETS, bootstrap_auroc
from .sets import (
    BUILTIN,
    TRANSFORMS,
    adapt_images,
    constant_images,
    gaussian_images,
    glyph_images,
    load_ood_set,
    mnist_like_images,
    requantise,
    shape_images,
    transformed,
    uniform_images,
)

__all__ = [
    "BUILTIN", "DEFAULT_SCORE", "UNSEEN_SETS", "VALIDATION_SETS", "bootstrap_auroc", "glyph_images",
    "shape_images", "CACHE_FILE", "ROC_FILE", "TRANSFORMS", "OODResult", "Reference", "adapt_images",
    "auroc", "cached_reference", "complexity_bpd", "constant_images",
    "entropy_cache_key", "equal_counts", "features", "format_table", "gaussian_images", "load_ood_set",
    "mnist_like_images", "plot_roc", "raw_scores", "requantise", "roc_curve", "run_ood", "score_names",
    "scores", "split_test", "transformed", "typicality", "uniform_images", "weights_path",
]  # fmt: skip
