"""The meta-training loop: tasks in, meta-gradient steps out, with validation and checkpoints.

The trainer knows only the :class:`~fastadapt.algorithms.base.MetaLearner` interface and a
task source. Task batch ``s`` of the training stream holds tasks ``s·B … s·B+B-1``, a pure
function of the seed, so a resumed run sees exactly the tasks it would have seen.

In a distributed job (:mod:`fastadapt.engine.distributed`) rank ``r`` of ``W`` takes the
``r``-th contiguous ``B/W`` of those tasks, the ranks average their gradients and floating-point
buffers before each update, and only rank 0 writes checkpoints, logs and progress: the model
is the one a single process trains, up to the order of floating-point additions.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from fastadapt.algorithms.base import MetaLearner
from fastadapt.engine import distributed
from fastadapt.engine.build import TaskFamily, task_count
from fastadapt.engine.checkpoint import (
    Checkpoint,
    capture_rng_state,
    restore_rng_state,
    save_checkpoint,
)
from fastadapt.engine.evaluate import Estimate, evaluate
from fastadapt.engine.metrics_log import MetricsLog
from fastadapt.engine.training_clock import TrainingClock
from fastadapt.errors import ConfigError, NonFiniteLossError
from fastadapt.nn.precision import training_autocast
from fastadapt.tasks.task import TaskBatch


@dataclass(frozen=True)
class TrainSchedule:
    """How long to train and how often to log, validate and checkpoint (all in steps).

    ``max_hours`` ends the run earlier, after the first step at which its training time (over
    every resumed session) reaches the budget; that step is validated and checkpointed like a
    last step. The learning-rate schedule still counts to ``steps``: a linear schedule cut
    short by the budget has not annealed to 0.

    With ``lr_decay_every``, step ``s`` uses the learning rate
    ``lr * lr_decay ** (s // lr_decay_every)`` (e.g. Prototypical Networks halve it every 2000
    episodes); with ``lr_schedule="linear"``, ``lr * (1 - s / steps)``, down to 0 at the last
    step (Reptile's annealed outer step size). Either is a pure function of the step, so
    resuming needs no scheduler state.

    ``precision="bfloat16"`` runs each step's forward pass in mixed precision
    (:mod:`fastadapt.nn.precision`); validation runs in float32.
    """

    steps: int
    meta_batch: int
    max_hours: float | None = None
    lr: float = 1e-3
    lr_decay: float = 1.0
    lr_decay_every: int | None = None
    lr_schedule: str = "step"
    task_chunk: int | None = None
    precision: str = "float32"
    val_every: int = 1000
    val_tasks: int = 100
    eval_batch: int = 100
    checkpoint_every: int = 1000
    log_every: int = 100
    tensorboard: bool = False
    seed: int = 0
    """Seeds the random draws of each training step per rank in a distributed job
    (:func:`fastadapt.engine.distributed.seed_training_noise`)."""


@dataclass
class TrainSummary:
    """How a call to :meth:`Trainer.fit` ended: the step reached, this call's wall time, the
    run's total training wall time over all its sessions (None if an earlier session's
    checkpoint did not record it), the best validation score, and whether the run's time
    budget (``max_hours``) ended it before its last step."""

    steps: int
    seconds: float
    total_seconds: float | None
    best: dict[str, Any]
    out_of_time: bool = False

    def record(self) -> dict[str, Any]:
        """What the evaluation record after training stores of it (``results.json``)."""
        return {
            "train_seconds": self.total_seconds,
            "train_seconds_this_session": self.seconds,
            "train_steps": self.steps,
            "stopped_by_max_hours": self.out_of_time,
            "best": self.best,
        }


class Trainer:
    """Trains ``learner`` on ``train_tasks``, validating on fixed ``val_tasks``.

    Checkpoints ``checkpoints/last.pt`` (every ``checkpoint_every`` steps and at the end) and
    ``checkpoints/best.pt`` (at each validation that improves the headline metric) are written
    atomically with the configuration, step and every RNG state. Validation logs the headline
    metric and its 95% confidence half-width (``val_accuracy`` and ``val_accuracy_ci95``).
    In a distributed job every rank runs ``fit``; only rank 0 writes files and shows progress.
    ``on_flush``, if given, is called each time ``metrics.csv`` is written with rows in it
    (e.g. to redraw the learning curves).
    """

    def __init__(
        self,
        learner: MetaLearner,
        optimizer: torch.optim.Optimizer,
        train_tasks: TaskFamily,
        val_tasks: TaskFamily,
        schedule: TrainSchedule,
        run_dir: Path,
        config: dict[str, Any],
        device: torch.device,
        progress: bool = True,
        on_flush: Callable[[], None] | None = None,
    ) -> None:
        self.learner, self.optimizer = learner, optimizer
        self.on_flush = on_flush
        self.train_tasks, self.val_tasks = train_tasks, val_tasks
        self.schedule, self.run_dir, self.config = schedule, run_dir, config
        self.device, self.progress = device, progress
        self.headline, self.higher_is_better = learner.headline_metric
        self.clock = TrainingClock(schedule.max_hours)

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.run_dir / "checkpoints" / "best.pt"

    def fit(self, resume_from: Checkpoint | None = None) -> TrainSummary:
        """Train to ``schedule.steps`` (or until ``schedule.max_hours`` of training), starting
        fresh or from a checkpoint of this run."""
        step, best = 0, {"metric": self.headline, "value": None, "step": None}
        self.clock.start(resume_from.train_seconds if resume_from is not None else 0.0)
        if resume_from is not None:
            self.learner.load_state_dict(resume_from.learner)
            self.optimizer.load_state_dict(resume_from.optimizer)
            restore_rng_state(resume_from.rng)
            step, best = resume_from.step, dict(resume_from.best)
        distributed.check_meta_batch(self.schedule.meta_batch)
        distributed.broadcast_module(self.learner)
        main = distributed.is_main()
        log = MetricsLog(self.run_dir / "metrics.csv", resume_step=step if resume_from else None)
        board = self._tensorboard(step) if self.schedule.tensorboard and main else None
        out_of_time = self._out_of_time()
        bar = tqdm(
            total=self.schedule.steps,
            initial=step,
            disable=not (self.progress and main),
            desc="meta-train",
            dynamic_ncols=True,
        )
        postfix: dict[str, str] = {}
        try:
            while step < self.schedule.steps and not out_of_time:
                metrics = self._meta_step(step)
                step += 1
                bar.update(1)
                out_of_time = self._out_of_time()
                last = step == self.schedule.steps or out_of_time
                row: dict[str, float] = {}
                if step % self.schedule.log_every == 0 or last:
                    metrics = distributed.mean_over_ranks(metrics)
                    row.update({f"train_{k}": v.item() for k, v in metrics.items()})
                    postfix["loss"] = f"{row[f'train_{self.learner.loss_metric}']:.4f}"
                if step % self.schedule.val_every == 0 or last:
                    estimate = self._validate()
                    value = estimate.mean
                    row[f"val_{self.headline}"] = value
                    row[f"val_{self.headline}_ci95"] = estimate.ci95
                    postfix[f"val_{self.headline}"] = f"{value:.4f}"
                    if self._improves(value, best["value"]):
                        best = {"metric": self.headline, "value": value, "step": step}
                        self._save(self.best_path, step, best)
                if row and main:
                    log.append(step, row)
                    bar.set_postfix(postfix, refresh=False)
                    if board is not None:
                        for name, value in row.items():
                            board.add_scalar(name.replace("_", "/", 1), value, step)
                if step % self.schedule.checkpoint_every == 0 or last:
                    self._save(self.last_path, step, best)
                    if main:
                        log.flush()
                        if self.on_flush is not None and log.rows:
                            self.on_flush()
        finally:
            bar.close()
            if main:
                log.flush()
            if board is not None:
                board.close()
        return TrainSummary(
            step, self.clock.session_seconds, self.clock.total_seconds, best, out_of_time
        )

    def _out_of_time(self) -> bool:
        """Whether the run's time budget is spent (on any rank: all stop at the same step)."""
        return self.schedule.max_hours is not None and distributed.any_rank(self.clock.spent())

    def _tensorboard(self, start_step: int) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            raise ConfigError(
                "train.tensorboard=true needs TensorBoard: pip install 'fastadapt[tensorboard]'."
            ) from error
        # purge_step drops events a killed run logged after its last checkpoint.
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=start_step + 1)

    def _meta_step(self, step: int) -> dict[str, torch.Tensor]:
        """One update from task batch ``step`` (this rank's share of it, in a job)."""
        whole = self.schedule.meta_batch
        tasks = distributed.shard(range(step * whole, (step + 1) * whole))
        batch = self.train_tasks.batch(tasks).to(self.device)
        chunk = self.schedule.task_chunk or len(tasks)
        distributed.seed_training_noise(self.schedule.seed, step)
        try:
            totals = self._accumulate_gradients(batch, chunk, step)
        except (torch.OutOfMemoryError, RuntimeError) as error:
            if not _out_of_memory(error):
                raise
            raise ConfigError(self._out_of_memory_advice(batch, chunk)) from error
        distributed.all_reduce_gradients(self.learner.parameters())
        distributed.average_buffers(self.learner)
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate(step)
        self.optimizer.step()
        return totals

    def _accumulate_gradients(
        self, batch: TaskBatch, chunk: int, step: int
    ) -> dict[str, torch.Tensor]:
        """Zero the gradients, then add those of the mean meta-loss over ``batch``, computed
        ``chunk`` tasks at a time; returns the mean training metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        size = batch.num_tasks
        totals: dict[str, torch.Tensor] = {}
        for start in range(0, size, chunk):
            part = batch[start : start + chunk]
            with training_autocast(self.device, self.schedule.precision):
                output = self.learner.meta_loss(part)
                finite = bool(torch.isfinite(output.loss))
                failed = distributed.any_rank(not finite)
                cause = self.learner.explain_non_finite(part) if not finite else None
            if failed:
                value = output.loss.item() if not finite else "non-finite in another process"
                raise NonFiniteLossError(
                    f"the meta-loss became {value} at step {step + 1}"
                    f"{f' ({cause})' if cause else ''}; training stopped. The last good "
                    f"checkpoint is {self.last_path} (if one was written). Lower train.lr or "
                    "the inner learning rate, then start again or resume."
                )
            weight = len(part) / size
            (output.loss * weight).backward()
            for name, value in output.metrics.items():
                totals[name] = totals.get(name, 0.0) + value * weight
        return totals

    def _out_of_memory_advice(self, batch: TaskBatch, chunk: int) -> str:
        """What to set when ``chunk`` tasks at a time do not fit in memory: the largest of
        ``chunk/2, chunk/4, …, 1`` with which one meta-step's forward and backward passes run
        (tried on ``batch``; gradients are discarded). In a distributed job, where the other
        processes wait in the step, only the halved chunk is suggested, untried."""
        where = "GPU" if self.device.type == "cuda" else "host"
        advice = (
            f"a meta-step on {chunk} tasks at a time ran out of {where} memory "
            f"(train.meta_batch={self.schedule.meta_batch}, "
            f"train.task_chunk={self.schedule.task_chunk}); "
        )
        if distributed.world_size() > 1:
            return advice + f"set train.task_chunk to at most {max(1, chunk // 2)} and retry."
        smaller = chunk // 2
        while smaller >= 1:
            _release_memory(self.device)
            try:
                self._accumulate_gradients(batch[:smaller], smaller, step=0)
            except (torch.OutOfMemoryError, RuntimeError) as error:
                if not _out_of_memory(error):
                    raise
                smaller //= 2
                continue
            finally:
                self.optimizer.zero_grad(set_to_none=True)
            return advice + (
                f"{smaller} tasks at a time fit: --set train.task_chunk={smaller} (the gradients "
                "of the chunks are accumulated, so the meta-gradient is the same)."
            )
        return advice + "not even one task fits: use a smaller model, fewer shots or queries."

    def _validate(self) -> Estimate:
        estimates = evaluate(
            self.learner,
            self.val_tasks.batch,
            task_count(self.val_tasks, self.schedule.val_tasks),
            self.schedule.eval_batch,
            self.device,
        )
        return estimates[self.headline]

    def _improves(self, value: float, best: float | None) -> bool:
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best

    def _save(self, path: Path, step: int, best: dict[str, Any]) -> None:
        """Check the parameters on every rank; write the checkpoint from rank 0."""
        checkpoint = self._checkpoint(step, best)
        if distributed.is_main():
            save_checkpoint(path, checkpoint)

    def _checkpoint(self, step: int, best: dict[str, Any]) -> Checkpoint:
        state = self.learner.state_dict()
        bad = [
            name for name, t in state.items() if t.is_floating_point() and not t.isfinite().all()
        ]
        if bad:
            raise NonFiniteLossError(
                f"parameters {bad[:3]} became non-finite by step {step}; no checkpoint was "
                f"written, the last good one is {self.last_path}. Lower train.lr."
            )
        return Checkpoint(
            step=step,
            config=self.config,
            learner={k: v.detach().cpu().clone() for k, v in state.items()},
            optimizer=self.optimizer.state_dict(),
            best=best,
            rng=capture_rng_state(),
            train_seconds=self.clock.total_seconds,
        )

    def _learning_rate(self, step: int) -> float:
        """The learning rate of (zero-based) ``step`` (see :class:`TrainSchedule`)."""
        schedule = self.schedule
        if schedule.lr_schedule == "linear":
            return schedule.lr * (1 - step / schedule.steps)
        if schedule.lr_decay_every is not None:
            return schedule.lr * schedule.lr_decay ** (step // schedule.lr_decay_every)
        return schedule.lr


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA's ``OutOfMemoryError`` or the CPU
    allocator's ``RuntimeError``)."""
    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def _release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
