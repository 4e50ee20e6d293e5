"""mkdocs hook: the presets table of ``docs/reproduce.md``, generated from the shipped presets.

The page holds the marker ``<!-- presets-table -->``; the table replaces it at build time, so
the documentation lists exactly the presets, papers and numbers that ``fastadapt presets``
prints.
"""

from __future__ import annotations

from typing import Any

from fastadapt.config import RunConfig, list_presets, load_preset
from fastadapt.engine.build import TASK_FAMILIES
from fastadapt.rl.run import RL_FAMILIES

MARKER = "<!-- presets-table -->"


def presets_table() -> str:
    """A markdown table: preset, paper, table, the paper's number and the test protocol."""
    lines = [
        "| preset | paper | table | paper's number | trained on | evaluated on |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in list_presets():
        config = load_preset(name)
        ref, task, evaluation = config.reference, config.task, config.eval
        target = ", ".join(f"{metric} {value:g}" for metric, value in ref.values.items())
        if task.family in RL_FAMILIES:
            lines.append(_row([f"`{name}`", ref.paper, ref.table, target, *_rl_protocol(config)]))
            continue
        classes = TASK_FAMILIES[task.family].problem == "classification"
        shape = f"{task.ways}-way " if classes else ""
        eval_shape = f"{evaluation.ways}-way " if classes else ""
        cells = [
            f"`{name}`",
            ref.paper,
            ref.table,
            target,
            f"{task.family}, {shape}{task.shots}-shot, {config.train.steps} steps",
            f"{eval_shape}{evaluation.shots}-shot, {evaluation.tasks} tasks",
        ]
        lines.append(_row(cells))
    return "\n".join(lines) + "\n"


def _rl_protocol(config: RunConfig) -> list[str]:
    """Training and test protocol of a meta-RL preset."""
    rl, train, evaluation = config.rl, config.train, config.eval
    steps = max(evaluation.report_steps)
    return [
        f"{config.task.family}, {train.steps} meta-iterations of {train.meta_batch} tasks, "
        f"{rl.trajectories} trajectories",
        f"{evaluation.tasks} tasks, 0-{steps} policy-gradient steps of {rl.trajectories} "
        "trajectories",
    ]


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Replace the marker with the table (mkdocs calls this for every page)."""
    return markdown.replace(MARKER, presets_table()) if MARKER in markdown else markdown
