"""The cold-start partitions of a ratings dataset: existing and new users, existing and new items.

MeLU (Lee et al. 2019, §4.1) divides items and users into existing and new and evaluates four
partitions: existing items for existing users, existing items for new users, new items for
existing users, new items for new users. Here both divisions follow time, so that "new" means
what it means to a running recommender:

- **items** are ordered by release year, then by the time of their first rating, then by id;
  the last ``new_items`` fraction are new (MeLU: movies released from 1998 on, about 20%);
- **users** are ordered by the time of their first rating (ties in a seeded random order); the
  last ``new_users`` fraction, who joined last, are new (MeLU drew its 20% of new users at
  random instead);
- the existing users are shuffled with the seed into validation (``val_users``), test
  (``test_users``) and training users (the rest).

The partitions, each a set of ratings (:meth:`ColdStartSplit.ratings`):

============  ==========================================  ===============================
partition     users                                       items
============  ==========================================  ===============================
``train``     training users                              existing
``val``       validation users                            existing
``warm``      test users (existing, never trained on)     existing
``new-users`` new users                                   existing
``new-items`` every existing user (training included)     new (never trained on)
``new-both``  new users                                   new
============  ==========================================  ===============================

The split is a pure function of the data and the seed: the same on every machine and run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fastadapt.datasets.movielens import MovieLens
from fastadapt.errors import ConfigError

#: The test partitions of MeLU's Table 2, in its order.
TEST_PARTITIONS = ("warm", "new-users", "new-items", "new-both")
PARTITIONS = ("train", "val", *TEST_PARTITIONS)
TRAIN, VAL, TEST, NEW = 0, 1, 2, 3
_USERS = {
    "train": (TRAIN,),
    "val": (VAL,),
    "warm": (TEST,),
    "new-users": (NEW,),
    "new-items": (TRAIN, VAL, TEST),
    "new-both": (NEW,),
}


@dataclass(frozen=True)
class ColdStartSplit:
    """Each user's group (:data:`TRAIN`, :data:`VAL`, :data:`TEST` or :data:`NEW`) and whether
    each item is new, for the rows of a :class:`~fastadapt.datasets.movielens.MovieLens`."""

    user_group: np.ndarray  # int64 [U]
    new_item: np.ndarray  # bool [I]

    def ratings(self, data: MovieLens, partition: str) -> np.ndarray:
        """The indices of the ratings of ``partition`` in ``data`` (see the module's table)."""
        if partition not in _USERS:
            raise ConfigError(
                f"unknown cold-start partition {partition!r}; choose one of "
                f"{', '.join(PARTITIONS)} (e.g. --set eval.partition=new-users)."
            )
        users_in = np.isin(self.user_group[data.rating_user], _USERS[partition])
        new_items = partition in ("new-items", "new-both")
        return np.flatnonzero(users_in & (self.new_item[data.rating_item] == new_items))


def cold_start_split(
    data: MovieLens,
    seed: int = 0,
    *,
    new_users: float = 0.2,
    new_items: float = 0.2,
    val_users: float = 0.1,
    test_users: float = 0.1,
) -> ColdStartSplit:
    """Divide ``data``'s users and items by time (see the module), with ``seed`` for ties and
    for the validation and test users. Fractions are of all users, of all items, and (for
    ``val_users`` and ``test_users``) of the existing users."""
    fractions = {
        "new_users": new_users,
        "new_items": new_items,
        "val_users": val_users,
        "test_users": test_users,
    }
    for key, value in fractions.items():
        if not 0 <= value < 1:
            raise ConfigError(f"{key} must be a fraction in [0, 1), got {value!r}.")
    if val_users + test_users >= 1:
        raise ConfigError(
            f"val_users + test_users must leave training users, got {val_users} + {test_users}."
        )
    rng = np.random.default_rng(seed)
    users, items = len(data.user_ids), len(data.item_ids)
    joined = _first_time(data.rating_user, data.timestamp, users)
    user_order = np.lexsort((rng.permutation(users), joined))
    group = np.full(users, NEW, dtype=np.int64)
    existing = user_order[: users - round(new_users * users)]
    existing = existing[rng.permutation(len(existing))]
    val_end = round(val_users * len(existing))
    test_end = val_end + round(test_users * len(existing))
    group[existing] = TRAIN
    group[existing[:val_end]] = VAL
    group[existing[val_end:test_end]] = TEST
    first_rated = _first_time(data.rating_item, data.timestamp, items)
    item_order = np.lexsort((data.item_ids, first_rated, data.years))
    new_item = np.zeros(items, dtype=bool)
    new_item[item_order[items - round(new_items * items) :]] = True
    return ColdStartSplit(group, new_item)


def _first_time(rows: np.ndarray, times: np.ndarray, count: int) -> np.ndarray:
    """The earliest of ``times`` per row ``0..count-1``; rows without any come last."""
    first = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, rows, times)
    return first
