"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): 1623 handwritten characters of 50 alphabets,
20 drawers each, in the two official archives.

The archives are read in place (no extraction): every PNG is decoded ONCE, resized and stored in
a uint8 cache that later runs memory-map. Three protocols are offered:

- :meth:`Omniglot.vinyals` — the split of Vinyals et al. 2016 used by Prototypical Networks and
  most later work: 1028 / 172 / 423 characters (train / val / test), each rotation by
  0/90/180/270 degrees a class of its own (4112 / 688 / 1692 classes);
- :meth:`Omniglot.random_split` — a seeded random split of characters with configurable sizes
  (MAML's and VERSA's code: 1100 train / 100 val / 423 test; Reptile's: 1200 train / 423
  test), rotations as classes optional;
- :meth:`Omniglot.lake` — Lake et al.'s protocol: the 30 background alphabets for training, and
  N-way one-shot tasks drawn *within* one of the 20 evaluation alphabets for testing.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from fastadapt.datasets._common import DatasetError, decode_images, refuse_failures
from fastadapt.datasets.cache import cached_class_set
from fastadapt.datasets.class_set import ClassSet
from fastadapt.datasets.paths import default_root
from fastadapt.io.archives import open_zip
from fastadapt.io.download import RemoteFile, download, md5sum

_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
ARCHIVES = {
    "images_background": RemoteFile(
        _BASE_URL + "images_background.zip",
        "images_background.zip",
        "68d2efa1b9178cc56df9314c21c6e718",
        9_464_212,
    ),
    "images_evaluation": RemoteFile(
        _BASE_URL + "images_evaluation.zip",
        "images_evaluation.zip",
        "6b91aef0f799c5bb55b94e3f2daec811",
        6_462_886,
    ),
}
#: (alphabets, characters) of each official archive; every character has 20 drawers.
EXPECTED_COUNTS = {"images_background": (30, 964), "images_evaluation": (20, 659)}
DRAWERS = 20
ROTATIONS = (0, 90, 180, 270)
SPLITS = ("train", "val", "test", "trainval")


class OmniglotError(DatasetError):
    """The Omniglot files are missing, incomplete, or not Omniglot."""


class Omniglot:
    """The 1623 Omniglot characters as a :class:`ClassSet`, with the standard protocols.

    Args:
        root: folder holding (or to receive) ``images_background.zip`` and
            ``images_evaluation.zip``; default ``<default_root()>/omniglot``.
        image_size: side of the decoded square images (28 in most papers, 105 native).
        download: fetch missing archives from the official addresses (md5-verified).
        cache_dir: where the decoded uint8 arrays are kept (default ``<root>/cache``).
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        image_size: int = 28,
        download: bool = False,
        progress: bool = True,
        cache_dir: Path | str | None = None,
    ) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}.")
        self.root = Path(root) if root is not None else default_root() / "omniglot"
        self.image_size = image_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / "cache"
        archives = {name: self._archive(name, download, progress) for name in ARCHIVES}
        paths = {name: path for name, (path, _) in archives.items()}
        contents = {name: members for name, (_, members) in archives.items()}
        self.characters = cached_class_set(
            self.cache_dir,
            f"omniglot-{image_size}x{image_size}",
            lambda: _decode(paths, contents, image_size),
        )
        self.background_alphabets, self.evaluation_alphabets = (
            sorted({character.split("/")[0] for character in contents[name]}) for name in ARCHIVES
        )

    def vinyals(self, split: str) -> ClassSet:
        """Classes of the Vinyals split (``train``/``val``/``test``/``trainval``), rotations as
        classes named ``Alphabet/characterNN/rotDDD``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        text = (
            resources.files("fastadapt.datasets")
            .joinpath(f"splits/omniglot/vinyals/{split}.txt")
            .read_text("utf-8")
        )
        names = [line.strip() for line in text.splitlines() if line.strip()]
        return self.characters.with_rotations(ROTATIONS).subset(names)

    def random_split(
        self, sizes: Sequence[int] = (1200, 0, 423), *, seed: int = 0, rotations: bool = True
    ) -> dict[str, ClassSet]:
        """A seeded random split of the 1623 characters into ``train``/``val``/``test``.

        ``sizes`` are numbers of characters (MAML's and VERSA's code: ``(1100, 100, 423)``;
        Reptile's: ``(1200, 0, 423)``); with ``rotations`` each character gives four classes.
        The same ``seed`` and total give the same test characters whatever the train/val cut.
        """
        if len(sizes) != 3 or any(s < 0 for s in sizes) or sum(sizes) > self.characters.num_classes:
            raise ValueError(
                f"sizes must be three non-negative character counts summing to at most "
                f"{self.characters.num_classes}, got {tuple(sizes)}."
            )
        order = np.random.default_rng(seed).permutation(self.characters.num_classes)
        names = np.asarray(self.characters.class_names)[order]
        bounds = np.cumsum([0, *sizes])
        splits = {}
        for split, start, stop in zip(("train", "val", "test"), bounds[:-1], bounds[1:]):
            chosen = self.characters.subset(list(names[start:stop]))
            splits[split] = chosen.with_rotations(ROTATIONS) if rotations else chosen
        return splits

    def lake(self, split: str) -> tuple[ClassSet, list[np.ndarray]]:
        """Lake et al.'s protocol: ``background`` (30 alphabets, 964 characters) for training,
        ``evaluation`` (20 alphabets, 659 characters) for testing.

        Returns the characters and, for each alphabet, the ids of its classes in that set; pass
        them as ``FewShotSampler(..., groups=groups)`` to draw every task within one alphabet.
        """
        alphabets = {
            "background": self.background_alphabets,
            "evaluation": self.evaluation_alphabets,
        }
        if split not in alphabets:
            raise ValueError(f"split must be 'background' or 'evaluation', got {split!r}.")
        members = [n for n in self.characters.class_names if n.split("/")[0] in alphabets[split]]
        classes = self.characters.subset(members)
        groups = [
            np.flatnonzero([n.split("/")[0] == alphabet for n in classes.class_names])
            for alphabet in alphabets[split]
        ]
        return classes, groups

    def _archive(
        self, name: str, allow_download: bool, progress: bool
    ) -> tuple[Path, dict[str, list[str]]]:
        """The archive's path and its characters' members, downloading it if asked."""
        remote = ARCHIVES[name]
        path = self.root / remote.filename
        if not path.is_file():
            if not allow_download:
                raise OmniglotError(_missing_message(self.root))
            path = download(remote, self.root, progress=progress)
            return path, _validate_structure(path, name)
        members = _validate_structure(path, name)
        if md5sum(path) != remote.md5:
            warnings.warn(
                f"{path} is a complete Omniglot archive but not the official file (md5 differs "
                f"from {remote.md5}); using it.",
                stacklevel=3,
            )
        return path, members


