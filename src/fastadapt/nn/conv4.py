"""The Conv-4 backbone of few-shot learning (Vinyals et al. 2016; Finn et al. 2017, §5.2).

Four blocks of ``3x3 convolution (64 filters) → BatchNorm → ReLU → 2x2 max-pool``; on 28x28
Omniglot images the output is a 64-dimensional embedding. BatchNorm uses batch statistics
(``track_running_stats=False``), as MAML does at training and test time.
"""

from __future__ import annotations

from torch import nn


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels, track_running_stats=False),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class Conv4(nn.Sequential):
    """Conv-4 embedding, with a linear classification head when ``ways`` is given.

    Args:
        in_channels: 1 for Omniglot, 3 for RGB images.
        hidden: filters per block (64 in the papers).
        ways: number of output classes; ``None`` returns the flattened embedding.
        image_size: input height and width, which sets the embedding size (28x28 inputs:
            28→14→7→3→1, so ``hidden`` features; 84x84: 5x5x``hidden``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        ways: int | None = None,
        image_size: int = 28,
    ) -> None:
        side = image_size
        for _ in range(4):
            side //= 2
        if side < 1:
            raise ValueError(
                f"image_size must be at least 16 for four 2x2 pools, got {image_size}."
            )
        embedding_size = hidden * side * side
        layers: list[nn.Module] = [
            _block(in_channels, hidden),
            _block(hidden, hidden),
            _block(hidden, hidden),
            _block(hidden, hidden),
            nn.Flatten(),
        ]
        if ways is not None:
            layers.append(nn.Linear(embedding_size, ways))
        super().__init__(*layers)
        self.embedding_size = embedding_size
