"""CIFAR-FS and FC100 from a tiny archive in the official cifar-100-python.tar.gz layout."""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from fastadapt.datasets import cifar
from fastadapt.datasets.cifar import DatasetError, cifar_fs, fc100
from fastadapt.errors import ConfigError
from fastadapt.io.download import RemoteFile

SPLITS = ("train", "val", "test")
TRAIN_PER_CLASS, TEST_PER_CLASS = 5, 1  # CIFAR-100 has 500 + 100; pooled like the real thing


def _lines(relative: str) -> list[str]:
    text = resources.files("fastadapt.datasets").joinpath(relative).read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


@dataclass
class TinyCifar:
    root: Path
    archive: Path
    pixels: dict[str, np.ndarray]  # "superclass/class" -> [6, 32, 32, 3], train then test order
    members: dict[str, bytes]  # the three pickles, by member name


def _build(root: Path) -> TinyCifar:
    """100 fine classes named as CIFAR-100's (sorted, as in the real meta), random pixels."""
    pairs = [line for split in SPLITS for line in _lines(f"splits/cifar-fs/{split}.txt")]
    fine_names = sorted(pair.split("/")[1] for pair in pairs)
    coarse_names = sorted({pair.split("/")[0] for pair in pairs})
    superclass = {pair.split("/")[1]: pair.split("/")[0] for pair in pairs}
    rng = np.random.default_rng(0)
    pixels: dict[str, list[np.ndarray]] = {pair: [] for pair in pairs}
    members = {}
    for member, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        fine = rng.permutation(np.repeat(np.arange(100), per_class))  # classes interleaved
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        for row, label in zip(data, fine):
            name = fine_names[label]
            # Official layout: 1024 red, then 1024 green, then 1024 blue values, row-major.
            pixels[f"{superclass[name]}/{name}"].append(row.reshape(3, 32, 32).transpose(1, 2, 0))
        batch = {
            "filenames": [f"img_{i}.png" for i in range(len(fine))],
            "batch_label": f"{member} batch 1 of 1",
            "fine_labels": fine.tolist(),
            "coarse_labels": [coarse_names.index(superclass[fine_names[f]]) for f in fine],
            "data": data,
        }
        members[member] = _python2_style(batch)
    meta = {"fine_label_names": fine_names, "coarse_label_names": coarse_names}
    members["meta"] = _python2_style(meta)
    archive = root / "cifar-100-python.tar.gz"
    _write_tar(archive, {f"cifar-100-python/{name}": data for name, data in members.items()})
    return TinyCifar(root, archive, {k: np.stack(v) for k, v in pixels.items()}, members)


def _python2_style(value: object) -> bytes:
    """Protocol 2 with NumPy 1's module names, as the official pickles (Python 2, NumPy 1)."""
    return pickle.dumps(value, protocol=2).replace(b"numpy._core.", b"numpy.core.")


