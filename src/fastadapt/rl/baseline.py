"""The linear feature baseline of MAML's RL experiments (Finn et al. 2017, Appendix A.2;
Duan et al. 2016, "Benchmarking Deep Reinforcement Learning for Continuous Control", §4).

The value of state ``s`` at time ``t`` is predicted linearly from the features
``[s, s², t, t², t³, 1]`` (``s`` clipped to ``[-10, 10]``, ``t`` the step index / 100),
fitted to the discounted returns of each task's own trajectories by ridge regression:

    w = (XᵀX + λI)⁻¹ Xᵀ R.

All tasks of a batch are fitted at once (one batched solve); if the normal equations are
singular, ``λ`` is raised tenfold, up to five times, as in the reference code.
"""

from __future__ import annotations

import torch

_MAX_RETRIES = 5


def baseline_features(observations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Features ``[B, N, T, 2·obs_dim + 4]`` of observations ``[B, N, T, obs_dim]``; zero on
    masked steps, so they leave the fit untouched."""
    o = observations.clamp(-10, 10)
    steps = observations.shape[-2]
    t = (torch.arange(steps, dtype=o.dtype, device=o.device) / 100).view(steps, 1)
    t = t.expand(*o.shape[:-1], 1)
    features = torch.cat([o, o.square(), t, t.square(), t.pow(3), torch.ones_like(t)], dim=-1)
    return features * mask.unsqueeze(-1)


def fit_linear_baseline(
    features: torch.Tensor, returns: torch.Tensor, reg: float = 1e-5
) -> torch.Tensor:
    """Ridge-regression weights ``[B, F]`` of ``returns`` ``[B, N, T]`` on ``features``
    ``[B, N, T, F]``, one fit per task."""
    x = features.reshape(features.shape[0], -1, features.shape[-1])
    y = returns.reshape(returns.shape[0], -1, 1)
    gram = x.transpose(1, 2) @ x
    target = x.transpose(1, 2) @ y
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    for attempt in range(_MAX_RETRIES):
        weights, info = torch.linalg.solve_ex(gram + reg * 10**attempt * eye, target)
        if not info.any() and torch.isfinite(weights).all():
            break
    return weights.squeeze(-1)


def linear_baseline(
    observations: torch.Tensor, mask: torch.Tensor, returns: torch.Tensor, reg: float = 1e-5
) -> torch.Tensor:
    """The fitted baseline's values ``[B, N, T]`` on the trajectories it was fitted to."""
    features = baseline_features(observations, mask)
    weights = fit_linear_baseline(features, returns, reg)
    return torch.einsum("bntf,bf->bnt", features, weights)
