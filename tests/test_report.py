"""`fastadapt report`: runs' results.json gathered into one markdown table, with learning curves;
`fastadapt train --plots` draws them as training goes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from test_run import TINY

from fastadapt.cli import main
from fastadapt.engine.report import report_table, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _record(protocol: dict, metrics: dict, values: dict, **extra) -> dict:
    return {
        "checkpoint": "best.pt",
        "step": 100,
        "protocol": protocol,
        "metrics": {k: {"mean": m, "ci95": c, "n": 600} for k, (m, c) in metrics.items()},
        "reference": {"paper": "a paper", "table": "Table 1", "values": values},
        **extra,
    }


def _fake_run(folder: Path, preset: str, evaluations: list[dict], columns: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"preset": preset}))
    (folder / "results.json").write_text(json.dumps({"evaluations": evaluations}))
    with (folder / "metrics.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", *columns])
        for step in range(3):
            writer.writerow([10 * (step + 1), *(values[step] for values in columns.values())])
    return folder


@pytest.fixture
def fake_runs(tmp_path) -> list[Path]:
    protonet = {"split": "test", "family": "omniglot", "algorithm": "protonet", "shots": 1}
    five_way = _record(
        {**protonet, "ways": 5},
        {"loss": (0.06, 0.006), "accuracy": (0.98223, 0.00187)},
        {"accuracy": 0.988},
        train_seconds=2115.1,
    )
    twenty_way = _record(
        {**protonet, "ways": 20}, {"loss": (0.2, 0.01), "accuracy": (0.942, 0.002)}, {}
    )
    rerun = dict(five_way, step=200, train_seconds=None)
    del rerun["train_seconds"]
    rerun["metrics"] = {"accuracy": {"mean": 0.9851, "ci95": 0.0018, "n": 1000}}
    sinusoid = _record(
        {"split": "test", "family": "sinusoid", "algorithm": "maml", "shots": 5},
        {"mse": (0.35, 0.06), "mse@1": (0.608, 0.059), "mse@5": (0.41, 0.07)},
        {"mse@1": 0.67, "mse@5": 0.38},
        train_seconds=42.4,
    )
    curves = {
        "train_loss": ["1.0", "0.5", "0.25"],
        "val_accuracy": ["", "0.9", "0.95"],
        "val_accuracy_ci95": ["", "0.02", "0.01"],
    }
    return [
        _fake_run(
            tmp_path / "p1", "protonet-omniglot-1shot", [five_way, twenty_way, rerun], curves
        ),
        _fake_run(tmp_path / "s", "sinusoid-maml", [sinusoid], {"train_mse": ["2", "1", "0.5"]}),
    ]


EXPECTED = """\
| run | preset | algorithm | dataset | ways | shots | ours (mean ± 95% CI) | paper | wall time |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| p1 | protonet-omniglot-1shot | protonet | omniglot | 5 | 1 | accuracy 98.51 ± 0.18% | accuracy 98.80% | 35 min 15 s |
| p1 | protonet-omniglot-1shot | protonet | omniglot | 20 | 1 | accuracy 94.20 ± 0.20% | — | 35 min 15 s |
| s | sinusoid-maml | maml | sinusoid | — | 5 | mse@1 0.608 ± 0.059; mse@5 0.410 ± 0.070 | mse@1 0.670; mse@5 0.380 | 42 s |
"""  # noqa: E501


def test_report_of_two_runs_is_the_expected_table(fake_runs) -> None:
    assert report_table(fake_runs) == EXPECTED


def test_report_writes_markdown_and_curves(fake_runs, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib", reason="the plots extra is not installed")
    out = tmp_path / "out" / "report.md"
    assert main(["report", *map(str, fake_runs), "--out", str(out)]) == 0
    assert EXPECTED in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("# fastadapt report\n\n" + EXPECTED)
    for png in ("01-p1.png", "02-s.png"):
        assert f"](report_curves/{png})" in text
        assert (out.parent / "report_curves" / png).read_bytes().startswith(PNG)


def test_report_without_curves_and_bad_run_folders(fake_runs, tmp_path, capsys) -> None:
    written = write_report(fake_runs, tmp_path / "r.md", curves=False)
    assert written == [tmp_path / "r.md"] and "Learning curves" not in written[0].read_text()
    (tmp_path / "empty").mkdir()
    assert main(["report", str(fake_runs[0]), str(tmp_path / "empty")]) == 2
    assert "empty has no results.json" in capsys.readouterr().err
    (fake_runs[1] / "results.json").write_text('{"evaluations": [')
    assert main(["report", str(fake_runs[1]), "--no-curves"]) == 2
    assert "is not valid JSON" in capsys.readouterr().err


def test_train_with_plots_draws_the_curves_with_a_validation_band(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib", reason="the plots extra is not installed")
    out = tmp_path / "run"
    argv = ["train", "sinusoid-maml", "--out", str(out), "--no-progress", "--plots"]
    assert main([*argv, *(arg for a in TINY for arg in ("--set", a))]) == 0
    assert (out / "curves.png").read_bytes().startswith(PNG)
    with (out / "metrics.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["val_mse"]]
    assert len(rows) == 3 and all(float(row["val_mse_ci95"]) > 0 for row in rows)
