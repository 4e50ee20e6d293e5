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

import math
from dataclasses import dataclass
from typing import Any

import torch
from _interleaved import OURS, PROJECT_ROOT, Benchmark, Impl, Step, main
from _maml_peers import MamlWorkload, peer_impls
from torch import nn
from torch.nn.functional import mse_loss

TASKS, SHOTS, QUERIES, HIDDEN = 25, 10, 10, 40
INNER_LR, OUTER_LR = 0.01, 1e-3
SEED = 0
PEERS = ("torchmeta", "learn2learn", "higher", "torchopt")
BASELINE = "torch.func"

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


def _build_fastadapt(data: _TaskData, *, sampling: bool) -> tuple[Step, str]:
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


def _build_torch_func(data: _TaskData) -> tuple[Step, str]:
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


def _workload() -> MamlWorkload:
    return MamlWorkload(
        _make_tasks().per_task(), _plain_mlp, _meta_mlp, mse_loss, INNER_LR, OUTER_LR
    )


def _meta_mlp() -> nn.Module:
    """The MLP as torchmeta's ``MetaSequential`` (imported only in the torchmeta worker)."""
    from torchmeta.modules import MetaLinear, MetaSequential

    model = MetaSequential(
        MetaLinear(1, HIDDEN),
        nn.ReLU(),
        MetaLinear(HIDDEN, HIDDEN),
        nn.ReLU(),
        MetaLinear(HIDDEN, 1),
    )
    model.load_state_dict(_initial_weights())
    return model


BENCHMARK = Benchmark(
    script=__file__,
    description=__doc__.split("\n\n")[0],
    impls={
        OURS: Impl(
            "fastadapt", lambda: _build_fastadapt(_make_tasks(), sampling=False), peer=False
        ),
        f"{OURS}+sampling": Impl(
            "fastadapt",
            lambda: _build_fastadapt(_make_tasks(), sampling=True),
            peer=False,
            shared_data=False,
        ),
        BASELINE: Impl("torch.func", lambda: _build_torch_func(_make_tasks()), peer=False),
        **peer_impls(_workload),
    },
    peers=PEERS,
    baseline=BASELINE,
    workload={
        "model": "MLP 1-40-40-1, ReLU",
        "tasks_per_batch": TASKS,
        "support": SHOTS,
        "query": QUERIES,
        "inner_steps": 1,
        "inner_lr": INNER_LR,
        "outer_optimizer": f"Adam lr={OUTER_LR} (fused for fastadapt)",
        "meta_gradient": "second order",
        "dtype": "float32",
    },
    results=PROJECT_ROOT / "benchmarks" / "results" / "sinusoid_speed.json",
)


if __name__ == "__main__":
    main(BENCHMARK)
