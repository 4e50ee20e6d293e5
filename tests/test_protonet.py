"""Prototypical Networks: batched prototypes, logits and gradients against a naive loop."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms._support import check_class_labels, class_means
from fastadapt.algorithms.protonet import ProtoNet
from fastadapt.nn.conv4 import Conv4
from fastadapt.tasks.task import TaskBatch

SIDE = 4  # tiny 1x4x4 images for the MLP embedding


def mlp_embedding(seed: int = 0, dtype=torch.float64, out: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 12), nn.Tanh(), nn.Linear(12, out))
    return net.to(dtype)


def random_batch(
    tasks: int, ways: int, shots: int, queries: int, seed: int, dtype=torch.float64, side=SIDE
) -> TaskBatch:
    """Random images with labels 0..ways-1 in a shuffled order within each task."""
    g = torch.Generator().manual_seed(seed)

    def labels(per_class: int) -> torch.Tensor:
        base = torch.arange(ways).repeat_interleave(per_class)
        return torch.stack([base[torch.randperm(base.numel(), generator=g)] for _ in range(tasks)])

    sy, qy = labels(shots), labels(queries)
    sx = torch.randn(tasks, ways * shots, 1, side, side, generator=g, dtype=dtype)
    qx = torch.randn(tasks, ways * queries, 1, side, side, generator=g, dtype=dtype)
    return TaskBatch(sx, sy, qx, qy)


def naive_logits(
    embedding: nn.Module, batch: TaskBatch, distance: str
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-task, per-class, per-query loops: the paper's Eq. 1-2 written out literally."""
    all_protos, all_logits = [], []
    for b in range(batch.num_tasks):
        ways = int(batch.support_y[b].max()) + 1
        support = embedding(batch.support_x[b])
        query = embedding(batch.query_x[b])
        protos = torch.stack([support[batch.support_y[b] == k].mean(dim=0) for k in range(ways)])
        rows = []
        for q in query:
            row = []
            for c in protos:
                if distance == "euclidean":
                    row.append(-((q - c) ** 2).sum())
                else:
                    row.append(q @ c / (q.norm() * c.norm()) - 1.0)
            rows.append(torch.stack(row))
        all_protos.append(protos)
        all_logits.append(torch.stack(rows))
    return all_protos, all_logits


def naive_loss(embedding: nn.Module, batch: TaskBatch, distance: str) -> torch.Tensor:
    _, logits = naive_logits(embedding, batch, distance)
    losses = [F.cross_entropy(lg, batch.query_y[b]) for b, lg in enumerate(logits)]
    return torch.stack(losses).mean()


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("shots", [1, 3])
def test_prototypes_and_logits_match_naive_loop(distance: str, shots: int) -> None:
    embedding = mlp_embedding()
    learner = ProtoNet(embedding, distance=distance)
    batch = random_batch(tasks=4, ways=3, shots=shots, queries=2, seed=shots)
    ways = check_class_labels(
        "ProtoNet", batch.support_x, batch.support_y, batch.query_x, batch.query_y
    )
    protos = class_means(learner._embed(batch.support_x), batch.support_y, ways)
    logits = learner._logits(learner._embed(batch.query_x), protos)
    ref_protos, ref_logits = naive_logits(embedding, batch, distance)
    torch.testing.assert_close(protos, torch.stack(ref_protos), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits, torch.stack(ref_logits), rtol=1e-10, atol=1e-10)
    metrics = learner.task_metrics(batch)
    ref_losses = torch.stack(
        [F.cross_entropy(lg, batch.query_y[b]) for b, lg in enumerate(ref_logits)]
    )
    torch.testing.assert_close(metrics["nll"], ref_losses, rtol=1e-10, atol=1e-10)
    assert metrics["accuracy"].shape == (4,)


