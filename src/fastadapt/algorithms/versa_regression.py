"""VERSA for few-shot regression: an amortised Gaussian over the last layer, with uncertainty.

Gordon, Bronskill, Bauer, Nowozin & Turner 2019, "Meta-Learning Probabilistic Inference for
Prediction" (ICLR, arXiv:1805.09921), applied to regression as the paper applies it to view
reconstruction: a shared feature extractor θ(·) (e.g. MAML's 1-40-40 MLP without its output
layer), and task-specific parameters ψ = (W, b), the last layer, with an amortised Gaussian

    q_φ(ψ | D) = N(μ_φ(D), diag σ²_φ(D)),

computed in one forward pass from the support set ``D = {(x_i, y_i)}``: every pair is encoded
(``[θ(x_i), y_i]`` through two ELU layers), the codes are mean-pooled, which makes ``q``
invariant to the order of the support set and defined for any number of shots, and the pooled
code goes through the amortisation network
(:class:`~fastadapt.nn.amortisation.GaussianAmortisation`). The likelihood is Gaussian,
``y | x, ψ ~ N(W θ(x) + b, σ²_y)``, with a learned observation noise σ²_y shared by all tasks.

**The predictive is exact.** The outputs are linear in ψ and the likelihood is Gaussian, so
the integral of the ML-PIP objective (Eq. 3) has a closed form: for a query x̃ with features
θ̃ = θ(x̃), each output is Gaussian with

    mean      μ_W θ̃ + μ_b,
    variance  σ²_W θ̃² + σ²_b + σ²_y       (σ²_W θ̃² = Σ_d σ²_{W,d} θ̃_d²),

and the objective is the negative log density of the query targets under it, averaged over
queries and tasks: the L → ∞ limit of the Monte Carlo estimate (Eq. 4), with no sampling noise
and no samples to choose. Every variance is floored and its log clamped from above
(:func:`~fastadapt.nn.amortisation.floored_variance`), so the predictive variance is positive
and finite and the log density never NaN.

The predictor of :meth:`VersaRegression.adapt` is a
:class:`~fastadapt.algorithms.base.GaussianPredictor`: ``predict`` gives the predictive mean,
``predict_variance`` its variance.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastadapt.algorithms.base import GaussianPredictor, LossOutput, MetaLearner
from fastadapt.nn.amortisation import GaussianAmortisation, floored_variance
from fastadapt.nn.precision import float32_region
from fastadapt.tasks.task import TaskBatch


class VersaRegression(MetaLearner):
    """VERSA regressor: an amortised Gaussian over the last layer, exact Gaussian predictive.

    Args:
        feature_extractor: any ``nn.Module`` mapping inputs ``[n, ...]`` to features
            ``[n, feature_dim]``.
        feature_dim: D, the size of the features.
        out_features: P, the size of each target ``y``.
        hidden: width of the support-pair encoder and of the amortisation network (default
            D, as the paper's networks are as wide as the features).
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        feature_dim: int,
        *,
        out_features: int = 1,
        hidden: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(feature_extractor, nn.Module):
            raise TypeError(
                f"feature_extractor must be a torch.nn.Module, got "
                f"{type(feature_extractor).__name__}."
            )
        hidden = feature_dim if hidden is None else hidden
        self.feature_extractor = feature_extractor
        self.amortisation = GaussianAmortisation(hidden, out_features * (feature_dim + 1))
        self.pair_encoder = nn.Sequential(
            nn.Linear(feature_dim + out_features, hidden),
            nn.ELU(),
            nn.Linear(hidden, hidden),
            nn.ELU(),
        )
        self.log_noise_variance = nn.Parameter(torch.zeros(out_features))
        self.feature_dim, self.out_features = feature_dim, out_features
        self.problem = "regression"

    @property
    def loss_metric(self) -> str:
        """The training loss is the negative log-likelihood of the queries, ``nll``."""
        return "nll"

    # -- the interface ----------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """The ML-PIP objective (exact Gaussian predictive) over the tasks of ``batch``."""
        per_task = self._query_metrics(batch)
        loss = per_task[self.loss_metric].mean()
        return LossOutput(loss, {k: v.detach().mean() for k, v in per_task.items()})

    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query ``mse`` (of the predictive mean) and ``nll``, each ``[B]``."""
        with torch.no_grad():
            return self._query_metrics(batch)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> GaussianPredictor:
        """A predictor for one task (``support_x`` ``[n, ...]``, ``support_y`` ``[n, P]``): the
        Gaussian over the last layer is inferred here, once; the predictor gives the
        predictive mean and (``predict_variance``) variance ``[m, P]`` for inputs ``[m, ...]``.
        """
        if support_x.dim() < 2 or support_y.dim() != 2:
            raise ValueError(
                "adapt() takes one task without a task dimension: support_x [n, ...] and "
                f"support_y [n, {self.out_features}]; got support_x {tuple(support_x.shape)}, "
                f"support_y {tuple(support_y.shape)}."
            )
        sx, sy = support_x.unsqueeze(0), support_y.unsqueeze(0)
        self._check(sx, sy, "support")
        with torch.no_grad():
            head = [p.detach() for p in self._head(self._embed(sx), sy)]

        def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            mean, variance = self._predict(self._embed(x.unsqueeze(0)), *head)
            return mean[0], variance[0]

        return GaussianPredictor(forward)

    # -- the model --------------------------------------------------------------------------

    def _query_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        self._check(batch.support_x, batch.support_y, "support")
        self._check(batch.query_x, batch.query_y, "query")
        head = self._head(self._embed(batch.support_x), batch.support_y)
        mean, variance = self._predict(self._embed(batch.query_x), *head)
        error = batch.query_y - mean
        log_density = -0.5 * (math.log(2 * math.pi) + variance.log() + error.square() / variance)
        return {
            "nll": -log_density.sum(dim=-1).mean(dim=1),
            "mse": self.task_losses(mean, batch.query_y),
        }

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``[B, n, ...]`` in one forward pass over all tasks: ``[B, n, D]``."""
        tasks, n = x.shape[:2]
        z = self.feature_extractor(x.flatten(0, 1))
        if z.dim() != 2 or z.shape != (tasks * n, self.feature_dim):
            raise ValueError(
                f"the feature extractor must map [n, ...] inputs to [n, {self.feature_dim}] "
                f"features (feature_dim); it mapped {tuple(x.flatten(0, 1).shape)} to "
                f"{tuple(z.shape)}."
            )
        return z.reshape(tasks, n, -1)

    @float32_region
    def _head(
        self, support: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q_φ(W, b | D): means and variances ``[B, P, D]`` (W) and ``[B, P]`` (b)."""
        codes = self.pair_encoder(torch.cat([support, targets.to(support.dtype)], dim=-1))
        mean, variance = self.amortisation(codes.mean(dim=1))  # [B, P·(D + 1)]
        mean = mean.unflatten(-1, (self.out_features, self.feature_dim + 1))
        variance = variance.unflatten(-1, (self.out_features, self.feature_dim + 1))
        return mean[..., :-1], variance[..., :-1], mean[..., -1], variance[..., -1]

    @float32_region
    def _predict(
        self,
        query: torch.Tensor,
        weight_mean: torch.Tensor,
        weight_variance: torch.Tensor,
        bias_mean: torch.Tensor,
        bias_variance: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance ``[B, m, P]`` of query features ``[B, m, D]``."""
        mean = torch.baddbmm(bias_mean.unsqueeze(1), query, weight_mean.transpose(1, 2))
        epistemic = torch.baddbmm(
            bias_variance.unsqueeze(1), query.square(), weight_variance.transpose(1, 2)
        )
        return mean, epistemic + floored_variance(self.log_noise_variance)

    def _check(self, x: torch.Tensor, y: torch.Tensor, name: str) -> None:
        if x.dim() < 3 or y.dim() != 3 or x.shape[:2] != y.shape[:2]:
            raise ValueError(
                f"{name}_x must be [B, n, ...] and {name}_y [B, n, {self.out_features}]; got "
                f"{name}_x {tuple(x.shape)}, {name}_y {tuple(y.shape)}."
            )
        if y.shape[-1] != self.out_features or not y.dtype.is_floating_point:
            raise ValueError(
                f"{name}_y must hold real-valued targets with {self.out_features} value(s) "
                f"each (out_features), got dtype {y.dtype} and shape {tuple(y.shape)}."
            )
        if y.shape[1] == 0:
            raise ValueError(
                f"the {name} sets are empty ({name}_y {tuple(y.shape)}); give at least one example."
            )
