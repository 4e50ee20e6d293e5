"""The Conv-4 backbone of few-shot learning (Vinyals et al. 2016; Finn et al. 2017, §5.2).

Four blocks of ``3x3 convolution (64 filters) → BatchNorm → ReLU → 2x2 max-pool``; on 28x28
Omniglot images the output is a 64-dimensional embedding. BatchNorm uses batch statistics
(``track_running_stats=False``), as MAML does at training and test time.

The blocks compute exactly that function, faster on a CPU:

- activations are channels-last (NHWC), the layout oneDNN's convolutions, BatchNorm and
  pooling run fastest in;
- ReLU comes after the max-pool (``relu(max(a, b)) = max(relu(a), relu(b))``: the same output,
  on a quarter of the values);
- where the input has few channels (the first block on grayscale or RGB images), BatchNorm is
  folded into the convolution from the input's patch statistics and the max-pool is taken
  over four per-phase matrix products (:mod:`fastadapt.nn.folded_conv_block`), which removes
  the BatchNorm and pooling passes over the largest feature maps, forward and backward.

Parameter names and shapes are those of the plain ``conv → BatchNorm → ReLU → pool`` stack, so
state dicts are interchangeable with it.
"""

from __future__ import annotations

import torch
from torch import nn

from fastadapt.nn.folded_conv_block import MAX_PATCH_SIZE, folded_conv_block
from fastadapt.nn.image_input import check_image_batch

DOWNSAMPLING = ("pool", "stride")


class ConvBlock(nn.Sequential):
    """``3x3 convolution → BatchNorm (batch statistics) → 2x2 max-pool → ReLU``, or with
    ``downsample="stride"`` a stride-2 convolution and no pool (MAML's Omniglot network).

    Children ``0`` (``nn.Conv2d``) and ``1`` (``nn.BatchNorm2d``) hold the parameters, as in
    the conventional ``conv → BatchNorm → ReLU → pool`` order, whose output this equals.
    """

    def __init__(self, in_channels: int, out_channels: int, downsample: str = "pool") -> None:
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample must be one of {DOWNSAMPLING}, got {downsample!r}.")
        stride = 2 if downsample == "stride" else 1
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels, track_running_stats=False),
            nn.MaxPool2d(2) if downsample == "pool" else nn.Identity(),
            nn.ReLU(),
        )
        self.folds_batchnorm = in_channels * 3 * 3 <= MAX_PATCH_SIZE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, pool, relu = self
        if self.folds_batchnorm and norm.running_mean is None:
            return folded_conv_block(
                x, conv.weight, conv.bias, norm.weight, norm.bias, eps=norm.eps, padding=1,
                stride=conv.stride[0], pool=isinstance(pool, nn.MaxPool2d),
            )  # fmt: skip
        return relu(pool(norm(conv(x))))


class Conv4(nn.Sequential):
    """Conv-4 embedding, with a linear classification head when ``ways`` is given.

    Args:
        in_channels: 1 for Omniglot, 3 for RGB images.
        hidden: filters per block (64 in the papers).
        ways: number of output classes; ``None`` returns the flattened embedding.
        image_size: input height and width, which sets the embedding size (28x28 inputs:
            28→14→7→3→1, so ``hidden`` features; 84x84: 5x5x``hidden``).
        downsample: ``"pool"`` (2x2 max-pools, as Vinyals et al. and Snell et al.) or
            ``"stride"`` (stride-2 convolutions instead, as Finn et al. for Omniglot, §5.2:
            28→14→7→4→2, so 2x2x``hidden`` features).
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        ways: int | None = None,
        image_size: int = 28,
        downsample: str = "pool",
    ) -> None:
        side = image_size
        for _ in range(4):
            side = side // 2 if downsample == "pool" else (side + 1) // 2
        if side < 1:
            raise ValueError(
                f"image_size must be at least 16 for four 2x2 pools, got {image_size}."
            )
        embedding_size = hidden * side * side
        layers: list[nn.Module] = [
            ConvBlock(in_channels, hidden, downsample),
            ConvBlock(hidden, hidden, downsample),
            ConvBlock(hidden, hidden, downsample),
            ConvBlock(hidden, hidden, downsample),
            nn.Flatten(),
        ]
        if ways is not None:
            layers.append(nn.Linear(embedding_size, ways))
        super().__init__(*layers)
        self.embedding_size = embedding_size
        self.to(memory_format=torch.channels_last)

        self.input_shape = (in_channels, image_size, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[n, embedding_size]`` (logits ``[n, ways]``) of images ``[n, C, H, W]``."""
        check_image_batch("Conv4", x, self.input_shape)
        return super().forward(x.contiguous(memory_format=torch.channels_last))
