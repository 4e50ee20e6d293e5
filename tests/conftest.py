"""Shared fixtures: small models and task batches, float64 where gradients are compared."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
