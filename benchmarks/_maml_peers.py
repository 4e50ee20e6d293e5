"""One MAML meta-iteration written the way each peer library documents it, for any workload.

Shared by the MAML speed benchmarks (``sinusoid_speed.py``, ``maml_conv4_speed.py``). A
:class:`MamlWorkload` fixes the tasks, the model (as a plain ``nn.Module`` and as torchmeta's
``MetaModule``, both with the same initial weights), the loss and the learning rates; each
``build_*`` returns the timed step (inner SGD step per task, query loss averaged over the
meta-batch, ``backward()``, an outer Adam step) and a note. Every peer loops over tasks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from _interleaved import Impl, Step
from torch import nn

TaskTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""One task: support inputs, support targets, query inputs, query targets."""


@dataclass(frozen=True)
class MamlWorkload:
    """What every implementation of a benchmark shares."""

    tasks: list[TaskTensors]
    plain_model: Callable[[], nn.Module]  # with the shared initial weights
    meta_model: Callable[[], nn.Module]  # torchmeta's MetaModule twin, same weights
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    inner_lr: float
    outer_lr: float
    first_order: bool = False

    def adam(self, params: Any) -> torch.optim.Optimizer:
        """The peers' outer optimizer: plain Adam, as their documentation uses."""
        return torch.optim.Adam(params, lr=self.outer_lr)


def _meta_step(
    optimizer: torch.optim.Optimizer, tasks: list[TaskTensors], task_loss: Callable[..., Any]
) -> Step:
    """Average ``task_loss(*task)`` over the tasks, backward, one optimizer step."""

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        total = torch.zeros(())
        for task in tasks:
            total = total + task_loss(*task)
        loss = total / len(tasks)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def build_torch_func_loop(w: MamlWorkload) -> tuple[Step, str]:
    """Plain PyTorch: ``functional_call`` and ``autograd.grad``, a loop over tasks."""
    from torch.func import functional_call

    model = w.plain_model()
    names = [name for name, _ in model.named_parameters()]

    def task_loss(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
        params = dict(model.named_parameters())
        inner = w.loss(functional_call(model, params, (sx,)), sy)
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=not w.first_order)
        adapted = {n: params[n] - w.inner_lr * g for n, g in zip(names, grads, strict=True)}
        return w.loss(functional_call(model, adapted, (qx,)), qy)

    return _meta_step(w.adam(model.parameters()), w.tasks, task_loss), "functional_call loop"


def build_torchmeta(w: MamlWorkload) -> tuple[Step, str]:
    from torchmeta.utils.gradient_based import gradient_update_parameters

    model = w.meta_model()

    def task_loss(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
        params = gradient_update_parameters(
            model, w.loss(model(sx), sy), step_size=w.inner_lr, first_order=w.first_order
        )
        return w.loss(model(qx, params=params), qy)

    return _meta_step(w.adam(model.parameters()), w.tasks, task_loss), "gradient_update_parameters"


def build_learn2learn(w: MamlWorkload) -> tuple[Step, str]:
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(w.plain_model(), lr=w.inner_lr, first_order=w.first_order)

    def task_loss(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
        learner = maml.clone()
        learner.adapt(w.loss(learner(sx), sy))
        return w.loss(learner(qx), qy)

    return _meta_step(w.adam(maml.parameters()), w.tasks, task_loss), "MAML.clone + adapt"


def build_higher(w: MamlWorkload) -> tuple[Step, str]:
    import higher

    model = w.plain_model()
    inner_optimizer = torch.optim.SGD(model.parameters(), lr=w.inner_lr)

    def first_order(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        return [g.detach() for g in grads]  # θ' = θ − α·sg(∇): first-order MAML

    callback = first_order if w.first_order else None

    def task_loss(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
        context = higher.innerloop_ctx(model, inner_optimizer, copy_initial_weights=False)
        with context as (fmodel, diffopt):
            diffopt.step(w.loss(fmodel(sx), sy), grad_callback=callback)
            return w.loss(fmodel(qx), qy)

    return _meta_step(w.adam(model.parameters()), w.tasks, task_loss), "innerloop_ctx"


def build_torchopt(w: MamlWorkload) -> tuple[Step, str]:
    """torchopt's functional API (about 15% faster here than its ``MetaSGD`` module API)."""
    import torchopt
    from torch.func import functional_call

    model = w.plain_model()
    inner_optimizer = torchopt.sgd(lr=w.inner_lr)

    def task_loss(sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, qy: torch.Tensor):
        params = dict(model.named_parameters())
        inner_state = inner_optimizer.init(params)
        inner = w.loss(functional_call(model, params, (sx,)), sy)
        grads = torch.autograd.grad(inner, tuple(params.values()), create_graph=not w.first_order)
        updates, _ = inner_optimizer.update(
            dict(zip(params, grads, strict=True)), inner_state, inplace=False
        )
        adapted = torchopt.apply_updates(params, updates, inplace=False)
        return w.loss(functional_call(model, adapted, (qx,)), qy)

    return _meta_step(w.adam(model.parameters()), w.tasks, task_loss), "sgd + apply_updates"


def peer_impls(workload: Callable[[], MamlWorkload]) -> dict[str, Impl]:
    """The four peers' rows of a benchmark, each building ``workload()`` in its worker."""
    return {
        "torchmeta": Impl(
            "torchmeta", lambda: build_torchmeta(workload()), peer=True, shim="torchmeta"
        ),
        "learn2learn": Impl(
            "learn2learn", lambda: build_learn2learn(workload()), peer=True, shim="l2l"
        ),
        "higher": Impl("higher", lambda: build_higher(workload()), peer=True),
        "torchopt": Impl("torchopt", lambda: build_torchopt(workload()), peer=True),
    }
