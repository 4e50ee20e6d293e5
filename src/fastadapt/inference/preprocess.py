"""How new images become model inputs: the decoding and scaling of training, reused as is.

Training images go through :func:`~fastadapt.datasets._common.decode_images` (EXIF
orientation, conversion to grayscale or RGB, Lanczos resize to ``image_size x image_size``)
into a uint8 cache, and :func:`~fastadapt.datasets.class_set.pixels_to_tensor` turns them into
float32 ``[N, C, H, W]`` in ``[0, 1]``. :class:`Preprocessing` calls the same two functions on
the files it is given, so an image reaches the model exactly as it would in a training episode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fastadapt.config import RunConfig
from fastadapt.datasets._common import decode_images, refuse_failures
from fastadapt.datasets.class_set import pixels_to_tensor
from fastadapt.datasets.registry import DATASETS
from fastadapt.engine.build import image_channels
from fastadapt.errors import CheckpointError

_MODES = {1: "L", 3: "RGB"}
_COLOURS = {1: "grayscale (1 channel)", 3: "RGB (3 channels)"}


@dataclass(frozen=True)
class Preprocessing:
    """The preprocessing of a model's training images: square side and channels.

    Every image is turned upright by its EXIF orientation, converted to grayscale (Pillow mode
    ``L``, 1 channel) or ``RGB`` (3 channels; a grayscale or palette image is expanded, an alpha
    channel dropped), resized to ``image_size x image_size`` with Pillow's Lanczos filter
    (aspect ratio not kept) and divided by 255: float32 ``[N, C, H, W]`` in ``[0, 1]``, with no
    mean or standard-deviation normalisation.
    """

    image_size: int
    channels: int

    @classmethod
    def from_config(cls, config: RunConfig) -> Preprocessing | None:
        """The preprocessing of a run's images; ``None`` for task families without images."""
        if config.task.family not in DATASETS:
            return None
        return cls(config.data.image_size, image_channels(config.task.family))

    @classmethod
    def from_json(cls, data: Any, source: Path) -> Preprocessing:
        """Read what :meth:`to_json` wrote; refuse anything else naming ``source``."""
        valid = (
            isinstance(data, dict)
            and isinstance(data.get("image_size"), int)
            and data["image_size"] > 0
            and data.get("channels") in _MODES
        )
        if not valid:
            raise CheckpointError(
                f"{source} describes its preprocessing as {data!r}; expected image_size (a "
                "positive integer) and channels (1 or 3). Export the run again."
            )
        return cls(data["image_size"], data["channels"])

    @property
    def mode(self) -> str:
        """Pillow's mode for the colour conversion: ``L`` (grayscale) or ``RGB``."""
        return _MODES[self.channels]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape ``(C, H, W)`` of one preprocessed image."""
        return (self.channels, self.image_size, self.image_size)

    def describe(self) -> str:
        """One sentence stating the preprocessing, printed by ``fastadapt adapt``."""
        side = self.image_size
        return (
            f"upright by EXIF orientation, converted to {_COLOURS[self.channels]}, resized to "
            f"{side}x{side} (Lanczos, aspect ratio not kept), pixel values / 255 in [0, 1], "
            "no mean/std normalisation: as in training"
        )

    def to_json(self) -> dict[str, Any]:
        """The description stored in an export's ``fastadapt.json``."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "mode": self.mode,
            "orientation": "EXIF transpose",
            "resize": "Lanczos to image_size x image_size, aspect ratio not kept",
            "scale": "uint8 / 255 to float32 in [0, 1]",
            "normalisation": "none",
            "layout": "[N, C, H, W]",
        }

    def decode(
        self, paths: Sequence[str | os.PathLike[str]]
    ) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        """Images ``[N, C, H, W]`` and the files that could not be decoded, as
        ``(index, reason)``; their rows are zero."""
        sources = [Path(path) for path in paths]
        images, failures = decode_images(
            sources, size=self.image_size, mode=self.mode, desc="images"
        )
        return pixels_to_tensor(images), failures

    def __call__(self, paths: Sequence[str | os.PathLike[str]]) -> torch.Tensor:
        """Images ``[N, C, H, W]`` of the files ``paths``.

        Raises:
            DatasetError: a file cannot be decoded (it is named).
        """
        images, failures = self.decode(paths)
        refuse_failures(failures, lambda index: str(paths[index]))
        return images
