"""Per-user metrics of rating prediction: MAE, RMSE and nDCG@k over each user's query items.

Lee et al. 2019 (MeLU, arXiv:1908.00413, §4.1) score a recommender on the query items ``H'_i``
of every test user ``i``:

- Eq. 4, ``MAE = 1/|U| Σ_i 1/|H'_i| Σ_{j ∈ H'_i} |y_ij − ŷ_ij|``;
- Eq. 5, ``nDCG@k = 1/|U| Σ_i DCG_i@k / IDCG_i@k`` with
  ``DCG_i@k = Σ_{r=1..k} (2^{R_ir} − 1) / log2(1 + r)``, where ``R_ir`` is the true rating of
  the item the model ranks ``r``-th for user ``i`` and ``IDCG_i@k`` the DCG of the best order
  (Järvelin & Kekäläinen 2002, with the exponential gain of Burges et al. 2005).

The functions here give the inner terms, one value per user (task): ``[B]`` tensors, so that
evaluation reports their mean over users with a 95% confidence interval. RMSE is taken per
user too, ``sqrt(1/|H'_i| Σ_j (y_ij − ŷ_ij)²)``.

Users have query sets of different sizes; a batch pads them to one length, and ``mask``
(``[B, n]``, True on real items) says which are real. Equal predicted scores are ranked in query
order (a stable sort), which for user tasks is the order in which the user rated the items. A
user with fewer than ``k`` query items is scored on all of them (DCG and IDCG alike).
"""

from __future__ import annotations

import torch

#: The cut-offs of the ranking metrics, as in MeLU's Table 2.
NDCG_CUTOFFS = (1, 3)


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``[B, n]`` over dimension 1, over its ``mask``-ed entries if given."""
    if mask is None:
        return values.mean(dim=1)
    weights = mask.to(values.dtype)
    return (values * weights).sum(dim=1) / weights.sum(dim=1)


def mean_absolute_error(
    predicted: torch.Tensor, actual: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Each user's mean absolute error ``[B]`` (MeLU Eq. 4, inner sum)."""
    return masked_mean((predicted - actual).abs(), mask)


def root_mean_squared_error(
    predicted: torch.Tensor, actual: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Each user's root mean squared error ``[B]``."""
    return masked_mean((predicted - actual) ** 2, mask).sqrt()


def ndcg(
    predicted: torch.Tensor, actual: torch.Tensor, k: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Each user's nDCG@k ``[B]`` of the query items ranked by ``predicted`` (MeLU Eq. 5).

    A user whose gains are all zero (every rating 0) scores 1: every order is the best one.
    """
    if k < 1:
        raise ValueError(f"k must be a positive rank cut-off, got {k}.")
    if mask is None:
        mask = torch.ones_like(actual, dtype=torch.bool)
    gains = torch.where(mask, 2.0**actual - 1, torch.zeros_like(actual))
    scores = predicted.masked_fill(~mask, float("-inf"))
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    cut = min(k, actual.shape[1])
    ranked = gains.gather(1, order)[:, :cut]
    ideal = gains.sort(dim=1, descending=True).values[:, :cut]
    positions = torch.arange(2, cut + 2, dtype=actual.dtype, device=actual.device)
    discount = 1.0 / torch.log2(positions)
    dcg, idcg = (ranked * discount).sum(dim=1), (ideal * discount).sum(dim=1)
    return torch.where(idcg > 0, dcg / idcg.clamp(min=torch.finfo(idcg.dtype).tiny), 1.0)


def rating_metrics(
    predicted: torch.Tensor, actual: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """``mae``, ``rmse``, ``ndcg1`` and ``ndcg3`` of each user ``[B]`` for ratings ``[B, n]``."""
    metrics = {
        "mae": mean_absolute_error(predicted, actual, mask),
        "rmse": root_mean_squared_error(predicted, actual, mask),
    }
    for k in NDCG_CUTOFFS:
        metrics[f"ndcg{k}"] = ndcg(predicted, actual, k, mask)
    return metrics
