"""MovieLens 100K / 1M: generated files in the official formats, read from a folder or a zip,
downloaded from a local server (md5, resume), and refused clearly when damaged."""

from __future__ import annotations

import dataclasses
import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_download import Behaviour, _fast_and_local, serve  # noqa: F401 (fixtures)

from fastadapt.cli import main
from fastadapt.datasets import movielens
from fastadapt.datasets.movielens import (
    GENRES,
    OCCUPATIONS,
    MovieLensError,
    load_movielens,
    year_codes,
)
from fastadapt.errors import ConfigError
from fastadapt.io.archives import ArchiveError
from fastadapt.io.download import DownloadError, RemoteFile

USERS, ITEMS = 40, 30
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens"


def tiny_ratings(seed: int = 0) -> list[tuple[int, int, int, int]]:
    """``(user, item, rating, time)``: user ``u`` joins at ``u * 1000`` and rates 12-21 items,
    ten seconds apart; ratings follow a user bias plus an item bias plus noise."""
    rng = np.random.default_rng(seed)
    user_bias, item_bias = rng.normal(0, 0.8, USERS + 1), rng.normal(0, 0.8, ITEMS + 1)
    rows = []
    for user in range(1, USERS + 1):
        items = rng.permutation(np.arange(1, ITEMS + 1))[: 12 + user % 10]
        for k, item in enumerate(items):
            stars = 3 + user_bias[user] + item_bias[item] + rng.normal(0, 0.5)
            rows.append((user, int(item), int(np.clip(np.rint(stars), 1, 5)), user * 1000 + 10 * k))
    return rows


def _year(item: int) -> int:
    return 1990 + item // 3  # items 27-30 are from 1999-2000, the newest


def _title(item: int) -> str:
    return f"Misérables, Les ({_year(item)})" if item == 7 else f"Movie {item} ({_year(item)})"


def _genres(item: int) -> list[int]:
    return [1 if (item + g) % 5 == 0 else 0 for g in range(len(GENRES))]


