"""Wall time of one sinusoid MAML meta-iteration on CPU: fastadapt against peer libraries.

Workload (identical for every implementation): an MLP 1-40-40-1 with ReLU (``nn.Linear``
layers, the same initial weights everywhere), sinusoid regression tasks (amplitude U[0.1, 5],
phase U[0, pi], x U[-5, 5]) with K=10 support and 10 query points, a meta-batch of 25 tasks,
one inner SGD step (lr 0.01) on the MSE, the second-order meta-gradient (``create_graph=True``)
and an outer Adam step (lr 1e-3; fused for fastadapt, as its trainer uses it), in float32. One
meta-iteration is the inner loop for all 25 tasks, the query loss, ``backward()`` and
``optimizer.step()``. The task data are generated once (same seed, same tensors ``[25, 10, 1]``
for everyone), so the timing is the meta-update itself; the ``fastadapt+sampling`` row also
samples a fresh task batch inside each iteration. Implementations:

- ``fastadapt``, ``fastadapt+sampling``: this project (``fastadapt.MAML``).
- ``torch.func``: a straightforward baseline, ``vmap`` over tasks of ``grad`` + ``functional_call``.
- ``torchmeta``, ``learn2learn``, ``higher``, ``torchopt``: peer libraries, a loop over tasks
  written the way each library documents MAML.

Measurement, in interleaved rounds: each implementation runs in a long-lived worker subprocess
that builds its model, runs ``--warmup`` iterations, then waits on stdin; ``run N`` times N
iterations one by one (``time.perf_counter``) and answers the times as one JSON line. In each of
``--rounds`` rounds the orchestrator visits the workers in a fresh random order (``--seed``) and
asks each for ``--iters-per-round`` iterations, one worker at a time. The machine is shared and
its speed drifts by tens of percent over minutes: timed one after the other, a drift lands on
some rows only; interleaved, it spreads over all of them. The table gives each row's median and
10th/90th percentiles (ms) over all its timed iterations, and fastadapt's speed-up over it: the
median over rounds of (row's round median / fastadapt's round median), with its range.

fastadapt and torch.func run with the interpreter that launches this script (the project's
venv, with ``src/`` on ``PYTHONPATH``); the peers run with the interpreter given by
``--peers-python``, the venv built by ``shared/peers/setup_venv.sh`` (see
``shared/peers/README.md``). A peer that fails to import is reported as "not importable" rather
than stopping the benchmark; a worker that fails later is reported as "failed".

Run from the project root with the project's venv:

    python benchmarks/sinusoid_speed.py [--rounds 30] [--iters-per-round 10] [--seed 0]
    PYTHONPATH=src python benchmarks/sinusoid_speed.py --impl fastadapt  # debugging: one
    ../peers-venv/bin/python benchmarks/sinusoid_speed.py --impl higher  # in-process, JSON row

The table is printed and the results (machine information, each row's statistics, round
medians and per-round speed-ups) are written to ``--out`` (default
``benchmarks/results/sinusoid_speed.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import importlib.metadata
import json
import math
import os
import platform
import random
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn
from torch.nn.functional import mse_loss

PROJECT_ROOT = Path(__file__).resolve().parents[1]
RESULTS_PATH = PROJECT_ROOT / "benchmarks" / "results" / "sinusoid_speed.json"
DEFAULT_PEERS_PYTHON = os.path.normpath(PROJECT_ROOT.parent / "peers-venv" / "bin" / "python")
DEFAULT_SHIMS_DIR = os.path.normpath(PROJECT_ROOT.parent / "shared" / "peers")

TASKS, SHOTS, QUERIES, HIDDEN = 25, 10, 10, 40
INNER_LR, OUTER_LR = 0.01, 1e-3
SEED = 0
PEERS = ("torchmeta", "learn2learn", "higher", "torchopt")
BASELINE = "torch.func"
OURS = "fastadapt"

_Step = Callable[[], torch.Tensor]
"""One meta-iteration; returns the (detached) meta-loss."""

_TaskTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Shared workload
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TaskData:
    """The pre-generated meta-batch: support/query inputs and targets, each ``[25, n, 1]``."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor

    @property
    def tensors(self) -> _TaskTensors:
        return self.support_x, self.support_y, self.query_x, self.query_y

    def per_task(self) -> list[_TaskTensors]:
        """The tasks one by one, for the implementations that loop over tasks."""
        return list(zip(*(t.unbind(0) for t in self.tensors), strict=True))


