"""Discounted returns and generalised advantage estimation over masked trajectories.

Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
Estimation", Eq. 16: ``Â_t = Σ_l (γλ)^l δ_{t+l}`` with ``δ_t = r_t + γ V(s_{t+1}) - V(s_t)``.
With ``λ = 1`` (MAML's setting) ``Â_t`` is the discounted return minus the baseline. Sums
over time are one matrix product with the discount matrix, for all trajectories at once.
"""

from __future__ import annotations

import torch

from fastadapt.rl.baseline import linear_baseline
from fastadapt.rl.episodes import Episodes


def discounted_sum(values: torch.Tensor, discount: float) -> torch.Tensor:
    """``out_t = Σ_{k ≥ t} discount^(k-t) · values_k`` along the last dimension."""
    steps = values.shape[-1]
    index = torch.arange(steps, device=values.device)
    power = (index.view(1, -1) - index.view(-1, 1)).to(values.dtype)
    weights = torch.where(power >= 0, discount**power, torch.zeros_like(power))
    return values @ weights.T


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> torch.Tensor:
    """Advantages ``[..., T]``; the value after the last valid step is 0 (episodes end by
    termination or at the horizon, as in the reference code)."""
    values = values * mask
    next_values = torch.cat([values[..., 1:], torch.zeros_like(values[..., :1])], dim=-1)
    deltas = (rewards + gamma * next_values - values) * mask
    return discounted_sum(deltas, gamma * gae_lambda) * mask


def normalise(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages standardised per task (mean 0, standard deviation 1 over its valid steps),
    as the reference code does before every policy-gradient step."""
    dims = tuple(range(1, advantages.dim()))
    count = mask.sum(dim=dims, keepdim=True).clamp_min(1)
    mean = (advantages * mask).sum(dim=dims, keepdim=True) / count
    var = ((advantages - mean).square() * mask).sum(dim=dims, keepdim=True) / count
    return (advantages - mean) / (var.sqrt() + 1e-8) * mask


def episode_advantages(
    episodes: Episodes, gamma: float, gae_lambda: float, baseline_reg: float
) -> torch.Tensor:
    """Normalised advantages ``[B, N, T]`` of ``episodes``, with a linear baseline fitted to
    each task's discounted returns."""
    rewards = episodes.rewards * episodes.mask
    returns = discounted_sum(rewards, gamma) * episodes.mask
    values = linear_baseline(episodes.observations, episodes.mask, returns, baseline_reg)
    advantages = gae(rewards, values, episodes.mask, gamma, gae_lambda)
    return normalise(advantages, episodes.mask)
