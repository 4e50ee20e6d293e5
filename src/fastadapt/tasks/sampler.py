"""N-way K-shot episodes over a :class:`ClassSet` (Vinyals et al. 2016, "Matching Networks for
One Shot Learning", §4; the protocol of Snell et al. 2017 and Finn et al. 2017).

An episode draws ``ways`` distinct classes, then ``shots + queries`` distinct examples of each:
the first ``shots`` are the support set, the rest the query set, and each class is labelled by
its position in the episode (``0..ways-1``), so labels are remapped in every task. Episode *i*
is a pure function of ``(seed, stream, i)`` built on counter-based randomness
(:mod:`fastadapt.tasks.counter_rng`): the same evaluation episodes every run, on every machine,
in any number of workers, and a resumed run continues the same stream.

A batch of episodes is sampled with a handful of NumPy operations over all its episodes at once
(no Python loop per episode or per image) and its images are fetched with one
:meth:`ClassSet.gather`: one uint8 gather (one per rotation group on a rotation view) and one
float conversion, support images of every task first, then query images, so that both are
views of one array (DESIGN.md §3, principle 3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fastadapt.datasets.class_set import ClassSet
from fastadapt.errors import ConfigError
from fastadapt.tasks.counter_rng import stream_key, uniform
from fastadapt.tasks.task import TaskBatch

_CLASS_DRAWS, _EXAMPLE_DRAWS, _GROUP_DRAWS = 0, 1, 2
_SHUFFLE = 0


class FewShotSampler:
    """N-way K-shot episodes; episode i is a pure function of (seed, i).

    Args:
        classes: the classes to draw from (e.g. a split of a dataset).
        ways: classes per episode.
        shots: support examples per class.
        queries: query examples per class.
        seed: the seed of the episode stream.
        stream: a second seed coordinate, to keep e.g. validation and test episodes apart.
        groups: optional class-id groups; each episode then draws one group uniformly and all
            its ``ways`` classes from it (Lake et al. 2015's within-alphabet Omniglot tasks,
            with the groups of :meth:`Omniglot.lake`).

    Within a task, support and query examples are ordered class by class (the ``shots``
    examples of label 0, then label 1, ...). For a given class set and protocol, episode ``i``
    depends only on ``(seed, stream, i)``.
    """

    def __init__(
        self,
        classes: ClassSet,
        ways: int,
        shots: int,
        queries: int,
        seed: int = 0,
        stream: int = 0,
        groups: Sequence[np.ndarray] | None = None,
    ) -> None:
        for name, value in {"ways": ways, "shots": shots, "queries": queries}.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(
                    f"{name} must be a positive integer, got {value!r}; "
                    "e.g. ways=5, shots=1, queries=15."
                )
        if ways > classes.num_classes:
            raise ConfigError(
                f"ways={ways} is more than the {classes.num_classes} classes of this set; "
                "lower ways or use a split with more classes."
            )
        counts = classes.examples_per_class()
        per_class = shots + queries
        too_small = np.flatnonzero(counts < per_class)
        if too_small.size:
            first = int(too_small[0])
            raise ConfigError(
                f"class {classes.class_names[first]!r} has only {counts[first]} examples, fewer "
                f"than shots + queries = {shots} + {queries} = {per_class} "
                f"({too_small.size} classes are that small); lower shots or queries, or leave "
                "those classes out with ClassSet.subset()."
            )
        self._groups = None if groups is None else _group_table(groups, ways, classes.num_classes)
        self.classes = classes
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.seed, self.stream = int(seed), int(stream)
        self._class_key = stream_key(seed, stream, _CLASS_DRAWS)
        self._example_key = stream_key(seed, stream, _EXAMPLE_DRAWS)
        self._group_key = stream_key(seed, stream, _GROUP_DRAWS)
        self._counts = counts
        self._largest = int(counts.max())
        self._class_plan = _plan(self.ways, classes.num_classes, classes.num_classes)
        self._example_plan = _plan(per_class, int(counts.min()), self._largest)
        self._way_ids = np.arange(self.ways)[None, :, None]

    def episode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Class ids ``[ways]`` and example ids ``[ways, shots + queries]`` of episode ``index``.

        Example ids are numbers within each class (see :meth:`ClassSet.gather`); the first
        ``shots`` of each row are the support examples.
        """
        classes, examples = self._draw(_as_indices([index]))
        return classes[0], examples[0]

    def batch(self, indices: Sequence[int] | range) -> TaskBatch:
        """The episodes with these indices, stacked into a :class:`TaskBatch`.

        ``support_x`` is ``[B, ways*shots, C, H, W]`` float32 in ``[0, 1]``, ``support_y``
        ``[B, ways*shots]`` int64 in ``0..ways-1``; ``query_x`` and ``query_y`` likewise with
        ``ways*queries`` examples.
        """
        ids = _as_indices(indices)
        classes, examples = self._draw(ids)
        tasks, ways, shots = ids.size, self.ways, self.shots
        per_image = np.broadcast_to(classes[:, :, None], examples.shape)
        # Support images of every task first, then query images: one gather, two views.
        class_ids = np.concatenate(
            (per_image[:, :, :shots].reshape(-1), per_image[:, :, shots:].reshape(-1))
        )
        example_ids = np.concatenate(
            (examples[:, :, :shots].reshape(-1), examples[:, :, shots:].reshape(-1))
        )
        images = self.classes.gather(class_ids, example_ids[:, None])
        images = images.view(images.shape[0], *images.shape[2:])
        support = tasks * ways * shots
        labels = torch.arange(ways)
        return TaskBatch(
            images[:support].view(tasks, ways * shots, *images.shape[1:]),
            labels.repeat_interleave(shots).repeat(tasks, 1),
            images[support:].view(tasks, ways * self.queries, *images.shape[1:]),
            labels.repeat_interleave(self.queries).repeat(tasks, 1),
        )

    def _draw(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        classes = self._draw_classes(ids)
        examples = _distinct(
            self._example_key,
            (ids[:, None, None], self._way_ids),
            self._counts[classes],
            self.shots + self.queries,
            self._largest,
            self._example_plan,
        )
        return classes, examples

    def _draw_classes(self, ids: np.ndarray) -> np.ndarray:
        num_classes = self.classes.num_classes
        if self._groups is None:
            return _distinct(
                self._class_key,
                (ids[:, None],),
                np.full(ids.shape, num_classes),
                self.ways,
                num_classes,
                self._class_plan,
            )
        table, sizes = self._groups
        group = np.minimum(
            (uniform(self._group_key, ids) * len(sizes)).astype(np.int64), len(sizes) - 1
        )
        positions = _distinct(
            self._class_key,
            (ids[:, None],),
            sizes[group],
            self.ways,
            table.shape[1],
            _plan(self.ways, int(sizes.min()), table.shape[1]),
        )
        return np.take_along_axis(table[group], positions, axis=1)


def _group_table(
    groups: Sequence[np.ndarray], ways: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Groups as a padded ``[G, largest]`` table of class ids, and their sizes."""
    members = [np.asarray(g, dtype=np.int64).reshape(-1) for g in groups]
    if not members:
        raise ConfigError("groups is empty; pass at least one group of class ids, or None.")
    for position, group in enumerate(members):
        if group.size < ways:
            raise ConfigError(
                f"group {position} has {group.size} classes, fewer than ways={ways}; leave it "
                "out or lower ways."
            )
        if group.min() < 0 or group.max() >= num_classes or np.unique(group).size != group.size:
            raise ConfigError(
                f"group {position} must hold distinct class ids in 0..{num_classes - 1}."
            )
    sizes = np.array([g.size for g in members])
    table = np.zeros((len(members), sizes.max()), dtype=np.int64)
    for position, group in enumerate(members):
        table[position, : group.size] = group
    return table, sizes


def _as_indices(indices: Sequence[int] | range) -> np.ndarray:
    if isinstance(indices, range):
        ids = np.arange(indices.start, indices.stop, indices.step, dtype=np.int64)
    else:
        ids = np.asarray(indices, dtype=np.int64)
    if ids.ndim != 1 or ids.size == 0 or ids.min() < 0:
        raise ConfigError(
            f"episode indices must be a non-empty sequence of integers >= 0, got {indices!r}."
        )
    return ids


def _plan(k: int, smallest: int, largest: int) -> int:
    """How to draw ``k`` distinct items of populations of ``smallest..largest`` items.

    Returns ``_SHUFFLE`` (rank ``largest`` uniforms per row, which is cheapest when ``k`` is
    close to the population size) or the number of i.i.d. draws to make at first (about 1.25
    times the expected number needed to see ``k`` distinct items: the coupon collector's sum).
    """
    expected = float(np.sum(smallest / (smallest - np.arange(k))))
    draws = int(1.25 * expected) + 4
    return _SHUFFLE if largest <= draws else draws


def _distinct(
    key: np.uint64,
    rows: tuple[np.ndarray, ...],
    sizes: np.ndarray,
    k: int,
    largest: int,
    plan: int,
) -> np.ndarray:
    """``k`` distinct integers in ``0..sizes-1`` per row, in a uniformly random order.

    ``rows`` are the counter coordinates of the rows (each with a trailing axis of length 1),
    ``sizes`` their population sizes. Either every row's first ``k`` items of a random
    permutation of ``0..size-1`` (``plan == _SHUFFLE``), or the first ``k`` distinct values of
    the i.i.d. sequence ``floor(size * u_t)``, ``t = 0, 1, ...``; both depend on nothing but the
    row's coordinates.
    """
    if plan == _SHUFFLE:
        slots = np.arange(largest)
        u = uniform(key, *rows, slots)
        if sizes.min() < largest:
            u = np.where(slots >= sizes[..., None], 2.0, u)
        # The first k uniforms of a row are distinct (ties among 2**53 values are negligible)
        # and below the masked 2.0s, so any sorting algorithm gives the same first k.
        return np.argsort(u, axis=-1)[..., :k]
    draws = plan
    limit = sizes[..., None]
    while True:
        u = uniform(key, *rows, np.arange(draws))
        values = np.minimum((u * limit).astype(np.int64), limit - 1)
        chosen = _first_distinct(values.reshape(-1, draws), k)
        if chosen is not None:
            return chosen.reshape(*values.shape[:-1], k)
        draws *= 2  # a longer prefix of the same sequences: earlier rows are unchanged


def _first_distinct(values: np.ndarray, k: int) -> np.ndarray | None:
    """The first ``k`` distinct values of each row of ``values`` ``[R, T]``, in order of first
    appearance, or ``None`` if some row has fewer than ``k``."""
    order = np.argsort(values, axis=1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=1)
    first = np.ones(values.shape, dtype=bool)
    np.put_along_axis(first, order[:, 1:], ranked[:, 1:] != ranked[:, :-1], axis=1)
    seen = np.cumsum(first, axis=1)
    if seen[:, -1].min() < k:
        return None
    return values[first & (seen <= k)].reshape(values.shape[0], k)
