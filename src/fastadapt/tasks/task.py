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
    """Tasks stacked along a leading task dimension ``[B, ...]`` so they can be ``vmap``-ed."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    def __post_init__(self) -> None:
        sizes = {t.shape[0] for t in (self.support_x, self.support_y, self.query_x, self.query_y)}
        if len(sizes) != 1:
            raise ValueError(
                "TaskBatch fields disagree on the number of tasks (leading dimension): "
                f"support_x {tuple(self.support_x.shape)}, support_y "
                f"{tuple(self.support_y.shape)}, query_x {tuple(self.query_x.shape)}, "
                f"query_y {tuple(self.query_y.shape)}; stack the same tasks in every field."
            )

    @property
    def num_tasks(self) -> int:
        return self.support_x.shape[0]

    def __len__(self) -> int:
        return self.num_tasks

    def __getitem__(self, index: int | slice) -> Task | TaskBatch:
        """``batch[i]`` is the i-th :class:`Task`; ``batch[a:b]`` a smaller :class:`TaskBatch`."""
        fields = (self.support_x, self.support_y, self.query_x, self.query_y)
        if isinstance(index, slice):
            return TaskBatch(*(f[index] for f in fields))
        return Task(*(f[index] for f in fields))

    def to(self, device: torch.device | str) -> TaskBatch:
        fields = (self.support_x, self.support_y, self.query_x, self.query_y)
        return TaskBatch(*(f.to(device, non_blocking=True) for f in fields))

    @staticmethod
    def stack(tasks: list[Task]) -> TaskBatch:
        """Stack tasks of identical shapes into one batch."""
        if not tasks:
            raise ValueError("cannot stack an empty list of tasks; pass at least one Task.")
        return TaskBatch(
            torch.stack([t.support_x for t in tasks]),
            torch.stack([t.support_y for t in tasks]),
            torch.stack([t.query_x for t in tasks]),
            torch.stack([t.query_y for t in tasks]),
        )
