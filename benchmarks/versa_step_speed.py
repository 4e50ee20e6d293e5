"""Wall time of one VERSA training step on CPU: what each of fastadapt's CPU paths contributes.

Workload: the model of the ``versa-omniglot-5way-1shot`` preset (Conv-4 with ceil pooling and
dropout 0.1 after each block, BatchNorm statistics per task and set, the amortised Gaussian
head, L = 10 samples) and one training step of its schedule: 2 tasks of 20-way 1-shot with 10
queries per class (40 support and 400 query images, 1x28x28, random pixels generated once),
the ML-PIP loss, ``backward()`` and the trainer's Adam step (lr 1e-3, fused). No peer library
implements VERSA, so the rows are fastadapt's own paths:

- ``fastadapt``: the preset's CPU recipe, the backbone in bfloat16 (``train.precision =
  "bfloat16"``) with the counter-based dropout kernel (``fastadapt.nn.fused_dropout``);
- ``fastadapt, torch.nn.Dropout``: the same with PyTorch's dropout modules in place of
  fastadapt's (a serial ``bernoulli_`` mask draw, and the mask stored for backward);
- ``fastadapt, float32`` and ``fastadapt, float32, torch.nn.Dropout``: the same in float32,
  where the fused convolution and BatchNorm kernels also run;
- ``fastadapt, float32, no fused kernels``: ``FASTADAPT_FUSED_KERNELS=0``, PyTorch operators
  only.

Rows with fastadapt's dropout draw the same masks (same seed), so their first losses agree up
to bfloat16 rounding (the loss check); the others draw other masks.

Measurement: interleaved rounds of worker subprocesses (``benchmarks/_interleaved.py``), 2
torch threads by default. Run from the project root with the project's venv:

    python benchmarks/versa_step_speed.py [--rounds 7] [--iters-per-round 10] [--threads 2]

Prints a markdown table and writes ``benchmarks/results/versa_step_speed.json``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
from _interleaved import PROJECT_ROOT, Benchmark, Impl, Step, counted_flops, main, meta_learner_step
from torch import nn

if TYPE_CHECKING:  # fastadapt is imported inside the workers
    from fastadapt import TaskBatch

PRESET = "versa-omniglot-5way-1shot"
TASKS, WAYS, SHOTS, QUERIES, SIDE = 2, 20, 1, 10, 28
SEED = 0


def _batch() -> TaskBatch:
    from fastadapt import TaskBatch

    gen = torch.Generator().manual_seed(SEED)
    labels = torch.arange(WAYS)

    def images(per_class: int) -> torch.Tensor:
        return torch.rand(TASKS, WAYS * per_class, 1, SIDE, SIDE, generator=gen)

    return TaskBatch(
        images(SHOTS), labels.repeat_interleave(SHOTS).expand(TASKS, -1),
        images(QUERIES), labels.repeat_interleave(QUERIES).expand(TASKS, -1),
    )  # fmt: skip


def _build(
    precision: str, torch_dropout: bool = False, fused_kernels: bool = True
) -> tuple[Step, str]:
    from fastadapt.config import load_preset
    from fastadapt.engine.build import build_learner, build_optimizer
    from fastadapt.nn._kernel_build import SWITCH_VARIABLE
    from fastadapt.nn.fused_dropout import Dropout

    if not fused_kernels:
        os.environ[SWITCH_VARIABLE] = "0"
    config = load_preset(PRESET)
    learner = build_learner(config)
    if torch_dropout:
        for block in learner.feature_extractor.modules():
            for name, child in block.named_children():
                if isinstance(child, Dropout):
                    setattr(block, name, nn.Dropout(child.p))
    learner.train()
    step = meta_learner_step(learner, _batch(), build_optimizer(config, learner), precision)
    torch.manual_seed(SEED)

    note = f"{PRESET}'s model, {precision}"
    if torch_dropout:
        note += ", torch.nn.Dropout"
    return step, note + ("" if fused_kernels else f", {SWITCH_VARIABLE}=0")


IMPLS = {
    "fastadapt": Impl("fastadapt", lambda: _build("bfloat16"), peer=False),
    "fastadapt, torch.nn.Dropout": Impl(
        "fastadapt", lambda: _build("bfloat16", torch_dropout=True), peer=False, shared_data=False
    ),
    "fastadapt, float32": Impl("fastadapt", lambda: _build("float32"), peer=False),
    "fastadapt, float32, torch.nn.Dropout": Impl(
        "fastadapt", lambda: _build("float32", torch_dropout=True), peer=False, shared_data=False
    ),
    "fastadapt, float32, no fused kernels": Impl(
        "fastadapt", lambda: _build("float32", fused_kernels=False), peer=False, shared_data=False
    ),
}

BENCHMARK = Benchmark(
    script=__file__,
    description=__doc__.splitlines()[0],
    impls=IMPLS,
    peers=(),
    baseline="fastadapt, torch.nn.Dropout",
    workload={
        "preset": PRESET,
        "tasks": TASKS,
        "ways": WAYS,
        "shots": SHOTS,
        "queries_per_class": QUERIES,
        "image": [1, SIDE, SIDE],
        "step": "ML-PIP loss, backward, fused Adam (lr 1e-3)",
    },
    results=PROJECT_ROOT / "benchmarks" / "results" / "versa_step_speed.json",
    warmup=5,
    rounds=7,
    iters_per_round=10,
    flops=counted_flops(lambda: _build("float32")),
)

if __name__ == "__main__":
    main(BENCHMARK)
