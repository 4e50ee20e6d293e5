"""``BatchMetaDataLoader``: batches of tasks as torchmeta's ``{"train": ..., "test": ...}``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from fastadapt.compat.torchmeta.datasets.episodes import EpisodeDataset
from fastadapt.errors import ConfigError
from fastadapt.tasks.loader import TaskLoader

MetaBatch = dict[str, tuple[torch.Tensor, torch.Tensor]]


class BatchMetaDataLoader:
    """Batches of ``batch_size`` tasks of an :class:`EpisodeDataset`, as torchmeta yields them.

    Each batch is ``{"train": (inputs, targets), "test": (inputs, targets)}`` with inputs
    ``[batch_size, ways*shots, C, H, W]`` (``ways*test_shots`` for ``test``) and integer
    targets ``[batch_size, ways*shots]`` in ``0..ways-1``. Batch ``s`` of a pass started at
    step ``start`` holds episodes ``(start + s) * batch_size ..`` of the dataset, prepared by
    a :class:`~fastadapt.tasks.loader.TaskLoader` (in ``num_workers`` processes if asked).

    The stream of tasks is endless, as torchmeta's was in practice (it ran over every
    combination of classes): stop after the number of batches you want.

    Args:
        dataset: from one of the helpers of :mod:`fastadapt.compat.torchmeta.datasets.helpers`.
        batch_size: tasks per batch.
        shuffle: each new pass over the loader continues the dataset's seeded stream with
            tasks it has not given yet; with ``False`` every pass gives the same tasks in the
            same order (torchmeta's sequential order of class combinations is not kept).
        num_workers: worker processes preparing batches ahead (0: in this process).
        pin_memory: batches in page-locked memory, for fast copies to a GPU.
        sampler, drop_last, timeout, worker_init_fn: torchmeta's remaining arguments. Tasks
            are indexed by the dataset's seeded stream, so ``sampler`` and ``worker_init_fn``
            must stay ``None`` and ``timeout`` 0; ``drop_last`` has no effect, since an endless
            stream has no incomplete last batch.
    """

    def __init__(
        self,
        dataset: EpisodeDataset,
        batch_size: int = 1,
        shuffle: bool = True,
        sampler: Any = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
    ) -> None:
        if not isinstance(dataset, EpisodeDataset):
            raise TypeError(
                f"dataset must come from a helper of fastadapt.compat.torchmeta.datasets."
                f"helpers (omniglot, miniimagenet, ...), got {type(dataset).__name__}; for "
                "other data use fastadapt.tasks.sampler.FewShotSampler with TaskLoader."
            )
        for name, value, least in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
                raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}.")
        if sampler is not None:
            raise ConfigError(
                "sampler is not supported: tasks come from the dataset's seeded stream; choose "
                "them with the helper's seed= and this loader's shuffle=."
            )
        if worker_init_fn is not None:
            raise ConfigError(
                "worker_init_fn is not supported: each batch is a pure function of the "
                "dataset's seed and the batch number, whichever worker prepares it."
            )
        if timeout != 0:
            raise ConfigError(f"timeout must be 0 (no timeout is supported), got {timeout!r}.")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self._next_step = 0

    def __iter__(self) -> Iterator[MetaBatch]:
        start = self._next_step if self.shuffle else 0
        tasks = TaskLoader(
            self.dataset,  # duck-typed: TaskLoader only calls its batch(indices)
            self.batch_size,
            start_step=start,
            workers=self.num_workers,
            pin_memory=self.pin_memory,
        )
        for step, batch in enumerate(tasks, start):
            if self.shuffle:
                self._next_step = step + 1
            yield {
                "train": (batch.support_x, batch.support_y),
                "test": (batch.query_x, batch.query_y),
            }
