"""Interleaved wall-time comparison of implementations, each in its own worker subprocess.

The machinery shared by the speed benchmarks (``sinusoid_speed.py``, ``protonet_speed.py``).
Each implementation runs in a long-lived worker subprocess that builds its step, runs
``--warmup`` steps, then waits on stdin; ``run N`` times N steps one by one
(``time.perf_counter``) and answers the times as one JSON line. In each of ``--rounds`` rounds
the orchestrator visits the workers in a fresh random order (``--seed``) and asks each for
``--iters-per-round`` steps, one worker at a time. The machine is shared and its speed drifts
by tens of percent over minutes: timed one after the other, a drift lands on some rows only;
interleaved, it spreads over all of them. The table gives each row's median and 10th/90th
percentiles (ms) over all its timed steps, and fastadapt's speed-up over it: the median over
rounds of (row's round median / fastadapt's round median), with its range. A benchmark that
gives the FLOPs of one step of its workload (``Benchmark.flops``) also gets each row's achieved
GFLOP/s, beside this CPU's float32 matrix-product rate measured before the workers start.

fastadapt's rows run with the interpreter that launches the script (the project's venv, with
``src/`` on ``PYTHONPATH``); the peers run with ``--peers-python``, the venv built by
``shared/peers/setup_venv.sh``. A peer that fails to import is reported as "not importable"
rather than stopping the benchmark; a worker that fails later is reported as "failed". Every
worker runs with the same fixed glibc allocator settings (:func:`_allocator_env`).
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
from _memory import peak_rss_mib

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEERS_PYTHON = os.path.normpath(PROJECT_ROOT.parent / "peers-venv" / "bin" / "python")
DEFAULT_SHIMS_DIR = os.path.normpath(PROJECT_ROOT.parent / "shared" / "peers")
OURS = "fastadapt"


def _allocator_env() -> dict[str, str]:
    """glibc's allocator settings for every worker, the ones fastadapt's training applies
    (:mod:`fastadapt.engine.host_memory`; imported here, in the orchestrator, because the
    peers' workers run in a venv without fastadapt). By default glibc serves large blocks with
    ``mmap`` below a threshold it raises as blocks are freed, so whether a step's activations
    page-fault afresh on every step depends on each process's allocation history: identical
    code then differs by up to 1.5x between two processes. Fixed settings give every row, the
    peers' included, the same, steady allocator."""
    from fastadapt.engine.host_memory import MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES

    return {
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES),
        "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES),
    }


Step = Callable[[], torch.Tensor]
"""One timed step; returns the (detached) loss."""


@dataclass(frozen=True)
class Impl:
    module: str  # imported first: an exception means "not importable"
    build: Callable[[], tuple[Step, str]]  # the timed step and a note
    peer: bool  # runs with the peers' interpreter
    shim: str | None = None  # the workaround of shared/peers/shims.py to apply before importing
    shared_data: bool = True  # times the pre-generated batch


def _import_library(impl: Impl, shims_dir: str) -> str:
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


@dataclass(frozen=True)
class Benchmark:
    """One speed benchmark: its implementations, which of them are peers, and its workload."""

    script: str  # the benchmark's file, run again as each worker
    description: str
    impls: dict[str, Impl]
    peers: tuple[str, ...]
    baseline: str | None  # a plain-PyTorch row fastadapt is also compared with
    workload: dict[str, Any]
    results: Path
    warmup: int = 20
    rounds: int = 30
    iters_per_round: int = 10
    worker_args: tuple[str, ...] = ()  # the script's own options, passed on to every worker
    flops: Callable[[], float] | None = None  # FLOPs of one step of the workload


# ---------------------------------------------------------------------------------------------
# One implementation, in this process: a worker (driven over stdin) or ``--impl`` (debugging)
# ---------------------------------------------------------------------------------------------


