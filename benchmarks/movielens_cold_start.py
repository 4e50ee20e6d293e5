"""Cold-start rating prediction on MovieLens-100K: every method x partition x metric (MeLU, Lee
et al. 2019, Table 2's layout).

All methods see the same split and tasks, those of the ``movielens100k-melu`` preset: users and
items divided by time into existing and new (``fastadapt.recsys.cold_start``), a user's first 10
ratings as the support set and all the others as the query set. Methods:

- global mean and per-item mean of the training ratings (non-adaptive, closed form);
- global model: the MeLU network trained on every training rating without adaptation
  (``algorithm.name=pretrained``), scored as is (non-adaptive) and fine-tuned on each user's
  support set (``FINE_TUNE`` steps on its decision layers);
- MeLU: MAML whose local update adapts the decision layers (the preset);
- MAML on the whole network, and ANIL (the output layer only).

Each trained method is a run of ``fastadapt train`` whose best validation checkpoint is
evaluated on the four test partitions (``fastadapt eval --set eval.partition=...``). Prints one
markdown table (MAE, RMSE, nDCG@1, nDCG@3 as mean ± 95% CI over the test users), the target
check (MeLU's MAE on new users against the best non-adaptive baseline), and writes
``benchmarks/results/movielens_cold_start.json``. Run it again to re-evaluate: finished runs
are resumed (no more training), not trained anew.

    python benchmarks/movielens_cold_start.py --data DIR [--out runs/movielens-benchmark]
        [--set key=value ...] [--quick]

``DIR`` holds ``ml-100k.zip`` or the extracted ``ml-100k/`` folder. ``--quick`` trains 30 steps
per method and writes its JSON into ``--out`` only: a smoke test, not a result.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from _report import machine, write_json

from fastadapt.config import RunConfig, load_preset
from fastadapt.engine.build import build_task_family, task_count
from fastadapt.engine.evaluate import estimates_to_json, evaluate
from fastadapt.engine.run import evaluate_run, train_run
from fastadapt.io.atomic import atomic_write_text
from fastadapt.recsys.cold_start import TEST_PARTITIONS
from fastadapt.recsys.mean_rating import MeanRating

PRESET = "movielens100k-melu"
METRICS = {"mae": "MAE", "rmse": "RMSE", "ndcg1": "nDCG@1", "ndcg3": "nDCG@3"}
#: Fine-tuning of the global model: steps of gradient descent on its decision layers, and rate.
FINE_TUNE = (10, 0.01)
QUICK = ["train.steps=30", "train.val_every=10", "train.checkpoint_every=30"]


def trained_methods(config: RunConfig) -> dict[str, tuple[str, list[str], str]]:
    """Method name -> (run folder name, overrides of the preset, metric suffix)."""
    output_layer = f"decision.{2 * len(config.model.hidden)}"
    steps, rate = FINE_TUNE
    pretrained = [
        "algorithm.name=pretrained",
        f"eval.inner_steps={steps}",
        f"eval.inner_lr={rate}",
        f"eval.report_steps=[0, {steps}]",
    ]
    melu_steps = config.eval.inner_steps
    return {
        "global model (no adaptation)": ("global-model", pretrained, "@0"),
        f"global model fine-tuned ({steps} steps)": ("global-model", pretrained, f"@{steps}"),
        "MeLU (decision layers adapted)": ("melu", [], f"@{melu_steps}"),
        "MAML (whole network adapted)": ("maml", ["algorithm.adapt=[]"], f"@{melu_steps}"),
        "ANIL (output layer adapted)": (
            "anil",
            [f"algorithm.adapt=['{output_layer}']"],
            f"@{melu_steps}",
        ),
    }


def train_and_evaluate(
    config: RunConfig, out: Path, progress: bool
) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Train (or resume) one run, then evaluate it on every partition; also its training time."""
    resume = (out / "checkpoints" / "last.pt").is_file()
    record = train_run(config, out, resume=resume, progress=progress)
    records = {p: evaluate_run(out, overrides=[f"eval.partition={p}"]) for p in TEST_PARTITIONS}
    return records, record.get("train_seconds")


