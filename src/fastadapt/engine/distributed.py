"""Several processes training one model: torchrun's process group, shards and reductions.

A distributed job is started by ``torchrun`` (or ``fastadapt train --nproc N``, which runs it),
which starts one process per rank with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` in its environment. :func:`process_group` joins that job
(gloo on CPU, NCCL on CUDA, with an explicit timeout); the helpers below then shard work and
combine results. Outside a job every helper is what it means for one process: rank 0 of 1,
shards are whole, reductions return their input, so code written against this module runs
unchanged in one process.

**Gradients.** Every rank calls :func:`all_reduce_gradients` after its backward passes: one
all-reduce of the gradients flattened into a single buffer, per step. ``DistributedDataParallel``
would work too (its gradient hooks fire through the learners' ``torch.func`` calls, MAML's
second-order loss and Reptile's surrogate alike), but it all-reduces at every ``backward``
unless the chunks of a step (``train.task_chunk``) run under ``no_sync()``, renames the state
dict's keys (``module.``) and broadcasts rank 0's buffers instead of averaging them. The
explicit all-reduce leaves learners and checkpoints untouched and serves loops other than the
trainer's (meta-RL) the same way; what it gives up, overlapping the exchange with the backward
pass, is small for models of Conv-4's size (112,261 parameters, 0.45 MB per step).

Every collective is bounded by the timeout given to :func:`process_group`; a rank that dies or
stalls makes the others raise :class:`~fastadapt.errors.DistributedError` instead of waiting
for ever.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fastadapt._version import __version__
from fastadapt.errors import ConfigError, DistributedError, FastAdaptError
from fastadapt.tasks.counter_rng import stream_key

DEFAULT_TIMEOUT = 300.0
"""Seconds a rank waits for the others in one collective before the job stops."""

_TRAIN_NOISE_STREAM = 3  # counter_rng coordinate of the per-rank training noise
_T = TypeVar("_T")


def launched() -> bool:
    """Whether this process was started by torchrun (``RANK`` and ``WORLD_SIZE`` are set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_initialized() -> bool:
    """Whether this process has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank in the process group it joined (0 if it joined none)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """The number of processes in the group this process joined (1 if it joined none)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one process that writes files, logs and progress; also
    before joining and after leaving the group, from torchrun's ``RANK``."""
    if is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def process_group(device: torch.device, timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Join torchrun's job for the duration of the block: gloo for a CPU ``device``, NCCL (on
    GPU ``LOCAL_RANK``) for CUDA; every collective then gives up after ``timeout`` seconds.

    Does nothing outside a job, or when the process group already exists (nested use).

    Raises:
        DistributedError: the job cannot be joined (rendezvous failed or timed out).
    """
    if not launched() or is_initialized():
        yield
        return
    if not dist.is_available():
        raise DistributedError(
            "this process was started by torchrun, but this PyTorch build has no "
            "torch.distributed; install a build with it or run a single process."
        )
    if not timeout > 0:
        raise ConfigError(f"the timeout must be a positive number of seconds, got {timeout!r}.")
    backend = "gloo"
    if device.type == "cuda":
        backend = "nccl"
        local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
        if local_rank >= gpus:
            raise ConfigError(
                f"process {local_rank} of this machine has no GPU of its own: the machine has "
                f"{gpus} visible; start at most {gpus} processes per machine "
                "(torchrun --nproc-per-node) with train.device=cuda, or use train.device=cpu."
            )
        torch.cuda.set_device(local_rank)
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as error:
        raise DistributedError(
            f"rank {os.environ['RANK']} could not join the job of {os.environ['WORLD_SIZE']} "
            f"processes at {os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} "
            f"({error}). Check that every node can reach that address and that the port is "
            "open, then start the job again."
        ) from error
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard(indices: range) -> range:
    """This rank's contiguous part of ``indices``: rank ``r`` of ``W`` takes
    ``indices[len·r//W : len·(r+1)//W]``, so the shards of ranks 0..W-1, in order, are
    ``indices``."""
    size, me = world_size(), rank()
    return indices[len(indices) * me // size : len(indices) * (me + 1) // size]


def check_meta_batch(meta_batch: int, processes: int | None = None) -> None:
    """Refuse a meta-batch that ``processes`` (default: this job's) cannot share equally.

    Raises:
        ConfigError: ``meta_batch`` is not a multiple of the number of processes; the message
            names the meta-batches and process counts that work.
    """
    processes = world_size() if processes is None else processes
    if meta_batch % processes == 0:
        return
    lower = meta_batch - meta_batch % processes
    multiples = [m for m in (lower, lower + processes) if m > 0]
    divisors = [n for n in range(1, meta_batch + 1) if meta_batch % n == 0]
    raise ConfigError(
        f"train.meta_batch={meta_batch} cannot be shared equally by {processes} processes; "
        f"use a multiple of {processes} (--set train.meta_batch="
        f"{' or '.join(str(m) for m in multiples)}) or a number of processes that divides "
        f"{meta_batch} ({', '.join(str(n) for n in divisors)})."
    )


def all_reduce_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Average the ``.grad`` of ``parameters`` over the ranks, in place, in one all-reduce.

    Call it on every rank after the step's backward passes and before ``optimizer.step()``;
    with each rank's loss the mean over its equal share of the tasks, the result is the
    gradient of the mean over all tasks, as one process computes it (up to the order of
    floating-point additions). Parameters whose ``.grad`` is ``None`` are skipped: every
    rank must leave the same ones without a gradient, as the same code on the same model does.
    Meant for any training loop (meta-RL's included), not only the trainer's.
    """
    _all_reduce_mean([p.grad for p in parameters if p.grad is not None], "averaging gradients")


def average_buffers(module: nn.Module) -> None:
    """Average the floating-point buffers of ``module`` (BatchNorm running statistics) over
    the ranks, so that every rank keeps the same model; integer buffers (batch counters) are
    the same on every rank already."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    _all_reduce_mean(buffers, "averaging buffers")


def broadcast_module(module: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            _collective("sharing the model", dist.broadcast, tensor.data, src=0)


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each scalar of ``values`` averaged over the ranks (e.g. the logged training loss)."""
    if world_size() == 1 or not values:
        return values
    names = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[name]).detach().float() for name in names])
    _all_reduce_mean([stacked], "averaging metrics")
    return dict(zip(names, stacked.unbind()))


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank (every rank gets the answer)."""
    if world_size() == 1:
        return flag
    tensor = torch.tensor([float(flag)], device=_collective_device())
    _collective("sharing a flag", dist.all_reduce, tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def all_gather_objects(obj: _T) -> list[_T]:
    """``obj`` of every rank, in rank order, on every rank (pickled: keep it small)."""
    if world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    _collective("gathering results", dist.all_gather_object, gathered, obj)
    return gathered


def run_on_main(function: Callable[[], _T]) -> _T:
    """Call ``function`` on rank 0 only and give its result to every rank; if it raises a
    :class:`~fastadapt.errors.FastAdaptError`, every rank raises it (e.g. a refused run folder
    stops the whole job with one message)."""
    if world_size() == 1:
        return function()
    outcome: list[Any] = [None]
    if is_main():
        try:
            outcome = [(True, function())]
        except FastAdaptError as error:
            outcome = [(False, error)]
    _collective("sharing rank 0's result", dist.broadcast_object_list, outcome, src=0)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def check_same_run(config: dict[str, Any]) -> None:
    """Refuse to start unless every rank runs the same resolved configuration with the same
    fastadapt and PyTorch (one all-gather of a fingerprint).

    Raises:
        ConfigError: some rank differs; the message names it and what differs.
    """
    if world_size() == 1:
        return
    problem = mismatch(all_gather_objects(fingerprint(config)))
    if problem is not None:
        raise ConfigError(problem)


def fingerprint(config: dict[str, Any]) -> dict[str, str]:
    """What must be equal on every rank: hashes of the configuration and of fastadapt's source
    files, the fastadapt and PyTorch versions."""
    text = json.dumps(config, sort_keys=True, default=str)
    return {
        "configuration": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
        "fastadapt version": __version__,
        "fastadapt source": _source_hash(),
        "PyTorch version": torch.__version__,
    }


def mismatch(fingerprints: list[dict[str, str]]) -> str | None:
    """Why the ranks' :func:`fingerprint` s disagree (None if they agree)."""
    reference = fingerprints[0]
    for other_rank, other in enumerate(fingerprints[1:], start=1):
        differing = [key for key in reference if other.get(key) != reference[key]]
        if differing:
            return (
                f"the {len(fingerprints)} processes of this job do not run the same thing: "
                f"rank {other_rank} differs from rank 0 in its {' and '.join(differing)}. "
                "Start every process with the same preset and --set overrides, and the same "
                "fastadapt and PyTorch installation (on every node)."
            )
    return None


