"""Matching Networks: Eq. 1-2 against a naive loop, FCE batching, gradients, learning, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadapt.algorithms.matching import MatchingNet
from fastadapt.nn.conv4 import Conv4
from fastadapt.tasks.task import TaskBatch

DIM = 8
SIDE = 4  # images are 1 x 4 x 4
SIGNAL = 4  # the first pixels carry the class; the rest is noise


def tiny_embedding(dim: int = DIM) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, dim), nn.Tanh())


def make_batch(
    tasks: int,
    ways: int,
    shots: int,
    queries: int,
    *,
    seed: int,
    noise: float = 1.0,
    dtype: torch.dtype = torch.float64,
) -> TaskBatch:
    """Each task draws ``ways`` random class prototypes in the first SIGNAL pixels; the other
    pixels are Gaussian noise of scale ``noise``. Support labels come in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(tasks, ways, SIGNAL, generator=g, dtype=dtype)

    def draw(labels: torch.Tensor) -> torch.Tensor:
        n = labels.shape[1]
        signal = protos.gather(1, labels.unsqueeze(-1).expand(-1, -1, SIGNAL))
        signal = signal + 0.1 * torch.randn(tasks, n, SIGNAL, generator=g, dtype=dtype)
        rest = noise * torch.randn(tasks, n, SIDE * SIDE - SIGNAL, generator=g, dtype=dtype)
        return torch.cat([signal, rest], dim=-1).reshape(tasks, n, 1, SIDE, SIDE)

    support_y = torch.stack(
        [torch.arange(ways).repeat(shots)[torch.randperm(ways * shots, generator=g)]]
        + [torch.arange(ways).repeat(shots) for _ in range(tasks - 1)]
    )
    query_y = torch.arange(ways).repeat(queries).expand(tasks, -1).contiguous()
    return TaskBatch(draw(support_y), support_y, draw(query_y), query_y)


def model(fce: bool, dtype: torch.dtype = torch.float64, **kwargs) -> MatchingNet:
    torch.manual_seed(0)
    return MatchingNet(tiny_embedding(), embedding_dim=DIM, fce=fce, **kwargs).to(dtype)


def naive_probabilities(net: MatchingNet, batch: TaskBatch, ways: int) -> torch.Tensor:
    """Eq. 1-2 literally: for each task and query, a softmax over cosine similarities."""
    out = torch.zeros(batch.num_tasks, batch.query_x.shape[1], ways, dtype=torch.float64)
    for t in range(batch.num_tasks):
        emb_s = net.embedding(batch.support_x[t]).flatten(1)
        emb_q = net.embedding(batch.query_x[t]).flatten(1)
        for j in range(emb_q.shape[0]):
            sims = torch.stack(
                [F.cosine_similarity(emb_q[j], emb_s[i], dim=0) for i in range(emb_s.shape[0])]
            )
            attention = sims.exp() / sims.exp().sum()
            for i in range(emb_s.shape[0]):
                out[t, j, batch.support_y[t, i]] += attention[i]
    return out


