"""What the image-dataset loaders share: split files, safe unpickling, threaded decoding, caching.

Every loader turns its dataset's files into one uint8 array, int64 labels and class names, once
(DESIGN.md §3, §4.3), and hands them to a :class:`ClassSet` — through the on-disk cache when a
cache folder is given.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from fastadapt.datasets.cache import cached_class_set
from fastadapt.datasets.class_set import ClassSet
from fastadapt.errors import ConfigError, FastAdaptError

SPLITS = ("train", "val", "test")
#: A decodable image: a file, encoded bytes (PNG, JPEG...), or pixels to resize.
ImageSource = Path | bytes | memoryview | np.ndarray
Arrays = tuple[np.ndarray, np.ndarray, list[str]]

#: The only globals a dataset pickle may name: NumPy arrays, dtypes and scalars (under the
#: NumPy 1.x module names; NumPy 2 writes ``numpy._core``), bytes written by Python 3 with
#: protocol 2, and ordered dicts. Anything else (``os.system``...) is refused, not called.
_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }
)
_NUMPY_CORE = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
#: What Pillow raises on a file it cannot decode (truncated, corrupt, not an image, too large).
_DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    Image.DecompressionBombError,
)
_CHUNK = 256


class DatasetError(FastAdaptError):
    """A dataset's files are missing, incomplete, unreadable, or belong to another dataset."""


def check_split(split: str) -> None:
    """Refuse a split name other than ``train``, ``val`` or ``test``."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {split!r}.")


def check_image_size(image_size: int) -> None:
    """Refuse an image side that is not a positive integer."""
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(f"image_size must be a positive integer (e.g. 84), got {image_size!r}.")


def split_lines(relative: str) -> list[str]:
    """The non-empty lines of a split file shipped under ``fastadapt/datasets/splits``."""
    text = resources.files("fastadapt.datasets").joinpath(relative).read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def make_class_set(build: Callable[[], Arrays], cache_dir: Path | str | None, key: str) -> ClassSet:
    """``ClassSet(*build())``, through the on-disk cache under ``key`` when ``cache_dir`` is set."""
    if cache_dir is None:
        return ClassSet(*build())
    return cached_class_set(Path(cache_dir), key, build)


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds data only: see ``_PICKLE_GLOBALS``."""

    def find_class(self, module: str, name: str) -> Any:
        canonical = module.replace("numpy._core", "numpy.core", 1)
        if (canonical, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which a data file has no reason to contain"
            )
        return super().find_class(canonical.replace("numpy.core", _NUMPY_CORE, 1), name)


def load_pickle(file: IO[bytes], what: str | Path) -> Any:
    """Unpickle a dataset file (Python 2 or 3, NumPy 1 or 2) without running code from it.

    Python 2 strings are read as latin-1, which is how NumPy arrays pickled by Python 2 (the
    CIFAR-100 batches, tiered-ImageNet) must be read.
    """
    try:
        return _DataUnpickler(file, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as error:
        raise DatasetError(
            f"{what} cannot be unpickled ({error}); it is truncated, corrupt or not the expected "
            "dataset file: replace it with a fresh copy."
        ) from error


def str_keys(value: Any, what: str | Path, required: Sequence[str]) -> dict[str, Any]:
    """A pickled dict with its keys as ``str`` (Python 2/3 pickles give ``str`` or ``bytes``)."""
    if not isinstance(value, dict):
        raise DatasetError(f"{what} holds a {type(value).__name__}, not the expected dict.")
    table = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in value.items()}
    missing = [key for key in required if key not in table]
    if missing:
        raise DatasetError(
            f"{what} lacks the key(s) {', '.join(missing)} (it has {', '.join(map(str, table))});"
            " it is not the expected dataset file."
        )
    return table


def _decode_one(source: ImageSource, size: int, mode: str) -> np.ndarray:
    if isinstance(source, np.ndarray):
        image = Image.fromarray(source)
    else:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as opened:
            image = ImageOps.exif_transpose(opened)  # a loaded copy, upright as viewers show it
    image = image.convert(mode)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def _decode_range(
    sources: Sequence[ImageSource], out: np.ndarray, start: int, mode: str
) -> list[tuple[int, str]]:
    failures = []
    for index in range(start, min(start + _CHUNK, len(sources))):
        try:
            out[index] = _decode_one(sources[index], out.shape[1], mode)
        except _DECODE_ERRORS as error:
            failures.append((index, f"{type(error).__name__}: {error}"))
    return failures


def decode_images(
    sources: Sequence[ImageSource], *, size: int, mode: str, desc: str
) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode images into one uint8 array ``[N, size, size]`` (mode ``L``) or ``[..., 3]`` (RGB).

    Each image is turned upright (EXIF orientation), converted to ``mode`` and, unless it has
    the size already, resized with Pillow's Lanczos filter (the ``ANTIALIAS`` filter of the
    original mini-ImageNet and MAML preprocessing). Decoding runs on a thread pool: Pillow
    releases the GIL while it decodes and resizes. Returns the array and the images that could
    not be decoded, as ``(index, reason)``; their rows are left zero.
    """
    shape = (len(sources), size, size) if mode == "L" else (len(sources), size, size, 3)
    out = np.zeros(shape, dtype=np.uint8)
    failures: list[tuple[int, str]] = []
    starts = range(0, len(sources), _CHUNK)
    with (
        ThreadPoolExecutor(min(32, os.cpu_count() or 1)) as pool,
        tqdm(total=len(sources), desc=desc, unit="img", disable=None, leave=False) as bar,
    ):
        for start, found in zip(
            starts, pool.map(lambda start: _decode_range(sources, out, start, mode), starts)
        ):
            failures.extend(found)
            bar.update(min(_CHUNK, len(sources) - start))
    return out, failures


def refuse_failures(failures: list[tuple[int, str]], describe: Callable[[int], str]) -> None:
    """Raise :class:`DatasetError` naming the first image that could not be decoded, if any."""
    if failures:
        index, reason = failures[0]
        others = f" ({len(failures) - 1} more image(s) failed too)" if len(failures) > 1 else ""
        raise DatasetError(
            f"cannot decode {describe(index)}: {reason}{others}. The file is truncated or "
            "corrupt: replace it with a fresh copy."
        )
