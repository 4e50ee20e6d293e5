"""mini-ImageNet (Vinyals et al. 2016, "Matching networks for one shot learning", NeurIPS) with
the class split of Ravi & Larochelle (2017, "Optimization as a model for few-shot learning",
ICLR): 100 ImageNet classes of 600 images, 64 / 16 / 20 for train / val / test.

The images are ImageNet's and are not downloaded (ImageNet's licence); ``root`` holds them in
one of the two layouts in common use:

- ``root/images/<filename>``: the 60,000 JPEGs named in the shipped Ravi & Larochelle csv files
  (``n0153282900000005.jpg``...), as made by Ravi & Larochelle's preprocessing script;
- ``root/mini-imagenet-cache-<split>.pkl``: one pickle per split holding ``image_data``
  (uint8 ``[N, 84, 84, 3]``) and ``class_dict`` (``{wnid: [indices into image_data]}``).

Classes are the WordNet ids (``n01532829``...) in the csv's order.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fastadapt.datasets._common import (
    Arrays,
    DatasetError,
    check_image_size,
    check_split,
    decode_images,
    load_pickle,
    make_class_set,
    refuse_failures,
    split_lines,
    str_keys,
)
from fastadapt.datasets.class_set import ClassSet

__all__ = ["DatasetError", "mini_imagenet"]

_PICKLE = "mini-imagenet-cache-{split}.pkl"
_IMAGES = "images"


def mini_imagenet(
    root: Path | str, split: str, *, image_size: int = 84, cache_dir: Path | str | None = None
) -> ClassSet:
    """The mini-ImageNet classes of ``split`` (``train``/``val``/``test``: 64 / 16 / 20).

    Args:
        root: folder holding ``images/`` or ``mini-imagenet-cache-<split>.pkl`` (the pickle is
            used when both are there).
        split: ``train``, ``val`` or ``test``.
        image_size: side of the square images; other than 84, images are resized with Pillow's
            Lanczos filter.
        cache_dir: keep the decoded images there, as ``mini-imagenet-<split>-<size>x<size>``.

    Raises:
        DatasetError: neither layout is there (the message lists the files expected and
            where), the images folder lacks some of the split's files (it names them), or a
            file is unreadable or holds other classes than the split's.
    """
    check_split(split)
    check_image_size(image_size)
    root = Path(root)
    filenames, labels, wnids = _ravi_split(split)

    def build() -> Arrays:
        cache_file = root / _PICKLE.format(split=split)
        if cache_file.is_file():
            return _from_pickle(cache_file, wnids, image_size)
        if (root / _IMAGES).is_dir():
            return _from_images(root, split, filenames, labels, wnids, image_size)
        raise DatasetError(
            f"mini-ImageNet ({split}) is not in {root}. It needs either\n"
            f"  {cache_file} (a pickle with 'image_data' uint8 [N, 84, 84, 3] and "
            f"'class_dict' {{wnid: [indices]}}), or\n"
            f"  {root / _IMAGES}/ holding the {len(filenames)} images the Ravi & Larochelle "
            f"split names for {split} ({filenames[0]}, {filenames[1]}, ...).\n"
            "The images are ImageNet's and cannot be downloaded by fastadapt; make them with "
            "Ravi & Larochelle's script from ILSVRC-2012, or use the pickles in common use."
        )

    return make_class_set(build, cache_dir, f"mini-imagenet-{split}-{image_size}x{image_size}")


def _ravi_split(split: str) -> tuple[list[str], np.ndarray, list[str]]:
    """Filenames, their class ids, and the class wnids (csv order) of a Ravi split."""
    rows = list(csv.DictReader(split_lines(f"splits/miniimagenet/ravi/{split}.csv")))
    wnids = list(dict.fromkeys(row["label"] for row in rows))
    index = {wnid: i for i, wnid in enumerate(wnids)}
    labels = np.array([index[row["label"]] for row in rows], dtype=np.int64)
    return [row["filename"] for row in rows], labels, wnids


def _from_images(
    root: Path, split: str, filenames: list[str], labels: np.ndarray, wnids: list[str], size: int
) -> Arrays:
    folder = root / _IMAGES
    present = set(os.listdir(folder))
    missing = [name for name in filenames if name not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise DatasetError(
            f"{folder} lacks {len(missing)} of the {len(filenames)} images of the mini-ImageNet "
            f"{split} split ({shown}). Put every image the Ravi & Larochelle split names in "
            f"{folder}/, or provide {root / _PICKLE.format(split=split)} instead."
        )
    paths = [folder / name for name in filenames]
    images, failures = decode_images(paths, size=size, mode="RGB", desc=f"mini-ImageNet {split}")
    refuse_failures(failures, lambda i: str(paths[i]))
    return images, labels, wnids


def _from_pickle(path: Path, wnids: list[str], size: int) -> Arrays:
    with path.open("rb") as file:
        table = str_keys(load_pickle(file, path), path, ("image_data", "class_dict"))
    data, class_dict = table["image_data"], table["class_dict"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 4
        and data.shape[3] == 3
    ) or not isinstance(class_dict, dict):
        raise DatasetError(
            f"{path}: expected 'image_data' as uint8 [N, H, W, 3] and 'class_dict' as a dict, "
            f"found {type(data).__name__} {getattr(data, 'shape', '')} and "
            f"{type(class_dict).__name__}; it is not a mini-ImageNet cache pickle."
        )
    classes = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in class_dict.items()}
    absent, extra = sorted(set(wnids) - set(classes)), sorted(set(classes) - set(wnids))
    if absent or extra:
        raise DatasetError(
            f"{path} does not hold the classes of its Ravi & Larochelle split: "
            f"{len(absent)} missing ({', '.join(absent[:5])}) and {len(extra)} unexpected "
            f"({', '.join(extra[:5])}). Is it the file of another split?"
        )
    labels = np.full(len(data), -1, dtype=np.int64)
    for label, wnid in enumerate(wnids):
        indices = np.asarray(classes[wnid], dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(data)):
            raise DatasetError(
                f"{path}: class_dict[{wnid!r}] points outside image_data ({len(data)} images)."
            )
        if (labels[indices] >= 0).any():
            raise DatasetError(f"{path}: class_dict puts an image of {wnid} in two classes.")
        labels[indices] = label
    if (labels < 0).any():
        data, labels = data[labels >= 0], labels[labels >= 0]
    if data.shape[1:3] != (size, size):
        data, failures = decode_images(list(data), size=size, mode="RGB", desc=path.name)
        refuse_failures(failures, lambda i: f"image {i} of {path}")
    return np.ascontiguousarray(data), labels, wnids
