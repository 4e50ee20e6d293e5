"""Omniglot: archives in the official layout, validation, cache, and the three protocols."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastadapt.cli import main
from fastadapt.datasets import omniglot
from fastadapt.datasets.omniglot import Omniglot, OmniglotError
from fastadapt.datasets.registry import split_loader
from fastadapt.errors import ConfigError
from fastadapt.io.archives import ArchiveError
from fastadapt.io.download import RemoteFile
from fastadapt.tasks.sampler import FewShotSampler

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
TINY = {
    "images_background": ("Latin", "Greek", "Futurama"),
    "images_evaluation": ("Atlantean", "Tengwar"),
}
CHARACTERS_PER_ALPHABET = 2


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).random((105, 105)) > 0.5
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def write_tiny_archives(folder: Path, drop_drawer: bool = False) -> None:
    """Omniglot-shaped zips: `<archive>/<Alphabet>/characterNN/<id>_<drawer>.png`."""
    folder.mkdir(parents=True, exist_ok=True)
    seed = 0
    for archive, alphabets in TINY.items():
        with zipfile.ZipFile(folder / f"{archive}.zip", "w") as zf:
            for alphabet in alphabets:
                for c in range(1, CHARACTERS_PER_ALPHABET + 1):
                    for drawer in range(1, 21):
                        if drop_drawer and drawer == 20 and c == 1:
                            continue
                        seed += 1
                        zf.writestr(
                            f"{archive}/{alphabet}/character{c:02d}/{seed:04d}_{drawer:02d}.png",
                            _png(seed),
                        )


@pytest.fixture
def tiny_counts(monkeypatch):
    counts = {name: (len(a), len(a) * CHARACTERS_PER_ALPHABET) for name, a in TINY.items()}
    monkeypatch.setattr(omniglot, "EXPECTED_COUNTS", counts)


def test_tiny_archives_decode_once_and_protocols(tmp_path, tiny_counts, recwarn):
    write_tiny_archives(tmp_path)
    data = Omniglot(tmp_path, image_size=28)
    assert any("not the official file" in str(w.message) for w in recwarn)
    chars = data.characters
    assert chars.num_classes == 10 and chars.images.shape == (200, 28, 28)
    assert data.background_alphabets == ["Futurama", "Greek", "Latin"]
    assert data.evaluation_alphabets == ["Atlantean", "Tengwar"]
    # A second construction memory-maps the cache instead of decoding again.
    again = Omniglot(tmp_path, image_size=28)
    assert isinstance(again.characters.images, np.memmap)
    assert np.array_equal(np.asarray(again.characters.images), np.asarray(chars.images))
    # Seeded random split of characters, rotations as classes.
    splits = data.random_split((6, 1, 3), seed=3)
    assert [s.num_classes for s in splits.values()] == [24, 4, 12]
    same = data.random_split((6, 1, 3), seed=3)
    assert all(splits[k].class_names == same[k].class_names for k in splits)
    other = data.random_split((6, 1, 3), seed=4)
    assert any(splits[k].class_names != other[k].class_names for k in splits)
    names = [
        set(s.class_names) for s in data.random_split((6, 1, 3), seed=3, rotations=False).values()
    ]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    # Lake: background alphabets for training, within-alphabet groups for evaluation.
    evaluation, groups = data.lake("evaluation")
    assert evaluation.num_classes == 4 and [len(g) for g in groups] == [2, 2]
    for alphabet, group in zip(data.evaluation_alphabets, groups):
        assert all(evaluation.class_names[i].startswith(alphabet + "/") for i in group)
    episodes = FewShotSampler(evaluation, ways=2, shots=1, queries=1, seed=1, groups=groups)
    alphabets_seen = set()
    for index in range(40):
        classes, _ = episodes.episode(index)
        alphabets = {evaluation.class_names[c].split("/")[0] for c in classes}
        assert len(alphabets) == 1 and len(set(classes.tolist())) == 2
        alphabets_seen |= alphabets
    assert alphabets_seen == set(data.evaluation_alphabets)
    with pytest.raises(ConfigError, match="fewer than ways=3"):
        FewShotSampler(evaluation, ways=3, shots=1, queries=1, groups=groups)
    # The Vinyals split names characters these tiny archives do not have.
    with pytest.raises(Exception, match="Angelic"):
        data.vinyals("train")


def test_incomplete_archive_is_refused(tmp_path, tiny_counts):
    write_tiny_archives(tmp_path, drop_drawer=True)
    with pytest.raises(OmniglotError, match="drawer count other than 20"):
        Omniglot(tmp_path)


def test_truncated_or_foreign_archives_are_refused(tmp_path, tiny_counts):
    write_tiny_archives(tmp_path)
    background = tmp_path / "images_background.zip"
    intact = background.read_bytes()
    background.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(ArchiveError, match=r"images_background\.zip"):
        Omniglot(tmp_path)
    with zipfile.ZipFile(background, "w") as foreign:
        foreign.writestr("cifar-100-python/meta", b"not omniglot")
    with pytest.raises(OmniglotError, match=r"not a complete images_background\.zip"):
        Omniglot(tmp_path)


def test_missing_archives_name_files_addresses_and_folder(tmp_path):
    with pytest.raises(OmniglotError) as error:
        Omniglot(tmp_path / "nowhere")
    message = str(error.value)
    for remote in omniglot.ARCHIVES.values():
        assert remote.filename in message and remote.url in message
    assert str(tmp_path / "nowhere") in message


def test_download_from_a_local_server(tmp_path, tiny_counts, monkeypatch, capsys):
    served = tmp_path / "served"
    write_tiny_archives(served)
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setattr(
            omniglot,
            "ARCHIVES",
            {
                name: RemoteFile(
                    base + f"{name}.zip",
                    f"{name}.zip",
                    hashlib.md5((served / f"{name}.zip").read_bytes()).hexdigest(),
                )
                for name in TINY
            },
        )
        data = Omniglot(tmp_path / "root", download=True, progress=False)
        assert data.characters.num_classes == 10
        assert sorted(p.name for p in (tmp_path / "root").glob("*.zip")) == [
            "images_background.zip",
            "images_evaluation.zip",
        ]
        # The CLI verb downloads the same way (into another folder); the Vinyals split names
        # characters these tiny archives lack, so building its splits fails clearly.
        assert main(["datasets", "download", "omniglot", "--root", str(tmp_path / "cli")]) == 2
        assert (tmp_path / "cli" / "images_background.zip").is_file()
        assert "Angelic" in capsys.readouterr().err
    finally:
        server.shutdown()


def test_datasets_list_and_errors(capsys):
    assert main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("omniglot", "cifar-fs", "fc100", "mini-imagenet", "tiered-imagenet"):
        assert name in out
    assert main(["datasets", "download", "mini-imagenet", "--root", "/nonexistent"]) == 2
    assert "cannot be downloaded" in capsys.readouterr().err
    assert main(["datasets", "info", "imagenet-1k"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    """The real archives (linked, not copied) with their cache decoded once for this module."""
    if not SHARED.is_dir():
        pytest.skip("the real Omniglot archives are not in ../shared")
    root = tmp_path_factory.mktemp("omniglot")
    for archive in ("images_background.zip", "images_evaluation.zip"):
        (root / archive).symlink_to(SHARED / archive)
    with pytest.warns(UserWarning, match="not the official file"):
        Omniglot(root, progress=False)
    return root


def test_real_archives_give_the_published_counts(real_root):
    data = Omniglot(real_root, progress=False)
    assert isinstance(data.characters.images, np.memmap)
    assert data.characters.num_classes == 1623
    assert data.characters.images.shape == (1623 * 20, 28, 28)
    assert (len(data.background_alphabets), len(data.evaluation_alphabets)) == (30, 20)
    counts = {split: data.vinyals(split).num_classes for split in ("train", "val", "test")}
    assert counts == {"train": 4112, "val": 688, "test": 1692}
    assert data.vinyals("trainval").num_classes == 4800
    maml = data.random_split((1200, 0, 423), seed=0)
    assert [s.num_classes for s in maml.values()] == [4800, 0, 1692]
    versa = data.random_split((1100, 100, 423), seed=0)
    assert [s.num_classes for s in versa.values()] == [4400, 400, 1692]
    background, _ = data.lake("background")
    evaluation, groups = data.lake("evaluation")
    assert (background.num_classes, evaluation.num_classes, len(groups)) == (964, 659, 20)
    # Lake et al.'s 20-way one-shot tasks, each within one evaluation alphabet.
    batch_classes = FewShotSampler(evaluation, 20, 1, 1, seed=0, groups=groups)
    for index in range(10):
        classes, _ = batch_classes.episode(index)
        assert len({evaluation.class_names[c].split("/")[0] for c in classes}) == 1


def test_the_reptile_split_tests_the_maml_test_characters_unrotated(real_root):
    reptile, maml = (split_loader("omniglot", name) for name in ("reptile", "maml"))
    counts = [reptile(real_root, split, False).num_classes for split in ("train", "val", "test")]
    assert counts == [4400, 400, 423]
    assert (
        reptile(real_root, "train", False).class_names
        == maml(real_root, "train", False).class_names
    )
    rotated = maml(real_root, "test", False).class_names
    unrotated = reptile(real_root, "test", False).class_names
    assert sorted({name.rsplit("/", 1)[0] for name in rotated}) == sorted(unrotated)


def test_the_trainval_split_trains_on_the_train_and_val_characters(real_root):
    load = split_loader("omniglot", "vinyals-trainval")
    train, val, test = (load(real_root, split, False) for split in ("train", "val", "test"))
    standard = split_loader("omniglot", "")
    assert train.num_classes == 4800
    assert set(val.class_names) < set(train.class_names)
    assert set(train.class_names) == set(standard(real_root, "train", False).class_names) | set(
        val.class_names
    )
    assert test.class_names == standard(real_root, "test", False).class_names
    assert not set(test.class_names) & set(train.class_names)


def test_datasets_info_on_the_real_archives(real_root, capsys):
    assert main(["datasets", "info", "omniglot", "--root", str(real_root)]) == 0
    out = capsys.readouterr().out
    assert "4112 classes" in out and "688 classes" in out and "1692 classes" in out
    assert "cache omniglot-28x28" in out


def test_training_maml_on_omniglot_episodes_end_to_end(real_root, tmp_path, capsys):
    settings = [
        "task.family=omniglot",
        f"data.root={real_root}",
        "model.kind=conv4",
        "task.ways=5",
        "task.shots=1",
        "task.queries=3",
        "eval.ways=5",
        "eval.shots=1",
        "eval.queries=3",
        "algorithm.inner_lr=0.4",
        "eval.inner_steps=1",
        "eval.report_steps=[0,1]",
        "train.steps=2",
        "train.meta_batch=2",
        "train.val_every=2",
        "train.val_tasks=2",
        "train.checkpoint_every=2",
        "eval.tasks=4",
        "eval.batch=2",
    ]
    args = [arg for s in settings for arg in ("--set", s)]
    out = tmp_path / "run"
    assert main(["train", "sinusoid-maml", *args, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "family=omniglot, algorithm=maml, ways=5, shots=1" in printed and "accuracy@1" in printed
    mismatch = [*args, "--set", "eval.ways=20"]
    assert main(["train", "sinusoid-maml", *mismatch, "--out", str(tmp_path / "b")]) == 2
    assert "eval.ways (20) differs from task.ways (5)" in capsys.readouterr().err
