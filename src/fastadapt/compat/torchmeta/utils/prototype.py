"""``get_prototypes`` and ``prototypical_loss``: Prototypical Networks' head (Snell et al. 2017).

Both are :class:`fastadapt.algorithms.protonet.ProtoNet`'s own computations (class means, Eq. 1;
negative squared Euclidean distances as logits, Eq. 2) on embeddings the caller computed, so a
torchmeta-style training step gives the numbers of ``ProtoNet(embedding).meta_loss``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms._support import class_means
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.compat.torchmeta.utils._labels import check_embeddings, check_targets
from fastadapt.errors import ConfigError

_PROTONET = ProtoNet(nn.Identity(), distance="euclidean")


def get_prototypes(
    embeddings: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Class means of the support embeddings: ``[batch, n, D]`` → ``[batch, num_classes, D]``.

    Args:
        embeddings: support embeddings ``[batch, n, D]``.
        targets: their labels ``[batch, n]``, each task holding every class
            ``0..num_classes-1`` at least once.
        num_classes: the number of ways.
    """
    check_embeddings("embeddings", embeddings)
    check_targets("targets", targets, embeddings, num_classes, every=True)
    return class_means(embeddings, targets, num_classes)


def prototypical_loss(
    prototypes: torch.Tensor, embeddings: torch.Tensor, targets: torch.Tensor, **kwargs: Any
) -> torch.Tensor:
    """Cross-entropy of the queries under a softmax over negative squared distances.

    Args:
        prototypes: ``[batch, num_classes, D]``, from :func:`get_prototypes`.
        embeddings: query embeddings ``[batch, m, D]``.
        targets: their labels ``[batch, m]``.
        kwargs: passed to ``torch.nn.functional.cross_entropy`` (e.g. ``reduction="none"``
            gives ``[batch, m]``).
    """
    check_embeddings("prototypes", prototypes)
    check_embeddings("embeddings", embeddings)
    if prototypes.shape[0] != embeddings.shape[0] or prototypes.shape[2] != embeddings.shape[2]:
        raise ConfigError(
            f"prototypes {tuple(prototypes.shape)} and embeddings {tuple(embeddings.shape)} "
            "must agree on the batch size and the embedding size."
        )
    check_targets("targets", targets, embeddings, prototypes.shape[1], every=False)
    logits = _PROTONET._logits(embeddings, prototypes)  # [batch, m, num_classes]
    return F.cross_entropy(logits.transpose(1, 2), targets, **kwargs)
