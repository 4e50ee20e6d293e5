"""The meta-RL training loop: sample a meta-batch of tasks, roll out, adapt, take an outer step.

It keeps the supervised :class:`~fastadapt.engine.trainer.Trainer`'s contract: atomic
``checkpoints/last.pt`` and ``best.pt`` (:mod:`fastadapt.engine.checkpoint`), ``metrics.csv``
(:mod:`fastadapt.engine.metrics_log`), bit-exact ``--resume``, and a stop on a non-finite
value with the last good checkpoint intact. Meta-iteration ``s`` draws its tasks and its
rollouts' random numbers from generators seeded by ``(seed, s)`` alone, so a resumed run
samples exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fastadapt.engine.checkpoint import (
    Checkpoint,
    capture_rng_state,
    restore_rng_state,
    save_checkpoint,
)
from fastadapt.engine.evaluate import Estimate, mean_ci95
from fastadapt.engine.metrics_log import MetricsLog
from fastadapt.engine.trainer import TrainSummary
from fastadapt.engine.training_clock import TrainingClock
from fastadapt.errors import NonFiniteLossError
from fastadapt.rl.episodes import TaskEnv
from fastadapt.rl.maml_rl import MAMLRL
from fastadapt.tasks.counter_rng import stream_key

#: Streams of seeds: training tasks, training rollouts, validation tasks and rollouts, test.
TRAIN_TASKS, TRAIN_ROLLOUTS, VAL, TEST = 0, 1, 2, 3
#: The metric that ranks checkpoints: the return after 1, 2, …, K adaptation steps (the test
#: protocol's steps), averaged over the steps and the validation tasks.
HEADLINE = "adapted_return"


def stream_seed(seed: int, stream: int, index: int = 0) -> int:
    """A 63-bit seed that is a pure function of ``(seed, stream, index)``."""
    return int(stream_key(seed, stream, index)) & (2**63 - 1)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed``."""
    return torch.Generator(device=device).manual_seed(seed)


@dataclass(frozen=True)
class RLSchedule:
    """How long to train and how: ``steps`` meta-iterations (fewer if the run's training time
    reaches ``max_hours``, :mod:`~fastadapt.engine.training_clock`) of ``meta_batch`` tasks with
    ``trajectories`` per task and inner step; the outer step is ``"trpo"`` (with ``trpo``'s
    keyword settings of :func:`~fastadapt.rl.trpo.trpo_step`) or ``"adam"`` (rate ``lr``);
    with ``env_steps``, training rollouts take whole episodes up to that many environment
    steps per task instead (in rounds of ``trajectories``). Validation runs the test protocol
    on ``val_tasks`` fixed tasks: ``val_steps`` adaptation steps, the first of size
    ``eval_lr`` and the later ones ``val_later_lr``, each on ``trajectories`` episodes or
    ``val_env_steps`` environment steps per task; checkpoints are ranked by the return after
    those steps averaged over them (``HEADLINE``), since a policy whose return after one step
    is flat can still get better or worse after the later ones."""

    steps: int
    meta_batch: int
    trajectories: int
    max_hours: float | None = None
    outer: str = "trpo"
    lr: float = 1e-3
    trpo: dict[str, float] | None = None
    val_every: int = 25
    val_tasks: int = 40
    eval_lr: float = 0.1
    val_steps: int = 1
    val_later_lr: float | None = None
    val_env_steps: int | None = None
    checkpoint_every: int = 25
    log_every: int = 1
    seed: int = 0
    env_steps: int | None = None


