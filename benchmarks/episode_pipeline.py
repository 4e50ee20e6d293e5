"""Episodes per second of the few-shot data pipeline: fastadapt against learn2learn and torchmeta.

Workloads (Omniglot-shaped, as in Vinyals et al. 2016 and the MAML / Prototypical Networks
experiments): 28x28 grayscale images, 1623 characters x 4 rotations = 6492 classes of 20
examples each, and episodes of

- ``5w1s15q``: 5-way 1-shot with 15 queries per class (80 images per episode);
- ``20w5s5q``: 20-way 5-shot with 5 queries per class (200 images per episode).

An episode is ready when its support and query images are float32 tensors in ``[0, 1]`` of
shape ``[n, 1, 28, 28]`` with labels ``0..ways-1``. Rows:

- ``fastadapt, synthetic, 1 process``: ``FewShotSampler.batch(range(i*B, (i+1)*B))`` over a
  synthetic Omniglot-shaped set (random uint8 pixels, the same shapes and counts) written to a
  temporary cache and memory-mapped from it, as a real run reads it; rotations are applied at
  gather time. The pipeline's cost does not depend on pixel values: it is index arithmetic, one
  gather, the rotations and one float conversion.
- ``fastadapt, synthetic, TaskLoader 2 workers``: the same through ``TaskLoader(workers=2)``.
- ``fastadapt, Omniglot cache, 1 process``: the real 1623 characters (with rotations), when an
  Omniglot 28x28 cache exists (``--cache-dir``, or the default dataset folders).
- ``learn2learn``: ``TaskDataset.sample()`` with ``NWays``, ``KShots``, ``LoadData``,
  ``RemapLabels``, ``ConsecutiveLabels`` over a ``MetaDataset``, then the split into support
  and query by label (one episode per call, as its examples loop over a meta-batch).
- ``torchmeta``: ``BatchMetaDataLoader`` (batch ``B``) over a ``CombinationMetaDataset`` with
  ``ClassSplitter`` and ``Categorical`` targets.

The peers read the same pixels, already rotated and converted to float32 tensors in memory
(their best case: no per-image decoding, rotation or conversion). torchmeta 1.8.0's
``SubsetTask`` trips a check of current PyTorch's ``Subset`` (it overrides ``__getitem__`` but
not ``__getitems__``); this benchmark adds the one-line ``__getitems__`` it asks for.

Measurement: every row runs with ``--threads`` torch threads (default 1: data preparation runs
beside the model's compute, and on this shared 2-core machine multi-threaded small tensor ops
stall whenever another process holds a core; fastadapt's pipeline is NumPy, single-threaded,
either way). Each row runs for ``--seconds`` per round and reports episodes/s; the fastadapt
rows alternate within ``--rounds`` rounds, the peers run in a subprocess of the peers' venv
(``--peers-python``, built by ``shared/peers/setup_venv.sh``) with the same rounds. The table
gives each row's median over rounds (min-max in the JSON) and fastadapt's single-process
speed-up over it. The machine is shared (2 cores): compare ratios from one run.

Run from the project root with the project's venv:

    python benchmarks/episode_pipeline.py [--seconds 1.5] [--rounds 3] [--meta-batch 32] \
        [--threads 1] [--cache-dir DIR] [--peers-python PATH]
    ../peers-venv/bin/python benchmarks/episode_pipeline.py --peer learn2learn  # one peer, JSON

Prints a markdown table and writes ``benchmarks/results/episode_pipeline.json``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PEERS_PYTHON = PROJECT_ROOT.parent / "peers-venv" / "bin" / "python"
SHIMS_DIR = PROJECT_ROOT.parent / "shared" / "peers"
WORKLOADS = {"5w1s15q": (5, 1, 15), "20w5s5q": (20, 5, 5)}
CHARACTERS, EXAMPLES, SIDE = 1623, 20, 28
PEERS = ("learn2learn", "torchmeta")

# --------------------------------------------------------------------------------- shared data


def synthetic_pixels() -> tuple[np.ndarray, np.ndarray]:
    """Omniglot-shaped random uint8 images ordered by character, and their labels."""
    images = np.random.default_rng(0).integers(
        0, 256, (CHARACTERS * EXAMPLES, SIDE, SIDE), dtype=np.uint8
    )
    return images, np.repeat(np.arange(CHARACTERS), EXAMPLES)


def time_rate(next_episodes: Callable[[], int], seconds: float) -> float:
    """Episodes per second of ``next_episodes()`` (which returns how many it made)."""
    episodes, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        episodes += next_episodes()
    return episodes / elapsed


# -------------------------------------------------------------------------------------- peers


def _peer_rotated_floats() -> tuple[Any, Any]:
    """The synthetic pixels as the peers read them: 6492 classes (character-major, rotations
    0/90/180/270 as fastadapt's ``with_rotations``), float32 ``[N, 1, 28, 28]`` in memory."""
    import torch

    images, _ = synthetic_pixels()
    by_class = images.reshape(CHARACTERS, 1, EXAMPLES, SIDE, SIDE)
    rotated = np.concatenate([np.rot90(by_class, k, axes=(3, 4)) for k in range(4)], axis=1)
    pixels = torch.from_numpy(rotated.reshape(-1, 1, SIDE, SIDE) / np.float32(255))
    labels = torch.arange(CHARACTERS * 4).repeat_interleave(EXAMPLES)
    return pixels, labels


def _learn2learn(
    ways: int, shots: int, queries: int, pixels: Any, labels: Any
) -> Callable[[], int]:
    import learn2learn as l2l
    import torch
    from learn2learn.data.transforms import (
        ConsecutiveLabels,
        KShots,
        LoadData,
        NWays,
        RemapLabels,
    )

    dataset = torch.utils.data.TensorDataset(pixels, labels)
    by_label = {
        c: list(range(c * EXAMPLES, (c + 1) * EXAMPLES)) for c in range(len(pixels) // EXAMPLES)
    }
    meta = l2l.data.MetaDataset(dataset, labels_to_indices=by_label)
    transforms = [
        NWays(meta, ways),
        KShots(meta, shots + queries),
        LoadData(meta),
        RemapLabels(meta),
        ConsecutiveLabels(meta),
    ]
    tasks = l2l.data.TaskDataset(meta, task_transforms=transforms, num_tasks=-1)
    within = torch.arange(ways * (shots + queries)) % (shots + queries)

    def episode() -> int:
        x, y = tasks.sample()
        order = torch.argsort(y, stable=True)
        x, y = x[order], y[order]
        support = within < shots
        _split = (x[support], y[support], x[~support], y[~support])
        return 1

    return episode


def _torchmeta(
    ways: int, shots: int, queries: int, pixels: Any, meta_batch: int
) -> Callable[[], int]:
    from torchmeta.transforms import Categorical, ClassSplitter
    from torchmeta.utils.data import BatchMetaDataLoader, ClassDataset, CombinationMetaDataset
    from torchmeta.utils.data.task import Dataset, SubsetTask

    SubsetTask.__getitems__ = lambda self, indices: [self[i] for i in indices]
    classes = len(pixels) // EXAMPLES

    class OneClass(Dataset):
        def __init__(self, index: int, target_transform: Any) -> None:
            super().__init__(index, target_transform=target_transform)
            self.images = pixels[index * EXAMPLES : (index + 1) * EXAMPLES]

        def __len__(self) -> int:
            return EXAMPLES

        def __getitem__(self, i: int) -> tuple[Any, Any]:
            return self.images[i], self.target_transform(self.index)

    class Classes(ClassDataset):
        def __init__(self) -> None:
            super().__init__(meta_train=True)

        @property
        def num_classes(self) -> int:
            return classes

        def __getitem__(self, index: int) -> OneClass:
            return OneClass(index, self.get_target_transform(index))

    meta = CombinationMetaDataset(
        Classes(),
        ways,
        target_transform=Categorical(ways),
        dataset_transform=ClassSplitter(
            shuffle=True, num_train_per_class=shots, num_test_per_class=queries
        ),
    )
    batches = iter(BatchMetaDataLoader(meta, batch_size=meta_batch, shuffle=True))

    def batch() -> int:
        next(batches)
        return meta_batch

    return batch


def run_peer(name: str, seconds: float, rounds: int, meta_batch: int) -> None:
    """In the peers' venv: one JSON line with the peer's version and its rates per workload."""
    import importlib.metadata
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(SHIMS_DIR))
    import shims

    shims.prepare("l2l" if name == "learn2learn" else name)
    pixels, labels = _peer_rotated_floats()
    rates: dict[str, list[float]] = {}
    for workload, (ways, shots, queries) in WORKLOADS.items():
        if name == "learn2learn":
            step = _learn2learn(ways, shots, queries, pixels, labels)
        else:
            step = _torchmeta(ways, shots, queries, pixels, meta_batch)
        time_rate(step, min(seconds, 0.3))  # warm up
        rates[workload] = [time_rate(step, seconds) for _ in range(rounds)]
    print(json.dumps({"version": importlib.metadata.version(name), "rates": rates}))


# ---------------------------------------------------------------------------------- fastadapt


def _omniglot_cache(cache_dirs: list[Path]) -> Any:
    """The real Omniglot characters from the first complete 28x28 cache found, or None."""
    from fastadapt.datasets.cache import cache_info, cached_class_set

    for folder in cache_dirs:
        for entry in cache_info(folder):
            if entry["key"] == f"omniglot-{SIDE}x{SIDE}" and entry["classes"] == CHARACTERS:
                return cached_class_set(folder, entry["key"], _no_build)
    return None


def _no_build() -> Any:
    raise RuntimeError("the Omniglot cache disappeared during the benchmark")


def _single_process(sampler: Any, meta_batch: int) -> Callable[[], int]:
    steps = itertools.count()

    def batch() -> int:
        step = next(steps)
        sampler.batch(range(step * meta_batch, (step + 1) * meta_batch))
        return meta_batch

    return batch


def _timed(step: Callable[[], int], seconds: float) -> Callable[[], float]:
    return lambda: time_rate(step, seconds)


def _with_workers(sampler: Any, meta_batch: int, seconds: float) -> float:
    """Episodes/s of a fresh ``TaskLoader(workers=2)``, after its workers have started."""
    from fastadapt.tasks.loader import TaskLoader

    batches: Generator[Any, None, None] = iter(TaskLoader(sampler, meta_batch, workers=2))
    for _ in range(4):
        next(batches)

    def batch() -> int:
        next(batches)
        return meta_batch

    rate = time_rate(batch, seconds)
    batches.close()  # stops the workers
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5, help="per row and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--meta-batch", type=int, default=32)
    parser.add_argument("--cache-dir", type=Path, action="append", default=[])
    parser.add_argument("--peers-python", default=str(DEFAULT_PEERS_PYTHON))
    parser.add_argument("--threads", type=int, default=1, help="torch threads, every row")
    parser.add_argument("--peer", choices=PEERS, help="run one peer here and print JSON")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.peer:
        run_peer(args.peer, args.seconds, args.rounds, args.meta_batch)
        return

    from _report import machine, write_json

    from fastadapt.datasets.cache import cached_class_set
    from fastadapt.datasets.paths import default_root
    from fastadapt.tasks.sampler import FewShotSampler

    load_before = os.getloadavg()
    cache_dirs = [*args.cache_dir, default_root() / "omniglot" / "cache", default_root() / "cache"]
    real = _omniglot_cache(cache_dirs)
    rates: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images, labels = synthetic_pixels()
        names = [f"synthetic/character{i:04d}" for i in range(CHARACTERS)]
        synthetic = cached_class_set(Path(tmp), "synthetic-28x28", lambda: (images, labels, names))
        sets = {"synthetic": synthetic.with_rotations()}
        if real is not None:
            sets["Omniglot cache"] = real.with_rotations()
        order = random.Random(0)
        for workload, (ways, shots, queries) in WORKLOADS.items():
            samplers = {
                key: FewShotSampler(s, ways, shots, queries, seed=1) for key, s in sets.items()
            }
            rows = {
                f"fastadapt, {key}, 1 process": _timed(
                    _single_process(sampler, args.meta_batch), args.seconds
                )
                for key, sampler in samplers.items()
            }
            rows["fastadapt, synthetic, TaskLoader 2 workers"] = functools.partial(
                _with_workers, samplers["synthetic"], args.meta_batch, args.seconds
            )
            for sampler in samplers.values():
                _single_process(sampler, args.meta_batch)()  # warm up
            for name in rows:  # the table lists rows in this order
                rates.setdefault(name, {})[workload] = []
            for _ in range(args.rounds):
                for name in order.sample(list(rows), len(rows)):
                    rates[name][workload].append(rows[name]())
    peer_versions = {}
    for peer in PEERS:
        result = _peer_rows(peer, args)
        if "rates" in result:
            label = f"{peer} {result['version']}"
            peer_versions[peer] = result["version"]
            rates[label] = result["rates"]
        else:
            rates[f"{peer} ({result['error']})"] = {}
    load_after = os.getloadavg()
    reference = rates["fastadapt, synthetic, 1 process"]
    table = _table(rates, reference)
    print(table)
    print(f"\nload average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (2 cores)")
    payload = {
        "benchmark": "episode_pipeline",
        "workloads": {k: dict(zip(("ways", "shots", "queries"), v)) for k, v in WORKLOADS.items()},
        "meta_batch": args.meta_batch,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "rates": rates,
        "median": {
            row: {w: statistics.median(r) for w, r in v.items()} for row, v in rates.items()
        },
        "peers": peer_versions,
        "load_average": {"before": load_before, "after": load_after},
        "machine": machine(),
        "table": table,
    }
    print(f"wrote {write_json('episode_pipeline.json', payload)}")


