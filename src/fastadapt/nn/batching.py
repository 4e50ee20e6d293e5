"""The task-batching engine: run a per-task function over a batch of tasks.

The per-task function is written once, for one task, as a pure function of that task's
parameters and inputs (typically ``torch.func.functional_call`` of a plain ``nn.Module``).
:func:`map_over_tasks` runs it over the leading task dimension either with ``torch.vmap`` or
with a plain Python loop; both give the same numbers (the test-suite checks it).

Differentiation happens *outside* the map: algorithms call ``torch.autograd.grad`` on the sum
of the per-task losses with respect to the per-task parameters ``[B, ...]``. Because tasks are
independent, that gradient is exactly the stack of per-task gradients, and its double
backward runs on ordinary (unbatched) autograd nodes. This is deliberate: differentiating
*inside* ``vmap`` (``vmap(grad(f))``) gives a wrong second-order meta-gradient when a stock
``nn.BatchNorm2d`` has its affine parameters adapted in the inner loop (functorch issue 534),
and it is also slower on small models.

In ``vmap`` mode, :func:`call_over_tasks` evaluates the layers it knows (``nn.Linear``,
``nn.Flatten`` and elementwise activations inside ``nn.Sequential``) with explicit batched
kernels (``torch.baddbmm`` over per-task weights), lets a module that defines
``forward_over_tasks(task_params, x)`` (``x`` ``[B, n, ...]``) run itself over the tasks (Conv-4
does, see :mod:`fastadapt.nn.conv4`), and hands every other module to ``torch.vmap``; the
result is the same, with far less per-operator overhead on small models.

Which mode is faster depends on the workload (measured on a 2-core CPU with torch 2.13, see
``benchmarks/``): ``vmap`` wins by a wide margin for small fully connected models, where the
cost is per-operator overhead. Batched convolutions with per-task weights fall back to grouped
convolutions and extra elementwise copies, so for convolutional backbones the answer depends on
how many images each task passes: with 80 images per task (5-way, 1 support and 15 queries per
class) a loop over tasks is 1.7x faster and needs far less memory; with 5 (MAML's Omniglot
5-way 1-shot training, one query per class) the per-task operator overhead dominates and
``vmap`` is 1.4x faster (one second-order Conv-4 meta-iteration of 32 tasks on one thread,
beside a training run: 0.73 s against 1.05 s). :func:`resolve_batch_mode` picks accordingly,
per call when it is given the inputs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

BatchMode = Literal["vmap", "loop"]
BATCH_MODES = ("auto", "vmap", "loop")

Params = Mapping[str, torch.Tensor]
TaskFunction = Callable[..., torch.Tensor]


VMAP_MAX_CONV_TASK_INPUT = 8 * 28 * 28
"""Largest per-task input (elements: images x channels x pixels) that ``"auto"`` convolves
under ``vmap``; larger inputs loop over tasks (module doc: vmap won at 5 Omniglot images per
task, vmap was 10% slower at 15, the loop won from 35)."""


def resolve_batch_mode(
    model: nn.Module, mode: str = "auto", task_inputs: torch.Tensor | None = None
) -> BatchMode:
    """The batching mode to use for ``model`` on ``task_inputs`` ``[B, n, ...]``.

    ``"auto"``: ``"vmap"`` for a model without convolutions; for a convolutional model
    ``"vmap"`` when one task's inputs hold at most :data:`VMAP_MAX_CONV_TASK_INPUT` elements,
    else (or when the inputs are not given) ``"loop"``.
    """
    if mode not in BATCH_MODES:
        raise ValueError(f"batch mode must be one of {BATCH_MODES}, got {mode!r}.")
    if mode != "auto":
        return mode  # type: ignore[return-value]
    if not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return "vmap"
    small = task_inputs is not None and task_inputs[0].numel() <= VMAP_MAX_CONV_TASK_INPUT
    return "vmap" if small else "loop"


def expand_to_tasks(params: Params, num_tasks: int) -> dict[str, torch.Tensor]:
    """Per-task copies ``[B, ...]`` of shared parameters, as views (no memory is copied)."""
    return {name: p.unsqueeze(0).expand(num_tasks, *p.shape) for name, p in params.items()}


def map_over_tasks(
    fn: TaskFunction, task_params: Params, *task_inputs: torch.Tensor, mode: BatchMode
) -> torch.Tensor:
    """``stack([fn(task_params[i], *task_inputs[i]) for i in tasks])``, batched per ``mode``.

    ``task_params`` and ``task_inputs`` all carry a leading task dimension; ``fn`` returns a
    tensor. Anything shared by all tasks is closed over by ``fn``.
    """
    if mode == "vmap":
        return torch.vmap(fn)(dict(task_params), *task_inputs)
    if mode == "loop":
        # unbind, not p[i]: the backward of B selects builds B zero-filled [B, ...] gradients
        # (B² memory traffic); the backward of one unbind stacks the B slices once.
        params = {name: p.unbind(0) for name, p in task_params.items()}
        inputs = [x.unbind(0) for x in task_inputs]
        outputs = [
            fn({name: p[i] for name, p in params.items()}, *(x[i] for x in inputs))
            for i in range(task_inputs[0].shape[0])
        ]
        return torch.stack(outputs)
    raise ValueError(f"batch mode must be 'vmap' or 'loop', got {mode!r}.")


_ELEMENTWISE = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Identity,
)


def call_over_tasks(
    model: nn.Module, task_params: Params, x: torch.Tensor, *, mode: BatchMode
) -> torch.Tensor:
    """``model`` applied to each task's inputs ``x[i]`` with that task's parameters.

    ``task_params`` maps parameter names of ``model`` to per-task tensors ``[B, ...]``; any
    parameter not in it is the module's own, shared by all tasks (e.g. the body in ANIL).
    """
    if mode == "loop":
        return map_over_tasks(_functional_forward(model), task_params, x, mode="loop")
    return _vectorised_call(model, dict(task_params), x)


def _vectorised_call(module: nn.Module, task_params: dict[str, torch.Tensor], x: torch.Tensor):
    if isinstance(module, _ELEMENTWISE):
        return module(x)
    if isinstance(module, nn.Linear):
        return _linear_over_tasks(module, task_params, x)
    if isinstance(module, nn.Flatten) and module.start_dim >= 0:
        end = module.end_dim if module.end_dim < 0 else module.end_dim + 1
        return x.flatten(module.start_dim + 1, end)
    over_tasks = getattr(module, "forward_over_tasks", None)
    if over_tasks is not None:
        return over_tasks(task_params, x)
    if type(module).forward is nn.Sequential.forward:
        return sequential_over_tasks(module, task_params, x)
    return vmap_over_tasks(module, task_params, x)


def sequential_over_tasks(module: nn.Module, task_params: Params, x: torch.Tensor) -> torch.Tensor:
    """Each child of ``module`` in turn over the tasks, as ``nn.Sequential.forward`` per task
    (``task_params`` and ``x`` as in :func:`call_over_tasks`, in ``"vmap"`` mode)."""
    task_params = dict(task_params)
    for name, child in module.named_children():
        x = _vectorised_call(child, _sub_params(task_params, name), x)
    return x


def vmap_over_tasks(module: nn.Module, task_params: Params, x: torch.Tensor) -> torch.Tensor:
    """``module`` over the tasks with ``torch.vmap`` (``task_params`` and ``x`` as in
    :func:`call_over_tasks`).

    ``torch.vmap`` does not autocast the convolutions inside it (torch 2.13), so under
    ``torch.autocast`` a bfloat16 ``x`` would meet float32 weights: ``x`` is cast to the
    dtype of the module's parameters, in which the vmapped module then runs.
    """
    weights = itertools.chain(task_params.values(), module.parameters())
    dtype = next((p.dtype for p in weights if p.is_floating_point()), x.dtype)
    if x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    if not task_params:
        return torch.vmap(module)(x)
    return torch.vmap(_functional_forward(module))(dict(task_params), x)


def task_parameter(
    task_params: Params, name: str, own: torch.Tensor | None, num_tasks: int
) -> torch.Tensor | None:
    """Parameter ``name`` per task ``[B, ...]``: the task's own from ``task_params``, else the
    module's shared ``own`` viewed as ``B`` copies (``None`` stays ``None``)."""
    if name in task_params:
        return task_params[name]
    return None if own is None else own.expand(num_tasks, *own.shape)


def _linear_over_tasks(
    layer: nn.Linear, task_params: dict[str, torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    weight = task_params.get("weight")
    bias = task_params.get("bias", layer.bias)
    if weight is None:  # shared weight: one matrix product for all tasks
        if bias is not None and bias.dim() == 2:
            return F.linear(x, layer.weight) + bias.view(bias.shape[0], *[1] * (x.dim() - 2), -1)
        return F.linear(x, layer.weight, bias)
    flat = x if x.dim() == 3 else x.reshape(x.shape[0], -1, x.shape[-1])
    if bias is None:
        out = torch.bmm(flat, weight.transpose(1, 2))
    else:
        out = torch.baddbmm(bias.unsqueeze(-2), flat, weight.transpose(1, 2))
    return out if x.dim() == 3 else out.reshape(*x.shape[:-1], weight.shape[1])


def _sub_params(task_params: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    start = prefix + "."
    return {k[len(start) :]: v for k, v in task_params.items() if k.startswith(start)}


def _functional_forward(module: nn.Module) -> TaskFunction:
    def forward(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, params, (x,))

    return forward
