"""Shared machinery of the reproduction benchmarks: train presets, evaluate, print ours beside
the paper's.

Each setting is trained from its preset with ``fastadapt.engine.run.train_run`` (exactly what
``fastadapt train`` runs), its best checkpoint evaluated under each test protocol with
``evaluate_run`` (as ``fastadapt eval``), and every evaluation becomes one row: the paper's
number, ours (mean ± 95% CI), the difference, the calibration of the predictions where the
learner reports it (NLL, and ECE for classifiers), the training steps (and the step of the best
validation checkpoint) and the training wall time. Runs live in ``--runs-dir/<setting>``; with
``--reuse`` a setting whose run folder holds a finished training is evaluated without training
again (its training time is read from the run's ``results.json``); with ``--resume`` an
interrupted run continues from its ``last.pt`` (its wall time summed over the sessions, see
``Checkpoint.train_seconds``). ``--plots`` draws each
evaluation's figures into its run folder (reliability diagram, or sinusoid predictions).
``--final`` also evaluates each run's final checkpoint (rows marked ", final"; the "best at"
column then shows the last step), as the VERSA authors' code reports both.

Results go to ``benchmarks/results/<stem>.json`` (with ``--set`` overrides: ``<stem>_custom.json``,
so that shortened runs never replace the full-length figures); rows of settings not run this
time are kept from the previous file, so each row records the overrides its run was trained
with.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report import RESULTS, machine, write_json

from fastadapt.config import load_preset
from fastadapt.datasets.registry import DATASETS
from fastadapt.engine.run import evaluate_run, train_run


@dataclass(frozen=True)
class Evaluation:
    """One test protocol of a trained setting and the paper's number for it."""

    label: str  # e.g. "5w1s"
    overrides: tuple[str, ...]  # eval.* settings of this protocol
    paper: float  # in percent for accuracy
    paper_ci95: float | None = None
    metric: str = "accuracy"  # or e.g. "accuracy@3": after 3 test-time inner steps

    @property
    def in_percent(self) -> bool:
        return self.metric.split("@")[0] == "accuracy"


@dataclass(frozen=True)
class Setting:
    """A preset, trained once (with ``overrides``), evaluated under each of ``evaluations``."""

    preset: str
    overrides: tuple[str, ...]
    evaluations: tuple[Evaluation, ...]
    default: bool = True  # run without --only (False: needs data the user provides)


def main(settings: dict[str, Setting], stem: str, description: str) -> None:
    """The command line of a reproduction benchmark over ``settings``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--only", nargs="+", choices=list(settings), help="settings to run")
    parser.add_argument("--reuse", action="store_true", help="evaluate finished runs as they are")
    parser.add_argument(
        "--resume", action="store_true", help="continue interrupted runs from their last.pt"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/reproduction"))
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    parser.add_argument("--plots", action="store_true", help="draw each evaluation's figures")
    parser.add_argument(
        "--final",
        action="store_true",
        help="also evaluate each run's final checkpoint (last.pt), as the VERSA authors' code does",
    )
    args = parser.parse_args()
    names = args.only or [name for name, setting in settings.items() if setting.default]
    rows = []
    for name in names:
        rows += _run_setting(name, settings[name], args)
    print(table(rows))
    stem += "_custom" if args.set else ""
    previous = RESULTS / f"{stem}.json"
    kept = []
    if previous.is_file():
        ran = {row["setting"] for row in rows}
        kept = [
            row for row in json.loads(previous.read_text())["rows"] if row["setting"] not in ran
        ]
    payload = {"machine": machine(), "rows": kept + rows}
    print(f"\nwrote {write_json(f'{stem}.json', payload)}", file=sys.stderr)


def _training_record(run_dir: Path) -> dict[str, Any] | None:
    """The evaluation record written at the end of training (it carries the wall time)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    records = json.loads(path.read_text())["evaluations"]
    trained = [record for record in records if "train_seconds" in record]
    return trained[-1] if trained else None


