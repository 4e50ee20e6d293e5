"""Batched image augmentation, reproducible from a seed.

:func:`random_crop_flip` is the standard augmentation of CIFAR-style few-shot training (pad by
4, random crop back to size, random horizontal flip; used e.g. by Lee et al. 2019, MetaOptNet,
on CIFAR-FS and FC100). :func:`random_affine` is the affine distortion of handwritten
characters of Koch, Zemel & Salakhutdinov 2015 (Siamese networks on Omniglot). Each image's
draw comes from counter-based randomness keyed by the seed and the image's position, so a
batch is augmented identically in any process.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fastadapt.errors import ConfigError
from fastadapt.tasks.counter_rng import stream_key, uniform

Augment = Callable[[torch.Tensor, int], torch.Tensor]
"""``augment(images, seed) -> images`` of the same shape, a pure function of its arguments."""

_MODES = ("constant", "reflect")
_TOP, _LEFT, _FLIP = 0, 1, 2
_AFFINE_PARTS = ("rotation", "shear_x", "shear_y", "scale_x", "scale_y", "shift_x", "shift_y")


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


def random_affine(
    images: torch.Tensor,
    seed: int,
    *,
    rotation: float = 10.0,
    shear: float = 0.3,
    scale: tuple[float, float] = (0.8, 1.2),
    shift: float = 2 / 105,
    probability: float = 0.5,
) -> torch.Tensor:
    """Distort each image by a random affine map, as Koch, Zemel & Salakhutdinov 2015 ("Siamese
    Neural Networks for One-shot Image Recognition") distort Omniglot's training images.

    The map is ``x -> R(θ) Sh(ρ_x, ρ_y) S(s_x, s_y) x + t`` about the image centre, with
    ``θ ~ U[-rotation, rotation]`` degrees, shears ``ρ ~ U[-shear, shear]``, scales
    ``s ~ U[scale]`` and shifts ``t ~ U[-shift, shift]`` as fractions of the image side (the
    paper's ±2 pixels of 105); each of the seven components is drawn with ``probability``
    and is the identity otherwise, as in the paper. Pixels are resampled bilinearly;
    those that come from outside the image repeat its border (the background, for characters
    drawn away from the edge).

    Args:
        images: ``[..., C, H, W]`` float; every image gets its own map.
        seed: the draws are a pure function of ``(seed, position of the image)``.

    Returns a new tensor of the same shape and dtype.
    """
    if not images.is_floating_point() or images.ndim < 3:
        raise ConfigError(
            f"images must be a float tensor [..., C, H, W], got {images.dtype} "
            f"{tuple(images.shape)}."
        )
    low, high = scale
    for name, ok in (
        ("rotation", rotation >= 0),
        ("shear", shear >= 0),
        ("scale", 0 < low <= high),
        ("shift", shift >= 0),
        ("probability", 0 <= probability <= 1),
    ):
        if not ok:
            raise ConfigError(
                f"random_affine: invalid {name}; rotation, shear and shift must be >= 0, "
                f"scale a (low, high) pair with 0 < low <= high, probability in [0, 1]."
            )
    *_, channels, height, width = images.shape
    flat = images.reshape(-1, channels, height, width)
    count = flat.shape[0]
    parts = len(_AFFINE_PARTS)
    u = uniform(stream_key(seed), np.arange(count)[:, None], np.arange(2 * parts)[None, :])
    on = u[:, parts:] < probability
    centred = 2 * u[:, :parts] - 1  # U[-1, 1]
    angle = np.where(on[:, 0], np.deg2rad(rotation) * centred[:, 0], 0.0)
    shear_x = np.where(on[:, 1], shear * centred[:, 1], 0.0)
    shear_y = np.where(on[:, 2], shear * centred[:, 2], 0.0)
    middle, half = (low + high) / 2, (high - low) / 2
    scale_x = np.where(on[:, 3], middle + half * centred[:, 3], 1.0)
    scale_y = np.where(on[:, 4], middle + half * centred[:, 4], 1.0)
    # Shifts in affine_grid's coordinates, where the image spans [-1, 1].
    shift_xy = np.stack(
        (
            np.where(on[:, 5], 2 * shift * centred[:, 5], 0.0),
            np.where(on[:, 6], 2 * shift * centred[:, 6], 0.0),
        ),
        axis=-1,
    )
    cos, sin = np.cos(angle), np.sin(angle)
    rotate = np.stack((np.stack((cos, -sin), -1), np.stack((sin, cos), -1)), -2)
    shear_matrix = np.stack(
        (np.stack((np.ones(count), shear_x), -1), np.stack((shear_y, np.ones(count)), -1)), -2
    )
    forward = rotate @ shear_matrix @ (np.eye(2) * np.stack((scale_x, scale_y), -1)[:, None, :])
    # affine_grid maps each output pixel to where it is read from: the inverse map.
    inverse = np.linalg.inv(forward)
    theta = np.concatenate((inverse, -(inverse @ shift_xy[:, :, None])), axis=-1)
    grid = F.affine_grid(
        torch.from_numpy(theta).to(flat.dtype),
        [count, channels, height, width],
        align_corners=False,
    )
    warped = F.grid_sample(
        flat, grid.to(flat.device), mode="bilinear", padding_mode="border", align_corners=False
    )
    return warped.reshape(images.shape)
