"""Checks shared by the metric-learning functions: shapes and labels of batched episodes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastadapt.errors import ConfigError


def check_embeddings(name: str, embeddings: torch.Tensor) -> None:
    """``embeddings`` must be ``[batch, examples, features]``."""
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 3:
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else None
        raise ConfigError(
            f"{name} must be a tensor [batch, examples, features], got "
            f"{shape if shape is not None else type(embeddings).__name__}; reshape the "
            "embedding network's output with .view(batch, examples, -1)."
        )


def check_targets(
    name: str, targets: torch.Tensor, embeddings: torch.Tensor, num_classes: int, *, every: bool
) -> None:
    """``targets`` ``[batch, examples]`` of integer labels in ``0..num_classes-1``.

    With ``every``, each task must hold every class at least once (a support set).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if targets.shape != embeddings.shape[:2]:
        raise ConfigError(
            f"{name} must be [batch, examples] = {tuple(embeddings.shape[:2])} like its "
            f"embeddings, got {tuple(targets.shape)}."
        )
    if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
        raise ConfigError(f"{name} must hold integer class labels, got dtype {targets.dtype}.")
    if targets.numel() == 0:
        raise ConfigError(f"{name} is empty; every task needs at least one example.")
    low, high = int(targets.min()), int(targets.max())
    if low < 0 or high >= num_classes:
        raise ConfigError(
            f"{name} must lie in 0..{num_classes - 1} (num_classes={num_classes}), got labels "
            f"from {low} to {high}; relabel each task's classes as 0..ways-1 or raise num_classes."
        )
    if every:
        present = F.one_hot(targets.long(), num_classes).amax(dim=1)  # [batch, num_classes]
        if not bool(present.all()):
            task, label = (int(i) for i in (present == 0).nonzero()[0])
            raise ConfigError(
                f"class {label} has no example in {name} of task {task}; every class "
                f"0..{num_classes - 1} needs at least one support example (torchmeta silently "
                "gave it a zero vector). Lower num_classes or fix the labels."
            )
