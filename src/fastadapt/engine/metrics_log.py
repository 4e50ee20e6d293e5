"""The CSV log of a run: one row per logged step, columns added as new metrics appear."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from fastadapt.io.atomic import atomic_write_text


class MetricsLog:
    """``metrics.csv`` in a run folder, kept consistent with the checkpoint it resumes from.

    Rows are held in memory and the file is rewritten atomically on :meth:`flush`, so a killed
    run never leaves a half-written line; on resume, rows after the checkpoint's step are
    dropped, because the resumed run logs those steps again.
    """

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, str]] = []
        if resume_step is not None and path.is_file():
            with path.open(newline="", encoding="utf-8") as handle:
                self.rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]

    def append(self, step: int, values: dict[str, float]) -> None:
        self.rows.append({"step": str(step), **{k: f"{v:.6g}" for k, v in values.items()}})

    def flush(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns += [c for c in row if c not in columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())
