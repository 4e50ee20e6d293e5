"""2D navigation (Finn et al. 2017, §5.3 and Appendix A.2): a point agent moves to a goal.

The agent starts at the origin; its observation is its position, its action a displacement
clipped to ``[-0.1, 0.1]`` per coordinate. Each task is a goal drawn uniformly from the unit
square ``[-0.5, 0.5]²``; the reward is minus the distance to the goal (``"distance"``, the
reference code ``cbfinn/maml_rl`` behind the paper's numbers) or minus its square
(``"squared"``, the paper's text), and an episode ends after 100 steps or once the agent is
within 0.01 of the goal in both coordinates.

:class:`Navigation2D` steps tasks × trajectories agents as one tensor program (a whole
meta-batch of rollouts at once); :class:`Navigation2DEnv` is one agent behind the Gymnasium
API. Both use :func:`nav2d_step`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from fastadapt.config import NAV2D_REWARDS
from fastadapt.errors import SpaceError

GOAL_LOW, GOAL_HIGH = -0.5, 0.5
ACTION_BOUND = 0.1
GOAL_TOLERANCE = 0.01
HORIZON = 100


def nav2d_step(
    position: torch.Tensor, goal: torch.Tensor, action: torch.Tensor, reward: str = "distance"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of every agent: ``(new position, reward, terminated)``.

    ``position``, ``goal`` and ``action`` are ``[..., 2]`` (broadcasting); the action is clipped
    to ``[-0.1, 0.1]``, the reward is computed at the new position.
    """
    position = position + action.clamp(-ACTION_BOUND, ACTION_BOUND)
    offset = position - goal
    squared = offset.square().sum(dim=-1)
    value = -squared if reward == "squared" else -squared.sqrt()
    terminated = (offset.abs() < GOAL_TOLERANCE).all(dim=-1)
    return position, value, terminated


def sample_goals(n: int, seed: int) -> torch.Tensor:
    """``n`` goals ``[n, 2]``, uniform in ``[-0.5, 0.5]²``; a pure function of ``seed``."""
    if n < 1:
        raise ValueError(f"sample_tasks needs n >= 1, got {n}.")
    generator = torch.Generator().manual_seed(seed)
    return GOAL_LOW + (GOAL_HIGH - GOAL_LOW) * torch.rand(n, 2, generator=generator)


def check_goals(goals: torch.Tensor) -> torch.Tensor:
    """``goals`` as a float tensor ``[B, 2]``, refused if outside the unit square."""
    goals = torch.as_tensor(goals, dtype=torch.get_default_dtype())
    if goals.dim() != 2 or goals.shape[-1] != 2:
        raise SpaceError(
            f"2D navigation tasks are goals of shape [tasks, 2], got {list(goals.shape)}; use "
            "sample_tasks(n, seed)."
        )
    outside = ~((goals >= GOAL_LOW) & (goals <= GOAL_HIGH)).all(dim=-1)
    if outside.any():
        bad = goals[outside][0].tolist()
        raise SpaceError(
            f"2D navigation goal {bad} is outside the task space [{GOAL_LOW}, {GOAL_HIGH}]²; "
            "give goals inside the unit square (sample_tasks draws them)."
        )
    return goals


def _check_reward(reward: str) -> str:
    if reward not in NAV2D_REWARDS:
        raise ValueError(f"reward must be one of {NAV2D_REWARDS}, got {reward!r}.")
    return reward


class Navigation2D:
    """Batched 2D navigation: ``B`` tasks × ``N`` trajectories stepped as tensors ``[B, N, 2]``.

    ``reset(goals, trajectories)`` puts every agent at the origin; ``step(actions)`` returns
    observations ``[B, N, 2]``, rewards ``[B, N]`` and ``terminated`` ``[B, N]``. An agent that
    has terminated keeps moving; the rollout masks its later steps out.
    """

    observation_dim = 2
    action_dim = 2
    task_dim = 2
    action_bound = ACTION_BOUND

    def __init__(
        self, horizon: int = HORIZON, reward: str = "distance", device: str | torch.device = "cpu"
    ) -> None:
        self.horizon = horizon
        self.reward = _check_reward(reward)
        self.device = torch.device(device)
        self._goals = torch.zeros(0, 1, 2, device=self.device)
        self._position = torch.zeros(0, 1, 2, device=self.device)

    def sample_tasks(self, n: int, seed: int) -> torch.Tensor:
        """``n`` goals ``[n, 2]`` uniform in the unit square, a pure function of ``seed``."""
        return sample_goals(n, seed)

    def reset(
        self, tasks: torch.Tensor, trajectories: int, seed: int | None = None
    ) -> torch.Tensor:
        """Start ``trajectories`` agents per goal at the origin; the start is deterministic, so
        ``seed`` is unused. Returns the observations ``[B, N, 2]``."""
        goals = check_goals(tasks).to(self.device)
        self._goals = goals.unsqueeze(1)
        self._position = torch.zeros(goals.shape[0], trajectories, 2, device=self.device)
        return self._position.clone()

    def step(self, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Move every agent by its clipped action ``[B, N, 2]``."""
        if actions.shape != self._position.shape:
            raise SpaceError(
                f"actions must have shape [tasks, trajectories, 2] = "
                f"{list(self._position.shape)} (as reset), got {list(actions.shape)}."
            )
        self._position, reward, terminated = nav2d_step(
            self._position, self._goals, actions, self.reward
        )
        return self._position.clone(), reward, terminated


class Navigation2DEnv(gymnasium.Env):
    """One 2D-navigation agent behind the Gymnasium API, with the task distribution of the
    paper: ``sample_tasks(n, seed)`` gives goals ``[n, 2]``, ``set_task(goal)`` picks one.

    Without a task set, :meth:`reset` draws a goal from its ``np_random``. Episodes are
    truncated after ``horizon`` steps.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(self, task: Any = None, horizon: int = HORIZON, reward: str = "distance") -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-ACTION_BOUND, ACTION_BOUND, shape=(2,), dtype=np.float32)
        self.horizon = horizon
        self.reward = _check_reward(reward)
        self._goal: torch.Tensor | None = None
        self._position = torch.zeros(2)
        self._steps = 0
        if task is not None:
            self.set_task(task)

    def sample_tasks(self, n: int, seed: int) -> np.ndarray:
        """``n`` goals ``[n, 2]``, uniform in the unit square; a pure function of ``seed``."""
        return sample_goals(n, seed).numpy()

    def set_task(self, task: Any) -> None:
        """Use the goal ``task`` (2 numbers in ``[-0.5, 0.5]``) from the next step on."""
        self._goal = check_goals(torch.as_tensor(np.asarray(task)).reshape(1, -1))[0]

    @property
    def task(self) -> np.ndarray | None:
        return None if self._goal is None else self._goal.numpy().copy()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if self._goal is None:
            self.set_task(self.np_random.uniform(GOAL_LOW, GOAL_HIGH, size=2))
        self._position = torch.zeros(2)
        self._steps = 0
        return self._position.numpy().astype(np.float32), {"goal": self.task}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._goal is None:
            raise SpaceError("call reset() (or set_task) before step().")
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise SpaceError(f"a 2D navigation action has shape (2,), got {action.shape}.")
        self._position, reward, terminated = nav2d_step(
            self._position, self._goal, torch.from_numpy(action).float(), self.reward
        )
        self._steps += 1
        observation = self._position.numpy().astype(np.float32)
        truncated = self._steps >= self.horizon and not bool(terminated)
        return observation, float(reward), bool(terminated), truncated, {"goal": self.task}
