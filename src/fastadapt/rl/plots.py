"""Figures of a meta-RL evaluation (need the ``plots`` extra): the return against the number
of adaptation steps beside the paper's numbers, and 2D-navigation trajectories before and
after adaptation with the goal marked (as Finn et al. 2017, Figure 4)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from fastadapt.engine.evaluate import Estimate
from fastadapt.engine.plots import _save, load_pyplot
from fastadapt.rl.episodes import Episodes

#: Trajectories drawn per task and panel.
DRAWN_TRAJECTORIES = 5


def plot_adaptation_curve(
    estimates: Mapping[str, Estimate],
    paper: Mapping[str, float],
    out: Path,
    title: str = "",
) -> Path:
    """Mean return ± 95% CI against the number of policy-gradient steps (``return@k``), with
    the paper's values where it gives them. Returns ``out``."""
    plt = load_pyplot()
    steps = sorted(int(name.split("@")[1]) for name in estimates)
    means = [estimates[f"return@{k}"].mean for k in steps]
    errors = [estimates[f"return@{k}"].ci95 for k in steps]
    figure, axis = plt.subplots(figsize=(5, 3.6))
    axis.errorbar(steps, means, yerr=errors, marker="o", capsize=3, label="fastadapt (± 95% CI)")
    known = [k for k in steps if f"return@{k}" in paper]
    if known:
        axis.plot(known, [paper[f"return@{k}"] for k in known], "s--", color="C3", label="paper")
    axis.set_xticks(steps)
    axis.set_xlabel("policy-gradient steps at test time")
    axis.set_ylabel("average return")
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    axis.set_title(title, fontsize="medium")
    return _save(plt, figure, out)


def plot_nav2d_trajectories(
    goals: torch.Tensor,
    before: Episodes,
    after: Episodes,
    steps: int,
    out: Path,
    title: str = "",
) -> Path:
    """For each goal ``[k, 2]``, a few trajectories of the meta-learned policy (before) and
    of the policy after ``steps`` policy-gradient steps (after), from the origin, with the
    goal marked. Returns ``out``."""
    plt = load_pyplot()
    count = goals.shape[0]
    figure, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.4), squeeze=False)
    for index, axis in enumerate(axes[0]):
        for episodes, color, label in (
            (before, "C0", "before adaptation"),
            (after, "C2", f"after {steps} step{'s' * (steps != 1)}"),
        ):
            for n in range(min(DRAWN_TRAJECTORIES, episodes.observations.shape[1])):
                valid = episodes.mask[index, n] > 0
                path = episodes.observations[index, n][valid].cpu()
                axis.plot(
                    path[:, 0],
                    path[:, 1],
                    color=color,
                    alpha=0.6,
                    linewidth=1,
                    label=label if n == 0 else None,
                )
        goal = goals[index].cpu()
        axis.scatter([0], [0], color="k", marker="o", s=20, zorder=3, label="start")
        axis.scatter([goal[0]], [goal[1]], color="C3", marker="*", s=150, zorder=3, label="goal")
        axis.set_aspect("equal", adjustable="datalim")
        axis.grid(alpha=0.3)
        axis.set_title(f"goal ({goal[0]:.2f}, {goal[1]:.2f})", fontsize="small")
    axes[0][0].legend(loc="lower left", fontsize="x-small")
    figure.suptitle(title, fontsize="medium")
    return _save(plt, figure, out)
