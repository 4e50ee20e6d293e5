"""CIFAR-FS and FC100: the two few-shot class splits of CIFAR-100, read from the official archive.

- CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi 2019, "Meta-learning with differentiable
  closed-form solvers", ICLR; §4 and Appendix) splits the 100 fine classes at random into
  64 / 16 / 20 for train / val / test.
- FC100 (Oreshkin, Rodríguez & Lacoste 2018, "TADAM: Task dependent adaptive metric for improved
  few-shot learning", NeurIPS; §4) splits the 20 superclasses 12 / 4 / 4, so that no superclass
  is shared between splits: 60 / 20 / 20 fine classes.

Both pool CIFAR-100's training and test images: 600 RGB images of 32x32 per fine class. The
python pickles (``cifar-100-python/{train,test,meta}``) are read straight from
``cifar-100-python.tar.gz`` (or from its extracted folder, if that is what ``root`` holds).
Classes are named ``superclass/class``, as in the shipped split files.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.datasets._common import (
    Arrays,
    DatasetError,
    check_split,
    load_pickle,
    make_class_set,
    split_lines,
    str_keys,
)
from fastadapt.datasets.class_set import ClassSet
from fastadapt.io.archives import ArchiveError, open_tar
from fastadapt.io.download import RemoteFile, download

__all__ = ["CIFAR100", "DatasetError", "cifar_fs", "fc100"]

CIFAR100 = RemoteFile(
    "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
)
_FOLDER = "cifar-100-python"
_MEMBERS = ("train", "test", "meta")
_SIDE = 32


def cifar_fs(
    root: Path | str, split: str, *, download: bool = False, cache_dir: Path | str | None = None
) -> ClassSet:
    """The CIFAR-FS classes of ``split`` (``train``/``val``/``test``: 64 / 16 / 20 classes).

    Args:
        root: folder holding ``cifar-100-python.tar.gz`` (or its extracted
            ``cifar-100-python/`` folder); the archive is downloaded there with ``download``.
        split: ``train``, ``val`` or ``test``.
        download: fetch the archive from the official address (md5-verified) if it is missing.
        cache_dir: keep the decoded images there, as ``cifar-fs-<split>-32x32``.
    """
    check_split(split)
    wanted = split_lines(f"splits/cifar-fs/{split}.txt")

    def select(available: dict[str, int]) -> list[str]:
        absent = [name for name in wanted if name not in available]
        if absent:
            raise DatasetError(
                f"the CIFAR-100 data in {root} lacks the CIFAR-FS class(es) {', '.join(absent)}; "
                f"it is not the official {CIFAR100.filename}: delete it and download it again."
            )
        return wanted

    return make_class_set(
        lambda: _build(Path(root), download, select), cache_dir, f"cifar-fs-{split}-32x32"
    )


def fc100(
    root: Path | str, split: str, *, download: bool = False, cache_dir: Path | str | None = None
) -> ClassSet:
    """The FC100 classes of ``split``: every fine class of its superclasses (60 / 20 / 20).

    Classes come in the order of the split file's superclasses, then CIFAR-100's order of fine
    classes within each. Arguments as for :func:`cifar_fs`; the cache key is
    ``fc100-<split>-32x32``.
    """
    check_split(split)
    superclasses = split_lines(f"splits/fc100/{split}.txt")

    def select(available: dict[str, int]) -> list[str]:
        by_superclass: dict[str, list[str]] = {}
        for name in sorted(available, key=available.__getitem__):
            by_superclass.setdefault(name.split("/")[0], []).append(name)
        absent = [name for name in superclasses if name not in by_superclass]
        if absent:
            raise DatasetError(
                f"the CIFAR-100 data in {root} lacks the FC100 superclass(es) "
                f"{', '.join(absent)}; it is not the official {CIFAR100.filename}: delete it "
                "and download it again."
            )
        return [name for superclass in superclasses for name in by_superclass[superclass]]

    return make_class_set(
        lambda: _build(Path(root), download, select), cache_dir, f"fc100-{split}-32x32"
    )


def _build(
    root: Path, allow_download: bool, select: Callable[[dict[str, int]], list[str]]
) -> Arrays:
    """The images of the classes ``select`` picks, grouped by class in its order."""
    images, fine, names = _read_cifar100(_locate(root, allow_download))
    chosen = select(names)
    position = np.full(len(names), -1, dtype=np.int64)
    position[[names[name] for name in chosen]] = np.arange(len(chosen))
    labels = position[fine]
    keep = np.flatnonzero(labels >= 0)
    order = keep[np.argsort(labels[keep], kind="stable")]
    return np.ascontiguousarray(images[order]), labels[order], chosen


def _locate(root: Path, allow_download: bool) -> Path:
    """The extracted folder if complete, else the archive; downloaded if missing and allowed."""
    folder = root / _FOLDER
    if all((folder / member).is_file() for member in _MEMBERS):
        return folder
    archive = root / CIFAR100.filename
    if archive.is_file():
        return archive
    if allow_download:
        return download(CIFAR100, root)
    raise DatasetError(
        f"CIFAR-100 is not in {root}: expected {archive} (or its extracted folder {folder}/ "
        f"with {', '.join(_MEMBERS)}). Pass download=True, or download {CIFAR100.url} "
        f"(md5 {CIFAR100.md5}) and put it in {root}."
    )


def _read_cifar100(source: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """All images ``[N, 32, 32, 3]``, their fine labels, and ``superclass/class`` -> fine id."""
    parts = _read_members(source)
    meta = str_keys(parts["meta"], f"{source}: meta", ("fine_label_names", "coarse_label_names"))
    batches = [
        str_keys(parts[name], f"{source}: {name}", ("data", "fine_labels", "coarse_labels"))
        for name in ("train", "test")
    ]
    data = np.concatenate([np.asarray(batch["data"]) for batch in batches])
    fine = np.concatenate([np.asarray(batch["fine_labels"], np.int64) for batch in batches])
    coarse = np.concatenate([np.asarray(batch["coarse_labels"], np.int64) for batch in batches])
    fine_names, coarse_names = meta["fine_label_names"], meta["coarse_label_names"]
    if (
        data.dtype != np.uint8
        or data.shape != (len(fine), 3 * _SIDE * _SIDE)
        or len(coarse) != len(fine)
        or not 0 <= fine.min(initial=0) <= fine.max(initial=0) < len(fine_names)
        or not 0 <= coarse.min(initial=0) <= coarse.max(initial=0) < len(coarse_names)
    ):
        raise DatasetError(
            f"{source} does not hold CIFAR-100's arrays (uint8 data of N x 3072 and N fine and "
            f"coarse labels within the meta file's names; found data {data.dtype} "
            f"{data.shape}, {len(fine)} fine and {len(coarse)} coarse labels): delete it and "
            f"download {CIFAR100.url} again."
        )
    superclass_of = dict(zip(fine.tolist(), coarse.tolist()))
    if len(set(zip(fine.tolist(), coarse.tolist()))) != len(superclass_of):
        raise DatasetError(f"{source} puts one fine class in several superclasses; not CIFAR-100.")
    names = {f"{coarse_names[superclass_of[f]]}/{fine_names[f]}": f for f in sorted(superclass_of)}
    # The pickles store each image as 3072 bytes: the red, green then blue 32x32 planes.
    images = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return images, fine, names


def _read_members(source: Path) -> dict[str, Any]:
    """The unpickled ``train``, ``test`` and ``meta`` of the archive or extracted folder."""
    if source.is_dir():
        parts = {}
        for member in _MEMBERS:
            with (source / member).open("rb") as file:
                parts[member] = load_pickle(file, source / member)
        return parts
    try:
        with open_tar(source) as archive:
            parts = {}
            for info in archive.getmembers():
                folder, _, member = info.name.removeprefix("./").partition("/")
                if folder == _FOLDER and member in _MEMBERS and info.isfile():
                    file = archive.extractfile(info)
                    parts[member] = load_pickle(file, f"{source}: {info.name}")
    except ArchiveError as error:
        raise DatasetError(
            f"{error} Expected the CIFAR-100 python archive from {CIFAR100.url}."
        ) from error
    except (OSError, EOFError, tarfile.TarError, zlib.error) as error:
        raise DatasetError(
            f"{source} is truncated or corrupt ({error}): delete it and download it again."
        ) from error
    missing = [f"{_FOLDER}/{member}" for member in _MEMBERS if member not in parts]
    if missing:
        raise DatasetError(
            f"{source} has no {', '.join(missing)}: it is not CIFAR-100's python archive (the "
            f"CIFAR-10 archive, for one, holds cifar-10-batches-py/). Delete it and download "
            f"{CIFAR100.url} (md5 {CIFAR100.md5}) into {source.parent}."
        )
    return parts
