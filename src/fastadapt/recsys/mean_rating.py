"""The simplest non-adaptive baselines of rating prediction: the mean training rating, overall or
per item.

The global mean predicts every rating as the mean of all training ratings; the per-item mean
predicts an item's mean training rating, and the global mean for items without one (new items).
Neither looks at a user's support ratings: they show how much a method gains by adapting.
:func:`item_means` also gives MeLU its optional per-item prior (``model.item_prior``).
"""

from __future__ import annotations

import torch

from fastadapt.algorithms.base import LossOutput, MetaLearner, Predictor
from fastadapt.recsys.user_tasks import ITEM_COLUMN, UserTasks
from fastadapt.tasks.task import TaskBatch


def item_means(train: UserTasks, size: int, shrinkage: float = 0.0) -> torch.Tensor:
    """The mean training rating of each item token ``[size]`` (float32), shrunk toward the
    global mean by ``shrinkage`` pseudo-ratings: ``(Σ_u r_uj + λ·μ) / (n_j + λ)``, so that an
    item rated by few training users stays near the global mean ``μ``. Tokens never rated in
    ``train`` (0, the unknown item, among them) get ``μ``.

    Raises:
        ValueError: ``shrinkage`` is negative or ``size`` leaves out a token of ``train``.
    """
    if shrinkage < 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage!r}.")
    x, y = train.examples
    tokens, ratings = x[:, ITEM_COLUMN].long(), y[:, 0].double()
    if int(tokens.max()) >= size:
        raise ValueError(f"size {size} leaves out item token {int(tokens.max())} of the ratings.")
    overall = ratings.mean()
    sums = torch.zeros(size, dtype=torch.float64).index_add_(0, tokens, ratings)
    counts = torch.zeros(size, dtype=torch.float64).index_add_(0, tokens, torch.ones_like(ratings))
    means = (sums + shrinkage * overall) / (counts + shrinkage).clamp(min=1e-12)
    return torch.where(counts > 0, means, overall).float()


class MeanRating(MetaLearner):
    """Predicts ``means[item token]`` whatever the support set (see the module).

    Build it with :meth:`fit`. It has no parameters: it is fitted in closed form, not trained.
    """

    problem = "rating"

    def __init__(self, means: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means.float())

    @classmethod
    def fit(cls, train: UserTasks, *, per_item: bool) -> MeanRating:
        """The means of the ratings of ``train`` (every rating of its partition): per item
        token if ``per_item``, else one global mean for all."""
        size = int(train.examples[0][:, ITEM_COLUMN].max()) + 1
        means = item_means(train, size)
        if not per_item:
            means = torch.full_like(means, train.examples[1].double().mean().item())
        return cls(means)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """The same predictor for every user: the support set is ignored."""
        return Predictor(self._predict, self.problem)

    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """The query MSE of the fixed predictions (nothing to train)."""
        per_task = self.task_metrics(batch)
        return LossOutput(
            per_task[self.loss_metric].mean(), {k: v.mean() for k, v in per_task.items()}
        )

    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """MSE, MAE, RMSE, nDCG@1 and nDCG@3 of each user's query ratings."""
        return self.query_metrics(self._predict(batch.query_x), batch.query_y, batch.query_mask)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[..., ITEM_COLUMN].long()
        tokens = torch.where(tokens < len(self.means), tokens, 0)  # not in the fit: global mean
        return self.means[tokens].unsqueeze(-1)
