"""``EpisodeDataset``: what torchmeta's dataset helpers return, on a native episode stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from fastadapt.datasets.class_set import ClassSet
from fastadapt.errors import ConfigError
from fastadapt.tasks.sampler import FewShotSampler
from fastadapt.tasks.task import TaskBatch

Transform = Callable[[torch.Tensor], torch.Tensor]


class EpisodeDataset:
    """N-way K-shot episodes of one class split, split into ``train`` and ``test`` examples.

    Episode ``i`` is episode ``i`` of ``FewShotSampler(classes, ways, shots, test_shots, seed)``
    (:attr:`sampler`): a pure function of ``(seed, i)``. Iterate it in batches with
    :class:`~fastadapt.compat.torchmeta.utils.data.BatchMetaDataLoader`.

    Args:
        classes: the classes of the split.
        ways: classes per task.
        shots: ``train`` (support) examples per class.
        test_shots: ``test`` (query) examples per class.
        seed: the seed of the episode stream.
        shuffle: draw each task's examples of a class at random (torchmeta's
            ``shuffle=True``); with ``False`` they are the class's first ``shots`` and next
            ``test_shots`` examples, in the dataset's order, as in torchmeta. Either way the
            examples of a task are ordered class by class, labels ``0..ways-1``.
        transform: applied to every image, a float32 tensor ``[C, H, W]`` in ``[0, 1]``
            (torchmeta applied it to a PIL image before ``ToTensor``).
    """

    def __init__(
        self,
        classes: ClassSet,
        ways: int,
        shots: int,
        test_shots: int,
        *,
        seed: int,
        shuffle: bool = True,
        transform: Transform | None = None,
    ) -> None:
        if transform is not None and not callable(transform):
            raise ConfigError(
                f"transform must be a callable taking an image tensor [C, H, W], got "
                f"{type(transform).__name__}."
            )
        self.sampler = FewShotSampler(classes, ways, shots, test_shots, seed=seed)
        self.shuffle = bool(shuffle)
        self.transform = transform

    @property
    def ways(self) -> int:
        """Classes per task."""
        return self.sampler.ways

    @property
    def num_classes_per_task(self) -> int:
        """torchmeta's name for :attr:`ways` (its ProtoNet example sizes the prototypes by it)."""
        return self.ways

    @property
    def shots(self) -> int:
        """``train`` examples per class."""
        return self.sampler.shots

    @property
    def test_shots(self) -> int:
        """``test`` examples per class."""
        return self.sampler.queries

    @property
    def seed(self) -> int:
        """The seed of the episode stream."""
        return self.sampler.seed

    def batch(self, indices: Sequence[int] | range) -> TaskBatch:
        """Episodes ``indices`` as a :class:`TaskBatch` (``support`` = torchmeta's ``train``)."""
        batch = self.sampler.batch(indices) if self.shuffle else self._first_examples(indices)
        if self.transform is None:
            return batch
        return TaskBatch(
            self._transformed(batch.support_x),
            batch.support_y,
            self._transformed(batch.query_x),
            batch.query_y,
        )

    def __repr__(self) -> str:
        return (
            f"EpisodeDataset({self.ways}-way {self.shots}-shot, test_shots={self.test_shots}, "
            f"seed={self.seed}, shuffle={self.shuffle}, {self.sampler.classes!r})"
        )

    def _first_examples(self, indices: Sequence[int] | range) -> TaskBatch:
        """The episodes' classes, each with its first ``shots + test_shots`` examples."""
        classes = np.stack([self.sampler.episode(index)[0] for index in indices])
        shots, per_class = self.shots, self.shots + self.test_shots
        examples = np.broadcast_to(np.arange(per_class), (*classes.shape, per_class))
        images = self.sampler.classes.gather(classes, examples)  # [B, ways, n, C, H, W]
        labels = torch.arange(self.ways)
        tasks = classes.shape[0]
        return TaskBatch(
            images[:, :, :shots].flatten(1, 2),
            labels.repeat_interleave(shots).repeat(tasks, 1),
            images[:, :, shots:].flatten(1, 2),
            labels.repeat_interleave(self.test_shots).repeat(tasks, 1),
        )

    def _transformed(self, images: torch.Tensor) -> torch.Tensor:
        """``transform`` on each image of ``[B, n, C, H, W]``."""
        try:
            outputs = [self.transform(image) for image in images.flatten(0, 1)]
        except (TypeError, AttributeError) as error:
            raise ConfigError(
                f"transform failed on an image tensor ({error}). Images reach transform as "
                "float32 tensors [C, H, W] in [0, 1], already at the dataset's standard size: "
                "drop ToTensor() and Resize() from it, and keep transforms that take tensors "
                "(e.g. Normalize, RandomCrop, RandomHorizontalFlip)."
            ) from error
        if not all(isinstance(out, torch.Tensor) for out in outputs):
            raise ConfigError("transform must return a tensor image [C, H, W] for every image.")
        return torch.stack(outputs).view(*images.shape[:2], *outputs[0].shape)
