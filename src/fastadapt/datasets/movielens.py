"""MovieLens 100K and 1M (Harper & Konstan 2015, GroupLens): 1-5 star ratings of movies by
users, with the users' demographics and the movies' genres and release years.

A dataset is read from its official zip (``ml-100k.zip``, ``ml-1m.zip``) or from the folder it
extracts to, found in ``root`` itself, in ``root/ml-100k/`` or as ``root/ml-100k.zip``; with
``download=True`` a missing zip is fetched from GroupLens and its md5 verified. An archive that
is already there is used even if its md5 is not the official one (with a warning), as long as
it holds the dataset's files. The files are latin-1 text (titles such as "Misérables (1995)").

Every feature becomes a small integer code, ``0`` meaning unknown, for models to embed (MeLU,
Lee et al. 2019, §3.1 Eqs. 1-2):

- gender: 1 male, 2 female;
- age: the seven groups of MovieLens-1M's README (under 18, 18-24, 25-34, 35-44, 45-49, 50-55,
  56+) as 1..7; MovieLens-100K's ages in years are put in the same groups;
- occupation: 1..21, the dataset's own list (:data:`OCCUPATIONS`);
- zip: the first character of the zip code, 1..10 for the digits 0-9 (the US postal zone), 11
  for anything else (Canadian and malformed codes);
- release year: ``year - 1899`` for 1900-2000 (clamped), 0 unknown;
- genres: 18 flags in the order of :data:`GENRES` (100K's "unknown" genre sets no flag).
"""

from __future__ import annotations

import re
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastadapt.datasets._common import DatasetError
from fastadapt.errors import ConfigError
from fastadapt.io.archives import ArchiveError, open_zip
from fastadapt.io.download import RemoteFile, download, md5sum

GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
USER_FEATURES = ("gender", "age", "occupation", "zip")
#: Codes per user feature, 0 (unknown) included.
USER_CARDINALITIES = (3, 8, 22, 12)
#: Codes of the release year, 0 (unknown) included.
YEAR_CARDINALITY = 102
#: Lower bounds of MovieLens-1M's age groups ("1: Under 18", "18: 18-24", ... "56: 56+").
AGE_GROUPS = (1, 18, 25, 35, 45, 50, 56)
GENDERS = ("M", "F")
OCCUPATIONS = {
    "movielens-100k": (
        "administrator",
        "artist",
        "doctor",
        "educator",
        "engineer",
        "entertainment",
        "executive",
        "healthcare",
        "homemaker",
        "lawyer",
        "librarian",
        "marketing",
        "none",
        "other",
        "programmer",
        "retired",
        "salesman",
        "scientist",
        "student",
        "technician",
        "writer",
    ),
    "movielens-1m": (
        "other",
        "academic/educator",
        "artist",
        "clerical/admin",
        "college/grad student",
        "customer service",
        "doctor/health care",
        "executive/managerial",
        "farmer",
        "homemaker",
        "K-12 student",
        "lawyer",
        "programmer",
        "retired",
        "sales/marketing",
        "scientist",
        "self-employed",
        "technician/engineer",
        "tradesman/craftsman",
        "unemployed",
        "writer",
    ),
}
_TITLE_YEAR = re.compile(r"\((\d{4})\)\s*$")
_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


class MovieLensError(DatasetError):
    """The MovieLens files are missing, incomplete, malformed, or not MovieLens."""


@dataclass(frozen=True)
class MovieLensVariant:
    """One MovieLens release: its official archive, the files read, and the largest item id."""

    remote: RemoteFile
    folder: str
    ratings: str
    items: str
    users: str
    max_item_id: int

    @property
    def files(self) -> tuple[str, str, str]:
        return (self.ratings, self.items, self.users)


