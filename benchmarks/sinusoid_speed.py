"""Wall time of one sinusoid MAML meta-iteration on CPU: fastadapt against peer libraries.

Workload (identical for every implementation): an MLP 1-40-40-1 with ReLU (``nn.Linear``
layers, the same initial weights everywhere), sinusoid regression tasks (amplitude U[0.1, 5],
phase U[0, pi], x U[-5, 5]) with K=10 support and 10 query points, a meta-batch of 25 tasks,
one inner SGD step (lr 0.01) on the MSE, the second-order meta-gradient (``create_graph=True``)
and an outer Adam step (lr 1e-3), in float32. One meta-iteration is the inner loop for all 25
tasks, the query loss, ``backward()`` and ``optimizer.step()``. The task data are generated once
(same seed, same tensors ``[25, 10, 1]`` for everyone), so the timing is the meta-update
itself; the ``fastadapt+sampling`` row also samples a fresh task batch inside each iteration.

Each implementation runs in a fresh subprocess: 20 warm-up iterations, then 100 iterations
timed one by one with ``time.perf_counter``; the table reports the median and the 10th/90th
percentiles in milliseconds. Implementations:

- ``fastadapt``, ``fastadapt+sampling``: this project (``fastadapt.algorithms.maml.MAML``).
- ``torch.func``: a straightforward baseline, ``vmap`` over tasks of ``grad`` + ``functional_call``.
- ``torchmeta``, ``learn2learn``, ``higher``, ``torchopt``: peer libraries, a loop over tasks
  written the way each library documents MAML.

fastadapt and torch.func run with the interpreter that launches this script (the project's
venv); the peers run with the interpreter given by ``--peers-python``, the venv built by
``shared/peers/setup_venv.sh`` (see ``shared/peers/README.md``). A peer that fails to import is
reported as "not importable" rather than stopping the benchmark.

Run from the project root with the project's venv:

    python benchmarks/sinusoid_speed.py [--threads 2] [--peers-python PATH]
    python benchmarks/sinusoid_speed.py --impl torchmeta    # one implementation, JSON on stdout

(``--impl fastadapt`` needs the package importable: installed, or ``PYTHONPATH=src``; the
orchestrator sets that for its subprocesses.) The machine is shared: each row records
``other_load``, the CPU cores other processes kept busy while it was timed, and the table flags
rows where that exceeds 0.1 core.

The table is printed and the results (with machine information) are written to
``benchmarks/results/sinusoid_speed.json``.
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
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
_BUSY_CORES = 0.1  # rows timed while other processes used more CPU than this are flagged

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
    return torch.optim.Adam(params, lr=OUTER_LR)


def _dist_version(dist: str, module: Any = None) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "unknown"))


# ---------------------------------------------------------------------------------------------
# Implementations: each has an import function (returns the library version; any exception means
# "not importable") and a build function (returns the meta-iteration and an optional note).
# ---------------------------------------------------------------------------------------------


def _import_fastadapt(_shims_dir: str) -> str:
    import fastadapt

    return _dist_version("fastadapt", fastadapt)


def _build_fastadapt(data: _TaskData, *, sampling: bool) -> tuple[_Step, str]:
    from fastadapt.algorithms.maml import MAML
    from fastadapt.nn.mlp import MLP
    from fastadapt.tasks.sinusoid import SinusoidTasks
    from fastadapt.tasks.task import TaskBatch

    model = MLP(1, [HIDDEN, HIDDEN], 1)
    model.load_state_dict(_initial_weights())
    learner = MAML(model, problem="regression", inner_steps=1, inner_lr=INNER_LR)
    optimizer = _adam(learner.parameters())
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

    return step, f"batch_mode={learner.batch_mode}"


def _import_torch(_shims_dir: str) -> str:
    import torch.func

    return torch.__version__


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


def _import_torchmeta(shims_dir: str) -> str:
    _prepare_shims(shims_dir, "torchmeta")
    import torchmeta

    return _dist_version("torchmeta", torchmeta)


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


def _import_learn2learn(shims_dir: str) -> str:
    _prepare_shims(shims_dir, "l2l")
    import learn2learn

    return _dist_version("learn2learn", learn2learn)


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


def _import_higher(_shims_dir: str) -> str:
    import higher

    return _dist_version("higher", higher)


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


def _import_torchopt(_shims_dir: str) -> str:
    import torchopt

    return _dist_version("torchopt", torchopt)


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


def _prepare_shims(shims_dir: str, name: str) -> None:
    """The import workarounds of shared/peers (torchvision on CPU torch, torchmeta helpers)."""
    if shims_dir not in sys.path:
        sys.path.insert(0, shims_dir)
    import shims

    shims.prepare(name)


@dataclass(frozen=True)
class _Impl:
    import_library: Callable[[str], str]
    build: Callable[[_TaskData], tuple[_Step, str]]
    peer: bool  # runs with the peers' interpreter
    shared_data: bool = True  # times the pre-generated batch


_IMPLS: dict[str, _Impl] = {
    OURS: _Impl(_import_fastadapt, lambda d: _build_fastadapt(d, sampling=False), peer=False),
    f"{OURS}+sampling": _Impl(
        _import_fastadapt,
        lambda d: _build_fastadapt(d, sampling=True),
        peer=False,
        shared_data=False,
    ),
    BASELINE: _Impl(_import_torch, _build_torch_func, peer=False),
    "torchmeta": _Impl(_import_torchmeta, _build_torchmeta, peer=True),
    "learn2learn": _Impl(_import_learn2learn, _build_learn2learn, peer=True),
    "higher": _Impl(_import_higher, _build_higher, peer=True),
    "torchopt": _Impl(_import_torchopt, _build_torchopt, peer=True),
}


# ---------------------------------------------------------------------------------------------
# One implementation, in this process
# ---------------------------------------------------------------------------------------------


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (``numpy.percentile``'s default) of sorted values."""
    position = q / 100 * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _run_one(name: str, threads: int, warmup: int, iters: int, shims_dir: str) -> dict[str, Any]:
    """Import, build and time one implementation; never raises (failures become the row)."""
    torch.set_num_threads(threads)
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
        row["version"] = impl.import_library(shims_dir)
    except Exception as exc:
        return {**row, "status": "not importable", "error": _first_line(exc)}
    try:
        step, note = impl.build(_make_tasks())
        first_loss = step().item()
        for _ in range(warmup - 1):
            step()
        gc.collect()
        times = []
        before = _cpu_snapshot()
        for _ in range(iters):
            start = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - start)
        other_load = _other_load(before, _cpu_snapshot())
    except Exception as exc:
        return {**row, "status": "failed", "error": _first_line(exc)}
    ms = sorted(1e3 * t for t in times)
    final_loss = loss.item()
    return {
        **row,
        "status": "ok",
        "note": note,
        "warmup": warmup,
        "iterations": iters,
        "median_ms": statistics.median(ms),
        "p10_ms": _percentile(ms, 10),
        "p90_ms": _percentile(ms, 90),
        "first_loss": first_loss,
        "final_loss": final_loss,
        "final_loss_finite": math.isfinite(final_loss),
        "other_load": other_load,
    }


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """Wall time, CPU seconds used by the whole machine, and by this process (Linux only)."""
    try:
        ticks = [int(v) for v in Path("/proc/stat").read_text().split(maxsplit=9)[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    return time.perf_counter(), busy, time.process_time()


def _other_load(
    before: tuple[float, float, float] | None, after: tuple[float, float, float] | None
) -> float | None:
    """CPU cores kept busy by other processes between two snapshots: they inflate timings."""
    if before is None or after is None:
        return None
    machine, own = after[1] - before[1], after[2] - before[2]
    return round(max(0.0, machine - own) / (after[0] - before[0]), 3)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# Orchestrator: every implementation in its own subprocess
# ---------------------------------------------------------------------------------------------


def _run_subprocess(name: str, python: str, args: argparse.Namespace) -> dict[str, Any]:
    if not Path(python).exists():
        error = f"interpreter not found: {python}"
        return {"impl": name, "python": python, "status": "not importable", "error": error}
    env = dict(os.environ)
    src = str(PROJECT_ROOT / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    command = [python, __file__, "--impl", name, "--threads", str(args.threads)]
    command += ["--warmup", str(args.warmup), "--iters", str(args.iters)]
    command += ["--shims-dir", args.shims_dir]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        error = f"timed out after {args.timeout} s"
        return {"impl": name, "python": python, "status": "failed", "error": error}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return json.loads(lines[-1])
    stderr = [line for line in done.stderr.strip().splitlines() if line.strip()]
    error = stderr[-1] if stderr else f"exit status {done.returncode}"
    return {"impl": name, "python": python, "status": "failed", "error": error}


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


def _speedups(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """fastadapt's speed-up against every row, and the fastest peer library."""
    ok = {row["impl"]: row for row in rows if row["status"] == "ok"}
    ours = ok.get(OURS)
    for row in rows:
        timed = ours is not None and row["impl"] in ok
        row["speedup_of_fastadapt"] = row["median_ms"] / ours["median_ms"] if timed else None
    peers = [ok[name] for name in PEERS if name in ok]
    fastest = min(peers, key=lambda row: row["median_ms"]) if peers else None
    baseline = ok.get(BASELINE)
    return {
        "fastest_peer": fastest["impl"] if fastest else None,
        "speedup_vs_fastest_peer": fastest["speedup_of_fastadapt"] if fastest else None,
        "speedup_vs_torch_func": baseline["speedup_of_fastadapt"] if baseline else None,
    }


def _ratio_phrase(ratio: float) -> str:
    return f"{ratio:.1f}x faster than" if ratio >= 1 else f"{1 / ratio:.1f}x slower than"


def _table(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    lines = [
        "| implementation | library version | median ms | p10 ms | p90 ms | fastadapt speed-up |",
        "|---|---|---:|---:|---:|---:|",
    ]
    busy = False
    for row in rows:
        if row["status"] != "ok":
            reason = f"{row['status']}: {row['error']}".replace("|", "\\|")
            lines.append(f"| {row['impl']} | {row.get('version', '-')} | {reason} | | | |")
            continue
        speedup = row["speedup_of_fastadapt"]
        flag = "" if row["final_loss_finite"] else " (non-finite loss!)"
        if (row.get("other_load") or 0.0) > _BUSY_CORES:
            flag += " (*)"
            busy = True
        lines.append(
            f"| {row['impl']}{flag} | {row['version']} | {row['median_ms']:.2f} "
            f"| {row['p10_ms']:.2f} | {row['p90_ms']:.2f} "
            f"| {'-' if speedup is None else f'{speedup:.1f}x'} |"
        )
    lines.append("")
    if busy:
        lines.append(
            f"(*) other processes kept more than {_BUSY_CORES} core busy during this row's "
            "timing (see other_load in the JSON); its times are inflated."
        )
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
    rows = []
    for name, impl in _IMPLS.items():
        python = args.peers_python if impl.peer else sys.executable
        print(f"running {name} ...", end=" ", file=sys.stderr, flush=True)
        row = _run_subprocess(name, python, args)
        done = f"{row['median_ms']:.2f} ms" if row["status"] == "ok" else row["status"]
        print(done, file=sys.stderr, flush=True)
        rows.append(row)
    machine["load_average_at_end"] = _load_average()
    summary = _speedups(rows)
    print(_table(rows, summary))
    workload = {
        "model": "MLP 1-40-40-1, ReLU",
        "tasks_per_batch": TASKS,
        "support": SHOTS,
        "query": QUERIES,
        "inner_steps": 1,
        "inner_lr": INNER_LR,
        "outer_optimizer": f"Adam lr={OUTER_LR}",
        "meta_gradient": "second order",
        "dtype": "float32",
        "warmup": args.warmup,
        "iterations": args.iters,
    }
    payload = {"machine": machine, "workload": workload, "summary": summary, "rows": rows}
    _write_json_atomically(RESULTS_PATH, payload)
    print(f"\nwrote {RESULTS_PATH.relative_to(PROJECT_ROOT)}", file=sys.stderr)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument(
        "--peers-python",
        default=DEFAULT_PEERS_PYTHON,
        help=f"interpreter of the peers' venv (default {DEFAULT_PEERS_PYTHON})",
    )
    parser.add_argument("--impl", choices=list(_IMPLS), help="run only this one, in-process")
    parser.add_argument("--warmup", type=int, default=20, help="warm-up iterations (default 20)")
    parser.add_argument("--iters", type=int, default=100, help="timed iterations (default 100)")
    parser.add_argument(
        "--shims-dir", default=DEFAULT_SHIMS_DIR, help="folder of the peers' import shims"
    )
    parser.add_argument(
        "--timeout", type=float, default=900, help="seconds allowed per implementation"
    )
    args = parser.parse_args(argv)
    if args.threads < 1 or args.warmup < 1 or args.iters < 1:
        parser.error("--threads, --warmup and --iters must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    if args.impl is None:
        _orchestrate(args)
        return
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON row only
        row = _run_one(args.impl, args.threads, args.warmup, args.iters, args.shims_dir)
    stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
