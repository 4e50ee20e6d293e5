"""A narrow-input convolution block with BatchNorm folded in from the input's patch statistics.

Computes ``relu(max_pool2d(batch_norm(conv2d(x, w, b, padding), training=True), 2))``, the
first block of Conv-4 on grayscale or RGB images, without normalising the full-resolution
feature maps in a separate pass, forward or backward.

**BatchNorm from patch moments.** A convolution is linear in its input patches: with ``u`` the
unfolded patch at one position (``K = C_in·k_h·k_w`` pixels), output channel ``o`` is
``y_o = w_o·u + b_o``. Over the batch and all positions (``M`` patches) its mean and biased
variance, the statistics BatchNorm normalises with in training mode (Ioffe & Szegedy 2015,
Algorithm 1), are

    μ_o  = w_o·ū + b_o,        σ²_o = w_oᵀ Σ w_o,

with ``ū`` the mean patch and ``Σ`` the ``K x K`` patch covariance. BatchNorm of the
convolution is therefore itself a convolution, with folded weights and bias

    BN(conv(x))_o = γ_o (y_o − μ_o) / √(σ²_o + ε) + β_o = (s_o w_o)·u + β_o + s_o (b_o − μ_o),
    s_o = γ_o / √(σ²_o + ε),

and autograd differentiates the folded weights through ``Σ`` and ``ū`` (``K x K`` and ``K``)
instead of running BatchNorm's backward over ``C_out`` full-resolution maps. The statistics
cost ``M·K²``: cheap for narrow inputs (``K = 9`` for a grayscale 3x3 convolution, ``27`` for
RGB), dearer than BatchNorm for wide ones, hence :data:`MAX_PATCH_SIZE`.

The folded convolution is written channels-last (oneDNN's fastest layout for it and for the
max-pool that follows); the ReLU comes after the pool (``relu ∘ max = max ∘ relu``), on a
quarter of the values.

The output equals the plain block up to rounding (tested to float64 precision, first- and
second-order gradients included) and is channels-last.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastadapt.nn.fused_conv_pool import conv_pool_relu, fused_conv_pool_applies

MAX_PATCH_SIZE = 27
"""The largest patch size ``C_in·k_h·k_w`` for which the folded form is used (3x3 RGB)."""


def folded_conv_block(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    *,
    eps: float,
    padding: int,
    stride: int = 1,
    pool: bool = True,
) -> torch.Tensor:
    """``relu(max_pool2d(batch_norm(conv2d(x, weight, bias, stride, padding)), 2))`` (module
    doc); without the max-pool when ``pool`` is false (strided Conv-4).

    Args:
        x: input ``[N, C_in, H, W]``.
        weight, bias: the convolution's (no dilation, no groups). ``bias`` shifts
            ``y`` and ``μ`` alike, so it cancels; it stays in the graph (its gradient is zero
            up to rounding, as through BatchNorm), so it counts as used.
        bn_weight, bn_bias: BatchNorm's affine ``γ`` and ``β`` (``None``: 1 and 0).
        eps: BatchNorm's ε.
        padding: the convolution's zero padding (patches include the padded zeros, as the
            convolution's do).
        stride: the convolution's stride (the statistics are over its output positions).
        pool: whether a 2x2 max-pool follows the normalisation.

    Returns ``[N, C_out, H' // 2, W' // 2]`` with the pool, ``[N, C_out, H', W']`` without
    (``H'``, ``W'``: the convolution's output size), channels-last.
    """
    out_channels, kernel = weight.shape[0], weight.shape[2:]
    patches = _patch_matrix(x, kernel, padding, stride)  # [K, N·H'·W']
    matrix, shift = _fold_batchnorm(
        patches, weight.reshape(out_channels, -1), bias, bn_weight, bn_bias, eps
    )
    if _fuses(x, matrix, kernel, stride, pool):
        return conv_pool_relu(F.pad(x, (padding,) * 4), matrix, shift)
    # Written channels-last: with a one-channel input both layouts look alike to the
    # convolution, and the weight's layout then picks the output's (inside torch.vmap,
    # whose batched tensors have no layout, as it is).
    folded = matrix.view_as(weight)
    if not torch._C._functorch.is_functorch_wrapped_tensor(folded):
        folded = torch.empty_like(weight, memory_format=torch.channels_last).copy_(folded)
    normalised = F.conv2d(x, folded, shift, stride=stride, padding=padding)
    return (F.max_pool2d(normalised, 2) if pool else normalised).relu()


def folded_conv_block_over_tasks(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    *,
    eps: float,
    padding: int,
    stride: int = 1,
    pool: bool = True,
) -> torch.Tensor:
    """:func:`folded_conv_block` for a batch of tasks, each with its own parameters and its own
    BatchNorm statistics: ``x`` ``[B, N, C_in, H, W]``, ``weight`` ``[B, C_out, C_in, k, k]``,
    the others ``[B, C_out]``; returns ``[B, N, C_out, H'', W'']``, each task's block output.

    The folded convolution of every task is one batched matrix product over its patches
    (``torch.baddbmm``), where ``torch.vmap`` of :func:`folded_conv_block` runs a grouped
    convolution with one input channel per group, a slow case of oneDNN's. Measured on the
    2-core CPU, the support pass of a second-order MAML meta-batch (Conv-4, 32 tasks of 5
    Omniglot images: forward and inner gradient) took 109 ms this way against 136 ms under
    ``torch.vmap``; its double backward took the same time either way.
    """
    tasks, images = x.shape[:2]
    out_channels, kernel = weight.shape[1], weight.shape[3:]
    per_task = _patch_matrix(x, kernel, padding, stride)  # [B, K, N·H'·W']
    matrix, shift = _fold_batchnorm(
        per_task, weight.reshape(tasks, out_channels, -1), bias, bn_weight, bn_bias, eps
    )
    if _fuses(x, matrix, kernel, stride, pool):
        padded = F.pad(x.flatten(0, 1), (padding,) * 4)
        out = conv_pool_relu(padded, matrix, shift)
        return out.view(tasks, images, *out.shape[1:])
    height, width = _output_size(x.shape[-2:], kernel, padding, stride)
    # [B, N·H'·W', C_out] is each task's output channels-last, viewed as NCHW.
    normalised = (
        torch.baddbmm(shift.unsqueeze(1), per_task.mT, matrix.mT)
        .view(tasks * images, height, width, out_channels)
        .permute(0, 3, 1, 2)
    )
    out = (F.max_pool2d(normalised, 2) if pool else normalised).relu()
    return out.view(tasks, images, *out.shape[1:])


def _fuses(
    x: torch.Tensor, matrix: torch.Tensor, kernel: torch.Size, stride: int, pool: bool
) -> bool:
    """Whether the convolution, max-pool and ReLU run as one kernel
    (:mod:`fastadapt.nn.fused_conv_pool`: 3x3, stride 1, pooled, and inputs it takes)."""
    return pool and stride == 1 and tuple(kernel) == (3, 3) and fused_conv_pool_applies(x, matrix)


def _output_size(
    size: torch.Size, kernel: torch.Size, padding: int, stride: int
) -> tuple[int, int]:
    """A convolution's output height and width (no dilation)."""
    height, width = (
        (side + 2 * padding - k) // stride + 1 for side, k in zip(size, kernel, strict=True)
    )
    return height, width


def _patch_matrix(x: torch.Tensor, kernel: torch.Size, padding: int, stride: int) -> torch.Tensor:
    """The convolution's input patches as columns: ``x`` ``[..., N, C, H, W]`` →
    ``[..., C·k_h·k_w, N·H'·W']``, rows in the order of ``weight.reshape(C_out, -1)``.

    Built from ``k_h·k_w`` strided views of the zero-padded input, one per kernel offset,
    stacked straight into this layout: on the 75 query images of an Omniglot task, 0.14-0.17 ms
    against 2.5-3.2 ms for ``F.unfold`` followed by the transpose to patches-as-columns (the
    same values; medians over 100 calls on one and two threads of the 2-core CPU, 2026-12-06).
    """
    height, width = _output_size(x.shape[-2:], kernel, padding, stride)
    padded = F.pad(x, (padding, padding, padding, padding))
    rows, columns = stride * (height - 1) + 1, stride * (width - 1) + 1
    offsets = [
        padded[..., i : i + rows : stride, j : j + columns : stride]
        for i in range(kernel[0])
        for j in range(kernel[1])
    ]
    stacked = torch.stack(offsets, dim=-5)  # [..., k_h·k_w, N, C, H', W']
    lead = stacked.dim() - 5
    # [..., C, k_h·k_w, N, H', W']: a view when C = 1.
    by_channel = stacked.movedim(-3, lead)
    return by_channel.flatten(lead, lead + 1).flatten(lead + 1)


def _fold_batchnorm(
    patches: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn_weight: torch.Tensor | None,
    bn_bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Folded weights ``s_o w_o`` ``[..., C_out, K]`` and bias ``β_o + s_o (b_o − μ_o)``
    ``[..., C_out]`` of BatchNorm after the convolution ``weight`` ``[..., C_out, K]``, from
    ``patches`` ``[..., K, M]`` (leading dimensions: tasks, each with its own statistics)."""
    mean = patches.mean(dim=-1, keepdim=True)
    centred = patches - mean
    # The K x K and C_out-sized algebra runs in float64: it is tiny, and it keeps the folded
    # weights as accurate as BatchNorm's own float32 statistics over M values.
    covariance = (centred @ centred.mT).double() / centred.shape[-1]  # Σ
    w = weight.double()
    variance = ((w @ covariance) * w).sum(dim=-1)  # σ²_o = w_oᵀ Σ w_o
    gamma = bn_weight.double() if bn_weight is not None else torch.ones_like(variance)
    scale = gamma / torch.sqrt(variance + eps)  # s_o
    mean_out = (w @ mean.double()).squeeze(-1)  # μ_o = w_o·ū + b_o
    if bias is not None:
        mean_out = mean_out + bias.double()
    shift = -scale * mean_out
    if bias is not None:
        shift = shift + scale * bias.double()
    if bn_bias is not None:
        shift = shift + bn_bias.double()
    return weight * scale.to(weight.dtype).unsqueeze(-1), shift.to(weight.dtype)
