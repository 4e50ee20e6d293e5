"""A run folder from start to finish: train a configuration, evaluate it, record the results.

Layout of a run folder::

    config.json            the resolved configuration
    metrics.csv            training and validation metrics per logged step
    curves.png             the learning curves (``fastadapt train --plots``, ``fastadapt plot``)
    reliability.png        a classifier's reliability diagram (``--plots`` of train or eval)
    predictions.png        a sinusoid regressor's predictions on test tasks (``--plots``)
    tensorboard/           the same metrics as TensorBoard events (train.tensorboard=true)
    checkpoints/last.pt    the latest state (resume from here)
    checkpoints/best.pt    the state with the best validation score
    results.json           every evaluation of the run, each with its protocol

Under ``torchrun`` (:mod:`fastadapt.engine.distributed`) every process calls the same function;
only rank 0 reads and writes the run folder, and hands what it read to the others.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from fastadapt.algorithms.base import MetaLearner
from fastadapt.config import RL_FAMILIES, RunConfig, flatten
from fastadapt.engine import distributed
from fastadapt.engine.build import (
    TASK_FAMILIES,
    TaskFamily,
    build_learner,
    build_optimizer,
    build_task_family,
    initialise_from_data,
    task_count,
)
from fastadapt.engine.calibration import CALIBRATION
from fastadapt.engine.checkpoint import Checkpoint, load_checkpoint
from fastadapt.engine.evaluate import collect_task_metrics, estimates_to_json, summarise
from fastadapt.engine.host_memory import retain_freed_host_memory
from fastadapt.engine.plots import (
    load_pyplot,
    plot_learning_curves,
    plot_reliability_diagram,
    plot_sinusoid_predictions,
)
from fastadapt.engine.trainer import Trainer, TrainSchedule
from fastadapt.errors import ConfigError, RunDirectoryError
from fastadapt.io.atomic import atomic_write_text
from fastadapt.nn.precision import warn_if_unsupported
from fastadapt.tasks.sinusoid import SinusoidTasks

#: Settings that a resumed run may change without changing what it computes (the batching
#: mode of the inner loop changes only the float rounding: the tests hold its modes equal).
RESUME_NEUTRAL = (
    "description",
    "algorithm.batch_mode",
    "train.steps",
    "train.max_hours",
    "train.log_every",
    "train.checkpoint_every",
    "train.tensorboard",
)
RESUME_NEUTRAL_SECTIONS = ("eval.", "reference.")
#: Algorithms with an inner loop, whose evaluation protocol includes its steps and rate.
GRADIENT_BASED = ("maml", "reptile", "pretrained")
#: Algorithms whose classifications average Monte Carlo samples (the protocol records how many).
SAMPLING = ("versa",)
#: Sinusoid test tasks drawn by ``--plots``.
PLOTTED_TASKS = (0, 1, 2, 3)


def train_run(
    config: RunConfig,
    out: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    plots: bool = False,
    timeout: float = distributed.DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Train ``config`` into the folder ``out`` (or continue it), then evaluate on test tasks.

    With ``plots``, ``out/curves.png`` is redrawn each time ``metrics.csv`` is written, and the
    final evaluation draws its figures (see :func:`evaluate_run`); this needs the ``plots``
    extra, checked before training starts. Returns the evaluation record that is also
    appended to ``out/results.json``. Meta-RL families go to :mod:`fastadapt.rl.run`, which
    trains in one process.

    Started by ``torchrun``, every process runs this and they train one model together
    (:mod:`fastadapt.engine.distributed`), each waiting at most ``timeout`` seconds for the
    others in any exchange; the processes must have the same configuration and fastadapt,
    ``train.meta_batch`` must be a multiple of their number, and ``resume`` works with any
    number of processes. On Linux with glibc, it first keeps freed host memory for reuse
    (:mod:`fastadapt.engine.host_memory`).
    """
    retain_freed_host_memory()
    if config.task.family in RL_FAMILIES:
        return _rl_run().train_rl_run(config, out, resume=resume, progress=progress, plots=plots)
    if plots:
        load_pyplot()
    with distributed.process_group(_device(config.train.device), timeout):
        return _train_run(config, out, resume, progress, plots)