_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
VARIANTS = {
    "movielens-100k": MovieLensVariant(
        RemoteFile(
            _GROUPLENS + "ml-100k.zip",
            "ml-100k.zip",
            "0e33842e24a9c977be4e0107933c0723",
            4_924_029,
        ),
        "ml-100k",
        "u.data",
        "u.item",
        "u.user",
        1682,
    ),
    "movielens-1m": MovieLensVariant(
        RemoteFile(_GROUPLENS + "ml-1m.zip", "ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
        "ml-1m",
        "ratings.dat",
        "movies.dat",
        "users.dat",
        3952,
    ),
}


@dataclass(frozen=True)
class MovieLens:
    """A MovieLens release as arrays: users, items, and one row per rating.

    Users and items are rows ``0..U-1`` and ``0..I-1`` of their tables, sorted by MovieLens id;
    ``rating_user`` and ``rating_item`` index those rows.
    """

    name: str
    user_ids: np.ndarray  # int64 [U], MovieLens user ids
    user_features: np.ndarray  # int64 [U, 4], codes of USER_FEATURES
    item_ids: np.ndarray  # int64 [I], MovieLens item ids
    titles: tuple[str, ...]
    years: np.ndarray  # int64 [I], release year (0 unknown)
    genres: np.ndarray  # float32 [I, 18], GENRES flags
    rating_user: np.ndarray  # int64 [R]
    rating_item: np.ndarray  # int64 [R]
    rating: np.ndarray  # float32 [R], 1..5
    timestamp: np.ndarray  # int64 [R], seconds since 1970

    def item_rows(self, ids: Sequence[int]) -> np.ndarray:
        """The rows of MovieLens item ids; :class:`MovieLensError` names every unknown id."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.item_ids, ids).clip(max=len(self.item_ids) - 1)
        unknown = sorted({int(i) for i in ids[self.item_ids[rows] != ids]})
        if unknown:
            raise MovieLensError(
                f"{self.name} has no item with id {', '.join(map(str, unknown))} (its ids run "
                f"from {self.item_ids[0]} to {self.item_ids[-1]})."
            )
        return rows


def year_codes(years: np.ndarray) -> np.ndarray:
    """The codes of release years: ``year - 1899`` clamped to 1..101, 0 if unknown (0)."""
    return np.where(years > 0, np.clip(years, 1900, 2000) - 1899, 0)


def user_code(name: str, feature: str, value: str) -> int:
    """The code of one user feature of dataset ``name``, from its text in the user file.

    ``gender`` is M or F; ``age`` is in years for MovieLens-100K and one of
    :data:`AGE_GROUPS` for MovieLens-1M; ``occupation`` a name of :data:`OCCUPATIONS` (or, for
    MovieLens-1M, its code 0-20); ``zip`` a zip code. Raises
    :class:`~fastadapt.errors.ConfigError` naming what is not valid.
    """
    value = value.strip()
    if feature == "gender":
        if value not in GENDERS:
            raise ConfigError(f"gender must be M or F, got {value!r}.")
        return GENDERS.index(value) + 1
    if feature == "age":
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"age must be a whole number of years, got {value!r}.")
        if name == "movielens-1m" and int(value) not in AGE_GROUPS:
            raise ConfigError(f"age must be a MovieLens-1M age group {AGE_GROUPS}, got {value!r}.")
        return int(np.searchsorted(AGE_GROUPS, int(value), side="right"))
    if feature == "occupation":
        occupations = OCCUPATIONS[name]
        if name == "movielens-1m" and value.isdigit() and int(value) < len(occupations):
            value = occupations[int(value)]
        if value not in occupations:
            raise ConfigError(
                f"occupation {value!r} is not one of {name}'s: {', '.join(occupations)}."
            )
        return occupations.index(value) + 1
    if feature == "zip":
        return int(value[0]) + 1 if value[:1].isdigit() else 11
    raise ConfigError(f"unknown user feature {feature!r}; choose among {', '.join(USER_FEATURES)}.")


def load_movielens(
    name: str, root: Path | str, *, download_missing: bool = False, progress: bool = True
) -> MovieLens:
    """MovieLens ``name`` (``movielens-100k`` or ``movielens-1m``) from ``root``.

    Raises:
        MovieLensError: the files are not in ``root`` (the message says where to get them),
            incomplete, or malformed (naming the file and line).
        ArchiveError: the zip is truncated or corrupt.
        DownloadError: a download failed or did not match the published md5.
    """
    if name not in VARIANTS:
        raise ConfigError(f"unknown MovieLens release {name!r}; choose one of {list(VARIANTS)}.")
    variant = VARIANTS[name]
    read = _reader(name, Path(root), download_missing, progress)
    users, user_features = _parse_users(name, variant.users, read(variant.users))
    items, titles, years, genres = _parse_items(name, variant.items, read(variant.items))
    table = _parse_ratings(name, variant.ratings, read(variant.ratings))
    if items[-1] > variant.max_item_id:
        raise MovieLensError(
            f"{variant.items} has item id {items[-1]}, above the largest of {name} "
            f"({variant.max_item_id}); these are not its files."
        )
    rating_user = _rows(users, table[:, 0], "user", variant.ratings, variant.users)
    rating_item = _rows(items, table[:, 1], "item", variant.ratings, variant.items)
    return MovieLens(
        name,
        users,
        user_features,
        items,
        titles,
        years,
        genres,
        rating_user,
        rating_item,
        table[:, 2].astype(np.float32),
        table[:, 3],
    )


def _reader(name: str, root: Path, download_missing: bool, progress: bool) -> Callable[[str], str]:
    """A function reading one of the dataset's files as text, from a folder or the zip."""
    variant = VARIANTS[name]
    for folder in (root, root / variant.folder):
        present = [f for f in variant.files if (folder / f).is_file()]
        if len(present) == len(variant.files):
            return _folder_reader(folder)
        if present:
            missing = sorted(set(variant.files) - set(present))
            raise MovieLensError(
                f"{folder} holds {', '.join(present)} but not {', '.join(missing)}: the "
                f"extraction of {variant.remote.filename} is incomplete. Extract it again, or "
                "delete the folder to read the zip."
            )
    archive = root / variant.remote.filename
    if not archive.is_file():
        if not download_missing:
            raise MovieLensError(
                f"{name} is not in {root}: put {variant.remote.filename} (from "
                f"{variant.remote.url}) or its extracted folder {variant.folder}/ there, or "
                f"download it with `fastadapt datasets download {name} --root {root}`."
            )
        archive = download(variant.remote, root, progress=progress)
    elif md5sum(archive) != variant.remote.md5:
        warnings.warn(
            f"{archive} is not the official file (md5 differs from {variant.remote.md5}); "
            "using it since it holds the dataset's files.",
            stacklevel=4,
        )
    contents = _read_archive(archive, variant)
    return contents.__getitem__


def _folder_reader(folder: Path) -> Callable[[str], str]:
    return lambda file: (folder / file).read_text(encoding="latin-1")


def _read_archive(archive: Path, variant: MovieLensVariant) -> dict[str, str]:
    with open_zip(archive) as handle:
        names = set(handle.namelist())
        missing = [f for f in variant.files if f"{variant.folder}/{f}" not in names]
        if missing:
            raise MovieLensError(
                f"{archive} lacks {', '.join(f'{variant.folder}/{f}' for f in missing)}; it is "
                f"not {variant.remote.filename}. Delete it and download it again."
            )
        try:
            return {
                f: handle.read(f"{variant.folder}/{f}").decode("latin-1") for f in variant.files
            }
        except _CORRUPT as error:
            raise ArchiveError(
                f"{archive} is damaged ({error}); it is probably truncated or corrupt: delete it "
                "and download it again."
            ) from error


def _split_lines(text: str, separator: str, fields: int, file: str) -> list[list[str]]:
    """The non-empty lines of ``file`` split into exactly ``fields`` fields each."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(separator)
        if len(parts) != fields:
            raise MovieLensError(
                f"{file} line {number} has {len(parts)} fields separated by {separator!r}, not "
                f"{fields}: {line[:80]!r}. The file is corrupt or not MovieLens's."
            )
        rows.append(parts)
    if not rows:
        raise MovieLensError(f"{file} is empty; extract or download the dataset again.")
    return rows


def _integers(rows: list[list[str]], columns: Sequence[int], file: str) -> np.ndarray:
    """Columns of ``rows`` as int64 ``[len(rows), len(columns)]``, naming a non-integer line."""
    text = np.array([[row[c] for c in columns] for row in rows])
    try:
        return text.astype(np.int64)
    except ValueError:
        bad = next(row for row in rows if not all(_is_integer(row[c]) for c in columns))
        raise MovieLensError(
            f"{file} has a non-integer field in {'|'.join(bad)[:80]!r}; the file is corrupt."
        ) from None


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def _parse_ratings(name: str, file: str, text: str) -> np.ndarray:
    """``[R, 4]`` int64: user id, item id, rating, timestamp; ratings must be 1..5."""
    separator = "\t" if name == "movielens-100k" else "::"
    lines = sum(1 for line in text.splitlines() if line.strip())
    try:  # fast path; the line-by-line parse below names what is wrong
        table = np.array(text.replace(separator, " ").split(), dtype=np.int64)
    except ValueError:
        table = np.empty(0, dtype=np.int64)
    if table.size != 4 * lines or lines == 0:
        table = _integers(_split_lines(text, separator, 4, file), range(4), file)
    table = table.reshape(-1, 4)
    outside = np.flatnonzero((table[:, 2] < 1) | (table[:, 2] > 5))
    if outside.size:
        user, item, stars, _ = table[outside[0]]
        raise MovieLensError(
            f"{file} has {outside.size} rating(s) outside 1..5, e.g. user {user} rated item "
            f"{item} {stars}; the file is corrupt."
        )
    return table


def _parse_items(
    name: str, file: str, text: str
) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, np.ndarray]:
    """Item ids (sorted), titles, release years and genre flags."""
    if name == "movielens-100k":
        rows = _split_lines(text, "|", 5 + 1 + len(GENRES), file)
        flags = _integers(rows, range(6, 6 + len(GENRES)), file)  # column 5 is "unknown"
        years_text = [row[2][-4:] if row[2] else "" for row in rows]
    else:
        rows = _split_lines(text, "::", 3, file)
        flags = np.zeros((len(rows), len(GENRES)), dtype=np.int64)
        for number, row in enumerate(rows):
            for genre in row[2].split("|"):
                if genre not in GENRES:
                    raise MovieLensError(
                        f"{file}: item {row[0]} has the genre {genre!r}, which MovieLens does "
                        f"not have ({', '.join(GENRES)}); the file is corrupt."
                    )
                flags[number, GENRES.index(genre)] = 1
        years_text = [""] * len(rows)
    ids = _integers(rows, [0], file)[:, 0]
    titles = [row[1] for row in rows]
    years = np.array(
        [_year(text, title) for text, title in zip(years_text, titles)], dtype=np.int64
    )
    order = _unique_order(ids, "item", file)
    return (
        ids[order],
        tuple(titles[i] for i in order),
        years[order],
        flags[order].astype(np.float32),
    )


def _year(date_year: str, title: str) -> int:
    """The release year from a 100K release date's last four characters, else the title."""
    if date_year.isdigit():
        return int(date_year)
    match = _TITLE_YEAR.search(title)
    return int(match.group(1)) if match else 0


def _parse_users(name: str, file: str, text: str) -> tuple[np.ndarray, np.ndarray]:
    """User ids (sorted) and their feature codes ``[U, 4]``."""
    rows = _split_lines(text, "|" if name == "movielens-100k" else "::", 5, file)
    ids = _integers(rows, [0], file)[:, 0]
    codes = np.empty((len(rows), len(USER_FEATURES)), dtype=np.int64)
    for number, row in enumerate(rows):
        if name == "movielens-100k":
            age, gender, occupation, zip_code = row[1:]
        else:
            gender, age, occupation, zip_code = row[1:]
        values = dict(zip(USER_FEATURES, (gender, age, occupation, zip_code)))
        try:
            codes[number] = [user_code(name, key, value) for key, value in values.items()]
        except ConfigError as error:
            raise MovieLensError(f"{file}: user {row[0]}: {error} The file is corrupt.") from None
    order = _unique_order(ids, "user", file)
    return ids[order], codes[order]


def _unique_order(ids: np.ndarray, what: str, file: str) -> np.ndarray:
    """The order that sorts ``ids``; refuses a repeated id."""
    order = np.argsort(ids, kind="stable")
    repeated = ids[order][1:][np.diff(ids[order]) == 0]
    if repeated.size:
        raise MovieLensError(f"{file} lists {what} {repeated[0]} twice; the file is corrupt.")
    return order


def _rows(known: np.ndarray, ids: np.ndarray, what: str, file: str, table: str) -> np.ndarray:
    """The rows in the sorted ``known`` ids of ``ids``; refuses an id ``table`` lacks."""
    rows = np.searchsorted(known, ids).clip(max=len(known) - 1)
    missing = np.unique(ids[known[rows] != ids])
    if missing.size:
        shown = ", ".join(map(str, missing[:5])) + (" ..." if missing.size > 5 else "")
        raise MovieLensError(
            f"{file} has ratings of {missing.size} {what}(s) that {table} does not list "
            f"({shown}); the files do not belong together."
        )
    return rows
