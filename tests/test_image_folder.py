"""image_folder: root/<class>/<image> in mixed formats and sizes, filters, bad files, cache."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastadapt.datasets.image_folder import DatasetError, image_folder
from fastadapt.errors import ConfigError


def _noise(seed: int, size: tuple[int, int], mode: str) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _write_tree(root: Path) -> dict[str, list[Path]]:
    """Three classes with images of several formats, modes and sizes, plus a hidden file."""
    files = {
        "cat": [("a.png", (40, 30), "RGBA"), ("b.jpg", (20, 20), "RGB"), ("c.bmp", (10, 50), "L")],
        "dog": [("a.gif", (16, 16), "L"), ("b.tiff", (64, 8), "RGB")],
        "eel": [("only.webp", (12, 12), "RGB")],
    }
    written: dict[str, list[Path]] = {}
    for seed, (name, images) in enumerate(files.items()):
        (root / name).mkdir(parents=True)
        (root / name / ".DS_Store").write_bytes(b"\0\1not an image")
        written[name] = []
        for i, (filename, size, mode) in enumerate(images):
            _noise(10 * seed + i, size, mode).save(root / name / filename)
            written[name].append(root / name / filename)
    (root / ".hidden-class").mkdir()
    return written


def _reference(path: Path, size: int, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode).resize((size, size), Image.Resampling.LANCZOS))


def _images(classes, class_id: int) -> np.ndarray:
    n = int(classes.examples_per_class()[class_id])
    x = classes.gather(np.array([class_id]), np.arange(n)[None])[0]  # [n, C, H, W]
    return (x * 255).round().byte().permute(0, 2, 3, 1).numpy()


def test_mixed_formats_become_one_rgb_array(tmp_path: Path) -> None:
    written = _write_tree(tmp_path)
    classes = image_folder(tmp_path, image_size=24)
    assert classes.class_names == ["cat", "dog", "eel"]  # sorted, hidden folder ignored
    assert classes.examples_per_class().tolist() == [3, 2, 1]  # .DS_Store ignored
    assert (classes.channels, classes.height, classes.width) == (3, 24, 24)
    for class_id, name in enumerate(classes.class_names):
        expected = np.stack([_reference(p, 24, "RGB") for p in written[name]])
        np.testing.assert_array_equal(_images(classes, class_id), expected)


def test_grayscale_and_a_class_filter(tmp_path: Path) -> None:
    written = _write_tree(tmp_path)
    classes = image_folder(tmp_path, image_size=8, channels=1, classes=["eel", "cat"])
    assert classes.class_names == ["eel", "cat"]
    assert classes.channels == 1
    expected = np.stack([_reference(p, 8, "L") for p in written["cat"]])
    np.testing.assert_array_equal(_images(classes, 1)[..., 0], expected)


def test_a_class_split_file_selects_the_classes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _write_tree(data)
    split = tmp_path / "train.txt"
    split.write_text("eel\ncat\n\n")
    assert image_folder(data, image_size=8, classes=split).class_names == ["eel", "cat"]
    with pytest.raises(DatasetError, match="does not exist"):
        image_folder(data, image_size=8, classes=tmp_path / "missing.txt")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)
    pixels[:, 10:] = 255  # stored: left dark, right bright
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    (tmp_path / "photo").mkdir()
    Image.fromarray(pixels).save(tmp_path / "photo" / "p.jpg", exif=exif, quality=95)
    shown = _images(image_folder(tmp_path, image_size=20), 0)[0].mean(axis=(1, 2))
    assert shown[:8].mean() < 40 and shown[-8:].mean() > 215  # displayed: top dark, bottom bright


def test_a_missing_class_is_named(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    with pytest.raises(DatasetError, match="yak") as caught:
        image_folder(tmp_path, image_size=8, classes=["cat", "yak"])
    assert "cat," not in str(caught.value).split("It has")[0]  # only the missing one is listed


def test_an_unreadable_image_is_named_or_skipped_with_a_warning(tmp_path: Path) -> None:
    _write_tree(tmp_path)
    broken = tmp_path / "dog" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetError, match=r"broken\.png"):
        image_folder(tmp_path, image_size=8)
    with pytest.warns(UserWarning, match=re.escape(str(broken))):
        classes = image_folder(tmp_path, image_size=8, skip_unreadable=True)
    assert classes.examples_per_class().tolist() == [3, 2, 1]


def test_empty_class_folder_and_no_classes_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no class folders"):
        image_folder(tmp_path, image_size=8)
    (tmp_path / "empty").mkdir()
    (tmp_path / "full").mkdir()
    _noise(0, (4, 4), "RGB").save(tmp_path / "full" / "x.png")
    with pytest.raises(DatasetError, match="empty"):
        image_folder(tmp_path, image_size=8)
    with pytest.raises(DatasetError, match="not a folder"):
        image_folder(tmp_path / "nowhere", image_size=8)


def test_a_class_whose_every_image_is_skipped_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="no readable image"):
        image_folder(tmp_path, image_size=8, skip_unreadable=True)


def test_cache_follows_changes_to_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _write_tree(root)
    cache = tmp_path / "cache"
    assert image_folder(root, image_size=8, cache_dir=cache).examples_per_class()[2] == 1
    _noise(99, (12, 12), "RGB").save(root / "eel" / "second.png")
    assert image_folder(root, image_size=8, cache_dir=cache).examples_per_class()[2] == 2
    assert len(os.listdir(cache)) >= 2  # two folder states, two cache entries


@pytest.mark.parametrize(
    "kwargs",
    [{"image_size": 0}, {"image_size": 8, "channels": 2}, {"image_size": 8, "classes": "cat"}],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    _write_tree(tmp_path)
    with pytest.raises(ConfigError):
        image_folder(tmp_path, **kwargs)
