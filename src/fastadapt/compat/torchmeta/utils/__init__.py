"""torchmeta's ``torchmeta.utils``: data loading, the inner step, metric-learning heads."""

from fastadapt.compat.torchmeta.utils import data
from fastadapt.compat.torchmeta.utils.gradient_based import gradient_update_parameters
from fastadapt.compat.torchmeta.utils.matching import (
    matching_log_probas,
    matching_loss,
    matching_probas,
)
from fastadapt.compat.torchmeta.utils.prototype import get_prototypes, prototypical_loss

__all__ = [
    "data",
    "get_prototypes",
    "gradient_update_parameters",
    "matching_log_probas",
    "matching_loss",
    "matching_probas",
    "prototypical_loss",
]
