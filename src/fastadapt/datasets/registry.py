"""The datasets fastadapt knows by name: where their files come from, and what they hold.

Two kinds: image datasets of classes (:data:`DATASETS`, few-shot episodes) and ratings datasets
(:data:`RATINGS`, users as tasks for cold-start recommendation). Used by ``fastadapt datasets
list | download | info`` and by ``task.family``. Loaders are imported when a dataset is used, so
listing costs nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastadapt.datasets.class_set import ClassSet
from fastadapt.datasets.paths import default_root
from fastadapt.errors import ConfigError

Loader = Callable[[Path, str, bool], ClassSet]
"""``load(root, split, download)``: the classes of ``split`` ("train", "val" or "test")."""
if TYPE_CHECKING:
    from fastadapt.datasets.movielens import MovieLens


@dataclass(frozen=True)
class DatasetEntry:
    """One named dataset: a summary, where its files come from, and its class splits.

    ``load`` gives the classes of the standard split (named ``standard_split`` where the
    dataset has others); ``other_splits`` the loaders of other named splits of the same files
    (chosen with ``data.split``).
    """

    summary: str
    source: str
    folder: str
    splits: tuple[str, ...]
    load: Loader
    downloadable: bool
    standard_split: str = ""
    other_splits: Mapping[str, Loader] = field(default_factory=dict)


@functools.lru_cache(maxsize=4)
def _omniglot_archives(root: Path, download: bool) -> Any:
    """One ``Omniglot`` per folder: its archives are validated and hashed once, not per split."""
    from fastadapt.datasets.omniglot import Omniglot

    return Omniglot(root, download=download)


def _omniglot(root: Path, split: str, download: bool) -> ClassSet:
    return _omniglot_archives(root, download).vinyals(split)


def _omniglot_vinyals_trainval(root: Path, split: str, download: bool) -> ClassSet:
    """Snell et al.'s protocol (2017, §3.1): training on the Vinyals split's 1200 train and
    validation characters; validation tasks then come from training classes, so they only
    track the fit (``best.pt`` is no model selection); test classes unchanged."""
    return _omniglot_archives(root, download).vinyals("trainval" if split == "train" else split)


RANDOM_CHARACTERS = (1100, 100, 423)
"""Train / val / test characters of the MAML reference code's Omniglot split (Finn et al. 2017,
``cbfinn/maml``, ``data_generator.py``: 1200 shuffled characters less 100 for validation, the
other 423 for testing), which VERSA reuses (Gordon et al. 2019): drawn at random (seed 0 here),
each rotation a class of its own. Test characters come from alphabets seen in training, unlike
the Vinyals split's, which hold out whole alphabets."""


def _omniglot_random(root: Path, split: str, download: bool) -> ClassSet:
    return _omniglot_archives(root, download).random_split(RANDOM_CHARACTERS, seed=0)[split]


def _omniglot_reptile(root: Path, split: str, download: bool) -> ClassSet:
    """Reptile's protocol (Nichol et al. 2018, ``openai/supervised-reptile``,
    ``run_omniglot.py``): training characters rotated into four classes each, the 423 test
    characters *not* rotated. Its code trains on 1200 shuffled characters with no validation
    set; here 100 of them validate (the same characters as :data:`RANDOM_CHARACTERS`), so the
    test characters are those of ``maml``, unrotated (423 classes)."""
    rotations = split != "test"
    splits = _omniglot_archives(root, download).random_split(
        RANDOM_CHARACTERS, seed=0, rotations=rotations
    )
    return splits[split]


def _cifar_fs(root: Path, split: str, download: bool) -> ClassSet:
    from fastadapt.datasets.cifar import cifar_fs

    return cifar_fs(root, split, download=download, cache_dir=root / "cache")


def _fc100(root: Path, split: str, download: bool) -> ClassSet:
    from fastadapt.datasets.cifar import fc100

    return fc100(root, split, download=download, cache_dir=root / "cache")


def _mini_imagenet(root: Path, split: str, download: bool) -> ClassSet:
    from fastadapt.datasets.mini_imagenet import mini_imagenet

    return mini_imagenet(root, split, cache_dir=root / "cache")


def _tiered_imagenet(root: Path, split: str, download: bool) -> ClassSet:
    from fastadapt.datasets.tiered_imagenet import tiered_imagenet

    return tiered_imagenet(root, split, cache_dir=root / "cache")


