"""A decoded dataset, cached on disk once and memory-mapped ever after (DESIGN.md §3 and §4.3).

A cache entry is a folder ``<cache_dir>/<key>/`` holding ``images.npy`` (uint8, ordered by
class), ``labels.npy`` (int64), ``class_names.json`` and, written last, ``manifest.json``: the
completion marker, which records the format version and the size of every file. Every file is
written atomically (temporary file + ``os.replace``), and an entry without a valid manifest is
rebuilt, so a run killed mid-write, a full disk or an older format never yields a half cache.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fastadapt.datasets.class_set import ClassSet
from fastadapt.errors import ConfigError, FastAdaptError
from fastadapt.io.atomic import atomic_write, atomic_write_text

#: Format of the cache folders; entries written under another version are rebuilt.
CACHE_VERSION = 1

_MANIFEST = "manifest.json"
_IMAGES, _LABELS, _NAMES = "images.npy", "labels.npy", "class_names.json"
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CacheError(FastAdaptError):
    """A cache entry could not be written (e.g. the disk is full)."""


def cached_class_set(
    cache_dir: Path, key: str, build: Callable[[], tuple[np.ndarray, np.ndarray, list[str]]]
) -> ClassSet:
    """The :class:`ClassSet` cached under ``key``, calling ``build()`` only if it is absent.

    ``key`` names the entry and should say everything its content depends on (e.g.
    ``"omniglot-background-28x28"``). ``build`` returns ``(images uint8, labels int64,
    class_names)`` as for :class:`ClassSet`; it is called when there is no complete entry of
    this :data:`CACHE_VERSION`, and its result is written before being loaded back
    memory-mapped (``np.load(mmap_mode="r")``), so the first run and later runs see the same.
    """
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ConfigError(
            f"cache key must be a folder name of letters, digits, '.', '_' and '-' (not "
            f"starting with '.' or '-'), got {key!r}; e.g. 'omniglot-background-28x28'."
        )
    folder = Path(cache_dir) / key
    cached = _load(folder, key)
    if cached is not None:
        return cached
    _remove_entry(folder)  # stale or partial: free its space before rebuilding
    images, labels, class_names = build()
    ClassSet(images, labels, class_names)  # refuse malformed data before writing anything
    if images.shape[0] == 0:
        raise ConfigError(f"build() for cache {key!r} returned no images; check the dataset.")
    _write(folder, key, images, np.asarray(labels, dtype=np.int64), [str(n) for n in class_names])
    cached = _load(folder, key)
    if cached is None:
        raise CacheError(
            f"the cache {folder} was written but cannot be read back; check the disk and that "
            "no other program modifies the folder, then delete it and run again."
        )
    return cached


def cache_info(cache_dir: Path) -> list[dict[str, Any]]:
    """One dict per complete cache entry under ``cache_dir`` (of any version), sorted by key:
    ``key``, ``version``, ``classes``, ``images``, ``bytes`` (on disk) and ``path``."""
    entries = []
    root = Path(cache_dir)
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        manifest = _read_manifest(folder)
        if manifest is None:
            continue
        files = [folder / name for name in (_IMAGES, _LABELS, _NAMES, _MANIFEST)]
        entries.append(
            {
                "key": manifest.get("key", folder.name),
                "version": manifest.get("version"),
                "classes": manifest.get("classes"),
                "images": manifest.get("images"),
                "bytes": sum(path.stat().st_size for path in files if path.is_file()),
                "path": str(folder),
            }
        )
    return entries


def _write(
    folder: Path, key: str, images: np.ndarray, labels: np.ndarray, class_names: list[str]
) -> None:
    if labels.size > 1 and np.any(labels[1:] < labels[:-1]):
        # Store the images ordered by class (stably, so example numbers are kept): a loaded
        # ClassSet then finds class c at rows offsets[c]..offsets[c+1] with no indirection.
        order = np.argsort(labels, kind="stable")
        images, labels = images[order], labels[order]
    payloads: dict[str, Callable[[Any], object]] = {
        _IMAGES: lambda handle: np.save(handle, images, allow_pickle=False),
        _LABELS: lambda handle: np.save(handle, labels, allow_pickle=False),
        _NAMES: lambda handle: handle.write(json.dumps(class_names).encode("utf-8")),
    }
    try:
        for name, payload in payloads.items():
            atomic_write(folder / name, payload)
        manifest = {
            "key": key,
            "version": CACHE_VERSION,
            "classes": len(class_names),
            "images": int(images.shape[0]),
            "shape": list(images.shape[1:]),
            "files": {name: (folder / name).stat().st_size for name in payloads},
        }
        atomic_write_text(folder / _MANIFEST, json.dumps(manifest, indent=1) + "\n")
    except BaseException as error:
        _remove_entry(folder)
        if isinstance(error, OSError):
            size = images.nbytes + labels.nbytes
            raise CacheError(
                f"could not write the cache {folder} (about {size / 1e6:.1f} MB): {error}. "
                "Free some disk space or choose another cache folder (cache_dir)."
            ) from error
        raise


def _load(folder: Path, key: str) -> ClassSet | None:
    manifest = _read_manifest(folder)
    if manifest is None or manifest.get("version") != CACHE_VERSION or manifest.get("key") != key:
        return None
    sizes = manifest.get("files")
    if not isinstance(sizes, dict) or set(sizes) != {_IMAGES, _LABELS, _NAMES}:
        return None
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    try:
        images = np.load(folder / _IMAGES, mmap_mode="r", allow_pickle=False)
        labels = np.load(folder / _LABELS, allow_pickle=False)
        class_names = json.loads((folder / _NAMES).read_text("utf-8"))
        return ClassSet(images, labels, class_names)
    except (OSError, ValueError, FastAdaptError):
        return None


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _remove_entry(folder: Path) -> None:
    """Delete an entry's files, the manifest first, so nothing looks complete meanwhile."""
    for name in (_MANIFEST, _IMAGES, _LABELS, _NAMES):
        (folder / name).unlink(missing_ok=True)
