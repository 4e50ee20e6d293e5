"""Reproduce MAML's reinforcement-learning tables (Finn et al. 2017, §5.3: Table 4, 2D
navigation; Table 5, half-cheetah direction; Figure 5, half-cheetah velocity).

Trains a meta-RL preset (``nav2d-maml-trpo`` by default; ``cheetah-vel-maml-trpo`` and
``cheetah-dir-maml-trpo`` need the ``rl`` extra), evaluates its best validation checkpoint on
the preset's fixed test tasks, and prints the average return after 0, 1, 2 and 3
policy-gradient steps as mean ± 95% CI beside the paper's numbers, with the training wall
time. ``--run DIR`` reports the latest evaluation of an existing run folder instead (e.g. one
trained with ``fastadapt train`` and evaluated with ``fastadapt eval``), without training; its
training time is the one stored in the evaluated checkpoint.

    python benchmarks/rl_reproduction.py [--preset nav2d-maml-trpo] [--out DIR]
        [--set train.steps=200 ...] [--resume] [--run DIR]

Prints a table and writes ``benchmarks/results/rl_reproduction_<preset>.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _report import machine, write_json

from fastadapt.config import RunConfig, load_preset
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.run import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nav2d-maml-trpo")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/<preset>)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--run", type=Path, help="report this run's latest evaluation")
    args = parser.parse_args()

    if args.run is not None:
        config = RunConfig.from_dict(json.loads((args.run / "config.json").read_text()))
        evaluations = json.loads((args.run / "results.json").read_text())["evaluations"]
        record, folder = evaluations[-1], args.run
        checkpoint = load_checkpoint(args.run / "checkpoints" / record["checkpoint"])
        record = {**record, "train_seconds": checkpoint.train_seconds}
    else:
        config = load_preset(args.preset).override(args.overrides)
        folder = args.out or Path("runs") / args.preset
        record = train_run(config, folder, resume=args.resume, progress=args.progress)
    rows = _print_table(config, record)
    path = write_json(
        f"rl_reproduction_{config.preset}.json",
        {
            "benchmark": "rl_reproduction",
            "preset": config.preset,
            "config": config.to_dict(),
            "protocol": record["protocol"],
            "rows": rows,
            "checkpoint_step": record["step"],
            "train_seconds": record.get("train_seconds"),
            "eval_seconds": record.get("eval_seconds"),
            "run_folder": str(folder),
            "machine": machine(),
        },
    )
    print(f"wrote {path}")


def _print_table(config: RunConfig, record: dict[str, Any]) -> list[dict[str, Any]]:
    paper = config.reference.values
    seconds = record.get("train_seconds")
    wall = f"{seconds / 60:.1f} min of training" if seconds else "training time unknown"
    print(
        f"{config.preset}: meta-batch {config.train.meta_batch}, {config.train.optimizer} outer "
        f"step; checkpoint of meta-iteration {record['step']} (of {config.train.steps} "
        f"planned; {wall})"
    )
    print("protocol: " + ", ".join(f"{k}={v}" for k, v in record["protocol"].items()))
    print(f"| policy-gradient steps | paper | fastadapt (mean ± 95% CI, n={config.eval.tasks}) |")
    print("|---|---:|---:|")
    rows = []
    for name, ours in record["metrics"].items():
        target = f"{paper[name]:.2f}" if name in paper else "-"
        print(f"| {name.split('@')[1]} | {target} | {ours['mean']:.2f} ± {ours['ci95']:.2f} |")
        rows.append({"metric": name, "paper": paper.get(name), **ours})
    return rows


if __name__ == "__main__":
    main()