def mean_baselines(config: RunConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """The global and per-item mean on every partition: method -> partition -> metrics."""
    train = build_task_family(config, "train")
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for name, per_item in (("global mean", False), ("per-item mean", True)):
        model = MeanRating.fit(train, per_item=per_item)
        results[name] = {}
        for partition in TEST_PARTITIONS:
            family = build_task_family(config.override([f"eval.partition={partition}"]), "test")
            count = task_count(family, config.eval.tasks)
            estimates = evaluate(model, family.batch, count, config.eval.batch)
            results[name][partition] = estimates_to_json(estimates)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with MovieLens-100K")
    parser.add_argument("--out", type=Path, default=Path("runs/movielens-benchmark"))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--quick", action="store_true", help="30 steps per method (smoke)")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("once", UserWarning)  # skipped-user counts: once per partition

    settings = [f"data.root='{args.data}'", *args.overrides, *(QUICK if args.quick else [])]
    base = load_preset(PRESET).override(settings)
    rows: list[dict[str, Any]] = []
    for name, per_partition in mean_baselines(base).items():
        for partition, metrics in per_partition.items():
            rows.append({"method": name, "partition": partition, "metrics": metrics})
    runs: dict[str, tuple[dict[str, dict[str, Any]], float | None]] = {}
    for name, (folder, overrides, suffix) in trained_methods(base).items():
        if folder not in runs:
            config = base.override(overrides)
            runs[folder] = train_and_evaluate(config, args.out / folder, args.progress)
        records, seconds = runs[folder]
        for partition, record in records.items():
            metrics = {m: record["metrics"][m + suffix] for m in METRICS}
            rows.append(
                {
                    "method": name,
                    "partition": partition,
                    "metrics": metrics,
                    "train_seconds": seconds,
                    "run": str(args.out / folder),
                    "protocol": record["protocol"],
                }
            )

    print(f"MovieLens-100K cold start, preset {PRESET} ({base.train.steps} steps per method)")
    header = ["partition", "method", *METRICS.values(), "users", "training"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for partition in TEST_PARTITIONS:
        for row in (r for r in rows if r["partition"] == partition):
            cells = [
                f"{row['metrics'][m]['mean']:.4f} ± {row['metrics'][m]['ci95']:.4f}"
                for m in METRICS
            ]
            users = str(row["metrics"]["mae"]["n"])
            seconds = row.get("train_seconds")
            took = "—" if seconds is None else f"{seconds:.0f} s"
            print("| " + " | ".join([partition, row["method"], *cells, users, took]) + " |")

    target = _target(rows)
    print(
        f"\nnew users: MeLU MAE {target['melu']:.4f} against the best non-adaptive baseline "
        f"({target['baseline']}) {target['best']:.4f}: {100 * abs(target['improvement']):.2f}% "
        f"{'lower' if target['improvement'] >= 0 else 'higher'} (target: at least 5% lower, "
        f"{'met' if target['improvement'] >= 0.05 else 'not met'})"
    )
    payload = {
        "benchmark": "movielens_cold_start",
        "preset": PRESET,
        "settings": settings,
        "config": base.to_dict(),
        "fine_tune": {"steps": FINE_TUNE[0], "inner_lr": FINE_TUNE[1]},
        "rows": rows,
        "target": target,
        "machine": machine(),
    }
    if args.quick:
        path = args.out / "benchmark.json"
        atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    else:
        path = write_json("movielens_cold_start.json", payload)
    print(f"wrote {path}")


def _target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """MeLU's MAE on new users against the best non-adaptive method's."""
    new_users = {
        r["method"]: r["metrics"]["mae"]["mean"] for r in rows if r["partition"] == "new-users"
    }
    melu = new_users["MeLU (decision layers adapted)"]
    candidates = ("global mean", "per-item mean", "global model (no adaptation)")
    baseline = min(candidates, key=new_users.__getitem__)
    best = new_users[baseline]
    return {"melu": melu, "baseline": baseline, "best": best, "improvement": 1 - melu / best}


if __name__ == "__main__":
    main()