def _run_setting(name: str, setting: Setting, args: argparse.Namespace) -> list[dict[str, Any]]:
    run_dir = args.runs_dir / name
    record = _training_record(run_dir) if args.reuse else None
    if record is None:
        config = load_preset(setting.preset).override([*setting.overrides, *args.set])
        resume = args.resume and (run_dir / "checkpoints" / "last.pt").is_file()
        verb = "resuming" if resume else "training"
        print(f"{verb} {name} in {run_dir} ...", file=sys.stderr, flush=True)
        record = train_run(config, run_dir, resume=resume, progress=args.progress)
    config = json.loads((run_dir / "config.json").read_text())
    training_steps = record.get("train_steps", config["train"]["steps"])
    best_step = record["best"]["step"] if record.get("best") else None
    data_split, overrides = _split_name(config), _overrides(config, setting)
    checkpoints = ("best", "last") if args.final else ("best",)
    rows = []
    for evaluation, checkpoint in itertools.product(setting.evaluations, checkpoints):
        result = evaluate_run(
            run_dir,
            overrides=list(evaluation.overrides),
            checkpoint=checkpoint,
            plots=args.plots and checkpoint == "best",
        )
        metrics = result["metrics"]
        scale = 100 if evaluation.in_percent else 1
        ours = metrics[evaluation.metric]
        rows.append(
            {
                "setting": name,
                "preset": setting.preset,
                "protocol": evaluation.label + (", final" if checkpoint == "last" else ""),
                "checkpoint": checkpoint,
                "metric": evaluation.metric,
                "paper": evaluation.paper,
                "paper_ci95": evaluation.paper_ci95,
                "ours": scale * ours["mean"],
                "ci95": scale * ours["ci95"],
                "nll": metrics.get("nll"),
                "ece": metrics.get("ece"),
                "episodes": ours["n"],
                "queries": result["protocol"]["queries"],
                "data_split": data_split,
                "overrides": overrides,
                "training_steps": training_steps,
                "best_step": training_steps if checkpoint == "last" else best_step,
                "train_hours": _hours(record.get("train_seconds")),
                "run_dir": str(run_dir),
                "plots": [str(run_dir / figure) for figure in result.get("plots", [])],
            }
        )
    return rows


def _split_name(config: dict[str, Any]) -> str | None:
    """The class split a run trained and tested on (its dataset's standard one when unset)."""
    entry = DATASETS.get(config["task"]["family"])
    return config["data"].get("split") or (entry.standard_split if entry else None) or None


def _overrides(config: dict[str, Any], setting: Setting) -> list[str]:
    """The ``key=value`` settings by which a run's configuration differs from its setting's:
    what it was trained with beyond the preset, read from the run (so also under ``--reuse``)."""
    base = load_preset(setting.preset).override(list(setting.overrides)).to_dict()
    base = json.loads(json.dumps(base))
    return [
        f"{section}.{key}={json.dumps(value)}"
        for section, fields in config.items()
        if isinstance(fields, dict)
        for key, value in fields.items()
        if value != base[section].get(key)
    ]


def _hours(seconds: float | None) -> float | None:
    """Training wall time in hours; None where a resumed run's earlier sessions are unknown."""
    return None if seconds is None else seconds / 3600


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of ``rows``: ours beside the paper's, calibration, wall time."""
    lines = [
        "| setting | protocol | metric | paper | ours (mean ± 95% CI) | ours − paper | NLL | ECE "
        "| training steps (best at) | training wall time |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        digits = 2 if row["metric"].split("@")[0] == "accuracy" else 3
        paper_ci = f" ± {row['paper_ci95']:.{digits}f}" if row["paper_ci95"] is not None else ""
        lines.append(
            f"| {row['setting']} | {row['protocol']} | {row['metric']} "
            f"| {row['paper']:.{digits}f}{paper_ci} "
            f"| {row['ours']:.{digits}f} ± {row['ci95']:.{digits}f} "
            f"| {row['ours'] - row['paper']:+.{digits}f} | {_estimate(row['nll'])} "
            f"| {_estimate(row['ece'])} | {row['training_steps']} ({row['best_step']}) "
            f"| {_hours_text(row)} |"
        )
    return "\n".join(lines)


def _estimate(metric: dict[str, float] | None) -> str:
    return "—" if metric is None else f"{metric['mean']:.4f} ± {metric['ci95']:.4f}"


def _hours_text(row: dict[str, Any]) -> str:
    return "unknown" if row["train_hours"] is None else f"{row['train_hours']:.2f} h"
