"""Matching Networks' head (Vinyals et al. 2016): log-probabilities of the queries' classes.

:func:`matching_log_probas` is :class:`fastadapt.algorithms.matching.MatchingNet`'s own
computation (an attention over the support set by cosine similarity, Eq. 1-2, without full
context embeddings) on embeddings the caller computed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.matching import MatchingNet
from fastadapt.compat.torchmeta.utils._labels import check_embeddings, check_targets
from fastadapt.errors import ConfigError

_MATCHING = MatchingNet(nn.Identity())


def matching_log_probas(
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    test_embeddings: torch.Tensor,
    num_classes: int,
    eps: float = 1e-8,
) -> torch.Tensor:
    """log p(class | query) ``[batch, num_classes, m]``.

    Args:
        embeddings: support embeddings ``[batch, n, D]``.
        targets: their labels ``[batch, n]``, every class ``0..num_classes-1`` present.
        test_embeddings: query embeddings ``[batch, m, D]``.
        num_classes: the number of ways.
        eps: the smallest norm an embedding is divided by (``F.normalize``'s ``eps``).
    """
    check_embeddings("embeddings", embeddings)
    check_embeddings("test_embeddings", test_embeddings)
    if test_embeddings.shape[0] != embeddings.shape[0] or (
        test_embeddings.shape[2] != embeddings.shape[2]
    ):
        raise ConfigError(
            f"embeddings {tuple(embeddings.shape)} and test_embeddings "
            f"{tuple(test_embeddings.shape)} must agree on the batch size and embedding size."
        )
    check_targets("targets", targets, embeddings, num_classes, every=True)
    support = F.normalize(embeddings, dim=-1, eps=eps)
    queries = F.normalize(test_embeddings, dim=-1, eps=eps)
    return _MATCHING._logits(support, targets.long(), queries).transpose(1, 2)


def matching_probas(
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    test_embeddings: torch.Tensor,
    num_classes: int,
    eps: float = 1e-8,
) -> torch.Tensor:
    """p(class | query) ``[batch, num_classes, m]``; arguments as :func:`matching_log_probas`."""
    return matching_log_probas(embeddings, targets, test_embeddings, num_classes, eps).exp()


def matching_loss(
    train_embeddings: torch.Tensor,
    train_targets: torch.Tensor,
    test_embeddings: torch.Tensor,
    test_targets: torch.Tensor,
    num_classes: int,
    eps: float = 1e-8,
    **kwargs: Any,
) -> torch.Tensor:
    """Negative log-likelihood of the queries' labels ``test_targets`` ``[batch, m]``.

    The other arguments are those of :func:`matching_log_probas`; ``kwargs`` go to
    ``torch.nn.functional.nll_loss`` (e.g. ``reduction="none"``).
    """
    log_probas = matching_log_probas(
        train_embeddings, train_targets, test_embeddings, num_classes, eps
    )
    check_targets("test_targets", test_targets, test_embeddings, num_classes, every=False)
    return F.nll_loss(log_probas, test_targets, **kwargs)
