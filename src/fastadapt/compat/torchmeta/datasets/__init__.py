"""torchmeta's ``torchmeta.datasets``: the dataset helpers (:mod:`.helpers`)."""

from fastadapt.compat.torchmeta.datasets import helpers
from fastadapt.compat.torchmeta.datasets.episodes import EpisodeDataset

__all__ = ["EpisodeDataset", "helpers"]
