"""The ``fastadapt`` command line: ``presets``, ``train``, ``eval``, ``plot``, ``report``,
``adapt``, ``recommend``, ``export``, ``datasets``.

Every error fastadapt raises on purpose is printed as one message on stderr with exit code 2,
every warning as one line on stderr; nothing of an earlier run is overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastadapt.config import RL_FAMILIES, list_presets, load_preset
from fastadapt.datasets.registry import (
    DATASETS,
    RATINGS,
    dataset_info,
    dataset_root,
    download_dataset,
)
from fastadapt.engine import distributed
from fastadapt.engine.launch import launch
from fastadapt.engine.plots import plot_learning_curves
from fastadapt.engine.report import report_table, write_report
from fastadapt.engine.run import evaluate_run, train_run
from fastadapt.errors import ConfigError, FastAdaptError
from fastadapt.inference.adapt_folder import (
    FolderPredictions,
    adapt_folder,
    write_predictions_csv,
)
from fastadapt.inference.export import export_model
from fastadapt.inference.load import load
from fastadapt.recsys.recommend import recommend
from fastadapt.rl.run import check_one_process, is_rl_run


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.handler(args)
    except FastAdaptError as error:
        where = f" (rank {os.environ['RANK']})" if distributed.launched() else ""
        print(f"fastadapt: error{where}: {error}", file=sys.stderr)
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
        "on fixed test tasks (mean ± 95% CI, written to results.json).",
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
    train.add_argument(
        "--plots",
        action="store_true",
        help="redraw RUN/curves.png whenever metrics are written, and draw the test "
        "evaluation's figures (see eval --plots; needs the plots extra)",
    )
    _distributed_options(train)
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
    evaluate.add_argument(
        "--plots",
        action="store_true",
        help="also draw RUN_DIR/reliability.png (classifiers: accuracy against confidence) or "
        "RUN_DIR/predictions.png (sinusoid regression: predictions, ± 2σ where the learner "
        "has a predictive variance, against the true functions); needs the plots extra",
    )
    _distributed_options(evaluate)
    evaluate.set_defaults(handler=_eval)

    plot = verbs.add_parser(
        "plot",
        help="draw a run's learning curves (needs the plots extra)",
        description="Draw every metric of RUN_DIR/metrics.csv against the meta-iteration.",
    )
    plot.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    plot.add_argument("--out", type=Path, help="PNG file (default: RUN_DIR/curves.png)")
    plot.set_defaults(handler=_plot)

    report = verbs.add_parser(
        "report",
        help="one markdown table of many runs' results, with their learning curves",
        description="Gather the results.json of runs into one markdown table (preset, "
        "algorithm, dataset, ways, shots, ours ± 95% CI, paper, wall time) and draw each "
        "run's learning curves beside it (needs the plots extra unless --no-curves).",
    )
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    report.add_argument(
        "--out", type=Path, default=Path("report.md"), help="markdown file (default: report.md)"
    )
    report.add_argument(
        "--no-curves", action="store_true", help="write the table only, without PNG curves"
    )
    report.set_defaults(handler=_report)

    adapt = verbs.add_parser(
        "adapt",
        help="adapt a trained model to your labelled images and classify new ones",
        description="Adapt a trained model (run or export folder) to the classes of "
        "--support (one folder of images per class) and classify the images of --query (a "
        "folder of images, or one folder per class, then accuracy is printed too). Images are "
        "preprocessed exactly as in training.",
    )
    adapt.add_argument("run", type=Path, metavar="RUN", help="a run folder or an export folder")
    adapt.add_argument(
        "--support", type=Path, required=True, metavar="DIR", help="DIR/<class name>/<images>"
    )
    adapt.add_argument(
        "--query", type=Path, required=True, metavar="DIR", help="images to classify"
    )
    adapt.add_argument(
        "--out",
        type=Path,
        default=Path("predictions.csv"),
        help="CSV of the predictions (default: predictions.csv)",
    )
    adapt.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave out images that cannot be decoded (each is named) instead of stopping",
    )
    adapt.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run"
    )
    adapt.set_defaults(handler=_adapt)

    suggest = verbs.add_parser(
        "recommend",
        help="adapt a MovieLens model to a new user's ratings; rank the movies they have not seen",
        description="Adapt a model trained on MovieLens (run or export folder) to a new user's "
        "ratings (a CSV file with a header naming the columns item and rating: MovieLens item "
        "ids, 1-5 stars) and list the unseen movies with the highest predicted ratings.",
    )
    suggest.add_argument("run", type=Path, metavar="RUN", help="a run folder or an export folder")
    suggest.add_argument(
        "--ratings", type=Path, required=True, metavar="FILE", help="the user's item,rating CSV"
    )
    suggest.add_argument("--top", type=int, default=10, help="how many movies (default: 10)")
    suggest.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="what the user tells of themselves: gender=F, age=25, occupation=writer, zip=94110 "
        "(repeatable; the rest is unknown)",
    )
    suggest.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which checkpoint of a run"
    )
    suggest.set_defaults(handler=_recommend)

    export = verbs.add_parser(
        "export",
        help="write a run's model as safetensors weights plus a JSON config",
        description="Write a run's model to a new folder: model.safetensors and fastadapt.json, "
        "which fastadapt.load() and `fastadapt adapt` read without the run's checkpoints.",
    )
    export.add_argument("run", type=Path, metavar="RUN", help="a run folder")
    export.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    export.add_argument(
        "--checkpoint", choices=("best", "last"), default="best", help="which checkpoint"
    )
    export.set_defaults(handler=_export)

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


def _distributed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        metavar="N",
        help="run N processes on this machine with torchrun (gloo on CPU, NCCL on GPU); "
        "train.meta_batch must be a multiple of N",
    )
    parser.add_argument(
        "--port",
        type=int,
        help="with --nproc: the rendezvous port (default: a free one)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=distributed.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="in a distributed job, how long a process waits for the others before the job "
        f"stops with an error (default: {distributed.DEFAULT_TIMEOUT:g})",
    )


def _forwarded(args: argparse.Namespace, *positional: str) -> list[str]:
    """The arguments of this command for the workers of ``--nproc``, without it."""
    options = [arg for o in args.overrides for arg in ("--set", o)]
    for flag in ("out", "tasks", "checkpoint"):
        if getattr(args, flag, None) is not None:
            options += [f"--{flag}", str(getattr(args, flag))]
    for flag in ("resume", "no_progress", "plots"):
        if getattr(args, flag, False):
            options.append(f"--{flag.replace('_', '-')}")
    return [args.verb, *positional, *options, "--timeout", str(args.timeout)]


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
    if args.nproc is not None:
        if config.task.family in RL_FAMILIES:
            check_one_process(args.nproc)
        distributed.check_meta_batch(config.train.meta_batch, args.nproc)
        args.out = out
        launch(args.nproc, _forwarded(args, args.preset), args.port, run_dir=out)
        return 0
    record = train_run(
        config,
        out,
        resume=args.resume,
        progress=not args.no_progress,
        plots=args.plots,
        timeout=args.timeout,
    )
    if distributed.is_main():
        print(f"run folder: {out}")
        _print_record(record, out)
    return 0


def _eval(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        if is_rl_run(args.run_dir):
            check_one_process(args.nproc)
        launch(args.nproc, _forwarded(args, str(args.run_dir)), args.port)
        return 0
    overrides = list(args.overrides)
    if args.tasks is not None:
        overrides.append(f"eval.tasks={args.tasks}")
    record = evaluate_run(
        args.run_dir,
        overrides=overrides,
        checkpoint=args.checkpoint,
        plots=args.plots,
        timeout=args.timeout,
    )
    if distributed.is_main():
        _print_record(record, args.run_dir)
    return 0


def _plot(args: argparse.Namespace) -> int:
    print(plot_learning_curves(args.run_dir, args.out))
    return 0


def _report(args: argparse.Namespace) -> int:
    written = write_report(args.run_dirs, args.out, curves=not args.no_curves)
    print(report_table(args.run_dirs), end="")
    print(f"report: {written[0]}" + (f" ({len(written) - 1} PNG curves)" if written[1:] else ""))
    return 0


def _adapt(args: argparse.Namespace) -> int:
    model = load(args.run, checkpoint=args.checkpoint)
    result = adapt_folder(model, args.support, args.query, skip_bad=args.skip_bad)
    shots = ", ".join(f"{c} ({n})" for c, n in zip(result.classes, result.shots))
    print(f"model: {model.config.algorithm.name} {model.config.model.kind}, {model.source}")
    print(f"preprocessing: {model.image_preprocessing.describe()}")
    print(f"support: {len(result.classes)} classes, images per class: {shots}")
    _print_predictions(result)
    write_predictions_csv(result, args.out)
    print(f"predictions: {args.out}")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    user = {}
    for assignment in args.user:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise ConfigError(f"--user expects KEY=VALUE, got {assignment!r}; e.g. --user age=25.")
        user[key.strip()] = value
    model = load(args.run, checkpoint=args.checkpoint)
    items = recommend(model, args.ratings, top=args.top, user=user)
    print(f"model: {model.config.algorithm.name} {model.config.model.kind}, {model.source}")
    print(f"top {len(items)} unseen movies for the ratings in {args.ratings}:")
    width = max((len(item.title) for item in items), default=5)
    print(f"{'rank':>4}  {'item':>5}  {'title':<{width}}  predicted rating")
    for rank, item in enumerate(items, start=1):
        print(f"{rank:>4}  {item.item:>5}  {item.title:<{width}}  {item.predicted:.2f}")
    return 0


def _export(args: argparse.Namespace) -> int:
    manifest = export_model(load(args.run, checkpoint=args.checkpoint), args.out)
    print(f"exported to {args.out} ({manifest.name}, model.safetensors)")
    return 0


def _datasets_list(args: argparse.Namespace) -> int:
    for name, entry in {**DATASETS, **RATINGS}.items():
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
    if "ratings" in info:
        counts = info["ratings"]
        print(
            f"  {counts['ratings']} ratings of {counts['items']} items by {counts['users']} users"
        )
        return 0
    for split, facts in info["splits"].items():
        shape = "x".join(str(d) for d in facts["image_shape"])
        print(f"  {split:<6} {facts['classes']:>5} classes  {facts['images']:>7} examples  {shape}")
    for entry in info["cache"]:
        print(f"  cache {entry['key']}: {entry['bytes'] / 2**20:.1f} MiB in {entry['path']}")
    return 0


def _print_predictions(result: FolderPredictions) -> None:
    labelled = result.accuracy is not None
    header = ["file", "predicted class", "probability", *(["true class"] if labelled else [])]
    rows = [
        [p.file, p.predicted, f"{p.probability:.3f}", *([p.true_class or ""] if labelled else [])]
        for p in result.predictions
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)")
    if result.accuracy is not None:
        right = sum(p.predicted == p.true_class for p in result.predictions)
        print(f"accuracy: {result.accuracy:.4f} ({right} of {len(result.predictions)})")


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    print(f"fastadapt: warning: {message}", file=sys.stderr)


def _print_record(record: dict[str, Any], run_dir: Path) -> None:
    protocol = ", ".join(f"{k}={v}" for k, v in record["protocol"].items())
    print(f"evaluation of {record['checkpoint']} (step {record['step']}); protocol: {protocol}")
    paper = record["reference"].get("values", {})
    width = max(len(name) for name in record["metrics"])
    for name, m in record["metrics"].items():
        target = f"   paper {paper[name]:g}" if name in paper else ""
        print(f"  {name:<{width}}  {m['mean']:.4f} ± {m['ci95']:.4f}  (n={m['n']}){target}")
    for figure in record.get("plots", []):
        print(f"figure: {run_dir / figure}")


if __name__ == "__main__":
    sys.exit(main())