def _missing_message(root: Path) -> str:
    files = "\n".join(f"  {r.filename}  from  {r.url}" for r in ARCHIVES.values())
    return (
        f"the Omniglot archives are not in {root}. Download them with "
        f"`fastadapt datasets download omniglot --root {root}` (or download=True), or place "
        f"these two files there by hand:\n{files}"
    )


def _character_members(archive: zipfile.ZipFile) -> dict[str, list[str]]:
    """``Alphabet/characterNN`` -> sorted PNG member names, from the official layout."""
    characters: dict[str, list[str]] = {}
    for member in archive.namelist():
        parts = member.split("/")
        if len(parts) == 4 and parts[3].endswith(".png"):
            characters.setdefault(f"{parts[1]}/{parts[2]}", []).append(member)
    return {name: sorted(members) for name, members in sorted(characters.items())}


def _validate_structure(path: Path, name: str) -> dict[str, list[str]]:
    """Check an archive's layout and counts; return its characters' PNG member names."""
    alphabets_expected, characters_expected = EXPECTED_COUNTS[name]
    with open_zip(path) as archive:
        characters = _character_members(archive)
        prefixes = {m.split("/")[0] for m in archive.namelist() if "/" in m}
    alphabets = {c.split("/")[0] for c in characters}
    short = [c for c, members in characters.items() if len(members) != DRAWERS]
    if (
        prefixes != {name}
        or len(alphabets) != alphabets_expected
        or short
        or (len(characters) != characters_expected)
    ):
        raise OmniglotError(
            f"{path} is not a complete {name}.zip: expected {alphabets_expected} alphabets, "
            f"{characters_expected} characters and {DRAWERS} drawers each under {name}/, found "
            f"{len(alphabets)} alphabets and {len(characters)} characters"
            + (f", {len(short)} with a drawer count other than {DRAWERS}" if short else "")
            + ". Delete it and download it again."
        )
    return characters


def _decode(
    paths: dict[str, Path], contents: dict[str, dict[str, list[str]]], image_size: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode every PNG of both archives once: uint8 ``[1623 * 20, size, size]``."""
    sources: list[bytes] = []
    members: list[str] = []
    labels: list[int] = []
    names: list[str] = []
    for name in ARCHIVES:
        with open_zip(paths[name]) as archive:
            for character, character_members in contents[name].items():
                for member in character_members:
                    sources.append(archive.read(member))
                    members.append(f"{member} in {paths[name]}")
                    labels.append(len(names))
                names.append(character)
    images, failures = decode_images(sources, size=image_size, mode="L", desc="Omniglot")
    refuse_failures(failures, members.__getitem__)
    return images, np.asarray(labels, dtype=np.int64), names