def _prepare(
    bench: Benchmark, name: str, args: argparse.Namespace
) -> tuple[Step | None, dict[str, Any]]:
    """Import, build and warm up one implementation: its step (None on failure) and its row."""
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    impl = bench.impls[name]
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
        step, row["note"] = impl.build()
        row["first_loss"] = step().item()
        for _ in range(args.warmup - 1):
            step()
    except Exception as exc:
        return None, {**row, "status": "failed", "error": _first_line(exc)}
    gc.collect()
    return step, {**row, "status": "ok", "warmup": args.warmup}


def _time(step: Step, iters: int) -> tuple[list[float], torch.Tensor]:
    """Seconds taken by each of ``iters`` steps, and the last loss."""
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return times, loss


def _serve(bench: Benchmark, args: argparse.Namespace, protocol: IO[str]) -> None:
    """Worker: answer the row once warmed up, then ``run N`` with N times and ``quit`` with the
    final loss, one JSON line each on ``protocol``."""
    step, row = _prepare(bench, args.worker, args)
    print(json.dumps(row), file=protocol, flush=True)
    loss = torch.tensor(math.nan)
    for line in sys.stdin if step is not None else ():
        if line.strip() == "quit":
            answer = {"final_loss": loss.item(), "peak_rss_mib": peak_rss_mib()}
            print(json.dumps(answer), file=protocol, flush=True)
            return
        step()  # untimed: the first step after an idle wait runs ~1.5x slower
        times, loss = _time(step, int(line.split()[1]))
        print(json.dumps(times), file=protocol, flush=True)


def _run_in_process(bench: Benchmark, args: argparse.Namespace) -> dict[str, Any]:
    """``--impl``: the same measurement as one round, without subprocesses (debugging)."""
    step, row = _prepare(bench, args.impl, args)
    if step is not None:
        times, loss = _time(step, args.rounds * args.iters_per_round)
        row["final_loss"] = loss.item()
        _summarise(bench, {args.impl: row}, {args.impl: [[1e3 * t for t in times]]})
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

    def __init__(self, bench: Benchmark, name: str, python: str, args: argparse.Namespace) -> None:
        env = {**os.environ, **_allocator_env()}
        src = str(PROJECT_ROOT / "src")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
        command = [python, bench.script, *bench.worker_args, "--worker", name]
        command += ["--threads", str(args.threads)]
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


def _start_workers(
    bench: Benchmark, args: argparse.Namespace
) -> tuple[dict[str, dict], dict[str, _Worker]]:
    """Start the workers one after the other (warm-ups never overlap): every row, and the
    workers that are ready."""
    rows: dict[str, dict[str, Any]] = {}
    workers: dict[str, _Worker] = {}
    for name, impl in bench.impls.items():
        python = args.peers_python if impl.peer else sys.executable
        print(f"starting {name} ...", end=" ", file=sys.stderr, flush=True)
        error = f"interpreter not found: {python}"
        rows[name] = {"impl": name, "python": python, "status": "not importable", "error": error}
        if Path(python).exists():
            workers[name] = _Worker(bench, name, python, args)
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


def _summarise(
    bench: Benchmark, rows: dict[str, dict], times: dict[str, list[list[float]]]
) -> dict[str, Any]:
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
    peers = [ok[name] for name in bench.peers if name in ok]
    fastest = min(peers, key=lambda row: row["median_ms"]) if peers else None
    baseline = ok.get(bench.baseline) if bench.baseline else None
    return {
        "fastest_peer": fastest["impl"] if fastest else None,
        "speedup_vs_fastest_peer": fastest.get("speedup_of_fastadapt") if fastest else None,
        "baseline": bench.baseline,
        "speedup_vs_baseline": baseline.get("speedup_of_fastadapt") if baseline else None,
    }