DATASETS: dict[str, DatasetEntry] = {
    "omniglot": DatasetEntry(
        "Lake et al. 2015: 1623 handwritten characters x 20 drawers; Vinyals split with "
        "rotations as classes (4112 / 688 / 1692 classes); data.split=vinyals-trainval: trains on "
        "train + val (4800 classes, Snell et al.); data.split=maml or versa: MAML's and "
        "VERSA's random 1100 / 100 / 423 characters (4400 / 400 / 1692 classes); "
        "data.split=reptile: the same characters, test ones unrotated (4400 / 400 / 423)",
        "downloaded: images_background.zip, images_evaluation.zip (brendenlake/omniglot)",
        "omniglot",
        ("train", "val", "test"),
        _omniglot,
        True,
        standard_split="vinyals",
        other_splits={
            "vinyals-trainval": _omniglot_vinyals_trainval,
            "maml": _omniglot_random,
            "versa": _omniglot_random,
            "reptile": _omniglot_reptile,
        },
    ),
    "cifar-fs": DatasetEntry(
        "Bertinetto et al. 2019: CIFAR-100 fine classes split 64 / 16 / 20, 32x32 RGB",
        "downloaded: cifar-100-python.tar.gz (cs.toronto.edu/~kriz)",
        "cifar100",
        ("train", "val", "test"),
        _cifar_fs,
        True,
    ),
    "fc100": DatasetEntry(
        "Oreshkin et al. 2018: CIFAR-100 superclasses split 12 / 4 / 4 (60 / 20 / 20 classes)",
        "downloaded: cifar-100-python.tar.gz (cs.toronto.edu/~kriz)",
        "cifar100",
        ("train", "val", "test"),
        _fc100,
        True,
    ),
    "mini-imagenet": DatasetEntry(
        "Vinyals et al. 2016 / Ravi & Larochelle 2017 split: 64 / 16 / 20 classes x 600, 84x84",
        "your files: images/<name>.jpg as in the Ravi csv, or mini-imagenet-cache-<split>.pkl",
        "mini-imagenet",
        ("train", "val", "test"),
        _mini_imagenet,
        False,
    ),
    "tiered-imagenet": DatasetEntry(
        "Ren et al. 2018: 351 / 97 / 160 classes of ImageNet, 84x84",
        "your files: <split>_images_png.pkl or <split>_images.npz, with <split>_labels.pkl",
        "tiered-imagenet",
        ("train", "val", "test"),
        _tiered_imagenet,
        False,
    ),
}


@dataclass(frozen=True)
class RatingsEntry:
    """One named ratings dataset: a summary, where its files come from, and its loader."""

    summary: str
    source: str
    folder: str
    load: Callable[[Path, bool], MovieLens]


@functools.lru_cache(maxsize=4)
def _movielens(name: str, root: Path, download: bool) -> MovieLens:
    """One parse per release and folder: train, validation and test tasks share it."""
    from fastadapt.datasets.movielens import load_movielens

    return load_movielens(name, root, download_missing=download)


RATINGS: dict[str, RatingsEntry] = {
    "movielens-100k": RatingsEntry(
        "Harper & Konstan 2015: 100,000 ratings 1-5 of 1,682 movies by 943 users, with user "
        "demographics, genres and release dates",
        "downloaded: ml-100k.zip (files.grouplens.org), or its extracted ml-100k/ folder",
        "movielens",
        functools.partial(_movielens, "movielens-100k"),
    ),
    "movielens-1m": RatingsEntry(
        "Harper & Konstan 2015: 1,000,209 ratings 1-5 of 3,706 movies by 6,040 users, with "
        "user demographics, genres and release years",
        "downloaded: ml-1m.zip (files.grouplens.org), or its extracted ml-1m/ folder",
        "movielens",
        functools.partial(_movielens, "movielens-1m"),
    ),
}


def dataset(name: str) -> DatasetEntry | RatingsEntry:
    """The entry of a named dataset; an unknown name lists the known ones."""
    known = {**DATASETS, **RATINGS}
    if name not in known:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(known)}.")
    return known[name]


def split_loader(name: str, split: str) -> Loader:
    """The loader of dataset ``name``'s class split ``split`` (``""``: the standard one).

    Raises:
        ConfigError: the dataset has no split of that name (the message lists its splits).
    """
    entry = dataset(name)
    if split in ("", entry.standard_split):
        return entry.load
    if split not in entry.other_splits:
        known = [s for s in (entry.standard_split, *entry.other_splits) if s]
        choices = f"choose one of {known}" if known else "it has only its standard split"
        raise ConfigError(
            f'data.split {split!r} is not a class split of {name}; {choices} (or "" for '
            "the standard split)."
        )
    return entry.other_splits[split]


def dataset_root(name: str, root: Path | None) -> Path:
    """``root`` if given, else the dataset's folder under :func:`default_root`."""
    return root if root is not None else default_root() / dataset(name).folder


def download_dataset(name: str, root: Path | None) -> Path:
    """Download a dataset's files (verified) and build its caches; returns its folder."""
    entry = dataset(name)
    folder = dataset_root(name, root)
    if isinstance(entry, RatingsEntry):
        entry.load(folder, True)
        return folder
    if not entry.downloadable:
        raise ConfigError(
            f"{name} cannot be downloaded (its hosting is not stable); put your copy in "
            f"{dataset_root(name, root)}: {entry.source}."
        )
    for split in entry.splits:
        entry.load(folder, split, True)
    return folder


def dataset_info(name: str, root: Path | None) -> dict[str, Any]:
    """Classes and images per split, and the cache files with their sizes and location; for a
    ratings dataset, its numbers of users, items and ratings instead of splits."""
    from fastadapt.datasets.cache import cache_info

    entry = dataset(name)
    folder = dataset_root(name, root)
    common = {"name": name, "summary": entry.summary, "source": entry.source, "root": str(folder)}
    if isinstance(entry, RatingsEntry):
        data = entry.load(folder, False)
        counts = {"users": len(data.user_ids), "items": len(data.item_ids)}
        return {**common, "ratings": {**counts, "ratings": len(data.rating)}}
    splits = {}
    for split in entry.splits:
        classes = entry.load(folder, split, False)
        splits[split] = {
            "classes": classes.num_classes,
            "images": int(classes.examples_per_class().sum()),
            "image_shape": [classes.channels, classes.height, classes.width],
        }
    return {**common, "splits": splits, "cache": cache_info(folder / "cache")}
