"""The unit of meta-learning: a task with a support set and a query set."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Task:
    """One few-shot problem: learn from ``support``, be judged on ``query``.

    Classification labels are integers ``0..ways-1`` within the task; regression targets are
    float tensors of shape ``[n, out_features]``.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


@dataclass(frozen=True)
class TaskBatch:
    """Tasks stacked along a leading task dimension ``[B, ...]`` so they can be ``vmap``-ed.

    Tasks whose query sets differ in size (the users of a recommender, each with their own
    number of ratings) are padded to the largest one: ``query_mask`` ``[B, n_query]`` is True
    on real query examples, and losses and metrics are means over those only. ``None`` means
    every query example is real. Support sets always have one size.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    query_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        sizes = {t.shape[0] for t in (self.support_x, self.support_y, self.query_x, self.query_y)}
        if len(sizes) != 1:
            raise ValueError(
                "TaskBatch fields disagree on the number of tasks (leading dimension): "
                f"support_x {tuple(self.support_x.shape)}, support_y "
                f"{tuple(self.support_y.shape)}, query_x {tuple(self.query_x.shape)}, "
                f"query_y {tuple(self.query_y.shape)}; stack the same tasks in every field."
            )
        mask = self.query_mask
        if mask is not None and (
            mask.dtype != torch.bool or tuple(mask.shape) != tuple(self.query_x.shape[:2])
        ):
            raise ValueError(
                f"query_mask must be a bool tensor of shape {tuple(self.query_x.shape[:2])} "
                f"(tasks, query examples), got {mask.dtype} {tuple(mask.shape)}."
            )

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, index: int | slice) -> Task | TaskBatch:
        """``batch[i]`` is the i-th :class:`Task` (its real query examples only);
        ``batch[a:b]`` a smaller :class:`TaskBatch`."""
        fields = (self.support_x, self.support_y, self.query_x, self.query_y)
        mask = self.query_mask
        if isinstance(index, slice):
            return TaskBatch(*(f[index] for f in fields), None if mask is None else mask[index])
        support_x, support_y, query_x, query_y = (f[index] for f in fields)
        if mask is not None:
            query_x, query_y = query_x[mask[index]], query_y[mask[index]]
        return Task(support_x, support_y, query_x, query_y)

    def to(self, device: torch.device | str) -> TaskBatch:
        fields = (self.support_x, self.support_y, self.query_x, self.query_y, self.query_mask)
        return TaskBatch(*(None if f is None else f.to(device, non_blocking=True) for f in fields))

    @staticmethod
    def stack(tasks: list[Task]) -> TaskBatch:
        """Stack tasks into one batch; query sets of different sizes are padded with zeros and
        described by ``query_mask``."""
        if not tasks:
            raise ValueError("cannot stack an empty list of tasks; pass at least one Task.")
        sizes = [t.query_x.shape[0] for t in tasks]
        support = (
            torch.stack([t.support_x for t in tasks]),
            torch.stack([t.support_y for t in tasks]),
        )
        if len(set(sizes)) == 1:
            query = (
                torch.stack([t.query_x for t in tasks]),
                torch.stack([t.query_y for t in tasks]),
            )
            return TaskBatch(*support, *query)
        longest = max(sizes)
        mask = torch.arange(longest) < torch.tensor(sizes).unsqueeze(1)
        return TaskBatch(
            *support,
            _pad_stack([t.query_x for t in tasks], longest),
            _pad_stack([t.query_y for t in tasks], longest),
            mask,
        )


def _pad_stack(tensors: list[torch.Tensor], length: int) -> torch.Tensor:
    """``tensors`` ``[n_i, ...]`` stacked as ``[B, length, ...]``, zero after each ``n_i``."""
    first = tensors[0]
    out = first.new_zeros((len(tensors), length, *first.shape[1:]))
    for row, tensor in zip(out, tensors):
        row[: tensor.shape[0]] = tensor
    return out
