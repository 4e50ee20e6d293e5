"""A run's training wall time, summed over its resumed sessions, and its time budget.

A checkpoint records the training time of the run up to it (``Checkpoint.train_seconds``); a
resumed session adds its own. ``train.max_hours`` caps that sum: training ends after the first
step at which the budget is spent, with that step validated and checkpointed like a last step,
so "trained in at most N hours" holds across kills and resumes (up to one step and its
validation).
"""

from __future__ import annotations

import time

from fastadapt.errors import ConfigError


class TrainingClock:
    """Training wall time of a run over every session, and whether ``max_hours`` is spent.

    Args:
        max_hours: the run's training time budget in hours; ``None``: no budget.
    """

    def __init__(self, max_hours: float | None = None) -> None:
        self.max_hours = max_hours
        self._before: float | None = 0.0
        self._started = time.perf_counter()

    def start(self, seconds_before: float | None = 0.0) -> None:
        """Start this session's count after ``seconds_before`` seconds of earlier sessions
        (``None``: unknown, from a checkpoint that did not record them)."""
        if seconds_before is None and self.max_hours is not None:
            raise ConfigError(
                "train.max_hours cannot be enforced: the checkpoint this run resumes from does "
                "not record how long the run had trained. Remove train.max_hours, or cap "
                "train.steps instead."
            )
        self._before = seconds_before
        self._started = time.perf_counter()

    @property
    def session_seconds(self) -> float:
        """Wall time since :meth:`start`."""
        return time.perf_counter() - self._started

    @property
    def total_seconds(self) -> float | None:
        """Training wall time of the run so far, over every session (``None`` if unknown)."""
        if self._before is None:
            return None
        return self._before + self.session_seconds

    def spent(self) -> bool:
        """Whether the run has trained for ``max_hours`` (never, without a budget)."""
        total = self.total_seconds
        return self.max_hours is not None and total is not None and total >= self.max_hours * 3600
