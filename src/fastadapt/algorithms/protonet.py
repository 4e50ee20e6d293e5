"""Prototypical Networks: classify a query by its distance to class means of embedded supports.

Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot Learning" (arXiv:1703.05175).
An embedding f_φ maps each example to a vector; the prototype of class k is the mean embedded
support example of that class (Eq. 1),

    c_k = (1 / |S_k|) Σ_{(x_i, y_i) ∈ S_k} f_φ(x_i),

and a query x is classified by a softmax over negative distances to the prototypes (Eq. 2),

    p_φ(y = k | x) = exp(-d(f_φ(x), c_k)) / Σ_k' exp(-d(f_φ(x), c_k')).

The meta-objective is the query cross-entropy -log p_φ(y = k | x), averaged over the query set
and over tasks. ``d`` is the squared Euclidean distance (the paper's choice, §2.7: with it the
model is a linear classifier in embedding space) or the cosine distance ``1 - cos``.

There is no classification head, so one model serves any number of ways and shots: train
20-way, test 5-way, as in the paper's Omniglot protocol. Support and query images of all the
tasks of a batch are embedded in two forward passes (one for all supports, one for all
queries), so prototypes never depend on query images, and :meth:`ProtoNet.adapt` gives the
same prototypes as :meth:`ProtoNet.task_metrics` on a one-task batch even when the embedding
normalises with batch statistics.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms._support import check_class_labels, class_means, single_task
from fastadapt.algorithms.base import LossOutput, MetaLearner, Predictor
from fastadapt.nn.precision import float32_region
from fastadapt.tasks.task import TaskBatch

DISTANCES = ("euclidean", "cosine")


class ProtoNet(MetaLearner):
    """Prototypical Networks: prototypes are class means of embedded support examples.

    Args:
        embedding: any ``nn.Module`` mapping images ``[n, C, H, W]`` (or any inputs ``[n, ...]``)
            to embeddings ``[n, D]``; outputs with more dimensions are flattened to ``[n, D]``.
        distance: ``"euclidean"`` (squared Euclidean, the paper's Eq. 1-2) or ``"cosine"``
            (logits are ``cos - 1``, i.e. minus the cosine distance).
    """

    def __init__(self, embedding: nn.Module, *, distance: str = "euclidean") -> None:
        super().__init__()
        if not isinstance(embedding, nn.Module):
            raise TypeError(f"embedding must be a torch.nn.Module, got {type(embedding).__name__}.")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")
        self.embedding = embedding
        self.distance = distance
        self.problem = "classification"

    # -- the interface ----------------------------------------------------------------------

    def meta_loss(self, batch: TaskBatch) -> LossOutput:
        """Mean query cross-entropy over the tasks of ``batch`` (the paper's J(φ), Algorithm 1)."""
        per_task = self.query_metrics(self._query_logits(batch), batch.query_y.long())
        loss = per_task[self.loss_metric].mean()
        return LossOutput(loss, {k: v.detach().mean() for k, v in per_task.items()})

    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query ``nll``, ``accuracy`` and calibration statistics, each ``[B, ...]``."""
        with torch.no_grad():
            return self.evaluation_metrics(self._query_logits(batch), batch.query_y.long())

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """A predictor for one task: prototypes are computed here, once, and kept.

        ``support_x`` is ``[n, ...]`` and ``support_y`` ``[n]`` with labels ``0..ways-1``, every
        label present. The predictor returns logits ``[m, ways]`` for inputs ``[m, ...]``.
        Putting the embedding in eval mode (if it has dropout or running statistics) is the
        caller's business.
        """
        sx, sy = single_task(support_x, support_y)
        ways = check_class_labels("ProtoNet", sx, sy)
        with torch.no_grad():
            prototypes = class_means(self._embed(sx), sy, ways)[0].detach()

        def forward(x: torch.Tensor) -> torch.Tensor:
            query = self._embed(x.unsqueeze(0))
            return self._logits(query, prototypes.unsqueeze(0))[0]

        return Predictor(forward, self.problem)

    # -- the model --------------------------------------------------------------------------

    def _query_logits(self, batch: TaskBatch) -> torch.Tensor:
        """Logits ``[B, n_query, ways]`` of every query of every task."""
        ways = check_class_labels(
            "ProtoNet", batch.support_x, batch.support_y, batch.query_x, batch.query_y
        )
        prototypes = class_means(self._embed(batch.support_x), batch.support_y, ways)
        return self._logits(self._embed(batch.query_x), prototypes)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embed ``[B, n, ...]`` in one forward pass over all tasks: ``[B, n, D]``."""
        tasks, n = x.shape[:2]
        z = self.embedding(x.flatten(0, 1))
        if z.dim() < 2 or z.shape[0] != tasks * n:
            raise ValueError(
                f"the embedding must map [n, ...] inputs to [n, D] outputs; it mapped "
                f"{tuple(x.flatten(0, 1).shape)} to {tuple(z.shape)}."
            )
        return z.reshape(tasks, n, -1)

    @float32_region
    def _logits(self, query: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """Negative distances (Eq. 2): ``[B, m, D]`` and ``[B, ways, D]`` → ``[B, m, ways]``."""
        if self.distance == "cosine":
            q = F.normalize(query, dim=-1)
            c = F.normalize(prototypes, dim=-1)
            return torch.bmm(q, c.transpose(1, 2)) - 1.0
        # Squared Euclidean distance as ||q||² + ||c||² - 2 q·c. torch.baddbmm does the
        # batched matrix product and adds the norms in a single GEMM call, with no [B, m, ways, D]
        # difference tensor. torch.cdist is not used: it returns the *unsquared* distance, so we
        # would take a square root only to square it again, and the square root's gradient is
        # singular where a query coincides with a prototype. Rounding in the expansion can make
        # a true zero slightly negative, hence the clamp at 0.
        q_norms = query.pow(2).sum(dim=-1, keepdim=True)  # [B, m, 1]
        c_norms = prototypes.pow(2).sum(dim=-1).unsqueeze(1)  # [B, 1, ways]
        squared = torch.baddbmm(
            q_norms + c_norms, query, prototypes.transpose(1, 2), beta=1.0, alpha=-2.0
        )
        return -squared.clamp_min(0.0)
