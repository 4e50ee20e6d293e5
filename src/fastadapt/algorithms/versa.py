"""VERSA for few-shot classification: amortised variational inference over a linear head.

Gordon, Bronskill, Bauer, Nowozin & Turner 2019, "Meta-Learning Probabilistic Inference for
Prediction" (ICLR, arXiv:1805.09921). A shared feature extractor θ(·) embeds every image. For
each class c of a task, the *amortisation network* reads the mean feature of the class's
support examples and outputs a diagonal Gaussian over that class's head, weights
``w_c ∈ R^D`` and bias ``b_c``,

    q_φ(w_c, b_c | D_c) = N(μ_w(x̄_c), diag σ²_w(x̄_c)) · N(μ_b(x̄_c), σ²_b(x̄_c)),
    x̄_c = (1 / |D_c|) Σ_{x ∈ D_c} θ(x),

in one forward pass: no optimisation at test time. Mean pooling makes it invariant to the
order of the support examples and lets one model take any number of shots; each class is
amortised on its own (the paper's "context-independent" approximation), so it takes any
number of ways. The amortisation network is the paper's: per output, three fully connected
layers as wide as the features, ELU between them (:mod:`fastadapt.nn.amortisation`).

**Prediction** averages the softmax over L samples of the head (the Monte Carlo form of the
amortised posterior predictive):

    p(ỹ = k | x̃, D) ≈ (1/L) Σ_l softmax(a_l)_k.

With the *local reparameterisation trick* (Kingma, Salimans & Welling 2015), as in the paper,
the logits are sampled instead of the weights: for a query with features θ̃ = θ(x̃), the logit
of class c is Gaussian with

    mean  μ_{w_c}·θ̃ + μ_{b_c},       variance  σ²_{w_c}·θ̃² + σ²_{b_c},

and each query gets L independent draws ``a_l = mean + √variance · ε_l``, ``ε_l ~ N(0, 1)``.
Per query this is the same predictive distribution as sampling the weights, with lower
variance gradients.

**The ML-PIP objective** (Eq. 3, estimated as in Eq. 4) maximises the log of the Monte Carlo
predictive likelihood of the query labels, averaged over the M queries of each of T tasks; the
loss is its negative,

    loss(θ, φ) = -(1/MT) Σ_{t,m} log (1/L) Σ_l p(ỹ_m | x̃_m, ψ_l),   ψ_l ~ q_φ(ψ | D_t).

It is computed in log space: ``logsumexp_l log_softmax(a_l)_y - log L``, never as the log of
an average of probabilities, so it stays finite and exact when the probabilities underflow
(logits of ±1e4). The model's outputs are these log predictive probabilities ``[m, ways]``, so
``softmax`` of them (``Predictor.predict_proba``) gives the averaged probabilities back.

**Randomness.** In training mode the noise ε comes from PyTorch's global generator (saved in
checkpoints, so a resumed run is bit-exact). In evaluation mode it comes from a generator
seeded with :data:`EVAL_NOISE_SEED` at every call, the same ε for every task of a batch: an
evaluation, or a predictor from :meth:`Versa.adapt`, gives the same numbers every time and
does not disturb the training stream.

Support and query images of all the tasks of a batch are embedded in two forward passes (one
for all supports, one for all queries), as in :class:`~fastadapt.algorithms.protonet.ProtoNet`,
so the head never depends on the query images.

**Per-task batch statistics** (``per_task_batch_norm=True``). A feature extractor whose
BatchNorm normalises with batch statistics (Conv-4 does, always) then sees one set of one task
per forward pass: each task's support set, and each task's query set, is normalised with its
own statistics, as in the authors' code (``run_classifier.py`` of Gordonjo/versa embeds the
train and test images of each task separately; TensorFlow's ``batch_norm`` there uses batch
statistics at test time too). A task's predictions then depend on that task alone, not on
which tasks share its batch, and the query statistics are those of the task's query set: the
*transductive* setting of the paper's Omniglot figures. It costs one forward pass per task and
set instead of one per set.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fastadapt.algorithms._support import check_class_labels, class_means, single_task
from fastadapt.algorithms.base import LossOutput, MetaLearner, Predictor
from fastadapt.nn.amortisation import GaussianAmortisation
from fastadapt.nn.precision import float32_region
from fastadapt.tasks.task import TaskBatch

EVAL_NOISE_SEED = 0
"""Seed of the noise ε in evaluation mode (see the module's docstring)."""


class Versa(MetaLearner):
    """VERSA classifier: an amortised Gaussian over each class's linear head.

    Args:
        feature_extractor: any ``nn.Module`` mapping inputs ``[n, ...]`` to features
            ``[n, feature_dim]`` (outputs with more dimensions are flattened).
        feature_dim: D, the size of the features (the paper's d_θ; 256 for its Omniglot and
            mini-ImageNet networks). The amortisation networks are D wide.
        samples: L, Monte Carlo samples of the logits per query (the paper uses 10).
        per_task_batch_norm: embed each task's support set and query set in forward passes
            of their own, so batch statistics are per task and set (see the module's
            docstring); otherwise all tasks' supports share one pass, and all queries one.
    """

    def __init__(
        self,
        feature_extractor: nn.Module,
        feature_dim: int,
        *,
        samples: int = 10,
        per_task_batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(feature_extractor, nn.Module):
            raise TypeError(
                f"feature_extractor must be a torch.nn.Module, got "
                f"{type(feature_extractor).__name__}."
            )
        self.samples = check_samples(samples)
        self.feature_extractor = feature_extractor
        self.weight_amortisation = GaussianAmortisation(feature_dim, feature_dim)
        self.bias_amortisation = GaussianAmortisation(feature_dim, 1, hidden=feature_dim)
        self.feature_dim = feature_dim
        self.per_task_batch_norm = per_task_batch_norm
        self.problem = "classification"

    # -- the interface ----------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """The ML-PIP objective (Eq. 4) over the tasks of ``batch``, with loss and accuracy."""
        log_predictive = self._log_predictive(batch)
        per_task = self.query_metrics(log_predictive, batch.query_y.long())
        loss = per_task[self.loss_metric].mean()
        return LossOutput(loss, {k: v.detach().mean() for k, v in per_task.items()})

    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query ``nll``, ``accuracy`` and calibration statistics, each ``[B, ...]``."""
        with torch.no_grad():
            return self.evaluation_metrics(self._log_predictive(batch), batch.query_y.long())

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """A predictor for one task: the Gaussian over the head is inferred here, once.

        ``support_x`` is ``[n, ...]`` and ``support_y`` ``[n]`` with labels ``0..ways-1``,
        every label present. The predictor returns log predictive probabilities
        ``[m, ways]`` (L samples, deterministic in evaluation mode) for inputs ``[m, ...]``.
        """
        sx, sy = single_task(support_x, support_y)
        ways = check_class_labels("VERSA", sx, sy)
        with torch.no_grad():
            head = [p.detach() for p in self._head(self._embed(sx), sy, ways)]

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self._predict(self._embed(x.unsqueeze(0)), *head)[0]

        return Predictor(forward, self.problem)

    # -- the model --------------------------------------------------------------------------

    def _log_predictive(self, batch: TaskBatch) -> torch.Tensor:
        """log p(ỹ | x̃, D) ``[B, m, ways]`` of every query of every task."""
        ways = check_class_labels(
            "VERSA", batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )
        head = self._head(self._embed(batch.support_x), batch.support_y, ways)
        return self._predict(self._embed(batch.query_x), *head)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Features of ``[B, n, ...]``: ``[B, n, D]``, in one forward pass over all tasks, or
        one per task with ``per_task_batch_norm``."""
        tasks, n = x.shape[:2]
        if self.per_task_batch_norm:
            z = torch.cat([self.feature_extractor(task) for task in x])
        else:
            z = self.feature_extractor(x.flatten(0, 1))
        if z.dim() < 2 or z.shape[0] != tasks * n:
            raise ValueError(
                f"the feature extractor must map [n, ...] inputs to [n, D] outputs; it mapped "
                f"{tuple(x.flatten(0, 1).shape)} to {tuple(z.shape)}."
            )
        z = z.reshape(tasks, n, -1)
        if z.shape[-1] != self.feature_dim:
            raise ValueError(
                f"the feature extractor returned {z.shape[-1]} features per input but "
                f"feature_dim is {self.feature_dim}; pass feature_dim={z.shape[-1]}."
            )
        return z

    @float32_region
    def _head(
        self, support: torch.Tensor, labels: torch.Tensor, ways: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """q_φ over each class's head from its mean support feature: means and variances
        ``[B, ways, D]`` (weights) and ``[B, ways]`` (biases)."""
        pooled = class_means(support, labels, ways)  # [B, ways, D]
        weight_mean, weight_variance = self.weight_amortisation(pooled)
        bias_mean, bias_variance = self.bias_amortisation(pooled)
        return weight_mean, weight_variance, bias_mean.squeeze(-1), bias_variance.squeeze(-1)

    @float32_region
    def _predict(
        self,
        query: torch.Tensor,
        weight_mean: torch.Tensor,
        weight_variance: torch.Tensor,
        bias_mean: torch.Tensor,
        bias_variance: torch.Tensor,
    ) -> torch.Tensor:
        """Local reparameterisation, then the log of the Monte Carlo predictive ``[B, m, ways]``."""
        mean = torch.baddbmm(bias_mean.unsqueeze(1), query, weight_mean.transpose(1, 2))
        variance = torch.baddbmm(
            bias_variance.unsqueeze(1), query.square(), weight_variance.transpose(1, 2)
        )
        noise = self._standard_normal((self.samples, *mean.shape), mean)
        logits = mean + variance.sqrt() * noise  # [L, B, m, ways]
        return log_mean_predictive(logits)

    def _standard_normal(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """ε ~ N(0, 1) of ``shape`` ``[L, B, ...]``: global generator when training, else seeded
        and shared by the tasks of the batch (see the module's docstring)."""
        if self.training:
            return torch.randn(shape, dtype=like.dtype, device=like.device)
        generator = torch.Generator(device=like.device).manual_seed(EVAL_NOISE_SEED)
        samples, _, *rest = shape
        noise = torch.randn(
            (samples, 1, *rest), generator=generator, dtype=like.dtype, device=like.device
        )
        return noise.expand(shape)


def log_mean_predictive(logits: torch.Tensor) -> torch.Tensor:
    """``log (1/L) Σ_l softmax(logits_l)`` over the first dimension, in log space.

    ``logits`` is ``[L, ..., ways]``; the result ``[..., ways]`` holds log probabilities that
    sum to one over the last dimension. ``log_softmax`` and ``logsumexp`` keep it finite and
    exact where the probabilities themselves underflow to zero.
    """
    return torch.logsumexp(logits.log_softmax(dim=-1), dim=0) - math.log(logits.shape[0])


def check_samples(samples: int) -> int:
    """L, the number of Monte Carlo samples, as a positive integer, or a clear error."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(
            f"samples (L, the Monte Carlo samples of the predictive distribution) must be a "
            f"positive integer, got {samples!r}; the paper uses 10."
        )
    return samples
