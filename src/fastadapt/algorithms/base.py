"""The interface every meta-learner implements (see ``DESIGN.md`` §3).

A meta-learner turns a support set into a predictor (:meth:`MetaLearner.adapt`) and is itself
trained so that those predictors do well on the query sets (:meth:`MetaLearner.meta_loss`).
The trainer and the evaluator only ever talk to this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.rating_metrics import masked_mean, rating_metrics
from fastadapt.engine.calibration import CALIBRATION, calibration_counts
from fastadapt.nn.precision import float32_region
from fastadapt.tasks.task import TaskBatch

#: ``rating`` is regression of ratings ``[n, 1]`` scored per user by MAE, RMSE and nDCG@k
#: (:mod:`fastadapt.algorithms.rating_metrics`), e.g. cold-start recommendation.
Problem = Literal["regression", "classification", "rating"]
PROBLEMS = ("regression", "classification", "rating")


@dataclass
class LossOutput:
    """What :meth:`MetaLearner.meta_loss` returns: a differentiable scalar and detached metrics."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Predictor:
    """A model adapted to one task: ``predictor(x)`` gives outputs (regression, ratings) or
    logits (classification)."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], problem: Problem) -> None:
        self._forward = forward
        self.problem = problem

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Regression and ratings: the predicted values. Classification: the class indices."""
        out = self(x)
        return out.argmax(dim=-1) if self.problem == "classification" else out

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[n, ways]`` (classification only)."""
        if self.problem != "classification":
            raise TypeError("predict_proba() is only defined for classification predictors.")
        return self(x).softmax(dim=-1)


class GaussianPredictor(Predictor):
    """A regression predictor with a Gaussian predictive distribution: ``predictor(x)`` and
    ``predict`` give its mean, :meth:`predict_variance` its variance."""

    def __init__(
        self, forward: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        super().__init__(lambda x: forward(x)[0], "regression")
        self._distribution = forward

    def predict_variance(self, x: torch.Tensor) -> torch.Tensor:
        """The predictive variance at ``x``, the shape of the mean; positive and finite."""
        with torch.no_grad():
            return self._distribution(x)[1]


@float32_region
def task_loss(problem: Problem, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss of one task: cross-entropy over the task's classes, else mean squared error."""
    if problem == "classification":
        return F.cross_entropy(output, target)
    return F.mse_loss(output, target)


def check_problem(problem: str) -> Problem:
    if problem not in PROBLEMS:
        raise ValueError(f"problem must be one of {PROBLEMS}, got {problem!r}.")
    return problem  # type: ignore[return-value]


class MetaLearner(nn.Module, ABC):
    """Base class: ``adapt`` one task, ``meta_loss`` over a batch, ``task_metrics`` to evaluate."""

    problem: Problem

    @property
    def loss_metric(self) -> str:
        """Name of the per-task metric that is the training loss (``mse`` or ``loss``)."""
        return "loss" if self.problem == "classification" else "mse"

    @property
    def headline_metric(self) -> tuple[str, bool]:
        """The metric that ranks checkpoints, and whether higher is better."""
        return {
            "regression": ("mse", False),
            "classification": ("accuracy", True),
            "rating": ("mae", False),
        }[self.problem]

    def forward(self, batch: TaskBatch) -> LossOutput:
        """``learner(batch)`` is :meth:`meta_loss`, so ``torch.func.functional_call`` works."""
        return self.meta_loss(batch)

    def explain_non_finite(self, batch: TaskBatch) -> str | None:
        """Where a non-finite meta-loss on ``batch`` comes from, for the trainer's error
        message (called only after one occurred); ``None`` when the learner cannot tell."""
        return None

    @abstractmethod
    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """A predictor for the task whose support set is given (no task dimension)."""

    @abstractmethod
    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """Mean query loss over the tasks of ``batch`` after adapting on their support sets."""

    @abstractmethod
    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task evaluation metrics, each a tensor ``[B]`` (e.g. ``mse``, ``accuracy``)."""

    @float32_region
    def task_losses(
        self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-task loss ``[B]`` of batched outputs ``[B, n, ...]``: MSE or cross-entropy.

        ``mask`` (``[B, n]``, True on real examples) leaves out the padding of query sets of
        different sizes (:attr:`TaskBatch.query_mask`): each task's loss is the mean over its
        own examples.
        """
        if self.problem == "classification":
            log_probs = output.log_softmax(dim=-1)
            per_example = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
        else:
            per_example = ((output - target) ** 2).reshape(*target.shape[:2], -1).mean(dim=-1)
        return masked_mean(per_example, mask)

    @float32_region
    def query_metrics(
        self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-task metrics ``[B]`` of batched outputs: the loss, accuracy if classifying, and
        MAE, RMSE, nDCG@1 and nDCG@3 of ratings ``[B, n, 1]``."""
        metrics = {self.loss_metric: self.task_losses(output, target, mask)}
        if self.problem == "classification":
            metrics["accuracy"] = masked_mean((output.argmax(dim=-1) == target).float(), mask)
        if self.problem == "rating":
            metrics.update(rating_metrics(output[..., 0], target[..., 0], mask))
        return metrics

    @float32_region
    def evaluation_metrics(
        self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """:meth:`query_metrics` as evaluation reports them.

        A classifier's loss, the cross-entropy of the query labels under its predictive
        distribution, is their negative log-likelihood: it is reported as ``nll``, with
        ``accuracy`` and the per-task statistics ``calibration`` ``[B, bins, 3]`` from which
        the evaluator computes the expected calibration error
        (:mod:`fastadapt.engine.calibration`). Regression and rating metrics are unchanged;
        ``mask`` as in :meth:`query_metrics`.
        """
        metrics = self.query_metrics(output, target, mask)
        if self.problem == "classification":
            metrics = {
                "nll": metrics.pop(self.loss_metric),
                **metrics,
                CALIBRATION: calibration_counts(output.softmax(dim=-1), target),
            }
        return metrics
