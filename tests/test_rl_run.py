"""Meta-RL runs from the CLI: train, evaluate, resume, stop on NaN, refuse bad settings."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fastadapt.cli import main
from fastadapt.config import load_preset
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.run import evaluate_run, train_run
from fastadapt.errors import ConfigError, NonFiniteLossError
from fastadapt.rl.maml_rl import MAMLRL

TINY = [
    "train.steps=4",
    "train.meta_batch=4",
    "train.val_every=2",
    "train.val_tasks=4",
    "train.checkpoint_every=2",
    "model.hidden=[16,16]",
    "rl.trajectories=5",
    "rl.horizon=30",
    "eval.tasks=6",
    "eval.batch=4",
    "rl.env_steps=none",
    "eval.env_steps=none",
]


def tiny_config(*extra: str):
    return load_preset("nav2d-maml-trpo").override([*TINY, *extra])


def test_short_training_run_adapts(tmp_path):
    config = load_preset("nav2d-maml-trpo").override(
        [
            "train.steps=6",
            "train.meta_batch=10",
            "train.val_every=6",
            "train.val_tasks=10",
            "model.hidden=[32,32]",
            "rl.trajectories=10",
            "eval.tasks=20",
            "eval.report_steps=[0,1]",
            "rl.env_steps=none",
        ]
    )
    record = train_run(config, tmp_path / "run", progress=False)
    metrics = record["metrics"]
    assert metrics["return@1"]["mean"] > metrics["return@0"]["mean"] + 5
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    before = sum(float(r["train_return@0"]) for r in rows)
    after = sum(float(r["train_return@1"]) for r in rows)
    assert after > before
    assert all(0 < float(r["train_kl"]) <= 0.01 for r in rows)


def test_cli_trains_and_evaluates_with_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "run"
    overrides = [arg for setting in TINY for arg in ("--set", setting)]
    code = main(["train", "nav2d-maml-trpo", "--out", str(out), "--no-progress", *overrides])
    assert code == 0
    assert "return@1" in capsys.readouterr().out
    assert main(["eval", str(out), "--tasks", "4", "--plots"]) == 0
    printed = capsys.readouterr().out
    assert "paper -11.68" in printed and "trajectories.png" in printed
    results = json.loads((out / "results.json").read_text())["evaluations"]
    assert [r["protocol"]["tasks"] for r in results] == [6, 4]
    assert set(results[1]["metrics"]) == {f"return@{k}" for k in range(4)}
    assert (out / "adaptation.png").stat().st_size > 0
    assert (out / "trajectories.png").stat().st_size > 0


def test_validation_runs_the_test_protocol_and_ranks_by_the_adapted_return(tmp_path):
    config = tiny_config("eval.env_steps=90", "train.val_every=1")
    train_run(config, tmp_path / "run", progress=False)
    with (tmp_path / "run" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        later = [float(row[f"val_return@{k}"]) for k in (1, 2, 3)]
        assert float(row["val_adapted_return"]) == pytest.approx(sum(later) / 3, rel=1e-5)
    best = max(rows, key=lambda row: float(row["val_adapted_return"]))
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert state.best["metric"] == "adapted_return"
    assert state.step == int(best["step"])
    assert state.best["value"] == pytest.approx(float(best["val_adapted_return"]), rel=1e-5)


def test_adam_outer_loop_and_first_order(tmp_path):
    config = tiny_config("train.optimizer=adam", "algorithm.first_order=true", "train.steps=2")
    record = train_run(config, tmp_path / "run", progress=False)
    assert record["step"] == 2
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state.optimizer["state"]  # Adam's moments are checkpointed


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train_run(tiny_config(), straight, progress=False)
    interrupted = tmp_path / "interrupted"
    original = MAMLRL.trpo_update

    def killed(self, batch, **settings):
        if not hasattr(killed, "calls"):
            killed.calls = 0
        killed.calls += 1
        if killed.calls == 3:
            raise KeyboardInterrupt
        return original(self, batch, **settings)

    monkeypatch.setattr(MAMLRL, "trpo_update", killed)
    with pytest.raises(KeyboardInterrupt):
        train_run(tiny_config(), interrupted, progress=False)
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt").step == 2
    monkeypatch.setattr(MAMLRL, "trpo_update", original)
    train_run(tiny_config(), interrupted, resume=True, progress=False)
    a = load_checkpoint(straight / "checkpoints" / "last.pt").learner
    b = load_checkpoint(interrupted / "checkpoints" / "last.pt").learner
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = (interrupted / "metrics.csv").read_text() == (straight / "metrics.csv").read_text()
    assert rows


def test_nan_in_the_policy_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    original = MAMLRL.trpo_update

    def poisoned(self, batch, **settings):
        stats = original(self, batch, **settings)
        if not hasattr(poisoned, "calls"):
            poisoned.calls = 0
        poisoned.calls += 1
        if poisoned.calls == 3:
            with torch.no_grad():
                self.policy.log_std.fill_(float("nan"))
        return stats

    monkeypatch.setattr(MAMLRL, "trpo_update", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="last good checkpoint"):
        train_run(tiny_config(), out, progress=False)
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state.step == 2
    assert all(torch.isfinite(v).all() for v in state.learner.values())
    assert evaluate_run(out, checkpoint="last")["step"] == 2


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.optimizer=sgd", "trpo, adam"),
        ("algorithm.name=protonet", "MAML only"),
        ("rl.gamma=1.5", r"rl.gamma must be in \(0, 1\]"),
        ("rl.nav2d_reward=manhattan", "distance, squared"),
    ],
)
def test_bad_rl_settings_are_refused(tmp_path, setting, message):
    with pytest.raises(ConfigError, match=message):
        train_run(tiny_config(setting), tmp_path / "run", progress=False)


def test_cheetah_preset_trains_one_iteration(tmp_path):
    pytest.importorskip("mujoco")
    config = load_preset("cheetah-dir-maml-trpo").override(
        [
            "train.steps=1",
            "train.meta_batch=2",
            "train.val_tasks=2",
            "model.hidden=[16]",
            "rl.trajectories=2",
            "rl.horizon=10",
            "eval.tasks=2",
            "eval.report_steps=[0,1]",
        ]
    )
    record = train_run(config, tmp_path / "run", progress=False)
    assert set(record["metrics"]) == {"return@0", "return@1"}
    assert record["reference"]["values"]["return@1"] == 293.19


def test_meta_rl_refuses_several_processes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["train", "nav2d-maml-trpo", "--out", str(out), "--nproc", "2"]) == 2
    assert "meta-RL runs train and evaluate in one process, not 2" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="leave out --nproc"):
        train_run(tiny_config(), out, progress=False)
    assert not out.exists()