def meta_learner_step(
    learner: torch.nn.Module, batch: Any, optimizer: torch.optim.Optimizer, precision: str
) -> Step:
    """One training step of a fastadapt meta-learner on ``batch``, as its trainer takes it:
    ``meta_loss`` under the autocast of ``precision`` ("float32" or "bfloat16"), ``backward()``
    and ``optimizer``'s step."""
    from fastadapt.nn.precision import training_autocast

    def step() -> torch.Tensor:
        optimizer.zero_grad()
        with training_autocast(torch.device("cpu"), precision):
            loss = learner.meta_loss(batch).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def counted_flops(build: Callable[[], tuple[Step, str]]) -> Callable[[], float]:
    """``Benchmark.flops`` from an implementation's builder: the convolution and
    matrix-product FLOPs of one of its steps, forward and backward passes
    (``torch.utils.flop_counter``)."""

    def flops() -> float:
        from torch.utils.flop_counter import FlopCounterMode

        step, _ = build()
        with FlopCounterMode(display=False) as counter:
            step()
        return float(counter.get_total_flops())

    return flops


def _work_rate(bench: Benchmark, threads: int) -> dict[str, float]:
    """The workload's GFLOP per step and this CPU's float32 matrix-product rate (GFLOP/s, best
    of five 2048x2048 products on ``threads`` threads); empty without ``bench.flops``."""
    if bench.flops is None:
        return {}
    torch.set_num_threads(threads)
    return {"gflop_per_step": bench.flops() / 1e9, "matmul_gflops": matmul_gflops()}


def matmul_gflops() -> float:
    """This CPU's float32 matrix-product rate on the current torch threads: GFLOP/s of the
    best of five 2048x2048 products, after one warm-up."""
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds) / 1e9


def _add_rates(rows: dict[str, dict], work: dict[str, float]) -> None:
    """Each timed row's achieved GFLOP/s on the workload's FLOPs."""
    for row in rows.values():
        if work and "median_ms" in row:
            row["gflops"] = work["gflop_per_step"] / (row["median_ms"] / 1e3)


def _ratio_phrase(ratio: float) -> str:
    return f"{ratio:.1f}x faster than" if ratio >= 1 else f"{1 / ratio:.1f}x slower than"


def _table(
    bench: Benchmark, rows: list[dict[str, Any]], summary: dict[str, Any], rounds: int
) -> str:
    rates = "gflop_per_step" in summary
    lines = [
        "| implementation | library version | median ms | p10 ms | p90 ms | peak MiB "
        f"| fastadapt speed-up | range over {rounds} rounds |" + (" GFLOP/s |" if rates else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if rates else ""),
    ]
    for row in rows:
        if row["status"] != "ok":
            reason = f"{row['status']}: {row['error']}".replace("|", "\\|")
            empty = " | | | | | |" + (" |" if rates else "")
            lines.append(f"| {row['impl']} | {row.get('version', '-')} | {reason}{empty}")
            continue
        flag = "" if math.isfinite(row["final_loss"]) else " (non-finite loss!)"
        speedup, spread = "-", "-"
        if "speedup_of_fastadapt" in row:
            speedup = f"{row['speedup_of_fastadapt']:.2f}x"
            spread = "{:.2f}-{:.2f}x".format(*row["speedup_range"])
        lines.append(
            f"| {row['impl']}{flag} | {row['version']} | {row['median_ms']:.2f} "
            f"| {row['p10_ms']:.2f} | {row['p90_ms']:.2f} | {row.get('peak_rss_mib', 0):.0f} "
            f"| {speedup} | {spread} |" + (f" {row['gflops']:.1f} |" if rates else "")
        )
    lines.append("")
    if rates:
        lines.append(
            f"one step: {summary['gflop_per_step']:.1f} GFLOP (convolutions and matrix products, "
            "torch.utils.flop_counter); this CPU's float32 matrix-product rate: "
            f"{summary['matmul_gflops']:.0f} GFLOP/s"
        )
    fastest, ratio = summary["fastest_peer"], summary["speedup_vs_fastest_peer"]
    if ratio is not None:
        lines.append(f"fastadapt is {_ratio_phrase(ratio)} the fastest peer ({fastest})")
    elif bench.peers:
        lines.append("no comparison with the fastest peer: fastadapt or every peer failed")
    if summary["speedup_vs_baseline"] is not None:
        phrase = _ratio_phrase(summary["speedup_vs_baseline"])
        lines.append(f"fastadapt is {phrase} the {bench.baseline} baseline")
    lines.append(_agreement(rows))
    return "\n".join(lines)


