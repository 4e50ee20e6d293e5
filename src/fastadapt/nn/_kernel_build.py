"""Building fastadapt's fused CPU kernels: once per machine, with a loud fallback.

Each ``_*_kernels.cpp`` beside this file (with the vector helpers of ``_kernel_vectors.h``) is
compiled on first use with the system's C++ compiler (``torch.utils.cpp_extension``, about a
minute, cached under ``~/.cache/torch_extensions``), for this CPU (``-march=native``) and with
OpenMP, which the kernels need to run on PyTorch's intra-op threads (without it
``at::parallel_for`` runs serially). Where the build fails, a warning says why and the callers
run PyTorch operators instead; setting the environment variable ``FASTADAPT_FUSED_KERNELS=0``
turns every fused kernel off (to compare, or to rule them out).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

SWITCH_VARIABLE = "FASTADAPT_FUSED_KERNELS"
"""Environment variable: ``0`` turns the fused kernels off."""

KERNEL_DTYPES = (torch.float32, torch.float64)
"""The dtypes the convolution and BatchNorm kernels are compiled for."""

CHANNEL_MULTIPLE = 8
"""The kernels take channels in blocks of one 32-byte vector (8 float32), so they need channel
counts that are multiples of 8 (``_kernel_vectors.h``)."""

_HEADER = Path(__file__).with_name("_kernel_vectors.h")
_log = logging.getLogger(__name__)


def kernels_switched_on() -> bool:
    """Whether the fused kernels are on (``FASTADAPT_FUSED_KERNELS`` is not ``0``)."""
    return os.environ.get(SWITCH_VARIABLE, "1") != "0"


def plain_cpu_tensors(
    *tensors: torch.Tensor, dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES
) -> bool:
    """Whether every tensor is a CPU tensor of one of ``dtypes`` (a kernel's), outside
    ``torch.func`` transforms (whose wrapped tensors the kernels cannot read)."""
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return all(t.device.type == "cpu" and t.dtype in dtypes and not wrapped(t) for t in tensors)


@functools.cache
def build_kernels(
    source_name: str, purpose: str, fallback: str = "same results, slower"
) -> ModuleType | None:
    """The compiled extension of ``source_name`` (a file beside this one), built on first use
    for this machine's CPU; ``None``, with a warning naming ``purpose`` (what falls back to
    PyTorch operators) and ``fallback`` (how those differ), where it cannot be built."""
    from torch.utils import cpp_extension

    source = Path(__file__).with_name(source_name)
    code = source.read_bytes() + _HEADER.read_bytes()
    digest = hashlib.sha256(code + _cpu_flags().encode()).hexdigest()[:16]
    _log.info("building fastadapt's %s kernels (once per machine)", purpose)
    try:
        return cpp_extension.load(
            name=f"fastadapt_{source.stem.strip('_')}_{digest}",
            sources=[str(source)],
            extra_cflags=["-O3", "-march=native", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
        )
    except Exception as error:  # no compiler, no ninja, a failed build: fall back, loudly
        warnings.warn(
            f"fastadapt could not build its fused {purpose} CPU kernels ({error}); "
            f"PyTorch operators run instead ({fallback}). Install a C++ compiler "
            f"and ninja to get them, or set {SWITCH_VARIABLE}=0 to silence this.",
            stacklevel=4,
        )
        return None


def _cpu_flags() -> str:
    """This CPU's instruction-set flags (Linux), so that a shared cache never serves a build
    for ``-march=native`` of another CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line for line in lines if line.startswith("flags")), "")
