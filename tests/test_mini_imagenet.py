"""mini-ImageNet from tiny files in both common layouts and the shipped Ravi & Larochelle split."""

from __future__ import annotations

import csv
import io
import os
import pickle
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastadapt.datasets.mini_imagenet import DatasetError, mini_imagenet
from fastadapt.errors import ConfigError

COUNTS = {"train": 64, "val": 16, "test": 20}


def _ravi(split: str) -> list[dict[str, str]]:
    text = (
        resources.files("fastadapt.datasets")
        .joinpath(f"splits/miniimagenet/ravi/{split}.csv")
        .read_text("utf-8")
    )
    return list(csv.DictReader(io.StringIO(text)))


def _wnids(split: str) -> list[str]:
    return list(dict.fromkeys(row["label"] for row in _ravi(split)))


def _write_cache_pickle(root: Path, split: str, per_class: int, seed: int = 0) -> tuple:
    """``mini-imagenet-cache-<split>.pkl`` with ``per_class`` random 84x84 images per class,
    the classes' images interleaved in ``image_data`` as nothing promises they are grouped."""
    rng = np.random.default_rng(seed)
    wnids = _wnids(split)
    owner = rng.permutation(np.repeat(np.arange(len(wnids)), per_class))
    data = rng.integers(0, 256, (len(owner), 84, 84, 3), dtype=np.uint8)
    class_dict = {w: np.flatnonzero(owner == i)[::-1].tolist() for i, w in enumerate(wnids)}
    payload = {"image_data": data, "class_dict": class_dict}
    (root / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps(payload, protocol=4))
    return data, class_dict


def _pixels(classes) -> np.ndarray:
    n = int(classes.examples_per_class()[0])
    ids = np.arange(classes.num_classes)
    x = classes.gather(ids, np.broadcast_to(np.arange(n), (len(ids), n)))
    return (x * 255).round().byte().permute(0, 1, 3, 4, 2).numpy()


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_cache_pickle_gives_the_ravi_classes(tmp_path: Path, split: str) -> None:
    data, class_dict = _write_cache_pickle(tmp_path, split, per_class=2)
    classes = mini_imagenet(tmp_path, split)
    assert classes.num_classes == COUNTS[split]
    assert classes.class_names == _wnids(split)
    assert (classes.examples_per_class() == 2).all()
    # each class's examples are its images, in the order they stand in image_data
    expected = np.stack([data[sorted(class_dict[w])] for w in classes.class_names])
    np.testing.assert_array_equal(_pixels(classes), expected)


def test_image_size_resizes_with_lanczos(tmp_path: Path) -> None:
    data, class_dict = _write_cache_pickle(tmp_path, "val", per_class=1)
    classes = mini_imagenet(tmp_path, "val", image_size=32)
    assert (classes.height, classes.width) == (32, 32)
    first = Image.fromarray(data[class_dict[classes.class_names[0]][0]])
    expected = np.asarray(first.resize((32, 32), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(_pixels(classes)[0, 0], expected)


def test_python2_numpy1_pickles_load(tmp_path: Path) -> None:
    """Protocol 2 naming ``numpy.core`` (NumPy 1), as older copies of the pickles do."""
    _write_cache_pickle(tmp_path, "test", per_class=1)
    path = tmp_path / "mini-imagenet-cache-test.pkl"
    payload = pickle.loads(path.read_bytes())
    old = pickle.dumps(payload, protocol=2).replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in old
    path.write_bytes(old)
    assert mini_imagenet(tmp_path, "test").num_classes == 20


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "was-run"
    (tmp_path / "mini-imagenet-cache-val.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(DatasetError, match="mkdir"):
        mini_imagenet(tmp_path, "val")
    assert not marker.exists()


def test_the_pickle_of_another_split_is_refused(tmp_path: Path) -> None:
    _write_cache_pickle(tmp_path, "val", per_class=1)
    (tmp_path / "mini-imagenet-cache-val.pkl").rename(tmp_path / "mini-imagenet-cache-test.pkl")
    with pytest.raises(DatasetError, match="another split"):
        mini_imagenet(tmp_path, "test")


def test_nothing_there_lists_both_layouts(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        mini_imagenet(tmp_path, "val")
    message = str(caught.value)
    assert str(tmp_path / "mini-imagenet-cache-val.pkl") in message
    assert str(tmp_path / "images") in message and "9600 images" in message


def test_images_folder_with_missing_files_names_them(tmp_path: Path) -> None:
    rows = _ravi("val")
    (tmp_path / "images").mkdir()
    for row in rows[:3]:
        Image.new("RGB", (84, 84)).save(tmp_path / "images" / row["filename"])
    with pytest.raises(DatasetError) as caught:
        mini_imagenet(tmp_path, "val")
    message = str(caught.value)
    assert "lacks 9597 of the 9600 images" in message
    assert rows[3]["filename"] in message and rows[2]["filename"] not in message
    assert str(tmp_path / "images") in message


# Sixteen well-separated colours, one per val class.
COLOURS = [(32 * (i % 4) + 40, 48 * (i // 4) + 40, 200 - 10 * i) for i in range(16)]


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every val image of the Ravi split as a small JPEG, filled with its class's colour."""
    root, sources = tmp_path_factory.mktemp("mini"), tmp_path_factory.mktemp("colours")
    (root / "images").mkdir()
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (16, 16), colour).save(sources / f"{i}.jpg")
    wnids = _wnids("val")
    for row in _ravi("val"):  # hard links: 9600 files at the cost of 16
        os.link(sources / f"{wnids.index(row['label'])}.jpg", root / "images" / row["filename"])
    return root


def test_images_folder_decodes_every_listed_file(val_folder: Path) -> None:
    classes = mini_imagenet(val_folder, "val", image_size=8)
    assert classes.class_names == _wnids("val")
    assert (classes.examples_per_class() == 600).all()
    ids = np.arange(16)
    x = classes.gather(ids, np.broadcast_to(np.arange(0, 600, 50), (16, 12)))
    means = (x * 255).mean(dim=(1, 3, 4)).numpy()  # [class, channel]
    np.testing.assert_allclose(means, np.array(COLOURS, dtype=float), atol=3)


def test_cache_key_includes_the_image_size(tmp_path: Path) -> None:
    _write_cache_pickle(tmp_path, "val", per_class=1)
    big = mini_imagenet(tmp_path, "val", cache_dir=tmp_path / "cache")
    small = mini_imagenet(tmp_path, "val", image_size=16, cache_dir=tmp_path / "cache")
    assert (big.height, small.height) == (84, 16)


@pytest.mark.parametrize("kwargs", [{"split": "trainval"}, {"split": "val", "image_size": 0}])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        mini_imagenet(tmp_path, **kwargs)