def test_uneven_shots_per_class_match_naive_loop() -> None:
    embedding = mlp_embedding()
    learner = ProtoNet(embedding)
    batch = random_batch(tasks=2, ways=3, shots=2, queries=2, seed=5)
    # Class 2 gets 3 shots and class 0 only 1, in both tasks.
    sy = torch.tensor([[0, 1, 1, 2, 2, 2], [2, 1, 0, 2, 1, 2]])
    batch = TaskBatch(batch.support_x, sy, batch.query_x, batch.query_y)
    torch.testing.assert_close(
        learner.meta_loss(batch).loss, naive_loss(embedding, batch, "euclidean")
    )


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("shots", [1, 3])
def test_meta_loss_gradients_match_naive_loop(distance: str, shots: int) -> None:
    embedding = mlp_embedding(seed=1)
    learner = ProtoNet(embedding, distance=distance)
    batch = random_batch(tasks=3, ways=4, shots=shots, queries=3, seed=10 + shots)
    params = list(embedding.parameters())
    out = learner.meta_loss(batch)
    grads = torch.autograd.grad(out.loss, params)
    ref = naive_loss(embedding, batch, distance)
    ref_grads = torch.autograd.grad(ref, params)
    torch.testing.assert_close(out.loss, ref, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-10)
    assert set(out.metrics) == {"loss", "accuracy"}
    assert all(not v.requires_grad and v.dim() == 0 for v in out.metrics.values())


def test_squared_distance_is_never_negative_and_zero_at_the_prototype() -> None:
    learner = ProtoNet(nn.Flatten())
    g = torch.Generator().manual_seed(0)
    # Large norms make the ||q||² - 2 q·c + ||c||² expansion lose precision in float32.
    sx = (1e3 + torch.randn(1, 3, 1, 8, 8, generator=g)).float()
    batch = TaskBatch(sx, torch.tensor([[0, 1, 2]]), sx.clone(), torch.tensor([[0, 1, 2]]))
    protos = class_means(learner._embed(batch.support_x), batch.support_y, 3)
    logits = learner._logits(learner._embed(batch.query_x), protos)
    assert (logits <= 0).all()
    assert torch.isfinite(logits).all()
    assert logits.diagonal(dim1=1, dim2=2).abs().max() < 1e-1 * logits.abs().max()


def test_any_ways_and_shots_at_test_time() -> None:
    embedding = mlp_embedding(dtype=torch.float32)
    learner = ProtoNet(embedding)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for step in range(3):
        batch = random_batch(tasks=2, ways=3, shots=2, queries=2, seed=step, dtype=torch.float32)
        opt.zero_grad()
        learner.meta_loss(batch).loss.backward()
        opt.step()
    for ways, shots in [(2, 1), (4, 3)]:
        batch = random_batch(
            tasks=3, ways=ways, shots=shots, queries=4, seed=ways, dtype=torch.float32
        )
        metrics = learner.task_metrics(batch)
        assert metrics["nll"].shape == metrics["accuracy"].shape == (3,)
        assert torch.isfinite(metrics["nll"]).all()
        predictor = learner.adapt(batch.support_x[0], batch.support_y[0])
        assert predictor(batch.query_x[0]).shape == (ways * 4, ways)


def blob_batch(tasks: int, ways: int, shots: int, queries: int, g: torch.Generator) -> TaskBatch:
    """Classes differ only in 2 of 16 pixels; the other 14 carry larger noise.

    A random embedding mixes the noise into every feature, so it is near chance; an embedding
    that learns to look at the two informative pixels separates the classes.
    """
    n = shots + queries
    means = torch.zeros(tasks, ways, SIDE * SIDE)
    means[..., :2] = 3.0 * torch.randn(tasks, ways, 2, generator=g)
    noise = torch.randn(tasks, ways, n, SIDE * SIDE, generator=g)
    noise[..., :2] *= 0.3
    noise[..., 2:] *= 3.0
    x = (means.unsqueeze(2) + noise).reshape(tasks, ways, n, 1, SIDE, SIDE)
    y = torch.arange(ways).view(1, ways, 1).expand(tasks, ways, n)
    sx, qx = x[:, :, :shots].flatten(1, 2), x[:, :, shots:].flatten(1, 2)
    sy, qy = y[:, :, :shots].flatten(1, 2), y[:, :, shots:].flatten(1, 2)
    return TaskBatch(sx, sy, qx, qy)