def _write_tar(path: Path, files: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for folder in sorted({name.split("/")[0] for name in files}):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            archive.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyCifar:
    return _build(tmp_path_factory.mktemp("cifar"))


def _all_pixels(classes) -> np.ndarray:
    """Every image of every class as uint8 [classes, n, 32, 32, 3], through ClassSet.gather."""
    n = int(classes.examples_per_class()[0])
    ids = np.arange(classes.num_classes)
    x = classes.gather(ids, np.broadcast_to(np.arange(n), (len(ids), n)))
    return (x * 255).round().byte().permute(0, 1, 3, 4, 2).numpy()


def test_cifar_fs_has_the_papers_class_counts_and_pools_train_and_test(tiny: TinyCifar) -> None:
    seen: list[str] = []
    for split, count in zip(SPLITS, (64, 16, 20)):
        classes = cifar_fs(tiny.root, split)
        assert classes.num_classes == count
        assert classes.class_names == _lines(f"splits/cifar-fs/{split}.txt")
        # train and test images of CIFAR-100 are pooled: every class has both
        assert (classes.examples_per_class() == TRAIN_PER_CLASS + TEST_PER_CLASS).all()
        assert (classes.channels, classes.height, classes.width) == (3, 32, 32)
        seen += classes.class_names
    assert len(seen) == len(set(seen)) == 100


def test_cifar_fs_pixels_are_the_archives_in_hwc_order(tiny: TinyCifar) -> None:
    classes = cifar_fs(tiny.root, "val")
    expected = np.stack([tiny.pixels[name] for name in classes.class_names])
    np.testing.assert_array_equal(_all_pixels(classes), expected)


def test_fc100_splits_superclasses_without_overlap(tiny: TinyCifar) -> None:
    superclasses_seen: set[str] = set()
    for split, count in zip(SPLITS, (60, 20, 20)):
        classes = fc100(tiny.root, split)
        superclasses = _lines(f"splits/fc100/{split}.txt")
        assert classes.num_classes == count == 5 * len(superclasses)
        prefixes = [name.split("/")[0] for name in classes.class_names]
        assert prefixes == [s for s in superclasses for _ in range(5)]  # in split-file order
        assert not superclasses_seen & set(prefixes)
        superclasses_seen |= set(prefixes)
        expected = np.stack([tiny.pixels[name] for name in classes.class_names])
        np.testing.assert_array_equal(_all_pixels(classes), expected)
    assert len(superclasses_seen) == 20


def test_extracted_folder_layout_reads_the_same(tiny: TinyCifar, tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, data in tiny.members.items():
        (folder / name).write_bytes(data)
    classes = cifar_fs(tmp_path, "test")
    expected = np.stack([tiny.pixels[name] for name in classes.class_names])
    np.testing.assert_array_equal(_all_pixels(classes), expected)


def test_missing_archive_names_file_address_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        fc100(tmp_path, "train")
    message = str(caught.value)
    assert "cifar-100-python.tar.gz" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert str(tmp_path) in message and "download=True" in message


@pytest.fixture
def served(tiny: TinyCifar) -> Iterator[str]:
    """The tiny archive on a local HTTP server; yields its folder's address."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tiny.root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_download_true_fetches_and_verifies_the_archive(
    tiny: TinyCifar, served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    md5 = hashlib.md5(tiny.archive.read_bytes()).hexdigest()
    remote = RemoteFile(served + tiny.archive.name, tiny.archive.name, md5)
    monkeypatch.setattr(cifar, "CIFAR100", remote)
    classes = cifar_fs(tmp_path / "data", "val", download=True)
    assert classes.num_classes == 16
    assert (tmp_path / "data" / tiny.archive.name).read_bytes() == tiny.archive.read_bytes()


def test_truncated_archive_is_a_clear_error(tiny: TinyCifar, tmp_path: Path) -> None:
    data = tiny.archive.read_bytes()
    (tmp_path / tiny.archive.name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt") as caught:
        cifar_fs(tmp_path, "train")
    assert str(tmp_path / tiny.archive.name) in str(caught.value)


def test_an_archive_without_cifar100_meta_is_refused(tiny: TinyCifar, tmp_path: Path) -> None:
    _write_tar(
        tmp_path / tiny.archive.name,
        {
            "cifar-10-batches-py/data_batch_1": tiny.members["train"],
            "cifar-10-batches-py/batches.meta": tiny.members["meta"],
        },
    )
    with pytest.raises(DatasetError, match="cifar-100-python/meta"):
        cifar_fs(tmp_path, "train")


def test_cache_is_used_and_keyed_by_split(tiny: TinyCifar, tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(tiny.archive, root)
    first = cifar_fs(root, "test", cache_dir=tmp_path / "cache")
    (root / tiny.archive.name).unlink()
    again = cifar_fs(root, "test", cache_dir=tmp_path / "cache")  # archive gone: from the cache
    assert again.class_names == first.class_names
    np.testing.assert_array_equal(_all_pixels(again), _all_pixels(first))
    with pytest.raises(DatasetError):  # another split is another key: it needs the archive
        cifar_fs(root, "val", cache_dir=tmp_path / "cache")


def test_unknown_split_is_refused(tiny: TinyCifar) -> None:
    with pytest.raises(ConfigError, match="train, val, test"):
        cifar_fs(tiny.root, "validation")
