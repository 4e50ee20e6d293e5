"""A task family whose images are augmented, each task from seeds of its own.

Training with distorted copies of the images (Koch, Zemel & Salakhutdinov 2015 on Omniglot)
is a property of the *training* tasks only: validation and test tasks stay as drawn. Each
task's support and query images are augmented with seeds derived from the family's seed and
stream, the task's index and the set, so task ``i`` is the same in every batch that holds it,
in any process of a distributed job (which splits a meta-batch by task) and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fastadapt.tasks.augment import Augment
from fastadapt.tasks.counter_rng import stream_key
from fastadapt.tasks.sampler import FewShotSampler
from fastadapt.tasks.task import TaskBatch

_AUGMENT_STREAM = 0x6175_676D  # "augm": keeps these seeds apart from the sampler's draws
_SUPPORT, _QUERY = 0, 1


class AugmentedTasks:
    """The tasks of ``sampler``, with ``augment`` applied to every support and query image.

    Args:
        sampler: the task family (its ``seed`` and ``stream`` key the augmentation).
        augment: e.g. :func:`fastadapt.tasks.augment.random_affine`.
    """

    def __init__(self, sampler: FewShotSampler, augment: Augment) -> None:
        self.sampler, self.augment = sampler, augment

    def batch(self, indices: Sequence[int] | range) -> TaskBatch:
        """The sampler's tasks ``indices``, each augmented with seeds of its own."""
        batch = self.sampler.batch(indices)
        support, query = (
            torch.stack(
                [self.augment(images, self._seed(index, part)) for index, images in zip(indices, x)]
            )
            for part, x in ((_SUPPORT, batch.support_x), (_QUERY, batch.query_x))
        )
        return TaskBatch(support, batch.support_y, query, batch.query_y)

    def _seed(self, index: int, part: int) -> int:
        sampler = self.sampler
        key = stream_key(sampler.seed, sampler.stream, _AUGMENT_STREAM, int(index), part)
        return int(key >> np.uint64(1))