def test_meta_training_learns_a_separable_task_family() -> None:
    g = torch.Generator().manual_seed(0)
    learner = ProtoNet(mlp_embedding(seed=0, dtype=torch.float32, out=8))
    held_out = blob_batch(tasks=50, ways=5, shots=1, queries=5, g=g)
    before = learner.task_metrics(held_out)["accuracy"].mean().item()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        learner.meta_loss(blob_batch(tasks=8, ways=5, shots=1, queries=5, g=g)).loss.backward()
        opt.step()
    after = learner.task_metrics(held_out)["accuracy"].mean().item()
    # Chance is 0.2.
    assert after > 0.6, (before, after)
    assert after > before + 0.2, (before, after)


def test_adapt_predictor_agrees_with_task_metrics() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(1, hidden=8, image_size=16))
    batch = random_batch(tasks=2, ways=3, shots=2, queries=4, seed=3, dtype=torch.float32, side=16)
    task = batch[0]
    predictor = learner.adapt(task.support_x, task.support_y)
    logits = predictor(task.query_x)
    proba = predictor.predict_proba(task.query_x)
    torch.testing.assert_close(proba.sum(dim=-1), torch.ones(len(task.query_y)))
    assert torch.equal(predictor.predict(task.query_x), logits.argmax(dim=-1))
    accuracy = (predictor.predict(task.query_x) == task.query_y).float().mean()
    metrics = learner.task_metrics(batch[0:1])
    torch.testing.assert_close(accuracy, metrics["accuracy"][0])
    torch.testing.assert_close(
        F.cross_entropy(logits, task.query_y), metrics["nll"][0], rtol=1e-5, atol=1e-5
    )


def test_unknown_distance_names_the_options() -> None:
    with pytest.raises(ValueError, match=r"euclidean.*cosine.*'manhattan'"):
        ProtoNet(nn.Flatten(), distance="manhattan")


@pytest.mark.parametrize(
    ("support_y", "match"),
    [
        ([[0, 1, 2], [0, 1, 1]], "same ways for all tasks"),  # task 1 lacks class 2
        ([[1, 2, 3], [1, 2, 3]], "0..ways-1"),  # labels do not start at 0
        ([[0, 1, -1], [0, 1, 2]], "0..ways-1"),  # negative label
        ([[0, 1, 9], [0, 1, 2]], "0..ways-1"),  # label beyond the support size
    ],
)
def test_inconsistent_support_labels_raise(support_y, match: str) -> None:
    learner = ProtoNet(mlp_embedding())
    batch = random_batch(tasks=2, ways=3, shots=1, queries=1, seed=0)
    bad = TaskBatch(batch.support_x, torch.tensor(support_y), batch.query_x, batch.query_y)
    with pytest.raises(ValueError, match=re.escape(match)):
        learner.meta_loss(bad)
    with pytest.raises(ValueError, match=re.escape(match)):
        learner.task_metrics(bad)


def test_bad_query_labels_and_label_dtype_raise() -> None:
    learner = ProtoNet(mlp_embedding())
    batch = random_batch(tasks=2, ways=3, shots=1, queries=1, seed=0)
    bad_query = TaskBatch(batch.support_x, batch.support_y, batch.query_x, batch.query_y + 1)
    with pytest.raises(ValueError, match=re.escape("query labels must lie in 0..2")):
        learner.meta_loss(bad_query)
    float_labels = TaskBatch(
        batch.support_x, batch.support_y.double(), batch.query_x, batch.query_y
    )
    with pytest.raises(ValueError, match="integer class labels"):
        learner.meta_loss(float_labels)
    with pytest.raises(ValueError, match="one task without a task dimension"):
        learner.adapt(batch.support_x, batch.support_y)
    with pytest.raises(ValueError, match=re.escape("0..ways-1")):
        learner.adapt(batch.support_x[0], torch.tensor([0, 2, 2]))
