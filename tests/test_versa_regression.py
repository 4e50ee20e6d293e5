"""VERSA for regression: the exact Gaussian predictive by hand, support-order invariance,
variance that shrinks with more shots, and a predictive variance always positive and finite."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastadapt.algorithms.base import GaussianPredictor
from fastadapt.algorithms.versa_regression import VersaRegression
from fastadapt.nn.amortisation import VARIANCE_FLOOR
from fastadapt.nn.mlp import MLP
from fastadapt.tasks.task import TaskBatch


class _FixedPosterior(nn.Module):
    """A stand-in amortisation network: q(w, b) = N((2, 1), diag(0.5, 0.25)) for every task."""

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = pooled.shape[0]
        mean = torch.tensor([2.0, 1.0], dtype=pooled.dtype).expand(batch, -1)
        return mean, torch.tensor([0.5, 0.25], dtype=pooled.dtype).expand(batch, -1)


def _linear_tasks(tasks: int, shots: int, generator: torch.Generator) -> TaskBatch:
    """y = a x + b + 0.2 ε with a, b ~ N(0, 1): more shots pin the line down."""
    a, b = (torch.randn(tasks, 1, 1, generator=generator) for _ in range(2))
    x = 4 * torch.rand(tasks, shots + 10, 1, generator=generator) - 2
    y = a * x + b + 0.2 * torch.randn(tasks, shots + 10, 1, generator=generator)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def _learner(seed: int = 0) -> VersaRegression:
    torch.manual_seed(seed)
    return VersaRegression(MLP(1, [16], None), 16)


def test_loss_of_a_tiny_task_by_hand() -> None:
    # Features θ(x) = x. With w ~ N(2, 0.5), b ~ N(1, 0.25) and noise variance 0.2, the
    # predictive of a query x is N(2x + 1, 0.5 x² + 0.25 + 0.2 + floor), exactly.
    learner = VersaRegression(nn.Identity(), 1).double()
    learner.amortisation = _FixedPosterior()
    with torch.no_grad():
        learner.log_noise_variance.fill_(math.log(0.2))
    x = torch.tensor([[[0.0], [2.0], [-1.0]]], dtype=torch.float64)
    y = torch.tensor([[[1.0], [4.0], [0.0]]], dtype=torch.float64)
    batch = TaskBatch(x[:, :1], y[:, :1], x[:, 1:], y[:, 1:])
    noise = 0.2 + VARIANCE_FLOOR

    def nll(variance: float, error: float) -> float:
        return 0.5 * (math.log(2 * math.pi) + math.log(variance) + error**2 / variance)

    # x = 2: mean 5, variance 2 + 0.25 + noise, error -1; x = -1: mean -1, error 1.
    expected = (nll(2.25 + noise, 1.0) + nll(0.75 + noise, 1.0)) / 2
    out = learner.meta_loss(batch)
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    assert out.metrics["mse"].item() == pytest.approx(1.0)
    predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
    assert isinstance(predictor, GaussianPredictor)
    torch.testing.assert_close(
        predictor.predict_variance(x[0, 1:]),
        torch.tensor([[2.25 + noise], [0.75 + noise]], dtype=torch.float64),
    )


def test_amortisation_does_not_depend_on_the_order_of_the_support_set() -> None:
    learner = _learner().double()
    batch = _linear_tasks(3, 7, torch.Generator().manual_seed(0))
    order = torch.randperm(7, generator=torch.Generator().manual_seed(1))
    sx, sy = batch.support_x.double(), batch.support_y.double()
    head = learner._head(learner._embed(sx), sy)
    shuffled = learner._head(learner._embed(sx[:, order]), sy[:, order])
    for a, b in zip(head, shuffled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_more_shots_shrink_the_predictive_variance() -> None:
    # Linear tasks with noise: the true posterior narrows as shots grow. Trained on 1 to 16
    # shots, the amortisation network must read that from the mean-pooled support codes.
    learner = _learner()
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for step in range(400):
        batch = _linear_tasks(32, (1, 2, 4, 8, 16)[step % 5], generator)
        loss = learner.meta_loss(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    learner.eval()
    test = torch.Generator().manual_seed(1)
    variances = []
    for shots in (1, 4, 16):
        batch = _linear_tasks(200, shots, test)
        with torch.no_grad():
            head = learner._head(learner._embed(batch.support_x), batch.support_y)
            _, variance = learner._predict(learner._embed(batch.query_x), *head)
        variances.append(variance.mean().item())
    assert variances[0] > variances[1] > variances[2]


@pytest.mark.parametrize("log_variance", [-1e4, 0.0, 1e4])
def test_predictive_variance_is_positive_and_finite(log_variance: float) -> None:
    learner = _learner()
    nn.init.constant_(learner.amortisation.log_variance[-1].bias, log_variance)
    with torch.no_grad():
        learner.log_noise_variance.fill_(log_variance)
    batch = _linear_tasks(2, 5, torch.Generator().manual_seed(2))
    predictor = learner.adapt(batch.support_x[0] * 1e3, batch.support_y[0] * 1e3)
    variance = predictor.predict_variance(torch.linspace(-1e3, 1e3, 50).unsqueeze(-1))
    assert variance.shape == (50, 1)
    assert (variance >= VARIANCE_FLOOR).all() and torch.isfinite(variance).all()
    loss = learner.meta_loss(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters() if p.grad is not None)


def test_headless_mlp_is_a_feature_extractor() -> None:
    features = MLP(1, [40, 40], None)
    assert features.embedding_size == 40
    assert isinstance(features[-1], nn.ReLU)
    assert features(torch.zeros(3, 1)).shape == (3, 40)


def test_bad_input_is_refused_with_a_clear_error() -> None:
    learner = _learner()
    batch = _linear_tasks(2, 3, torch.Generator().manual_seed(3))
    empty = TaskBatch(batch.support_x[:, :0], batch.support_y[:, :0], batch.query_x, batch.query_y)
    with pytest.raises(ValueError, match="the support sets are empty"):
        learner.meta_loss(empty)
    integers = TaskBatch(batch.support_x, batch.support_y.long(), batch.query_x, batch.query_y)
    with pytest.raises(ValueError, match="support_y must hold real-valued targets"):
        learner.meta_loss(integers)
    with pytest.raises(ValueError, match=r"support_y \[n, 1\]"):
        learner.adapt(batch.support_x[0], batch.support_y[0, :, 0])
