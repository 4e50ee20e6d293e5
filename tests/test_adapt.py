"""fastadapt.load and `fastadapt adapt`: a model trained for a few steps classifies a generated
folder of photos, preprocessed exactly as in training; every bad input is named."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_RUN, install_fake_omniglot
from PIL import Image, ImageDraw

import fastadapt
from fastadapt.cli import main
from fastadapt.config import load_preset
from fastadapt.datasets.image_folder import image_folder
from fastadapt.engine.build import build_learner
from fastadapt.engine.run import train_run
from fastadapt.errors import ConfigError, RunDirectoryError, SupportSetError
from fastadapt.inference.model import LoadedModel
from fastadapt.inference.preprocess import Preprocessing

KINDS = ("bolt", "gear", "washer")


def train_tiny(out: Path, preset: str = "protonet-omniglot-1shot", *extra: str) -> Path:
    """A run of ``preset`` trained for four steps on fake Omniglot, in about a second."""
    with pytest.MonkeyPatch.context() as patch:
        install_fake_omniglot(patch)
        train_run(load_preset(preset).override([*TINY_RUN, *extra]), out, progress=False)
    return out


def part_photo(kind: int, seed: int, size: tuple[int, int]) -> Image.Image:
    """A photo of a part: a dark disc, square or cross on a light, noisy RGB background."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(190, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    dx, dy = rng.integers(-width // 10, width // 10 + 1), rng.integers(-height // 10, height // 10)
    box = (width * 0.25 + dx, height * 0.25 + dy, width * 0.75 + dx, height * 0.75 + dy)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    if kind == 0:
        draw.ellipse(box, fill=ink)
    elif kind == 1:
        draw.rectangle(box, fill=ink)
    else:
        draw.line(box, fill=ink, width=max(2, width // 8))
        draw.line((box[0], box[3], box[2], box[1]), fill=ink, width=max(2, width // 8))
    return image


def write_task(root: Path, shots: int = 5, queries: int = 4, labelled: bool = False) -> Path:
    """``root/support/<kind>/`` with ``shots`` PNGs of mixed sizes and ``root/query/`` with
    ``queries`` JPEGs per kind (in ``query/<kind>/`` if ``labelled``)."""
    for k, kind in enumerate(KINDS):
        (root / "support" / kind).mkdir(parents=True)
        for i in range(shots):
            size = (40 + 7 * i, 36 + 5 * k)
            part_photo(k, 100 * k + i, size).save(root / "support" / kind / f"{i}.png")
        query = root / "query" / kind if labelled else root / "query"
        query.mkdir(parents=True, exist_ok=True)
        for i in range(queries):
            name = f"{i}.jpg" if labelled else f"{kind[0]}{i}.jpg"
            part_photo(k, 1000 + 100 * k + i, (64, 48)).save(query / name, quality=90)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs") / "protonet")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_adapt_classifies_a_folder_of_photos(run_dir, tmp_path, capsys) -> None:
    task = write_task(tmp_path / "task")
    out = tmp_path / "predictions.csv"
    args = ["adapt", str(run_dir), "--support", str(task / "support"), "--query"]
    assert main([*args, str(task / "query"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "converted to grayscale (1 channel), resized to 28x28" in printed.out
    assert "support: 3 classes, images per class: bolt (5), gear (5), washer (5)" in printed.out
    assert "file" in printed.out and "predicted class" in printed.out
    # Trained 3-way 1-shot and evaluated 3-way 1-shot: five shots are a new shape, said once.
    assert printed.err.count("fastadapt: warning: the support set is 3-way with 5") == 1
    rows = _read_csv(out)
    assert [r["file"] for r in rows] == sorted(f"{k[0]}{i}.jpg" for k in KINDS for i in range(4))
    for row in rows:
        assert row["predicted_class"] in KINDS and row["file"] in printed.out
        probabilities = [float(row[f"p_{k}"]) for k in KINDS]
        assert sum(probabilities) == pytest.approx(1, abs=1e-5)
        assert float(row["probability"]) == max(probabilities)
    # The same predictions through the Python API, from the files preprocessed as in training.
    model = fastadapt.load(run_dir)
    support = sorted((task / "support").glob("*/*.png"))
    labels = torch.tensor([KINDS.index(p.parent.name) for p in support])
    predictor = model.adapt(model.preprocess(support), labels)
    proba = predictor.predict_proba(model.preprocess([task / "query" / r["file"] for r in rows]))
    expected = [[float(r[f"p_{k}"]) for k in KINDS] for r in rows]
    torch.testing.assert_close(proba, torch.tensor(expected), atol=2e-6, rtol=0)


def test_a_labelled_query_folder_reports_accuracy(run_dir, tmp_path, capsys) -> None:
    task = write_task(tmp_path / "task", shots=1, labelled=True)
    out = tmp_path / "p.csv"
    args = ["adapt", str(run_dir), "--support", str(task / "support"), "--query"]
    assert main([*args, str(task / "query"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "warning" not in printed.err  # 3-way 1-shot: the shape the model was trained on
    rows = _read_csv(out)
    assert [r["true_class"] for r in rows] == [k for k in KINDS for _ in range(4)]
    right = sum(r["correct"] == "true" for r in rows)
    assert all((r["correct"] == "true") == (r["true_class"] == r["predicted_class"]) for r in rows)
    assert f"accuracy: {right / 12:.4f} ({right} of 12)" in printed.out
    assert right > 4  # better than chance (4 of 12) on clearly different shapes


def test_preprocessing_is_the_training_code_path(tmp_path) -> None:
    task = write_task(tmp_path / "task", shots=2)
    root = task / "support"
    for channels in (1, 3):
        classes = image_folder(root, image_size=20, channels=channels)
        trained_as = classes.gather(np.arange(3), np.tile(np.arange(2), (3, 1)))
        files = sorted(root.glob("*/*.png"))
        ours = Preprocessing(image_size=20, channels=channels)(files)
        assert ours.shape == (6, channels, 20, 20) and ours.dtype == torch.float32
        assert torch.equal(ours, trained_as.reshape(6, channels, 20, 20))


def _expect_error(capsys, argv: list[str], *fragments: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastadapt: error:")
    for fragment in fragments:
        assert fragment in err


def _break_one_class(support: Path) -> None:
    (support / "bolt" / "0.png").unlink()
    (support / "gear").rename(support / "only")
    for extra in ("washer", "bolt"):
        for image in (support / extra).iterdir():
            image.unlink()
        (support / extra).rmdir()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_break_one_class, "needs at least two class folders"),
        (lambda s: [p.unlink() for p in (s / "gear").iterdir()], "gear holds no images"),
        (lambda s: (s / "loose.png").write_bytes(b"x"), "files at its top level (loose.png)"),
    ],
    ids=["one-class", "empty-class", "class-not-a-folder"],
)
def test_bad_support_folders_are_named(run_dir, tmp_path, capsys, damage, message) -> None:
    task = write_task(tmp_path / "task", shots=1, queries=1)
    damage(task / "support")
    argv = ["adapt", str(run_dir), "--support", str(task / "support"), "--query"]
    _expect_error(capsys, [*argv, str(task / "query"), "--out", str(tmp_path / "p.csv")], message)
    assert not (tmp_path / "p.csv").exists()


def test_query_folder_layout_errors(run_dir, tmp_path, capsys) -> None:
    task = write_task(tmp_path / "task", shots=1, queries=1, labelled=True)
    argv = ["adapt", str(run_dir), "--support", str(task / "support"), "--query"]
    (task / "query" / "nut").mkdir()
    part_photo(0, 0, (30, 30)).save(task / "query" / "nut" / "0.png")
    _expect_error(capsys, [*argv, str(task / "query")], "not support classes: nut")
    (task / "query" / "stray.png").write_bytes((task / "query" / "nut" / "0.png").read_bytes())
    _expect_error(capsys, [*argv, str(task / "query")], "mixes images (stray.png)")
    _expect_error(capsys, [*argv, str(tmp_path / "nowhere")], "is not a folder of images")


def test_an_undecodable_query_image_is_named_and_skipped_only_when_asked(
    run_dir, tmp_path, capsys
) -> None:
    task = write_task(tmp_path / "task", shots=1, queries=2)
    bad = task / "query" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "p.csv"
    argv = ["adapt", str(run_dir), "--support", str(task / "support"), "--query"]
    argv += [str(task / "query"), "--out", str(out)]
    _expect_error(capsys, argv, f"cannot decode the image {bad}", "--skip-bad")
    assert not out.exists()
    assert main([*argv, "--skip-bad"]) == 0
    printed = capsys.readouterr()
    assert f"fastadapt: warning: skipping unreadable image {bad}" in printed.err
    assert "skipped 1 unreadable image(s)" in printed.out
    assert "broken.jpg" not in {r["file"] for r in _read_csv(out)} and len(_read_csv(out)) == 6


def test_a_run_folder_without_a_checkpoint_is_refused(tmp_path, capsys) -> None:
    task = write_task(tmp_path / "task", shots=1, queries=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    argv = ["--support", str(task / "support"), "--query", str(task / "query")]
    _expect_error(capsys, ["adapt", str(tmp_path / "run"), *argv], "holds no checkpoint")
    (tmp_path / "run" / "checkpoints").mkdir()
    _expect_error(capsys, ["adapt", str(tmp_path / "run"), *argv], "no checkpoint at")
    with pytest.raises(RunDirectoryError, match="is not a folder"):
        fastadapt.load(tmp_path / "run" / "config.json")


def _model(preset: str, *overrides: str) -> LoadedModel:
    config = load_preset(preset).override(list(overrides))
    learner = build_learner(config).eval()
    return LoadedModel(learner, config, Preprocessing.from_config(config), Path("x"), 0)


def test_support_sets_the_learner_cannot_take_are_refused() -> None:
    maml = _model(
        "protonet-omniglot-1shot",
        "algorithm.name=maml",
        "task.ways=5",
        "eval.ways=5",
        "algorithm.inner_steps=1",
        "eval.inner_steps=1",
    )
    images = torch.rand(6, 1, 28, 28)
    with pytest.raises(SupportSetError, match=r"head has 5 outputs.*has 3 classes"):
        maml.adapt(images, torch.tensor([0, 0, 1, 1, 2, 2]))
    five_way = maml.adapt(torch.rand(10, 1, 28, 28), torch.arange(5).repeat(2))
    assert five_way.predict(images).shape == (6,)
    protonet = _model("protonet-omniglot-1shot")
    with pytest.raises(SupportSetError, match="one class"):
        protonet.adapt(images, torch.zeros(6, dtype=torch.int64))
    with pytest.raises(SupportSetError, match=r"label\(s\) \[1\] have none"):
        protonet.adapt(images, torch.tensor([0, 0, 2, 2, 2, 2]))
    with pytest.raises(SupportSetError, match=r"takes images of shape \(1, 28, 28\)"):
        protonet.adapt(torch.rand(6, 3, 28, 28), torch.tensor([0, 0, 1, 1, 2, 2]))
    with pytest.warns(UserWarning, match="3-way with 2 example"):
        protonet.adapt(images, torch.tensor([0, 0, 1, 1, 2, 2]))


def test_a_regression_model_adapts_tensors_but_not_image_folders(tmp_path, capsys) -> None:
    from test_run import tiny_config

    run = tmp_path / "sinusoid"
    train_run(tiny_config("train.steps=2"), run, progress=False)
    model = fastadapt.load(run, checkpoint="last")
    x = torch.linspace(-5, 5, 10).unsqueeze(1)
    assert model.adapt(x, torch.sin(x)).predict(x).shape == (10, 1)
    with pytest.raises(ConfigError, match="not images"):
        model.preprocess([tmp_path / "a.png"])
    task = write_task(tmp_path / "task", shots=1, queries=1)
    argv = ["--support", str(task / "support"), "--query", str(task / "query")]
    _expect_error(capsys, ["adapt", str(run), *argv], "trained on sinusoid tasks")
