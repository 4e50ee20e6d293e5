"""Recommendations for a new user: a handful of their ratings in, a ranked list of unseen movies
with predicted ratings out (``fastadapt recommend``).

As MeLU recommends (Lee et al. 2019, end of §3.2): the model is locally updated on the user's
ratings (the support set), then predicts a rating for every item the user has not rated, and
the items with the highest predictions are recommended. The user's ratings are a CSV file with
a header line naming an ``item`` column (MovieLens item ids) and a ``rating`` column (1 to 5);
other columns, such as a title to remember the movie by, are ignored::

    item,rating,title
    50,5,Star Wars (1977)
    313,4,Titanic (1997)
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastadapt.datasets.movielens import USER_FEATURES, MovieLens, MovieLensError, user_code
from fastadapt.datasets.registry import RATINGS, dataset_root
from fastadapt.errors import ConfigError, FastAdaptError
from fastadapt.inference.model import LoadedModel
from fastadapt.recsys.cold_start import cold_start_split
from fastadapt.recsys.user_tasks import item_tokens, rating_features

COLUMNS = ("item", "rating")


class RatingsFileError(FastAdaptError, ValueError):
    """A user's ratings file cannot be used: missing, malformed, unknown items, ratings outside
    1..5, or fewer ratings than the model adapts to."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended movie: its MovieLens id, title and predicted rating (not clipped)."""

    item: int
    title: str
    predicted: float


def read_ratings_csv(
    path: str | os.PathLike[str], data: MovieLens
) -> tuple[np.ndarray, np.ndarray]:
    """The item rows (in ``data``) and ratings (float32) of a user's ratings file.

    Raises:
        RatingsFileError: the file is missing or not UTF-8 text, lacks the ``item`` or
            ``rating`` column, has an id that is not a whole number or not an item of ``data``
            (every unknown id is named), a rating outside 1..5, an item rated twice, or no
            rating at all.
    """
    path = Path(path)
    if not path.is_file():
        raise RatingsFileError(f"{path} does not exist; pass a CSV file of item,rating lines.")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise RatingsFileError(
                    f"{path} needs a header line naming the columns item and rating (MovieLens "
                    f"item id, 1-5 stars); its first line is {reader.fieldnames}."
                )
            rows = [(line, row["item"], row["rating"]) for line, row in enumerate(reader, 2)]
    except UnicodeDecodeError as error:
        raise RatingsFileError(f"{path} is not UTF-8 text ({error}).") from error
    items, ratings, lines = [], [], {}
    for line, item_text, rating_text in rows:
        item, rating = _parse_line(path, line, item_text, rating_text)
        if item in lines:
            raise RatingsFileError(
                f"{path} rates item {item} twice (lines {lines[item]} and {line}); keep one."
            )
        lines[item] = line
        items.append(item)
        ratings.append(rating)
    if not items:
        raise RatingsFileError(f"{path} holds no ratings; add item,rating lines.")
    try:
        item_rows = data.item_rows(items)
    except MovieLensError as error:
        raise RatingsFileError(f"{path}: {error}") from None
    return item_rows, np.asarray(ratings, dtype=np.float32)


def recommend(
    model: LoadedModel,
    ratings: str | os.PathLike[str],
    *,
    top: int = 10,
    user: Mapping[str, str] | None = None,
) -> list[Recommendation]:
    """The ``top`` unseen movies for the user whose ratings are in the CSV file ``ratings``.

    Args:
        model: a model trained on a MovieLens family (e.g. preset ``movielens100k-melu``).
        ratings: the user's ratings (see the module); at least ``eval.shots`` of them.
        top: how many movies to recommend.
        user: what the user tells of themselves, any of ``gender`` (M/F), ``age`` (years),
            ``occupation`` (one of the dataset's) and ``zip``; the others are unknown (code
            0, embedded as zeros).

    Raises:
        ConfigError: the model was not trained on MovieLens, ``top`` is not positive, or a user
            feature is not valid.
        RatingsFileError: the ratings file cannot be used (see :func:`read_ratings_csv`), or
            holds fewer ratings than the model's support size.
    """
    config = model.config
    family = config.task.family
    if family not in RATINGS:
        raise ConfigError(
            f"{model.source} was trained on {family}, not on MovieLens; recommend needs a "
            "model trained on a MovieLens family (e.g. preset movielens100k-melu)."
        )
    if top < 1:
        raise ConfigError(f"top must be a positive number of movies, got {top}.")
    codes = np.zeros(len(USER_FEATURES), dtype=np.int64)
    for key, value in (user or {}).items():
        code = user_code(family, key, value)  # refuses an unknown feature or value
        codes[USER_FEATURES.index(key)] = code
    root = Path(config.data.root).expanduser() if config.data.root else None
    data = RATINGS[family].load(dataset_root(family, root), False)
    rated, stars = read_ratings_csv(ratings, data)
    if len(rated) < config.eval.shots:
        raise RatingsFileError(
            f"{ratings} has {len(rated)} rating(s), but this model adapts to a user's first "
            f"{config.eval.shots} (eval.shots): rate {config.eval.shots - len(rated)} more movies."
        )
    tokens = item_tokens(data, cold_start_split(data, config.data.split_seed))

    def inputs(rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(rating_features(data, np.tile(codes, (len(rows), 1)), rows, tokens))

    predictor = model.adapt(inputs(rated), torch.from_numpy(stars).unsqueeze(1))
    unseen = np.setdiff1d(np.arange(len(data.item_ids)), rated)
    scores = predictor.predict(inputs(unseen))[:, 0].double().numpy()
    best = np.lexsort((data.item_ids[unseen], -scores))[:top]  # ties: smaller id first
    return [
        Recommendation(int(data.item_ids[unseen[i]]), data.titles[unseen[i]], float(scores[i]))
        for i in best
    ]


def _parse_line(
    path: Path, line: int, item_text: str | None, rating_text: str | None
) -> tuple[int, float]:
    """One line's item id and rating, or a :class:`RatingsFileError` naming the line."""
    item_text, rating_text = (item_text or "").strip(), (rating_text or "").strip()
    if not item_text.isdigit():
        raise RatingsFileError(
            f"{path} line {line}: item {item_text!r} is not a MovieLens item id (a whole number)."
        )
    try:
        rating = float(rating_text)
    except ValueError:
        raise RatingsFileError(
            f"{path} line {line}: rating {rating_text!r} is not a number from 1 to 5."
        ) from None
    if not 1 <= rating <= 5:
        raise RatingsFileError(
            f"{path} line {line}: rating {rating_text} is outside 1..5 (MovieLens stars)."
        )
    return int(item_text), rating
