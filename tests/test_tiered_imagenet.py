"""tiered-ImageNet from tiny files in the common formats: PNG pickle or npz, plus labels pickle."""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastadapt.datasets.tiered_imagenet import DatasetError, tiered_imagenet

NAMES = ["n01530575", "n01531178", "n01532829", "n01534433"]  # the last one has no image
PER_CLASS = 4


def _python2_style(value: object) -> bytes:
    """Protocol 2 with NumPy 1's module names, as Ren et al.'s files (Python 2, NumPy 1)."""
    return pickle.dumps(value, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(root: Path, split: str, *, images: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels pickle plus images as ``png-arrays`` (cv2.imencode's uint8 arrays, Ren et al.),
    ``png-bytes`` or ``npz``; returns the pixels and labels written."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(3), PER_CLASS))
    pixels = rng.integers(0, 256, (len(labels), 84, 84, 3), dtype=np.uint8)
    table = {
        "label_specific": labels,
        "label_general": np.zeros_like(labels),
        "label_specific_str": NAMES,
        "label_general_str": ["animal"],
    }
    (root / f"{split}_labels.pkl").write_bytes(_python2_style(table))
    if images == "npz":
        np.savez(root / f"{split}_images.npz", images=pixels)
    else:
        encoded = [_png(p) for p in pixels]
        if images == "png-arrays":
            encoded = [np.frombuffer(e, dtype=np.uint8) for e in encoded]
        (root / f"{split}_images_png.pkl").write_bytes(_python2_style(encoded))
    return pixels, labels


def _pixels(classes) -> np.ndarray:
    ids = np.arange(classes.num_classes)
    x = classes.gather(ids, np.broadcast_to(np.arange(PER_CLASS), (len(ids), PER_CLASS)))
    return (x * 255).round().byte().permute(0, 1, 3, 4, 2).numpy()


@pytest.mark.parametrize("images", ["png-arrays", "png-bytes", "npz"])
def test_both_formats_give_the_labelled_images(tmp_path: Path, images: str) -> None:
    pixels, labels = _write(tmp_path, "val", images=images)
    classes = tiered_imagenet(tmp_path, "val")
    assert classes.class_names == NAMES[:3]  # a name no image carries is not a class
    assert (classes.examples_per_class() == PER_CLASS).all()
    expected = np.stack([pixels[labels == label] for label in range(3)])
    np.testing.assert_array_equal(_pixels(classes), expected)


def test_image_size_resizes(tmp_path: Path) -> None:
    pixels, labels = _write(tmp_path, "test", images="npz")
    classes = tiered_imagenet(tmp_path, "test", image_size=42, cache_dir=tmp_path / "cache")
    assert (classes.channels, classes.height, classes.width) == (3, 42, 42)
    first = Image.fromarray(pixels[labels == 0][0]).resize((42, 42), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(_pixels(classes)[0, 0], np.asarray(first))


def test_missing_files_are_listed(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        tiered_imagenet(tmp_path, "train")
    message = str(caught.value)
    for name in ("train_labels.pkl", "train_images_png.pkl", "train_images.npz"):
        assert str(tmp_path / name) in message
    _write(tmp_path, "train", images="npz")
    (tmp_path / "train_images.npz").unlink()
    with pytest.raises(DatasetError) as caught:  # only the images are missing now
        tiered_imagenet(tmp_path, "train")
    assert str(tmp_path / "train_images.npz") in str(caught.value)
    assert str(tmp_path / "train_labels.pkl") not in str(caught.value)


def test_labels_and_images_must_agree(tmp_path: Path) -> None:
    _write(tmp_path, "val", images="npz")
    np.savez(tmp_path / "val_images.npz", images=np.zeros((5, 84, 84, 3), np.uint8))
    with pytest.raises(DatasetError, match="5 val images but 12 labels"):
        tiered_imagenet(tmp_path, "val")


def test_labels_beyond_the_names_are_refused(tmp_path: Path) -> None:
    _write(tmp_path, "val", images="npz")
    table = {"label_specific": np.array([0, 9]), "label_specific_str": ["a", "b"]}
    (tmp_path / "val_labels.pkl").write_bytes(pickle.dumps(table))
    with pytest.raises(DatasetError, match="names 2 classes"):
        tiered_imagenet(tmp_path, "val")


def test_a_corrupt_png_is_named_by_its_position(tmp_path: Path) -> None:
    _write(tmp_path, "val", images="png-bytes")
    path = tmp_path / "val_images_png.pkl"
    encoded = pickle.loads(path.read_bytes())
    encoded[5] = encoded[5][:40]
    path.write_bytes(pickle.dumps(encoded))
    with pytest.raises(DatasetError, match=re.escape(f"image 5 of {path}")):
        tiered_imagenet(tmp_path, "val")
