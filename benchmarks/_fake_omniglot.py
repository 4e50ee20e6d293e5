"""``fastadapt`` with Omniglot replaced by random images of its shape, for machines without the
archives: ``python benchmarks/_fake_omniglot.py train PRESET ...`` (torchrun runs it too).

Each split has as many classes as Vinyals et al.'s (4112 / 688 / 1692 with rotations), 20
random 28x28 images each: the tensors, and so the time of a training step, are those of the
real data; the accuracies mean nothing.
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from fastadapt.cli import main
from fastadapt.datasets import registry
from fastadapt.datasets.class_set import ClassSet

CLASSES = {"train": 4112, "val": 688, "test": 1692}
DRAWERS, SIDE = 20, 28


def _random_omniglot(root: object, split: str, download: bool) -> ClassSet:
    classes = CLASSES[split]
    rng = np.random.default_rng(list(CLASSES).index(split))
    images = rng.integers(0, 256, size=(classes * DRAWERS, SIDE, SIDE), dtype=np.uint8)
    labels = np.repeat(np.arange(classes), DRAWERS)
    return ClassSet(images, labels, [f"{split}-{c}" for c in range(classes)])


def install() -> None:
    """Make ``task.family=omniglot`` load :func:`_random_omniglot` in every class split."""
    entry = registry.DATASETS["omniglot"]
    splits = dict.fromkeys(entry.other_splits, _random_omniglot)
    fake = dataclasses.replace(entry, load=_random_omniglot, other_splits=splits)
    registry.DATASETS["omniglot"] = fake


if __name__ == "__main__":
    install()
    sys.exit(main())
