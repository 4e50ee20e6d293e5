"""Sinusoid tasks: the paper's ranges, and task i a pure function of (seed, split, i)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastadapt.tasks.counter_rng import stream_key, uniform
from fastadapt.tasks.sinusoid import SinusoidTasks


def test_shapes_and_paper_ranges():
    family = SinusoidTasks(shots=10, queries=7, seed=3)
    batch = family.batch(range(500))
    assert batch.support_x.shape == (500, 10, 1) and batch.query_x.shape == (500, 7, 1)
    amplitude, phase = family.parameters(range(500))
    assert amplitude.min() >= 0.1 and amplitude.max() <= 5.0
    assert phase.min() >= 0 and phase.max() <= math.pi
    xs = torch.cat([batch.support_x, batch.query_x], dim=1)
    assert xs.min() >= -5 and xs.max() <= 5
    # y = A sin(x - φ) exactly, for support and query points.
    expected = torch.from_numpy(amplitude[:, None, None]).float() * torch.sin(
        xs - torch.from_numpy(phase[:, None, None]).float()
    )
    ys = torch.cat([batch.support_y, batch.query_y], dim=1)
    assert torch.allclose(ys, expected, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), indices=st.lists(st.integers(0, 10**9), min_size=1, max_size=8))
def test_task_is_a_pure_function_of_its_index(seed, indices):
    family = SinusoidTasks(shots=5, queries=5, seed=seed)
    together = family.batch(indices)
    for position, index in enumerate(indices):
        alone = family.batch([index])
        assert torch.equal(together.support_x[position], alone.support_x[0])
        assert torch.equal(together.query_y[position], alone.query_y[0])


def test_splits_and_seeds_give_different_tasks():
    base = SinusoidTasks(5, 5, seed=0).batch(range(4)).support_x
    for other in (SinusoidTasks(5, 5, seed=1), SinusoidTasks(5, 5, seed=0, split="test")):
        assert not torch.equal(base, other.batch(range(4)).support_x)


def test_uniform_is_uniform_enough():
    u = uniform(stream_key(7, 0), np.arange(200_000))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shots": 0, "queries": 5}, "shots must be a positive integer"),
        ({"shots": 5, "queries": -1}, "queries must be a positive integer"),
        ({"shots": 5, "queries": 5, "split": "dev"}, "split must be one of"),
        ({"shots": 5, "queries": 5, "amplitude": (5.0, 0.1)}, "low <= high"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SinusoidTasks(**kwargs)
