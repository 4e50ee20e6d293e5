"""VERSA for classification: the ML-PIP objective by hand, log-space stability, support-order
invariance, the variance floor, deterministic evaluation, and the errors for bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastadapt.algorithms.versa import Versa, log_mean_predictive
from fastadapt.config import load_preset
from fastadapt.engine.build import build_learner
from fastadapt.engine.evaluate import evaluate
from fastadapt.errors import ConfigError
from fastadapt.nn.amortisation import MAX_LOG_VARIANCE, VARIANCE_FLOOR
from fastadapt.tasks.task import TaskBatch


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class _Fixed(nn.Module):
    """A stand-in amortisation network: mean = ``mean(pooled)``, a constant variance."""

    def __init__(self, mean, variance: float) -> None:
        super().__init__()
        self.mean_of, self.variance = mean, variance

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean_of(pooled)
        return mean, torch.full_like(mean, self.variance)


def _points(support, labels, query, query_labels) -> TaskBatch:
    return TaskBatch(
        torch.tensor([support], dtype=torch.float64),
        torch.tensor([labels]),
        torch.tensor([query], dtype=torch.float64),
        torch.tensor([query_labels]),
    )


def _random_batch(tasks: int, ways: int, shots: int, queries: int, seed: int) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(ways).repeat(shots).expand(tasks, -1)
    query_y = torch.arange(ways).repeat(queries).expand(tasks, -1)
    return TaskBatch(
        torch.randn(tasks, ways * shots, 6, generator=g, dtype=torch.float64),
        support_y,
        torch.randn(tasks, ways * queries, 6, generator=g, dtype=torch.float64),
        query_y,
    )


def _mlp_versa(samples: int = 10) -> Versa:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
    return Versa(features, 8, samples=samples).double()


def test_monte_carlo_predictive_by_hand() -> None:
    # Two samples of a query's two logits: (0, 0) gives p = (1/2, 1/2), (log 3, 0) gives
    # (3/4, 1/4); the predictive is their average, (5/8, 3/8).
    logits = torch.tensor([[0.0, 0.0], [math.log(3), 0.0]], dtype=torch.float64)
    log_p = log_mean_predictive(logits)
    torch.testing.assert_close(log_p, torch.tensor([5 / 8, 3 / 8], dtype=torch.float64).log())


def test_loss_of_a_tiny_task_by_hand(monkeypatch) -> None:
    # Identity features in 2-D. Class 0 has supports (1, 0) and (3, 0), mean (2, 0); class 1
    # has (0, 1). The stand-in amortisation gives w_c ~ N(mean feature, 0.25 I), b_c = 0.
    learner = Versa(nn.Identity(), 2, samples=2).double()
    learner.weight_amortisation = _Fixed(lambda pooled: pooled, 0.25)
    learner.bias_amortisation = _Fixed(lambda pooled: pooled[..., :1] * 0, 0.0)
    # Noise ε for L = 2 samples, 2 queries, 2 classes: (+1, -1) then (-1, +1).
    noise = torch.tensor([[[[1.0, -1.0]] * 2], [[[-1.0, 1.0]] * 2]], dtype=torch.float64)
    monkeypatch.setattr(learner, "_standard_normal", lambda shape, like: noise)
    batch = _points([[1, 0], [3, 0], [0, 1]], [0, 0, 1], [[1, 0], [0, 2]], [0, 1])
    # Query (1, 0), label 0: logit means (2, 0), variances 0.25·1 = 0.25 (std 0.5): samples
    # (2.5, -0.5) and (1.5, 0.5), p(0) = σ(3) and σ(1).
    first = -math.log((_sigmoid(3) + _sigmoid(1)) / 2)
    # Query (0, 2), label 1: means (0, 2), variances 0.25·4 = 1: samples (1, 1) and (-1, 3),
    # p(1) = 1/2 and σ(4).
    second = -math.log((0.5 + _sigmoid(4)) / 2)
    out = learner.meta_loss(batch)
    assert out.loss.item() == pytest.approx((first + second) / 2, rel=1e-12)
    assert out.metrics["accuracy"].item() == 1.0


def test_extreme_logits_give_a_finite_exact_loss() -> None:
    # p(class 0) is about e^-20000 in both samples: the average of probabilities underflows to
    # 0 (log: -inf), the log-space estimate is exact.
    logits = torch.tensor([[-1e4, 1e4], [-1e4 + 10, 1e4]], dtype=torch.float64)
    naive = logits.softmax(dim=-1).mean(dim=0).log()
    assert naive[0] == -math.inf
    expected = -2e4 + math.log((1 + math.exp(10)) / 2)
    assert log_mean_predictive(logits)[0].item() == pytest.approx(expected, rel=1e-12)
    # Through the whole model, with features a million times too large.
    learner = _mlp_versa()
    batch = _random_batch(tasks=2, ways=3, shots=2, queries=2, seed=0)
    huge = TaskBatch(batch.support_x * 1e6, batch.support_y, batch.query_x * 1e6, batch.query_y)
    loss = learner.meta_loss(huge).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters() if p.grad is not None)


def test_amortisation_does_not_depend_on_the_order_of_the_support_set() -> None:
    learner = _mlp_versa()
    batch = _random_batch(tasks=2, ways=3, shots=3, queries=2, seed=1)
    order = torch.randperm(9, generator=torch.Generator().manual_seed(0))
    shuffled = TaskBatch(
        batch.support_x[:, order], batch.support_y[:, order], batch.query_x, batch.query_y
    )
    head = learner._head(learner._embed(batch.support_x), batch.support_y, 3)
    head_shuffled = learner._head(learner._embed(shuffled.support_x), shuffled.support_y, 3)
    for a, b in zip(head, head_shuffled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    learner.eval()
    torch.testing.assert_close(learner.task_metrics(batch), learner.task_metrics(shuffled))


@pytest.mark.parametrize(
    ("log_variance", "variance"),
    [(-1e4, VARIANCE_FLOOR), (1e4, math.exp(MAX_LOG_VARIANCE) + VARIANCE_FLOOR)],
    ids=["underflow", "overflow"],
)
def test_an_extreme_variance_is_bounded_and_never_nan(log_variance, variance) -> None:
    learner = _mlp_versa()
    for amortisation in (learner.weight_amortisation, learner.bias_amortisation):
        nn.init.constant_(amortisation.log_variance[-1].bias, log_variance)  # exp: 0 or inf
        nn.init.zeros_(amortisation.log_variance[-1].weight)
    batch = _random_batch(tasks=2, ways=3, shots=1, queries=2, seed=2)
    pooled = torch.randn(2, 3, 8, dtype=torch.float64)
    _, predicted = learner.weight_amortisation(pooled)
    torch.testing.assert_close(predicted, torch.full_like(predicted, variance))
    loss = learner.meta_loss(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters() if p.grad is not None)


def test_evaluation_is_deterministic_and_training_samples_afresh() -> None:
    learner = _mlp_versa(samples=3)
    batch = _random_batch(tasks=6, ways=3, shots=1, queries=2, seed=3)
    assert learner.meta_loss(batch).loss != learner.meta_loss(batch).loss
    state = torch.get_rng_state()
    estimates = [
        evaluate(learner, lambda indices: batch[indices.start : indices.stop], 6, size)
        for size in (6, 4)
    ]
    assert torch.equal(torch.get_rng_state(), state)  # evaluation leaves the training stream
    assert estimates[0] == estimates[1]  # same numbers, whatever the batch size
    assert set(estimates[0]) == {"nll", "accuracy", "ece"}


def test_per_task_batch_norm_makes_each_task_independent_of_its_batch() -> None:
    torch.manual_seed(0)
    features = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8, track_running_stats=False))
    learner = Versa(features, 8, samples=3).double().eval()
    batch = _random_batch(tasks=3, ways=3, shots=2, queries=2, seed=8)
    together = learner.task_metrics(batch)["nll"]
    learner.per_task_batch_norm = True
    per_task = learner.task_metrics(batch)["nll"]
    alone = torch.cat([learner.task_metrics(batch[t : t + 1])["nll"] for t in range(3)])
    torch.testing.assert_close(per_task, alone)
    assert not torch.allclose(together, alone)  # shared statistics mix the tasks
    predictor = learner.adapt(batch.support_x[1], batch.support_y[1])
    nll = -predictor(batch.query_x[1]).gather(1, batch.query_y[1].unsqueeze(1)).mean()
    torch.testing.assert_close(nll, per_task[1])


def test_adapt_matches_evaluation_and_takes_any_ways_and_shots() -> None:
    learner = _mlp_versa()
    learner.eval()
    batch = _random_batch(tasks=1, ways=3, shots=2, queries=2, seed=4)
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    probabilities = predictor.predict_proba(batch.query_x[0])
    torch.testing.assert_close(probabilities.sum(dim=-1), torch.ones(6, dtype=torch.float64))
    nll = -probabilities.log().gather(1, batch.query_y[0].unsqueeze(1)).mean()
    torch.testing.assert_close(nll, learner.task_metrics(batch)["nll"][0])
    seven_way = _random_batch(tasks=1, ways=7, shots=4, queries=1, seed=5)
    predictor = learner.adapt(seven_way.support_x[0], seven_way.support_y[0])
    assert predictor.predict(seven_way.query_x[0]).shape == (7,)


def test_bad_input_is_refused_with_a_clear_error() -> None:
    learner = _mlp_versa()
    batch = _random_batch(tasks=2, ways=3, shots=1, queries=1, seed=6)
    no_class_1 = TaskBatch(
        batch.support_x, torch.tensor([[0, 1, 2], [0, 2, 2]]), batch.query_x, batch.query_y
    )
    with pytest.raises(ValueError, match=r"task 1 has no support example of class\(es\) \[1\]"):
        learner.meta_loss(no_class_1)
    with pytest.raises(ValueError, match=r"no support example of class\(es\) \[1\]"):
        learner.adapt(batch.support_x[0], torch.tensor([0, 2, 2]))
    for samples in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match=r"samples \(L, the Monte Carlo samples"):
            Versa(nn.Identity(), 6, samples=samples)
    with pytest.raises(ConfigError, match=r"algorithm\.samples must be positive"):
        load_preset("versa-omniglot-5way-1shot").override(["algorithm.samples=0"])
    with pytest.raises(ConfigError, match=r"per_task_batch_norm is an option of algorithm"):
        load_preset("protonet-omniglot-1shot").override(["algorithm.per_task_batch_norm=true"])
    with pytest.raises(ConfigError, match=r"per_task_batch_norm is an option of VERSA's class"):
        build_learner(
            load_preset("sinusoid-versa").override(["algorithm.per_task_batch_norm=true"])
        )
    assert build_learner(load_preset("versa-omniglot-5way-1shot")).per_task_batch_norm
    wrong_width = Versa(nn.Identity(), 4)
    with pytest.raises(ValueError, match="returned 6 features per input but feature_dim is 4"):
        wrong_width.meta_loss(batch)


def _cluster_tasks(tasks: int, generator: torch.Generator) -> TaskBatch:
    """5-way 1-shot tasks of Gaussian clusters in 8-D, three queries per class."""
    centres = 2 * torch.randn(tasks, 5, 8, generator=generator)
    support_y = torch.arange(5).expand(tasks, -1)
    query_y = torch.arange(5).repeat(3).expand(tasks, -1)

    def draw(labels: torch.Tensor) -> torch.Tensor:
        at = centres.gather(1, labels.unsqueeze(-1).expand(-1, -1, 8))
        return at + torch.randn(at.shape, generator=generator)

    return TaskBatch(draw(support_y), support_y, draw(query_y), query_y)


def test_meta_training_learns_to_classify_new_tasks() -> None:
    torch.manual_seed(0)
    learner = Versa(nn.Sequential(nn.Linear(8, 32), nn.ReLU()), 32, samples=5)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    held_out = _cluster_tasks(200, torch.Generator().manual_seed(1))
    learner.eval()
    before = learner.task_metrics(held_out)
    learner.train()
    for _ in range(300):
        loss = learner.meta_loss(_cluster_tasks(16, generator)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learner.eval()
    after = learner.task_metrics(held_out)
    assert before["accuracy"].mean() < 0.3 and after["accuracy"].mean() > 0.85
    assert after["nll"].mean() < 0.5 * before["nll"].mean()
