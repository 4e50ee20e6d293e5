"""vmap and loop batching give the same numbers; the automatic choice follows the model."""

from __future__ import annotations

import pytest
import torch
from conftest import image_batch, regression_batch, small_conv_net, small_mlp
from torch import nn
from torch.func import functional_call

from fastadapt.algorithms.maml import MAML
from fastadapt.nn.batching import (
    call_over_tasks,
    expand_to_tasks,
    map_over_tasks,
    resolve_batch_mode,
)
from fastadapt.nn.conv4 import Conv4
from fastadapt.nn.resnet12 import ResNet12
from fastadapt.tasks.task import TaskBatch


def test_auto_mode_uses_vmap_for_mlps_and_a_loop_for_convolutions():
    assert resolve_batch_mode(small_mlp()) == "vmap"
    assert resolve_batch_mode(small_conv_net()) == "loop"
    assert resolve_batch_mode(small_conv_net(), "vmap") == "vmap"
    with pytest.raises(ValueError, match="batch mode must be one of"):
        resolve_batch_mode(small_mlp(), "parallel")


@pytest.mark.parametrize(
    ("make_model", "make_batch"),
    [(small_mlp, regression_batch), (small_conv_net, image_batch)],
)
def test_map_over_tasks_modes_agree(make_model, make_batch):
    model, batch = make_model(), make_batch(dtype=torch.float32)
    params = expand_to_tasks(dict(model.named_parameters()), batch.num_tasks)

    def forward(p, x):
        return functional_call(model, p, (x,))

    by_vmap = map_over_tasks(forward, params, batch.support_x, mode="vmap")
    by_loop = map_over_tasks(forward, params, batch.support_x, mode="loop")
    assert torch.allclose(by_vmap, by_loop, atol=1e-6)


def _conv4() -> nn.Module:
    return Conv4(hidden=8, ways=3, image_size=8, blocks=2)


def _resnet12() -> nn.Module:
    return ResNet12(1, (4, 4, 4, 4), 16, ways=3, track_running_stats=False)


