"""The speed benchmarks' peak-memory figure: each worker subprocess reports its own peak, not
the one its launcher had reached before starting it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
WORKER = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from _memory import peak_rss_mib; print(peak_rss_mib())"
)


def _own_peak_mib() -> float:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _memory import peak_rss_mib

        return peak_rss_mib()
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_a_worker_does_not_inherit_its_launchers_peak() -> None:
    ballast = bytearray(400 * 2**20)
    ballast[::4096] = b"\x01" * len(ballast[::4096])  # touch every page: now resident
    launcher_peak = _own_peak_mib()
    worker_peak = float(
        subprocess.run(
            [sys.executable, "-c", WORKER, str(BENCHMARKS)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    del ballast
    assert launcher_peak > 400
    assert 0 < worker_peak < launcher_peak - 300
