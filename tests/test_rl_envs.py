"""Meta-RL environments: dynamics and rewards against hand-computed steps, task spaces, errors."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch

from fastadapt.errors import ConfigError, SpaceError
from fastadapt.rl.episodes import rollout
from fastadapt.rl.nav2d import Navigation2D, Navigation2DEnv
from fastadapt.rl.policy import GaussianMLPPolicy


def test_nav2d_step_is_the_hand_computed_one():
    env = Navigation2D()
    goals = torch.tensor([[0.3, -0.2], [0.05, 0.1]])
    assert torch.equal(env.reset(goals, 1), torch.zeros(2, 1, 2))
    # the second coordinate of the first action is clipped from 0.5 to 0.1
    obs, reward, terminated = env.step(torch.tensor([[[0.05, 0.5]], [[0.05, 0.1]]]))
    torch.testing.assert_close(obs, torch.tensor([[[0.05, 0.1]], [[0.05, 0.1]]]))
    expected = -math.sqrt(0.25**2 + 0.3**2)
    torch.testing.assert_close(reward, torch.tensor([[expected], [0.0]]))
    assert terminated.tolist() == [[False], [True]]
    obs, reward, _ = env.step(torch.tensor([[[-1.0, -1.0]], [[0.0, 0.0]]]))
    torch.testing.assert_close(obs[0, 0], torch.tensor([-0.05, 0.0]))
    torch.testing.assert_close(reward[0, 0], torch.tensor(-math.sqrt(0.35**2 + 0.2**2)))


def test_nav2d_squared_reward():
    env = Navigation2D(reward="squared")
    env.reset(torch.tensor([[0.3, -0.2]]), 2)
    _, reward, _ = env.step(torch.full((1, 2, 2), 0.05))
    torch.testing.assert_close(reward, torch.full((1, 2), -(0.25**2 + 0.25**2)))


def test_nav2d_tasks_are_seeded_goals_in_the_unit_square():
    env = Navigation2D()
    goals = env.sample_tasks(1000, seed=3)
    assert goals.shape == (1000, 2)
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert torch.equal(goals, env.sample_tasks(1000, seed=3))
    assert not torch.equal(goals, env.sample_tasks(1000, seed=4))


def test_nav2d_refuses_bad_actions_and_tasks():
    env = Navigation2D()
    with pytest.raises(SpaceError, match="outside the task space"):
        env.reset(torch.tensor([[0.7, 0.0]]), 3)
    with pytest.raises(SpaceError, match=r"shape \[tasks, 2\]"):
        env.reset(torch.zeros(3), 3)
    env.reset(torch.zeros(2, 2), 3)
    with pytest.raises(SpaceError, match=r"\[2, 3, 2\]"):
        env.step(torch.zeros(2, 3, 3))


@pytest.mark.filterwarnings("ignore:.*infinity")
def test_nav2d_gymnasium_env():
    from gymnasium.utils.env_checker import check_env

    env = Navigation2DEnv(horizon=3)
    check_env(env, skip_render_check=True)
    goal = env.sample_tasks(1, seed=0)[0]
    env.set_task(goal)
    obs, info = env.reset(seed=0)
    assert obs.shape == (2,) and np.allclose(obs, 0) and np.allclose(info["goal"], goal)
    assert env.action_space.high.tolist() == pytest.approx([0.1, 0.1])
    for step in range(3):
        obs, reward, terminated, truncated, _ = env.step(np.array([1.0, 1.0]))
        assert np.allclose(obs, 0.1 * (step + 1))
        assert reward == pytest.approx(-np.linalg.norm(obs - goal), rel=1e-5)
        assert not terminated and truncated == (step == 2)
    with pytest.raises(SpaceError, match="outside the task space"):
        env.set_task([0.0, 0.6])
    with pytest.raises(SpaceError, match=r"shape \(2,\)"):
        env.step(np.zeros(3))


def test_rollout_masks_steps_after_the_goal_is_reached():
    env = Navigation2D(horizon=5)
    policy = GaussianMLPPolicy(2, 2, hidden=[4], init_log_std=-20.0)
    with torch.no_grad():
        policy.mean[-1].weight.zero_()
        policy.mean[-1].bias.copy_(torch.tensor([0.1, 0.0]))
    goals = torch.tensor([[0.2, 0.0], [0.5, 0.5]])
    episodes = rollout(
        env, policy, policy.task_params(2), goals, 3, torch.Generator().manual_seed(0)
    )
    assert episodes.observations.shape == (2, 3, 5, 2)
    assert episodes.mask[0, 0].tolist() == [1, 1, 0, 0, 0]  # at the goal after 2 steps
    assert episodes.mask[1].eq(1).all()
    torch.testing.assert_close(episodes.returns()[0], torch.full((3,), -0.1), rtol=1e-4, atol=1e-4)


def test_missing_mujoco_names_the_extra(monkeypatch):
    from fastadapt.rl import cheetah

    real_import = builtins.__import__

    def no_mujoco(name, *args, **kwargs):
        if name == "mujoco":
            raise ImportError("No module named 'mujoco'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mujoco)
    with pytest.raises(ConfigError, match=r"fastadapt\[rl\]"):
        cheetah.HalfCheetahTasks("vel")


@pytest.mark.parametrize("kind", ["vel", "dir"])
def test_half_cheetah_rewards_are_the_papers(kind):
    pytest.importorskip("mujoco")
    from fastadapt.rl.cheetah import HalfCheetahTaskEnv

    env = HalfCheetahTaskEnv(kind, horizon=200)
    task = 1.3 if kind == "vel" else -1.0
    env.set_task(task)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1.5, 1.5, size=6)
        _, reward, terminated, _, info = env.step(action)
        clipped = np.clip(action, -1, 1)
        velocity = info["x_velocity"]
        control = 0.05 * np.square(clipped).sum()
        expected = -abs(velocity - task) - control if kind == "vel" else task * velocity - control
        assert reward == pytest.approx(expected)
        assert not terminated
    with pytest.raises(SpaceError, match="outside the task space"):
        env.set_task(2.5 if kind == "vel" else 0.5)
    with pytest.raises(SpaceError, match="action has shape"):
        env.step(np.zeros(5))


def test_half_cheetah_batched_tasks():
    pytest.importorskip("mujoco")
    from fastadapt.rl.cheetah import HalfCheetahTasks

    env = HalfCheetahTasks("dir", horizon=3)
    tasks = env.sample_tasks(4, seed=0)
    assert set(tasks.flatten().tolist()) <= {-1.0, 1.0}
    obs = env.reset(tasks[:2], 3, seed=0)
    assert obs.shape == (2, 3, 17)
    obs, reward, terminated = env.step(torch.zeros(2, 3, 6))
    assert obs.shape == (2, 3, 17) and reward.shape == terminated.shape == (2, 3)
    with pytest.raises(SpaceError, match="actions must have shape"):
        env.step(torch.zeros(2, 3, 5))
    velocities = HalfCheetahTasks("vel").sample_tasks(100, seed=1)
    assert velocities.min() >= 0 and velocities.max() <= 2
