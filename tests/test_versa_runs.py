"""VERSA presets from the command line: classification prints nll, accuracy and ECE and draws a
reliability diagram; regression prints mse and nll and draws its predictions with ± 2σ."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_RUN

from fastadapt.cli import main
from fastadapt.config import load_preset
from fastadapt.datasets import registry
from fastadapt.engine.run import _check_resume_compatible
from fastadapt.errors import ConfigError

pytest.importorskip("matplotlib")


def _sets(*assignments: str) -> list[str]:
    return [part for assignment in assignments for part in ("--set", assignment)]


def test_classification_preset_trains_and_evaluates_with_calibration(
    fake_omniglot, tmp_path, capsys
) -> None:
    out = tmp_path / "versa"
    train = ["train", "versa-omniglot-5way-1shot", *_sets(*TINY_RUN), "--out", str(out)]
    assert main([*train, "--no-progress", "--plots"]) == 0
    printed = capsys.readouterr().out
    for line in ("class_split=versa", "samples=10", "nll", "accuracy", "ece"):
        assert line in printed
    assert f"figure: {out / 'reliability.png'}" in printed
    assert (out / "curves.png").is_file() and (out / "reliability.png").is_file()
    assert main(["eval", str(out), "--tasks", "4", "--plots"]) == 0
    record = json.loads((out / "results.json").read_text())["evaluations"][-1]
    assert set(record["metrics"]) == {"nll", "accuracy", "ece"}
    assert record["metrics"]["ece"]["n"] == 4 and record["plots"] == ["reliability.png"]


def test_regression_preset_reports_nll_and_draws_predictions(tmp_path, capsys) -> None:
    out = tmp_path / "sinusoid"
    tiny = ["train.steps=3", "train.val_every=3", "train.val_tasks=4", "eval.tasks=5"]
    assert main(["train", "sinusoid-versa", *_sets(*tiny), "--out", str(out), "--no-progress"]) == 0
    assert main(["eval", str(out), "--plots"]) == 0
    printed = capsys.readouterr().out
    assert "mse" in printed and "nll" in printed and "paper 0.35" in printed
    assert (out / "predictions.png").read_bytes()[:4] == b"\x89PNG"


def test_class_splits_are_chosen_by_name(monkeypatch) -> None:
    omniglot = registry.DATASETS["omniglot"]
    assert registry.split_loader("omniglot", "") is omniglot.load
    assert registry.split_loader("omniglot", "vinyals") is omniglot.load
    calls = []

    class _Archives:
        def random_split(self, sizes, *, seed):
            calls.append((sizes, seed))
            return {"train": "train classes"}

    monkeypatch.setattr(registry, "_omniglot_archives", lambda root, download: _Archives())
    assert registry.split_loader("omniglot", "versa")(None, "train", False) == "train classes"
    assert calls == [((1100, 100, 423), 0)]
    with pytest.raises(
        ConfigError,
        match=r"choose one of \['vinyals', 'vinyals-trainval', 'maml', 'versa', 'reptile'\]",
    ):
        registry.split_loader("omniglot", "lake")
    with pytest.raises(ConfigError, match="it has only its standard split"):
        registry.split_loader("cifar-fs", "versa")


def test_runs_from_before_a_setting_existed_still_resume(tmp_path) -> None:
    config = load_preset("sinusoid-maml").to_dict()
    older = json.loads(json.dumps(config))
    del older["algorithm"]["samples"], older["data"]["split"]
    _check_resume_compatible(older, config, tmp_path)
    changed = json.loads(json.dumps(config))
    changed["algorithm"]["samples"] = 3
    with pytest.raises(ConfigError, match=r"algorithm\.samples: run has 10, now 3"):
        _check_resume_compatible(config, changed, tmp_path)
