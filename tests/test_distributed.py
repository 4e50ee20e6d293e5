"""Distributed meta-training: two gloo processes train the one-process model, evaluation is
gathered exactly, runs resume with another number of processes, a killed rank ends the job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_run import TINY, tiny_config

import fastadapt
from fastadapt.cli import main
from fastadapt.engine import distributed, launch
from fastadapt.engine.checkpoint import load_checkpoint
from fastadapt.engine.run import evaluate_run, train_run
from fastadapt.errors import DistributedError

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not Path("/proc/self/stat").exists(),
    reason="needs torch.distributed and Linux's /proc",
)


def _sets(*assignments: str) -> list[str]:
    return [arg for a in assignments for arg in ("--set", a)]


def _worker_env() -> dict[str, str]:
    """The environment of the workers: this fastadapt first on the path, one thread each."""
    source = str(Path(fastadapt.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _torchrun(nproc: int, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        launch.torchrun_command(nproc, list(arguments)),
        env=_worker_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def one_thread():
    """Evaluate in this process with one thread, as the workers do (same float operations)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """A tiny sinusoid MAML run trained by two gloo processes (meta-batch 4: two tasks each)."""
    out = tmp_path_factory.mktemp("distributed") / "run"
    job = _torchrun(2, "train", "sinusoid-maml", *_sets(*TINY), "--out", str(out), "--no-progress")
    stdout, stderr = job.communicate(timeout=240)
    assert job.returncode == 0, stderr
    assert stdout.count("run folder:") == 1  # only rank 0 prints
    return out


def test_two_processes_train_the_model_of_one(two_process_run, tmp_path):
    single = tmp_path / "single"
    train_run(tiny_config(), single, progress=False)
    a = load_checkpoint(two_process_run / "checkpoints" / "last.pt")
    b = load_checkpoint(single / "checkpoints" / "last.pt")
    assert a.step == b.step == 6 and a.best["step"] == b.best["step"]
    for name in b.learner:
        torch.testing.assert_close(a.learner[name], b.learner[name], rtol=1e-5, atol=1e-6)
    rows_a = (two_process_run / "metrics.csv").read_text().splitlines()
    rows_b = (single / "metrics.csv").read_text().splitlines()
    assert rows_a[0] == rows_b[0] and len(rows_a) == len(rows_b)
    for row_a, row_b in zip(rows_a[1:], rows_b[1:]):
        values_a = [float(v) if v else 0.0 for v in row_a.split(",")]
        values_b = [float(v) if v else 0.0 for v in row_b.split(",")]
        assert values_a == pytest.approx(values_b, rel=1e-4)
    assert not list(two_process_run.rglob("*.tmp"))


def test_sharded_evaluation_equals_one_process(two_process_run, tmp_path, one_thread):
    run = shutil.copytree(two_process_run, tmp_path / "run")
    gathered = json.loads((run / "results.json").read_text())["evaluations"]
    assert len(gathered) == 1  # rank 0 alone wrote the record
    alone = evaluate_run(run, checkpoint="best")
    assert gathered[0]["protocol"] == alone["protocol"]
    assert gathered[0]["metrics"] == json.loads(json.dumps(alone["metrics"]))


def test_resume_with_another_number_of_processes(two_process_run, tmp_path):
    resumed = shutil.copytree(two_process_run, tmp_path / "resumed")
    train_run(tiny_config("train.steps=8"), resumed, resume=True, progress=False)
    straight = tmp_path / "straight"
    train_run(tiny_config("train.steps=8"), straight, progress=False)
    a = load_checkpoint(resumed / "checkpoints" / "last.pt")
    b = load_checkpoint(straight / "checkpoints" / "last.pt")
    assert a.step == b.step == 8
    for name in b.learner:
        torch.testing.assert_close(a.learner[name], b.learner[name], rtol=1e-5, atol=1e-6)


