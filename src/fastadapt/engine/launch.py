"""``fastadapt train --nproc N``: start ``torchrun`` on this machine with N processes.

The launcher runs ``python -m torch.distributed.run`` (torchrun's module) as a child process,
each of whose N workers runs ``python -m fastadapt`` with the same arguments, and waits for it.
Without a port the job rendezvouses on a free one (``--standalone``); with one, the port is
checked first so that a port in use is reported clearly instead of by a worker's traceback.
The workers import the same fastadapt as the launcher, wherever it is installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from fastadapt.engine import distributed
from fastadapt.errors import ConfigError, DistributedError


def torchrun_command(nproc: int, arguments: list[str], port: int | None = None) -> list[str]:
    """The command that runs ``fastadapt ARGUMENTS`` in ``nproc`` processes on this machine."""
    if port is None:
        rendezvous = ["--standalone"]
    else:
        rendezvous = ["--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        *rendezvous,
        "-m",
        "fastadapt",
        *arguments,
    ]


def launch(
    nproc: int, arguments: list[str], port: int | None = None, run_dir: Path | None = None
) -> None:
    """Run ``fastadapt ARGUMENTS`` in ``nproc`` processes and wait for them to end; a failure
    names ``run_dir``'s last checkpoint, if the job trains one.

    Raises:
        ConfigError: ``nproc`` is not positive, this process is already one of a job, or
            ``port`` is in use.
        DistributedError: the job failed (a process died or raised an error); torchrun's own
            report above names the ranks.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be a positive number of processes, got {nproc}.")
    if distributed.launched():
        raise ConfigError(
            "--nproc starts torchrun, but this process already is one of a torchrun job; "
            "leave out --nproc when starting fastadapt with torchrun."
        )
    if port is not None:
        check_port_free(port)
    package_parent = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_parent, path) if p)}
    code = subprocess.run(torchrun_command(nproc, arguments, port), env=env, check=False)
    if code.returncode != 0:
        where = "" if run_dir is None else f" ({run_dir / 'checkpoints' / 'last.pt'})"
        raise DistributedError(
            f"the job of {nproc} processes failed (torchrun exited with status "
            f"{code.returncode}; its report and the failing process's message are above). "
            f"The last checkpoint written before the failure{where} is intact: continue the "
            "run with --resume, with any number of processes."
        )


def check_port_free(port: int) -> None:
    """Refuse a rendezvous port that another program holds.

    Raises:
        ConfigError: ``port`` is outside 1..65535 or already in use.
    """
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {port}.")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
        except OSError as error:
            raise ConfigError(
                f"port {port} is already in use ({error.strerror}); pass another --port, or "
                "leave --port out to let torchrun pick a free one."
            ) from error
