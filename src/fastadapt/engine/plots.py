"""Figures of a run (need the ``plots`` extra): learning curves from its ``metrics.csv``, and
from an evaluation the reliability diagram of a classifier or the predictions of a sinusoid
regressor against the true functions."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from fastadapt.algorithms.base import GaussianPredictor, MetaLearner, Predictor
from fastadapt.engine.calibration import expected_calibration_error
from fastadapt.errors import FastAdaptError, RunDirectoryError
from fastadapt.io.atomic import atomic_write
from fastadapt.tasks.sinusoid import SinusoidTasks

#: Suffix of a column holding the 95% confidence half-width of the column it extends.
CI_SUFFIX = "_ci95"


def load_pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend, or a clear error without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise FastAdaptError(
            "plotting needs matplotlib: pip install 'fastadapt[plots]'."
        ) from error
    return plt


def plot_learning_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw every metric of ``run_dir/metrics.csv`` against the step; return the PNG's path.

    Training and validation values of the same metric share a panel (``train_mse`` and
    ``val_mse``); a column ``val_accuracy_ci95`` is drawn as the 95% confidence band around
    ``val_accuracy``. The figure is written atomically to ``out`` (default
    ``run_dir/curves.png``).
    """
    plt = load_pyplot()
    log = run_dir / "metrics.csv"
    if not log.is_file():
        raise RunDirectoryError(
            f"{run_dir} has no metrics.csv; pass the folder of a `fastadapt train` run."
        )
    with log.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    panels: dict[str, dict[str, tuple[list[int], list[float], list[float]]]] = {}
    for row in rows:
        for column, value in row.items():
            if column == "step" or column.endswith(CI_SUFFIX) or not value:
                continue
            split, _, metric = column.partition("_")
            steps, values, half_widths = panels.setdefault(metric, {}).setdefault(
                split, ([], [], [])
            )
            steps.append(int(row["step"]))
            values.append(float(value))
            half_widths.append(float(row.get(column + CI_SUFFIX) or "nan"))
    if not panels:
        raise RunDirectoryError(f"{log} holds no logged metrics yet; train for longer.")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for axis, (metric, series) in zip(axes[0], sorted(panels.items())):
        for split, (steps, values, half_widths) in sorted(series.items()):
            (line,) = axis.plot(steps, values, label=split)
            if not all(math.isnan(w) for w in half_widths):
                lower = [v - w for v, w in zip(values, half_widths)]
                upper = [v + w for v, w in zip(values, half_widths)]
                axis.fill_between(
                    steps, lower, upper, color=line.get_color(), alpha=0.2, label=f"{split} 95% CI"
                )
        axis.set_xlabel("meta-iteration")
        axis.set_ylabel(metric)
        axis.set_yscale("log" if metric in ("mse", "loss") else "linear")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.suptitle(run_dir.resolve().name)
    return _save(plt, figure, out or run_dir / "curves.png")


def plot_reliability_diagram(counts: torch.Tensor, out: Path, title: str = "") -> Path:
    """Draw the reliability diagram of pooled calibration counts ``[bins, 3]``; return ``out``.

    Top: the accuracy of the predictions in each confidence bin against the bin's mean
    confidence (a calibrated classifier lies on the diagonal), the gaps shaded; bottom: the
    share of the predictions in each bin. The title gives the ECE
    (:mod:`fastadapt.engine.calibration`).
    """
    plt = load_pyplot()
    counts = counts.detach().double().cpu()
    bins = counts.shape[0]
    number, confidence, right = counts.unbind(dim=-1)
    filled = number > 0
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, 1.0 / bins
    accuracy = torch.where(filled, right / number.clamp_min(1), torch.zeros_like(number))
    mean_confidence = torch.where(
        filled, confidence / number.clamp_min(1), torch.zeros_like(number)
    )
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.4, 6.4), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.bar(centres, accuracy.numpy(), width=width, edgecolor="black", label="accuracy")
    gap_low = torch.minimum(accuracy, mean_confidence)
    gap = (accuracy - mean_confidence).abs() * filled
    top.bar(
        centres,
        gap.numpy(),
        bottom=gap_low.numpy(),
        width=width,
        color="red",
        alpha=0.3,
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="calibrated")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    ece = expected_calibration_error(counts).item()
    top.set_title(f"{title}\nECE {ece:.4f} ({bins} bins, {int(number.sum())} predictions)")
    bottom.bar(centres, (number / number.sum().clamp_min(1)).numpy(), width=width)
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence (largest predicted probability)")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)
    return _save(plt, figure, out)


def plot_sinusoid_predictions(
    learner: MetaLearner,
    tasks: SinusoidTasks,
    indices: Sequence[int],
    out: Path,
    title: str = "",
) -> Path:
    """Draw, for the sinusoid tasks ``indices``, the true function, the support points and the
    adapted learner's prediction over the input range; a Gaussian predictor (VERSA) adds its
    predictive mean ± 2σ band. Returns ``out``."""
    plt = load_pyplot()
    was_training = learner.training
    learner.eval()
    amplitudes, phases = tasks.parameters(indices)
    grid = torch.linspace(*tasks.x_range, 200).unsqueeze(-1)
    figure, axes = plt.subplots(
        1, len(indices), figsize=(4 * len(indices), 3.2), squeeze=False, sharey=True
    )
    try:
        for axis, index, amplitude, phase in zip(axes[0], indices, amplitudes, phases):
            task = tasks.batch([index])
            predictor = learner.adapt(task.support_x[0], task.support_y[0])
            truth = amplitude * np.sin(grid.squeeze(-1).numpy() - phase)
            axis.plot(grid, truth, "k-", linewidth=1, label="true function")
            _draw_prediction(axis, predictor, grid)
            axis.scatter(
                task.support_x[0], task.support_y[0], color="C3", zorder=3, label="support"
            )
            axis.set_title(f"task {index}: A={amplitude:.2f}, φ={phase:.2f}")
            axis.set_xlabel("x")
            axis.grid(alpha=0.3)
    finally:
        learner.train(was_training)
    axes[0][0].set_ylabel("y")
    axes[0][0].legend(loc="lower left", fontsize="small")
    figure.suptitle(title)
    return _save(plt, figure, out)


def _draw_prediction(axis: Any, predictor: Predictor, grid: torch.Tensor) -> None:
    """The predictive mean over ``grid`` and, for a Gaussian predictor, its ± 2σ band."""
    mean = predictor.predict(grid).squeeze(-1)
    (line,) = axis.plot(grid, mean, label="predictive mean")
    if isinstance(predictor, GaussianPredictor):
        spread = 2 * predictor.predict_variance(grid).squeeze(-1).sqrt()
        axis.fill_between(
            grid.squeeze(-1),
            mean - spread,
            mean + spread,
            color=line.get_color(),
            alpha=0.25,
            label="± 2σ",
        )


def _save(plt: ModuleType, figure: Any, target: Path) -> Path:
    """Write ``figure`` to the PNG ``target`` atomically and close it."""
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write(target, lambda handle: handle.write(buffer.getvalue()))
    return target