def test_a_killed_rank_ends_the_job_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    endless = ("train.steps=1000000", "train.val_every=1000000", "train.checkpoint_every=2")
    job = _torchrun(
        2,
        "train",
        "sinusoid-maml",
        *_sets(*TINY, *endless),
        "--out",
        str(out),
        "--no-progress",
        "--timeout",
        "20",
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "last.pt").exists():
            assert job.poll() is None, job.communicate()[1]
            assert time.monotonic() < deadline, "the job wrote no checkpoint"
            time.sleep(0.2)
        (victim,) = [pid for pid in _descendants(job.pid) if _environment(pid).get("RANK") == "1"]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = job.communicate(timeout=60)
    finally:
        for pid in _descendants(job.pid):
            os.kill(pid, signal.SIGKILL)
        job.kill()
    assert job.returncode != 0 and time.monotonic() - killed < 30
    assert "rank      : 1" in stderr and "SIGKILL" in stderr
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last.step >= 2
    # The checkpoint is whole: one process continues the run from it.
    steps = f"train.steps={last.step + 2}"
    train_run(tiny_config(*endless, steps), out, resume=True, progress=False)
    assert load_checkpoint(out / "checkpoints" / "last.pt").step == last.step + 2


_STALLED_PEER = """
import sys
import time

import torch

from fastadapt.engine import distributed
from fastadapt.errors import DistributedError

with distributed.process_group(torch.device("cpu"), timeout=1):
    if distributed.rank() == 1:
        time.sleep(4)  # stalls past the timeout, then leaves without exchanging anything
        sys.exit(0)
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.ones(3)
    started = time.monotonic()
    try:
        distributed.all_reduce_gradients([parameter])
    except DistributedError as error:
        print(f"after {time.monotonic() - started:.1f} s: {error}")
"""


_TORCHRUN_2 = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--nproc-per-node",
    "2",
    "--standalone",
]


def test_a_stalled_rank_makes_the_others_stop_after_the_timeout(tmp_path):
    script = tmp_path / "stalled_peer.py"
    script.write_text(_STALLED_PEER)
    job = subprocess.run(
        [*_TORCHRUN_2, str(script)],
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert job.returncode == 0, job.stderr
    report = next(line for line in job.stdout.splitlines() if line.startswith("after "))
    assert float(report.split()[1]) < 4  # the 1-second timeout, not the stalled peer's 4 s
    assert "rank 0 of 2 lost contact with the other processes while averaging gradients" in report
    assert "--resume" in report


def test_a_failed_job_is_reported_with_the_checkpoint_to_resume(tmp_path, monkeypatch):
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    monkeypatch.setattr(launch, "torchrun_command", lambda *args: failing)
    with pytest.raises(DistributedError, match=r"status 3.*last\.pt\) is intact.*--resume"):
        launch.launch(2, ["train", "sinusoid-maml"], run_dir=tmp_path)


def test_meta_batch_not_divisible_by_the_processes_says_what_to_use(tmp_path, capsys):
    argv = ["train", "sinusoid-maml", "--set", "train.meta_batch=5", "--out", str(tmp_path / "r")]
    assert main([*argv, "--nproc", "2"]) == 2
    err = capsys.readouterr().err
    assert "train.meta_batch=5 cannot be shared equally by 2 processes" in err
    assert "--set train.meta_batch=4 or 6" in err and "(1, 5)" in err
    assert not (tmp_path / "r").exists()


def test_a_port_in_use_is_refused_before_starting(tmp_path, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        argv = ["train", "sinusoid-maml", "--out", str(tmp_path / "r"), "--nproc", "2"]
        assert main([*argv, "--set", "train.meta_batch=4", "--port", str(port)]) == 2
    assert f"port {port} is already in use" in capsys.readouterr().err


def test_ranks_with_other_presets_or_code_are_refused():
    config = tiny_config().to_dict()
    other = tiny_config("algorithm.inner_lr=0.02").to_dict()
    same = distributed.fingerprint(config)
    assert distributed.mismatch([same, distributed.fingerprint(config)]) is None
    message = distributed.mismatch([same, same, distributed.fingerprint(other)])
    assert "rank 2 differs from rank 0 in its configuration" in message
    older = {**same, "fastadapt source": "0" * 16}
    assert "fastadapt source" in distributed.mismatch([same, older])


def test_shards_of_a_meta_batch_are_its_contiguous_parts(monkeypatch):
    tasks = range(12, 18)
    assert distributed.shard(tasks) == tasks and distributed.is_main()
    parts = []
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    for rank in range(3):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        parts.append(distributed.shard(tasks))
    assert parts == [range(12, 14), range(14, 16), range(16, 18)]


def _descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _environment(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(): value.decode(errors="replace") for key, value in pairs}
