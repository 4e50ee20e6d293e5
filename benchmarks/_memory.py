"""A benchmark worker's own peak resident memory.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is the wrong number for a worker subprocess:
Linux carries the high-water mark of the process image an ``execve`` replaces over to the new
program, and Python's ``subprocess`` starts children with ``vfork`` + ``execve``, whose replaced
image is the *parent's*. Every worker then reports at least its launcher's peak (a benchmark
that counted FLOPs or probed the matrix-product rate before starting its workers had all rows
show the same 2.3 GB). ``VmHWM`` in ``/proc/self/status`` belongs to the current address space
alone, which ``execve`` creates afresh.
"""

from __future__ import annotations

import platform
import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")


def peak_rss_mib() -> float:
    """This process's peak resident memory since it started its program, in MiB: ``VmHWM``
    where ``/proc`` has it (Linux), else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 1024
