"""A 3x3 convolution, the 2x2 max-pool and the ReLU after it as one CPU kernel, forward and
backward.

Conv-4's first block (:mod:`fastadapt.nn.folded_conv_block`) convolves a one- or three-channel
image into 64 full-resolution maps only to max-pool them: in PyTorch operators those maps are
written by the convolution, read by the pool, and in the backward pass written again by the
pool's gradient (mostly zeros) and read by the convolution's weight gradient: four passes over
15 MB for 75 Omniglot images, which made that block, 0.07 GFLOP per task, cost as much time as
the second block's 1 GFLOP. The kernels in ``_conv_pool_kernels.cpp`` never form those maps:

- forward: at each pooled position, the convolution at the window's four positions from the
  input's 4x4 neighbourhood, their maximum and which position held it (one byte), then the
  ReLU, whose zeroed outputs that byte marks as passing no gradient (so the pooled maps need no
  separate ReLU pass and no ReLU backward either);
- backward: the weight and bias gradients summed straight from the pooled gradient, the input
  patches and those positions (:math:`\\partial L/\\partial w_o = \\sum g_o\\, p_{a_o}` over
  the outputs the ReLU passes, the convolution's gradient restricted to the entries the max-pool
  and the ReLU route gradient to);
- double backward (second-order MAML): the weight gradient is linear in the pooled gradient,
  its adjoint is the convolution evaluated at those positions, and that one's adjoint is the
  weight gradient again, so derivatives of every order reuse the same two kernels.

The input's own gradient is not computed (images need none); an input that requires grad takes
the PyTorch operators. So do CUDA tensors, dtypes other than float32 and float64, tensors
inside ``torch.func`` transforms, and any run where the kernels cannot be built or are switched
off (:mod:`fastadapt.nn._kernel_build`).

Ties go to the window's first maximum and NaN propagates, as in ``torch.max_pool2d`` and
``torch.relu``, whose gradient at 0 is 0; the results equal the operators' up to float
rounding (tested against them to float64 precision, first and second derivatives included).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch.autograd.function import FunctionCtx

from fastadapt.nn._kernel_build import (
    CHANNEL_MULTIPLE,
    build_kernels,
    kernels_switched_on,
    plain_cpu_tensors,
)

_INACTIVE = 4
"""The argmax byte of an output the ReLU zeroed (``kInactive`` in the kernels)."""


def fused_conv_pool_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`conv_pool_relu` can run on input ``x`` and weight ``weight`` (module doc);
    builds the kernels on the first call that needs them."""
    if not kernels_switched_on() or x.requires_grad or not plain_cpu_tensors(x, weight):
        return False
    fits = weight.shape[-2] % CHANNEL_MULTIPLE == 0 and weight.dtype == x.dtype
    return fits and _kernels() is not None


def conv_pool_relu(padded: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(padded, weight, shift), 2))`` for a 3x3 convolution on an
    already padded input ``[N, C, H, W]``: ``[N, O, (H-2)//2, (W-2)//2]``, channels-last.

    ``weight`` ``[O, C·9]`` and ``shift`` ``[O]`` serve every image; ``[G, O, C·9]`` and
    ``[G, O]`` give each of ``G`` equal consecutive groups of images (tasks) its own.
    Differentiable (to any order) with respect to ``weight`` and ``shift``, not ``padded``
    (check :func:`fused_conv_pool_applies` first).
    """
    if weight.dim() == 2:
        weight, shift = weight.unsqueeze(0), shift.unsqueeze(0)
    pooled = _ConvPool.apply(padded, weight, shift)  # [N, Ho, Wo, O]
    return pooled.permute(0, 3, 1, 2)


class _ConvPool(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, padded: torch.Tensor, weight: torch.Tensor, shift: torch.Tensor
    ) -> torch.Tensor:
        pooled, argmax = _kernels().conv_pool_forward(padded, weight, shift)
        ctx.save_for_backward(padded, argmax)
        ctx.groups = weight.shape[0]
        return pooled

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[None, torch.Tensor, torch.Tensor]:
        padded, argmax = ctx.saved_tensors
        grad_weight, grad_shift = _WeightGrad.apply(grad, padded, argmax, ctx.groups)
        return None, grad_weight, grad_shift


class _WeightGrad(torch.autograd.Function):
    """``(∂L/∂w, ∂L/∂shift)`` per group from the pooled gradient; linear in it."""

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        grad: torch.Tensor,
        padded: torch.Tensor,
        argmax: torch.Tensor,
        groups: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(padded, argmax)
        return tuple(_kernels().conv_pool_weight_grad(grad, padded, argmax, groups))

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad_weight: torch.Tensor | None, grad_shift: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, None, None, None]:
        padded, argmax = ctx.saved_tensors
        grad = None
        if grad_weight is not None:
            grad = _ConvAtArgmax.apply(padded, grad_weight, argmax)
        if grad_shift is not None:
            groups, channels = grad_shift.shape
            per_group = grad_shift.view(groups, 1, 1, 1, channels)
            images = argmax.shape[0] // groups
            passed = (argmax < _INACTIVE).view(groups, images, *argmax.shape[1:])
            shifted = (per_group * passed).view(argmax.shape)
            grad = shifted if grad is None else grad + shifted
        return grad, None, None, None


class _ConvAtArgmax(torch.autograd.Function):
    """The convolution (no shift) at each output's argmax position, 0 where the ReLU zeroed the
    output; linear in the weight, the adjoint of :class:`_WeightGrad`."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, padded: torch.Tensor, weight: torch.Tensor, argmax: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(padded, argmax)
        ctx.groups = weight.shape[0]
        return _kernels().conv_at_argmax(padded, weight, argmax)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        padded, argmax = ctx.saved_tensors
        grad_weight, _ = _WeightGrad.apply(grad, padded, argmax, ctx.groups)
        return None, grad_weight, None


def _kernels() -> ModuleType | None:
    """The compiled kernels (``None`` where they cannot be built)."""
    return build_kernels("_conv_pool_kernels.cpp", "convolution + max-pool")
