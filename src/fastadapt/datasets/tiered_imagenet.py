"""tiered-ImageNet (Ren et al. 2018, "Meta-learning for semi-supervised few-shot
classification", ICLR): 608 ImageNet classes grouped by 34 high-level categories, split by
category so that train, val and test share none (351 / 97 / 160 classes, 84x84 RGB).

The images are ImageNet's and are not downloaded (ImageNet's licence); ``root`` holds, for
each split, the files in common use:

- ``<split>_labels.pkl``: a dict with ``label_specific`` (the class of each image) and
  ``label_specific_str`` (the class names, indexed by those labels), as written by Ren et
  al.'s ``few-shot-ssl-public`` code (its other keys, the general categories, are not used);
- the images, either ``<split>_images_png.pkl`` (a list of PNG-encoded images, Ren et al.'s
  format) or ``<split>_images.npz`` (key ``images``, uint8 ``[N, 84, 84, 3]``, the decoded
  form distributed with MetaOptNet, Lee et al. 2019).
"""

from __future__ import annotations

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
    str_keys,
)
from fastadapt.datasets.class_set import ClassSet

__all__ = ["DatasetError", "tiered_imagenet"]


def tiered_imagenet(
    root: Path | str, split: str, *, image_size: int = 84, cache_dir: Path | str | None = None
) -> ClassSet:
    """The tiered-ImageNet classes of ``split`` (``train``/``val``/``test``).

    Args:
        root: folder holding ``<split>_labels.pkl`` and ``<split>_images_png.pkl`` or
            ``<split>_images.npz`` (the PNG pickle is used when both are there).
        split: ``train``, ``val`` or ``test``.
        image_size: side of the square images; other than the files' 84, images are resized
            with Pillow's Lanczos filter.
        cache_dir: keep the decoded images there, as ``tiered-imagenet-<split>-<size>x<size>``.
            Decoding the training split takes about 9.5 GB of memory once; later runs
            memory-map the cache.

    Raises:
        DatasetError: files are missing (the message lists those expected and where), or are
            unreadable, or disagree (as many labels as images, labels within the names).
    """
    check_split(split)
    check_image_size(image_size)
    root = Path(root)

    def build() -> Arrays:
        labels_file = root / f"{split}_labels.pkl"
        png_file, npz_file = root / f"{split}_images_png.pkl", root / f"{split}_images.npz"
        absent = [] if labels_file.is_file() else [str(labels_file)]
        if not (png_file.is_file() or npz_file.is_file()):
            absent.append(f"{png_file} or {npz_file}")
        if absent:
            raise DatasetError(
                f"tiered-ImageNet ({split}) is incomplete in {root}; missing: "
                f"{'; '.join(absent)}. Each split needs <split>_labels.pkl and either "
                "<split>_images_png.pkl (PNG-encoded images) or <split>_images.npz ('images', "
                "uint8 [N, 84, 84, 3]). The images are ImageNet's and cannot be downloaded by "
                "fastadapt; make them with Ren et al.'s few-shot-ssl-public tools."
            )
        labels, names = _read_labels(labels_file)
        if png_file.is_file():
            images = _read_png_pickle(png_file, image_size)
        else:
            images = _read_npz(npz_file, image_size)
        if len(images) != len(labels):
            raise DatasetError(
                f"{root} holds {len(images)} {split} images but {len(labels)} labels in "
                f"{labels_file}; the files belong to different versions or splits."
            )
        used, inverse = np.unique(labels, return_inverse=True)
        return images, inverse.astype(np.int64), [names[label] for label in used]

    return make_class_set(build, cache_dir, f"tiered-imagenet-{split}-{image_size}x{image_size}")


def _read_labels(path: Path) -> tuple[np.ndarray, list[str]]:
    """Each image's class, and the class names those classes index."""
    with path.open("rb") as file:
        table = str_keys(load_pickle(file, path), path, ("label_specific", "label_specific_str"))
    labels = np.asarray(table["label_specific"]).astype(np.int64).reshape(-1)
    names = [
        n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in table["label_specific_str"]
    ]
    if labels.size and not 0 <= labels.min() <= labels.max() < len(names):
        raise DatasetError(
            f"{path}: label_specific runs from {labels.min()} to {labels.max()} but "
            f"label_specific_str names {len(names)} classes."
        )
    if len(set(names)) != len(names):
        raise DatasetError(f"{path}: label_specific_str names some class twice.")
    return labels, names


def _read_png_pickle(path: Path, size: int) -> np.ndarray:
    with path.open("rb") as file:
        encoded = load_pickle(file, path)
    if not isinstance(encoded, (list, tuple, np.ndarray)):
        raise DatasetError(
            f"{path} holds a {type(encoded).__name__}, not the list of PNG-encoded images of "
            "tiered-ImageNet."
        )
    # Ren et al.'s lists hold cv2.imencode's uint8 arrays; others hold bytes.
    sources = [memoryview(item) if isinstance(item, np.ndarray) else item for item in encoded]
    images, failures = decode_images(sources, size=size, mode="RGB", desc=path.name)
    refuse_failures(failures, lambda i: f"image {i} of {path}")
    return images


def _read_npz(path: Path, size: int) -> np.ndarray:
    try:
        with np.load(path) as archive:
            images = archive["images"]
    except KeyError as error:
        raise DatasetError(f"{path} has no 'images' array; it is not tiered-ImageNet.") from error
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(
            f"{path} cannot be read ({error}); it is truncated or corrupt: replace it."
        ) from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DatasetError(
            f"{path}: 'images' is {images.dtype} {images.shape}, not uint8 [N, H, W, 3]."
        )
    if images.shape[1:3] != (size, size):
        images, failures = decode_images(list(images), size=size, mode="RGB", desc=path.name)
        refuse_failures(failures, lambda i: f"image {i} of {path}")
    return images
