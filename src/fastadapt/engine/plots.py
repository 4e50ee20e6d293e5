"""Learning curves of a run, drawn from its ``metrics.csv`` (needs the ``plots`` extra)."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from types import ModuleType

from fastadapt.errors import FastAdaptError, RunDirectoryError
from fastadapt.io.atomic import atomic_write

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
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    target = out or run_dir / "curves.png"
    atomic_write(target, lambda handle: handle.write(buffer.getvalue()))
    return target
