"""ClassSet (one uint8 array, views for subsets and rotations) and its on-disk cache."""

from __future__ import annotations

import errno
import json
import pickle

import numpy as np
import pytest
import torch

from fastadapt.datasets import cache
from fastadapt.datasets.cache import CacheError, cache_info, cached_class_set
from fastadapt.datasets.class_set import ClassSet
from fastadapt.errors import ConfigError

NAMES = ["Alpha/character01", "Alpha/character02", "Beta/character01"]
# Images interleaved by class: class 2, 0, 1, 0, 2, 1, 0 -> class 0 has examples 0, 1, 2.
LABELS = np.array([2, 0, 1, 0, 2, 1, 0])


def tiny_images(count: int = len(LABELS), side: int = 4, channels: int | None = None):
    """Distinct, asymmetric images, so any rotation or mix-up changes the pixels."""
    shape = (count, side, side) if channels is None else (count, side, side, channels)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)


def rows_of(label: int) -> np.ndarray:
    return np.flatnonzero(np.equal(LABELS, label))


def test_gather_fetches_the_right_examples_as_floats():
    images = tiny_images()
    classes = ClassSet(images, LABELS, NAMES)
    assert classes.num_classes == 3
    assert (classes.channels, classes.height, classes.width) == (1, 4, 4)
    assert classes.examples_per_class().tolist() == [3, 2, 2]
    out = classes.gather(np.array([[0, 2]]), np.array([[[2, 0], [1, 0]]]))
    assert out.shape == (1, 2, 2, 1, 4, 4) and out.dtype == torch.float32
    expected = images[[rows_of(0)[2], rows_of(0)[0], rows_of(2)[1], rows_of(2)[0]]] / 255
    assert np.array_equal(out.numpy().reshape(4, 4, 4), expected.astype(np.float32))


def test_rgb_images_come_out_channels_first():
    images = tiny_images(channels=3)
    out = ClassSet(images, LABELS, NAMES).gather(np.array([1, 0]), np.array([[1], [0]]))
    assert out.shape == (2, 1, 3, 4, 4) and out.is_contiguous()
    expected = images[rows_of(1)[1]].transpose(2, 0, 1) / np.float32(255)
    assert torch.equal(out[0, 0], torch.from_numpy(expected.astype(np.float32)))


def test_subset_is_a_view_in_the_order_asked():
    classes = ClassSet(tiny_images(), LABELS, NAMES)
    subset = classes.subset([NAMES[2], NAMES[0]])
    assert subset.class_names == [NAMES[2], NAMES[0]]
    assert subset.examples_per_class().tolist() == [2, 3]
    assert subset.images is classes.images
    assert torch.equal(
        subset.gather(np.array([1, 0]), np.array([[2], [1]])),
        classes.gather(np.array([0, 2]), np.array([[2], [1]])),
    )


def test_subset_names_what_is_missing():
    classes = ClassSet(tiny_images(), LABELS, NAMES)
    with pytest.raises(ConfigError, match=r"2 of the 3 requested.*Gamma/character01"):
        classes.subset([NAMES[0], "Gamma/character01", "Gamma/character02"])


def test_rotations_are_classes_of_their_own():
    images = tiny_images()
    rotated = ClassSet(images, LABELS, NAMES).with_rotations()
    assert rotated.num_classes == 12 and rotated.images is images
    assert rotated.class_names[:5] == [
        "Alpha/character01/rot000",
        "Alpha/character01/rot090",
        "Alpha/character01/rot180",
        "Alpha/character01/rot270",
        "Alpha/character02/rot000",
    ]
    picked = rotated.subset(["Beta/character01/rot090", "Alpha/character02/rot270"])
    out = picked.gather(np.array([0, 1, 0]), np.array([[1], [0], [0]])).numpy()[:, 0, 0]
    for got, (row, turns) in zip(out, [(rows_of(2)[1], 1), (rows_of(1)[0], 3), (rows_of(2)[0], 1)]):
        assert np.array_equal(got * 255, np.rot90(images[row], turns).astype(np.float32))
    # A view of a view composes the rotations: 90 + 180 = 270 degrees.
    twice = picked.with_rotations((180,))
    assert twice.class_names[0] == "Beta/character01/rot090/rot180"
    again = twice.gather(np.array([0]), np.array([[0]])).numpy()[0, 0, 0]
    assert np.array_equal(again * 255, np.rot90(images[rows_of(2)[0]], 3).astype(np.float32))


def test_rotations_by_quarter_turns_need_square_images():
    classes = ClassSet(np.zeros((2, 4, 6), np.uint8), np.array([0, 1]), ["a", "b"])
    with pytest.raises(ConfigError, match="square images"):
        classes.with_rotations()
    assert classes.with_rotations((0, 180)).num_classes == 4
    with pytest.raises(ConfigError, match="rotations must be one of"):
        classes.with_rotations((45,))


@pytest.mark.parametrize(
    ("images", "labels", "names", "message"),
    [
        (np.zeros((2, 4, 4), np.float32), [0, 1], ["a", "b"], "uint8"),
        (np.zeros((2, 4), np.uint8), [0, 1], ["a", "b"], r"\[N, H, W\]"),
        (np.zeros((2, 4, 4), np.uint8), [0], ["a", "b"], "one per image"),
        (np.zeros((2, 4, 4), np.uint8), [0, 2], ["a", "b"], r"labels must lie in 0\.\.1"),
        (np.zeros((2, 4, 4), np.uint8), [0, 1], ["a", "a"], "'a' appears more than once"),
    ],
)
def test_malformed_arrays_are_refused(images, labels, names, message):
    with pytest.raises(ConfigError, match=message):
        ClassSet(images, np.asarray(labels), names)


