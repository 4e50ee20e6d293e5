"""Batched image augmentation, reproducible from a seed.

:func:`random_crop_flip` is the standard augmentation of CIFAR-style few-shot training (pad by
4, random crop back to size, random horizontal flip; used e.g. by Lee et al. 2019, MetaOptNet,
on CIFAR-FS and FC100). Each image's draw comes from counter-based randomness keyed by the
seed and the image's position, so a batch is augmented identically in any process.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fastadapt.errors import ConfigError
from fastadapt.tasks.counter_rng import stream_key, uniform

_MODES = ("constant", "reflect")
_TOP, _LEFT, _FLIP = 0, 1, 2


def random_crop_flip(
    images: torch.Tensor, seed: int, padding: int = 4, *, mode: str = "constant"
) -> torch.Tensor:
    """Pad, crop back to ``H x W`` at a random offset, and mirror half of the images.

    Args:
        images: ``[..., C, H, W]``; every image (every index of the leading dimensions) gets
            its own offset and flip.
        seed: the draws are a pure function of ``(seed, position of the image)``.
        padding: pixels added on each side before cropping (0: no crop, only flips).
        mode: ``"constant"`` (zeros) or ``"reflect"`` padding, as in ``torch.nn.functional.pad``.

    Returns a new tensor of the same shape and dtype. No Python loop runs per image: the crops
    and flips are two ``gather`` calls with per-image row and column indices.
    """
    if images.ndim < 3:
        raise ConfigError(f"images must have shape [..., C, H, W], got {tuple(images.shape)}.")
    *_, channels, height, width = images.shape
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"padding must be an integer >= 0, got {padding!r}.")
    if mode not in _MODES:
        raise ConfigError(f"mode must be one of {_MODES}, got {mode!r}.")
    if mode == "reflect" and padding >= min(height, width):
        raise ConfigError(
            f"reflect padding must be smaller than the image ({height}x{width}), got {padding}."
        )
    flat = images.reshape(-1, channels, height, width)
    count = flat.shape[0]
    u = uniform(stream_key(seed), np.arange(count)[:, None], np.arange(3)[None, :])
    span = 2 * padding + 1
    top = np.minimum((u[:, _TOP] * span).astype(np.int64), span - 1)
    left = np.minimum((u[:, _LEFT] * span).astype(np.int64), span - 1)
    flip = u[:, _FLIP] < 0.5
    columns = np.where(flip[:, None], np.arange(width)[::-1], np.arange(width))
    rows = torch.from_numpy(top[:, None] + np.arange(height))
    columns = torch.from_numpy(left[:, None] + columns)
    padded = F.pad(flat, (padding,) * 4, mode=mode) if padding else flat
    padded_width = width + 2 * padding
    picked_rows = padded.gather(
        2, rows.view(count, 1, height, 1).expand(count, channels, height, padded_width)
    )
    cropped = picked_rows.gather(
        3, columns.view(count, 1, 1, width).expand(count, channels, height, width)
    )
    return cropped.reshape(images.shape)