def _peer_rows(peer: str, args: argparse.Namespace) -> dict[str, Any]:
    if not Path(args.peers_python).exists():
        return {"error": "peers venv not found"}
    command = [
        args.peers_python,
        str(Path(__file__).resolve()),
        "--peer",
        peer,
        "--seconds",
        str(args.seconds),
        "--rounds",
        str(args.rounds),
        "--meta-batch",
        str(args.meta_batch),
        "--threads",
        str(args.threads),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as error:
        tail = getattr(error, "stderr", "") or ""
        print(f"{peer} failed: {error}\n{tail[-2000:]}", file=sys.stderr)
        return {"error": "failed"}


def _table(rates: dict[str, dict[str, list[float]]], reference: dict[str, list[float]]) -> str:
    header = ["pipeline"]
    for workload in WORKLOADS:
        header += [f"{workload} episodes/s", f"{workload} fastadapt speed-up"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for row, by_workload in rates.items():
        cells = [row]
        for workload in WORKLOADS:
            if workload not in by_workload:
                cells += ["n/a", ""]
                continue
            median = statistics.median(by_workload[workload])
            speed_up = statistics.median(reference[workload]) / median
            cells += [f"{median:,.0f}", "" if row.startswith("fastadapt") else f"{speed_up:.1f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