def test_prediction_matches_naive_loop_without_fce() -> None:
    batch = make_batch(3, ways=3, shots=2, queries=2, seed=1)
    net = model(fce=False)
    logits = net._logits(batch.support_x, batch.support_y, batch.query_x)
    with torch.no_grad():
        expected = naive_probabilities(net, batch, ways=3)
    torch.testing.assert_close(logits.exp(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(3, 6, dtype=torch.float64))


def test_support_cosine_is_the_cosine_times_the_query_norm() -> None:
    # c(f, g_i) = fᵀg_i / |g_i| = |f| · cos(f, g_i): the attention is the cosine attention at
    # inverse temperature |f|, so 1-shot predictions keep the same argmax.
    batch = make_batch(2, ways=3, shots=1, queries=2, seed=3)
    net = model(fce=False, similarity="support_cosine")
    logits = net._logits(batch.support_x, batch.support_y, batch.query_x)
    with torch.no_grad():
        f = net.embedding(batch.query_x.flatten(0, 1)).reshape(2, 6, DIM)
        g = net.embedding(batch.support_x.flatten(0, 1)).reshape(2, 3, DIM)
        cosine = F.cosine_similarity(f.unsqueeze(2), g.unsqueeze(1), dim=-1)  # [B, Q, S]
        scores = cosine * f.norm(dim=-1, keepdim=True)
        per_class = torch.zeros(2, 6, 3, dtype=torch.float64)
        per_class.scatter_add_(2, batch.support_y.unsqueeze(1).expand(-1, 6, -1), scores.exp())
    torch.testing.assert_close(logits.exp(), per_class / per_class.sum(-1, keepdim=True))
    plain = model(fce=False)._logits(batch.support_x, batch.support_y, batch.query_x)
    assert torch.equal(logits.argmax(-1), plain.argmax(-1))
    assert logits.exp().amax(-1).mean() > plain.exp().amax(-1).mean()  # |f| > 1: sharper


@pytest.mark.parametrize("read_steps", [None, 2])
def test_fce_batched_equals_task_by_task(read_steps: int | None) -> None:
    batch = make_batch(4, ways=3, shots=2, queries=2, seed=2)
    net = model(fce=True, read_steps=read_steps)
    batched = net._logits(batch.support_x, batch.support_y, batch.query_x)
    single = torch.cat(
        [
            net._logits(
                batch.support_x[t : t + 1], batch.support_y[t : t + 1], batch.query_x[t : t + 1]
            )
            for t in range(batch.num_tasks)
        ]
    )
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(batched.exp().sum(-1), torch.ones(4, 6, dtype=torch.float64))
    # FCE really changes the prediction (the LSTMs are in the path).
    plain = MatchingNet(net.embedding, embedding_dim=DIM)
    assert not torch.allclose(
        batched, plain._logits(batch.support_x, batch.support_y, batch.query_x)
    )


@pytest.mark.parametrize("fce", [False, True])
def test_gradients_reach_every_parameter_and_match_task_loop(fce: bool) -> None:
    batch = make_batch(3, ways=3, shots=2, queries=2, seed=3)
    net = model(fce=fce)
    params = [p for p in net.parameters() if p.requires_grad]
    out = net.meta_loss(batch)
    assert set(out.metrics) == {"loss", "accuracy"}
    assert all(not v.requires_grad for v in out.metrics.values())
    grads = torch.autograd.grad(out.loss, params)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    if fce:
        assert any(n.startswith("support_lstm") for n in names)
        assert any(n.startswith("query_lstm") for n in names)
    for name, gr in zip(names, grads):
        assert gr.abs().sum() > 0, f"no gradient reaches {name}"

    loop_loss = sum(net.meta_loss(batch[t : t + 1]).loss for t in range(3)) / 3
    torch.testing.assert_close(out.loss, loop_loss, rtol=1e-12, atol=1e-14)
    loop_grads = torch.autograd.grad(loop_loss, params)
    for name, a, b in zip(names, grads, loop_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("fce", [False, True])
def test_any_ways_and_shots_at_test_time(fce: bool) -> None:
    net = model(fce=fce)
    train = make_batch(2, ways=3, shots=2, queries=2, seed=4)
    net.meta_loss(train).loss.backward()
    for ways, shots in [(2, 1), (5, 3)]:
        batch = make_batch(3, ways=ways, shots=shots, queries=2, seed=5)
        metrics = net.task_metrics(batch)
        assert set(metrics) == {"nll", "accuracy", "calibration"}
        assert metrics["nll"].shape == metrics["accuracy"].shape == (3,)
        assert metrics["calibration"].shape == (3, 15, 3)
        assert torch.isfinite(metrics["nll"]).all()
        assert not metrics["nll"].requires_grad
        predictor = net.adapt(batch.support_x[0], batch.support_y[0])
        assert predictor(batch.query_x[0]).shape == (2 * ways, ways)


@pytest.mark.parametrize("fce", [False, True])
def test_learns_a_separable_task_family(fce: bool) -> None:
    # Noise pixels dominate the raw cosine, so an untrained embedding is close to chance;
    # the embedding has to learn to look at the signal pixels.
    net = model(fce=fce, dtype=torch.float32)
    evaluation = make_batch(
        32, ways=3, shots=2, queries=4, seed=100, noise=2.0, dtype=torch.float32
    )
    before = net.task_metrics(evaluation)["accuracy"].mean().item()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
    for step in range(40):
        batch = make_batch(8, ways=3, shots=2, queries=4, seed=step, noise=2.0, dtype=torch.float32)
        optimizer.zero_grad()
        net.meta_loss(batch).loss.backward()
        optimizer.step()
    after = net.task_metrics(evaluation)["accuracy"].mean().item()
    assert after > 0.75, (before, after)
    assert after > before + 0.2, (before, after)


@pytest.mark.parametrize("fce", [False, True])
def test_adapt_predictor(fce: bool) -> None:
    net = model(fce=fce)
    batch = make_batch(1, ways=4, shots=2, queries=3, seed=6)
    predictor = net.adapt(batch.support_x[0], batch.support_y[0])
    proba = predictor.predict_proba(batch.query_x[0])
    assert proba.shape == (12, 4)
    torch.testing.assert_close(proba.sum(-1), torch.ones(12, dtype=torch.float64))
    assert torch.equal(predictor.predict(batch.query_x[0]), proba.argmax(-1))
    expected = net._logits(batch.support_x, batch.support_y, batch.query_x)[0]
    torch.testing.assert_close(predictor(batch.query_x[0]), expected)


def test_conv4_embedding_smoke() -> None:
    torch.manual_seed(0)
    net = MatchingNet(Conv4(1, hidden=8), embedding_dim=8, fce=True, read_steps=3)
    batch = TaskBatch(
        torch.randn(2, 4, 1, 28, 28),
        torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]]),
        torch.randn(2, 2, 1, 28, 28),
        torch.tensor([[0, 1], [1, 0]]),
    )
    out = net.meta_loss(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fce=True needs embedding_dim"):
        MatchingNet(tiny_embedding(), fce=True)
    with pytest.raises(ValueError, match="read_steps must be a positive integer"):
        MatchingNet(tiny_embedding(), embedding_dim=DIM, fce=True, read_steps=0)
    with pytest.raises(ValueError, match="embedding_dim must be a positive integer"):
        MatchingNet(tiny_embedding(), embedding_dim=0, fce=True)
    with pytest.raises(ValueError, match="no effect without fce=True"):
        MatchingNet(tiny_embedding(), embedding_dim=DIM, read_steps=2)
    with pytest.raises(ValueError, match="similarity must be one of cosine, support_cosine"):
        MatchingNet(tiny_embedding(), similarity="dot")
    net = MatchingNet(tiny_embedding(), embedding_dim=DIM + 1)
    batch = make_batch(1, ways=2, shots=1, queries=1, seed=0, dtype=torch.float32)
    with pytest.raises(ValueError, match="pass embedding_dim=8"):
        net.meta_loss(batch)
    with pytest.raises(ValueError, match="integer class labels"):
        model(fce=False).adapt(batch.support_x[0], batch.support_y[0].float())
