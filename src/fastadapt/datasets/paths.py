"""Where datasets and their caches live by default: a per-user cache folder."""

from __future__ import annotations

import os
from pathlib import Path


def default_root() -> Path:
    """``$FASTADAPT_HOME``, else ``$XDG_CACHE_HOME/fastadapt``, else ``~/.cache/fastadapt``.

    Each dataset keeps its files in ``<root>/<dataset>`` and its decoded arrays in
    ``<root>/<dataset>/cache``; ``--set data.root=DIR`` points a run anywhere else.
    """
    if "FASTADAPT_HOME" in os.environ:
        return Path(os.environ["FASTADAPT_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fastadapt"
