"""VERSA's amortisation network: a pooled support set → a diagonal Gaussian over parameters.

Gordon, Bronskill, Bauer, Nowozin & Turner 2019, "Meta-Learning Probabilistic Inference for
Prediction" (ICLR, arXiv:1805.09921). The approximate posterior over
task-specific parameters ψ is a diagonal Gaussian ``q_φ(ψ | D) = N(ψ; μ_φ(D), diag σ²_φ(D))``
whose mean and log variance are computed from a pooled summary of the support set ``D`` by
networks shared across tasks, in one forward pass. In the paper's classifier each of the
four outputs (weight mean, weight log variance, bias mean, bias log variance) has its own
network of three fully connected layers, ELU between them, as wide as the features (d_θ).

Variances are ``exp(min(log σ², MAX_LOG_VARIANCE)) + VARIANCE_FLOOR``, positive and finite
whatever the network outputs:

- *underflow*: in float32 ``exp`` of a log variance below about -104 is exactly 0, after which
  a standard deviation or a log density is no longer finite; the floor keeps every variance
  at least ``VARIANCE_FLOOR`` (1e-6, a standard deviation of 1e-3). It is added rather than
  clamped: a clamp would zero the gradient of every log variance below ``log 1e-6``, so a
  network pushed there could never come back;
- *overflow*: ``exp`` of a log variance above about 88.7 is ``inf`` in float32 (inputs far
  outside the training range can produce one), and ``inf`` times zero noise is NaN; log
  variances are clamped at ``MAX_LOG_VARIANCE`` (20: a variance of about 4.9e8, far beyond
  anything a trained network predicts).
"""

from __future__ import annotations

import torch
from torch import nn

VARIANCE_FLOOR = 1e-6
"""The smallest variance the amortisation network predicts (added to ``exp(log σ²)``)."""
MAX_LOG_VARIANCE = 20.0
"""The largest log variance used (larger ones are clamped to it)."""


def floored_variance(log_variance: torch.Tensor) -> torch.Tensor:
    """``exp(min(log σ², MAX_LOG_VARIANCE)) + VARIANCE_FLOOR``: positive and finite."""
    return log_variance.clamp(max=MAX_LOG_VARIANCE).exp() + VARIANCE_FLOOR


def _inference_block(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """Three fully connected layers with ELU between them (the paper's inference block)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ELU(),
        nn.Linear(hidden, hidden),
        nn.ELU(),
        nn.Linear(hidden, out_features),
    )


class GaussianAmortisation(nn.Module):
    """A pooled summary ``[..., in_features]`` → mean and variance ``[..., out_features]``.

    Args:
        in_features: size of the pooled summary (e.g. the mean feature of a class).
        out_features: number of parameters the Gaussian is over.
        hidden: width of the hidden layers (default ``in_features``, the paper's d_θ).
    """

    def __init__(self, in_features: int, out_features: int, hidden: int | None = None) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            _check_positive(name, value)
        hidden = in_features if hidden is None else _check_positive("hidden", hidden)
        self.mean = _inference_block(in_features, hidden, out_features)
        self.log_variance = _inference_block(in_features, hidden, out_features)

    def forward(self, summary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ, σ²)`` of the Gaussian; ``σ²`` is floored (see :data:`VARIANCE_FLOOR`)."""
        return self.mean(summary), floored_variance(self.log_variance(summary))


def _check_positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value
