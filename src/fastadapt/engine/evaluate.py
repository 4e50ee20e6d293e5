"""Evaluation over fixed tasks: every metric as mean ± 95% confidence interval.

The interval is ``1.96 · s / √n`` with ``s`` the sample standard deviation of the per-task
metric over ``n`` tasks, the convention of Prototypical Networks (Snell et al. 2017, §3.2
reports "95% confidence intervals" over 1000 episodes) and later work.

Classifiers also report per-task calibration counts; they are pooled over all tasks into one
expected calibration error, ``ece``, whose interval is ``1.96`` times its standard deviation
over a bootstrap of the tasks (:mod:`fastadapt.engine.calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.engine import distributed
from fastadapt.engine.calibration import bootstrap_ece, ece_name, expected_calibration_error
from fastadapt.tasks.counter_rng import stream_key
from fastadapt.tasks.task import TaskBatch

Z_95 = 1.96
_EVAL_NOISE_STREAM = 4  # counter_rng coordinate of the generators' seeds in evaluation


@dataclass(frozen=True)
class Estimate:
    """Mean of a per-task metric with its 95% confidence half-width, over ``n`` tasks."""

    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.ci95:.4f}"


def mean_ci95(values: torch.Tensor) -> Estimate:
    """Mean and ``1.96 · s / √n`` of a 1-D tensor of per-task values."""
    values = values.detach().double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("cannot summarise zero tasks; evaluate at least one.")
    spread = values.std(unbiased=True).item() if n > 1 else 0.0
    return Estimate(values.mean().item(), Z_95 * spread / math.sqrt(n), n)


def evaluate(
    learner: MetaLearner,
    tasks: Callable[[range], TaskBatch],
    num_tasks: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, Estimate]:
    """Evaluate ``learner`` on tasks ``0..num_tasks-1`` of a fixed, seeded task source."""
    return summarise(collect_task_metrics(learner, tasks, num_tasks, batch_size, device))


def collect_task_metrics(
    learner: MetaLearner,
    tasks: Callable[[range], TaskBatch],
    num_tasks: int,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Every per-task metric of tasks ``0..num_tasks-1``, each ``[num_tasks, ...]`` on the CPU,
    with the learner in evaluation mode.

    The tasks are evaluated in batches of ``batch_size``, each with torch's generators seeded
    from the batch's first task, so a learner that draws random numbers while adapting
    (Reptile's mini-batch order) gives the same metrics whatever ran before. In a distributed
    job every rank must call this: each evaluates its contiguous share of the batches
    (:func:`fastadapt.engine.distributed.shard`) and every rank receives all the metrics in
    task order, the same tensors one process computes.
    """
    if num_tasks < 1 or batch_size < 1:
        raise ValueError(
            f"num_tasks and batch_size must be positive, got {num_tasks} and {batch_size}."
        )
    device = torch.device(device)
    starts = range(0, num_tasks, batch_size)
    collected: dict[str, list[torch.Tensor]] = {}
    was_training = learner.training
    learner.eval()
    try:
        for index in distributed.shard(range(len(starts))):
            start = starts[index]
            batch = tasks(range(start, min(start + batch_size, num_tasks))).to(device)
            with _seeded(start, device):
                metrics = learner.task_metrics(batch)
            for name, values in metrics.items():
                collected.setdefault(name, []).append(values.detach().cpu())
    finally:
        learner.train(was_training)
    shards = distributed.all_gather_objects(
        {name: torch.cat(parts) for name, parts in collected.items()}
    )
    names = next(list(s) for s in shards if s)
    return {name: torch.cat([s[name] for s in shards if s]) for name in names}


@contextmanager
def _seeded(start: int, device: torch.device) -> Iterator[None]:
    """torch's generators seeded from ``start`` inside the block, restored after it."""
    devices = [device.index or torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(stream_key(_EVAL_NOISE_STREAM, start) >> np.uint64(1)))
        yield


def summarise(per_task: dict[str, torch.Tensor]) -> dict[str, Estimate]:
    """Mean ± 95% CI of each per-task metric; calibration counts become a pooled ``ece``."""
    estimates = {}
    for name, values in per_task.items():
        ece = ece_name(name)
        if ece is None:
            estimates[name] = mean_ci95(values)
        else:
            estimates[ece] = ece_ci95(values)
    return estimates


def ece_ci95(per_task: torch.Tensor) -> Estimate:
    """The ECE of calibration counts ``[T, bins, 3]`` pooled over the T tasks, ± 1.96 times its
    standard deviation over a bootstrap of the tasks."""
    counts = per_task.detach().double()
    ece = expected_calibration_error(counts.sum(dim=0)).item()
    tasks = counts.shape[0]
    spread = bootstrap_ece(counts).std(unbiased=True).item() if tasks > 1 else 0.0
    return Estimate(ece, Z_95 * spread, tasks)


def estimates_to_json(estimates: dict[str, Estimate]) -> dict[str, Any]:
    return {name: {"mean": e.mean, "ci95": e.ci95, "n": e.n} for name, e in estimates.items()}
