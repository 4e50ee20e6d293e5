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
  folded into the convolution from the input's patch statistics
  (:mod:`fastadapt.nn.folded_conv_block`), which removes the BatchNorm passes over the largest
  feature maps, forward and backward;
- in the other blocks, BatchNorm with batch statistics, the max-pool and the ReLU run as one CPU
  kernel (:mod:`fastadapt.nn.fused_batchnorm_pool`) that never writes the normalised maps.

For a batch of tasks with per-task weights (MAML's inner loop in ``"vmap"`` mode,
:mod:`fastadapt.nn.batching`), ``forward_over_tasks`` runs the folded first block of every task
as one batched matrix product instead of a grouped convolution under ``torch.vmap``.

Parameter names and shapes are those of the plain ``conv → BatchNorm → ReLU → pool`` stack, so
state dicts are interchangeable with it.

Options for the variants of other papers: ``downsample="stride"`` (stride-2 convolutions
instead of max-pools, MAML's Omniglot network: 28x28 → 14 → 7 → 4 → 2), ``blocks`` (VERSA's
mini-ImageNet network has five), ``ceil_mode`` (pooling that keeps a last odd row and column,
TensorFlow's ``"SAME"`` pooling: 28x28 → 14 → 7 → 4 → 2, as in VERSA's Omniglot network) and
``dropout`` (after each block, active in training mode only).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from fastadapt.nn.batching import sequential_over_tasks, task_parameter, vmap_over_tasks
from fastadapt.nn.folded_conv_block import (
    MAX_PATCH_SIZE,
    folded_conv_block,
    folded_conv_block_over_tasks,
)
from fastadapt.nn.fused_batchnorm_pool import batchnorm_pool_relu, fused_batchnorm_pool_applies
from fastadapt.nn.fused_dropout import Dropout
from fastadapt.nn.image_input import check_image_batch, to_channels_last

DOWNSAMPLING = ("pool", "stride")


