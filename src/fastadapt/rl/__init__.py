"""Meta-reinforcement learning: MAML-RL on the MAML paper's benchmarks (Finn et al. 2017, §5.3).

- :mod:`~fastadapt.rl.nav2d`: 2D navigation, batched in torch, and as a Gymnasium ``Env``.
- :mod:`~fastadapt.rl.cheetah`: half-cheetah velocity and direction tasks on Gymnasium's
  MuJoCo ``HalfCheetah-v5`` (the ``rl`` extra).
- :mod:`~fastadapt.rl.policy`, :mod:`~fastadapt.rl.baseline`, :mod:`~fastadapt.rl.advantages`,
  :mod:`~fastadapt.rl.episodes`: Gaussian MLP policy, linear feature baseline, GAE, rollouts.
- :mod:`~fastadapt.rl.maml_rl`, :mod:`~fastadapt.rl.trpo`: the inner policy-gradient step and
  the TRPO (or Adam) outer step.
- :mod:`~fastadapt.rl.trainer`, :mod:`~fastadapt.rl.run`: run folders from the CLI
  (``fastadapt train nav2d-maml-trpo``).
"""

from fastadapt.rl.episodes import Episodes, TaskEnv, rollout
from fastadapt.rl.maml_rl import MAMLRL
from fastadapt.rl.nav2d import Navigation2D, Navigation2DEnv
from fastadapt.rl.policy import GaussianMLPPolicy

__all__ = [
    "MAMLRL",
    "Episodes",
    "GaussianMLPPolicy",
    "Navigation2D",
    "Navigation2DEnv",
    "TaskEnv",
    "rollout",
]
