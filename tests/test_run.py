"""Training runs: bit-exact resume, non-finite losses, run folders and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from fastadapt.algorithms.maml import MAML
from fastadapt.config import load_preset
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.run import evaluate_run, train_run
from fastadapt.engine.trainer import Trainer
from fastadapt.errors import CheckpointError, ConfigError, NonFiniteLossError, RunDirectoryError

TINY = [
    "train.steps=6",
    "train.meta_batch=4",
    "train.val_every=2",
    "train.val_tasks=8",
    "train.checkpoint_every=2",
    "train.log_every=1",
    "eval.tasks=10",
    "eval.inner_steps=2",
    "eval.report_steps=[0,1,2]",
    "eval.batch=4",
]


def tiny_config(*extra: str):
    return load_preset("sinusoid-maml").override([*TINY, *extra])


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_after_a_kill_is_bit_exact(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train_run(tiny_config(), straight, progress=False)

    interrupted = tmp_path / "interrupted"
    original = Trainer._meta_step

    def killed_at_step_five(self, step):
        if step == 4:  # after the checkpoint at step 4 was written, before step 5 ends
            raise KeyboardInterrupt
        return original(self, step)

    monkeypatch.setattr(Trainer, "_meta_step", killed_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        train_run(tiny_config(), interrupted, progress=False)
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt").step == 4
    monkeypatch.setattr(Trainer, "_meta_step", original)
    train_run(tiny_config(), interrupted, resume=True, progress=False)

    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(interrupted / "checkpoints" / "last.pt")
    assert a.step == b.step == 6
    assert all(torch.equal(a.learner[k], b.learner[k]) for k in a.learner)
    assert (straight / "metrics.csv").read_text() == (interrupted / "metrics.csv").read_text()
    first = json.loads((straight / "results.json").read_text())["evaluations"][0]["metrics"]
    second = json.loads((interrupted / "results.json").read_text())["evaluations"][0]["metrics"]
    assert first == second


def test_resume_may_extend_training_but_not_change_it(tmp_path):
    out = tmp_path / "run"
    train_run(tiny_config(), out, progress=False)
    with pytest.raises(ConfigError, match=r"algorithm\.inner_lr"):
        train_run(tiny_config("algorithm.inner_lr=0.02"), out, resume=True, progress=False)
    first = load_checkpoint(out / "checkpoints" / "last.pt").train_seconds
    record = train_run(
        tiny_config("train.steps=8", "algorithm.batch_mode=loop"), out, resume=True, progress=False
    )
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last.step == 8
    assert json.loads((out / "config.json").read_text())["algorithm"]["batch_mode"] == "loop"
    # The wall time counts both sessions: the first one's six steps and the resumed two.
    assert 0 < first < last.train_seconds
    assert record["train_seconds"] >= first + record["train_seconds_this_session"] - 1e-6


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    original = MAML.meta_loss
    calls = {"n": 0}

    def nan_at_third_step(self, batch):
        calls["n"] += 1
        output = original(self, batch)
        if calls["n"] == 3:
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(MAML, "meta_loss", nan_at_third_step)
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train_run(tiny_config(), out, progress=False)
    checkpoint = load_checkpoint(out / "checkpoints" / "last.pt")
    assert checkpoint.step == 2
    assert all(torch.isfinite(t).all() for t in checkpoint.learner.values())


def test_diverging_inner_loop_is_named_by_task_and_inner_step(tmp_path):
    config = tiny_config("algorithm.inner_lr=1e30", "algorithm.inner_steps=2")
    with pytest.raises(
        NonFiniteLossError,
        match=r"at step 1 \(task \d+ of the meta-batch \(\d+ of \d+\) has non-finite adapted "
        r"parameters after inner step [12] of 2; lower algorithm.inner_lr",
    ):
        train_run(config, tmp_path / "run", progress=False)


@pytest.mark.parametrize(
    ("fits", "advice"),
    [(3, "2 tasks at a time fit: --set train.task_chunk=2"), (0, "not even one task fits")],
)
def test_a_meta_batch_out_of_memory_says_which_chunk_fits(tmp_path, monkeypatch, fits, advice):
    original = MAML.meta_loss

    def limited_memory(self, batch):
        if batch.num_tasks > fits:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate")
        return original(self, batch)

    monkeypatch.setattr(MAML, "meta_loss", limited_memory)
    config = tiny_config("train.meta_batch=8", "train.task_chunk=8")
    with pytest.raises(ConfigError, match="8 tasks at a time ran out of host memory") as error:
        train_run(config, tmp_path / "run", progress=False)
    assert advice in str(error.value)
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_other_runtime_errors_are_not_taken_for_memory(tmp_path, monkeypatch):
    def broken(self, batch):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(MAML, "meta_loss", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        train_run(tiny_config(), tmp_path / "run", progress=False)


def test_out_folder_with_another_run_is_refused_and_untouched(tmp_path):
    out = tmp_path / "run"
    train_run(tiny_config(), out, progress=False)
    before = _snapshot(out)
    with pytest.raises(RunDirectoryError, match="holds another run"):
        train_run(tiny_config(), out, progress=False)
    assert _snapshot(out) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(RunDirectoryError, match="is not empty"):
        train_run(tiny_config(), other, progress=False)
    assert (other / "todo.txt").read_text() == "mine"


def test_missing_and_corrupt_checkpoints_are_explained(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_run(tiny_config(), tmp_path / "never-trained", resume=True, progress=False)
    out = tmp_path / "run"
    train_run(tiny_config(), out, progress=False)
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated"):
        train_run(tiny_config(), out, resume=True, progress=False)
    torch.save({"weights": torch.zeros(2)}, last)
    with pytest.raises(CheckpointError, match="not a fastadapt checkpoint"):
        train_run(tiny_config(), out, resume=True, progress=False)
    with pytest.raises(RunDirectoryError, match="no trained run"):
        evaluate_run(tmp_path)


def test_eval_appends_a_record_with_its_protocol(tmp_path):
    out = tmp_path / "run"
    train_run(tiny_config(), out, progress=False)
    record = evaluate_run(out, overrides=["eval.tasks=12", "eval.shots=10"])
    assert record["protocol"]["tasks"] == 12 and record["protocol"]["shots"] == 10
    assert record["reference"]["values"] == {}  # another protocol than the paper's
    assert record["metrics"]["mse@2"]["n"] == 12
    history = json.loads((out / "results.json").read_text())["evaluations"]
    assert len(history) == 2 and history[1] == json.loads(json.dumps(record))
    with pytest.raises(ConfigError, match="only accepts eval"):
        evaluate_run(out, overrides=["train.lr=0.1"])


def test_chunked_meta_batch_gives_the_same_step(tmp_path):
    whole, chunked = tmp_path / "whole", tmp_path / "chunked"
    train_run(tiny_config("train.steps=1"), whole, progress=False)
    train_run(tiny_config("train.steps=1", "train.task_chunk=3"), chunked, progress=False)
    a = load_checkpoint(whole / "checkpoints" / "last.pt").learner
    b = load_checkpoint(chunked / "checkpoints" / "last.pt").learner
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_tensorboard_and_learning_curves(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("matplotlib", reason="the plots extra is not installed")
    from fastadapt.engine.plots import plot_learning_curves

    out = tmp_path / "run"
    train_run(tiny_config("train.tensorboard=true"), out, progress=False)
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    png = plot_learning_curves(out)
    assert png == out / "curves.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(RunDirectoryError, match=r"no metrics\.csv"):
        plot_learning_curves(tmp_path)


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os
    import stat

    from fastadapt.io.atomic import atomic_write_text

    target = tmp_path / "results.json"
    atomic_write_text(target, "{}")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert not list(tmp_path.glob(".*.tmp"))


def test_step_decay_of_the_learning_rate_survives_resume(tmp_path):
    out = tmp_path / "run"
    decay = ("train.lr_decay=0.5", "train.lr_decay_every=2")
    train_run(tiny_config(*decay, "train.steps=4"), out, progress=False)
    train_run(tiny_config(*decay), out, resume=True, progress=False)
    # Steps 0..5 use lr * 0.5 ** (step // 2); the last update (step index 5) used 0.25 * lr.
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last.optimizer["param_groups"][0]["lr"] == pytest.approx(0.001 * 0.25)
    straight = tmp_path / "straight"
    train_run(tiny_config(*decay), straight, progress=False)
    other = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert all(torch.equal(last.learner[k], other.learner[k]) for k in last.learner)