def _make_tasks() -> _TaskData:
    """25 sinusoid tasks from a fixed seed: the same tensors in every process."""
    gen = torch.Generator().manual_seed(SEED)
    amplitude = torch.empty(TASKS, 1, 1).uniform_(0.1, 5.0, generator=gen)
    phase = torch.empty(TASKS, 1, 1).uniform_(0.0, math.pi, generator=gen)
    x = torch.empty(TASKS, SHOTS + QUERIES, 1).uniform_(-5.0, 5.0, generator=gen)
    y = amplitude * torch.sin(x - phase)
    return _TaskData(
        x[:, :SHOTS].contiguous(),
        y[:, :SHOTS].contiguous(),
        x[:, SHOTS:].contiguous(),
        y[:, SHOTS:].contiguous(),
    )


def _initial_weights() -> dict[str, torch.Tensor]:
    """Initial weights of the 1-40-40-1 MLP, keyed like an ``nn.Sequential`` of its layers."""
    torch.manual_seed(SEED)
    return _plain_mlp(load_initial=False).state_dict()


def _plain_mlp(load_initial: bool = True) -> nn.Sequential:
    model = nn.Sequential(
        nn.Linear(1, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)
    )
    if load_initial:
        model.load_state_dict(_initial_weights())
    return model


def _adam(params: Any) -> torch.optim.Optimizer:
    """The peers' outer optimizer: plain Adam, as their documentation uses."""
    return torch.optim.Adam(params, lr=OUTER_LR)


# ---------------------------------------------------------------------------------------------
# Implementations: each builds its meta-iteration from the shared task data.
# ---------------------------------------------------------------------------------------------


def _build_fastadapt(data: _TaskData, *, sampling: bool) -> tuple[_Step, str]:
    from fastadapt import MAML, MLP, SinusoidTasks, TaskBatch

    model = MLP(1, [HIDDEN, HIDDEN], 1)
    model.load_state_dict(_initial_weights())
    learner = MAML(model, problem="regression", inner_steps=1, inner_lr=INNER_LR)
    optimizer = torch.optim.Adam(learner.parameters(), lr=OUTER_LR, fused=True)  # as the trainer
    fixed_batch = TaskBatch(*data.tensors)
    tasks = SinusoidTasks(shots=SHOTS, queries=QUERIES, seed=SEED)
    iteration = 0

    def step() -> torch.Tensor:
        nonlocal iteration
        batch = fixed_batch
        if sampling:
            batch = tasks.batch(range(iteration * TASKS, (iteration + 1) * TASKS))
            iteration += 1
        optimizer.zero_grad()
        loss = learner.meta_loss(batch).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, f"batch_mode={learner.batch_mode}, fused Adam"


