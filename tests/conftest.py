"""Shared fixtures: small models and task batches, float64 where gradients are compared."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from fastadapt.datasets import registry
from fastadapt.datasets.class_set import ClassSet
from fastadapt.tasks.task import TaskBatch


def small_conv_net() -> nn.Module:
    """Conv → BatchNorm (batch statistics, affine) → ReLU → pool → linear head, as in MAML."""
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


def regression_batch(tasks: int = 3, shots: int = 5, dtype=torch.float64) -> TaskBatch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(tasks, 2 * shots, 1, generator=g, dtype=dtype)
    y = torch.sin(x) * torch.rand(tasks, 1, 1, generator=g, dtype=dtype) * 3
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def image_batch(tasks: int = 3, per_task: int = 6, dtype=torch.float64) -> TaskBatch:
    g = torch.Generator().manual_seed(2)
    sx = torch.randn(tasks, per_task, 1, 8, 8, generator=g, dtype=dtype)
    qx = torch.randn(tasks, per_task, 1, 8, 8, generator=g, dtype=dtype)
    sy = torch.randint(0, 3, (tasks, per_task), generator=g)
    qy = torch.randint(0, 3, (tasks, per_task), generator=g)
    return TaskBatch(sx, sy, qx, qy)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _fake_omniglot(root, split: str, download: bool) -> ClassSet:
    """Six 28x28 classes of eight images per split, each class a noisy copy of its template."""
    rng = np.random.default_rng({"train": 0, "val": 1, "test": 2}[split])
    templates = rng.integers(0, 256, size=(6, 28, 28))
    noise = rng.integers(-30, 31, size=(6, 8, 28, 28))
    images = np.clip(templates[:, None] + noise, 0, 255).astype(np.uint8).reshape(48, 28, 28)
    labels = np.repeat(np.arange(6), 8)
    return ClassSet(images, labels, [f"{split}-{c}" for c in range(6)])


def install_fake_omniglot(patch: pytest.MonkeyPatch) -> None:
    """Replace the omniglot dataset, in every class split, by :func:`_fake_omniglot` (tiny runs
    through the trainer)."""
    entry = registry.DATASETS["omniglot"]
    splits = dict.fromkeys(entry.other_splits, _fake_omniglot)
    fake = dataclasses.replace(entry, load=_fake_omniglot, other_splits=splits)
    patch.setitem(registry.DATASETS, "omniglot", fake)


@pytest.fixture
def fake_omniglot(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_omniglot(monkeypatch)


TINY_RUN = [
    "task.ways=3",
    "task.queries=2",
    "train.steps=4",
    "train.val_every=2",
    "train.val_tasks=4",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "eval.ways=3",
    "eval.queries=2",
    "eval.tasks=6",
    "eval.batch=3",
]
