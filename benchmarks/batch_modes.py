"""Which task-batching mode is faster, per workload: ``vmap`` or a loop over tasks.

Times one second-order MAML meta-iteration (inner loop, query loss, backward, fused Adam step)
in each batching mode of :mod:`fastadapt.nn.batching` (``auto`` picks one per call), on three
workloads:

- ``sinusoid-mlp``: MLP 1-40-40-1, K=10 support and 10 query points, meta-batch 25, 1 step;
- ``omniglot-conv4``: Conv-4 (64 filters, BatchNorm with batch statistics) on 28x28 images,
  5-way 1-shot with 15 queries per class, meta-batch 8, 1 step (random pixels: the cost does
  not depend on the data);
- ``omniglot-conv4-1query``: the training shape of the ``maml-omniglot-5way-1shot`` preset:
  Conv-4 with stride-2 convolutions, 5-way 1-shot with 1 query per class, meta-batch 32.

Each (workload, mode) runs in a fresh subprocess so that its peak resident memory
(``VmHWM``, :mod:`_memory`) is its own; modes alternate in rounds so drifts in machine load
hit both.

    python benchmarks/batch_modes.py [--rounds 3] [--iters 5] [--threads 2]

Prints a table and writes ``benchmarks/results/batch_modes.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from _memory import peak_rss_mib

from fastadapt import MAML, MLP
from fastadapt.nn.batching import resolve_batch_mode
from fastadapt.nn.conv4 import Conv4
from fastadapt.tasks.task import TaskBatch

WORKLOADS = ("sinusoid-mlp", "omniglot-conv4", "omniglot-conv4-1query")
MODES = ("vmap", "loop", "auto")


def _workload(name: str) -> tuple[MAML, TaskBatch]:
    g = torch.Generator().manual_seed(0)
    if name == "sinusoid-mlp":
        x = torch.rand(25, 20, 1, generator=g) * 10 - 5
        y = torch.sin(x)
        batch = TaskBatch(x[:, :10], y[:, :10], x[:, 10:], y[:, 10:])
        return MAML(MLP(1, [40, 40], 1), inner_lr=0.01), batch
    tasks, queries, downsample = (32, 1, "stride") if name.endswith("1query") else (8, 15, "pool")
    images = torch.rand(tasks, 5 * (1 + queries), 1, 28, 28, generator=g)
    labels = torch.arange(5).repeat(1 + queries).expand(tasks, -1)
    batch = TaskBatch(images[:, :5], labels[:, :5], images[:, 5:], labels[:, 5:])
    model = Conv4(ways=5, downsample=downsample)
    return MAML(model, problem="classification", inner_lr=0.4), batch


def _auto_picks(name: str) -> str:
    """What ``auto`` chooses for the support and for the query pass of ``name``."""
    learner, batch = _workload(name)
    support = resolve_batch_mode(learner.model, "auto", batch.support_x)
    query = resolve_batch_mode(learner.model, "auto", batch.query_x)
    return support if support == query else f"support {support}, query {query}"


def _worker(name: str, mode: str, iters: int, warmup: int) -> None:
    learner, batch = _workload(name)
    learner.batch_mode = mode
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3, fused=True)
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        loss = learner.meta_loss(batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak_mib = peak_rss_mib()
    print(json.dumps({"times": times, "peak_mib": peak_mib}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "MODE"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        _worker(*args.worker, iters=args.iters, warmup=2)
        return

    from _report import machine, write_json

    samples: dict[tuple[str, str], dict[str, list[float]]] = {}
    for _ in range(args.rounds):
        for workload in WORKLOADS:
            for mode in MODES:
                out = subprocess.run(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "--worker",
                        workload,
                        mode,
                        "--iters",
                        str(args.iters),
                        "--threads",
                        str(args.threads),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                entry = samples.setdefault((workload, mode), {"times": [], "peak_mib": []})
                entry["times"] += result["times"]
                entry["peak_mib"].append(result["peak_mib"])
    rows = []
    print("| workload | mode | median ms / meta-iteration | peak RSS MiB | auto picks |")
    print("|---|---|---:|---:|---|")
    for (workload, mode), entry in samples.items():
        row = {
            "workload": workload,
            "mode": mode,
            "median_ms": 1e3 * statistics.median(entry["times"]),
            "peak_mib": max(entry["peak_mib"]),
            "auto": _auto_picks(workload),
        }
        rows.append(row)
        print(
            f"| {workload} | {mode} | {row['median_ms']:.1f} | {row['peak_mib']:.0f} | "
            f"{row['auto']} |"
        )
    path = write_json(
        "batch_modes.json", {"benchmark": "batch_modes", "rows": rows, "machine": machine()}
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
