"""Mixed-precision training: the backbone in bfloat16, everything after it in float32.

``train.precision = "bfloat16"`` runs each training step's forward pass under
``torch.autocast`` (:func:`training_autocast`): matrix products and convolutions, which are
nearly all of a backbone's work, take bfloat16 inputs and accumulate in float32, while the
parameters, their gradients and the optimiser state stay float32 (Micikevicius et al. 2018,
"Mixed Precision Training", §3.1: a float32 master copy of the weights). bfloat16 has
float32's exponent range, so no loss scaling is needed. On CPUs with AMX or AVX-512 BF16
units (oneDNN) and on GPUs with bfloat16 tensor cores, the convolutions run several times
faster; elsewhere they may run slower than in float32.

What reads the backbone's output runs in float32: the class means, distances, attention,
LSTMs and amortisation networks of the learners' heads, and the losses and metrics. Those
functions are wrapped in :func:`float32_region`,
which upcasts their bfloat16 and float16 tensor arguments and switches autocast off inside
them, so the learners are safe under any ``torch.autocast`` a user opens around them.
Validation and evaluation run in float32.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import torch

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
"""``train.precision`` values and the autocast dtype each uses (``None``: no autocast)."""

_REDUCED = (torch.bfloat16, torch.float16)

F = TypeVar("F", bound=Callable[..., Any])


def training_autocast(
    device: torch.device, precision: str
) -> contextlib.AbstractContextManager[Any]:
    """The context a training step's forward pass runs in for ``precision`` (a key of
    :data:`PRECISIONS`): ``torch.autocast`` to bfloat16 on ``device``, or nothing."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision must be one of {list(PRECISIONS)}, got {precision!r}; bfloat16 runs "
            "the backbone in mixed precision (fast on CPUs with AMX or AVX-512 BF16 and on "
            "recent GPUs), float32 runs everything in full precision."
        )
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def warn_if_unsupported(device: torch.device, precision: str) -> None:
    """Warn when ``precision`` has no native support on ``device``, where it would train
    slower than float32: bfloat16 on a CPU without AVX-512 BF16 or AMX units (as oneDNN
    reports it) or on a GPU without bfloat16 arithmetic."""
    if PRECISIONS.get(precision) is not torch.bfloat16:
        return
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = device.type != "cpu" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    if not supported:
        warnings.warn(
            f"train.precision=bfloat16 has no native support on this {device.type.upper()}: "
            "training will likely be slower than in float32; set train.precision=float32.",
            stacklevel=2,
        )


def float32_region(function: F) -> F:
    """Run ``function`` in float32 when autocast is on for its tensors' device: its bfloat16
    and float16 tensor arguments are upcast and autocast is off inside it. Without autocast
    it is called as it is."""

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        device = next(
            (a.device.type for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)),
            None,
        )
        if device is None or not torch.is_autocast_enabled(device):
            return function(*args, **kwargs)
        with torch.autocast(device_type=device, enabled=False):
            return function(
                *(_upcast(a) for a in args), **{k: _upcast(v) for k, v in kwargs.items()}
            )

    return run  # type: ignore[return-value]


def _upcast(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _REDUCED:
        return value.float()
    return value
