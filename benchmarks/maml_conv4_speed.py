"""Wall time and peak memory of one Conv-4 MAML meta-iteration on CPU: fastadapt against peers.

Workload (identical for every implementation; the issue's): the Conv-4 classifier (four blocks
of 3x3 convolution with 64 filters, BatchNorm with batch statistics, ReLU, 2x2 max-pool, then a
linear 5-way head; the same initial weights everywhere), Omniglot-shaped 5-way 1-shot tasks with
15 queries per class (1x28x28, float32), a meta-batch of 32, one inner SGD step (α = 0.4), the
query cross-entropy averaged over the tasks, ``backward()`` and an outer Adam step (lr 1e-3;
fused for fastadapt, as its trainer uses it). Second order by default; ``--first-order`` times
first-order MAML instead (results in ``maml_conv4_speed_first_order.json``). Rows:

- ``fastadapt``: ``MAML(Conv4(1, ways=5))`` and ``meta_loss`` on the ``TaskBatch``;
- ``fastadapt, no fused kernels``: the same with Conv-4's blocks as PyTorch operators
  (``FASTADAPT_FUSED_KERNELS=0``: neither :mod:`fastadapt.nn.fused_conv_pool` in the first
  block nor :mod:`fastadapt.nn.fused_batchnorm_pool` in the others), what those kernels are
  worth;
- ``fastadapt, bfloat16``: the same in mixed precision (``train.precision = "bfloat16"``,
  ``fastadapt.nn.precision``): the backbone in bfloat16, losses, weights and optimiser in
  float32. Not the float32 workload of the other rows: a separate figure, fast on CPUs with
  AMX or AVX-512 BF16 units;
- ``torch.func loop``: plain PyTorch, ``functional_call`` and ``autograd.grad`` per task;
- ``torch.func loop, bfloat16``: the same with its whole step under bfloat16 autocast, what
  mixed precision gives without fastadapt;
- ``torchmeta``, ``learn2learn``, ``higher``, ``torchopt``: each peer's documented MAML step
  (``benchmarks/_maml_peers.py``), a loop over tasks.

Measurement: interleaved rounds of worker subprocesses (``benchmarks/_interleaved.py``), 2
torch threads by default; each row's peak resident memory is its worker's. Each row's GFLOP/s
divides the workload's convolution and matrix-product FLOPs, counted on the plain PyTorch
step, by its median time. Run from the project
root with the project's venv:

    python benchmarks/maml_conv4_speed.py [--first-order] [--rounds 5] [--iters-per-round 2]

Prints a markdown table and writes ``benchmarks/results/maml_conv4_speed[_first_order].json``.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
from _interleaved import (
    OURS,
    PROJECT_ROOT,
    Benchmark,
    Impl,
    Step,
    counted_flops,
    main,
    meta_learner_step,
)
from _maml_peers import MamlWorkload, TaskTensors, build_torch_func_loop, peer_impls
from torch import nn

TASKS, WAYS, SHOTS, QUERIES, SIDE, HIDDEN = 32, 5, 1, 15, 28, 64
INNER_LR, OUTER_LR = 0.4, 1e-3
SEED = 0
PEERS = ("torchmeta", "learn2learn", "higher", "torchopt")
BASELINE = "torch.func loop"
FIRST_ORDER = "--first-order" in sys.argv


def _tasks() -> list[TaskTensors]:
    gen = torch.Generator().manual_seed(SEED)
    per_class = SHOTS + QUERIES
    images = torch.rand(TASKS, WAYS * per_class, 1, SIDE, SIDE, generator=gen)
    labels = torch.arange(WAYS).repeat_interleave(per_class)
    support = torch.cat([torch.arange(c * per_class, c * per_class + SHOTS) for c in range(WAYS)])
    query = torch.tensor([i for i in range(WAYS * per_class) if i not in set(support.tolist())])
    return [(x[support], labels[support], x[query], labels[query]) for x in images]


def _textbook_conv4() -> nn.Sequential:
    def block(in_channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, HIDDEN, 3, padding=1),
            nn.BatchNorm2d(HIDDEN, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    blocks = [block(1), block(HIDDEN), block(HIDDEN), block(HIDDEN)]
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(HIDDEN, WAYS))


def _initial_weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(SEED)
    return _textbook_conv4().state_dict()


def _plain_model() -> nn.Module:
    model = _textbook_conv4()
    model.load_state_dict(_initial_weights())
    return model


def _meta_model() -> nn.Module:
    """The same network as torchmeta's ``MetaModule`` (imported only in its worker)."""
    from torchmeta.modules import MetaBatchNorm2d, MetaConv2d, MetaLinear, MetaSequential

    def block(in_channels: int) -> nn.Module:
        return MetaSequential(
            MetaConv2d(in_channels, HIDDEN, 3, padding=1),
            MetaBatchNorm2d(HIDDEN, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    blocks = [block(1), block(HIDDEN), block(HIDDEN), block(HIDDEN)]
    model = MetaSequential(*blocks, nn.Flatten(), MetaLinear(HIDDEN, WAYS))
    model.load_state_dict(_initial_weights())
    return model


def _workload() -> MamlWorkload:
    return MamlWorkload(
        _tasks(), _plain_model, _meta_model, F.cross_entropy, INNER_LR, OUTER_LR, FIRST_ORDER
    )


def _build_fastadapt(precision: str = "float32", fused: bool = True) -> tuple[Step, str]:
    from fastadapt import MAML, Conv4, TaskBatch
    from fastadapt.nn._kernel_build import SWITCH_VARIABLE

    if not fused:  # this row's worker process only
        os.environ[SWITCH_VARIABLE] = "0"

    model = Conv4(1, HIDDEN, ways=WAYS)
    model.load_state_dict(_initial_weights())
    learner = MAML(model, problem="classification", inner_lr=INNER_LR, first_order=FIRST_ORDER)
    batch = TaskBatch(*(torch.stack(parts) for parts in zip(*_tasks(), strict=True)))
    optimizer = torch.optim.Adam(learner.parameters(), lr=OUTER_LR, fused=True)
    step = meta_learner_step(learner, batch, optimizer, precision)

    note = f"batch_mode={learner.batch_mode}, fused Adam"
    note += "" if fused else ", no fused CPU kernels"
    return step, note + (f", {precision} autocast" if precision != "float32" else "")


def _build_torch_func_loop_bfloat16() -> tuple[Step, str]:
    """The plain PyTorch row with its whole step under bfloat16 autocast, as a user would add
    it: what mixed precision alone gives, beside fastadapt's bfloat16 row."""
    step, note = build_torch_func_loop(_workload())

    def mixed_step() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return step()

    return mixed_step, note + ", bfloat16 autocast"


_ORDER = "first_order" if FIRST_ORDER else "second_order"
_SUFFIX = "_first_order" if FIRST_ORDER else ""
BENCHMARK = Benchmark(
    script=__file__,
    description=__doc__.split("\n\n")[0],
    impls={
        OURS: Impl("fastadapt", _build_fastadapt, peer=False),
        f"{OURS}, bfloat16": Impl("fastadapt", lambda: _build_fastadapt("bfloat16"), peer=False),
        f"{OURS}, no fused kernels": Impl(
            "fastadapt", lambda: _build_fastadapt(fused=False), peer=False
        ),
        BASELINE: Impl("torch", lambda: build_torch_func_loop(_workload()), peer=False),
        f"{BASELINE}, bfloat16": Impl("torch", _build_torch_func_loop_bfloat16, peer=False),
        **peer_impls(_workload),
    },
    peers=PEERS,
    baseline=BASELINE,
    workload={
        "model": "Conv-4 (64 filters, batch-statistics BatchNorm, max-pool) + linear 5-way head",
        "tasks_per_batch": TASKS,
        "episode": f"{WAYS}-way {SHOTS}-shot, {QUERIES} queries per class, 1x28x28",
        "inner_steps": 1,
        "inner_lr": INNER_LR,
        "meta_gradient": _ORDER.replace("_", " "),
        "outer_optimizer": f"Adam lr={OUTER_LR} (fused for fastadapt)",
        "dtype": "float32",
    },
    results=PROJECT_ROOT / "benchmarks" / "results" / f"maml_conv4_speed{_SUFFIX}.json",
    warmup=2,
    rounds=5,
    iters_per_round=2,
    worker_args=("--first-order",) if FIRST_ORDER else (),
    flops=counted_flops(lambda: build_torch_func_loop(_workload())),
)


if __name__ == "__main__":
    main(BENCHMARK, [arg for arg in sys.argv[1:] if arg != "--first-order"])
