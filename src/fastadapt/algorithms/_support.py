"""Support sets of classification tasks without a head: label checks and per-class pooling.

Shared by the learners that read a support set class by class (Prototypical Networks' class
means, VERSA's amortisation network), so that both accept the same tasks and refuse the same
mistakes with the same messages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastadapt.nn.precision import float32_region


def single_task(
    support_x: torch.Tensor, support_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One task's support set given to ``adapt`` (``[n, ...]``, labels ``[n]``) as a batch of
    one task (``[1, n, ...]``, ``[1, n]``); a task dimension is refused with the shapes seen."""
    if support_x.dim() < 2 or support_y.dim() != 1:
        raise ValueError(
            "adapt() takes one task without a task dimension: support_x [n, ...] and "
            f"support_y [n]; got support_x {tuple(support_x.shape)}, support_y "
            f"{tuple(support_y.shape)}."
        )
    return support_x.unsqueeze(0), support_y.unsqueeze(0)


def check_class_labels(
    learner: str,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor | None = None,
    query_y: torch.Tensor | None = None,
) -> int:
    """Validate batched labels and return ``ways``; one host synchronisation in all.

    Every task must have the labels ``0..ways-1`` in its support set, each at least once,
    with the same ``ways`` for all tasks of the batch; query labels must lie in that range.
    ``learner`` names the algorithm in the messages.

    Raises:
        ValueError: wrong shapes or dtypes, an empty set, a label out of range, or a class
            without support examples (the message names the task and the missing labels).
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
                f"{learner} is a classifier."
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
            f"{fewest} to {most} distinct classes per task{_missing(present, lo, hi)}. "
            "Relabel each task's classes as 0..ways-1."
        )
    if query_range and (query_range[0] < 0 or query_range[1] >= ways):
        raise ValueError(
            f"query labels must lie in 0..{ways - 1} (the support set's classes), got labels "
            f"from {query_range[0]} to {query_range[1]}."
        )
    return ways


def _missing(present: torch.Tensor, lo: int, hi: int) -> str:
    """``"; task 3 has no support example of class(es) [2]"``, for the first such task."""
    if lo < 0 or hi >= present.shape[1]:
        return ""
    absent = present[:, : hi + 1] == 0  # [B, ways]
    tasks = absent.any(dim=1).nonzero().flatten().tolist()
    if not tasks:
        return ""
    labels = absent[tasks[0]].nonzero().flatten().tolist()
    return f"; task {tasks[0]} has no support example of class(es) {labels}"


@float32_region
def class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Mean feature of each class, for every task at once: ``[B, n, D]`` → ``[B, ways, D]``.

    A one-hot matrix ``[B, n, ways]`` turns the per-class sums into one batched matrix
    product, so any number of shots (even a different number per class) works. Every class
    must have at least one example (:func:`check_class_labels` ensures it).
    """
    one_hot = F.one_hot(labels.long(), ways).to(features.dtype)  # [B, n, ways]
    counts = one_hot.sum(dim=1).unsqueeze(-1)  # [B, ways, 1]
    return torch.bmm(one_hot.transpose(1, 2), features) / counts
