"""Evaluation: mean ± 1.96·s/√n over fixed tasks, the same every time."""

from __future__ import annotations

import math

import pytest
import torch

from fastadapt.algorithms.maml import MAML
from fastadapt.engine.evaluate import evaluate, mean_ci95
from fastadapt.nn.mlp import MLP
from fastadapt.tasks.sinusoid import SinusoidTasks


def test_confidence_interval_formula():
    values = torch.tensor([1.0, 2.0, 4.0, 7.0])
    estimate = mean_ci95(values)
    mean = 3.5
    sample_std = math.sqrt(sum((v - mean) ** 2 for v in [1, 2, 4, 7]) / 3)
    assert estimate.mean == pytest.approx(mean)
    assert estimate.ci95 == pytest.approx(1.96 * sample_std / 2)
    assert estimate.n == 4
    assert mean_ci95(torch.tensor([5.0])).ci95 == 0.0
    with pytest.raises(ValueError, match="zero tasks"):
        mean_ci95(torch.tensor([]))


def test_evaluation_is_fixed_by_seed_and_independent_of_batch_size():
    learner = MAML(MLP(1, [16], 1), inner_lr=0.01, report_steps=[0, 1])
    family = SinusoidTasks(shots=5, queries=20, seed=4, split="test")
    a = evaluate(learner, family.batch, num_tasks=30, batch_size=7)
    b = evaluate(learner, family.batch, num_tasks=30, batch_size=30)
    assert a.keys() == b.keys() == {"mse@0", "mse@1", "mse"}
    for name in a:
        assert a[name].n == 30
        assert a[name].mean == pytest.approx(b[name].mean, rel=1e-5)
    other = evaluate(learner, SinusoidTasks(5, 20, seed=5, split="test").batch, 30, 30)
    assert other["mse@0"].mean != pytest.approx(a["mse@0"].mean, rel=1e-3)
