"""Where a MAML meta-iteration's time goes on one device: wall time, and on CUDA the kernels.

For each Omniglot-shaped workload of the MAML presets (Conv-4 with stride-2 convolutions, the
preset's meta-batch, inner steps and α, random images), times one meta-iteration (forward,
backward, Adam step) as the median of 8 after 3 warm-ups. On CUDA it also profiles one
iteration with ``torch.profiler``: the number of kernels launched, their total device time and
the costliest kernels. Device time far below wall time means the step is bound by launching
kernels from Python, not by the GPU's arithmetic.

    python benchmarks/maml_step_profile.py [--device cuda] [--only 20w1s-so ...]

Prints a markdown table and writes ``benchmarks/results/maml_step_profile_<device>.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _report import machine, write_json

from fastadapt import MAML, Conv4
from fastadapt.tasks.task import TaskBatch

#: name: (ways, shots, queries, meta-batch, inner steps, α, first order, batch mode)
WORKLOADS: dict[str, tuple[int, int, int, int, int, float, bool, str]] = {
    "20w1s-so": (20, 1, 1, 16, 5, 0.1, False, "auto"),
    "20w1s-so-loop": (20, 1, 1, 16, 5, 0.1, False, "loop"),
    "20w5s-so": (20, 5, 1, 16, 5, 0.1, False, "auto"),
    "5w1s-so": (5, 1, 15, 32, 1, 0.4, False, "auto"),
    "20w1s-fo": (20, 1, 1, 16, 5, 0.1, True, "auto"),
}
WARMUP, TIMED = 3, 8


def _task_batch(ways: int, shots: int, queries: int, tasks: int, device: str) -> TaskBatch:
    labels = torch.arange(ways, device=device)

    def images(per_class: int) -> torch.Tensor:
        return torch.randn(tasks, ways * per_class, 1, 28, 28, device=device)

    def targets(per_class: int) -> torch.Tensor:
        return labels.repeat_interleave(per_class).expand(tasks, -1).contiguous()

    return TaskBatch(images(shots), targets(shots), images(queries), targets(queries))


def _profile(step: Any, sync: Any) -> dict[str, Any]:
    """Kernels launched by one CUDA meta-iteration, their device time and the costliest."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
        step()
        sync()
    kernels = [e for e in profiler.key_averages() if e.device_type.name == "CUDA"]
    kernels.sort(key=lambda e: -e.self_device_time_total)
    return {
        "cuda_kernels_per_step": sum(e.count for e in kernels),
        "cuda_time_ms": sum(e.self_device_time_total for e in kernels) / 1000,
        "top_kernels": [
            (e.key[:60], e.count, round(e.self_device_time_total / 1000, 2)) for e in kernels[:8]
        ],
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
    }


def measure(name: str, device: str) -> dict[str, Any]:
    ways, shots, queries, tasks, steps, alpha, first_order, mode = WORKLOADS[name]
    torch.manual_seed(0)
    model = Conv4(1, ways=ways, downsample="stride")
    learner = MAML(
        model,
        problem="classification",
        inner_steps=steps,
        inner_lr=alpha,
        first_order=first_order,
        batch_mode=mode,
    ).to(device)
    optimizer = torch.optim.Adam(learner.parameters(), 1e-3)
    batch = _task_batch(ways, shots, queries, tasks, device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        learner.meta_loss(batch).loss.backward()
        optimizer.step()

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(WARMUP):
        step()
    sync()
    times = []
    for _ in range(TIMED):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    row: dict[str, Any] = {"median_ms": 1000 * times[TIMED // 2], "min_ms": 1000 * times[0]}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        row.update(_profile(step, sync))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS), metavar="NAME")
    args = parser.parse_args()
    rows = {name: measure(name, args.device) for name in args.only or WORKLOADS}
    print("| workload | median ms | kernels per step | device ms |")
    print("|---|---:|---:|---:|")
    for name, row in rows.items():
        kernels, busy = row.get("cuda_kernels_per_step", "-"), row.get("cuda_time_ms")
        print(f"| {name} | {row['median_ms']:.1f} | {kernels} | {busy or '-'} |")
    path = write_json(
        f"maml_step_profile_{args.device}.json",
        {"machine": machine(), "workloads": WORKLOADS, "rows": rows},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
