"""Prototypical and Matching Networks: hand-worked examples, support-order (in)variance,
checkpoint round trips and non-finite embeddings through the trainer."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY_RUN
from torch import nn

from fastadapt import Conv4, MatchingNet, ProtoNet, TaskBatch
from fastadapt.config import load_preset
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.run import evaluate_run, train_run
from fastadapt.errors import NonFiniteLossError


def _points(support: list[list[float]], labels: list[int], query: list[list[float]]):
    """One task of 2-D points, for an identity embedding."""
    as_tensor = torch.tensor
    return (
        as_tensor([support], dtype=torch.float64),
        as_tensor([labels]),
        as_tensor([query], dtype=torch.float64),
    )


def test_prototypes_and_probabilities_by_hand() -> None:
    # Class 0 has (0, 0) and (2, 0): prototype (1, 0). Class 1 has (0, 2): prototype (0, 2).
    # Query (1, 1): squared distances 1 and 2, so p(0) = e^-1 / (e^-1 + e^-2) = 1 / (1 + e^-1).
    # Query (0, 3): squared distances 1 + 9 = 10 and 1.
    support_x, support_y, query_x = _points([[0, 0], [2, 0], [0, 2]], [0, 0, 1], [[1, 1], [0, 3]])
    learner = ProtoNet(nn.Identity())
    predictor = learner.adapt(support_x[0], support_y[0])
    torch.testing.assert_close(
        predictor(query_x[0]), torch.tensor([[-1.0, -2.0], [-10.0, -1.0]], dtype=torch.float64)
    )
    p = predictor.predict_proba(query_x[0])
    assert p[0, 0].item() == pytest.approx(1 / (1 + math.exp(-1)))
    # Cosine: (1, 1) is at 45 degrees to both prototypes: logits cos - 1 = 1/√2 - 1 for both.
    cosine = ProtoNet(nn.Identity(), distance="cosine").adapt(support_x[0], support_y[0])
    expected = 1 / math.sqrt(2) - 1
    torch.testing.assert_close(cosine(query_x[:, :1][0]), torch.full((1, 2), expected).double())


def test_matching_attention_by_hand() -> None:
    # Query (1, 0); supports (1, 0) of class 0, (0, 1) and (1, 1) of class 1: cosines 1, 0 and
    # 1/√2; attention a_i = softmax over the cosines (Eq. 2), ŷ_k = sum of a_i over class k.
    support_x, support_y, query_x = _points([[1, 0], [0, 1], [1, 1]], [0, 1, 1], [[1, 0]])
    predictor = MatchingNet(nn.Identity()).adapt(support_x[0], support_y[0])
    e = [math.exp(1.0), math.exp(0.0), math.exp(1 / math.sqrt(2))]
    expected = [e[0] / sum(e), (e[1] + e[2]) / sum(e)]
    torch.testing.assert_close(
        predictor.predict_proba(query_x[0]), torch.tensor([expected], dtype=torch.float64)
    )


def _conv4_batch(seed: int) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    support_x = torch.rand(1, 6, 1, 28, 28, generator=g, dtype=torch.float64)
    query_x = torch.rand(1, 9, 1, 28, 28, generator=g, dtype=torch.float64)
    labels = torch.tensor([[0, 1, 2, 0, 1, 2]])
    return TaskBatch(support_x, labels, query_x, torch.tensor([[0, 1, 2] * 3]))


def _permuted_support(batch: TaskBatch, order: list[int]) -> TaskBatch:
    return TaskBatch(
        batch.support_x[:, order], batch.support_y[:, order], batch.query_x, batch.query_y
    )


@pytest.mark.parametrize(
    "make", [lambda m: ProtoNet(m), lambda m: MatchingNet(m)], ids=["protonet", "matching"]
)
def test_predictions_do_not_depend_on_support_order(make) -> None:
    torch.manual_seed(0)
    learner = make(Conv4(1, hidden=8).double())
    batch = _conv4_batch(0)
    shuffled = _permuted_support(batch, [4, 2, 0, 5, 1, 3])
    logits = learner._logits if isinstance(learner, MatchingNet) else None
    if logits is not None:
        original = logits(batch.support_x, batch.support_y, batch.query_x)
        permuted = logits(shuffled.support_x, shuffled.support_y, shuffled.query_x)
    else:
        original = learner.adapt(batch.support_x[0], batch.support_y[0])(batch.query_x[0])
        permuted = learner.adapt(shuffled.support_x[0], shuffled.support_y[0])(batch.query_x[0])
    torch.testing.assert_close(original, permuted, rtol=1e-10, atol=1e-10)


def test_full_context_embeddings_read_the_support_set_as_a_sequence() -> None:
    """Vinyals et al. (Appendix A.2) embed the support set with a bidirectional LSTM over it as
    a sequence: g(x_i, S) depends on the order of S. The query's attention LSTM reads g(S)
    through a softmax over all of it, which does not depend on that order."""
    torch.manual_seed(0)
    learner = MatchingNet(Conv4(1, hidden=8).double(), embedding_dim=8, fce=True).double()
    batch = _conv4_batch(1)
    order = [4, 2, 0, 5, 1, 3]
    g0, f0 = learner._embed(batch.support_x, batch.query_x)
    g = learner._context_support(g0)
    g_of_permuted = learner._context_support(g0[:, order])
    assert not torch.allclose(g_of_permuted, g[:, order])
    torch.testing.assert_close(
        learner._context_query(f0, g[:, order]), learner._context_query(f0, g), rtol=1e-10, atol=0
    )


# --------------------------------------------------------------------- through the trainer


@pytest.mark.parametrize("preset", ["protonet-omniglot-1shot", "matching-omniglot-1shot"])
def test_trained_run_evaluates_identically_from_its_checkpoint(
    preset: str, fake_omniglot, tmp_path
) -> None:
    out = tmp_path / "run"
    trained = train_run(load_preset(preset).override(TINY_RUN), out, progress=False)
    again = evaluate_run(out)
    assert again["metrics"] == trained["metrics"]


def test_non_finite_embedding_stops_training_and_keeps_the_last_good_checkpoint(
    fake_omniglot, tmp_path, monkeypatch
) -> None:
    calls = {"n": 0}
    original = Conv4.forward

    def nan_from_the_fifth_call(self, x):  # two calls per step: support, then query
        calls["n"] += 1
        out = original(self, x)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(Conv4, "forward", nan_from_the_fifth_call)
    out = tmp_path / "run"
    config = load_preset("protonet-omniglot-1shot").override([*TINY_RUN, "train.val_every=100"])
    with pytest.raises(NonFiniteLossError, match="at step 3"):
        train_run(config, out, progress=False)
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    assert checkpoint.step == 2
    assert all(torch.isfinite(t).all() for t in checkpoint.learner.values())
