"""The training-time budget: ``train.max_hours`` ends a run, survives resume, and is refused
where it cannot be enforced."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_rl_run import tiny_config as tiny_rl_config
from test_run import tiny_config

from fastadapt.engine import training_clock
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.run import train_run
from fastadapt.engine.trainer import Trainer
from fastadapt.engine.training_clock import TrainingClock
from fastadapt.errors import ConfigError
from fastadapt.rl.trainer import RLTrainer

MINUTES_PER_STEP = 10


@pytest.fixture
def ten_minute_steps(monkeypatch):
    """A fake clock for the training-time budget in which every meta-step takes 10 minutes."""
    now = SimpleNamespace(seconds=0.0)
    monkeypatch.setattr(training_clock, "time", SimpleNamespace(perf_counter=lambda: now.seconds))

    def slow(original):
        def step(self, index):
            now.seconds += MINUTES_PER_STEP * 60
            return original(self, index)

        return step

    monkeypatch.setattr(Trainer, "_meta_step", slow(Trainer._meta_step))
    monkeypatch.setattr(RLTrainer, "_meta_step", slow(RLTrainer._meta_step))


def test_the_clock_sums_sessions_and_spends_its_budget(monkeypatch):
    now = SimpleNamespace(seconds=100.0)
    monkeypatch.setattr(training_clock, "time", SimpleNamespace(perf_counter=lambda: now.seconds))
    clock = TrainingClock(max_hours=1.0)
    clock.start(seconds_before=3000.0)
    now.seconds += 599.0
    assert clock.session_seconds == 599.0 and clock.total_seconds == 3599.0
    assert not clock.spent()
    now.seconds += 1.0
    assert clock.spent()
    unbounded = TrainingClock()
    unbounded.start(seconds_before=1e9)
    assert not unbounded.spent()
    unbounded.start(seconds_before=None)  # an old checkpoint: the total is unknown
    assert unbounded.total_seconds is None and not unbounded.spent()
    with pytest.raises(ConfigError, match="does not record how long"):
        clock.start(seconds_before=None)


def test_max_hours_ends_the_run_validated_and_checkpointed(tmp_path, ten_minute_steps):
    out = tmp_path / "run"
    record = train_run(tiny_config("train.max_hours=0.5"), out, progress=False)
    # Half an hour of ten-minute steps: the budget is spent after step 3 of 6.
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last.step == 3 and last.train_seconds == 1800
    assert record["train_steps"] == 3 and record["stopped_by_max_hours"] is True
    assert record["metrics"]  # the best checkpoint was evaluated all the same
    rows = (out / "metrics.csv").read_text().splitlines()
    header, final = rows[0].split(","), rows[-1].split(",")
    assert final[0] == "3" and final[header.index("val_mse")] != ""

    # Resuming with the spent budget trains nothing; a larger one trains on to it.
    assert (
        train_run(tiny_config("train.max_hours=0.5"), out, resume=True, progress=False)[
            "train_steps"
        ]
        == 3
    )
    record = train_run(tiny_config("train.max_hours=0.8"), out, resume=True, progress=False)
    assert record["train_steps"] == 5 and load_checkpoint(out / "checkpoints" / "last.pt").step == 5
    record = train_run(tiny_config(), out, resume=True, progress=False)
    assert record["train_steps"] == 6 and record["stopped_by_max_hours"] is False

    # The stops changed nothing of the training: the parameters are the uninterrupted run's.
    straight = tmp_path / "straight"
    train_run(tiny_config(), straight, progress=False)
    a = load_checkpoint(out / "checkpoints" / "last.pt").learner
    b = load_checkpoint(straight / "checkpoints" / "last.pt").learner
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_max_hours_ends_a_meta_rl_run(tmp_path, ten_minute_steps):
    out = tmp_path / "rl"
    record = train_run(tiny_rl_config("train.max_hours=0.25"), out, progress=False)
    assert record["train_steps"] == 2 and record["stopped_by_max_hours"] is True
    assert load_checkpoint(out / "checkpoints" / "last.pt").step == 2


def test_max_hours_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match=r"train\.max_hours must be positive"):
        train_run(tiny_config("train.max_hours=0"), tmp_path / "run", progress=False)