def write_movielens(folder: Path, name: str = "movielens-100k", ratings=None) -> Path:
    """A small dataset in the official layout (latin-1 files); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = tiny_ratings() if ratings is None else ratings
    ages_100k, ages_1m = (15, 22, 30, 40, 47, 52, 60), movielens.AGE_GROUPS
    zips = [f"{(user * 7) % 10}{user:04d}" if user != 5 else "T8H1N" for user in range(USERS + 1)]
    if name == "movielens-100k":
        users = [
            f"{u}|{ages_100k[u % 7]}|{'MF'[u % 2]}|{OCCUPATIONS[name][u % 21]}|{zips[u]}"
            for u in range(1, USERS + 1)
        ]
        items = [
            f"{i}|{_title(i)}|01-Jan-{_year(i)}||http://x|{int(not any(_genres(i)))}|"
            + "|".join(map(str, _genres(i)))
            for i in range(1, ITEMS + 1)
        ]
        lines = [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in ratings]
        files = {"u.user": users, "u.item": items, "u.data": lines}
    else:
        users = [
            f"{u}::{'MF'[u % 2]}::{ages_1m[u % 7]}::{u % 21}::{zips[u]}"
            for u in range(1, USERS + 1)
        ]
        items = [
            f"{i}::{_title(i)}::" + "|".join(g for g, flag in zip(GENRES, _genres(i)) if flag)
            for i in range(1, ITEMS + 1)
        ]
        lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in ratings]
        files = {"users.dat": users, "movies.dat": items, "ratings.dat": lines}
    for file, content in files.items():
        (folder / file).write_bytes(("\n".join(content) + "\n").encode("latin-1"))
    return folder


def write_zip(folder: Path, archive: Path, inside: str) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for file in sorted(folder.iterdir()):
            handle.write(file, f"{inside}/{file.name}")
    return archive


def test_the_100k_folder_is_parsed_into_coded_arrays(tmp_path):
    data = load_movielens("movielens-100k", write_movielens(tmp_path / "ml-100k"))
    ratings = tiny_ratings()
    assert (len(data.user_ids), len(data.item_ids), len(data.rating)) == (40, 30, len(ratings))
    assert data.titles[6] == "Misérables, Les (1992)"  # latin-1 é
    assert data.years[0] == 1990 and data.years[-1] == 2000
    assert year_codes(np.array([0, 1850, 1900, 1995, 2010])).tolist() == [0, 1, 1, 96, 101]
    assert np.array_equal(data.genres[4], np.array(_genres(5), dtype=np.float32))
    # user 1: female, 22 years (group 18-24), occupation "artist", zip 70001 (region 7 + 1)
    assert data.user_features[0].tolist() == [2, 2, 2, 8]
    assert data.user_features[4, 3] == 11  # the Canadian zip code T8H1N
    user, item, stars, time = ratings[0]
    assert (data.user_ids[data.rating_user[0]], data.item_ids[data.rating_item[0]]) == (user, item)
    assert (data.rating[0], data.timestamp[0]) == (stars, time)
    with pytest.raises(MovieLensError, match="no item with id 31, 99"):
        data.item_rows([99, 3, 31])


def test_folder_zip_and_1m_format_give_the_same_ratings(tmp_path):
    folder = write_movielens(tmp_path / "extracted" / "ml-100k")
    from_folder = load_movielens("movielens-100k", tmp_path / "extracted")  # root/ml-100k/
    write_zip(folder, tmp_path / "zipped" / "ml-100k.zip", "ml-100k")
    with pytest.warns(UserWarning, match="not the official file"):
        from_zip = load_movielens("movielens-100k", tmp_path / "zipped")
    one_m = load_movielens("movielens-1m", write_movielens(tmp_path / "1m", "movielens-1m"))
    for other in (from_zip, one_m):
        for field in ("rating_user", "rating_item", "rating", "timestamp", "years", "genres"):
            assert np.array_equal(getattr(other, field), getattr(from_folder, field)), field
    assert from_zip.titles == from_folder.titles == one_m.titles
    # Same age groups, genders and zip regions; occupations are each release's own list.
    assert np.array_equal(
        one_m.user_features[:, [0, 1, 3]], from_folder.user_features[:, [0, 1, 3]]
    )
    assert one_m.user_features[0, 2] == 2  # code 1, "academic/educator"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("\t3\t", "\t6\t", 1), r"outside 1\.\.5"),
        (lambda t: t + "41\t1\t3\t5\n", r"ratings of 1 user\(s\) that u\.user does not list"),
        (lambda t: t + "1\t31\t3\t5\n", r"ratings of 1 item\(s\) that u\.item does not list"),
        (lambda t: t + "1\t2\tthree\t5\n", r"u\.data line \d+ has|non-integer"),
        (lambda t: t + "1\t2\t3\n", "fields"),
        (lambda t: "", "empty"),
    ],
)
def test_malformed_ratings_are_refused_naming_the_problem(tmp_path, edit, message):
    folder = write_movielens(tmp_path)
    path = folder / "u.data"
    path.write_text(edit(path.read_text()))
    with pytest.raises(MovieLensError, match=message):
        load_movielens("movielens-100k", folder)


def test_bad_users_and_items_are_refused(tmp_path):
    folder = write_movielens(tmp_path)
    users = (folder / "u.user").read_text()
    (folder / "u.user").write_text(users.replace("|M|", "|X|", 1))
    with pytest.raises(MovieLensError, match="user 2: gender must be M or F"):
        load_movielens("movielens-100k", folder)
    (folder / "u.user").write_text(users)
    items = (folder / "u.item").read_text(encoding="latin-1")
    (folder / "u.item").write_text(items.replace("1|", "1700|", 1), encoding="latin-1")
    with pytest.raises(MovieLensError, match="above the largest"):
        load_movielens("movielens-100k", folder)
    with pytest.raises(ConfigError, match="unknown MovieLens release"):
        load_movielens("movielens-20m", folder)


def test_missing_incomplete_and_damaged_sources_are_explained(tmp_path):
    with pytest.raises(MovieLensError) as error:
        load_movielens("movielens-100k", tmp_path / "nowhere")
    remote = movielens.VARIANTS["movielens-100k"].remote
    assert remote.url in str(error.value) and str(tmp_path / "nowhere") in str(error.value)
    folder = write_movielens(tmp_path / "partial" / "ml-100k")
    (folder / "u.item").unlink()
    with pytest.raises(MovieLensError, match=r"not u\.item: the extraction"):
        load_movielens("movielens-100k", tmp_path / "partial")
    archive = write_zip(write_movielens(tmp_path / "src"), tmp_path / "z" / "ml-100k.zip", "x")
    with pytest.raises(MovieLensError, match=r"lacks ml-100k/u\.data"), pytest.warns(UserWarning):
        load_movielens("movielens-100k", tmp_path / "z")
    write_zip(tmp_path / "src", archive, "ml-100k")
    intact = archive.read_bytes()
    archive.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(ArchiveError, match=r"ml-100k\.zip"), pytest.warns(UserWarning):
        load_movielens("movielens-100k", tmp_path / "z")
    damaged = bytearray(intact)
    damaged[len(intact) // 3 : len(intact) // 3 + 40] = b"\0" * 40  # inside u.data's data
    archive.write_bytes(bytes(damaged))
    with pytest.raises(ArchiveError, match="is damaged"), pytest.warns(UserWarning):
        load_movielens("movielens-100k", tmp_path / "z")


@pytest.fixture
def served_zip(tmp_path, serve, monkeypatch):  # noqa: F811 (the fixture imported above)
    """A local server of a generated ml-100k.zip, published under its real md5."""
    archive = write_zip(write_movielens(tmp_path / "src"), tmp_path / "ml-100k.zip", "ml-100k")
    payload = archive.read_bytes()
    behaviour = Behaviour(payload=payload)
    remote = RemoteFile(serve(behaviour), "ml-100k.zip", hashlib.md5(payload).hexdigest())
    variant = dataclasses.replace(movielens.VARIANTS["movielens-100k"], remote=remote)
    monkeypatch.setitem(movielens.VARIANTS, "movielens-100k", variant)
    return payload, behaviour


def test_download_from_a_local_server_resumes_and_verifies(tmp_path, served_zip):
    payload, behaviour = served_zip
    root = tmp_path / "root"
    root.mkdir()
    (root / "ml-100k.zip.part").write_bytes(payload[:1000])  # an interrupted download
    data = load_movielens("movielens-100k", root, download_missing=True, progress=False)
    assert len(data.rating) == len(tiny_ratings())
    assert behaviour.requests[0]["Range"] == "bytes=1000-"
    assert (root / "ml-100k.zip").read_bytes() == payload
    assert not (root / "ml-100k.zip.part").exists()


def test_a_download_that_does_not_match_its_md5_is_rejected(tmp_path, served_zip, monkeypatch):
    variant = movielens.VARIANTS["movielens-100k"]
    wrong = RemoteFile(variant.remote.url, "ml-100k.zip", "0" * 32)
    monkeypatch.setitem(
        movielens.VARIANTS, "movielens-100k", dataclasses.replace(variant, remote=wrong)
    )
    with pytest.raises(DownloadError, match="does not match its published checksum"):
        load_movielens("movielens-100k", tmp_path / "root", download_missing=True, progress=False)
    assert list((tmp_path / "root").iterdir()) == []


def test_datasets_verbs_download_list_and_describe_movielens(tmp_path, served_zip, capsys):
    assert main(["datasets", "download", "movielens-100k", "--root", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "ml-100k.zip").is_file()
    assert main(["datasets", "info", "movielens-100k", "--root", str(tmp_path / "c")]) == 0
    assert f"{len(tiny_ratings())} ratings of 30 items by 40 users" in capsys.readouterr().out
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "movielens-100k" in out and "movielens-1m" in out


def test_the_real_100k_files_give_the_published_counts():
    if not (SHARED / "ml-100k").is_dir():
        pytest.skip("the real MovieLens-100K files are not in ../shared")
    data = load_movielens("movielens-100k", SHARED)
    assert (len(data.user_ids), len(data.item_ids), len(data.rating)) == (943, 1682, 100_000)
    assert "Misérables, Les (1995)" in data.titles
