"""MAML for reinforcement learning (Finn et al. 2017, §3.2 Algorithm 3, §5.3, Appendix A.2).

For each task ``T_i`` of a meta-batch, trajectories ``D_i`` of the policy ``f_θ`` are
sampled and the policy is adapted by one vanilla policy-gradient (REINFORCE) step with a
linear feature baseline fitted to the task's own returns,

    θ'_i = θ - α ∇_θ L_{T_i}(f_θ),   L_{T_i} = -E_{D_i}[log π_θ(a_t|s_t) Â_t]   (Eq. 4),

then new trajectories ``D'_i`` of ``f_{θ'_i}`` are sampled and the meta-objective is the
policy-gradient surrogate of the adapted policies on them, differentiated through the inner
step (second order) or with the inner gradient held constant (first order):

    L(θ) = Σ_i -E_{D'_i}[π_{θ'_i(θ)}(a|s) / π_{θ'_i,old}(a|s) · Â'_t].

The outer step is TRPO on ``L`` with the mean KL between the adapted policies before and
after the step as its constraint (:func:`fastadapt.rl.trpo.trpo_step`), or a step of any
``torch.optim`` optimizer (Adam) on ``L``. Every task of the meta-batch is computed at once:
per-task parameters ``[B, ...]`` and the rollouts of :func:`fastadapt.rl.episodes.rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastadapt.rl.advantages import episode_advantages
from fastadapt.rl.episodes import Episodes, TaskEnv, rollout, rollout_budget
from fastadapt.rl.policy import GaussianMLPPolicy, gaussian_kl
from fastadapt.rl.trpo import TRPOStats, trpo_step

MAX_BUDGET_ROUNDS = 10
"""With an environment-step budget, at most this many rounds of episodes per rollout: the
budget is met unless the episodes average fewer than ``env_steps / (10 · trajectories)``
steps (20 for the 2D-navigation test budget of 4000 steps in rounds of 20)."""

Params = dict[str, torch.Tensor]


@dataclass
class MetaBatch:
    """The samples of one meta-iteration: the trajectories of each inner step with their
    advantages, and the trajectories of the adapted policies with their advantages and the
    adapted policies' log-probabilities, means and standard deviations when sampled."""

    tasks: torch.Tensor
    train: list[Episodes]
    train_advantages: list[torch.Tensor]
    valid: Episodes
    valid_advantages: torch.Tensor
    old_log_prob: torch.Tensor
    old_mean: torch.Tensor
    old_std: torch.Tensor