def seed_training_noise(seed: int, step: int) -> None:
    """With more than one process, reseed torch's generators from ``(seed, step, rank)``.

    Random draws of a training step (VERSA's samples, Reptile's mini-batch order, dropout) are
    then a pure function of the step and the rank: a job is reproducible for a given number of
    processes and resumable with any number, but ranks do not draw what one process would.
    One process keeps its single checkpointed stream.
    """
    if world_size() == 1:
        return
    key = stream_key(seed, _TRAIN_NOISE_STREAM, step, rank())
    torch.manual_seed(int(key >> np.uint64(1)))


def _all_reduce_mean(tensors: list[torch.Tensor], what: str) -> None:
    """Replace each tensor by its mean over the ranks: one all-reduce per dtype and device."""
    if world_size() == 1 or not tensors:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = torch.cat([tensor.detach().reshape(-1) for tensor in group])
        _collective(what, dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size())
        with torch.no_grad():
            for tensor, mean in zip(group, flat.split([t.numel() for t in group])):
                tensor.copy_(mean.view_as(tensor))


def _collective(what: str, operation: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run a collective; a dead, stalled or unreachable peer becomes a DistributedError."""
    try:
        operation(*args, **kwargs)
    except RuntimeError as error:
        raise DistributedError(
            f"rank {rank()} of {world_size()} lost contact with the other processes while "
            f"{what} ({type(error).__name__}: {error}). One of them died (its message, if it "
            "left one, is above) or stalled past the timeout. The job stops; the run's last "
            "checkpoint is intact: continue it with --resume, with any number of processes."
        ) from error


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@functools.cache
def _source_hash() -> str:
    """A hash of every Python file of this fastadapt, by path within the package."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode("utf-8"))
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
