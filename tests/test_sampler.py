"""FewShotSampler: valid N-way K-shot episodes, each a pure function of (seed, stream, index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastadapt.datasets.class_set import ClassSet
from fastadapt.errors import ConfigError
from fastadapt.tasks.counter_rng import stream_key
from fastadapt.tasks.sampler import FewShotSampler, _distinct

SIDE = 3


def class_set(counts: list[int], rotations: bool = False) -> ClassSet:
    """Classes with the given numbers of examples; every image is distinct noise."""
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.random.default_rng(1).integers(0, 256, (labels.size, SIDE, SIDE), dtype=np.uint8)
    classes = ClassSet(images, labels, [f"alphabet/character{i:02d}" for i in range(len(counts))])
    return classes.with_rotations() if rotations else classes


def check_episode(classes: ClassSet, sampler: FewShotSampler, class_ids, example_ids) -> None:
    counts = classes.examples_per_class()
    assert class_ids.shape == (sampler.ways,)
    assert example_ids.shape == (sampler.ways, sampler.shots + sampler.queries)
    assert len(set(class_ids.tolist())) == sampler.ways
    assert class_ids.min() >= 0 and class_ids.max() < classes.num_classes
    for class_id, row in zip(class_ids, example_ids):
        # Distinct examples of each class, so no (class, example) is in support and query.
        assert len(set(row.tolist())) == row.size
        assert row.min() >= 0 and row.max() < counts[class_id]


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(6, 40), min_size=2, max_size=12),
    ways=st.integers(1, 12),
    shots=st.integers(1, 3),
    queries=st.integers(1, 3),
    seed=st.integers(0, 2**40),
    indices=st.lists(st.integers(0, 10**12), min_size=1, max_size=5),
)
def test_batches_are_valid_episodes_and_pure_functions_of_the_index(
    counts, ways, shots, queries, seed, indices
):
    classes = class_set(counts)
    ways = min(ways, len(counts))
    sampler = FewShotSampler(classes, ways, shots, queries, seed=seed)
    batch = sampler.batch(indices)
    n_support, n_query = ways * shots, ways * queries
    assert batch.support_x.shape == (len(indices), n_support, 1, SIDE, SIDE)
    assert batch.query_x.shape == (len(indices), n_query, 1, SIDE, SIDE)
    assert batch.support_x.dtype == torch.float32
    labels = torch.arange(ways)
    assert torch.equal(batch.support_y, labels.repeat_interleave(shots).expand(len(indices), -1))
    assert torch.equal(batch.query_y, labels.repeat_interleave(queries).expand(len(indices), -1))
    for position, index in enumerate(indices):
        class_ids, example_ids = sampler.episode(index)
        check_episode(classes, sampler, class_ids, example_ids)
        images = classes.gather(class_ids, example_ids)  # [ways, shots+queries, 1, H, W]
        support = images[:, :shots].reshape(n_support, 1, SIDE, SIDE)
        query = images[:, shots:].reshape(n_query, 1, SIDE, SIDE)
        assert torch.equal(batch.support_x[position], support)
        assert torch.equal(batch.query_x[position], query)
        again = sampler.batch([index + 1, index])
        assert torch.equal(again.query_x[1], batch.query_x[position])


@pytest.mark.parametrize(
    ("counts", "ways", "shots", "queries"),
    [
        ([20] * 30, 5, 1, 15),  # Omniglot-like: shuffle all 20 examples of a class
        ([600] * 30, 5, 5, 15),  # mini-ImageNet-like: i.i.d. draws, duplicates skipped
        ([7] * 5, 5, 3, 4),  # every class and every example in every episode
        ([3, 9, 5, 30, 4, 12], 4, 1, 2),  # unequal classes
    ],
)
def test_episodes_are_valid_and_uniform(counts, ways, shots, queries):
    classes = class_set(counts)
    sampler = FewShotSampler(classes, ways, shots, queries, seed=5)
    episodes = 3000
    class_ids = np.empty((episodes, ways), np.int64)
    first_example = np.empty(episodes, np.int64)
    for index in range(episodes):
        ids, examples = sampler.episode(index)
        if index < 50:
            check_episode(classes, sampler, ids, examples)
        class_ids[index], first_example[index] = ids, examples[0, 0]
    # Each class lands at label 0 about equally often, and label 0's first example of a
    # class with m examples is each of them with probability 1/m.
    frequency = np.bincount(class_ids[:, 0], minlength=len(counts)) / episodes
    assert np.abs(frequency - 1 / len(counts)).max() < 4 * np.sqrt(1 / len(counts) / episodes)
    biggest = np.argmax(counts)
    picks = first_example[class_ids[:, 0] == biggest]
    if counts[biggest] <= 30:
        seen = np.bincount(picks, minlength=counts[biggest]) / picks.size
        assert np.abs(seen - 1 / counts[biggest]).max() < 5 * np.sqrt(
            1 / counts[biggest] / picks.size
        )
    else:
        assert abs(picks.mean() - (counts[biggest] - 1) / 2) < 0.1 * counts[biggest]


def test_rotated_classes_come_rotated():
    classes = class_set([4] * 3, rotations=True)
    sampler = FewShotSampler(classes, 12, 1, 1, seed=2)
    batch = sampler.batch([7])
    class_ids, example_ids = sampler.episode(7)
    base = classes.images.reshape(3, 4, SIDE, SIDE)
    for way, (class_id, examples) in enumerate(zip(class_ids, example_ids)):
        character, turns = divmod(int(class_id), 4)
        expected = np.rot90(base[character, examples[0]], turns) / np.float32(255)
        assert np.array_equal(batch.support_x[0, way, 0].numpy(), expected.astype(np.float32))


def test_seed_and_stream_change_the_episodes():
    classes = class_set([10] * 20)
    reference = FewShotSampler(classes, 5, 1, 2, seed=0).episode(3)[0]
    for other in (FewShotSampler(classes, 5, 1, 2, seed=1), FewShotSampler(classes, 5, 1, 2, 0, 1)):
        assert not np.array_equal(other.episode(3)[0], reference)


def test_episodes_are_the_same_in_another_process():
    classes = class_set([10] * 20)
    sampler = FewShotSampler(classes, 5, 2, 3, seed=11, stream=2)
    here = [sampler.episode(i)[1].tolist() for i in (0, 99, 10**9)]
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); import numpy as np;"
        "from test_sampler import class_set; from fastadapt.tasks.sampler import FewShotSampler;"
        "s = FewShotSampler(class_set([10] * 20), 5, 2, 3, seed=11, stream=2);"
        "print(json.dumps([s.episode(i)[1].tolist() for i in (0, 99, 10**9)]))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) == here


@pytest.mark.parametrize(
    ("ways", "shots", "queries", "message"),
    [
        (0, 1, 1, "ways must be a positive integer, got 0"),
        (5, -1, 1, "shots must be a positive integer, got -1"),
        (5, 1, 0, "queries must be a positive integer, got 0"),
        (5, 1.5, 1, "shots must be a positive integer"),
        (7, 1, 1, "ways=7 is more than the 6 classes"),
        (3, 4, 2, r"'alphabet/character01' has only 5 examples.*4 \+ 2 = 6 \(3 classes"),
    ],
)
def test_impossible_protocols_are_refused(ways, shots, queries, message):
    classes = class_set([8, 5, 9, 4, 3, 10])
    with pytest.raises(ConfigError, match=message):
        FewShotSampler(classes, ways, shots, queries)


def test_bad_indices_are_refused():
    sampler = FewShotSampler(class_set([5] * 5), 2, 1, 1)
    for indices in ([], [-1], [[1, 2]]):
        with pytest.raises(ConfigError, match="episode indices"):
            sampler.batch(indices)


def test_draws_do_not_depend_on_how_many_are_made_at_first():
    # The i.i.d. plan takes the first k distinct values of an endless sequence: starting with
    # too few draws (and doubling) must give what a long prefix gives.
    key = stream_key(3, 0)
    rows = (np.arange(300)[:, None],)
    sizes = np.full(300, 10)
    assert np.array_equal(
        _distinct(key, rows, sizes, 8, 10, 8), _distinct(key, rows, sizes, 8, 10, 400)
    )
