"""Meta-batches of episodes for a training loop, optionally from worker processes.

Step ``s`` of a :class:`TaskLoader` is the meta-batch of episodes
``s * meta_batch .. (s + 1) * meta_batch - 1`` of its sampler, augmented (if asked) with seeds
derived from each episode's index (:class:`~fastadapt.tasks.augmented_tasks.AugmentedTasks`).
Every step is thus a pure function of its number: the batches are the same with 0 or 8
workers, and a run resumed at ``start_step`` continues the exact stream it would have seen
(DESIGN.md §4.5).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastadapt.errors import ConfigError
from fastadapt.tasks.augment import Augment
from fastadapt.tasks.augmented_tasks import AugmentedTasks
from fastadapt.tasks.sampler import FewShotSampler
from fastadapt.tasks.task import TaskBatch


class TaskLoader:
    """An iterable of :class:`TaskBatch`: ``meta_batch`` episodes per batch, from ``start_step``.

    Args:
        sampler: the episodes.
        meta_batch: episodes per batch (tasks per meta-update).
        start_step: the first step (a resumed run passes the step it stopped at).
        steps: how many batches to yield; ``None`` for an endless stream.
        workers: worker processes preparing batches ahead (0: in this process). The batches do
            not depend on it.
        pin_memory: return batches in page-locked memory, for fast asynchronous copies to an
            accelerator (ignored, with a warning, when there is none).
        augment: ``augment(images, seed)`` applied to the support and the query images of
            every episode (e.g. :func:`fastadapt.tasks.augment.random_crop_flip`), with seeds
            derived from the sampler's seed and stream and the episode's index.
    """

    def __init__(
        self,
        sampler: FewShotSampler,
        meta_batch: int,
        *,
        start_step: int = 0,
        steps: int | None = None,
        workers: int = 0,
        pin_memory: bool = False,
        augment: Augment | None = None,
    ) -> None:
        for name, value, least in (
            ("meta_batch", meta_batch, 1),
            ("start_step", start_step, 0),
            ("workers", workers, 0),
            ("steps", 0 if steps is None else steps, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}.")
        if pin_memory and not torch.cuda.is_available():
            warnings.warn(
                "pin_memory=True but no CUDA device is available; batches stay in ordinary memory.",
                stacklevel=2,
            )
            pin_memory = False
        self.sampler, self.meta_batch = sampler, int(meta_batch)
        self.start_step, self.steps = int(start_step), None if steps is None else int(steps)
        self.workers, self.pin_memory = int(workers), pin_memory
        self._steps = _Steps(sampler, self.meta_batch, augment)

    def __len__(self) -> int:
        if self.steps is None:
            raise TypeError("this TaskLoader is endless (steps=None); it has no length.")
        return self.steps

    def __iter__(self) -> Iterator[TaskBatch]:
        steps: Iterable[int] = (
            itertools.count(self.start_step)
            if self.steps is None
            else range(self.start_step, self.start_step + self.steps)
        )
        if self.workers == 0:
            batches: Iterable[TaskBatch] = map(self._steps.__getitem__, steps)
        else:
            # Map-style over step numbers: each worker computes whole steps, in order.
            batches = DataLoader(
                self._steps, batch_size=None, sampler=steps, num_workers=self.workers
            )
        for batch in batches:
            yield _pinned(batch) if self.pin_memory else batch


class _Steps(Dataset[TaskBatch]):
    """Step number -> its (augmented) meta-batch; what worker processes run."""

    def __init__(self, sampler: FewShotSampler, meta_batch: int, augment: Augment | None) -> None:
        self.tasks = sampler if augment is None else AugmentedTasks(sampler, augment)
        self.meta_batch = meta_batch

    def __getitem__(self, step: int) -> TaskBatch:
        first = step * self.meta_batch
        return self.tasks.batch(range(first, first + self.meta_batch))


def _pinned(batch: TaskBatch) -> TaskBatch:
    return TaskBatch(
        batch.support_x.pin_memory(),
        batch.support_y.pin_memory(),
        batch.query_x.pin_memory(),
        batch.query_y.pin_memory(),
    )