def _build_torch_func(data: _TaskData) -> tuple[_Step, str]:
    from torch.func import functional_call, grad, vmap

    model = _plain_mlp()
    optimizer = _adam(model.parameters())

    def task_loss(
        params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        return mse_loss(functional_call(model, params, (x,)), y)

    def adapted_query_loss(
        params: dict[str, torch.Tensor],
        support_x: torch.Tensor,
        support_y: torch.Tensor,
        query_x: torch.Tensor,
        query_y: torch.Tensor,
    ) -> torch.Tensor:
        grads = grad(task_loss)(params, support_x, support_y)
        adapted = {name: p - INNER_LR * grads[name] for name, p in params.items()}
        return task_loss(adapted, query_x, query_y)

    batched = vmap(adapted_query_loss, in_dims=(None, 0, 0, 0, 0))

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        loss = batched(dict(model.named_parameters()), *data.tensors).mean()
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, "vmap(grad)"


def _build_torchmeta(data: _TaskData) -> tuple[_Step, str]:
    from torchmeta.modules import MetaLinear, MetaSequential
    from torchmeta.utils.gradient_based import gradient_update_parameters

    model = MetaSequential(
        MetaLinear(1, HIDDEN),
        nn.ReLU(),
        MetaLinear(HIDDEN, HIDDEN),
        nn.ReLU(),
        MetaLinear(HIDDEN, 1),
    )
    model.load_state_dict(_initial_weights())
    optimizer = _adam(model.parameters())
    tasks = data.per_task()

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        total = torch.zeros(())
        for support_x, support_y, query_x, query_y in tasks:
            inner_loss = mse_loss(model(support_x), support_y)
            params = gradient_update_parameters(
                model, inner_loss, step_size=INNER_LR, first_order=False
            )
            total = total + mse_loss(model(query_x, params=params), query_y)
        loss = total / len(tasks)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, "gradient_update_parameters"


def _build_learn2learn(data: _TaskData) -> tuple[_Step, str]:
    import learn2learn as l2l

    maml = l2l.algorithms.MAML(_plain_mlp(), lr=INNER_LR, first_order=False)
    optimizer = _adam(maml.parameters())
    tasks = data.per_task()

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        total = torch.zeros(())
        for support_x, support_y, query_x, query_y in tasks:
            learner = maml.clone()
            learner.adapt(mse_loss(learner(support_x), support_y))
            total = total + mse_loss(learner(query_x), query_y)
        loss = total / len(tasks)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, "MAML.clone + adapt"


def _build_higher(data: _TaskData) -> tuple[_Step, str]:
    import higher

    model = _plain_mlp()
    inner_optimizer = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    optimizer = _adam(model.parameters())
    tasks = data.per_task()

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        total = torch.zeros(())
        for support_x, support_y, query_x, query_y in tasks:
            context = higher.innerloop_ctx(model, inner_optimizer, copy_initial_weights=False)
            with context as (fmodel, diffopt):
                diffopt.step(mse_loss(fmodel(support_x), support_y))
                total = total + mse_loss(fmodel(query_x), query_y)
        loss = total / len(tasks)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, "innerloop_ctx"


def _build_torchopt(data: _TaskData) -> tuple[_Step, str]:
    """torchopt's functional API (about 15% faster here than its ``MetaSGD`` module API)."""
    import torchopt
    from torch.func import functional_call

    model = _plain_mlp()
    inner_optimizer = torchopt.sgd(lr=INNER_LR)
    optimizer = _adam(model.parameters())
    tasks = data.per_task()

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        params = dict(model.named_parameters())
        total = torch.zeros(())
        for support_x, support_y, query_x, query_y in tasks:
            inner_state = inner_optimizer.init(params)
            inner_loss = mse_loss(functional_call(model, params, (support_x,)), support_y)
            grads = torch.autograd.grad(inner_loss, tuple(params.values()), create_graph=True)
            updates, _ = inner_optimizer.update(
                dict(zip(params, grads, strict=True)), inner_state, inplace=False
            )
            adapted = torchopt.apply_updates(params, updates, inplace=False)
            total = total + mse_loss(functional_call(model, adapted, (query_x,)), query_y)
        loss = total / len(tasks)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step, "sgd + apply_updates (functional)"


@dataclass(frozen=True)
class _Impl:
    module: str  # imported first: an exception means "not importable"
    build: Callable[[_TaskData], tuple[_Step, str]]  # the meta-iteration and a note
    peer: bool  # runs with the peers' interpreter
    shim: str | None = None  # the workaround of shared/peers/shims.py to apply before importing
    shared_data: bool = True  # times the pre-generated batch


def _import_library(impl: _Impl, shims_dir: str) -> str:
    """Import the implementation's library (after its shim, if any); return its version."""
    if impl.shim is not None:
        if shims_dir not in sys.path:
            sys.path.insert(0, shims_dir)
        import shims

        shims.prepare(impl.shim)
    module = importlib.import_module(impl.module)
    try:
        return importlib.metadata.version(impl.module.split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


_IMPLS: dict[str, _Impl] = {
    OURS: _Impl("fastadapt", lambda d: _build_fastadapt(d, sampling=False), peer=False),
    f"{OURS}+sampling": _Impl(
        "fastadapt",
        lambda d: _build_fastadapt(d, sampling=True),
        peer=False,
        shared_data=False,
    ),
    BASELINE: _Impl("torch.func", _build_torch_func, peer=False),
    "torchmeta": _Impl("torchmeta", _build_torchmeta, peer=True, shim="torchmeta"),
    "learn2learn": _Impl("learn2learn", _build_learn2learn, peer=True, shim="l2l"),
    "higher": _Impl("higher", _build_higher, peer=True),
    "torchopt": _Impl("torchopt", _build_torchopt, peer=True),
}


# ---------------------------------------------------------------------------------------------
# One implementation, in this process: a worker (driven over stdin) or ``--impl`` (debugging)
# ---------------------------------------------------------------------------------------------


def _prepare(name: str, args: argparse.Namespace) -> tuple[_Step | None, dict[str, Any]]:
    """Import, build and warm up one implementation: its step (None on failure) and its row."""
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    impl = _IMPLS[name]
    row: dict[str, Any] = {
        "impl": name,
        "python": sys.executable,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "shared_data": impl.shared_data,
    }
    try:
        row["version"] = _import_library(impl, args.shims_dir)
    except Exception as exc:
        return None, {**row, "status": "not importable", "error": _first_line(exc)}
    try:
        step, row["note"] = impl.build(_make_tasks())
        row["first_loss"] = step().item()
        for _ in range(args.warmup - 1):
            step()
    except Exception as exc:
        return None, {**row, "status": "failed", "error": _first_line(exc)}
    gc.collect()
    return step, {**row, "status": "ok", "warmup": args.warmup}


def _time(step: _Step, iters: int) -> tuple[list[float], torch.Tensor]:
    """Seconds taken by each of ``iters`` meta-iterations, and the last meta-loss."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return times, loss


def _serve(args: argparse.Namespace, protocol: IO[str]) -> None:
    """Worker: answer the row once warmed up, then ``run N`` with N times and ``quit`` with the
    final loss, one JSON line each on ``protocol``."""
    step, row = _prepare(args.worker, args)
    print(json.dumps(row), file=protocol, flush=True)
    loss = torch.tensor(math.nan)
    for line in sys.stdin if step is not None else ():
        if line.strip() == "quit":
            print(json.dumps({"final_loss": loss.item()}), file=protocol, flush=True)
            return
        step()  # untimed: the first iteration after an idle wait runs ~1.5x slower
        times, loss = _time(step, int(line.split()[1]))
        print(json.dumps(times), file=protocol, flush=True)


def _run_in_process(args: argparse.Namespace) -> dict[str, Any]:
    """``--impl``: the same measurement as one round, without subprocesses (debugging)."""
    step, row = _prepare(args.impl, args)
    if step is not None:
        times, loss = _time(step, args.rounds * args.iters_per_round)
        row["final_loss"] = loss.item()
        _summarise({args.impl: row}, {args.impl: [[1e3 * t for t in times]]})
    return row


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (``numpy.percentile``'s default) of sorted values."""
    position = q / 100 * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Orchestrator: one worker subprocess per implementation, driven in interleaved rounds
# ---------------------------------------------------------------------------------------------


class _Worker:
    """One implementation's worker subprocess, asked one command at a time."""

    def __init__(self, name: str, python: str, args: argparse.Namespace) -> None:
        env = dict(os.environ)
        src = str(PROJECT_ROOT / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        command = [python, __file__, "--worker", name, "--threads", str(args.threads)]
        command += ["--warmup", str(args.warmup), "--shims-dir", args.shims_dir]
        self.timeout = args.timeout
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (a file: never blocks)
        pipe = subprocess.PIPE
        self.process = subprocess.Popen(
            command, stdin=pipe, stdout=pipe, stderr=self.stderr, text=True, env=env
        )

    def ask(self, command: str | None) -> Any:
        """Send ``command`` (None: only read) and return the decoded one-line answer; raise
        ChildProcessError (and close the worker) if it exits or does not answer in time."""
        if command is not None:
            with contextlib.suppress(OSError):  # the worker has exited: reported below
                print(command, file=self.process.stdin, flush=True)
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        line = self.process.stdout.readline() if ready else ""
        if line.startswith(("{", "[")):
            return json.loads(line)
        self.close()
        self.stderr.seek(0)
        stderr = [line for line in self.stderr.read().splitlines() if line.strip()]
        error = stderr[-1] if stderr else f"exit status {self.process.returncode}"
        raise ChildProcessError(error if ready else f"no answer within {self.timeout:g} s")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _start_workers(args: argparse.Namespace) -> tuple[dict[str, dict], dict[str, _Worker]]:
    """Start the workers one after the other (warm-ups never overlap): every row, and the
    workers that are ready."""
    rows: dict[str, dict[str, Any]] = {}
    workers: dict[str, _Worker] = {}
    for name, impl in _IMPLS.items():
        python = args.peers_python if impl.peer else sys.executable
        print(f"starting {name} ...", end=" ", file=sys.stderr, flush=True)
        error = f"interpreter not found: {python}"
        rows[name] = {"impl": name, "python": python, "status": "not importable", "error": error}
        if Path(python).exists():
            workers[name] = _Worker(name, python, args)
            try:
                rows[name] = workers[name].ask(None)
            except ChildProcessError as exc:
                rows[name].update(status="failed", error=str(exc))
            if rows[name]["status"] != "ok":
                workers.pop(name).close()
        print(rows[name]["status"], file=sys.stderr, flush=True)
    return rows, workers


def _run_rounds(
    args: argparse.Namespace, rows: dict[str, dict], workers: dict[str, _Worker]
) -> dict[str, list[list[float]]]:
    """Each worker's times in ms, one list per round; a worker that fails is marked so in its
    row, closed and dropped."""
    rng = random.Random(args.seed)
    times: dict[str, list[list[float]]] = {name: [] for name in workers}
    for round_index in range(args.rounds):
        order = sorted(workers)
        rng.shuffle(order)
        for name in order:
            try:
                answer = workers[name].ask(f"run {args.iters_per_round}")
            except ChildProcessError as exc:
                rows[name].update(status="failed", error=str(exc))
                del workers[name]
                continue
            times[name].append([1e3 * t for t in answer])
        medians = ", ".join(f"{n} {statistics.median(times[n][-1]):.1f}" for n in workers)
        print(f"round {round_index + 1}/{args.rounds} (ms): {medians}", file=sys.stderr)
    for name, worker in workers.items():
        try:
            rows[name].update(worker.ask("quit"))
        except ChildProcessError as exc:
            rows[name].update(status="failed", error=str(exc))
        worker.close()
    return times


def _summarise(rows: dict[str, dict], times: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Add each row's statistics and fastadapt's per-round speed-up over it; the headline."""
    ok = {name: row for name, row in rows.items() if row["status"] == "ok"}
    medians = {name: [statistics.median(r) for r in times[name]] for name in ok}
    for name, row in ok.items():
        ms = sorted(t for round_ms in times[name] for t in round_ms)
        row.update(iterations=len(ms), median_ms=statistics.median(ms))
        row.update(p10_ms=_percentile(ms, 10), p90_ms=_percentile(ms, 90))
        row["round_median_ms"] = [round(m, 4) for m in medians[name]]
        if OURS in ok:
            ratios = [m / o for m, o in zip(medians[name], medians[OURS], strict=True)]
            row["speedup_of_fastadapt"] = statistics.median(ratios)
            row["speedup_range"] = [min(ratios), max(ratios)]
            row["round_speedups"] = [round(r, 4) for r in ratios]
    peers = [ok[name] for name in PEERS if name in ok]
    fastest = min(peers, key=lambda row: row["median_ms"]) if peers else None
    baseline = ok.get(BASELINE)
    return {
        "fastest_peer": fastest["impl"] if fastest else None,
        "speedup_vs_fastest_peer": fastest.get("speedup_of_fastadapt") if fastest else None,
        "speedup_vs_torch_func": baseline.get("speedup_of_fastadapt") if baseline else None,
    }


def _ratio_phrase(ratio: float) -> str:
    return f"{ratio:.1f}x faster than" if ratio >= 1 else f"{1 / ratio:.1f}x slower than"


def _table(rows: list[dict[str, Any]], summary: dict[str, Any], rounds: int) -> str:
    lines = [
        "| implementation | library version | median ms | p10 ms | p90 ms "
        f"| fastadapt speed-up | range over {rounds} rounds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] != "ok":
            reason = f"{row['status']}: {row['error']}".replace("|", "\\|")
            lines.append(f"| {row['impl']} | {row.get('version', '-')} | {reason} | | | | |")
            continue
        flag = "" if math.isfinite(row["final_loss"]) else " (non-finite loss!)"
        speedup, spread = "-", "-"
        if "speedup_of_fastadapt" in row:
            speedup = f"{row['speedup_of_fastadapt']:.2f}x"
            spread = "{:.2f}-{:.2f}x".format(*row["speedup_range"])
        lines.append(
            f"| {row['impl']}{flag} | {row['version']} | {row['median_ms']:.2f} "
            f"| {row['p10_ms']:.2f} | {row['p90_ms']:.2f} | {speedup} | {spread} |"
        )
    lines.append("")
    fastest, ratio = summary["fastest_peer"], summary["speedup_vs_fastest_peer"]
    if ratio is not None:
        lines.append(f"fastadapt is {_ratio_phrase(ratio)} the fastest peer ({fastest})")
    else:
        lines.append("no comparison with the fastest peer: fastadapt or every peer failed")
    if summary["speedup_vs_torch_func"] is not None:
        phrase = _ratio_phrase(summary["speedup_vs_torch_func"])
        lines.append(f"fastadapt is {phrase} the plain {BASELINE} baseline")
    lines.append(_agreement(rows))
    return "\n".join(lines)


def _agreement(rows: list[dict[str, Any]]) -> str:
    """Same data and initial weights: the first meta-loss should agree everywhere, and the final
    one (after every iteration) only if every meta-gradient agrees, i.e. is second order."""
    same = [row for row in rows if row["status"] == "ok" and row["shared_data"]]
    if len(same) < 2:
        return "loss check: fewer than two implementations ran on the shared data"
    spread = {}
    for key in ("first_loss", "final_loss"):
        values = [row[key] for row in same]
        spread[key] = (max(values) - min(values)) / max(abs(min(values)), 1e-12)
    return (
        f"loss check over {len(same)} implementations on the same data: relative spread "
        f"{spread['first_loss']:.1e} in the first meta-loss, {spread['final_loss']:.1e} in the "
        f"final one ({same[0]['final_loss']:.4f})"
    )


def _machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": threads,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "load_average_at_start": _load_average(),
    }


def _load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages: other work on the machine inflates the timings."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(payload, indent=2) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _orchestrate(args: argparse.Namespace) -> None:
    machine = _machine_info(args.threads)
    rows, workers = _start_workers(args)
    try:
        times = _run_rounds(args, rows, workers)
    finally:
        for worker in workers.values():
            worker.close()
    machine["load_average_at_end"] = _load_average()
    summary = _summarise(rows, times)
    print(_table(list(rows.values()), summary, args.rounds))
    workload = {
        "model": "MLP 1-40-40-1, ReLU",
        "tasks_per_batch": TASKS,
        "support": SHOTS,
        "query": QUERIES,
        "inner_steps": 1,
        "inner_lr": INNER_LR,
        "outer_optimizer": f"Adam lr={OUTER_LR} (fused for fastadapt)",
        "meta_gradient": "second order",
        "dtype": "float32",
    }
    measurement = {
        **{key: vars(args)[key] for key in ("warmup", "rounds", "iters_per_round", "seed")},
        "speedup": "median over rounds of (row's round median / fastadapt's round median)",
    }
    payload = {"machine": machine, "workload": workload, "measurement": measurement}
    _write_json_atomically(args.out, {**payload, "summary": summary, "rows": list(rows.values())})
    print(f"\nwrote {args.out}", file=sys.stderr)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    add("--peers-python", default=DEFAULT_PEERS_PYTHON, help="interpreter of the peers' venv")
    add("--impl", choices=list(_IMPLS), help="run only this one, in-process (debugging)")
    add("--worker", choices=list(_IMPLS), help=argparse.SUPPRESS)
    add("--warmup", type=int, default=20, help="warm-up iterations per worker (default 20)")
    add("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    add("--iters-per-round", type=int, default=10, help="timed iterations per round (default 10)")
    add("--seed", type=int, default=0, help="seed of the visiting order of each round")
    add("--shims-dir", default=DEFAULT_SHIMS_DIR, help="folder of the peers' import shims")
    add("--timeout", type=float, default=600, help="seconds allowed per worker answer")
    add("--out", type=Path, default=RESULTS_PATH, help="results JSON (default %(default)s)")
    args = parser.parse_args(argv)
    if min(args.threads, args.warmup, args.rounds, args.iters_per_round) < 1:
        parser.error("--threads, --warmup, --rounds and --iters-per-round must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.worker is None and args.impl is None:
        _orchestrate(args)
        return
    protocol = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON answers only
        if args.worker is not None:
            _serve(args, protocol)
        else:
            print(json.dumps(_run_in_process(args)), file=protocol)


if __name__ == "__main__":
    main()