def _train_run(
    config: RunConfig, out: Path, resume: bool, progress: bool, plots: bool
) -> dict[str, Any]:
    """:func:`train_run` once this process has joined its job (if it was started in one)."""
    distributed.check_same_run(config.to_dict())
    distributed.check_meta_batch(config.train.meta_batch)
    checkpoint = distributed.run_on_main(lambda: _open_run_folder(config, out, resume))
    device = _device(config.train.device)
    if config.train.threads is not None:
        torch.set_num_threads(config.train.threads)
    learner = build_learner(config).to(device)
    train_tasks = build_task_family(config, "train")
    if checkpoint is None:  # a resumed run's checkpoint holds what the data gave
        initialise_from_data(config, learner, train_tasks)
    optimizer = build_optimizer(config, learner)
    if distributed.is_main():
        atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    warn_if_unsupported(device, config.train.precision)
    schedule = TrainSchedule(
        steps=config.train.steps,
        meta_batch=config.train.meta_batch,
        max_hours=config.train.max_hours,
        lr=config.train.lr,
        lr_decay=config.train.lr_decay,
        lr_decay_every=config.train.lr_decay_every,
        lr_schedule=config.train.lr_schedule,
        task_chunk=config.train.task_chunk,
        precision=config.train.precision,
        val_every=config.train.val_every,
        val_tasks=config.train.val_tasks,
        eval_batch=config.eval.batch,
        checkpoint_every=config.train.checkpoint_every,
        log_every=config.train.log_every,
        tensorboard=config.train.tensorboard,
        seed=config.train.seed,
    )
    trainer = Trainer(
        learner,
        optimizer,
        train_tasks,
        build_task_family(config, "val"),
        schedule,
        out,
        config.to_dict(),
        device,
        progress,
        on_flush=(lambda: plot_learning_curves(out)) if plots else None,
    )
    return evaluate_run(out, extra=trainer.fit(checkpoint).record(), plots=plots)


def _open_run_folder(config: RunConfig, out: Path, resume: bool) -> Checkpoint | None:
    """Read the checkpoint of the run to resume (checked against ``config``), or claim a new
    run folder."""
    if not resume:
        _claim_new_run_folder(out)
        return None
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    _check_resume_compatible(checkpoint.config, config.to_dict(), out)
    return checkpoint


