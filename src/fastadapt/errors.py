"""Exceptions raised at the public boundary.

Every error says what was wrong and how to fix it. The CLI turns any of them into a message on
stderr and a non-zero exit code; library users can catch :class:`FastAdaptError` as a whole.
"""

from __future__ import annotations


class FastAdaptError(Exception):
    """Base class of every error fastadapt raises on purpose."""


class ConfigError(FastAdaptError, ValueError):
    """A preset name, a ``--set`` override or a constructor argument is invalid."""


class RunDirectoryError(FastAdaptError):
    """An output folder cannot be used as asked (it holds another run, or no run)."""


class CheckpointError(FastAdaptError):
    """A checkpoint is missing, corrupt, or does not belong to the run it is loaded into."""


class SupportSetError(FastAdaptError, ValueError):
    """A support set cannot be adapted to: too few classes, a class without examples, inputs
    of another shape than the model's, or more classes than a fixed classifier head has."""


class NonFiniteLossError(FastAdaptError, FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left intact."""


class DistributedError(FastAdaptError, RuntimeError):
    """A distributed job cannot start or continue: a process died, stalled past the timeout or
    cannot be reached, or the launcher failed; the last good checkpoint is left intact."""


class SpaceError(FastAdaptError, ValueError):
    """An action of the wrong shape, or a task outside an environment's task space
    (:mod:`fastadapt.rl`)."""
