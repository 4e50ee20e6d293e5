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


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout, the one oneDNN's convolutions run fastest on; as it
    is inside ``torch.vmap``, whose batched tensors have no layout to ask for."""
    if torch._C._functorch.is_functorch_wrapped_tensor(x):
        return x
    return x.contiguous(memory_format=torch.channels_last)