def evaluate_run(
    run_dir: Path,
    *,
    overrides: list[str] | None = None,
    checkpoint: str = "best",
    extra: dict[str, Any] | None = None,
    plots: bool = False,
    timeout: float = distributed.DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """Evaluate a trained run on its test tasks; append the record to ``results.json``.

    ``overrides`` may only change ``eval.*`` settings (tasks, shots, steps, seed…): anything
    else would describe a different model than the one trained. With ``plots`` (needs the
    ``plots`` extra) the evaluation also draws, into the run folder, the reliability diagram
    of a classifier's test predictions (``reliability.png``) or the predictions of a sinusoid
    regressor on the first test tasks against their true functions (``predictions.png``,
    with the ± 2σ band of a probabilistic learner); the record lists them under ``plots``.
    A meta-RL run is evaluated by :func:`fastadapt.rl.run.evaluate_rl_run`.

    Started by ``torchrun``, every process runs this: each evaluates its share of the test
    tasks, and rank 0 writes the record, the same one a single process writes (except
    ``eval_seconds``). Within a training job rank 0 reads the checkpoint for all; a job
    started to evaluate alone has every process read it (and wait ``timeout`` seconds at most
    for the others). Host memory as in :func:`train_run`.
    """
    retain_freed_host_memory()
    if _rl_run().is_rl_run(run_dir):
        return _rl_run().evaluate_rl_run(
            run_dir, overrides=overrides, checkpoint=checkpoint, extra=extra, plots=plots
        )
    if plots:
        load_pyplot()
    for assignment in overrides or []:
        if not assignment.strip().startswith("eval."):
            raise ConfigError(
                f"`fastadapt eval` only accepts eval.* settings, got {assignment!r}; the other "
                "settings are fixed by the trained run (train a new run to change them)."
            )
    if distributed.is_initialized():
        path, state = distributed.run_on_main(lambda: _read_checkpoint(run_dir, checkpoint))
    else:
        path, state = _read_checkpoint(run_dir, checkpoint)
    trained = RunConfig.from_dict(state.config)
    config = trained.override(overrides or [])
    device = _device(config.train.device)
    with distributed.process_group(device, timeout):
        distributed.check_same_run(config.to_dict())
        return _evaluate(run_dir, config, trained, path, state, device, extra, plots)


def _evaluate(
    run_dir: Path,
    config: RunConfig,
    trained: RunConfig,
    path: Path,
    state: Checkpoint,
    device: torch.device,
    extra: dict[str, Any] | None,
    plots: bool,
) -> dict[str, Any]:
    """:func:`evaluate_run` once the configuration and checkpoint are known."""
    learner = build_learner(config).to(device)
    learner.load_state_dict(state.learner)
    started = time.perf_counter()
    test_tasks = build_task_family(config, "test")
    tasks = task_count(test_tasks, config.eval.tasks)
    per_task = collect_task_metrics(learner, test_tasks.batch, tasks, config.eval.batch, device)
    estimates = summarise(per_task)
    reference = config.to_dict()["reference"]
    setting = ("ways", "shots", "partition")
    if any(getattr(config.eval, key) != getattr(trained.eval, key) for key in setting):
        reference["values"] = {}  # the paper's numbers belong to the preset's own protocol
    record = {
        "checkpoint": path.name,
        "step": state.step,
        "protocol": protocol(config, tasks),
        "metrics": estimates_to_json(estimates),
        "reference": reference,
        "eval_seconds": time.perf_counter() - started,
        **(extra or {}),
    }
    if distributed.is_main():
        if plots:
            figures = _evaluation_figures(run_dir, config, learner.cpu(), test_tasks, per_task)
            record["plots"] = [figure.name for figure in figures]
        _append_result(run_dir / "results.json", record)
    return record


def _read_checkpoint(run_dir: Path, checkpoint: str) -> tuple[Path, Checkpoint]:
    path = checkpoint_path(run_dir, checkpoint)
    return path, load_checkpoint(path)


def _rl_run() -> ModuleType:
    """:mod:`fastadapt.rl.run`, imported on use: it builds on this module's helpers."""
    return importlib.import_module("fastadapt.rl.run")


def _evaluation_figures(
    run_dir: Path,
    config: RunConfig,
    learner: MetaLearner,
    test_tasks: TaskFamily,
    per_task: dict[str, torch.Tensor],
) -> list[Path]:
    """The figures of an evaluation: reliability diagram, or sinusoid predictions."""
    shape = ", ".join(f"{k}={v}" for k, v in protocol(config).items() if k in ("ways", "shots"))
    title = f"{config.preset} ({config.algorithm.name}, {shape})"
    if CALIBRATION in per_task:
        counts = per_task[CALIBRATION].sum(dim=0)
        return [plot_reliability_diagram(counts, run_dir / "reliability.png", title)]
    if isinstance(test_tasks, SinusoidTasks):
        out = run_dir / "predictions.png"
        return [plot_sinusoid_predictions(learner, test_tasks, PLOTTED_TASKS, out, title)]
    return []


def checkpoint_path(run_dir: Path, checkpoint: str = "best") -> Path:
    """The checkpoint file of a run: ``best.pt`` (else ``last.pt``) for "best", or ``last.pt``.

    Raises:
        ConfigError: ``checkpoint`` is neither "best" nor "last".
        RunDirectoryError: ``run_dir`` has no ``checkpoints/`` folder.
    """
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}.")
    if not (run_dir / "checkpoints").is_dir():
        raise RunDirectoryError(
            f"{run_dir} holds no trained run (no checkpoints/ folder); pass the --out folder "
            "of a `fastadapt train` run."
        )
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "checkpoints" / "last.pt"
    return path


