"""The ``fastadapt`` command line: ``presets``, ``train``, ``eval``, ``plot``, ``datasets``.

Every error fastadapt raises on purpose is printed as one message on stderr with exit code 2;
nothing of an earlier run is overwritten.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastadapt.config import list_presets, load_preset
from fastadapt.datasets.registry import DATASETS, dataset_info, dataset_root, download_dataset
from fastadapt.engine.plots import plot_learning_curves
from fastadapt.engine.run import evaluate_run, train_run
from fastadapt.errors import FastAdaptError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except FastAdaptError as error:
        print(f"fastadapt: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastadapt: interrupted; resume with --resume.", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastadapt",
        description="Meta-learning: train and evaluate meta-learners on few-shot tasks.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    presets = verbs.add_parser("presets", help="list the paper-reproduction presets")
    presets.set_defaults(handler=_presets)

    train = verbs.add_parser(
        "train",
        help="meta-train a preset, then evaluate it on test tasks",
        description="Meta-train a preset into a run folder, then evaluate its best checkpoint "
        "on fixed test tasks (mean ± 95%% CI, written to results.json).",
    )
    train.add_argument("preset", help="preset name (see `fastadapt presets`)")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set train.steps=1000 (repeatable)",
    )
    train.add_argument("--out", type=Path, help="run folder (default: runs/PRESET)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, bit-exactly",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(handler=_train)

    evaluate = verbs.add_parser(
        "eval",
        help="evaluate a trained run on fixed test tasks",
        description="Evaluate a run's checkpoint on fixed test tasks; the result is printed "
        "with its protocol and appended to RUN_DIR/results.json.",
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--tasks", type=int, help="number of test tasks (eval.tasks)")
    evaluate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an eval.* setting, e.g. --set eval.shots=10 (repeatable)",
    )
    evaluate.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which checkpoint"
    )
    evaluate.set_defaults(handler=_eval)

    plot = verbs.add_parser(
        "plot",
        help="draw a run's learning curves (needs the plots extra)",
        description="Draw every metric of RUN_DIR/metrics.csv against the meta-iteration.",
    )
    plot.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    plot.add_argument("--out", type=Path, help="PNG file (default: RUN_DIR/curves.png)")
    plot.set_defaults(handler=_plot)

    datasets = verbs.add_parser(
        "datasets",
        help="list, download and inspect datasets",
        description="Datasets by name: `list` them, `download` one (md5-verified, resumable), "
        "or show its classes, images, splits and cache (`info`).",
    )
    actions = datasets.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="the datasets fastadapt knows").set_defaults(
        handler=_datasets_list
    )
    for action, text, handler in (
        ("download", "download a dataset's files and build its cache", _datasets_download),
        ("info", "classes, images, splits, cache size and location", _datasets_info),
    ):
        sub = actions.add_parser(action, help=text, description=text)
        sub.add_argument("name", metavar="NAME")
        sub.add_argument(
            "--root",
            type=Path,
            help="the dataset's folder (default: a per-user cache folder, see `datasets list`)",
        )
        sub.set_defaults(handler=handler)
    return parser


def _presets(args: argparse.Namespace) -> int:
    for name in list_presets():
        config = load_preset(name)
        ref = config.reference
        targets = ", ".join(f"{k} {v:g}" for k, v in ref.values.items())
        print(f"{name}\n  {config.description}\n  paper:  {ref.paper}\n  table:  {ref.table}")
        print(f"  target: {targets}\n  protocol: {ref.protocol}")
    return 0


def _train(args: argparse.Namespace) -> int:
    config = load_preset(args.preset).override(args.overrides)
    out = args.out or Path("runs") / args.preset
    record = train_run(config, out, resume=args.resume, progress=not args.no_progress)
    print(f"run folder: {out}")
    _print_record(record)
    return 0


def _eval(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.tasks is not None:
        overrides.append(f"eval.tasks={args.tasks}")
    record = evaluate_run(args.run_dir, overrides=overrides, checkpoint=args.checkpoint)
    _print_record(record)
    return 0


def _plot(args: argparse.Namespace) -> int:
    print(plot_learning_curves(args.run_dir, args.out))
    return 0


def _datasets_list(args: argparse.Namespace) -> int:
    for name, entry in DATASETS.items():
        print(
            f"{name}\n  {entry.summary}\n  {entry.source}\n  default folder: "
            f"{dataset_root(name, None)}"
        )
    return 0


def _datasets_download(args: argparse.Namespace) -> int:
    print(f"{args.name} is ready in {download_dataset(args.name, args.root)}")
    return 0


def _datasets_info(args: argparse.Namespace) -> int:
    info = dataset_info(args.name, args.root)
    print(f"{info['name']}: {info['summary']}\n  folder: {info['root']}")
    for split, facts in info["splits"].items():
        shape = "x".join(str(d) for d in facts["image_shape"])
        print(f"  {split:<6} {facts['classes']:>5} classes  {facts['images']:>7} examples  {shape}")
    for entry in info["cache"]:
        print(f"  cache {entry['key']}: {entry['bytes'] / 2**20:.1f} MiB in {entry['path']}")
    return 0


def _print_record(record: dict[str, Any]) -> None:
    protocol = ", ".join(f"{k}={v}" for k, v in record["protocol"].items())
    print(f"evaluation of {record['checkpoint']} (step {record['step']}); protocol: {protocol}")
    paper = record["reference"].get("values", {})
    width = max(len(name) for name in record["metrics"])
    for name, m in record["metrics"].items():
        target = f"   paper {paper[name]:g}" if name in paper else ""
        print(f"  {name:<{width}}  {m['mean']:.4f} ± {m['ci95']:.4f}  (n={m['n']}){target}")


if __name__ == "__main__":
    sys.exit(main())
