"""BatchNorm with batch statistics, the 2x2 max-pool and the ReLU after it as one CPU kernel.

Conv-4's blocks after the first normalise their convolution's 64 maps with the batch's
statistics, max-pool them and apply a ReLU. As PyTorch operators that is BatchNorm's two passes
and a written normalised map, the pool's pass, and in the backward pass the pool's gradient
written at full resolution (three quarters zeros), then read by BatchNorm's backward. The
kernels in ``_batchnorm_pool_kernels.cpp`` compute the statistics in one pass and normalise only
inside the pool (each output is the largest of its window's four normalised values, which also
gives the ReLU and the one-byte argmax); backward, the BatchNorm gradient (Ioffe & Szegedy 2015)

    ∂L/∂β = Σ g,    ∂L/∂γ = Σ g x̂,    ∂L/∂y = γ σ⁻¹ (g − ∂L/∂β / M − x̂ ∂L/∂γ / M)

takes its two sums from the pooled gradient and ``y`` at each argmax (``g`` is zero elsewhere)
and writes ``∂L/∂y`` in one pass.

The kernel backward is first-order. A backward that itself builds a graph (``create_graph``:
MAML's inner loop differentiating through it) recomputes the block with PyTorch's operators from
the saved input and differentiates those instead, so derivatives of every order stay exact; in
MAML that happens only on support sets, and only in loop mode (vmapped support sets run the
operators anyway).

Runs on CPU tensors of float32 or float64 outside ``torch.func`` transforms, with channels a
multiple of 8 and floor pooling; otherwise, and when the kernels cannot be built or are switched
off (:mod:`fastadapt.nn._kernel_build`), callers use the operators. Ties go to the window's
first maximum and NaN propagates, as in ``torch.max_pool2d`` and ``torch.relu``; the results
equal the operators' up to float rounding (tested to float64 precision, first and second
derivatives included).
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch.autograd.function import FunctionCtx

from fastadapt.nn._kernel_build import (
    CHANNEL_MULTIPLE,
    build_kernels,
    kernels_switched_on,
    plain_cpu_tensors,
)


def fused_batchnorm_pool_applies(y: torch.Tensor, gamma: torch.Tensor | None) -> bool:
    """Whether :func:`batchnorm_pool_relu` can run on ``y`` ``[N, C, H, W]`` (module doc);
    builds the kernels on the first call that needs them."""
    params = () if gamma is None else (gamma,)
    if not kernels_switched_on() or not plain_cpu_tensors(y, *params):
        return False
    fits = y.dim() == 4 and y.shape[1] % CHANNEL_MULTIPLE == 0 and min(y.shape[2:]) >= 2
    same_dtype = gamma is None or gamma.dtype == y.dtype
    return fits and same_dtype and _kernels() is not None


def batchnorm_pool_relu(
    y: torch.Tensor, gamma: torch.Tensor | None, beta: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """``relu(max_pool2d(batch_norm(y, None, None, gamma, beta, training=True, eps=eps), 2))``
    for ``y`` ``[N, C, H, W]`` (fastest channels-last): ``[N, C, H//2, W//2]``, channels-last.
    ``gamma`` and ``beta`` ``None`` mean 1 and 0. Check :func:`fused_batchnorm_pool_applies`
    first."""
    channels = y.shape[1]
    if gamma is None:
        gamma = torch.ones(channels, dtype=y.dtype)
    if beta is None:
        beta = torch.zeros(channels, dtype=y.dtype)
    pooled = _BatchNormPoolReLU.apply(y, gamma, beta, eps)  # [N, Ho, Wo, C]
    return pooled.permute(0, 3, 1, 2)


def _reference(
    y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
) -> torch.Tensor:
    """The same block as PyTorch operators, channels last ``[N, Ho, Wo, C]``."""
    normalised = F.batch_norm(y, None, None, gamma, beta, training=True, eps=eps)
    return F.max_pool2d(normalised, 2).relu().permute(0, 2, 3, 1)


class _BatchNormPoolReLU(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: FunctionCtx, y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float
    ) -> torch.Tensor:
        channels_last = y.permute(0, 2, 3, 1)
        pooled, argmax, mean, invstd = _kernels().batchnorm_pool_forward(
            channels_last, gamma, beta, eps
        )
        ctx.save_for_backward(y, gamma, beta, argmax, mean, invstd)
        ctx.eps = eps
        return pooled

    @staticmethod
    def backward(
        ctx: FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        y, gamma, beta, argmax, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: differentiate the operators instead
            inputs = [
                t if t.requires_grad else t.detach().requires_grad_() for t in (y, gamma, beta)
            ]
            out = _reference(*inputs, ctx.eps)
            grads = torch.autograd.grad(out, inputs, grad, create_graph=True)
            return (*grads, None)
        grad_y, grad_gamma, grad_beta = _kernels().batchnorm_pool_backward(
            grad, y.permute(0, 2, 3, 1), argmax, gamma, mean, invstd
        )
        return grad_y.permute(0, 3, 1, 2), grad_gamma, grad_beta, None


def _kernels() -> ModuleType | None:
    """The compiled kernels (``None`` where they cannot be built)."""
    return build_kernels("_batchnorm_pool_kernels.cpp", "BatchNorm + max-pool")
