"""A trained meta-learner with its preprocessing: what :func:`fastadapt.load` returns."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fastadapt.algorithms.base import MetaLearner, Predictor
from fastadapt.config import RunConfig
from fastadapt.engine.build import ALGORITHMS
from fastadapt.errors import ConfigError, SupportSetError
from fastadapt.inference.preprocess import Preprocessing


@dataclass
class LoadedModel:
    """A trained meta-learner, ready to adapt to new tasks, with its training preprocessing.

    Attributes:
        learner: the meta-learner, on the CPU and in eval mode.
        config: the configuration the learner was trained with.
        preprocessing: how image files become inputs, exactly as in training; ``None`` for
            task families without images (sinusoid regression).
        source: the run or export folder it was loaded from.
        step: the meta-training step of its weights.
    """

    learner: MetaLearner
    config: RunConfig
    preprocessing: Preprocessing | None
    source: Path
    step: int

    def preprocess(self, paths: Sequence[str | os.PathLike[str]]) -> torch.Tensor:
        """Image files as the model's inputs ``[N, C, H, W]``, preprocessed as in training.

        Raises:
            ConfigError: the model does not take images.
            DatasetError: a file cannot be decoded (it is named).
        """
        return self.image_preprocessing(paths)

    def adapt(self, support_x: torch.Tensor, support_y: torch.Tensor) -> Predictor:
        """A predictor for the task of this support set (``predict`` and ``predict_proba``).

        ``support_x`` is ``[n, ...]`` (e.g. the output of :meth:`preprocess`) and, for a
        classifier, ``support_y`` ``[n]`` holds labels ``0..ways-1``, each at least once.
        Algorithms without a classifier head (ProtoNet, Matching Networks) adapt to any
        number of ways and shots; a support set shaped unlike the training and evaluation
        tasks gives a ``UserWarning``, because its accuracy was never measured.

        Raises:
            SupportSetError: fewer than two classes, a label without examples, inputs of
                another shape than the model's, or (MAML) a number of classes other than its
                head's.
        """
        if self.learner.problem == "classification":
            self._check_support(support_x, support_y)
        return self.learner.adapt(support_x, support_y)

    @property
    def image_preprocessing(self) -> Preprocessing:
        """:attr:`preprocessing`, or a :class:`ConfigError` if the model takes no images."""
        if self.preprocessing is None:
            raise ConfigError(
                f"the model in {self.source} was trained on {self.config.task.family} tasks, "
                "which are not images; pass tensors to adapt() instead of image files."
            )
        return self.preprocessing

    def _check_support(self, support_x: torch.Tensor, support_y: torch.Tensor) -> None:
        integer = not (support_y.dtype.is_floating_point or support_y.dtype == torch.bool)
        if support_y.dim() != 1 or not integer or support_y.numel() == 0:
            raise SupportSetError(
                f"support_y must be a non-empty 1-D tensor of integer labels, got dtype "
                f"{support_y.dtype} and shape {tuple(support_y.shape)}."
            )
        if support_x.shape[:1] != support_y.shape:
            raise SupportSetError(
                f"support_x has {support_x.shape[0]} examples but support_y "
                f"{support_y.shape[0]} labels; give one label per example."
            )
        expected = self.preprocessing.input_shape if self.preprocessing else None
        if expected is not None and tuple(support_x.shape[1:]) != expected:
            raise SupportSetError(
                f"the model takes images of shape {expected} (channels, height, width), got "
                f"{tuple(support_x.shape[1:])}; preprocess the files with "
                "LoadedModel.preprocess()."
            )
        if support_y.min() < 0:
            raise SupportSetError("support labels must be 0..ways-1; found a negative label.")
        counts = torch.bincount(support_y).tolist()
        if len(counts) < 2:
            raise SupportSetError(
                "the support set has one class; a few-shot task needs at least two classes to "
                "tell apart."
            )
        missing = [label for label, count in enumerate(counts) if count == 0]
        if missing:
            raise SupportSetError(
                f"support labels must be 0..{len(counts) - 1}, each with at least one example; "
                f"label(s) {missing} have none."
            )
        self._check_shape(len(counts), counts)

    def _check_shape(self, ways: int, counts: list[int]) -> None:
        task, evaluation, name = self.config.task, self.config.eval, self.config.algorithm.name
        if ALGORITHMS[name].head and ways != task.ways:
            raise SupportSetError(
                f"this {name} model's classifier head has {task.ways} outputs, so it adapts to "
                f"{task.ways}-way tasks only; the support set has {ways} classes. Give it "
                f"{task.ways} classes, or train a model with task.ways={ways} (or a metric "
                "learner such as protonet, which takes any number of classes)."
            )
        shots = counts[0] if len(set(counts)) == 1 else None
        if (ways, shots) in ((task.ways, task.shots), (evaluation.ways, evaluation.shots)):
            return
        per_class = f"{shots}" if shots is not None else f"{min(counts)} to {max(counts)}"
        warnings.warn(
            f"the support set is {ways}-way with {per_class} example(s) per class; the model "
            f"was trained {task.ways}-way {task.shots}-shot and evaluated {evaluation.ways}-way "
            f"{evaluation.shots}-shot. {name} still adapts to it, but its accuracy on tasks of "
            "this shape was not measured.",
            UserWarning,
            stacklevel=4,  # the caller of adapt()
        )
