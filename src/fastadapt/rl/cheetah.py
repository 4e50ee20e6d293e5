"""Half-cheetah locomotion tasks of MAML (Finn et al. 2017, §5.3 and Appendix A.2) on
Gymnasium's MuJoCo ``HalfCheetah-v5`` (the ``rl`` extra: ``pip install 'fastadapt[rl]'``).

- velocity (``cheetah-vel``): a task is a goal velocity ``v_goal ~ U[0, 2]``; the reward is
  ``-|v - v_goal| - 0.05·|a|²`` with ``v`` the forward velocity of the torso.
- direction (``cheetah-dir``): a task is a direction ``d ∈ {-1, +1}``; the reward is
  ``d·v - 0.05·|a|²``.

Episodes last 200 steps. Actions are clipped to the action space ``[-1, 1]⁶`` before they
are applied and charged. :class:`HalfCheetahVelEnv` and :class:`HalfCheetahDirEnv` are single
Gymnasium environments with ``sample_tasks`` / ``set_task``; :class:`HalfCheetahTasks` steps
tasks × trajectories of them for batched rollouts.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch

from fastadapt.errors import ConfigError, SpaceError

HORIZON = 200
CONTROL_COST = 0.05
VELOCITY_RANGE = (0.0, 2.0)
KINDS = ("vel", "dir")


def require_mujoco() -> None:
    """Refuse clearly when Gymnasium's MuJoCo environments are not installed."""
    try:
        import mujoco  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "the half-cheetah tasks need MuJoCo: pip install 'fastadapt[rl]' (installs "
            "gymnasium[mujoco])."
        ) from error


def sample_cheetah_tasks(kind: str, n: int, seed: int) -> torch.Tensor:
    """``n`` tasks ``[n, 1]``: goal velocities in ``[0, 2]`` or directions ``±1``; a pure
    function of ``seed``."""
    if n < 1:
        raise ValueError(f"sample_tasks needs n >= 1, got {n}.")
    generator = torch.Generator().manual_seed(seed)
    if kind == "vel":
        low, high = VELOCITY_RANGE
        return low + (high - low) * torch.rand(n, 1, generator=generator)
    return torch.randint(0, 2, (n, 1), generator=generator).float() * 2 - 1


def check_cheetah_tasks(kind: str, tasks: Any) -> torch.Tensor:
    """``tasks`` as a float tensor ``[B, 1]``, refused if outside the task space."""
    tasks = torch.as_tensor(np.asarray(tasks), dtype=torch.float32)
    if tasks.dim() != 2 or tasks.shape[-1] != 1:
        raise SpaceError(
            f"half-cheetah tasks have shape [tasks, 1], got {list(tasks.shape)}; use "
            "sample_tasks(n, seed)."
        )
    if kind == "vel":
        low, high = VELOCITY_RANGE
        bad = tasks[(tasks < low) | (tasks > high)]
        space = f"goal velocities in [{low}, {high}]"
    else:
        bad = tasks[(tasks != 1) & (tasks != -1)]
        space = "directions -1 or +1"
    if bad.numel():
        raise SpaceError(
            f"half-cheetah-{kind} task {bad[0].item()} is outside the task space ({space})."
        )
    return tasks


