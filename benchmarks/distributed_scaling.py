"""Throughput of distributed meta-training: steps per second with 1 and 2 processes.

Workload: the presets ``protonet-omniglot-1shot`` (60-way 1-shot, 5 queries; its meta-batch of
one episode raised to 2 so that two processes can share it) and ``maml-omniglot-5way-1shot``
(second order, meta-batch 32), trained by ``torchrun --standalone -m fastadapt train`` with
one thread per process (``--cores C``: the C threads shared out, ``C // N`` to each of N
processes, so that every process count uses the same cores), on the real Omniglot archives in
the default dataset folder (``--fake-data``: random images of Omniglot's shape and class
counts, for a machine without the archives; see ``benchmarks/_fake_omniglot.py``). The
meta-batch is the same for every process count, so each step does the same work and the model
is the same; with N processes each computes 1/N of the tasks.

Measurement: each configuration is trained twice, for ``--short`` and ``--long`` steps, and
the throughput is ``(long - short) / (t_long - t_short)`` with ``t`` the run's training time as
``results.json`` records it (``train_seconds_this_session``): start-up, the first steps'
warm-up, the final validation and checkpoint writing cancel out. Scaling efficiency is
``throughput(N) / throughput(1)`` divided by the ratio of the threads the two use (N with one
thread per process; 1 with ``--cores``, where the question is which split of the same cores
trains faster).

On a machine shared with other work, N processes may not get N cores, and the wall-clock
figures then measure the contention. The CPU time that the whole job (torchrun and its workers)
spends per step, measured the same way from the children's resource usage, does not depend on
it: ``cpu_per_step(1) / cpu_per_step(N)`` is the share of the work that remains useful when it
is split (100%: splitting cost nothing), the scaling efficiency the job would reach with a
core per process.

    python benchmarks/distributed_scaling.py [--short 10] [--long 40] [--nproc 1 2]
    python benchmarks/distributed_scaling.py --cores 2 --preset maml-omniglot-5way-1shot \
        --name cores2   # 1 process x 2 threads against 2 processes x 1 thread
    python benchmarks/distributed_scaling.py --device cuda --nproc 1   # one GPU: NCCL
    python benchmarks/distributed_scaling.py --fake-data --name gpu-host-cpu

Prints a markdown table and writes ``benchmarks/results/distributed_scaling.json`` (or
``distributed_scaling_NAME.json`` with ``--name NAME``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _report import machine, write_json

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FAKE_DATA = Path(__file__).resolve().parent / "_fake_omniglot.py"
WORKLOADS = {
    "protonet-omniglot-1shot": ["train.meta_batch=2"],
    "maml-omniglot-5way-1shot": [],
}
COMMON = [
    "train.val_tasks=10",
    "eval.tasks=10",
    "eval.batch=10",
]


def _train_seconds(
    preset: str,
    nproc: int,
    threads: int,
    steps: int,
    device: str,
    folder: Path,
    fake_data: bool,
) -> tuple[float, float]:
    """Training time of a ``steps``-step run of ``preset`` in ``nproc`` processes of
    ``threads`` threads each, and the CPU time of the whole job (start-up included)."""
    out = folder / f"{preset}-{nproc}-{steps}"
    settings = [
        f"train.threads={threads}",
        *COMMON,
        *WORKLOADS[preset],
        f"train.device={device}",
        f"train.steps={steps}",
        f"train.val_every={steps}",
        f"train.checkpoint_every={steps}",
        f"train.log_every={steps}",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--standalone",
        *([str(FAKE_DATA)] if fake_data else ["-m", "fastadapt"]),
        "train",
        preset,
        *[arg for s in settings for arg in ("--set", s)],
        "--out",
        str(out),
        "--no-progress",
    ]
    source = str(PROJECT_ROOT / "src")
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}
    before = _children_cpu_seconds()
    subprocess.run(command, env=env, check=True, capture_output=True)
    cpu = _children_cpu_seconds() - before
    record = json.loads((out / "results.json").read_text())["evaluations"][0]
    return float(record["train_seconds_this_session"]), cpu


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _threads_per_process(nproc: int, cores: int | None) -> int:
    if cores is None:
        return 1
    if cores % nproc:
        raise ValueError(f"--cores {cores} does not share out evenly over {nproc} processes.")
    return cores // nproc


def measure(
    short: int,
    long: int,
    nprocs: list[int],
    device: str,
    fake_data: bool,
    presets: list[str],
    cores: int | None = None,
) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for preset in presets:
            base = base_cpu = None
            for nproc in nprocs:
                threads = _threads_per_process(nproc, cores)
                runs = {
                    steps: _train_seconds(
                        preset, nproc, threads, steps, device, Path(folder), fake_data
                    )
                    for steps in (short, long)
                }
                rate = (long - short) / (runs[long][0] - runs[short][0])
                cpu = (runs[long][1] - runs[short][1]) / (long - short)
                if nproc == 1:
                    base, base_cpu = rate, cpu
                thread_ratio = nproc * threads / _threads_per_process(1, cores)
                rows.append(
                    {
                        "preset": preset,
                        "overrides": WORKLOADS[preset],
                        "processes": nproc,
                        "threads_per_process": threads,
                        "steps_per_second": rate,
                        "speedup": None if base is None else rate / base,
                        "scaling_efficiency": None if base is None else rate / base / thread_ratio,
                        "cpu_seconds_per_step": cpu,
                        "cpu_efficiency": None if base_cpu is None else base_cpu / cpu,
                        "train_seconds": {str(k): v[0] for k, v in runs.items()},
                        "job_cpu_seconds": {str(k): v[1] for k, v in runs.items()},
                    }
                )
                print(f"  {preset}, {nproc} process(es): {rate:.3f} steps/s", flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | processes | threads each | steps/s | speed-up | scaling efficiency "
        "| CPU s/step | CPU efficiency |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        efficiency, useful = row["scaling_efficiency"], row["cpu_efficiency"]
        speedup = "" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        shown = "" if efficiency is None else f"{efficiency:.0%}"
        lines.append(
            f"| {row['preset']} | {row['processes']} | {row['threads_per_process']} "
            f"| {row['steps_per_second']:.3f} "
            f"| {speedup} | {shown} | {row['cpu_seconds_per_step']:.3f} "
            f"| {'' if useful is None else f'{useful:.0%}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=int, default=10)
    parser.add_argument("--long", type=int, default=40)
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fake-data", action="store_true")
    parser.add_argument("--name", help="results file distributed_scaling_NAME.json")
    parser.add_argument(
        "--cores",
        type=int,
        help="share this many threads out over each configuration's processes "
        "(default: one thread per process)",
    )
    parser.add_argument("--preset", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    args = parser.parse_args()
    for nproc in args.nproc:
        _threads_per_process(nproc, args.cores)
    before = os.getloadavg()
    rows = measure(
        args.short, args.long, args.nproc, args.device, args.fake_data, args.preset, args.cores
    )
    facts = {
        **machine(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": before,
        "load_average_at_end": os.getloadavg(),
    }
    print(table(rows))
    name = f"distributed_scaling{'_' + args.name if args.name else ''}.json"
    payload = {
        "machine": facts,
        "workload": {
            "launcher": "torchrun --standalone -m fastadapt train PRESET",
            "settings": COMMON,
            "cores": args.cores,
            "threads_per_process": "cores / processes" if args.cores else 1,
            "device": args.device,
            "data": "random images of Omniglot's shape" if args.fake_data else "Omniglot",
            "steps": [args.short, args.long],
        },
        "rows": rows,
    }
    print(f"wrote {write_json(name, payload)}")


if __name__ == "__main__":
    main()
