"""ResNet-12, the few-shot backbone for mini-ImageNet-scale images.

Oreshkin, Rodríguez & Lacoste 2018 ("TADAM", §3.3 and Figure 2) and Lee et al. 2019
("MetaOptNet", §4.1): four residual blocks, each

    x → [conv 3x3 → BatchNorm → LeakyReLU(0.1)] x 2 → conv 3x3 → BatchNorm  (+ shortcut)
      → LeakyReLU(0.1) → 2x2 max-pool,

with a ``conv 1x1 → BatchNorm`` shortcut, widths 64-160-320-640 (MetaOptNet; TADAM uses
64-128-256-512: pass ``widths``). On 84x84 inputs the last feature map is 5x5; the embedding is
its global average (``pool="avg"``, ``widths[-1]`` features) or the flattened map
(``pool="flatten"``, as MetaOptNet). MetaOptNet's DropBlock regulariser is not included.

BatchNorm keeps running statistics by default (``track_running_stats=True``), the usual choice
for metric learners, which are evaluated in ``eval()`` mode; pass ``False`` for batch
statistics at test time too (as MAML-style learners use).
"""

from __future__ import annotations

import torch
from torch import nn

from fastadapt.nn.image_input import check_image_batch, to_channels_last

WIDTHS = (64, 160, 320, 640)
POOLS = ("avg", "flatten")


class ResidualBlock(nn.Module):
    """Three 3x3 convolutions with a 1x1-convolution shortcut, then LeakyReLU and max-pool."""

    def __init__(self, in_channels: int, out_channels: int, track_running_stats: bool) -> None:
        super().__init__()

        def norm() -> nn.BatchNorm2d:
            return nn.BatchNorm2d(out_channels, track_running_stats=track_running_stats)

        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            norm(),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            norm(),
            nn.LeakyReLU(0.1),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            norm(),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), norm())
        self.activation = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.activation(self.body(x) + self.shortcut(x)))


class ResNet12(nn.Module):
    """ResNet-12 embedding ``[n, C, H, W] → [n, D]`` (with a linear head when ``ways`` is given).

    Args:
        in_channels: 3 for RGB images.
        widths: the four blocks' widths.
        image_size: input height and width (84 for mini-ImageNet, 32 for CIFAR-FS / FC100).
        pool: ``"avg"`` (global average, ``D = widths[-1]``) or ``"flatten"``
            (``D = widths[-1]·(image_size // 16)²``).
        ways: number of output classes; ``None`` returns the embedding.
        track_running_stats: BatchNorm's running statistics (see the module docstring).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, int, int, int] = WIDTHS,
        image_size: int = 84,
        pool: str = "avg",
        ways: int | None = None,
        track_running_stats: bool = True,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or any(width < 1 for width in widths):
            raise ValueError(f"widths must be four positive block widths, got {widths}.")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}.")
        side = image_size // 16
        if side < 1:
            raise ValueError(
                f"image_size must be at least 16 for four 2x2 pools, got {image_size}."
            )
        blocks, channels = [], in_channels
        for width in widths:
            blocks.append(ResidualBlock(channels, width, track_running_stats))
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = pool
        self.embedding_size = widths[-1] * (1 if pool == "avg" else side * side)
        self.head = nn.Linear(self.embedding_size, ways) if ways is not None else None
        self.input_shape = (in_channels, image_size, image_size)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[n, embedding_size]`` (logits ``[n, ways]``) of images ``[n, C, H, W]``."""
        check_image_batch("ResNet12", x, self.input_shape)
        features = self.blocks(to_channels_last(x))
        embedding = features.mean(dim=(2, 3)) if self.pool == "avg" else features.flatten(1)
        return embedding if self.head is None else self.head(embedding)
