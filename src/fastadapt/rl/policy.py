"""The Gaussian MLP policy of MAML's RL experiments (Finn et al. 2017, Appendix A.2).

The action is Gaussian with a mean given by an MLP of the observation (2 hidden layers of 100
ReLU units in the paper) and a learned, state-independent log standard deviation. The policy
is a plain ``nn.Module`` applied with per-task parameters ``[B, ...]``
(:func:`fastadapt.nn.batching.call_over_tasks`): one batched call evaluates every task of a
meta-batch with its own adapted parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fastadapt.nn.batching import call_over_tasks, expand_to_tasks
from fastadapt.nn.mlp import MLP

_LOG_2PI = math.log(2 * math.pi)


class GaussianMLPPolicy(nn.Module):
    """``π(a|s) = N(a; c·μ_θ(s), diag(c·exp(log_std))²)`` with ``c`` the ``action_scale``.

    The network works in units of the environment's action bound ``c``, as the reference
    code does by normalising the environment (``rllab``'s ``normalize``: actions in
    ``[-1, 1]`` are scaled to the bound): a unit standard deviation at initialisation spans
    the action space, and the gradients and KL divergences are those of the normalised
    policy (both are invariant to the scale, up to the log-density's constant).

    Args:
        observation_dim: size of an observation.
        action_dim: size of an action.
        hidden: hidden layer sizes of the mean network (the paper: ``[100, 100]``).
        activation: ``relu`` (the paper), ``tanh`` or ``gelu``.
        init_log_std: the initial log standard deviation of every action dimension, in
            units of ``action_scale``.
        action_scale: the environment's action bound ``c`` (2D navigation: 0.1).
        init: the mean network's initialisation (:class:`~fastadapt.nn.mlp.MLP`): ``torch``
            or ``glorot`` (the reference code's: Glorot-uniform weights, zero biases).
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden: Sequence[int] = (100, 100),
        activation: str = "relu",
        init_log_std: float = 0.0,
        action_scale: float = 1.0,
        init: str = "torch",
    ) -> None:
        super().__init__()
        if action_scale <= 0:
            raise ValueError(f"action_scale must be positive, got {action_scale}.")
        self.mean = MLP(observation_dim, hidden, action_dim, activation, init)
        self.log_std = nn.Parameter(torch.full((action_dim,), float(init_log_std)))
        self.action_scale = float(action_scale)

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        """The mean action of the policy's own parameters (deterministic control)."""
        return self.action_scale * self.mean(observation)

    def task_params(self, num_tasks: int) -> dict[str, torch.Tensor]:
        """The policy's parameters as per-task views ``[B, ...]`` (differentiable)."""
        return expand_to_tasks(dict(self.named_parameters()), num_tasks)

    def mean_std(
        self, params: Mapping[str, torch.Tensor], observation: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``[B, ..., A]`` and standard deviation (broadcastable) of the action in
        ``observation`` ``[B, ..., obs_dim]`` under per-task ``params``."""
        start = "mean."
        net = {k[len(start) :]: v for k, v in params.items() if k.startswith(start)}
        mean = call_over_tasks(self.mean, net, observation, mode="vmap")
        log_std = params["log_std"]
        log_std = log_std.reshape(log_std.shape[0], *[1] * (mean.dim() - 2), log_std.shape[-1])
        return self.action_scale * mean, self.action_scale * log_std.exp()

    def log_prob(
        self,
        params: Mapping[str, torch.Tensor],
        observation: torch.Tensor,
        action: torch.Tensor,
    ) -> torch.Tensor:
        """``log π(a|s)`` ``[B, ...]``, summed over the action's dimensions."""
        mean, std = self.mean_std(params, observation)
        z = (action - mean) / std
        return (-0.5 * z.square() - std.log() - 0.5 * _LOG_2PI).sum(dim=-1)


def gaussian_kl(
    mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor
) -> torch.Tensor:
    """``KL(p || q)`` of diagonal Gaussians, summed over the last dimension."""
    ratio = (std_p / std_q).square()
    kl = 0.5 * (ratio + ((mean_q - mean_p) / std_q).square() - 1 - ratio.log())
    return kl.sum(dim=-1)
