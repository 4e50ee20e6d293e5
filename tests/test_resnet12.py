"""ResNet-12: shapes, residual structure, and use as an embedding by every metric learner."""

from __future__ import annotations

import pytest
import torch

from fastadapt import MatchingNet, ProtoNet, ResNet12, TaskBatch
from fastadapt.nn.resnet12 import ResidualBlock

SMALL = (4, 6, 8, 10)


def test_embedding_sizes_for_both_pools_and_the_head() -> None:
    x = torch.rand(3, 3, 32, 32)
    assert ResNet12(widths=SMALL, image_size=32)(x).shape == (3, 10)
    flat = ResNet12(widths=SMALL, image_size=32, pool="flatten")
    assert flat.embedding_size == 10 * 2 * 2
    assert flat(x).shape == (3, 40)
    assert ResNet12(widths=SMALL, image_size=32, ways=5)(x).shape == (3, 5)
    assert ResNet12().embedding_size == 640


def test_block_adds_the_shortcut_before_activation_and_pool() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(2, 3, track_running_stats=False)
    x = torch.randn(2, 2, 8, 8)
    expected = torch.nn.functional.max_pool2d(
        torch.nn.functional.leaky_relu(block.body(x) + block.shortcut(x), 0.1), 2
    )
    torch.testing.assert_close(block(x), expected)


def test_eval_mode_uses_running_statistics() -> None:
    torch.manual_seed(0)
    model = ResNet12(widths=SMALL, image_size=16)
    x = torch.rand(4, 3, 16, 16)
    model(x)  # one training-mode pass updates the running statistics
    model.eval()
    alone = model(x[:1])
    together = model(x)[:1]
    torch.testing.assert_close(alone, together)  # no batch statistics: examples independent


@pytest.mark.parametrize("learner_class", [ProtoNet, MatchingNet])
def test_metric_learners_train_on_resnet12(learner_class: type) -> None:
    torch.manual_seed(0)
    model = ResNet12(widths=SMALL, image_size=16)
    if learner_class is MatchingNet:
        learner = MatchingNet(model, embedding_dim=model.embedding_size)
    else:
        learner = ProtoNet(model)
    x = torch.rand(1, 12, 3, 16, 16)
    y = torch.arange(3).repeat_interleave(4).unsqueeze(0)
    batch = TaskBatch(x[:, ::2], y[:, ::2], x[:, 1::2], y[:, 1::2])
    loss = learner.meta_loss(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"widths": (4, 4, 4)}, "four positive block widths"),
        ({"pool": "max"}, "pool must be one of"),
        ({"image_size": 8}, "at least 16"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResNet12(**kwargs)


def test_wrong_input_shape_names_expected_and_given() -> None:
    with pytest.raises(ValueError, match=r"expects images \[n, 3, 32, 32\].*\(2, 1, 32, 32\)"):
        ResNet12(widths=SMALL, image_size=32)(torch.zeros(2, 1, 32, 32))
