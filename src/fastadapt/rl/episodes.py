"""Rollouts of a whole meta-batch: ``B`` tasks × ``N`` trajectories × ``T`` steps as tensors.

An environment with a task distribution (:class:`TaskEnv`) is reset with one task per row
and stepped with actions ``[B, N, action_dim]``; the policy is applied with per-task
parameters ``[B, ...]`` (:class:`~fastadapt.rl.policy.GaussianMLPPolicy`), so one rollout
samples every trajectory of every task of a meta-batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from fastadapt.rl.policy import GaussianMLPPolicy


class TaskEnv(Protocol):
    """A batched environment with a task distribution (2D navigation, half-cheetah)."""

    observation_dim: int
    action_dim: int
    task_dim: int
    horizon: int
    action_bound: float

    def sample_tasks(self, n: int, seed: int) -> torch.Tensor:
        """``n`` tasks ``[n, task_dim]``, a pure function of ``seed``."""
        ...

    def reset(
        self, tasks: torch.Tensor, trajectories: int, seed: int | None = None
    ) -> torch.Tensor:
        """Start ``trajectories`` episodes per task; the observations ``[B, N, obs_dim]``."""
        ...

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Observations ``[B, N, obs_dim]``, rewards ``[B, N]``, terminated ``[B, N]``."""
        ...


@dataclass
class Episodes:
    """Trajectories of ``B`` tasks: ``observations [B, N, T, obs_dim]`` (the state each action
    was taken in), ``actions [B, N, T, action_dim]`` (as sampled, before the environment clips
    them), ``rewards [B, N, T]`` and ``mask [B, N, T]``, 1 up to and including the step that
    ended the episode, 0 after it."""

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    mask: torch.Tensor

    def returns(self) -> torch.Tensor:
        """The undiscounted return of each trajectory ``[B, N]``."""
        return (self.rewards * self.mask).sum(dim=-1)


def rollout(
    env: TaskEnv,
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    tasks: torch.Tensor,
    trajectories: int,
    generator: torch.Generator,
) -> Episodes:
    """Sample ``trajectories`` episodes of ``env.horizon`` steps for each task.

    ``params`` are the policy's per-task parameters ``[B, ...]``; actions are drawn from the
    policy's Gaussian with ``generator``, which also seeds the environment's reset, so a
    rollout is a pure function of the generator's state. Steps after an episode ended are
    masked out.
    """
    num_tasks = tasks.shape[0]
    params = {name: p.detach() for name, p in params.items()}
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator, device=generator.device))
    observation = env.reset(tasks, trajectories, seed)
    dtype = params["log_std"].dtype
    active = torch.ones(num_tasks, trajectories, dtype=dtype, device=observation.device)
    steps: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        for _ in range(env.horizon):
            observation = observation.to(dtype)
            mean, std = policy.mean_std(params, observation)
            noise = torch.randn(mean.shape, generator=generator, dtype=dtype, device=mean.device)
            action = mean + std * noise
            next_observation, reward, terminated = env.step(action)
            steps.append((observation, action, reward.to(dtype), active))
            active = active * (~terminated).to(dtype)
            observation = next_observation
    observations, actions, rewards, mask = (torch.stack(parts, dim=2) for parts in zip(*steps))
    return Episodes(observations, actions, rewards, mask)
