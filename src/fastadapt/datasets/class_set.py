"""Images of many classes in one compact uint8 array, decoded once (DESIGN.md §3).

A :class:`ClassSet` is what a dataset offers a few-shot sampler: for each class, the positions of
its examples in one uint8 array (in memory or memory-mapped from the cache). The images are
ordered by class once, so the examples of class ``c`` are the rows ``offsets[c]`` to
``offsets[c + 1]`` and an episode is an index array. Class augmentations — Omniglot's rotations
by multiples of 90 degrees as new classes (Santoro et al. 2016; Vinyals et al. 2016) — are views:
a view maps each of its classes to a base class and a rotation, and never copies an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fastadapt.errors import ConfigError

_DEGREES = (0, 90, 180, 270)


class ClassSet:
    """Images of many classes in one compact uint8 array, decoded once (DESIGN.md §3).

    Args:
        images: uint8 ``[N, H, W]`` (grayscale) or ``[N, H, W, C]``; may be a ``np.memmap``.
        labels: integer ``[N]``, the index in ``class_names`` of each image's class.
        class_names: one unique name per class.
        rotations: ``None``, or one rotation in degrees (0, 90, 180 or 270, counter-clockwise
            as ``np.rot90`` and PIL's ``Image.rotate``) per class, applied whenever that class's
            images are gathered.

    The examples of a class are numbered ``0..count-1`` in the order they appear in ``images``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        rotations: Sequence[int] | None = None,
    ) -> None:
        names = [str(name) for name in class_names]
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
            raise ConfigError(
                f"images must be a uint8 numpy array, got {type(images).__name__} of dtype "
                f"{getattr(images, 'dtype', None)}; decode images to uint8 (0..255) first."
            )
        if images.ndim not in (3, 4):
            raise ConfigError(
                f"images must have shape [N, H, W] or [N, H, W, C], got {images.shape}."
            )
        labels = np.asarray(labels)
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(
                f"labels must be an integer array of shape [{images.shape[0]}] (one per image), "
                f"got dtype {labels.dtype} and shape {labels.shape}."
            )
        labels = labels.astype(np.int64, copy=False)
        if labels.size and (labels.min() < 0 or labels.max() >= len(names)):
            raise ConfigError(
                f"labels must lie in 0..{len(names) - 1} (one per class name), found values "
                f"from {labels.min()} to {labels.max()}; pass every class name."
            )
        _check_unique(names)
        if rotations is None:
            rotation_k = np.zeros(len(names), dtype=np.int64)
        else:
            if len(rotations) != len(names):
                raise ConfigError(
                    f"rotations must give one angle per class ({len(names)}), got {len(rotations)}."
                )
            rotation_k = np.array([_quarter_turns(deg) for deg in rotations], dtype=np.int64)
        sorted_already = labels.size < 2 or bool(np.all(labels[1:] >= labels[:-1]))
        order = None if sorted_already else np.argsort(labels, kind="stable")
        counts = np.bincount(labels, minlength=len(names)).astype(np.int64)
        self._images = images
        self._order = order
        self._offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        self._counts = counts
        self._base = np.arange(len(names), dtype=np.int64)
        self._rotation = rotation_k
        self.class_names = names
        self._check_square()

    # ----------------------------------------------------------------------------------- shape
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return 1 if self._images.ndim == 3 else self._images.shape[3]

    @property
    def height(self) -> int:
        return self._images.shape[1]

    @property
    def width(self) -> int:
        return self._images.shape[2]

    @property
    def images(self) -> np.ndarray:
        """The shared uint8 array behind this set and all its views (every base image,
        unrotated; possibly a ``np.memmap``). Index it through :meth:`gather`."""
        return self._images

    def examples_per_class(self) -> np.ndarray:
        """Number of examples of each class, int64 ``[num_classes]``."""
        return self._counts[self._base]

    def __len__(self) -> int:
        return int(self.examples_per_class().sum())

    def __repr__(self) -> str:
        shape = (self.channels, self.height, self.width)
        return f"ClassSet({self.num_classes} classes, {len(self)} images of shape {shape})"

    # ----------------------------------------------------------------------------------- views
    def subset(self, names: Sequence[str]) -> ClassSet:
        """The classes called ``names``, in that order, as a view (no image is copied)."""
        wanted = [str(name) for name in names]
        _check_unique(wanted)
        position = {name: i for i, name in enumerate(self.class_names)}
        missing = [name for name in wanted if name not in position]
        if missing:
            raise ConfigError(
                f"{len(missing)} of the {len(wanted)} requested classes are not in this set "
                f"(first: {missing[:3]}); it has {self.num_classes} classes such as "
                f"{self.class_names[:2]}. Check that the split file matches the dataset (and "
                "that rotation classes are asked of a with_rotations() view)."
            )
        chosen = np.array([position[name] for name in wanted], dtype=np.int64)
        return self._view(self._base[chosen], self._rotation[chosen], wanted)

    def with_rotations(self, degrees: Sequence[int] = _DEGREES) -> ClassSet:
        """Each (class, rotation) as a class named ``f"{name}/rot{deg:03d}"``, as a view.

        This is the class augmentation of Santoro et al. (2016) and Vinyals et al. (2016) on
        Omniglot, with the Vinyals split's naming (e.g. ``Angelic/character01/rot090``). Classes
        are ordered class by class, each with its rotations in the order of ``degrees``.
        """
        turns = np.array([_quarter_turns(deg) for deg in degrees], dtype=np.int64)
        if turns.size == 0 or np.unique(turns).size != turns.size:
            raise ConfigError(
                f"degrees must be distinct angles among {_DEGREES}, got {tuple(degrees)}."
            )
        base = np.repeat(self._base, turns.size)
        rotation = (np.repeat(self._rotation, turns.size) + np.tile(turns, self.num_classes)) % 4
        names = [f"{name}/rot{int(deg):03d}" for name in self.class_names for deg in degrees]
        view = self._view(base, rotation, names)
        view._check_square()
        return view

    # ---------------------------------------------------------------------------------- gather
    def gather(self, class_ids: np.ndarray, example_ids: np.ndarray) -> torch.Tensor:
        """Images of the given classes and examples as float32 in ``[0, 1]``, rotations applied.

        ``class_ids`` ``[..., ways]`` and ``example_ids`` ``[..., ways, n]`` (example numbers
        *within* each class) give a tensor ``[..., ways, n, C, H, W]``. The work is one
        fancy-index gather from the uint8 array (one per rotation group, at most four, when
        this is a rotation view: each group is copied rotated into place) and one float
        conversion.
        """
        class_ids = np.asarray(class_ids, dtype=np.int64)
        example_ids = np.asarray(example_ids, dtype=np.int64)
        if example_ids.shape[:-1] != class_ids.shape or example_ids.ndim == 0:
            raise ConfigError(
                f"example_ids must have the shape of class_ids plus one axis, got class_ids "
                f"{class_ids.shape} and example_ids {example_ids.shape}."
            )
        if class_ids.size and (class_ids.min() < 0 or class_ids.max() >= self.num_classes):
            raise ConfigError(
                f"class ids must lie in 0..{self.num_classes - 1}, got values from "
                f"{class_ids.min()} to {class_ids.max()}."
            )
        base = self._base[class_ids][..., None]
        if example_ids.size and (
            example_ids.min() < 0 or (example_ids >= self._counts[base]).any()
        ):
            raise ConfigError(
                "example ids must lie in 0..count-1 of their class (see examples_per_class()); "
                f"got values from {example_ids.min()} to {example_ids.max()}."
            )
        rows = (self._offsets[base] + example_ids).reshape(-1)
        if self._order is not None:
            rows = self._order[rows]
        rotation = self._rotation[class_ids]
        if not rotation.any():
            raw = np.take(self._images, rows, axis=0)
        else:
            # One gather per rotation, written rotated into place (the rot90 is a strided view).
            rotation = np.broadcast_to(rotation[..., None], example_ids.shape).reshape(-1)
            raw = np.empty((rows.size, *self._images.shape[1:]), dtype=np.uint8)
            for k in range(4):
                group = np.flatnonzero(rotation == k)
                if group.size:
                    picked = np.take(self._images, rows[group], axis=0)
                    raw[group] = np.rot90(picked, k, axes=(1, 2))
        pixels = pixels_to_tensor(raw)
        return pixels.view(*example_ids.shape, *pixels.shape[1:])

    # --------------------------------------------------------------------------------- helpers
    def _view(self, base: np.ndarray, rotation: np.ndarray, names: list[str]) -> ClassSet:
        view = object.__new__(ClassSet)
        view.__dict__.update(self.__dict__)
        view._base, view._rotation, view.class_names = base, rotation, names
        return view

    def _check_square(self) -> None:
        if self.height != self.width and (self._rotation % 2).any():
            raise ConfigError(
                f"rotations by 90 or 270 degrees need square images, these are "
                f"{self.height}x{self.width}; resize them or rotate by 0/180 only."
            )

    def __getstate__(self) -> dict[str, Any]:
        """Pickle a memory-mapped set as its file name, so worker processes re-map it."""
        state = dict(self.__dict__)
        images = self._images
        if isinstance(images, np.memmap) and images.filename is not None:
            state["_images"] = (images.filename, images.offset, images.shape, images.dtype.str)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        images = state["_images"]
        if isinstance(images, tuple):
            filename, offset, shape, dtype = images
            state["_images"] = np.memmap(filename, dtype, "r", offset, shape)
        self.__dict__.update(state)


def pixels_to_tensor(raw: np.ndarray) -> torch.Tensor:
    """uint8 images ``[N, H, W]`` or ``[N, H, W, C]`` as float32 ``[N, C, H, W]`` in ``[0, 1]``.

    The one conversion from decoded pixels to model inputs, shared by training episodes
    (:meth:`ClassSet.gather`) and by inference on new images: no mean or standard-deviation
    normalisation, only division by 255.
    """
    raw = raw[:, None] if raw.ndim == 3 else raw.transpose(0, 3, 1, 2)
    # One pass: uint8 -> float32 and /255, single-threaded (NumPy), into a fresh C-ordered
    # array (so RGB comes out channels-first in memory too).
    return torch.from_numpy(np.divide(raw, np.float32(255), dtype=np.float32, order="C"))


def _check_unique(names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"class names must be unique; {name!r} appears more than once.")
        seen.add(name)


def _quarter_turns(degrees: int) -> int:
    if degrees not in _DEGREES:
        raise ConfigError(f"rotations must be one of {_DEGREES} degrees, got {degrees!r}.")
    return int(degrees) // 90