class ConvBlock(nn.Sequential):
    """``3x3 convolution → BatchNorm (batch statistics) → 2x2 max-pool → ReLU``, or with
    ``downsample="stride"`` a stride-2 convolution and no pool (MAML's Omniglot network).

    Children ``0`` (``nn.Conv2d``) and ``1`` (``nn.BatchNorm2d``) hold the parameters, as in
    the conventional ``conv → BatchNorm → ReLU → pool`` order, whose output this equals.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        downsample: str = "pool",
        *,
        ceil_mode: bool = False,
        dropout: float = 0.0,
    ) -> None:
        if downsample not in DOWNSAMPLING:
            raise ValueError(f"downsample must be one of {DOWNSAMPLING}, got {downsample!r}.")
        pools = downsample == "pool"
        stride = 1 if pools else 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels, track_running_stats=False),
            nn.MaxPool2d(2, ceil_mode=ceil_mode) if pools else nn.Identity(),
            nn.ReLU(),
        ]
        if dropout > 0:
            layers.append(Dropout(dropout))
        super().__init__(*layers)
        self.folds_batchnorm = in_channels * 3 * 3 <= MAX_PATCH_SIZE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, pool, relu, *dropout = self
        if self._folds(x):
            out = folded_conv_block(
                x, conv.weight, conv.bias, norm.weight, norm.bias, eps=norm.eps, padding=1,
                stride=conv.stride[0], pool=isinstance(pool, nn.MaxPool2d),
            )  # fmt: skip
        else:
            y = conv(x)
            if self._fuses_norm_pool(y):
                out = batchnorm_pool_relu(y, norm.weight, norm.bias, norm.eps)
            else:
                out = relu(pool(norm(y)))
        for layer in dropout:
            out = layer(out)
        return out

    def forward_over_tasks(
        self, task_params: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """The block on each task's images ``x`` ``[B, n, C, H, W]`` with that task's
        parameters (``task_params``: ``[B, ...]`` tensors under this block's parameter names;
        those missing are the block's own, shared), for
        :func:`~fastadapt.nn.batching.call_over_tasks`. The folded form runs as batched matrix
        products (:func:`~fastadapt.nn.folded_conv_block.folded_conv_block_over_tasks`), the
        plain one under ``torch.vmap``."""
        if not self._folds(x):
            return vmap_over_tasks(self, task_params, x)
        conv, norm, pool, _, *dropout = self
        tasks = x.shape[0]
        out = folded_conv_block_over_tasks(
            x,
            task_parameter(task_params, "0.weight", conv.weight, tasks),
            task_parameter(task_params, "0.bias", conv.bias, tasks),
            task_parameter(task_params, "1.weight", norm.weight, tasks),
            task_parameter(task_params, "1.bias", norm.bias, tasks),
            eps=norm.eps,
            padding=1,
            stride=conv.stride[0],
            pool=isinstance(pool, nn.MaxPool2d),
        )
        for layer in dropout:
            out = layer(out)
        return out

    def _fuses_norm_pool(self, y: torch.Tensor) -> bool:
        """Whether BatchNorm, max-pool and ReLU run as one kernel on the convolution's output
        ``y`` (:mod:`fastadapt.nn.fused_batchnorm_pool`: batch statistics, floor pooling)."""
        _, norm, pool, *_ = self
        odd = y.shape[-1] % 2 == 1 or y.shape[-2] % 2 == 1
        floor_pools = isinstance(pool, nn.MaxPool2d) and not (pool.ceil_mode and odd)
        batch_statistics = norm.running_mean is None
        return floor_pools and batch_statistics and fused_batchnorm_pool_applies(y, norm.weight)

    def _folds(self, x: torch.Tensor) -> bool:
        """Whether the block runs in the folded form on inputs shaped like ``x``."""
        _, norm, pool, *_ = self
        # The folded form pools with floor; with ceil_mode it only fits even-sized inputs.
        odd = x.shape[-1] % 2 == 1 or x.shape[-2] % 2 == 1
        ceil_pools = isinstance(pool, nn.MaxPool2d) and pool.ceil_mode
        return self.folds_batchnorm and norm.running_mean is None and not (ceil_pools and odd)


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
        blocks: number of conv blocks (4; VERSA's mini-ImageNet network has 5: 84x84 → 2x2).
        ceil_mode: pool with ceil instead of floor, keeping a last odd row and column
            (28x28: 28→14→7→4→2, so 4·``hidden`` features, VERSA's Omniglot network).
        dropout: dropout probability after each block (0: none).
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        ways: int | None = None,
        image_size: int = 28,
        downsample: str = "pool",
        *,
        blocks: int = 4,
        ceil_mode: bool = False,
        dropout: float = 0.0,
    ) -> None:
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
            raise ValueError(f"blocks must be a positive integer, got {blocks!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}.")
        side = image_size
        for _ in range(blocks):
            rounds_up = ceil_mode or downsample == "stride"
            side = -(-side // 2) if rounds_up else side // 2
        if side < 1:
            raise ValueError(
                f"image_size must be at least {2**blocks} for {blocks} 2x2 pools, got {image_size}."
            )
        embedding_size = hidden * side * side
        layers: list[nn.Module] = [
            ConvBlock(
                in_channels if block == 0 else hidden,
                hidden,
                downsample,
                ceil_mode=ceil_mode,
                dropout=dropout,
            )
            for block in range(blocks)
        ]
        layers.append(nn.Flatten())
        if ways is not None:
            layers.append(nn.Linear(embedding_size, ways))
        super().__init__(*layers)
        self.embedding_size = embedding_size
        self.input_shape = (in_channels, image_size, image_size)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[n, embedding_size]`` (logits ``[n, ways]``) of images ``[n, C, H, W]``."""
        check_image_batch("Conv4", x, self.input_shape)
        return super().forward(to_channels_last(x))

    def forward_over_tasks(
        self, task_params: Mapping[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        """Embeddings (logits) ``[B, n, ...]`` of each task's images ``x`` ``[B, n, C, H, W]``
        with that task's parameters, for :func:`~fastadapt.nn.batching.call_over_tasks`
        (``task_params`` as in :meth:`ConvBlock.forward_over_tasks`)."""
        if x.dim() != 5:
            channels, height, width = self.input_shape
            raise ValueError(
                f"Conv4 over tasks expects images [tasks, n, {channels}, {height}, {width}], "
                f"got a tensor of shape {tuple(x.shape)}."
            )
        check_image_batch("Conv4", x[0], self.input_shape)
        return sequential_over_tasks(self, task_params, x)
