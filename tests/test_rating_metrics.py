"""MAE, RMSE and nDCG@k against hand-computed values; padded query sets and their mask."""

from __future__ import annotations

import math

import pytest
import torch

from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.rating_metrics import (
    mean_absolute_error,
    ndcg,
    rating_metrics,
    root_mean_squared_error,
)
from fastadapt.tasks.task import Task, TaskBatch

# User 0 has three query items, user 1 two (its third entry is padding).
PREDICTED = torch.tensor([[4.0, 2.0, 3.0], [1.0, 5.0, 9.0]])
ACTUAL = torch.tensor([[3.0, 2.0, 5.0], [2.0, 4.0, 1.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])


def test_mae_and_rmse_are_each_users_mean_over_their_own_items():
    # user 0: |1| + 0 + |−2| = 3 over 3 items; user 1: 1 + 1 over 2 items (padding ignored).
    assert mean_absolute_error(PREDICTED, ACTUAL, MASK).tolist() == [1.0, 1.0]
    rmse = root_mean_squared_error(PREDICTED, ACTUAL, MASK)
    assert torch.allclose(rmse, torch.tensor([math.sqrt(5 / 3), 1.0]))
    assert mean_absolute_error(PREDICTED, ACTUAL)[1].item() == pytest.approx(10 / 3)


def test_ndcg_matches_the_definition_by_hand():
    # User 0 ranks items 0, 2, 1 (scores 4, 3, 2): gains 2^3−1=7, 2^5−1=31, 2^2−1=3.
    # The best order is 31, 7, 3.
    dcg3 = 7 / math.log2(2) + 31 / math.log2(3) + 3 / math.log2(4)
    idcg3 = 31 / math.log2(2) + 7 / math.log2(3) + 3 / math.log2(4)
    # User 1 ranks item 1 (gain 15) before item 0 (gain 3): already the best order; the
    # padded item (score 9) is not ranked.
    assert torch.allclose(ndcg(PREDICTED, ACTUAL, 1, MASK), torch.tensor([7 / 31, 1.0]))
    assert torch.allclose(ndcg(PREDICTED, ACTUAL, 3, MASK), torch.tensor([dcg3 / idcg3, 1.0]))


def test_ties_keep_query_order_and_k_beyond_the_items_uses_them_all():
    constant = torch.zeros(1, 3)
    actual = torch.tensor([[1.0, 5.0, 3.0]])  # ranked as given: gains 1, 31, 7
    expected = (1 + 31 / math.log2(3) + 7 / 2) / (31 + 7 / math.log2(3) + 1 / 2)
    assert ndcg(constant, actual, 10).item() == pytest.approx(expected)
    assert ndcg(constant, torch.zeros(1, 3), 3).item() == 1.0  # no gain at all: any order
    with pytest.raises(ValueError, match="positive"):
        ndcg(constant, actual, 0)


def test_rating_metrics_names():
    assert sorted(rating_metrics(PREDICTED, ACTUAL, MASK)) == ["mae", "ndcg1", "ndcg3", "rmse"]


def _task(queries: int, offset: float) -> Task:
    x = torch.arange(2 + queries, dtype=torch.float32).unsqueeze(1) + offset
    return Task(x[:2], x[:2] * 2, x[2:], x[2:] * 2)


def test_stack_pads_query_sets_of_different_sizes_and_indexing_unpads():
    batch = TaskBatch.stack([_task(3, 0.0), _task(1, 10.0)])
    assert batch.query_x.shape == (2, 3, 1)
    assert batch.query_mask.tolist() == [[True, True, True], [True, False, False]]
    assert batch.query_x[1, 1:].eq(0).all()
    second = batch[1]
    assert second.query_x.tolist() == [[12.0]] and second.query_y.tolist() == [[24.0]]
    assert batch[1:].query_mask.tolist() == [[True, False, False]]
    assert TaskBatch.stack([_task(2, 0.0), _task(2, 1.0)]).query_mask is None
    with pytest.raises(ValueError, match="query_mask must be a bool tensor of shape"):
        TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y, MASK[:, :2])


def test_maml_loss_and_metrics_ignore_padding():
    torch.manual_seed(0)
    learner = MAML(torch.nn.Linear(1, 1), problem="rating", inner_lr=0.01)
    tasks = [_task(3, 0.0), _task(1, 1.0)]
    padded = learner.task_metrics(TaskBatch.stack(tasks))
    alone = [learner.task_metrics(TaskBatch.stack([task])) for task in tasks]
    for name in ("mse", "mae", "rmse", "ndcg1", "ndcg3"):
        expected = torch.cat([metrics[name] for metrics in alone])
        assert torch.allclose(padded[name], expected), name
    assert learner.headline_metric == ("mae", False) and learner.loss_metric == "mse"