class RLTrainer:
    """Meta-trains ``learner`` on the task distribution of ``env`` (see the module)."""

    def __init__(
        self,
        learner: MAMLRL,
        env: TaskEnv,
        schedule: RLSchedule,
        run_dir: Path,
        config: dict[str, Any],
        device: torch.device,
        progress: bool = True,
        on_flush: Callable[[], None] | None = None,
    ) -> None:
        self.learner, self.env, self.schedule = learner, env, schedule
        self.run_dir, self.config, self.device = run_dir, config, device
        self.progress, self.on_flush = progress, on_flush
        self.optimizer = (
            torch.optim.Adam(learner.parameters(), lr=schedule.lr)
            if schedule.outer == "adam"
            else None
        )
        self.clock = TrainingClock(schedule.max_hours)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    def fit(self, resume_from: Checkpoint | None = None) -> TrainSummary:
        """Train to ``schedule.steps`` meta-iterations (or until ``schedule.max_hours`` of
        training), fresh or from a checkpoint of the run."""
        step, best = 0, {"metric": HEADLINE, "value": None, "step": None}
        self.clock.start(resume_from.train_seconds if resume_from is not None else 0.0)
        if resume_from is not None:
            self.learner.load_state_dict(resume_from.learner)
            if self.optimizer is not None:
                self.optimizer.load_state_dict(resume_from.optimizer)
            restore_rng_state(resume_from.rng)
            step = resume_from.step
            if resume_from.best.get("metric") == HEADLINE:
                best = dict(resume_from.best)
        log = MetricsLog(self.run_dir / "metrics.csv", resume_step=step if resume_from else None)
        schedule = self.schedule
        out_of_time = self.clock.spent()
        bar = tqdm(
            total=schedule.steps,
            initial=step,
            disable=not self.progress,
            desc="meta-train",
            dynamic_ncols=True,
        )
        try:
            while step < schedule.steps and not out_of_time:
                row = self._meta_step(step)
                step += 1
                bar.update(1)
                out_of_time = self.clock.spent()
                last = step == schedule.steps or out_of_time
                validate = step % schedule.val_every == 0 or last
                if validate:
                    estimate, per_step = self.validate()
                    row.update({f"val_return@{k}": v for k, v in enumerate(per_step)})
                    row[f"val_{HEADLINE}"], row[f"val_{HEADLINE}_ci95"] = (
                        estimate.mean,
                        estimate.ci95,
                    )
                    if math.isfinite(estimate.mean) and (
                        best["value"] is None or estimate.mean > best["value"]
                    ):
                        best = {"metric": HEADLINE, "value": estimate.mean, "step": step}
                        save_checkpoint(self.best_path, self._checkpoint(step, best))
                if validate or step % schedule.log_every == 0:
                    log.append(step, row)
                    bar.set_postfix(
                        {k: f"{v:.2f}" for k, v in row.items() if k.startswith(("train_r", "val"))},
                        refresh=False,
                    )
                if step % schedule.checkpoint_every == 0 or last:
                    save_checkpoint(self.last_path, self._checkpoint(step, best))
                    log.flush()
                    if self.on_flush is not None and log.rows:
                        self.on_flush()
        finally:
            bar.close()
            log.flush()
        return TrainSummary(
            step, self.clock.session_seconds, self.clock.total_seconds, best, out_of_time
        )

    def _meta_step(self, step: int) -> dict[str, float]:
        schedule, seed = self.schedule, self.schedule.seed
        tasks = self.env.sample_tasks(schedule.meta_batch, stream_seed(seed, TRAIN_TASKS, step))
        rng = generator(stream_seed(seed, TRAIN_ROLLOUTS, step), self.device)
        batch = self.learner.sample(
            self.env, tasks.to(self.device), schedule.trajectories, rng, schedule.env_steps
        )
        before = batch.train[0].mean_returns().mean().item()
        after = batch.valid.mean_returns().mean().item()
        self._check_finite(step, {"return before adaptation": before, "after": after})
        row = {"train_return@0": before, "train_return@1": after}
        if self.optimizer is not None:
            row["train_surrogate"] = self.learner.gradient_update(batch, self.optimizer)
        else:
            stats = self.learner.trpo_update(batch, **(schedule.trpo or {}))
            row.update(
                train_surrogate=stats.loss_before,
                train_improvement=stats.loss_before - stats.loss_after,
                train_kl=stats.kl,
                train_step_fraction=stats.step_fraction,
            )
        self._check_finite(step, row)
        return row

    def validate(self) -> tuple[Estimate, list[float]]:
        """The test protocol on the fixed validation tasks: the ``HEADLINE`` estimate (over
        tasks) and the mean return after 0, 1, …, ``val_steps`` steps."""
        schedule = self.schedule
        tasks = self.env.sample_tasks(schedule.val_tasks, stream_seed(schedule.seed, VAL))
        rng = generator(stream_seed(schedule.seed, VAL, 1), self.device)
        returns, _ = self.learner.adaptation_returns(
            self.env,
            tasks.to(self.device),
            schedule.val_steps,
            schedule.trajectories,
            schedule.eval_lr,
            rng,
            later_lr=schedule.val_later_lr,
            env_steps=schedule.val_env_steps,
        )
        return mean_ci95(returns[1:].mean(dim=0)), returns.mean(dim=1).tolist()

    def _check_finite(self, step: int, values: dict[str, float]) -> None:
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        params_ok = all(torch.isfinite(p).all() for p in self.learner.parameters())
        if bad or not params_ok:
            what = f"{bad}" if bad else "the policy's parameters"
            raise NonFiniteLossError(
                f"{what} became non-finite at meta-iteration {step + 1}; training stopped. The "
                f"last good checkpoint is {self.last_path} (if one was written). Lower rl.max_kl "
                "(TRPO), train.lr (Adam) or algorithm.inner_lr, then start again or resume."
            )

    def _checkpoint(self, step: int, best: dict[str, Any]) -> Checkpoint:
        state = self.learner.state_dict()
        return Checkpoint(
            step=step,
            config=self.config,
            learner={k: v.detach().cpu().clone() for k, v in state.items()},
            optimizer=self.optimizer.state_dict() if self.optimizer is not None else {},
            best=best,
            rng=capture_rng_state(),
            train_seconds=self.clock.total_seconds,
        )
