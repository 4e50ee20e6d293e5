"""Meta-RL run folders: train a configuration whose ``task.family`` is an RL task family,
evaluate it, record the results (the same layout as :mod:`fastadapt.engine.run`).

The evaluation is the paper's (Finn et al. 2017, §5.3): on fixed test tasks, the mean return
of ``rl.trajectories`` trajectories of the meta-learned policy and of the policy after 1, 2,
… policy-gradient steps, each on the trajectories of the policy before it; the first step has
size ``eval.inner_lr`` (default ``algorithm.inner_lr``), the later ones that times
``eval.later_lr_scale`` (the presets: 0.5, the paper's halving, Appendix A.2); every figure is
the mean ± 95% CI over tasks.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from fastadapt.config import RL_FAMILIES, RunConfig
from fastadapt.engine import distributed
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.evaluate import estimates_to_json, mean_ci95
from fastadapt.engine.plots import load_pyplot, plot_learning_curves
from fastadapt.engine.run import (
    _append_result,
    _check_resume_compatible,
    _claim_new_run_folder,
    _device,
    checkpoint_path,
)
from fastadapt.errors import ConfigError
from fastadapt.io.atomic import atomic_write_text
from fastadapt.rl.cheetah import HalfCheetahTasks
from fastadapt.rl.episodes import Episodes, TaskEnv
from fastadapt.rl.maml_rl import MAMLRL
from fastadapt.rl.nav2d import Navigation2D
from fastadapt.rl.plots import plot_adaptation_curve, plot_nav2d_trajectories
from fastadapt.rl.policy import GaussianMLPPolicy
from fastadapt.rl.trainer import TEST, RLSchedule, RLTrainer, generator, stream_seed

OUTER_OPTIMIZERS = ("trpo", "adam")
#: 2D-navigation test tasks whose trajectories ``--plots`` draws.
PLOTTED_TASKS = 4


def check_one_process(processes: int) -> None:
    """Refuse to train or evaluate a meta-RL run in several processes.

    Raises:
        ConfigError: ``processes`` is more than one; meta-RL training runs in one process.
    """
    if processes > 1:
        raise ConfigError(
            f"meta-RL runs train and evaluate in one process, not {processes}: leave out "
            "--nproc and start fastadapt without torchrun (the environments of a meta-batch "
            "already step together in one batched simulation)."
        )


def is_rl_run(run_dir: Path) -> bool:
    """Whether the run folder ``run_dir`` holds a meta-RL run (by its ``config.json``)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return False
    try:
        family = json.loads(path.read_text(encoding="utf-8"))["task"]["family"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    return family in RL_FAMILIES


def build_env(config: RunConfig, device: torch.device | str = "cpu") -> TaskEnv:
    """The batched environment of ``task.family`` with its task distribution."""
    family = config.task.family
    if family == "nav2d":
        return Navigation2D(config.rl.horizon, config.rl.nav2d_reward, device)
    if family in ("cheetah-vel", "cheetah-dir"):
        return HalfCheetahTasks(family.removeprefix("cheetah-"), config.rl.horizon, device)
    raise ConfigError(f"task.family {family!r} is not a meta-RL family ({RL_FAMILIES}).")


def build_rl_learner(config: RunConfig, env: TaskEnv) -> MAMLRL:
    """MAML-RL with a freshly initialised Gaussian MLP policy (seeded by ``train.seed``)."""
    _check_rl_config(config)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.train.seed)
            policy = GaussianMLPPolicy(
                env.observation_dim,
                env.action_dim,
                config.model.hidden,
                config.model.activation,
                config.rl.init_log_std,
                env.action_bound,
                config.model.init,
            )
        return MAMLRL(
            policy,
            inner_lr=config.algorithm.inner_lr,
            inner_steps=config.algorithm.inner_steps,
            first_order=config.algorithm.first_order,
            gamma=config.rl.gamma,
            gae_lambda=config.rl.gae_lambda,
            baseline_reg=config.rl.baseline_reg,
        )
    except ValueError as error:
        raise ConfigError(f"invalid configuration: {error}") from error


def _check_rl_config(config: RunConfig) -> None:
    if config.algorithm.name != "maml":
        raise ConfigError(
            f"meta-RL (task.family={config.task.family}) is implemented for MAML only, got "
            f"algorithm.name={config.algorithm.name!r}; use --set algorithm.name=maml."
        )
    if config.model.kind != "mlp":
        raise ConfigError(
            f"meta-RL policies are Gaussian MLPs; use --set model.kind=mlp, got "
            f"{config.model.kind!r}."
        )
    if config.train.optimizer not in OUTER_OPTIMIZERS:
        raise ConfigError(
            f"meta-RL's outer step is one of {', '.join(OUTER_OPTIMIZERS)}, got "
            f"train.optimizer={config.train.optimizer!r}; e.g. --set train.optimizer=trpo."
        )


def _schedule(config: RunConfig) -> RLSchedule:
    rl, train = config.rl, config.train
    return RLSchedule(
        steps=train.steps,
        meta_batch=train.meta_batch,
        max_hours=train.max_hours,
        trajectories=rl.trajectories,
        env_steps=rl.env_steps,
        outer=train.optimizer,
        lr=train.lr,
        trpo={
            "max_kl": rl.max_kl,
            "cg_iters": rl.cg_iters,
            "cg_damping": rl.cg_damping,
            "backtrack": rl.ls_backtrack,
            "max_backtracks": rl.ls_steps,
        },
        val_every=train.val_every,
        val_tasks=train.val_tasks,
        eval_lr=_eval_lr(config),
        val_steps=max(1, *config.eval.report_steps),
        val_later_lr=_later_lr(config),
        val_env_steps=config.eval.env_steps,
        checkpoint_every=train.checkpoint_every,
        log_every=train.log_every,
        seed=train.seed,
    )


