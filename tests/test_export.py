"""Exports: safetensors + JSON that fastadapt.load reads back into identical predictions, and
clear refusals of files that are not ours, truncated, or from an incompatible version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from test_adapt import train_tiny, write_task

import fastadapt
from fastadapt.cli import main
from fastadapt.errors import CheckpointError, RunDirectoryError
from fastadapt.inference.export import export_model


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    maml = ["algorithm.name=maml", "algorithm.inner_steps=1", "eval.inner_steps=2"]
    return {
        "matching": train_tiny(root / "matching", "matching-omniglot-1shot"),
        "maml": train_tiny(root / "maml", "protonet-omniglot-1shot", *maml),
    }


def _predictions(model: fastadapt.LoadedModel, task: Path) -> torch.Tensor:
    support = sorted((task / "support").glob("*/*.png"))
    labels = torch.tensor(
        [sorted({p.parent.name for p in support}).index(p.parent.name) for p in support]
    )
    query = sorted((task / "query").glob("*.jpg"))
    return model.adapt(model.preprocess(support), labels).predict_proba(model.preprocess(query))


@pytest.mark.parametrize("algorithm", ["matching", "maml"])
def test_export_then_load_gives_identical_predictions(runs, algorithm, tmp_path) -> None:
    task = write_task(tmp_path / "task", shots=1, queries=2)
    from_run = fastadapt.load(runs[algorithm])
    manifest = export_model(from_run, tmp_path / "export")
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == [
        "fastadapt.json",
        "model.safetensors",
    ]
    from_export = fastadapt.load(tmp_path / "export")
    assert torch.equal(_predictions(from_run, task), _predictions(from_export, task))
    described = json.loads(manifest.read_text())
    assert described["format"] == "fastadapt-export" and described["format_version"] == 1
    assert described["fastadapt_version"] == fastadapt.__version__
    assert described["config"] == from_run.config.to_dict()
    assert described["preprocessing"]["channels"] == 1
    assert described["preprocessing"]["image_size"] == 28
    assert described["fixed_ways"] == (3 if algorithm == "maml" else None)
    weights = safetensors.torch.load_file(tmp_path / "export" / "model.safetensors")
    state = from_run.learner.state_dict()
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[k], state[k]) for k in state)


def test_cli_export_and_adapt_from_the_export(runs, tmp_path, capsys) -> None:
    task = write_task(tmp_path / "task", shots=1, queries=2)
    export = tmp_path / "export"
    assert main(["export", str(runs["matching"]), "--out", str(export)]) == 0
    assert "exported to" in capsys.readouterr().out
    outputs = []
    for source in (runs["matching"], export):
        out = tmp_path / f"{source.name}.csv"
        argv = ["--support", str(task / "support"), "--query", str(task / "query")]
        assert main(["adapt", str(source), *argv, "--out", str(out)]) == 0
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
    assert main(["export", str(runs["matching"]), "--out", str(export)]) == 2
    assert "is not empty; it was left untouched" in capsys.readouterr().err


def test_a_regression_model_round_trips_too(tmp_path) -> None:
    from test_run import tiny_config

    from fastadapt.engine.run import train_run

    train_run(tiny_config("train.steps=2"), tmp_path / "run", progress=False)
    export_model(fastadapt.load(tmp_path / "run"), tmp_path / "export")
    assert json.loads((tmp_path / "export" / "fastadapt.json").read_text())["preprocessing"] is None
    x = torch.linspace(-5, 5, 7).unsqueeze(1)
    run, exported = fastadapt.load(tmp_path / "run"), fastadapt.load(tmp_path / "export")
    assert exported.preprocessing is None
    assert torch.equal(
        run.adapt(x, torch.sin(x)).predict(x), exported.adapt(x, torch.sin(x)).predict(x)
    )


@pytest.fixture
def export(runs, tmp_path) -> Path:
    export_model(fastadapt.load(runs["matching"]), tmp_path / "export")
    return tmp_path / "export"


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "fastadapt.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda m: m["config"]["algorithm"].update(name="leo"),
            "needs algorithm.name 'leo', which this fastadapt",
        ),
        (
            lambda m: m["config"]["model"].update(kind="vit"),
            "needs model.kind 'vit', which this fastadapt",
        ),
        (
            lambda m: m.update(format_version=2, fastadapt_version="9.0.0"),
            "format version 2, written by fastadapt 9.0.0; this fastadapt .* reads version 1: "
            "upgrade fastadapt",
        ),
        (lambda m: m.pop("format"), "is not a fastadapt export"),
        (
            lambda m: m["config"]["train"].update(warmup=3),
            "configuration does not fit this fastadapt",
        ),
        (
            lambda m: m["preprocessing"].update(image_size=84),
            "states the preprocessing .*image_size=84",
        ),
    ],
    ids=["algorithm", "backbone", "newer-format", "not-ours", "unknown-key", "preprocessing"],
)
def test_incompatible_exports_are_refused_by_name(export, edit, message) -> None:
    _edit_manifest(export, edit)
    with pytest.raises(CheckpointError, match=message):
        fastadapt.load(export)


def test_truncated_or_foreign_files_are_refused(export, tmp_path) -> None:
    weights = export / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"does not match the SHA-256.*truncated"):
        fastadapt.load(export)
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        fastadapt.load(export)
    manifest = export / "fastadapt.json"
    manifest.write_text(manifest.read_text()[:100])
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        fastadapt.load(export)
    foreign = tmp_path / "foreign" / "checkpoints"
    foreign.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign / "best.pt")
    with pytest.raises(CheckpointError, match="not a fastadapt checkpoint"):
        fastadapt.load(foreign.parent)
    with pytest.raises(RunDirectoryError, match="is not a folder"):
        fastadapt.load(tmp_path / "nowhere")


def test_checkpoints_are_read_without_unpickling_code(runs, monkeypatch) -> None:
    calls = []
    original = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    fastadapt.load(runs["matching"])
    assert calls == [True]