def _agreement(rows: list[dict[str, Any]]) -> str:
    """The first loss of the rows on the shared data (same data and initial weights) should
    agree everywhere; the final one only where the gradients agree."""
    same = [row for row in rows if row["status"] == "ok" and row["shared_data"]]
    if len(same) < 2:
        return "loss check: fewer than two implementations ran on the shared data"
    spread = {}
    for key in ("first_loss", "final_loss"):
        values = [row[key] for row in same]
        spread[key] = (max(values) - min(values)) / max(abs(min(values)), 1e-12)
    return (
        f"loss check over {len(same)} implementations on the same data: relative spread "
        f"{spread['first_loss']:.1e} in the first loss, {spread['final_loss']:.1e} in the "
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


def _orchestrate(bench: Benchmark, args: argparse.Namespace) -> None:
    machine = _machine_info(args.threads)
    work = _work_rate(bench, args.threads)  # before the workers start, on a quiet machine
    rows, workers = _start_workers(bench, args)
    try:
        times = _run_rounds(args, rows, workers)
    finally:
        for worker in workers.values():
            worker.close()
    machine["load_average_at_end"] = _load_average()
    summary = {**_summarise(bench, rows, times), **work}
    _add_rates(rows, work)
    print(_table(bench, list(rows.values()), summary, args.rounds))
    measurement = {
        **{key: vars(args)[key] for key in ("warmup", "rounds", "iters_per_round", "seed")},
        "speedup": "median over rounds of (row's round median / fastadapt's round median)",
    }
    payload = {"machine": machine, "workload": bench.workload, "measurement": measurement}
    _write_json_atomically(args.out, {**payload, "summary": summary, "rows": list(rows.values())})
    print(f"\nwrote {args.out}", file=sys.stderr)


def _parse_args(bench: Benchmark, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=bench.description)
    add = parser.add_argument
    add("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    add("--peers-python", default=DEFAULT_PEERS_PYTHON, help="interpreter of the peers' venv")
    add("--impl", choices=list(bench.impls), help="run only this one, in-process (debugging)")
    add("--worker", choices=list(bench.impls), help=argparse.SUPPRESS)
    add("--warmup", type=int, default=bench.warmup, help="warm-up steps per worker (%(default)s)")
    add("--rounds", type=int, default=bench.rounds, help="interleaved rounds (%(default)s)")
    add("--iters-per-round", type=int, default=bench.iters_per_round, help="timed steps per round")
    add("--seed", type=int, default=0, help="seed of the visiting order of each round")
    add("--shims-dir", default=DEFAULT_SHIMS_DIR, help="folder of the peers' import shims")
    add("--timeout", type=float, default=600, help="seconds allowed per worker answer")
    add("--out", type=Path, default=bench.results, help="results JSON (default %(default)s)")
    args = parser.parse_args(argv)
    if min(args.threads, args.warmup, args.rounds, args.iters_per_round) < 1:
        parser.error("--threads, --warmup, --rounds and --iters-per-round must be positive")
    return args


def main(bench: Benchmark, argv: Sequence[str] | None = None) -> None:
    """Orchestrate the benchmark, or (``--worker``/``--impl``) run one implementation."""
    args = _parse_args(bench, argv)
    if args.worker is None and args.impl is None:
        _orchestrate(bench, args)
        return
    protocol = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON answers only
        if args.worker is not None:
            _serve(bench, args, protocol)
        else:
            print(json.dumps(_run_in_process(bench, args)), file=protocol)