def _eval_lr(config: RunConfig) -> float:
    return config.eval.inner_lr or config.algorithm.inner_lr


def _later_lr(config: RunConfig) -> float:
    """The step size of the test-time steps after the first."""
    return _eval_lr(config) * config.eval.later_lr_scale


def train_rl_run(
    config: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    plots: bool = False,
) -> dict[str, Any]:
    """Meta-train ``config`` into ``out`` (or continue it), then evaluate the best checkpoint
    on the test tasks (:func:`evaluate_rl_run`); as :func:`fastadapt.engine.run.train_run`."""
    check_one_process(_launched_processes())
    if plots:
        load_pyplot()
    _check_rl_config(config)
    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
        _check_resume_compatible(checkpoint.config, config.to_dict(), out)
    else:
        _claim_new_run_folder(out)
    device = _device(config.train.device)
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    env = build_env(config, device)
    learner = build_rl_learner(config, env).to(device)
    atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    trainer = RLTrainer(
        learner,
        env,
        _schedule(config),
        out,
        config.to_dict(),
        device,
        progress,
        on_flush=(lambda: plot_learning_curves(out)) if plots else None,
    )
    return evaluate_rl_run(out, extra=trainer.fit(checkpoint).record(), plots=plots)


def evaluate_rl_run(
    run_dir: Path,
    *,
    overrides: list[str] | None = None,
    checkpoint: str = "best",
    extra: dict[str, Any] | None = None,
    plots: bool = False,
) -> dict[str, Any]:
    """Evaluate a meta-RL run on its fixed test tasks; append the record to ``results.json``.

    ``overrides`` may only change ``eval.*`` settings. With ``plots`` the evaluation draws
    ``adaptation.png`` (return against adaptation steps, beside the paper's numbers) and, for
    2D navigation, ``trajectories.png`` (trajectories before and after adaptation, goal
    marked).
    """
    check_one_process(_launched_processes())
    if plots:
        load_pyplot()
    for assignment in overrides or []:
        if not assignment.strip().startswith("eval."):
            raise ConfigError(
                f"`fastadapt eval` only accepts eval.* settings, got {assignment!r}; the other "
                "settings are fixed by the trained run (train a new run to change them)."
            )
    path = checkpoint_path(run_dir, checkpoint)
    state = load_checkpoint(path)
    config = RunConfig.from_dict(state.config).override(overrides or [])
    device = _device(config.train.device)
    env = build_env(config, device)
    learner = build_rl_learner(config, env).to(device)
    learner.load_state_dict(state.learner)
    started = time.perf_counter()
    returns, before, after, tasks = _test_returns(config, env, learner, device)
    estimates = {f"return@{k}": mean_ci95(returns[k]) for k in config.eval.report_steps}
    record = {
        "checkpoint": path.name,
        "step": state.step,
        "protocol": rl_protocol(config),
        "metrics": estimates_to_json(estimates),
        "reference": config.to_dict()["reference"],
        "eval_seconds": time.perf_counter() - started,
        **(extra or {}),
    }
    if plots:
        title = f"{config.preset} (MAML-RL, step {state.step})"
        figures = [
            plot_adaptation_curve(
                estimates, config.reference.values, run_dir / "adaptation.png", title
            )
        ]
        if config.task.family == "nav2d":
            steps = max(config.eval.report_steps)
            figures.append(
                plot_nav2d_trajectories(
                    tasks[:PLOTTED_TASKS], before, after, steps, run_dir / "trajectories.png", title
                )
            )
        record["plots"] = [figure.name for figure in figures]
    _append_result(run_dir / "results.json", record)
    return record


def _test_returns(
    config: RunConfig, env: TaskEnv, learner: MAMLRL, device: torch.device
) -> tuple[torch.Tensor, Episodes, Episodes, torch.Tensor]:
    """Per-task mean returns ``[steps + 1, tasks]`` after 0…steps adaptation steps, the
    first chunk's trajectories before and after the last step, and the test tasks."""
    evaluation = config.eval
    steps = max(evaluation.report_steps)
    tasks = env.sample_tasks(evaluation.tasks, stream_seed(evaluation.seed, TEST))
    chunks, samples = [], []
    for start in range(0, evaluation.tasks, evaluation.batch):
        rng = generator(stream_seed(evaluation.seed, TEST, start + 1), device)
        part = tasks[start : start + evaluation.batch].to(device)
        returns, episodes = learner.adaptation_returns(
            env,
            part,
            steps,
            config.rl.trajectories,
            _eval_lr(config),
            rng,
            later_lr=_later_lr(config),
            env_steps=evaluation.env_steps,
        )
        chunks.append(returns.cpu())
        samples = samples or episodes
    return torch.cat(chunks, dim=1), samples[0], samples[-1], tasks


def rl_protocol(config: RunConfig) -> dict[str, Any]:
    """The evaluation protocol, stored beside every number."""
    return {
        "split": "test",
        "family": config.task.family,
        "algorithm": "maml-rl",
        "tasks": config.eval.tasks,
        "trajectories": config.rl.trajectories,
        "env_steps": config.eval.env_steps,
        "horizon": config.rl.horizon,
        "inner_lr": _eval_lr(config),
        "later_lr": _later_lr(config),
        "report_steps": config.eval.report_steps,
        "seed": config.eval.seed,
    }


def _launched_processes() -> int:
    """The number of processes of the torchrun job this process belongs to (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1")) if distributed.launched() else 1