class HalfCheetahTaskEnv(gymnasium.Wrapper):
    """``HalfCheetah-v5`` with the reward of a velocity (``kind="vel"``) or direction
    (``kind="dir"``) task; truncated after ``horizon`` steps."""

    def __init__(self, kind: str, task: Any = None, horizon: int = HORIZON) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        require_mujoco()
        super().__init__(gymnasium.make("HalfCheetah-v5", max_episode_steps=horizon))
        self.kind = kind
        self._task: float | None = None
        if task is not None:
            self.set_task(task)

    def sample_tasks(self, n: int, seed: int) -> np.ndarray:
        """``n`` tasks ``[n, 1]`` of this kind, a pure function of ``seed``."""
        return sample_cheetah_tasks(self.kind, n, seed).numpy()

    def set_task(self, task: Any) -> None:
        """Use the goal velocity or direction ``task`` from the next step on."""
        self._task = check_cheetah_tasks(self.kind, np.asarray(task).reshape(1, 1)).item()

    @property
    def task(self) -> float | None:
        return self._task

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        if self._task is None:
            observation, info = self.env.reset(**kwargs)
            self.set_task(self.sample_tasks(1, int(self.env.np_random.integers(2**31)))[0])
            return observation, info
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._task is None:
            raise SpaceError("call reset() (or set_task) before step().")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise SpaceError(
                f"a half-cheetah action has shape {self.action_space.shape}, got {action.shape}."
            )
        action = np.clip(action, self.action_space.low, self.action_space.high)
        observation, _, terminated, truncated, info = self.env.step(action)
        velocity = float(info["x_velocity"])
        control = CONTROL_COST * float(np.square(action).sum())
        if self.kind == "vel":
            reward = -abs(velocity - self._task) - control
        else:
            reward = self._task * velocity - control
        info = {**info, "task": self._task}
        return observation, reward, terminated, truncated, info


class HalfCheetahVelEnv(HalfCheetahTaskEnv):
    """Half-cheetah velocity tasks: run at a goal velocity drawn from ``U[0, 2]``."""

    def __init__(self, task: Any = None, horizon: int = HORIZON) -> None:
        super().__init__("vel", task, horizon)


class HalfCheetahDirEnv(HalfCheetahTaskEnv):
    """Half-cheetah direction tasks: run forward (+1) or backward (-1)."""

    def __init__(self, task: Any = None, horizon: int = HORIZON) -> None:
        super().__init__("dir", task, horizon)


class HalfCheetahTasks:
    """``B`` tasks × ``N`` trajectories of half-cheetah environments, stepped one by one
    (MuJoCo runs on the CPU), with observations, rewards and terminations as tensors."""

    observation_dim = 17
    action_dim = 6
    task_dim = 1
    action_bound = 1.0

    def __init__(self, kind: str, horizon: int = HORIZON, device: str | torch.device = "cpu"):
        require_mujoco()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        self.kind = kind
        self.horizon = horizon
        self.device = torch.device(device)
        self._envs: list[HalfCheetahTaskEnv] = []
        self._shape = (0, 0)

    def sample_tasks(self, n: int, seed: int) -> torch.Tensor:
        return sample_cheetah_tasks(self.kind, n, seed)

    def reset(
        self, tasks: torch.Tensor, trajectories: int, seed: int | None = None
    ) -> torch.Tensor:
        """Reset one environment per (task, trajectory), the ``j``-th with seed ``seed + j``."""
        tasks = check_cheetah_tasks(self.kind, tasks.cpu())
        count = tasks.shape[0] * trajectories
        while len(self._envs) < count:
            self._envs.append(HalfCheetahTaskEnv(self.kind, horizon=self.horizon))
        self._shape = (tasks.shape[0], trajectories)
        observations = []
        for j, env in enumerate(self._envs[:count]):
            env.set_task(tasks[j // trajectories])
            observation, _ = env.reset(seed=None if seed is None else seed + j)
            observations.append(observation)
        return self._tensor(np.stack(observations))

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = (*self._shape, self.action_dim)
        if tuple(actions.shape) != shape:
            raise SpaceError(
                f"actions must have shape [tasks, trajectories, {self.action_dim}] = "
                f"{list(shape)} (as reset), got {list(actions.shape)}."
            )
        flat = actions.detach().cpu().double().numpy().reshape(-1, self.action_dim)
        observations, rewards, terminated = [], [], []
        for env, action in zip(self._envs, flat):
            observation, reward, done, _, _ = env.step(action)
            observations.append(observation)
            rewards.append(reward)
            terminated.append(done)
        return (
            self._tensor(np.stack(observations)),
            self._tensor(np.asarray(rewards)),
            torch.as_tensor(np.asarray(terminated), device=self.device).view(self._shape),
        )

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.as_tensor(array, dtype=torch.float32, device=self.device)
        return tensor.view(*self._shape, *array.shape[1:])
