"""``gradient_update_parameters``: one inner step of gradient descent, as MAML takes it."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch

from fastadapt.compat.torchmeta.modules.module import MetaModule, Params
from fastadapt.errors import ConfigError

StepSize = float | torch.Tensor | Mapping[str, float | torch.Tensor]


def gradient_update_parameters(
    model: MetaModule,
    loss: torch.Tensor,
    params: Params | None = None,
    step_size: StepSize = 0.5,
    first_order: bool = False,
) -> OrderedDict[str, torch.Tensor]:
    """θ' = θ − α ∇θ L: the parameters after one gradient step on ``loss`` (MAML Eq. 1).

    Args:
        model: the :class:`MetaModule` whose meta-parameters are updated.
        loss: the scalar inner loss (e.g. the support set's cross-entropy).
        params: the parameters θ to update, named as in ``model.meta_named_parameters()``
            (default: those); the dict of a previous call gives the next inner step. A subset
            is allowed (e.g. only the head's, to be used with ``model.get_subdict``).
        step_size: α, a number, a tensor (e.g. a learned scalar), or a dict with one step
            size (number or tensor, e.g. Meta-SGD's per-element rates) for every name of
            ``params``.
        first_order: treat ∇θ L as a constant (first-order MAML); otherwise the graph of the
            gradient is kept so the meta-gradient is exact (second order).

    Returns an ``OrderedDict`` name -> θ' to pass as ``model(x, params=...)``. The arithmetic
    is that of :class:`fastadapt.MAML`'s inner step, so the numbers are the same.
    """
    if not isinstance(model, MetaModule):
        raise TypeError(
            f"model must be a MetaModule (fastadapt.compat.torchmeta.modules), got "
            f"{type(model).__name__}; build it from MetaSequential/MetaLinear/MetaConv2d/... or "
            "use fastadapt.MAML, which adapts any nn.Module."
        )
    known = OrderedDict(model.meta_named_parameters())
    if params is None:
        params = known
    if not isinstance(params, Mapping):
        raise TypeError(
            f"params must be a dict of name -> tensor or None, got {type(params).__name__}."
        )
    unknown = [name for name in params if name not in known]
    if unknown:
        raise ConfigError(
            f"params has entries {', '.join(unknown)} that are not meta-parameters of this "
            f"{type(model).__name__} ({', '.join(known) or 'none'}); pass the dict of "
            "model.meta_named_parameters() or of an earlier gradient_update_parameters call."
        )
    names, tensors = list(params), list(params.values())
    _check_step_size(step_size, names)
    grads = torch.autograd.grad(loss, tensors, create_graph=not first_order)
    if isinstance(step_size, Mapping):
        updated = [p - step_size[name] * g for name, p, g in zip(names, tensors, grads)]
    elif isinstance(step_size, torch.Tensor):
        updated = [p - step_size * g for p, g in zip(tensors, grads)]
    else:
        updated = list(torch._foreach_add(tensors, grads, alpha=-float(step_size)))
    return OrderedDict(zip(names, updated))


def _check_step_size(step_size: StepSize, names: list[str]) -> None:
    if isinstance(step_size, Mapping):
        missing = [name for name in names if name not in step_size]
        if missing:
            raise ConfigError(
                f"step_size has no entry for {', '.join(missing)}; give a step size for every "
                "name of params, or a single number."
            )
    elif isinstance(step_size, bool) or not isinstance(step_size, int | float | torch.Tensor):
        raise TypeError(
            f"step_size must be a number, a tensor or a dict of them by parameter name, got "
            f"{type(step_size).__name__}."
        )
