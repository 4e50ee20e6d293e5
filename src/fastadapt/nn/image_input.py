"""The input check shared by the image backbones."""

from __future__ import annotations

import torch


def check_image_batch(model: str, x: torch.Tensor, expected: tuple[int, int, int]) -> None:
    """Refuse ``x`` unless it is ``[n, *expected]``, naming the expected and the given shape."""
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        channels, height, width = expected
        raise ValueError(
            f"{model} expects images [n, {channels}, {height}, {width}] (channels, then "
            f"image_size x image_size), got a tensor of shape {tuple(x.shape)}. Resize the "
            "images or build the model with the matching in_channels and image_size."
        )