def protocol(config: RunConfig, tasks: int | None = None) -> dict[str, Any]:
    """The evaluation protocol, printed beside every number and stored with it; ``tasks`` is
    the number evaluated when it is fewer than ``eval.tasks`` (every user of a partition)."""
    problem = TASK_FAMILIES[config.task.family].problem
    ways = {"ways": config.eval.ways} if problem == "classification" else {}
    partition = {"partition": config.eval.partition} if problem == "rating" else {}
    inner_loop: dict[str, Any] = {}
    if config.algorithm.name in GRADIENT_BASED:
        inner_loop = {
            "inner_steps": config.eval.inner_steps,
            "inner_lr": config.eval.inner_lr or config.algorithm.inner_lr,
            **({"adapt": config.algorithm.adapt} if config.algorithm.adapt else {}),
        }
    if config.algorithm.name in ("maml", "pretrained"):
        inner_loop["report_steps"] = config.eval.report_steps
    if config.algorithm.name == "reptile":
        inner_loop["inner_batch"] = config.eval.inner_batch
    samples = (
        {"samples": config.algorithm.samples}
        if config.algorithm.name in SAMPLING and problem == "classification"
        else {}
    )
    class_split = {"class_split": config.data.split} if config.data.split else {}
    return {
        "split": "test",
        "family": config.task.family,
        **class_split,
        "algorithm": config.algorithm.name,
        **partition,
        **ways,
        "shots": config.eval.shots,
        "queries": config.eval.queries,
        "tasks": config.eval.tasks if tasks is None else tasks,
        **inner_loop,
        **samples,
        "seed": config.eval.seed,
    }


def _append_result(path: Path, record: dict[str, Any]) -> None:
    history: dict[str, Any] = {"evaluations": []}
    if path.is_file():
        try:
            history = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise RunDirectoryError(
                f"{path} is not valid JSON ({error}); it was left untouched. Move it aside "
                "to record new evaluations."
            ) from error
    history.setdefault("evaluations", []).append(record)
    atomic_write_text(path, json.dumps(history, indent=2) + "\n")


def _claim_new_run_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {out} is a file; pass a folder for the run.")
    if out.is_dir() and any(out.iterdir()):
        holds_run = (out / "config.json").exists() or (out / "checkpoints").exists()
        what = "holds another run" if holds_run else "is not empty"
        raise RunDirectoryError(
            f"--out {out} {what}; it was left untouched. Pass --resume to continue that run, "
            "or choose a new --out folder."
        )
    out.mkdir(parents=True, exist_ok=True)


def _check_resume_compatible(saved: dict[str, Any], wanted: dict[str, Any], out: Path) -> None:
    # A checkpoint written before a setting existed lacks it: compare with its default.
    flat_saved = flatten(RunConfig.from_dict(saved).to_dict())
    flat_wanted = flatten(wanted)
    differences = [
        f"{key}: run has {flat_saved.get(key)!r}, now {flat_wanted.get(key)!r}"
        for key in sorted(set(flat_saved) | set(flat_wanted))
        if flat_saved.get(key) != flat_wanted.get(key)
        and key not in RESUME_NEUTRAL
        and not key.startswith(RESUME_NEUTRAL_SECTIONS)
    ]
    if differences:
        raise ConfigError(
            f"cannot resume {out}: the configuration differs from the run's in settings that "
            f"change its results ({'; '.join(differences)}). Resume with the run's own "
            "settings, or start a new run with a new --out."
        )


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"train.device {name!r} is not a device name ({error}).") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "train.device is 'cuda' but no CUDA device is available; use --set train.device=cpu."
        )
    return device
