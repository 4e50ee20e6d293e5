"""Where fastadapt's Conv-4 MAML meta-iteration spends its time on CPU, operator by operator.

The workload of ``maml_conv4_speed.py`` (Conv-4, 32 Omniglot-shaped 5-way 1-shot tasks with 15
queries per class, one inner step, second order; ``--first-order`` for first order), fastadapt's
step only. It times the plain step (median of 5 after 3 warm-ups), then runs 3 more steps under a
``TorchDispatchMode`` that times every ATen operator and counts its FLOPs
(convolutions from their shapes, matrix products with ``torch.utils.flop_counter``), and prints:

- the costliest operators, grouped by operator and input shapes, with their time per step,
  share of the step and achieved GFLOP/s;
- the totals of three classes: convolutions (forward and backward), matrix products, and
  everything else (memory-bound elementwise, pooling, normalisation and copy operators);
- this CPU's float32 matrix-product rate (best of five 2048x2048 products), the ceiling the
  convolutions are compared with.

The operator times include the timer's own few microseconds per call and leave out the Python
and autograd-engine time between operators, and fastadapt's fused CPU kernels, which are not
ATen operators (``fastadapt.nn.fused_conv_pool``, ``fastadapt.nn.fused_batchnorm_pool``): their
sum fell short of the plain step by about 120 ms in either order on the 2-core CPU (846 against
968 ms second order, 574 against 695 ms first order, 2026-12-06); the shares are of that sum.
Run from the project root:

    python benchmarks/maml_time_breakdown.py [--first-order] [--threads 2] [--top 25]

Writes ``benchmarks/results/maml_time_breakdown[_first_order].json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from _interleaved import matmul_gflops
from _report import machine, write_json
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from fastadapt.engine.host_memory import retain_freed_host_memory

WARMUP, TIMED, INSTRUMENTED = 3, 5, 3
CONVOLUTIONS = ("aten.convolution", "aten.convolution_backward")
MATRIX_PRODUCTS = ("aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm")


class _OperatorTimer(TorchDispatchMode):
    """Accumulates each operator's wall time and FLOPs, keyed by name and input shapes."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.flops: dict[tuple[str, str], float] = defaultdict(float)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = time.perf_counter()
        out = func(*args, **kwargs)
        elapsed = time.perf_counter() - start
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)][:2]
        key = (str(func.overloadpacket), str(shapes))
        self.seconds[key] += elapsed
        self.calls[key] += 1
        self.flops[key] += _flops(func.overloadpacket, args, kwargs, out)
        return out


def _flops(packet: Any, args: tuple, kwargs: dict, out: Any) -> float:
    """FLOPs of one operator call: convolutions counted here (``flop_registry`` ignores the
    groups of a grouped convolution's backward), matrix products by ``flop_registry``."""
    if packet is torch.ops.aten.convolution:
        return 2.0 * out.numel() * args[1][0].numel()
    if packet is torch.ops.aten.convolution_backward:
        grad_output, weight, output_mask = args[0], args[2], args[10]
        return 2.0 * grad_output.numel() * weight[0].numel() * sum(output_mask[:2])
    counter = flop_registry.get(packet)
    return 0.0 if counter is None else float(counter(*args, **kwargs, out_val=out))


def _operator_class(name: str) -> str:
    if name in CONVOLUTIONS:
        return "convolutions"
    if name in MATRIX_PRODUCTS:
        return "matrix products"
    return "everything else"


def _median_step_ms(step: Callable[[], Any]) -> float:
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(TIMED):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--first-order", action="store_true", help="time first-order MAML")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--top", type=int, default=25, help="operators listed (default: 25)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_host_memory()
    # maml_conv4_speed reads --first-order from sys.argv when imported.
    from maml_conv4_speed import _build_fastadapt

    step, note = _build_fastadapt()
    step_ms = _median_step_ms(step)
    timer = _OperatorTimer()
    with timer:
        for _ in range(INSTRUMENTED):
            step()
    per_step_ms = {key: 1000 * s / INSTRUMENTED for key, s in timer.seconds.items()}
    total_ms = sum(per_step_ms.values())
    rows = [
        {
            "operator": name,
            "input_shapes": shapes,
            "calls_per_step": timer.calls[(name, shapes)] // INSTRUMENTED,
            "ms_per_step": ms,
            "share": ms / total_ms,
            "gflops": timer.flops[(name, shapes)] / INSTRUMENTED / ms / 1e6 if ms else 0.0,
        }
        for (name, shapes), ms in sorted(per_step_ms.items(), key=lambda item: -item[1])
    ]
    classes: dict[str, dict[str, float]] = defaultdict(lambda: {"ms_per_step": 0.0, "gflop": 0.0})
    for (name, shapes), ms in per_step_ms.items():
        totals = classes[_operator_class(name)]
        totals["ms_per_step"] += ms
        totals["gflop"] += timer.flops[(name, shapes)] / INSTRUMENTED / 1e9
    matmul = matmul_gflops()

    order = "first order" if args.first_order else "second order"
    print(f"fastadapt MAML Conv-4, {order} ({note}), {args.threads} threads: "
          f"{step_ms:.0f} ms per step; operators timed one by one: {total_ms:.0f} ms")  # fmt: skip
    print("\n| operator | input shapes | calls | ms per step | share | GFLOP/s |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows[: args.top]:
        rate = f"{row['gflops']:.0f}" if row["gflops"] else "-"
        print(f"| {row['operator']} | {row['input_shapes']} | {row['calls_per_step']} | "
              f"{row['ms_per_step']:.1f} | {100 * row['share']:.1f}% | {rate} |")  # fmt: skip
    print("\n| class | ms per step | share | GFLOP per step | GFLOP/s |")
    print("|---|---:|---:|---:|---:|")
    for name, totals in sorted(classes.items(), key=lambda item: -item[1]["ms_per_step"]):
        ms, gflop = totals["ms_per_step"], totals["gflop"]
        rate = f"{1000 * gflop / ms:.0f}" if gflop else "-"
        print(f"| {name} | {ms:.0f} | {100 * ms / total_ms:.1f}% | {gflop:.1f} | {rate} |")
    print(f"\nfloat32 matrix product (2048x2048) on {args.threads} threads: {matmul:.0f} GFLOP/s")
    suffix = "_first_order" if args.first_order else ""
    path = write_json(
        f"maml_time_breakdown{suffix}.json",
        {
            "machine": machine(),
            "order": order,
            "note": note,
            "step_ms": step_ms,
            "operators_ms": total_ms,
            "matmul_gflops": matmul,
            "classes": classes,
            "operators": rows,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
