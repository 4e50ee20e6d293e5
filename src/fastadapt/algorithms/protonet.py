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

from fastadapt.algorithms.base import LossOutput, MetaLearner, Predictor
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
        per_task = self._query_metrics(batch)
        loss = per_task[self.loss_metric].mean()
        return LossOutput(loss, {k: v.detach().mean() for k, v in per_task.items()})

    def task_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        """Per-task query ``loss`` and ``accuracy``, each a tensor ``[B]``."""
        with torch.no_grad():
            return self._query_metrics(batch)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """A predictor for one task: prototypes are computed here, once, and kept.

        ``support_x`` is ``[n, ...]`` and ``support_y`` ``[n]`` with labels ``0..ways-1``, every
        label present. The predictor returns logits ``[m, ways]`` for inputs ``[m, ...]``.
        Putting the embedding in eval mode (if it has dropout or running statistics) is the
        caller's business.
        """
        if support_x.dim() < 2 or support_y.dim() != 1:
            raise ValueError(
                "adapt() takes one task without a task dimension: support_x [n, ...] and "
                f"support_y [n]; got support_x {tuple(support_x.shape)}, support_y "
                f"{tuple(support_y.shape)}."
            )
        sx, sy = support_x.unsqueeze(0), support_y.unsqueeze(0)
        ways = self._check_labels(sx, sy)
        with torch.no_grad():
            prototypes = self._prototypes(self._embed(sx), sy, ways)[0].detach()

        def forward(x: torch.Tensor) -> torch.Tensor:
            query = self._embed(x.unsqueeze(0))
            return self._logits(query, prototypes.unsqueeze(0))[0]

        return Predictor(forward, self.problem)

    # -- the model --------------------------------------------------------------------------

    def _query_metrics(self, batch: TaskBatch) -> dict[str, torch.Tensor]:
        ways = self._check_labels(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
        prototypes = self._prototypes(self._embed(batch.support_x), batch.support_y, ways)
        logits = self._logits(self._embed(batch.query_x), prototypes)  # [B, n_query, ways]
        return self.query_metrics(logits, batch.query_y.long())

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

    @staticmethod
    def _prototypes(support: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
        """Class means (Eq. 1) of every task at once: ``[B, n, D]`` → ``[B, ways, D]``.

        A one-hot matrix ``[B, n, ways]`` turns the per-class sums into one batched matrix
        product, so any number of shots (even a different number per class) works.
        """
        one_hot = F.one_hot(labels.long(), ways).to(support.dtype)  # [B, n, ways]
        counts = one_hot.sum(dim=1).unsqueeze(-1)  # [B, ways, 1], every count >= 1 (checked)
        return torch.bmm(one_hot.transpose(1, 2), support) / counts

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

    # -- input checks -----------------------------------------------------------------------

    @staticmethod
    def _check_labels(
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor | None = None,
        query_y: torch.Tensor | None = None,
    ) -> int:
        """Validate batched labels and return ``ways``; one host synchronisation in all.

        Every task must have the labels ``0..ways-1`` in its support set, each at least once,
        with the same ``ways`` for all tasks of the batch; query labels must lie in that range.
        """
        pairs = [("support", support_x, support_y)]
        if query_x is not None and query_y is not None:
            pairs.append(("query", query_x, query_y))
        for name, x, y in pairs:
            if y.dim() != 2 or x.dim() < 3 or x.shape[:2] != y.shape:
                raise ValueError(
                    f"{name}_x must be [B, n, ...] and {name}_y [B, n] integer labels; got "
                    f"{name}_x {tuple(x.shape)}, {name}_y {tuple(y.shape)}."
                )
            if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
                raise ValueError(
                    f"{name}_y must hold integer class labels 0..ways-1, got dtype {y.dtype}; "
                    "ProtoNet is a classifier."
                )
            if y.shape[1] == 0:
                raise ValueError(f"{name} sets are empty ({name}_y {tuple(y.shape)}).")
        n_support = support_y.shape[1]
        # Count each label per task among the n_support possible ones (a task with every class
        # present has at most n_support classes); labels out of range are caught by lo/hi.
        present = F.one_hot(support_y.long().clamp(0, n_support - 1), n_support).amax(dim=1)
        distinct = present.sum(dim=1)  # [B]
        stats = [support_y.min(), support_y.max(), distinct.min(), distinct.max()]
        if query_y is not None:
            stats += [query_y.min(), query_y.max()]
        lo, hi, fewest, most, *query_range = torch.stack([s.long() for s in stats]).tolist()
        ways = hi + 1
        # With all labels in 0..hi, a task has every one of them iff it has hi + 1 distinct ones.
        if lo < 0 or hi >= n_support or fewest != ways or most != ways:
            raise ValueError(
                "support labels must be 0..ways-1 in every task, each class present at least "
                f"once and the same ways for all tasks; got labels from {lo} to {hi} with "
                f"{fewest} to {most} distinct classes per task. Relabel each task's classes "
                "as 0..ways-1."
            )
        if query_range and (query_range[0] < 0 or query_range[1] >= ways):
            raise ValueError(
                f"query labels must lie in 0..{ways - 1} (the support set's classes), got labels "
                f"from {query_range[0]} to {query_range[1]}."
            )
        return ways
