"""Reproduce the MAML sinusoid table (Finn et al. 2017, §5.1, Figure 2, k=5 panel).

Trains the ``sinusoid-maml`` preset (MLP 1-40-40-1, K=10, one inner step α=0.01, meta-batch
25, Adam, 70,000 meta-iterations), then evaluates the best validation checkpoint on 600 fixed
test tasks with K=5 support points and 100 query points, reporting the MSE after 0 / 1 / 5 / 10
inner steps as mean ± 95% CI beside the paper's numbers, and the training time.

    python benchmarks/sinusoid_reproduction.py [--out runs/sinusoid-reproduction]
        [--set train.steps=2000 ...] [--resume]

Prints a table and writes ``benchmarks/results/sinusoid_reproduction.json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _report import machine, write_json

from fastadapt.config import load_preset
from fastadapt.engine.run import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sinusoid-reproduction"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    config = load_preset("sinusoid-maml").override(args.overrides)
    record = train_run(config, args.out, resume=args.resume, progress=args.progress)
    paper = config.reference.values
    rows = []
    print(
        f"MAML sinusoid regression, {config.train.steps} meta-iterations "
        f"({record['train_seconds']:.0f} s of training this session)"
    )
    print("protocol: " + ", ".join(f"{k}={v}" for k, v in record["protocol"].items()))
    print(f"| metric | paper | fastadapt (mean ± 95% CI, n={config.eval.tasks}) |")
    print("|---|---:|---:|")
    for step in config.eval.report_steps:
        name = f"mse@{step}"
        ours = record["metrics"][name]
        target = f"{paper[name]:.2f}" if name in paper else "-"
        print(f"| MSE after {step} steps | {target} | {ours['mean']:.3f} ± {ours['ci95']:.3f} |")
        rows.append({"metric": name, "paper": paper.get(name), **ours})
    path = write_json(
        "sinusoid_reproduction.json",
        {
            "benchmark": "sinusoid_reproduction",
            "config": config.to_dict(),
            "rows": rows,
            "train_seconds": record["train_seconds"],
            "best_checkpoint": record["best"],
            "run_folder": str(args.out),
            "machine": machine(),
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
