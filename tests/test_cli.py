"""The command line end to end, and its errors: a message and a non-zero exit code."""

from __future__ import annotations

import json
import subprocess
import sys

from test_run import TINY

from fastadapt.cli import main


def _sets(*assignments: str) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def test_presets_lists_paper_and_targets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "sinusoid-maml" in out and "Finn" in out and "mse@1 0.67" in out


def test_train_then_eval_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sinusoid-maml", *_sets(*TINY), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "protocol: split=test" in printed and "mse@2" in printed and "±" in printed
    assert main(["eval", str(out), "--tasks", "7", "--checkpoint", "last"]) == 0
    assert "tasks=7" in capsys.readouterr().out
    evaluations = json.loads((out / "results.json").read_text())["evaluations"]
    assert [e["protocol"]["tasks"] for e in evaluations] == [10, 7]


def test_progress_bar_shows_loss_and_validation(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "sinusoid-maml", *_sets(*TINY), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "meta-train" in err and "loss=" in err and "val_mse=" in err


def test_errors_exit_non_zero_with_a_hint(tmp_path, capsys):
    assert main(["train", "sinusoid-mam", "--out", str(tmp_path / "a")]) == 2
    assert "Did you mean sinusoid-maml" in capsys.readouterr().err
    assert main(["train", "sinusoid-maml", "--set", "train.stepz=3", "--out", str(tmp_path)]) == 2
    assert "Did you mean train.steps" in capsys.readouterr().err
    assert main(["train", "sinusoid-maml", "--set", "task.shots=0", "--out", str(tmp_path)]) == 2
    assert "task.shots must be positive" in capsys.readouterr().err
    assert main(["train", "sinusoid-maml", "--set", "train.lr=fast", "--out", str(tmp_path)]) == 2
    assert "train.lr must be a number" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "no trained run" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_console_script_runs_as_a_module():
    result = subprocess.run(
        [sys.executable, "-m", "fastadapt.cli", "train", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "--resume" in result.stdout
