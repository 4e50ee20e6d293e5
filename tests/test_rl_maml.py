"""MAML-RL's parts: the linear baseline, advantages, TRPO's step and the meta-gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fastadapt.rl.advantages import discounted_sum, gae
from fastadapt.rl.baseline import baseline_features, fit_linear_baseline, linear_baseline
from fastadapt.rl.episodes import Episodes, rollout_budget
from fastadapt.rl.maml_rl import MAMLRL
from fastadapt.rl.nav2d import Navigation2D
from fastadapt.rl.policy import GaussianMLPPolicy, gaussian_kl
from fastadapt.rl.trpo import conjugate_gradient


def _meta_batch(dtype=torch.float32, first_order=False, tasks=3, trajectories=4, horizon=20):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(2, 2, hidden=[16, 16]).to(dtype)
    learner = MAMLRL(policy, inner_lr=0.1, first_order=first_order)
    env = Navigation2D(horizon=horizon)
    batch = learner.sample(
        env, env.sample_tasks(tasks, 0), trajectories, torch.Generator().manual_seed(1)
    )
    return learner, batch


def test_linear_baseline_is_the_closed_form_ridge_solution():
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(2, 3, 7, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 3, 7, dtype=torch.float64)
    mask[1, 2, 4:] = 0
    returns = torch.randn(2, 3, 7, generator=g, dtype=torch.float64) * mask
    reg = 1e-3
    weights = fit_linear_baseline(baseline_features(obs, mask), returns, reg)
    for task in range(2):
        valid = mask[task].reshape(-1) > 0
        o = obs[task].reshape(-1, 2)[valid].numpy()
        t = np.tile(np.arange(7) / 100, 3)[valid.numpy()][:, None]
        x = np.concatenate([o, o**2, t, t**2, t**3, np.ones_like(t)], axis=1)
        y = returns[task].reshape(-1)[valid].numpy()
        # ridge regression as least squares on the augmented system [X; √λ I] w = [y; 0]
        augmented = np.concatenate([x, np.sqrt(reg) * np.eye(x.shape[1])])
        target = np.concatenate([y, np.zeros(x.shape[1])])
        expected, *_ = np.linalg.lstsq(augmented, target, rcond=None)
        np.testing.assert_allclose(weights[task].numpy(), expected, rtol=1e-6, atol=1e-8)
    values = linear_baseline(obs, mask, returns, reg)
    assert values.shape == (2, 3, 7) and values[1, 2, 4:].eq(0).all()


def test_discounted_sums_and_gae():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(
        discounted_sum(rewards, 0.5), torch.tensor([[1 + 1 + 0.75 + 0.5, 2 + 1.5 + 1, 5.0, 4.0]])
    )
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, -1.0, 2.0, 9.0]])
    returns = discounted_sum(rewards * mask, 0.9)
    # λ = 1: the advantage is the discounted return minus the value
    torch.testing.assert_close(
        gae(rewards * mask, values, mask, 0.9, 1.0), (returns - values) * mask
    )
    # λ = 0: the one-step temporal difference
    one_step = torch.tensor([[1 + 0.9 * -1.0 - 0.5, 2 + 0.9 * 2.0 + 1.0, 3 - 2.0, 0.0]])
    torch.testing.assert_close(gae(rewards * mask, values, mask, 0.9, 0.0), one_step)


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    h = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: h @ v, b, iterations=20)
    torch.testing.assert_close(h @ x, b)


def _adapted_kl(learner, batch, old_params):
    """Mean KL of the adapted policies of ``old_params`` to those of the current ones."""
    current = {k: v.detach().clone() for k, v in learner.policy.named_parameters()}
    kls = []
    for params in (old_params, current):
        with torch.no_grad():
            for name, p in learner.policy.named_parameters():
                p.copy_(params[name])
        task_params = learner.policy.task_params(batch.tasks.shape[0])
        for episodes, advantages in zip(batch.train, batch.train_advantages):
            task_params = learner.adapt(task_params, episodes, advantages, 0.1, False)
        with torch.no_grad():
            kls.append(learner.policy.mean_std(task_params, batch.valid.observations))
    (m0, s0), (m1, s1) = kls
    mask = batch.valid.mask
    kl = (gaussian_kl(m0, s0, m1, s1) * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2))
    return kl.mean().item()


@pytest.mark.parametrize("max_kl", [0.01, 0.001])
def test_trpo_step_satisfies_the_kl_constraint_and_improves(max_kl):
    learner, batch = _meta_batch()
    old = {k: v.detach().clone() for k, v in learner.policy.named_parameters()}
    stats = learner.trpo_update(batch, max_kl=max_kl)
    assert stats.step_fraction > 0
    assert stats.loss_after < stats.loss_before
    measured = _adapted_kl(learner, batch, old)
    assert 0 < measured <= max_kl
    assert measured == pytest.approx(stats.kl, rel=1e-3)
    moved = [not torch.equal(p, old[k]) for k, p in learner.policy.named_parameters()]
    assert all(moved)


def _reference_meta_gradient(learner, batch, first_order):
    """The meta-gradient computed one task at a time with unbatched parameters and
    ``torch.distributions``: an independent reference for the batched code."""
    policy = learner.policy
    params = dict(policy.named_parameters())
    total = 0
    for i in range(batch.tasks.shape[0]):

        def log_prob(p, episodes, i=i):
            mean_params = {k[5:]: v for k, v in p.items() if k.startswith("mean.")}
            mean = functional_call(policy.mean, mean_params, (episodes.observations[i],))
            normal = torch.distributions.Normal(mean, p["log_std"].exp())
            return normal.log_prob(episodes.actions[i]).sum(-1)

        train, advantages = batch.train[0], batch.train_advantages[0][i]
        mask = train.mask[i]
        inner = -(log_prob(params, train) * advantages * mask).sum() / mask.sum()
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=not first_order)
        adapted = {k: v - 0.1 * g for (k, v), g in zip(params.items(), grads)}
        valid_mask = batch.valid.mask[i]
        ratio = torch.exp(log_prob(adapted, batch.valid) - batch.old_log_prob[i])
        outer = -(ratio * batch.valid_advantages[i] * valid_mask).sum() / valid_mask.sum()
        total = total + outer / batch.tasks.shape[0]
    return torch.autograd.grad(total, list(params.values()))


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_matches_an_unbatched_reference(first_order):
    learner, batch = _meta_batch(torch.float64, first_order)
    loss, kl = learner.surrogate(batch)
    assert kl.item() == pytest.approx(0.0, abs=1e-12)
    batched = torch.autograd.grad(loss, list(learner.policy.parameters()))
    reference = _reference_meta_gradient(learner, batch, first_order)
    for ours, theirs in zip(batched, reference):
        torch.testing.assert_close(ours, theirs)
    if not first_order:
        _, fo_batch = _meta_batch(torch.float64, True)
        fo_learner = MAMLRL(learner.policy, inner_lr=0.1, first_order=True)
        first = torch.autograd.grad(
            fo_learner.surrogate(fo_batch)[0], list(learner.policy.parameters())
        )
        assert any(not torch.allclose(a, b) for a, b in zip(batched, first))


def test_test_time_steps_after_the_first_take_the_later_step_size(monkeypatch):
    learner, _ = _meta_batch()
    sizes = []
    adapt = learner.adapt

    def recording_adapt(params, episodes, advantages, lr, create_graph):
        sizes.append(lr)
        return adapt(params, episodes, advantages, lr, create_graph)

    monkeypatch.setattr(learner, "adapt", recording_adapt)
    env = Navigation2D(horizon=10)
    tasks = env.sample_tasks(2, 0)
    returns, samples = learner.adaptation_returns(
        env, tasks, 3, 4, 0.1, torch.Generator().manual_seed(0), later_lr=0.05
    )
    assert sizes == [0.1, 0.05, 0.05]
    assert returns.shape == (4, 2) and len(samples) == 4
    learner.adaptation_returns(env, tasks, 2, 4, 0.1, torch.Generator().manual_seed(0))
    assert sizes[3:] == [0.1, 0.1]


def _goal_seeking_policy() -> GaussianMLPPolicy:
    """A small random policy (its episodes may end early near a close goal)."""
    torch.manual_seed(0)
    return GaussianMLPPolicy(2, 2, hidden=(8,))


def test_a_step_budget_keeps_whole_episodes_until_the_budget_is_reached():
    policy = _goal_seeking_policy()
    env = Navigation2D(horizon=10)
    tasks = torch.tensor([[0.05, 0.0], [0.4, -0.3], [0.0, 0.08]])
    params = policy.task_params(3)
    episodes = rollout_budget(
        env, policy, params, tasks, 45, 4, torch.Generator().manual_seed(1), 40
    )
    lengths = episodes.mask.sum(dim=-1)
    kept = episodes.mask[..., 0] > 0
    for task in range(3):
        task_lengths = lengths[task][kept[task]]
        # Whole episodes, in order: every kept one started below the budget, together they
        # reach it, and the ones after are masked out entirely.
        assert task_lengths.sum() >= 45
        assert task_lengths[:-1].sum() < 45
        count = int(kept[task].sum())
        assert kept[task][:count].all() and not kept[task][count:].any()
        assert (lengths[task][count:] == 0).all()
    # Episodes drawn past the budget are dropped; the mean return counts only kept ones.
    assert kept.sum(dim=1).tolist() != [kept.shape[1]] * 3
    expected = torch.stack([episodes.returns()[t][kept[t]].mean() for t in range(3)])
    torch.testing.assert_close(episodes.mean_returns(), expected)
    again = rollout_budget(env, policy, params, tasks, 45, 4, torch.Generator().manual_seed(1), 40)
    torch.testing.assert_close(again.mask, episodes.mask)


def test_a_step_budget_stops_at_the_trajectory_cap():
    policy = _goal_seeking_policy()
    env = Navigation2D(horizon=10)
    tasks = torch.tensor([[0.4, 0.4]])
    episodes = rollout_budget(
        env, policy, policy.task_params(1), tasks, 10_000, 4, torch.Generator().manual_seed(0), 12
    )
    assert episodes.mask.shape[1] == 12 and bool((episodes.mask[..., 0] > 0).all())


def test_evaluation_with_a_step_budget_adapts_on_the_kept_episodes():
    learner, _ = _meta_batch()
    env = Navigation2D(horizon=10)
    tasks = env.sample_tasks(2, 0)
    returns, samples = learner.adaptation_returns(
        env, tasks, 2, 4, 0.1, torch.Generator().manual_seed(0), env_steps=30
    )
    assert returns.shape == (3, 2) and torch.isfinite(returns).all()
    for episodes in samples:
        assert (episodes.mask.sum(dim=(1, 2)) >= 30).all()


def test_training_rollouts_can_take_a_step_budget():
    learner, _ = _meta_batch()
    env = Navigation2D(horizon=10)
    tasks = env.sample_tasks(2, 0)
    batch = learner.sample(env, tasks, 4, torch.Generator().manual_seed(0), env_steps=30)
    for episodes in (*batch.train, batch.valid):
        assert (episodes.mask.sum(dim=(1, 2)) >= 30).all()
    loss, kl = learner.surrogate(batch)
    assert torch.isfinite(loss) and kl.item() == pytest.approx(0.0, abs=1e-6)


def test_mean_returns_ignore_the_episodes_past_the_budget():
    mask = torch.tensor([[[1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]])
    rewards = torch.tensor([[[-1.0, -2.0], [-4.0, -8.0], [-16.0, -32.0]]])
    episodes = Episodes(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), rewards, mask)
    torch.testing.assert_close(episodes.mean_returns(), torch.tensor([-3.5]))
