"""Reproduction of the Omniglot tables of Prototypical Networks and Matching Networks.

Trains each setting from its preset (``fastadapt.engine.run.train_run``, exactly what
``fastadapt train`` runs), evaluates the best checkpoint under each test protocol
(``evaluate_run``, as ``fastadapt eval``), and prints ours beside the paper's number with the
training wall time and episodes. Settings:

- ProtoNet (Snell et al. 2017, Table 1): ``protonet-omniglot-1shot`` and ``-5shot``, each one
  model trained 60-way and evaluated 5-way and 20-way: 98.8 / 96.0 (1-shot), 99.7 / 98.9 (5-shot).
- Matching Networks (Vinyals et al. 2016, Table 1): ``matching-omniglot-1shot`` and ``-5shot``,
  trained on the test protocol's ways (5-way, and 20-way with ``task.ways=eval.ways=20``): 98.1 /
  93.8 (1-shot), 98.9 / 98.5 (5-shot).

Every evaluation is 1000 fixed test episodes of 15 queries per class (the presets' protocol),
reported as mean ± 95% CI. Runs live in ``--runs-dir/<setting>``; with ``--reuse`` a setting
whose run folder already holds a finished training is evaluated without training again (its
training time is read from the run's ``results.json``). Training a full setting takes hours on
a 2-core CPU: run one setting at a time with ``--only``.

    python benchmarks/omniglot_metric_reproduction.py [--only protonet-1shot ...] [--reuse]
        [--runs-dir runs/reproduction] [--set train.steps=2000 ...]

Prints a markdown table and writes ``benchmarks/results/omniglot_metric_reproduction.json``
(with ``--set`` overrides: ``..._custom.json``, so that shortened runs never replace the
full-length figures).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _report import RESULTS, machine, write_json

from fastadapt.config import load_preset
from fastadapt.engine.run import evaluate_run, train_run


@dataclass(frozen=True)
class _Evaluation:
    label: str  # e.g. "5w1s"
    overrides: tuple[str, ...]
    paper: float  # accuracy in %


@dataclass(frozen=True)
class _Setting:
    preset: str
    overrides: tuple[str, ...]
    evaluations: tuple[_Evaluation, ...]


SETTINGS: dict[str, _Setting] = {
    "protonet-1shot": _Setting(
        "protonet-omniglot-1shot",
        (),
        (_Evaluation("5w1s", (), 98.8), _Evaluation("20w1s", ("eval.ways=20",), 96.0)),
    ),
    "protonet-5shot": _Setting(
        "protonet-omniglot-5shot",
        (),
        (_Evaluation("5w5s", (), 99.7), _Evaluation("20w5s", ("eval.ways=20",), 98.9)),
    ),
    "matching-5way-1shot": _Setting(
        "matching-omniglot-1shot", (), (_Evaluation("5w1s", (), 98.1),)
    ),
    "matching-20way-1shot": _Setting(
        "matching-omniglot-1shot",
        ("task.ways=20", "eval.ways=20"),
        (_Evaluation("20w1s", (), 93.8),),
    ),
    "matching-5way-5shot": _Setting(
        "matching-omniglot-5shot", (), (_Evaluation("5w5s", (), 98.9),)
    ),
    "matching-20way-5shot": _Setting(
        "matching-omniglot-5shot",
        ("task.ways=20", "eval.ways=20"),
        (_Evaluation("20w5s", (), 98.5),),
    ),
}


def _training_record(run_dir: Path) -> dict[str, Any] | None:
    """The evaluation record written at the end of training (it carries the wall time)."""
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    records = json.loads(path.read_text())["evaluations"]
    trained = [record for record in records if "train_seconds" in record]
    return trained[-1] if trained else None


def _run_setting(name: str, setting: _Setting, args: argparse.Namespace) -> list[dict[str, Any]]:
    run_dir = args.runs_dir / name
    record = _training_record(run_dir) if args.reuse else None
    if record is None:
        config = load_preset(setting.preset).override([*setting.overrides, *args.set])
        print(f"training {name} into {run_dir} ...", file=sys.stderr, flush=True)
        record = train_run(config, run_dir, progress=args.progress)
    config = json.loads((run_dir / "config.json").read_text())
    rows = []
    for evaluation in setting.evaluations:
        result = evaluate_run(run_dir, overrides=list(evaluation.overrides))
        accuracy = result["metrics"]["accuracy"]
        rows.append(
            {
                "setting": name,
                "preset": setting.preset,
                "protocol": evaluation.label,
                "paper": evaluation.paper,
                "ours": 100 * accuracy["mean"],
                "ci95": 100 * accuracy["ci95"],
                "episodes": accuracy["n"],
                "queries_per_class": result["protocol"]["queries"],
                "training_episodes": config["train"]["steps"],
                "best_step": record["best"]["step"] if record.get("best") else None,
                "train_hours": _hours(record.get("train_seconds")),
                "run_dir": str(run_dir),
            }
        )
    return rows


def _hours(seconds: float | None) -> float | None:
    """Training wall time in hours; None where a resumed run's earlier sessions are unknown."""
    return None if seconds is None else seconds / 3600


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| setting | protocol | paper | ours (mean ± 95% CI) | ours − paper | training episodes "
        "(best at) | training wall time |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['protocol']} | {row['paper']:.1f} "
            f"| {row['ours']:.2f} ± {row['ci95']:.2f} | {row['ours'] - row['paper']:+.2f} "
            f"| {row['training_episodes']} ({row['best_step']}) | {_hours_text(row)} |"
        )
    return "\n".join(lines)


def _hours_text(row: dict[str, Any]) -> str:
    return "unknown" if row["train_hours"] is None else f"{row['train_hours']:.2f} h"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="settings to run")
    parser.add_argument("--reuse", action="store_true", help="evaluate finished runs as they are")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/reproduction"))
    parser.add_argument("--set", action="append", default=[], help="extra key=value overrides")
    parser.add_argument("--progress", action="store_true", help="show training progress bars")
    args = parser.parse_args(argv)
    rows = []
    for name in args.only or list(SETTINGS):
        rows += _run_setting(name, SETTINGS[name], args)
    print(_table(rows))
    stem = "omniglot_metric_reproduction" + ("_custom" if args.set else "")
    previous = RESULTS / f"{stem}.json"
    kept = []
    if previous.is_file():
        ran = {row["setting"] for row in rows}
        earlier = json.loads(previous.read_text())["rows"]
        kept = [row for row in earlier if row["setting"] not in ran]
    payload = {"machine": machine(), "overrides": args.set, "rows": kept + rows}
    print(f"\nwrote {write_json(f'{stem}.json', payload)}", file=sys.stderr)


if __name__ == "__main__":
    main()
