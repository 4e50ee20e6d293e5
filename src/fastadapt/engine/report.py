"""One markdown report of many runs: a table of their evaluations and their learning curves.

Each evaluation in a run's ``results.json`` is one row: run, preset, algorithm, dataset, ways,
shots, our number (mean ± 95% CI) beside the paper's, and the run's training wall time. The
numbers are those the preset targets (its ``[reference]`` values, e.g. ``mse@1`` ``mse@5``
``mse@10``), else the headline metric (``accuracy``, ``mae`` for ratings, or ``mse`` for
regression). A run evaluated twice under the same protocol and checkpoint gives one row, its
latest evaluation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastadapt.engine.plots import plot_learning_curves
from fastadapt.errors import RunDirectoryError
from fastadapt.io.atomic import atomic_write_text

COLUMNS = (
    "run",
    "preset",
    "algorithm",
    "dataset",
    "ways",
    "shots",
    "ours (mean ± 95% CI)",
    "paper",
    "wall time",
)
_HEADLINES = ("accuracy", "mae", "mse")


def report_table(run_dirs: Sequence[Path]) -> str:
    """The markdown table of every evaluation of ``run_dirs``, in the order given.

    Raises:
        RunDirectoryError: a folder has no readable ``results.json`` (train or evaluate it
            first).
    """
    lines = [_markdown_row(COLUMNS), _markdown_row(["---"] * len(COLUMNS))]
    for run_dir in run_dirs:
        results = _read_json(run_dir / "results.json", "`fastadapt train` or `fastadapt eval`")
        config = _read_json(run_dir / "config.json", "`fastadapt train`")
        evaluations = results.get("evaluations")
        if not isinstance(evaluations, list) or not evaluations:
            raise RunDirectoryError(
                f"{run_dir / 'results.json'} holds no evaluations; run `fastadapt eval "
                f"{run_dir}` first."
            )
        train_seconds = [r["train_seconds"] for r in evaluations if "train_seconds" in r]
        latest: dict[str, dict[str, Any]] = {}
        for record in evaluations:
            key = json.dumps([record.get("protocol"), record.get("checkpoint")], sort_keys=True)
            latest[key] = record
        for record in latest.values():
            lines.append(
                _markdown_row(
                    _row(run_dir, config, record, train_seconds[-1] if train_seconds else None)
                )
            )
    return "\n".join(lines) + "\n"


def write_report(run_dirs: Sequence[Path], out: Path, *, curves: bool = True) -> list[Path]:
    """Write the report of ``run_dirs`` to the markdown file ``out``; return the files written.

    With ``curves`` (needs the ``plots`` extra), each run's learning curves (training loss,
    validation metric with its 95% confidence band) are drawn to ``<out stem>_curves/NN-<run
    name>.png`` beside ``out`` and shown in the report under the table.

    Raises:
        RunDirectoryError: a folder has no readable ``results.json`` or, with ``curves``, no
            ``metrics.csv``.
    """
    text = "# fastadapt report\n\n" + report_table(run_dirs)
    written: list[Path] = []
    if curves:
        folder = out.parent / f"{out.stem}_curves"
        text += "\n## Learning curves\n"
        for position, run_dir in enumerate(run_dirs, start=1):
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_dir.resolve().name)
            png = plot_learning_curves(run_dir, folder / f"{position:02d}-{slug}.png")
            written.append(png)
            text += f"\n### {run_dir.name}\n\n![{run_dir.name}]({folder.name}/{png.name})\n"
    atomic_write_text(out, text)
    return [out, *written]


def _row(
    run_dir: Path, config: dict[str, Any], record: dict[str, Any], train_seconds: float | None
) -> list[str]:
    """One table row; the run's configuration fills in what older records' protocols lack."""
    protocol, metrics = record.get("protocol", {}), record.get("metrics", {})
    algorithm = protocol.get("algorithm", config.get("algorithm", {}).get("name", "—"))
    family = protocol.get("family", config.get("task", {}).get("family", "—"))
    paper = record.get("reference", {}).get("values", {})
    names = [name for name in paper if name in metrics] or [
        name for name in _HEADLINES if name in metrics
    ][:1]
    checkpoint = record.get("checkpoint", "best.pt")
    run = run_dir.name if checkpoint == "best.pt" else f"{run_dir.name} ({checkpoint})"
    ours = "; ".join(
        f"{name} {_number(name, metrics[name]['mean'], metrics[name]['ci95'])}" for name in names
    )
    target = "; ".join(f"{name} {_number(name, paper[name])}" for name in names if name in paper)
    return [
        run,
        str(config.get("preset", "—")),
        str(algorithm),
        str(family),
        str(protocol.get("ways", "—")),
        str(protocol.get("shots", "—")),
        ours or "—",
        target or "—",
        _duration(train_seconds),
    ]


def _number(metric: str, mean: float, ci95: float | None = None) -> str:
    """Accuracy as a percentage with two decimals (the papers' style), others with three."""
    if metric.split("@")[0] == "accuracy":
        spread = f" ± {100 * ci95:.2f}" if ci95 is not None else ""
        return f"{100 * mean:.2f}{spread}%"
    return f"{mean:.3f}" + (f" ± {ci95:.3f}" if ci95 is not None else "")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _read_json(path: Path, how: str) -> dict[str, Any]:
    """The JSON object in ``path``, or a :class:`RunDirectoryError` saying what is wrong."""
    if not path.is_file():
        raise RunDirectoryError(
            f"{path.parent} has no {path.name}; pass folders of runs made by {how}."
        )
    try:
        data = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirectoryError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise RunDirectoryError(f"{path} holds a JSON {type(data).__name__}, not an object.")
    return data
