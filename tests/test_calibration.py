"""Calibration: ECE by hand, pooled over tasks with a bootstrap interval, reported by every
classifier's evaluation, and drawn as a reliability diagram."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.base import MetaLearner
from fastadapt.algorithms.maml import MAML
from fastadapt.algorithms.matching import MatchingNet
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.algorithms.reptile import Reptile
from fastadapt.algorithms.versa import Versa
from fastadapt.engine.calibration import (
    calibration_counts,
    ece_name,
    expected_calibration_error,
)
from fastadapt.engine.evaluate import ece_ci95, evaluate
from fastadapt.tasks.task import TaskBatch

# Two-class predictions (probability of class 0) and labels. Confidences 0.9, 0.85, 0.62, 0.7
# and 0.88 fall in the 15 bins ((m-1)/15, m/15] numbered 13, 12, 9, 10 and 13.
P0 = {"q1": 0.9, "q2": 0.15, "q3": 0.62, "q4": 0.3, "q5": 0.88}
LABEL = {"q1": 0, "q2": 0, "q3": 0, "q4": 1, "q5": 1}


def _task(*names: str) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.tensor([[P0[n], 1 - P0[n]] for n in names], dtype=torch.float64)
    return p.unsqueeze(0), torch.tensor([[LABEL[n] for n in names]])


def test_counts_and_ece_by_hand() -> None:
    probabilities, labels = _task("q1", "q2", "q3", "q4", "q5")
    counts = calibration_counts(probabilities, labels)[0]
    assert counts.shape == (15, 3)
    assert counts[:, 0].nonzero().flatten().tolist() == [9, 10, 12, 13]
    # Bin 13 holds q1 (0.9, right) and q5 (0.88, wrong): 2 predictions, confidence 1.78, 1 right.
    torch.testing.assert_close(counts[13], torch.tensor([2.0, 1.78, 1.0], dtype=torch.float64))
    # |1 - 1.78| + |0 - 0.85| + |1 - 0.62| + |1 - 0.7|, over 5 predictions.
    expected = (0.78 + 0.85 + 0.38 + 0.3) / 5
    assert expected_calibration_error(counts).item() == pytest.approx(expected)


def test_bins_cover_every_confidence() -> None:
    # Confidence 1 is in the last bin, 0.5 (7.5/15) in bin 7, 0.05 (uniform over 20 classes,
    # 0.75/15) in the first.
    two_class = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]], dtype=torch.float64)
    counts = calibration_counts(two_class, torch.tensor([[0, 0]]))[0]
    assert counts[:, 0].nonzero().flatten().tolist() == [7, 14]
    uniform = torch.full((1, 1, 20), 0.05, dtype=torch.float64)
    assert calibration_counts(uniform, torch.tensor([[3]]))[0, 0].tolist() == [1.0, 0.05, 0.0]


def test_ece_is_pooled_over_tasks_with_a_bootstrap_interval() -> None:
    (pa, ya), (pb, yb) = _task("q1", "q2"), _task("q5", "q4")
    per_task = calibration_counts(torch.cat([pa, pb]), torch.cat([ya, yb]))
    estimate = ece_ci95(per_task)
    # Pooled: bin 13 {q1, q5}, bin 12 {q2}, bin 10 {q4}. The mean of the two tasks' own ECEs,
    # (0.1 + 0.85) / 2 and (0.88 + 0.3) / 2, would be 0.5325 instead.
    assert estimate.mean == pytest.approx((0.78 + 0.85 + 0.3) / 4)
    assert estimate.n == 2 and estimate.ci95 > 0
    assert ece_ci95(per_task) == estimate  # a fixed bootstrap seed: reproducible
    same = per_task[:1].expand(8, -1, -1)
    assert ece_ci95(same).ci95 == pytest.approx(0.0, abs=1e-12)
    assert ece_ci95(per_task[:1]).ci95 == 0.0
    assert (ece_name("calibration"), ece_name("calibration@5"), ece_name("nll")) == (
        "ece",
        "ece@5",
        None,
    )


def _learners() -> dict[str, MetaLearner]:
    return {
        "protonet": ProtoNet(nn.Identity()),
        "matching": MatchingNet(nn.Identity()),
        "maml": MAML(nn.Linear(4, 3), problem="classification", inner_steps=1, inner_lr=0.1),
        "reptile": Reptile(nn.Linear(4, 3), inner_steps=2, inner_lr=0.01),
        "versa": Versa(nn.Identity(), feature_dim=4, samples=3),
    }


@pytest.mark.parametrize("name", list(_learners()))
def test_every_classifier_evaluation_reports_nll_accuracy_and_ece(name: str) -> None:
    generator = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(40, 3, 4, generator=generator)
    noise = torch.randn(40, 9, 4, generator=generator)
    labels = torch.arange(3).repeat(3).expand(40, -1)
    points = centres.gather(1, labels.unsqueeze(-1).expand(-1, -1, 4)) + noise

    def tasks(indices: range) -> TaskBatch:
        i = list(indices)
        return TaskBatch(points[i, :3], labels[i, :3], points[i, 3:], labels[i, 3:])

    learner = _learners()[name]
    estimates = evaluate(learner, tasks, num_tasks=40, batch_size=16)
    assert {"nll", "accuracy", "ece"} <= set(estimates)  # MAML adds the same per inner step
    assert 0 < estimates["ece"].mean < 1 and estimates["ece"].ci95 > 0
    if name != "protonet":
        return
    logits = learner._query_logits(tasks(range(40)))
    nll = F.cross_entropy(logits.flatten(0, 1), labels[:, 3:].flatten(), reduction="none")
    assert estimates["nll"].mean == pytest.approx(nll.view(40, 6).mean(dim=1).mean().item())
    assert 0 < estimates["ece"].mean < 1 and estimates["ece"].ci95 > 0


def test_reliability_diagram_is_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from fastadapt.engine.plots import plot_reliability_diagram

    probabilities, labels = _task("q1", "q2", "q3", "q4", "q5")
    out = plot_reliability_diagram(
        calibration_counts(probabilities, labels)[0], tmp_path / "r.png", "hand example"
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
