"""Environment steps per second of the batched 2D navigation (:class:`Navigation2D`).

Two figures per batch shape (tasks × trajectories): the environment alone stepping random
actions, and a full rollout (policy forward pass with per-task parameters, Gaussian
sampling, environment step, bookkeeping) as MAML-RL samples it, beside a loop over one
Gymnasium ``Navigation2DEnv`` per trajectory for reference. An environment step is one agent
moving once.

    python benchmarks/nav2d_env_speed.py [--device cpu|cuda] [--repeats 3]

Prints a table and writes ``benchmarks/results/nav2d_env_speed[_cuda].json``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _report import machine, write_json

from fastadapt.rl.episodes import rollout
from fastadapt.rl.nav2d import Navigation2D, Navigation2DEnv
from fastadapt.rl.policy import GaussianMLPPolicy

SHAPES = [(1, 20), (20, 20), (40, 20), (200, 50)]
HORIZON = 100


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _best_of(repeats: int, device: torch.device, run, *args) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        run(*args)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


def _env_only(env: Navigation2D, goals: torch.Tensor, trajectories: int) -> None:
    env.reset(goals, trajectories)
    actions = torch.rand(HORIZON, goals.shape[0], trajectories, 2, device=env.device) - 0.5
    for t in range(HORIZON):
        env.step(actions[t])


def _gymnasium_loop(goals: np.ndarray, trajectories: int) -> None:
    env = Navigation2DEnv(horizon=HORIZON)
    rng = np.random.default_rng(0)
    for goal in goals:
        env.set_task(goal)
        for _ in range(trajectories):
            env.reset()
            for _ in range(HORIZON):
                env.step(rng.uniform(-0.1, 0.1, size=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    policy = GaussianMLPPolicy(2, 2).to(device)
    env = Navigation2D(HORIZON, device=device)
    rows = []
    print(f"2D navigation, horizon {HORIZON}, device {device}; environment steps per second")
    print("| tasks × trajectories | environment alone | rollout with the policy | Gymnasium loop |")
    print("|---|---:|---:|---:|")
    for tasks, trajectories in SHAPES:
        goals = env.sample_tasks(tasks, seed=0).to(device)
        steps = tasks * trajectories * HORIZON
        env_seconds = _best_of(args.repeats, device, _env_only, env, goals, trajectories)
        params = policy.task_params(tasks)
        rng = torch.Generator(device=device).manual_seed(0)
        roll_seconds = _best_of(
            args.repeats, device, rollout, env, policy, params, goals, trajectories, rng
        )
        gym_rate = None
        if tasks * trajectories <= 400:
            gym_seconds = _best_of(1, device, _gymnasium_loop, goals.cpu().numpy(), trajectories)
            gym_rate = steps / gym_seconds
        row = {
            "tasks": tasks,
            "trajectories": trajectories,
            "env_steps_per_s": steps / env_seconds,
            "rollout_steps_per_s": steps / roll_seconds,
            "gymnasium_loop_steps_per_s": gym_rate,
        }
        rows.append(row)
        gym = f"{gym_rate:,.0f}" if gym_rate else "-"
        print(
            f"| {tasks} × {trajectories} | {row['env_steps_per_s']:,.0f} | "
            f"{row['rollout_steps_per_s']:,.0f} | {gym} |"
        )
    suffix = "" if device.type == "cpu" else f"_{device.type}"
    path = write_json(
        f"nav2d_env_speed{suffix}.json",
        {"benchmark": "nav2d_env_speed", "horizon": HORIZON, "rows": rows, "machine": machine()},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