def test_gather_refuses_ids_outside_a_class():
    classes = ClassSet(tiny_images(), LABELS, NAMES)
    with pytest.raises(ConfigError, match="example ids"):
        classes.gather(np.array([1]), np.array([[2]]))  # class 1 has 2 examples
    with pytest.raises(ConfigError, match="class ids"):
        classes.gather(np.array([3]), np.array([[0]]))
    with pytest.raises(ConfigError, match="shape of class_ids"):
        classes.gather(np.array([0, 1]), np.array([[0]]))


# ------------------------------------------------------------------------------------ cache
class Builder:
    """A build() that counts its calls."""

    def __init__(self, images=None, labels=LABELS, names=NAMES):
        self.images = tiny_images() if images is None else images
        self.labels, self.names, self.calls = labels, names, 0

    def __call__(self):
        self.calls += 1
        return self.images, self.labels, list(self.names)


def test_cache_builds_once_then_memory_maps(tmp_path):
    build = Builder()
    first = cached_class_set(tmp_path, "tiny-4x4", build)
    second = cached_class_set(tmp_path, "tiny-4x4", build)
    assert build.calls == 1
    assert isinstance(first.images, np.memmap) and isinstance(second.images, np.memmap)
    # Stored ordered by class; example numbers within a class are those of the original order.
    in_memory = ClassSet(build.images, LABELS, NAMES)
    ids = (np.array([0, 1, 2]), np.array([[2, 0], [1, 0], [0, 1]]))
    assert torch.equal(second.gather(*ids), in_memory.gather(*ids))
    assert second.class_names == NAMES


def test_cache_of_another_version_or_incomplete_is_rebuilt(tmp_path, monkeypatch):
    build = Builder()
    cached_class_set(tmp_path, "tiny", build)
    monkeypatch.setattr(cache, "CACHE_VERSION", cache.CACHE_VERSION + 1)
    cached_class_set(tmp_path, "tiny", build)
    assert build.calls == 2
    assert json.loads((tmp_path / "tiny" / "manifest.json").read_text())["version"] == (
        cache.CACHE_VERSION
    )
    (tmp_path / "tiny" / "manifest.json").unlink()  # as if killed before the manifest
    cached_class_set(tmp_path, "tiny", build)
    assert build.calls == 3
    with open(tmp_path / "tiny" / "images.npy", "r+b") as handle:  # truncated array file
        handle.truncate(100)
    cached_class_set(tmp_path, "tiny", build)
    assert build.calls == 4
    cached_class_set(tmp_path, "tiny", build)
    assert build.calls == 4


def test_a_full_disk_leaves_no_cache_and_no_temporary_files(tmp_path, monkeypatch):
    build = Builder()
    real_save = np.save

    def save_then_fill_the_disk(handle, array, **kwargs):
        if array.dtype != np.uint8:  # the labels, written after the images
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(handle, array, **kwargs)

    monkeypatch.setattr(np, "save", save_then_fill_the_disk)
    with pytest.raises(CacheError, match="Free some disk space") as caught:
        cached_class_set(tmp_path, "tiny", build)
    assert caught.value.__cause__.errno == errno.ENOSPC
    assert list((tmp_path / "tiny").iterdir()) == []
    assert cache_info(tmp_path) == []
    monkeypatch.setattr(np, "save", real_save)
    assert cached_class_set(tmp_path, "tiny", build).num_classes == 3


def test_a_failing_build_writes_nothing(tmp_path):
    def build():
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        cached_class_set(tmp_path, "tiny", build)
    assert not (tmp_path / "tiny").exists() or list((tmp_path / "tiny").iterdir()) == []


def test_cache_info_lists_complete_entries(tmp_path):
    cached_class_set(tmp_path, "b-set", Builder())
    cached_class_set(tmp_path, "a-set", Builder(tiny_images(channels=3)))
    (tmp_path / "partial").mkdir()
    info = cache_info(tmp_path)
    assert [entry["key"] for entry in info] == ["a-set", "b-set"]
    assert info[1]["version"] == cache.CACHE_VERSION
    assert (info[1]["classes"], info[1]["images"]) == (3, len(LABELS))
    assert info[0]["bytes"] > tiny_images(channels=3).nbytes
    assert info[1]["path"] == str(tmp_path / "b-set")
    assert cache_info(tmp_path / "nothing-here") == []


def test_bad_keys_and_bad_builds_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="cache key"):
        cached_class_set(tmp_path, "../escape", Builder())
    with pytest.raises(ConfigError, match="uint8"):
        cached_class_set(tmp_path, "floats", Builder(tiny_images().astype(np.float32)))
    assert not (tmp_path / "floats" / "manifest.json").exists()


def test_a_memory_mapped_set_pickles_as_its_file(tmp_path):
    images = tiny_images(side=32)
    rotated = cached_class_set(tmp_path, "tiny", Builder(images)).with_rotations()
    data = pickle.dumps(rotated)
    assert len(data) < images.nbytes // 2  # the pixels are not in the pickle
    copy = pickle.loads(data)
    assert isinstance(copy.images, np.memmap)
    ids = (np.array([5, 11]), np.array([[0, 1], [1, 0]]))
    assert torch.equal(copy.gather(*ids), rotated.gather(*ids))
