"""Cold-start rating prediction on MovieLens-100K: every method x partition x metric (MeLU, Lee
et al. 2019, Table 2's layout).

All methods see the same split and tasks, those of the ``movielens100k-melu`` preset: users and
items divided by time into existing and new (``fastadapt.recsys.cold_start``), a user's first 10
ratings as the support set and all the others as the query set. Methods:

- global mean and per-item mean of the training ratings (non-adaptive, closed form);
- global model: the MeLU network (with the preset's per-item prior) trained on every training
  rating without adaptation (``algorithm.name=pretrained``), scored as is (non-adaptive) and
  fine-tuned on each user's support set (gradient descent on its decision layers, the rate and
  number of steps of ``FINE_TUNE_RATES`` x ``FINE_TUNE_STEPS`` with the lowest validation MAE);
- MeLU: MAML whose local update adapts the decision layers (the preset);
- MAML on the whole network, and ANIL (the output layer only).

Each meta-learned method is trained once per local-update step size of ``INNER_LRS`` and the
run with the lowest validation MAE is kept: every method gets the same tuning, on the
validation users only. Each trained method is a run of ``fastadapt train`` whose best
validation checkpoint is evaluated on the four test partitions
(``fastadapt eval --set eval.partition=...``). Prints one
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
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.evaluate import estimates_to_json, evaluate
from fastadapt.engine.run import evaluate_run, train_run
from fastadapt.io.atomic import atomic_write_text
from fastadapt.recsys.cold_start import TEST_PARTITIONS
from fastadapt.recsys.mean_rating import MeanRating

PRESET = "movielens100k-melu"
METRICS = {"mae": "MAE", "rmse": "RMSE", "ndcg1": "nDCG@1", "ndcg3": "nDCG@3"}
#: Local-update step sizes α tried for each meta-learned method (MeLU, MAML, ANIL): one run
#: each, and the run whose best checkpoint has the lowest MAE on the validation users is used.
INNER_LRS = (0.02, 0.05, 0.1)
#: Fine-tuning of the global model on a user's support set (gradient descent on its decision
#: layers): every rate x step count is scored on the validation users and the best is used.
FINE_TUNE_RATES = (0.003, 0.01, 0.03, 0.1)
FINE_TUNE_STEPS = (1, 2, 5, 10, 20)
#: The global model: trained without adaptation, its checkpoint chosen on the validation MAE
#: after 10 fine-tuning steps at 0.01 (then its fine-tuning is chosen as above).
GLOBAL_MODEL = [
    "algorithm.name=pretrained",
    "eval.inner_steps=10",
    "eval.inner_lr=0.01",
    "eval.report_steps=[0, 10]",
]
QUICK = ["train.steps=30", "train.val_every=10", "train.checkpoint_every=30"]


def meta_methods(config: RunConfig) -> dict[str, tuple[str, list[str]]]:
    """Meta-learned method name -> (run folder name, overrides of the preset)."""
    output_layer = f"decision.{2 * len(config.model.hidden)}"
    return {
        "MeLU (decision layers adapted)": ("melu", []),
        "MAML (whole network adapted)": ("maml", ["algorithm.adapt=[]"]),
        "ANIL (output layer adapted)": ("anil", [f"algorithm.adapt=['{output_layer}']"]),
    }


def train_and_evaluate(
    config: RunConfig, out: Path, progress: bool, evaluation: list[str] | None = None
) -> tuple[dict[str, dict[str, Any]], float | None]:
    """Train (or resume) one run, then evaluate it on every partition (with the ``eval.*``
    overrides ``evaluation``); also its training time."""
    train(config, out, progress)
    records = {
        p: evaluate_run(out, overrides=[*(evaluation or []), f"eval.partition={p}"])
        for p in TEST_PARTITIONS
    }
    return records, load_checkpoint(out / "checkpoints" / "last.pt").train_seconds


def train(config: RunConfig, out: Path, progress: bool) -> float:
    """Train (or resume) one run; its best validation MAE (the checkpoint evaluated)."""
    resume = (out / "checkpoints" / "last.pt").is_file()
    train_run(config, out, resume=resume, progress=progress)
    return load_checkpoint(out / "checkpoints" / "best.pt").best["value"]


def choose_fine_tuning(run: Path) -> tuple[tuple[float, int], dict[str, float]]:
    """The global model's fine-tuning (rate, steps) with the lowest validation MAE, and the
    validation MAE of every candidate (``"rate@steps"``)."""
    scores: dict[tuple[float, int], float] = {}
    for rate in FINE_TUNE_RATES:
        record = evaluate_run(
            run,
            overrides=[
                "eval.partition=val",
                f"eval.inner_lr={rate}",
                f"eval.inner_steps={max(FINE_TUNE_STEPS)}",
                f"eval.report_steps={list(FINE_TUNE_STEPS)}",
            ],
        )
        for steps in FINE_TUNE_STEPS:
            scores[rate, steps] = record["metrics"][f"mae@{steps}"]["mean"]
    best = min(scores, key=scores.__getitem__)
    return best, {f"{rate}@{steps}": value for (rate, steps), value in scores.items()}


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


def method_rows(
    name: str,
    run: Path,
    records: dict[str, dict[str, Any]],
    seconds: float | None,
    suffix: str,
) -> list[dict[str, Any]]:
    """The table rows of one method, one per partition, from its metrics named ``*suffix``."""
    return [
        {
            "method": name,
            "partition": partition,
            "metrics": {m: record["metrics"][m + suffix] for m in METRICS},
            "train_seconds": seconds,
            "run": str(run),
            "protocol": record["protocol"],
        }
        for partition, record in records.items()
    ]


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
    choices: dict[str, Any] = {}
    folder, config = args.out / "global-model", base.override(GLOBAL_MODEL)
    train(config, folder, args.progress)
    (rate, steps), scores = choose_fine_tuning(folder)
    choices["global model fine-tuned"] = {"chosen": f"{steps} steps at α={rate}", "val_mae": scores}
    evaluation = [
        f"eval.inner_lr={rate}",
        f"eval.inner_steps={steps}",
        f"eval.report_steps=[0, {steps}]",
    ]
    records, seconds = train_and_evaluate(config, folder, args.progress, evaluation)
    rows += method_rows("global model (no adaptation)", folder, records, seconds, "@0")
    name = f"global model fine-tuned ({steps} steps, α={rate})"
    rows += method_rows(name, folder, records, seconds, f"@{steps}")

    for name, (prefix, overrides) in meta_methods(base).items():
        val_mae: dict[str, float] = {}
        for rate in INNER_LRS:
            config = base.override([*overrides, f"algorithm.inner_lr={rate}"])
            val_mae[str(rate)] = train(config, args.out / f"{prefix}-lr{rate}", args.progress)
        rate = min(INNER_LRS, key=lambda r: val_mae[str(r)])
        choices[name] = {"chosen": f"α={rate}", "val_mae": val_mae}
        config = base.override([*overrides, f"algorithm.inner_lr={rate}"])
        folder = args.out / f"{prefix}-lr{rate}"
        records, seconds = train_and_evaluate(config, folder, args.progress)
        rows += method_rows(name, folder, records, seconds, f"@{base.eval.inner_steps}")

    print(f"MovieLens-100K cold start, preset {PRESET} ({base.train.steps} steps per run)")
    for name, choice in choices.items():
        tried = ", ".join(f"{k}: {v:.4f}" for k, v in choice["val_mae"].items())
        print(f"{name}: {choice['chosen']}, chosen on validation MAE ({tried})")
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
        "choices": choices,
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
