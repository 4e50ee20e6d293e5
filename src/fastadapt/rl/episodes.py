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

    def mean_returns(self) -> torch.Tensor:
        """The mean return per task ``[B]`` over its sampled episodes (those whose first step
        is unmasked; :func:`rollout_budget` masks whole episodes past its budget)."""
        sampled = self.mask[..., 0]
        return (self.returns() * sampled).sum(dim=1) / sampled.sum(dim=1).clamp_min(1)


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


def rollout_budget(
    env: TaskEnv,
    policy: GaussianMLPPolicy,
    params: Mapping[str, torch.Tensor],
    tasks: torch.Tensor,
    env_steps: int,
    round_size: int,
    generator: torch.Generator,
    max_trajectories: int,
) -> Episodes:
    """Whole episodes of each task until at least ``env_steps`` environment steps, the
    sampler of the MAML reference code (rllab's ``sample_paths(max_samples)``: episodes run
    to their end, and sampling stops once the steps collected reach the budget, so adapted
    policies whose episodes end early at the goal give more episodes).

    Episodes are drawn in rounds of ``round_size`` per task (:func:`rollout`) until every
    task's budget is met or ``max_trajectories`` were drawn; per task, an episode is kept when
    the steps of the episodes before it are fewer than ``env_steps``. The others are masked
    out entirely (:meth:`Episodes.mean_returns` counts only kept ones), so the result has the
    same shape for every task and feeds the baseline, advantages and policy gradient as is.
    """
    rounds: list[Episodes] = []
    collected = torch.zeros(tasks.shape[0], device=tasks.device)
    while not rounds or (
        bool((collected < env_steps).any()) and len(rounds) * round_size < max_trajectories
    ):
        episodes = rollout(env, policy, params, tasks, round_size, generator)
        rounds.append(episodes)
        collected = collected + episodes.mask.sum(dim=(1, 2)).to(collected)
    observations, actions, rewards, mask = (
        torch.cat([getattr(part, name) for part in rounds], dim=1)
        for name in ("observations", "actions", "rewards", "mask")
    )
    lengths = mask.sum(dim=-1)
    kept = (lengths.cumsum(dim=1) - lengths < env_steps).to(mask.dtype)
    return Episodes(observations, actions, rewards, mask * kept.unsqueeze(-1))