class MAMLRL(nn.Module):
    """MAML with policy-gradient inner steps for a :class:`GaussianMLPPolicy`.

    Args:
        policy: the policy whose initial parameters are meta-learned.
        inner_lr: the inner step size α (the paper: 0.1).
        inner_steps: policy-gradient steps in the inner loop during meta-training.
        first_order: hold the inner gradients constant in the meta-gradient.
        gamma: discount factor.
        gae_lambda: GAE's λ (1: discounted return minus the baseline).
        baseline_reg: ridge coefficient of the linear baseline.
    """

    def __init__(
        self,
        policy: GaussianMLPPolicy,
        *,
        inner_lr: float = 0.1,
        inner_steps: int = 1,
        first_order: bool = False,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        baseline_reg: float = 1e-5,
    ) -> None:
        super().__init__()
        if inner_lr <= 0 or inner_steps < 1:
            raise ValueError(
                f"inner_lr must be positive and inner_steps >= 1, got {inner_lr} and {inner_steps}."
            )
        self.policy = policy
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.gamma, self.gae_lambda, self.baseline_reg = gamma, gae_lambda, baseline_reg

    def advantages(self, episodes: Episodes) -> torch.Tensor:
        """Normalised GAE advantages ``[B, N, T]`` with the per-task linear baseline."""
        return episode_advantages(episodes, self.gamma, self.gae_lambda, self.baseline_reg)

    def inner_loss(
        self, params: Params, episodes: Episodes, advantages: torch.Tensor
    ) -> torch.Tensor:
        """REINFORCE losses ``[B]``: minus the mean over each task's valid steps of
        ``log π(a|s) · Â`` (Eq. 4 with a baseline)."""
        log_prob = self.policy.log_prob(params, episodes.observations, episodes.actions)
        mask = episodes.mask
        return -(log_prob * advantages * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))

    def adapt(
        self,
        params: Params,
        episodes: Episodes,
        advantages: torch.Tensor,
        lr: float,
        create_graph: bool,
    ) -> Params:
        """One policy-gradient step of every task's parameters ``[B, ...]`` on its own
        trajectories: ``θ'_i = θ_i - lr · ∇L_{T_i}(θ_i)``. The tasks are independent, so the
        gradient of the summed losses is the stack of per-task gradients."""
        loss = self.inner_loss(params, episodes, advantages).sum()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        return {name: p - lr * g for (name, p), g in zip(params.items(), grads)}

    def sample(
        self,
        env: TaskEnv,
        tasks: torch.Tensor,
        trajectories: int,
        generator: torch.Generator,
        env_steps: int | None = None,
    ) -> MetaBatch:
        """Roll out and adapt the policy on ``tasks`` (Algorithm 3, lines 4-8): each rollout
        ``trajectories`` episodes per task, or with ``env_steps`` whole episodes up to that
        many environment steps (:func:`_rollout`)."""
        params = self.policy.task_params(tasks.shape[0])
        train, train_advantages = [], []
        for _ in range(self.inner_steps):
            episodes = _rollout(env, self.policy, params, tasks, trajectories, generator, env_steps)
            advantages = self.advantages(episodes)
            params = self.adapt(params, episodes, advantages, self.inner_lr, create_graph=False)
            train.append(episodes)
            train_advantages.append(advantages)
        params = {name: p.detach() for name, p in params.items()}
        valid = _rollout(env, self.policy, params, tasks, trajectories, generator, env_steps)
        with torch.no_grad():
            mean, std = self.policy.mean_std(params, valid.observations)
            log_prob = self.policy.log_prob(params, valid.observations, valid.actions)
        return MetaBatch(
            tasks,
            train,
            train_advantages,
            valid,
            self.advantages(valid),
            log_prob,
            mean,
            std,
        )

    def surrogate(self, batch: MetaBatch, differentiable: bool = True) -> tuple[torch.Tensor, ...]:
        """The meta-objective and the mean KL ``KL(π_old' || π_θ')`` of the adapted policies
        at the policy's current parameters (TRPO's surrogate and constraint).

        With ``differentiable`` the inner steps keep their graph (unless first order), so
        both are differentiable through the adaptation.
        """
        params = self.policy.task_params(batch.tasks.shape[0])
        create_graph = differentiable and not self.first_order
        for episodes, advantages in zip(batch.train, batch.train_advantages):
            params = self.adapt(params, episodes, advantages, self.inner_lr, create_graph)
        valid, mask = batch.valid, batch.valid.mask
        count = mask.sum(dim=(1, 2))
        log_prob = self.policy.log_prob(params, valid.observations, valid.actions)
        ratio = torch.exp(log_prob - batch.old_log_prob)
        loss = -(ratio * batch.valid_advantages * mask).sum(dim=(1, 2)) / count
        mean, std = self.policy.mean_std(params, valid.observations)
        kl = gaussian_kl(batch.old_mean, batch.old_std, mean, std)
        kl = (kl * mask).sum(dim=(1, 2)) / count
        return loss.mean(), kl.mean()

    def trpo_update(self, batch: MetaBatch, **settings: float) -> TRPOStats:
        """One TRPO step of the policy's parameters on :meth:`surrogate` (keyword settings
        of :func:`~fastadapt.rl.trpo.trpo_step`)."""
        return trpo_step(
            list(self.policy.parameters()),
            lambda differentiable: self.surrogate(batch, differentiable),
            **settings,  # type: ignore[arg-type]
        )

    def gradient_update(self, batch: MetaBatch, optimizer: torch.optim.Optimizer) -> float:
        """One step of ``optimizer`` on the meta-objective; returns the objective before it."""
        loss, _ = self.surrogate(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    def adaptation_returns(
        self,
        env: TaskEnv,
        tasks: torch.Tensor,
        steps: int,
        trajectories: int,
        lr: float,
        generator: torch.Generator,
        later_lr: float | None = None,
        env_steps: int | None = None,
    ) -> tuple[torch.Tensor, list[Episodes]]:
        """Mean return per task ``[steps + 1, B]`` after 0, 1, …, ``steps`` policy-gradient
        steps, each on ``trajectories`` new trajectories of the policy of the step before (the
        paper's test protocol), and those trajectories. The first step has size ``lr``, the
        later ones ``later_lr`` (default ``lr``; the paper halves it, Appendix A.2). With
        ``env_steps``, each step samples whole episodes until that many environment steps
        instead (:func:`_rollout`, the reference code's sampler)."""
        params = self.policy.task_params(tasks.shape[0])
        returns, samples = [], []
        for step in range(steps + 1):
            episodes = _rollout(env, self.policy, params, tasks, trajectories, generator, env_steps)
            returns.append(episodes.mean_returns())
            samples.append(episodes)
            if step < steps:
                size = lr if step == 0 or later_lr is None else later_lr
                leaves = {name: p.detach().requires_grad_() for name, p in params.items()}
                params = self.adapt(leaves, episodes, self.advantages(episodes), size, False)
        return torch.stack(returns), samples


def _rollout(
    env: TaskEnv,
    policy: GaussianMLPPolicy,
    params: dict[str, torch.Tensor],
    tasks: torch.Tensor,
    trajectories: int,
    generator: torch.Generator,
    env_steps: int | None,
) -> Episodes:
    """``trajectories`` episodes per task, or with ``env_steps`` whole episodes until that many
    environment steps, in rounds of ``trajectories`` and at most ``MAX_BUDGET_ROUNDS`` of them
    (:func:`~fastadapt.rl.episodes.rollout_budget`)."""
    if env_steps is None:
        return rollout(env, policy, params, tasks, trajectories, generator)
    return rollout_budget(
        env, policy, params, tasks, env_steps, trajectories, generator,
        MAX_BUDGET_ROUNDS * trajectories,
    )  # fmt: skip