def _image_batch_16(dtype: torch.dtype) -> TaskBatch:
    """:func:`image_batch` at 16x16, the smallest input of ResNet-12's four pools."""
    batch = image_batch(dtype=dtype)

    def upsample(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(2, -1).repeat_interleave(2, -2)

    return TaskBatch(
        upsample(batch.support_x), batch.support_y, upsample(batch.query_x), batch.query_y
    )


@pytest.mark.parametrize(
    ("make_model", "make_batch", "problem"),
    [
        (small_mlp, regression_batch, "regression"),
        (small_conv_net, image_batch, "classification"),
        (_conv4, image_batch, "classification"),
        (_resnet12, _image_batch_16, "classification"),
    ],
)
def test_meta_loss_and_metrics_agree_between_modes(make_model, make_batch, problem):
    model, batch = make_model(), make_batch(dtype=torch.float32)
    results = {}
    for mode in ("vmap", "loop"):
        learner = MAML(
            model,
            problem=problem,
            inner_steps=2,
            inner_lr=0.1,
            batch_mode=mode,
            report_steps=[0, 1, 3],
        )
        loss = learner.meta_loss(batch).loss
        results[mode] = (
            loss,
            torch.autograd.grad(loss, list(model.parameters())),
            learner.task_metrics(batch),
        )
    (loss_v, grads_v, metrics_v), (loss_l, grads_l, metrics_l) = results["vmap"], results["loop"]
    assert torch.allclose(loss_v, loss_l, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(grads_v, grads_l))
    assert metrics_v.keys() == metrics_l.keys()
    assert all(torch.allclose(metrics_v[k], metrics_l[k], atol=1e-5) for k in metrics_v)


class _Residual(nn.Module):
    """A module with its own forward, which the vectorised path hands to torch.vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6)

    def forward(self, x):
        return x + torch.tanh(self.inner(x))


def _mixed_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(3, 6, bias=False),
        nn.GELU(),
        _Residual(),
        nn.Linear(6, 6),
        nn.ReLU(),
        nn.Linear(6, 2),
    )


@pytest.mark.parametrize(
    "adapted",
    [
        None,  # every parameter per task
        ["5.weight", "5.bias"],  # ANIL: shared body, per-task head
        ["3.bias", "2.inner.weight"],  # a shared weight with a per-task bias, a vmapped child
        [],  # nothing per task
    ],
)
@pytest.mark.parametrize("input_shape", [(4, 3), (4, 2, 3)])
def test_vectorised_call_matches_a_loop_for_any_split_of_parameters(adapted, input_shape):
    model = _mixed_model()
    tasks = 3
    names = [n for n, _ in model.named_parameters()] if adapted is None else adapted
    shared = dict(model.named_parameters())
    task_params = {
        n: shared[n].detach().unsqueeze(0).repeat(tasks, *[1] * shared[n].dim())
        + 0.1 * torch.randn(tasks, *shared[n].shape)
        for n in names
    }
    x = torch.randn(tasks, *input_shape)
    vectorised = call_over_tasks(model, task_params, x, mode="vmap")
    looped = call_over_tasks(model, task_params, x, mode="loop")
    by_hand = torch.stack(
        [
            functional_call(model, {n: p[i] for n, p in task_params.items()}, (x[i],))
            for i in range(tasks)
        ]
    )
    assert torch.allclose(vectorised, by_hand, atol=1e-6)
    assert torch.allclose(looped, by_hand, atol=1e-6)


def test_conv4_shapes_and_auto_mode():
    from fastadapt.nn.conv4 import Conv4

    assert Conv4(ways=5)(torch.randn(2, 1, 28, 28)).shape == (2, 5)
    assert Conv4(3, image_size=84).embedding_size == 1600
    assert resolve_batch_mode(Conv4(ways=5)) == "loop"
    # Per call: a handful of images per task goes through vmap, a larger batch loops.
    assert resolve_batch_mode(Conv4(ways=5), "auto", torch.zeros(32, 5, 1, 28, 28)) == "vmap"
    assert resolve_batch_mode(Conv4(ways=5), "auto", torch.zeros(8, 75, 1, 28, 28)) == "loop"
    assert resolve_batch_mode(Conv4(ways=5), "loop", torch.zeros(32, 5, 1, 28, 28)) == "loop"
    with pytest.raises(ValueError, match="image_size must be at least 16"):
        Conv4(image_size=8)


@pytest.mark.parametrize(
    "adapted",
    [
        None,  # every parameter per task
        ["0.0.weight", "0.1.bias", "1.0.weight"],  # a folded block half per task, half shared
        ["5.weight", "5.bias"],  # ANIL: the whole body shared
    ],
)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"downsample": "stride"},
        {"in_channels": 3},
        {"ceil_mode": True, "image_size": 27},  # odd input: the plain block, under vmap
    ],
)
def test_conv4_over_tasks_matches_a_loop_with_second_order_gradients(adapted, options):
    torch.manual_seed(0)
    model = Conv4(hidden=6, ways=3, **{"image_size": 28, **options}).double()
    tasks, channels, side = 3, options.get("in_channels", 1), options.get("image_size", 28)
    shared = dict(model.named_parameters())
    names = list(shared) if adapted is None else adapted
    task_params = {
        n: (
            shared[n].detach() + 0.1 * torch.randn(tasks, *shared[n].shape, dtype=torch.float64)
        ).requires_grad_()
        for n in names
    }
    x = torch.rand(tasks, 4, channels, side, side, dtype=torch.float64)
    results = []
    for mode in ("vmap", "loop"):
        out = call_over_tasks(model, task_params, x, mode=mode)
        grads = torch.autograd.grad(out.pow(2).sum(), list(task_params.values()), create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), list(task_params.values()))
        results.append((out, grads, second))
    (out, grads, second), (looped, looped_grads, looped_second) = results
    assert torch.allclose(out, looped, atol=1e-10)
    for mine, reference in zip((*grads, *second), (*looped_grads, *looped_second), strict=True):
        assert torch.allclose(mine, reference, atol=1e-8)


def test_conv4_over_tasks_refuses_inputs_without_a_task_dimension():
    with pytest.raises(ValueError, match=r"expects images \[tasks, n, 1, 28, 28\]"):
        call_over_tasks(Conv4(ways=5), {}, torch.zeros(4, 1, 28, 28), mode="vmap")
