"""Any folder of images, one sub-folder per class, as a :class:`ClassSet`.

``root/<class>/<image>``: the layout of torchvision's ``ImageFolder``, and the simplest way to
bring one's own few-shot dataset. Images may be in any format and size Pillow reads; each is
decoded once, turned upright (EXIF orientation), converted to grayscale (``L``) or ``RGB``, and
resized to ``image_size x image_size`` with Pillow's Lanczos filter (aspect ratio is not kept:
crop beforehand where it matters). Hidden files and folders (``.DS_Store``...) are ignored.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastadapt.datasets._common import (
    Arrays,
    DatasetError,
    check_image_size,
    decode_images,
    make_class_set,
    refuse_failures,
)
from fastadapt.datasets.class_set import ClassSet
from fastadapt.errors import ConfigError

__all__ = ["DatasetError", "image_folder"]

_MODES = {1: "L", 3: "RGB"}


def image_folder(
    root: Path | str,
    *,
    image_size: int,
    channels: int = 3,
    classes: Sequence[str] | Path | None = None,
    skip_unreadable: bool = False,
    cache_dir: Path | str | None = None,
) -> ClassSet:
    """The images of ``root/<class>/`` folders, one class per folder.

    Args:
        root: the folder of class folders.
        image_size: side of the square images every image is resized to.
        channels: 1 (grayscale, images ``[N, H, W]``) or 3 (RGB, ``[N, H, W, 3]``).
        classes: the class folders to load, in this order (default: all, sorted by name), or
            a class-split file (a ``Path``) that lists them one per line.
        skip_unreadable: leave out, with a warning naming each, the files Pillow cannot
            decode, instead of raising.
        cache_dir: keep the decoded images there. The cache key holds the folder's name and a
            digest of its path, the classes, and every file's name, size and modification
            time, so a changed folder is decoded again.

    Raises:
        DatasetError: ``root`` has no class folders, a class asked for is not there, a class
            folder is empty, or (without ``skip_unreadable``) a file is not a readable image.
    """
    check_image_size(image_size)
    if channels not in _MODES:
        raise ConfigError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; expected one sub-folder of images per class.")
    names = _choose_classes(root, classes)
    files = {name: _visible(root / name, want_dirs=False) for name in names}
    empty = [name for name in names if not files[name]]
    if empty:
        raise DatasetError(
            f"class folder(s) with no files in {root}: {', '.join(empty)}. Put images in them, "
            "or leave them out with classes=[...]."
        )
    paths = [path for name in names for path in files[name]]
    labels = np.repeat(np.arange(len(names), dtype=np.int64), [len(files[n]) for n in names])
    mode = _MODES[channels]

    def build() -> Arrays:
        images, failures = decode_images(paths, size=image_size, mode=mode, desc=root.name)
        if not failures:
            return images, labels, names
        if not skip_unreadable:
            refuse_failures(failures, lambda i: str(paths[i]))
        for index, reason in failures:
            warnings.warn(f"skipping unreadable image {paths[index]}: {reason}", stacklevel=2)
        keep = np.ones(len(paths), dtype=bool)
        keep[[index for index, _ in failures]] = False
        counts = np.bincount(labels[keep], minlength=len(names))
        lost = [name for name, count in zip(names, counts) if count == 0]
        if lost:
            raise DatasetError(
                f"no readable image in the class folder(s) {', '.join(lost)} of {root}."
            )
        return images[keep], labels[keep], names

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name) or "root"
    key = f"image-folder-{slug}-{_digest(root, names, paths)}-{image_size}x{image_size}-{mode}"
    return make_class_set(build, cache_dir, key)


def _visible(folder: Path, *, want_dirs: bool) -> list[Path]:
    """Sorted non-hidden sub-folders (``want_dirs``) or files of ``folder``."""
    return sorted(
        entry
        for entry in folder.iterdir()
        if not entry.name.startswith(".") and (entry.is_dir() if want_dirs else entry.is_file())
    )


def _choose_classes(root: Path, classes: Sequence[str] | Path | None) -> list[str]:
    available = [folder.name for folder in _visible(root, want_dirs=True)]
    if isinstance(classes, Path):
        if not classes.is_file():
            raise DatasetError(f"class-split file {classes} does not exist; pass an existing file.")
        classes = [line.strip() for line in classes.read_text("utf-8").splitlines() if line.strip()]
    if classes is None:
        if not available:
            raise DatasetError(
                f"{root} has no class folders; expected {root}/<class>/<image> for each class."
            )
        return available
    if isinstance(classes, str):
        raise ConfigError(
            f"classes must be a list of class folder names, not the string "
            f"{classes!r}; write classes=[{classes!r}]."
        )
    chosen = list(classes)
    if not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(f"classes must name distinct class folders, got {chosen!r}.")
    missing = [name for name in chosen if name not in set(available)]
    if missing:
        shown = ", ".join(available[:10]) + (", ..." if len(available) > 10 else "")
        raise DatasetError(
            f"{len(missing)} class(es) asked for are not folders of {root}: "
            f"{', '.join(missing)}. It has {len(available)} class folders ({shown or 'none'})."
        )
    return chosen


def _digest(root: Path, names: list[str], paths: list[Path]) -> str:
    """A short digest of the folder's path, classes and files (name, size, mtime)."""
    digest = hashlib.sha256(str(root.resolve()).encode())
    digest.update("\0".join(names).encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"\0{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]
