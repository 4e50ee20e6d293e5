"""Checkpoints: everything needed to continue a run bit-exactly, written atomically.

A checkpoint holds the meta-learner and optimizer state, the step, the run's configuration,
the best validation score so far and every random-number-generator state. It is loaded with
``torch.load(..., weights_only=True)``: nothing in it is unpickled as code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastadapt.errors import CheckpointError
from fastadapt.io.atomic import atomic_torch_save

FORMAT = "fastadapt-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    step: int
    config: dict[str, Any]
    learner: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    best: dict[str, Any]
    rng: dict[str, Any]
    train_seconds: float | None = None
    """Wall time spent training up to ``step``, summed over resumed sessions (validation
    included); ``None`` where an earlier checkpoint of the run did not record it."""


def capture_rng_state() -> dict[str, Any]:
    """The state of every generator a run may draw from (Python, NumPy, torch CPU and CUDA)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every generator back to a state returned by :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` to ``path`` atomically (temp file, fsync, rename)."""
    payload = {"format": FORMAT, "version": VERSION, **checkpoint.__dict__}
    atomic_torch_save(path, payload)


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else clearly."""
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint at {path}; train first (`fastadapt train PRESET --out DIR`) or "
            "pass the folder of a run that has written one."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {error}); it may be "
            "truncated or not written by fastadapt. Use another checkpoint of the run "
            "(checkpoints/last.pt or checkpoints/best.pt) or start a new run."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fastadapt checkpoint (no '{FORMAT}' marker).")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('version')!r}; this fastadapt "
            f"reads version {VERSION}. Use the fastadapt release that wrote it."
        )
    try:
        return Checkpoint(**{k: v for k, v in payload.items() if k not in ("format", "version")})
    except TypeError as error:
        raise CheckpointError(f"{path} is missing fields of a checkpoint: {error}.") from error
