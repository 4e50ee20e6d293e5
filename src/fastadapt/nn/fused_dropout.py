"""Dropout on the CPU with a counter-based mask: one pass, no stored mask.

Inverted dropout (Srivastava et al. 2014, "Dropout: A Simple Way to Prevent Neural Networks
from Overfitting", §10): in training each value is kept with probability 1 - p and scaled by
1 / (1 - p), else zeroed. PyTorch's CPU dropout draws its mask with ``bernoulli_``, a serial
generator that dominated VERSA's training step (20 to 30 ms for the 2.5 million values of one
Omniglot query set after Conv-4's first block, on two threads: a third of the step). Here
(``_dropout_kernels.cpp``) value i is kept when the i-th 32-bit word of a SplitMix64 sequence
(Steele, Lea & Flood 2014) seeded for this call is at least about p · 2³², and the mask and
the product are one multi-threaded pass. Because each word is a function of (seed, i) only,

- the backward pass multiplies the gradient by the same regenerated mask, so nothing but the
  seed is saved (the mask of the 2.5 million values above would be 2.5 MB);
- the gradient of that backward pass is the same operation again, so derivatives of every
  order are exact;
- the output does not depend on the number of threads.

The seed is drawn from PyTorch's global CPU generator, so ``torch.manual_seed`` fixes the masks
and a checkpoint that saves that generator's state resumes bit-exactly. The masks differ from
those of ``torch.nn.functional.dropout`` for the same seed (same distribution, other draws).

Runs on CPU tensors of float32, float64 and bfloat16 outside ``torch.func`` transforms;
elsewhere, for p = 1, and where the kernels cannot be built or are switched off
(:mod:`fastadapt.nn._kernel_build`), :func:`dropout` calls ``torch.nn.functional.dropout``.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx

from fastadapt.nn._kernel_build import build_kernels, kernels_switched_on, plain_cpu_tensors

DROPOUT_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
"""The dtypes the dropout kernel is compiled for."""

_WORDS = 2**32
"""The number of values of one 32-bit word of the generator."""


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` (same arguments, no state) that runs :func:`dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``x`` with drop probability ``p`` when ``training`` (else ``x``
    itself), with the counter-based kernel where it applies (see the module's docstring)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"the dropout probability p must be in [0, 1], got {p!r}.")
    if not training or p == 0.0:
        return x
    if p == 1.0 or not _kernel_applies(x):
        return F.dropout(x, p, training)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    threshold = min(round(p * _WORDS), _WORDS - 1)
    return _CounterDropout.apply(x, seed, threshold, 1.0 / (1.0 - p))


def _kernel_applies(x: torch.Tensor) -> bool:
    """Whether the kernel can take ``x`` (builds it on the first call that needs it)."""
    return (
        kernels_switched_on()
        and plain_cpu_tensors(x, dtypes=DROPOUT_DTYPES)
        and _kernels() is not None
    )


class _CounterDropout(torch.autograd.Function):
    """``x`` times the regenerated mask of ``seed``, scaled; its own derivative (linear)."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, x: torch.Tensor, seed: int, threshold: int, scale: float
    ) -> torch.Tensor:
        dense = x if _dense(x) else x.contiguous()
        ctx.layout = (dense.shape, dense.stride())
        ctx.mask = (seed, threshold, scale)
        return _kernels().dropout_mask_scale(dense, seed, threshold, scale)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        shape, stride = ctx.layout
        if grad.stride() != stride:  # word i must meet the value it masked in forward
            grad = torch.empty_strided(shape, stride, dtype=grad.dtype).copy_(grad)
        return _CounterDropout.apply(grad, *ctx.mask), None, None, None


def _dense(x: torch.Tensor) -> bool:
    """Whether ``x`` is contiguous, or channels-last contiguous, so the kernel can read its
    storage as a flat array."""
    return x.is_contiguous() or (
        x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    )


def _kernels() -> ModuleType | None:
    """The compiled kernel (``None`` where it cannot be built)."""
    return build_kernels("_dropout_kernels.cpp", "dropout", "other masks, slower")
