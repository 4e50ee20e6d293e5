"""torchmeta's dataset helpers: ``omniglot(folder, shots, ways, ...)`` and the like.

Each returns an :class:`EpisodeDataset` over a class split of fastadapt's dataset registry
(:mod:`fastadapt.datasets.registry`), with torchmeta's signature and its defaults from the
literature: Omniglot 28x28 with the Vinyals split and rotations by 90/180/270 degrees as
classes, mini-ImageNet and tiered-ImageNet 84x84, CIFAR-FS and FC100 32x32.

``folder`` is the folder that holds the dataset's own folder, as in torchmeta:
``<folder>/omniglot``, ``<folder>/miniimagenet``, ``<folder>/tieredimagenet`` and
``<folder>/cifar100`` (for both CIFAR-FS and FC100). fastadapt reads the original files there
(Omniglot's zips, CIFAR-100's python archive, the mini-ImageNet cache pickles, tiered-ImageNet's
pickles), not torchmeta's HDF5 conversions; see ``docs/migrating-from-torchmeta.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from fastadapt.compat.torchmeta.datasets.episodes import EpisodeDataset, Transform
from fastadapt.datasets._common import DatasetError
from fastadapt.datasets.class_set import ClassSet
from fastadapt.datasets.registry import dataset
from fastadapt.errors import ConfigError

__all__ = ["cifar_fs", "fc100", "miniimagenet", "omniglot", "tieredimagenet"]

_SPLITS = ("train", "val", "test")
#: torchmeta's helper name -> (fastadapt registry name, torchmeta's folder under ``folder``).
_DATASETS = {
    "omniglot": ("omniglot", "omniglot"),
    "miniimagenet": ("mini-imagenet", "miniimagenet"),
    "tieredimagenet": ("tiered-imagenet", "tieredimagenet"),
    "cifar_fs": ("cifar-fs", "cifar100"),
    "fc100": ("fc100", "cifar100"),
}


def omniglot(
    folder: str | os.PathLike[str],
    shots: int,
    ways: int,
    shuffle: bool = True,
    test_shots: int | None = None,
    seed: int | None = None,
    *,
    meta_train: bool = False,
    meta_val: bool = False,
    meta_test: bool = False,
    meta_split: str | None = None,
    download: bool = False,
    transform: Transform | None = None,
    **kwargs: Any,
) -> EpisodeDataset:
    """Omniglot episodes: Vinyals split (1028 / 172 / 423 characters), 28x28, rotations by
    90/180/270 degrees as further classes (4112 / 688 / 1692 classes).

    Args:
        folder: the folder holding ``omniglot/`` (with ``images_background.zip`` and
            ``images_evaluation.zip``, fetched there with ``download=True``).
        shots: ``train`` (support) examples per class, K of K-shot.
        ways: classes per task, N of N-way.
        shuffle: draw the examples of each class at random (else the first ones).
        test_shots: ``test`` (query) examples per class (default: ``shots``).
        seed: the seed of the episode stream (default: drawn from ``torch``'s generator).
        meta_train / meta_val / meta_test: the split, one of them ``True``...
        meta_split: ...or its name, ``"train"``, ``"val"`` or ``"test"``.
        download: fetch missing files from the official address (md5-verified).
        transform: applied to each image, a float32 tensor ``[C, H, W]`` in ``[0, 1]``.
        kwargs: torchmeta's other arguments: ``class_augmentations=None`` (no rotation
            classes), ``use_vinyals_split=True``, ``target_transform=None`` and
            ``dataset_transform=None`` are accepted; other values raise :class:`ConfigError`
            naming the alternative.
    """
    return _episodes(
        "omniglot",
        folder,
        shots,
        ways,
        shuffle,
        test_shots,
        seed,
        (meta_train, meta_val, meta_test, meta_split),
        download,
        transform,
        kwargs,
    )


def miniimagenet(
    folder: str | os.PathLike[str],
    shots: int,
    ways: int,
    shuffle: bool = True,
    test_shots: int | None = None,
    seed: int | None = None,
    *,
    meta_train: bool = False,
    meta_val: bool = False,
    meta_test: bool = False,
    meta_split: str | None = None,
    download: bool = False,
    transform: Transform | None = None,
    **kwargs: Any,
) -> EpisodeDataset:
    """mini-ImageNet episodes: Ravi & Larochelle's split (64 / 16 / 20 classes), 84x84 RGB.

    ``folder`` holds ``miniimagenet/`` with ``mini-imagenet-cache-<split>.pkl`` (what
    torchmeta's ``mini-imagenet.tar.gz`` holds) or ``images/``; the images cannot be
    downloaded, so ``download=True`` raises :class:`ConfigError`. Other arguments as
    :func:`omniglot`.
    """
    return _episodes(
        "miniimagenet",
        folder,
        shots,
        ways,
        shuffle,
        test_shots,
        seed,
        (meta_train, meta_val, meta_test, meta_split),
        download,
        transform,
        kwargs,
    )


def tieredimagenet(
    folder: str | os.PathLike[str],
    shots: int,
    ways: int,
    shuffle: bool = True,
    test_shots: int | None = None,
    seed: int | None = None,
    *,
    meta_train: bool = False,
    meta_val: bool = False,
    meta_test: bool = False,
    meta_split: str | None = None,
    download: bool = False,
    transform: Transform | None = None,
    **kwargs: Any,
) -> EpisodeDataset:
    """tiered-ImageNet episodes: Ren et al.'s split (351 / 97 / 160 classes), 84x84 RGB.

    ``folder`` holds ``tieredimagenet/`` with ``<split>_labels.pkl`` and
    ``<split>_images_png.pkl`` (what torchmeta's ``tiered-imagenet.tar`` holds) or
    ``<split>_images.npz``; the images cannot be downloaded, so ``download=True`` raises
    :class:`ConfigError`. Other arguments as :func:`omniglot`.
    """
    return _episodes(
        "tieredimagenet",
        folder,
        shots,
        ways,
        shuffle,
        test_shots,
        seed,
        (meta_train, meta_val, meta_test, meta_split),
        download,
        transform,
        kwargs,
    )


def cifar_fs(
    folder: str | os.PathLike[str],
    shots: int,
    ways: int,
    shuffle: bool = True,
    test_shots: int | None = None,
    seed: int | None = None,
    *,
    meta_train: bool = False,
    meta_val: bool = False,
    meta_test: bool = False,
    meta_split: str | None = None,
    download: bool = False,
    transform: Transform | None = None,
    **kwargs: Any,
) -> EpisodeDataset:
    """CIFAR-FS episodes: Bertinetto et al.'s split of CIFAR-100 (64 / 16 / 20 classes), 32x32.

    ``folder`` holds ``cifar100/`` with ``cifar-100-python.tar.gz`` or its extracted
    ``cifar-100-python/`` (``download=True`` fetches the archive). Other arguments as
    :func:`omniglot`.
    """
    return _episodes(
        "cifar_fs",
        folder,
        shots,
        ways,
        shuffle,
        test_shots,
        seed,
        (meta_train, meta_val, meta_test, meta_split),
        download,
        transform,
        kwargs,
    )


def fc100(
    folder: str | os.PathLike[str],
    shots: int,
    ways: int,
    shuffle: bool = True,
    test_shots: int | None = None,
    seed: int | None = None,
    *,
    meta_train: bool = False,
    meta_val: bool = False,
    meta_test: bool = False,
    meta_split: str | None = None,
    download: bool = False,
    transform: Transform | None = None,
    **kwargs: Any,
) -> EpisodeDataset:
    """FC100 episodes: Oreshkin et al.'s split of CIFAR-100 by superclass (60 / 20 / 20
    classes), 32x32. ``folder`` as :func:`cifar_fs`; other arguments as :func:`omniglot`.
    """
    return _episodes(
        "fc100",
        folder,
        shots,
        ways,
        shuffle,
        test_shots,
        seed,
        (meta_train, meta_val, meta_test, meta_split),
        download,
        transform,
        kwargs,
    )


def _episodes(
    helper: str,
    folder: str | os.PathLike[str],
    shots: int,
    ways: int,
    shuffle: bool,
    test_shots: int | None,
    seed: int | None,
    split_arguments: tuple[bool, bool, bool, str | None],
    download: bool,
    transform: Transform | None,
    kwargs: dict[str, Any],
) -> EpisodeDataset:
    name, subfolder = _DATASETS[helper]
    drop_rotations = _check_torchmeta_options(helper, kwargs)
    split = _split(*split_arguments)
    if not isinstance(folder, str | os.PathLike):
        raise TypeError(
            f"{helper}(): folder must be a path (the folder holding {subfolder}/), got "
            f"{type(folder).__name__}."
        )
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()).item())
    elif isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{helper}(): seed must be an integer or None, got {seed!r}.")
    test_shots = shots if test_shots is None else test_shots
    root = Path(folder).expanduser() / subfolder
    classes = _load(helper, name, root, split, bool(download))
    if drop_rotations:
        unrotated = [n for n in classes.class_names if n.endswith("/rot000")]
        classes = classes.subset(unrotated)
    try:
        return EpisodeDataset(
            classes, ways, shots, test_shots, seed=seed, shuffle=shuffle, transform=transform
        )
    except ConfigError as error:
        raise ConfigError(
            f"{helper}(shots={shots!r}, ways={ways!r}, test_shots={test_shots!r}) on the {split} "
            f"split ({classes.num_classes} classes): {error} (queries are test_shots here.)"
        ) from error


def _split(meta_train: bool, meta_val: bool, meta_test: bool, meta_split: str | None) -> str:
    """The split chosen by torchmeta's flags or ``meta_split``: exactly one way, once."""
    flags = [split for split, chosen in zip(_SPLITS, (meta_train, meta_val, meta_test)) if chosen]
    if meta_split is not None:
        if flags:
            raise ConfigError(
                f"both meta_split={meta_split!r} and meta_{flags[0]}=True choose a split; pass "
                "only one of them."
            )
        if meta_split not in _SPLITS:
            raise ConfigError(
                f"unknown meta_split {meta_split!r}; use one of 'train', 'val', 'test'."
            )
        return meta_split
    if len(flags) > 1:
        raise ConfigError(
            f"{' and '.join(f'meta_{split}=True' for split in flags)} choose several splits; "
            "set exactly one of meta_train, meta_val, meta_test (or meta_split=...)."
        )
    if not flags:
        raise ConfigError(
            "no split chosen: pass meta_train=True (or meta_val=True / meta_test=True), or "
            "meta_split='train' (or 'val' / 'test')."
        )
    return flags[0]


def _check_torchmeta_options(helper: str, kwargs: dict[str, Any]) -> bool:
    """Refuse the torchmeta arguments that do not map onto fastadapt; returns whether to drop
    Omniglot's rotation classes (``class_augmentations=None``)."""
    options = dict(kwargs)
    drop_rotations = False
    if "class_augmentations" in options:
        augmentations = options.pop("class_augmentations")
        if augmentations is not None:
            raise ConfigError(
                f"{helper}(): class_augmentations={augmentations!r} is not supported "
                "(torchmeta's Rotation/HorizontalFlip transforms are not part of the compat "
                "layer). omniglot() already adds the rotations by 90/180/270 degrees as "
                "classes, torchmeta's default; pass class_augmentations=None for none. For "
                "other class augmentations use ClassSet.with_rotations() with FewShotSampler."
            )
        drop_rotations = helper == "omniglot"
    if options.pop("target_transform", None) is not None:
        raise ConfigError(
            f"{helper}(): target_transform is not supported: labels are already 0..ways-1 in "
            "every task (what torchmeta's Categorical(ways) gave); remove target_transform."
        )
    if options.pop("dataset_transform", None) is not None:
        raise ConfigError(
            f"{helper}(): dataset_transform is not supported: every task is already split "
            "into 'train' (shots per class) and 'test' (test_shots per class), as torchmeta's "
            "ClassSplitter did; set shots and test_shots instead."
        )
    if "num_classes_per_task" in options:
        raise ConfigError(
            f"{helper}(): num_classes_per_task is torchmeta's older name for ways; pass "
            "ways=... only."
        )
    if helper == "omniglot" and options.pop("use_vinyals_split", True) is not True:
        raise ConfigError(
            "omniglot(): use_vinyals_split=False (background / evaluation alphabets) is not "
            "offered here; use fastadapt.datasets.omniglot.Omniglot(root).lake(split) with "
            "FewShotSampler, or keep the Vinyals split."
        )
    if options:
        raise TypeError(
            f"{helper}() got unexpected keyword argument(s) {', '.join(sorted(options))}."
        )
    return drop_rotations


def _load(helper: str, name: str, root: Path, split: str, download: bool) -> ClassSet:
    """The registry's classes of ``split``; a missing dataset says what to put where."""
    entry = dataset(name)
    if download and not entry.downloadable:
        raise ConfigError(
            f"{helper}(download=True): {name} cannot be downloaded by fastadapt (its images "
            f"are ImageNet's); put your copy in {root}: {entry.source}."
        )
    try:
        return entry.load(root, split, download)
    except DatasetError as error:
        if not any(root.glob("*.hdf5")):
            raise
        raise type(error)(
            f"{error}\n{root} holds torchmeta's HDF5 conversion, which fastadapt does not "
            "read: it reads the original files named above (see "
            "docs/migrating-from-torchmeta.md)."
        ) from error
