"""Users as tasks: each user's ratings in a cold-start partition, split into support and query.

In MeLU (Lee et al. 2019, §3.2 and Algorithm 1) a task is a user: the model adapts to the items
the user rated (the support set) and is judged on other items the same user rated (the query
set). Here a user's ratings in a partition are put in time order (ties by item id); the first
``shots`` are the support set, as a new user's first ratings would be, and the rest are the
query set: all of them, or a seeded random ``queries`` of them (kept in time order) when there
are more. A user with fewer than ``shots + 1`` ratings in the partition has no query and is left
out; :attr:`UserTasks.skipped` counts them and a warning says how many.

Users have different numbers of query ratings. A batch pads them to the longest and sets
:attr:`~fastadapt.tasks.task.TaskBatch.query_mask`, so that losses and metrics are each user's
mean over their own query ratings: evaluation covers every query rating, none twice.

Each rating is one row of :data:`FEATURES` (float32): the user's four feature codes, the item's
release-year code and item token, then its 18 genre flags. The item token is the MovieLens id of
an item rated in the training partition and 0 (unknown) for any other item, so that a model can
learn an embedding per existing item while new items (never trained on) share the unknown one.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from fastadapt.datasets.movielens import GENRES, USER_FEATURES, MovieLens, year_codes
from fastadapt.errors import ConfigError
from fastadapt.recsys.cold_start import ColdStartSplit
from fastadapt.tasks.task import Task, TaskBatch

FEATURES = (*USER_FEATURES, "year", "item", *GENRES)
#: The leading columns of :data:`FEATURES` that hold integer codes (the rest are genre flags).
CATEGORICAL = len(USER_FEATURES) + 2
ITEM_COLUMN = FEATURES.index("item")


def item_tokens(data: MovieLens, split: ColdStartSplit) -> np.ndarray:
    """Each item's token ``[I]``: its MovieLens id if the training partition rates it, else 0."""
    trained = np.zeros(len(data.item_ids), dtype=bool)
    trained[data.rating_item[split.ratings(data, "train")]] = True
    return np.where(trained, data.item_ids, 0)


def rating_features(
    data: MovieLens, user_features: np.ndarray, item_rows: np.ndarray, tokens: np.ndarray
) -> np.ndarray:
    """Model inputs ``[n, len(FEATURES)]`` (float32) for the user codes ``[n, 4]`` and items
    ``item_rows`` ``[n]`` of ``n`` ratings; ``tokens`` from :func:`item_tokens`."""
    return np.concatenate(
        [
            user_features,
            year_codes(data.years)[item_rows, None],
            tokens[item_rows, None],
            data.genres[item_rows],
        ],
        axis=1,
        dtype=np.float32,
    )


class UserTasks:
    """The users of one partition of a :class:`ColdStartSplit`, one task each (see the module).

    Args:
        data: the ratings.
        split: the cold-start split of ``data``.
        partition: ``train``, ``val``, ``warm``, ``new-users``, ``new-items`` or ``new-both``.
        shots: support ratings per user (the first in time order).
        queries: at most this many query ratings per user (a seeded random subset if more).
        seed: seeds the query subsets and, with ``shuffle``, the order of users.
        shuffle: task ``i`` is user ``order_e[i mod U]`` with a fresh seeded order for every
            epoch ``e = i // U``, without end (training); otherwise task ``i`` is the ``i``-th
            user by id, for ``0 <= i < len(self)`` (evaluation).
    """

    def __init__(
        self,
        data: MovieLens,
        split: ColdStartSplit,
        partition: str,
        shots: int,
        queries: int,
        seed: int,
        *,
        shuffle: bool = False,
    ) -> None:
        if shots < 1 or queries < 1:
            raise ConfigError(
                f"shots and queries must be positive, got {shots} and {queries}; e.g. "
                "--set task.shots=10."
            )
        self.partition, self.shots, self.queries = partition, shots, queries
        self.seed, self.shuffle = seed, shuffle
        chosen = split.ratings(data, partition)
        chosen = chosen[
            np.lexsort(
                (
                    data.rating_item[chosen],
                    data.timestamp[chosen],
                    data.rating_user[chosen],
                )
            )
        ]
        users, starts, counts = np.unique(
            data.rating_user[chosen], return_index=True, return_counts=True
        )
        keep = counts > shots
        self.skipped = int((~keep).sum())
        self.users = data.user_ids[users[keep]]
        self._starts, self._counts = starts[keep], counts[keep]
        if not keep.any():
            raise ConfigError(
                f"no user of the {partition} partition of {data.name} has more than {shots} "
                f"ratings ({len(users)} users, at most {counts.max(initial=0)} ratings each); "
                "lower the support size (task.shots or eval.shots)."
            )
        if self.skipped:
            warnings.warn(
                f"{data.name} {partition}: {self.skipped} of {len(users)} users have fewer than "
                f"{shots + 1} ratings (support {shots} + 1 query) and are left out.",
                stacklevel=2,
            )
        inputs = rating_features(
            data,
            data.user_features[data.rating_user[chosen]],
            data.rating_item[chosen],
            item_tokens(data, split),
        )
        self._x = torch.from_numpy(inputs)
        self._y = torch.from_numpy(data.rating[chosen]).unsqueeze(1)
        self._epoch: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        """The number of users with at least ``shots + 1`` ratings in the partition."""
        return len(self.users)

    @property
    def examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rating of the partition: inputs ``[R, len(FEATURES)]`` and ratings ``[R, 1]``."""
        return self._x, self._y

    def task(self, index: int) -> Task:
        """The task of index ``index``: one user's support and query ratings."""
        user = self._user(index)
        start = self._starts[user]
        rows = np.arange(start, start + self._counts[user])
        support, query = rows[: self.shots], rows[self.shots :]
        if len(query) > self.queries:
            rng = np.random.default_rng([self.seed, 1, index])
            query = np.sort(rng.choice(query, self.queries, replace=False))
        return Task(self._x[support], self._y[support], self._x[query], self._y[query])

    def batch(self, indices: list[int] | range) -> TaskBatch:
        """The tasks of ``indices``, query sets padded and masked."""
        return TaskBatch.stack([self.task(index) for index in indices])

    def _user(self, index: int) -> int:
        if not self.shuffle:
            if not 0 <= index < len(self):
                raise IndexError(
                    f"task {index} asked of the {len(self)} users of the {self.partition} "
                    "partition; evaluate at most that many tasks."
                )
            return index
        epoch, position = divmod(index, len(self))
        if self._epoch is None or self._epoch[0] != epoch:
            order = np.random.default_rng([self.seed, 0, epoch]).permutation(len(self))
            self._epoch = (epoch, order)
        return int(self._epoch[1][position])
