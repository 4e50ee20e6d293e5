"""Reptile: the update against hand-computed examples, evaluation, and bad arguments."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_RUN
from torch import nn

from fastadapt.algorithms.reptile import Reptile
from fastadapt.config import load_preset
from fastadapt.engine.run import train_run
from fastadapt.tasks.task import TaskBatch


def _two_tasks() -> TaskBatch:
    """Task 1: y = 3 at x = 1; task 2: y = 2 at x = 2 (each point twice: support and query)."""
    x = torch.tensor([[[1.0]], [[2.0]]])
    y = torch.tensor([[[3.0]], [[2.0]]])
    return TaskBatch(x, y, x.clone(), y.clone())


def _line(w: float) -> nn.Linear:
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w)
    return model


def _reptile_step(learner: Reptile, batch: TaskBatch, outer_lr: float) -> float:
    optimizer = torch.optim.SGD(learner.parameters(), lr=outer_lr)
    learner.meta_loss(batch).loss.backward()
    optimizer.step()
    return learner.model.weight.item()


def test_sgd_update_matches_hand_computation() -> None:
    # Loss (w x - y)^2, gradient 2 x (w x - y). From w = 1 with α = 0.1, two steps:
    #   task 1 (x=1, y=3): g = -4 → w = 1.4; g = -3.2 → w = 1.72.
    #   task 2 (x=2, y=2): g = 8 (w - 1) = 0 → w stays 1.
    # Reptile with ε = 0.5: θ ← 1 + 0.5 · ((1.72 - 1) + (1 - 1)) / 2 = 1.18.
    learner = Reptile(_line(1.0), problem="regression", inner_steps=2, inner_lr=0.1,
                      inner_optimizer="sgd")  # fmt: skip
    assert _reptile_step(learner, _two_tasks(), outer_lr=0.5) == pytest.approx(1.18)


def test_adam_with_zero_momentum_takes_normalised_steps() -> None:
    # Adam with β1 = 0: the first step is lr · g / (|g| + ε), i.e. lr · sign(g) here:
    # task 1 moves to 1 + 0.1 = 1.1, task 2 (g = 0) stays at 1; ε_outer = 1: θ = 1.05.
    learner = Reptile(_line(1.0), problem="regression", inner_steps=1, inner_lr=0.1,
                      inner_optimizer="adam")  # fmt: skip
    assert _reptile_step(learner, _two_tasks(), outer_lr=1.0) == pytest.approx(1.05, abs=1e-6)


def _pull_tasks() -> TaskBatch:
    """Two tasks at x = 1 with targets 3 and 2: from w = 1 both gradients are negative."""
    x = torch.tensor([[[1.0]], [[1.0]]])
    y = torch.tensor([[[3.0]], [[2.0]]])
    return TaskBatch(x, y, x.clone(), y.clone())


def _one_adam_step(inner_state: str) -> Reptile:
    """From w = 1: one inner Adam step (β1 = 0) of lr 0.1 per task, training and evaluation."""
    return Reptile(_line(1.0), problem="regression", inner_steps=1, inner_lr=0.1,
                   inner_optimizer="adam", inner_state=inner_state)  # fmt: skip


def test_persistent_adam_state_carries_over_to_the_next_task() -> None:
    # One Adam step (β1 = 0, β2 = 0.999) per task, lr 0.1, from w = 1.
    # Task 1: g = 2 (1 - 3) = -4, v = 0.001 · 16, t = 1, v̂ = 16: w = 1 + 0.1 · 4 / 4 = 1.1.
    # Task 2: g = 2 (1 - 2) = -2. Per task: v̂ = 4, w = 1.1 as well, so θ ← 1.1 (ε = 1).
    # Persistent: v = 0.999 · 0.016 + 0.001 · 4, t = 2, v̂ = v / (1 - 0.999²),
    # w = 1 + 0.1 · 2 / √v̂, and θ ← the mean of the two tasks' weights.
    v = 0.999 * 0.016 + 0.001 * 4
    task_2 = 1 + 0.1 * 2 / (v / (1 - 0.999**2)) ** 0.5
    for state, expected in (("per_task", 1.1), ("persistent", (1.1 + task_2) / 2)):
        learner = _one_adam_step(state)
        assert _reptile_step(learner, _pull_tasks(), outer_lr=1.0) == pytest.approx(expected)
    assert learner.get_buffer("inner_adam_steps").item() == 2
    assert learner.get_buffer("inner_second_moment_0").item() == pytest.approx(v)


def test_evaluation_reads_the_persistent_state_without_changing_it() -> None:
    learner = _one_adam_step("persistent")
    learner.meta_loss(_pull_tasks())  # two training tasks: v and t as in the test above
    state = {name: b.clone() for name, b in learner.named_buffers()}
    # From the stored state (v = 0.019984, t = 2) a gradient of -4 at w = 1 moves w by
    # 0.1 · 4 / √v̂, not by the fresh state's 0.1.
    v = 0.999 * (0.999 * 0.016 + 0.001 * 4) + 0.001 * 16
    expected = 1 + 0.1 * 4 / (v / (1 - 0.999**3)) ** 0.5
    predictor = learner.adapt(torch.tensor([[1.0]]), torch.tensor([[3.0]]))
    assert predictor.predict(torch.tensor([[1.0]])).item() == pytest.approx(expected)
    for name, buffer in learner.named_buffers():
        assert torch.equal(buffer, state[name])
    restored = _one_adam_step("persistent")
    restored.load_state_dict(learner.state_dict())
    again = restored.adapt(torch.tensor([[1.0]]), torch.tensor([[3.0]]))
    assert (
        again.predict(torch.tensor([[1.0]])).item()
        == predictor.predict(torch.tensor([[1.0]])).item()
    )


def test_metrics_and_surrogate_gradient_direction() -> None:
    learner = Reptile(_line(1.0), problem="regression", inner_steps=2, inner_lr=0.1,
                      inner_optimizer="sgd")  # fmt: skip
    output = learner.meta_loss(_two_tasks())
    (grad,) = torch.autograd.grad(output.loss, [learner.model.weight])
    assert grad.item() == pytest.approx(-0.36)  # −mean(φ̃ − θ)
    # The last inner step's loss: task 1 at w = 1.4, (1.4 - 3)^2; task 2 at w = 1, 0.
    assert output.metrics["mse"].item() == pytest.approx((1.4 - 3) ** 2 / 2)


def test_adapt_fine_tunes_on_the_support_set_only() -> None:
    learner = Reptile(_line(1.0), problem="regression", inner_steps=2, inner_lr=0.1,
                      inner_optimizer="sgd", eval_inner_steps=1)  # fmt: skip
    predictor = learner.adapt(torch.tensor([[1.0]]), torch.tensor([[3.0]]))
    assert predictor.predict(torch.tensor([[1.0]])).item() == pytest.approx(1.4)
    assert learner.model.weight.item() == 1.0  # θ itself is untouched


def test_meta_training_lowers_the_adapted_query_loss() -> None:
    """A few Reptile steps on sinusoid-like tasks lower the loss after adaptation."""
    from fastadapt import MLP
    from fastadapt.tasks.sinusoid import SinusoidTasks

    torch.manual_seed(0)
    tasks = SinusoidTasks(shots=10, queries=10, seed=0)
    learner = Reptile(MLP(1, [40, 40], 1), problem="regression", inner_steps=5, inner_lr=0.02,
                      inner_optimizer="sgd", inner_batch=10)  # fmt: skip
    test = SinusoidTasks(shots=10, queries=10, seed=0, split="test").batch(range(20))
    before = learner.task_metrics(test)["mse"].mean()
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    for step in range(150):
        optimizer.zero_grad()
        learner.meta_loss(tasks.batch(range(step * 5, step * 5 + 5))).loss.backward()
        optimizer.step()
    assert learner.task_metrics(test)["mse"].mean() < 0.7 * before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inner_optimizer": "rmsprop"}, "inner_optimizer must be one of"),
        ({"inner_steps": 0}, "inner_steps must be positive"),
        ({"inner_lr": -1.0}, "inner_lr must be positive"),
        ({"eval_inner_batch": 0}, "eval_inner_batch must be positive"),
        ({"inner_state": "global"}, "inner_state must be one of"),
        ({"inner_state": "persistent", "inner_optimizer": "sgd"}, "use inner_optimizer='adam'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Reptile(_line(1.0), **kwargs)


def test_reptile_preset_trains_and_evaluates(fake_omniglot, tmp_path) -> None:
    settings = [*TINY_RUN, "task.queries=3", "eval.inner_steps=3", "eval.inner_batch=3"]
    config = load_preset("reptile-omniglot-5way-1shot").override(settings)
    assert config.algorithm.inner_state == "persistent"  # the authors' inner Adam
    record = train_run(config, tmp_path / "run", progress=False)
    assert record["protocol"]["algorithm"] == "reptile"
    assert record["protocol"]["inner_steps"] == 3 and record["protocol"]["inner_batch"] == 3
    assert 0.0 <= record["metrics"]["accuracy"]["mean"] <= 1.0
