"""A few-shot task from folders of image files: adapt on ``support/<class>/``, predict ``query/``.

The support folder holds one sub-folder of images per class (the class's name is the folder's
name). The query folder holds images, or the support layout (one sub-folder per known class),
in which case the true classes are known and accuracy is reported. Hidden files and folders
(``.DS_Store``...) are ignored. Images of any size and format Pillow reads are preprocessed as
the model's training images were (:class:`~fastadapt.inference.preprocess.Preprocessing`).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from fastadapt.datasets._common import DatasetError
from fastadapt.inference.model import LoadedModel
from fastadapt.inference.preprocess import Preprocessing
from fastadapt.io.atomic import atomic_write_text


@dataclass(frozen=True)
class Prediction:
    """The prediction for one query image.

    Attributes:
        file: the image's path relative to the query folder.
        predicted: the predicted class name.
        probability: the probability of the predicted class.
        probabilities: the probability of every class, in the order of the support classes.
        true_class: the class folder it was in, when the query folder has class folders.
    """

    file: str
    predicted: str
    probability: float
    probabilities: tuple[float, ...]
    true_class: str | None = None


@dataclass(frozen=True)
class FolderPredictions:
    """The outcome of :func:`adapt_folder`.

    Attributes:
        classes: the support classes, in label order (sorted folder names).
        shots: support images used per class, in the same order.
        predictions: one per decoded query image, in file order.
        skipped: the files left out because they could not be decoded, with the reason.
    """

    classes: list[str]
    shots: list[int]
    predictions: list[Prediction]
    skipped: list[tuple[Path, str]]

    @property
    def accuracy(self) -> float | None:
        """The fraction of query images predicted right; ``None`` if their classes are unknown."""
        known = [p for p in self.predictions if p.true_class is not None]
        if not known:
            return None
        return sum(p.predicted == p.true_class for p in known) / len(known)


def adapt_folder(
    model: LoadedModel, support: Path, query: Path, *, skip_bad: bool = False
) -> FolderPredictions:
    """Adapt ``model`` to the classes of ``support`` and classify the images of ``query``.

    Args:
        model: a loaded image model (see :func:`fastadapt.load`).
        support: a folder with one sub-folder of images per class, at least two classes.
        query: a folder of images, or of sub-folders named after support classes.
        skip_bad: leave out, with a warning naming each, images that cannot be decoded,
            instead of raising.

    Raises:
        DatasetError: a folder is missing or laid out otherwise, a class folder is empty, a
            query class is not a support class, or an image cannot be decoded.
        SupportSetError: the support set does not fit the model (see
            :meth:`LoadedModel.adapt`).
    """
    preprocessing = model.image_preprocessing
    classes, support_files = _support_files(support)
    support_x, kept, skipped = _decode(preprocessing, [f for _, f in support_files], skip_bad)
    labels = [label for label, _ in support_files]
    support_y = torch.tensor([labels[i] for i in kept], dtype=torch.int64)
    shots = torch.bincount(support_y, minlength=len(classes)).tolist()
    emptied = [name for name, count in zip(classes, shots) if count == 0]
    if emptied:
        raise DatasetError(
            f"no readable image left in the support class folder(s) {', '.join(emptied)} of "
            f"{support}."
        )
    query_files = _query_files(query, classes)
    query_x, kept_query, skipped_query = _decode(
        preprocessing, [f for _, f in query_files], skip_bad
    )
    if not kept_query:
        raise DatasetError(f"no readable image in the query folder {query}.")
    predictor = model.adapt(support_x, support_y)
    probabilities = predictor.predict_proba(query_x)
    predictions = []
    for row, index in zip(probabilities.tolist(), kept_query):
        true_class, path = query_files[index]
        best = max(range(len(classes)), key=row.__getitem__)
        predictions.append(
            Prediction(
                path.relative_to(query).as_posix(),
                classes[best],
                row[best],
                tuple(row),
                true_class,
            )
        )
    return FolderPredictions(classes, shots, predictions, skipped + skipped_query)


def write_predictions_csv(result: FolderPredictions, path: Path) -> None:
    """Write one row per query image (file, predicted class, probability, true class if known,
    then the probability of each class) to ``path``, atomically."""
    labelled = result.accuracy is not None
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    truth = ["true_class", "correct"] if labelled else []
    writer.writerow(
        ["file", "predicted_class", "probability", *truth, *(f"p_{c}" for c in result.classes)]
    )
    for p in result.predictions:
        known = [p.true_class, str(p.predicted == p.true_class).lower()] if labelled else []
        writer.writerow(
            [
                p.file,
                p.predicted,
                f"{p.probability:.6f}",
                *known,
                *(f"{value:.6f}" for value in p.probabilities),
            ]
        )
    atomic_write_text(path, buffer.getvalue())


def _visible(folder: Path) -> tuple[list[Path], list[Path]]:
    """The sorted non-hidden sub-folders and files of ``folder``."""
    entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    return [e for e in entries if e.is_dir()], [e for e in entries if e.is_file()]


def _support_files(support: Path) -> tuple[list[str], list[tuple[int, Path]]]:
    if not support.is_dir():
        raise DatasetError(
            f"--support {support} is not a folder; expected {support}/<class name>/<images>."
        )
    folders, files = _visible(support)
    if files:
        raise DatasetError(
            f"the support folder {support} has files at its top level "
            f"({_some(f.name for f in files)}); every class must be a folder of images, "
            f"{support}/<class name>/<image>. Move them into their class folders."
        )
    if len(folders) < 2:
        found = f"only {_some(f.name for f in folders)}" if folders else "none"
        raise DatasetError(
            f"the support folder {support} needs at least two class folders to tell apart; it "
            f"has {found}. Add a folder of images for each class."
        )
    labelled = [
        (label, image) for label, folder in enumerate(folders) for image in _class_images(folder)
    ]
    return [folder.name for folder in folders], labelled


def _query_files(query: Path, classes: list[str]) -> list[tuple[str | None, Path]]:
    if not query.is_dir():
        raise DatasetError(f"--query {query} is not a folder of images.")
    folders, files = _visible(query)
    if folders and files:
        raise DatasetError(
            f"the query folder {query} mixes images ({_some(f.name for f in files)}) and "
            f"folders ({_some(f.name for f in folders)}); give either images only, or one "
            "folder per class (then accuracy is reported)."
        )
    if files:
        return [(None, file) for file in files]
    if not folders:
        raise DatasetError(f"the query folder {query} holds no images.")
    unknown = [f.name for f in folders if f.name not in classes]
    if unknown:
        raise DatasetError(
            f"the query folder {query} has class folders that are not support classes: "
            f"{_some(unknown)}; the support classes are {_some(classes)}."
        )
    return [(folder.name, image) for folder in folders for image in _class_images(folder)]


def _class_images(folder: Path) -> list[Path]:
    files = _visible(folder)[1]
    if not files:
        raise DatasetError(
            f"the class folder {folder} holds no images; put images in it or remove it."
        )
    return files


def _decode(
    preprocessing: Preprocessing, files: list[Path], skip_bad: bool
) -> tuple[torch.Tensor, list[int], list[tuple[Path, str]]]:
    """Decoded images of the readable files, their indices, and the unreadable files."""
    images, failures = preprocessing.decode(files)
    if failures and not skip_bad:
        index, reason = failures[0]
        more = f" ({len(failures) - 1} more image(s) failed too)" if len(failures) > 1 else ""
        raise DatasetError(
            f"cannot decode the image {files[index]}: {reason}{more}. Replace or remove it, or "
            "pass --skip-bad to leave unreadable images out."
        )
    for index, reason in failures:
        warnings.warn(f"skipping unreadable image {files[index]}: {reason}", stacklevel=3)
    bad = {index for index, _ in failures}
    kept = [i for i in range(len(files)) if i not in bad]
    return images[kept], kept, [(files[i], reason) for i, reason in failures]


def _some(names: Iterable[str]) -> str:
    """The first few of ``names``, comma-separated."""
    listed = list(names)
    shown = ", ".join(listed[:5])
    return shown + (f", ... ({len(listed)} in all)" if len(listed) > 5 else "")
