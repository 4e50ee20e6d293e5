"""Counter-based random numbers: each draw is a pure function of its coordinates.

A task stream built on this is reproducible by construction: task *i* of seed *s* is the same
whatever was drawn before it, in any process, after any resume. The mixing function is
SplitMix64 (Steele, Lea & Flood 2014, "Fast splittable pseudorandom number generators"),
applied once per coordinate; everything is vectorised with NumPy, so a whole meta-batch of
tasks costs a handful of array operations.
"""

from __future__ import annotations

import numpy as np

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_MANTISSA_SCALE = 2.0**-53


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + _GOLDEN_GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def stream_key(*coordinates: int) -> np.uint64:
    """Mix fixed leading coordinates (e.g. seed and split) once, to reuse with :func:`uniform`."""
    state = np.uint64(0)
    with np.errstate(over="ignore"):
        for coordinate in coordinates:
            state = _splitmix64(state ^ np.uint64(np.int64(coordinate).astype(np.uint64)))
    return state


def uniform(key: np.uint64, *coordinates: int | np.ndarray) -> np.ndarray:
    """Uniform float64 numbers in ``[0, 1)``, one per broadcast element of ``coordinates``.

    ``uniform(stream_key(seed, split), task_ids[:, None], slot_ids[None, :])`` gives a
    ``[tasks, slots]`` array whose every entry depends only on its own coordinates.
    """
    if not coordinates:
        raise ValueError("uniform() needs at least one coordinate besides the key.")
    state: np.ndarray | np.uint64 = key
    with np.errstate(over="ignore"):
        for coordinate in coordinates:
            value = np.asarray(coordinate, dtype=np.int64).astype(np.uint64)
            state = _splitmix64(state ^ value)
    return (state >> np.uint64(11)).astype(np.float64) * _MANTISSA_SCALE
