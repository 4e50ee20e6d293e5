"""Sinusoid regression, the task family of MAML (Finn et al. 2017, §5.1 and Appendix C).

Each task is ``y = A sin(x - φ)`` with amplitude ``A ~ U[0.1, 5.0]``, phase ``φ ~ U[0, π]``
and inputs ``x ~ U[-5, 5]``; a K-shot task has K support points and its own query points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fastadapt.tasks.counter_rng import stream_key, uniform
from fastadapt.tasks.task import TaskBatch

STREAMS = {"train": 0, "val": 1, "test": 2}
_AMPLITUDE_SLOT, _PHASE_SLOT, _FIRST_X_SLOT = 0, 1, 2


class SinusoidTasks:
    """A seeded, indexable family of sinusoid regression tasks.

    Task ``i`` of ``split`` is a pure function of ``(seed, split, i)``: the training stream,
    the validation tasks and the test tasks never overlap, and a resumed run sees exactly the
    tasks it would have seen.
    """

    def __init__(
        self,
        shots: int,
        queries: int,
        seed: int = 0,
        split: str = "train",
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
    ) -> None:
        if shots < 1:
            raise ValueError(f"shots must be a positive integer, got {shots}; use e.g. 5 or 10.")
        if queries < 1:
            raise ValueError(f"queries must be a positive integer, got {queries}.")
        if split not in STREAMS:
            raise ValueError(f"split must be one of {sorted(STREAMS)}, got {split!r}.")
        for name, (low, high) in {
            "amplitude": amplitude,
            "phase": phase,
            "x_range": x_range,
        }.items():
            if not low <= high:
                raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}.")
        self.shots, self.queries, self.seed, self.split = shots, queries, seed, split
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range
        self._key = stream_key(seed, STREAMS[split])
        self._slots = np.arange(_FIRST_X_SLOT + shots + queries)[None, :]

    def parameters(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Amplitude and phase of the given tasks (float64 arrays)."""
        u = self._uniforms(indices)
        return _scale(u[:, _AMPLITUDE_SLOT], self.amplitude), _scale(u[:, _PHASE_SLOT], self.phase)

    def batch(self, indices: Sequence[int] | np.ndarray) -> TaskBatch:
        """The tasks with these indices, stacked: x and y have shape ``[B, n, 1]``."""
        u = self._uniforms(indices)
        amp = _scale(u[:, _AMPLITUDE_SLOT : _AMPLITUDE_SLOT + 1], self.amplitude)
        phase = _scale(u[:, _PHASE_SLOT : _PHASE_SLOT + 1], self.phase)
        x = _scale(u[:, _FIRST_X_SLOT:], self.x_range)
        y = amp * np.sin(x - phase)
        xy = torch.from_numpy(np.stack((x, y)).astype(np.float32)).unsqueeze(-1)
        k = self.shots
        return TaskBatch(xy[0, :, :k], xy[1, :, :k], xy[0, :, k:], xy[1, :, k:])

    def _uniforms(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return uniform(self._key, np.asarray(indices, dtype=np.int64)[:, None], self._slots)


def _scale(u: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    low, high = bounds
    return low + (high - low) * u
