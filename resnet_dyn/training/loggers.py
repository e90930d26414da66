"""The CSV logger every job writes ``csv/metrics.csv`` with, made safe against kills.

Lightning's writer deletes an existing ``metrics.csv`` when it starts (a resumed job would
lose the rows of the epochs before the interruption), appends rows, and rewrites the file in
place when new columns appear (a kill can leave a torn row or a truncated file). Here a
resumed job keeps the rows logged before its checkpoint's step, a rewrite goes to a
temporary file renamed over the old one, appends are fsynced, and a torn last row is cut
off: the file always parses as whole rows.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from resnet_dyn.files import write_bytes_atomic


def _cut_torn_row(path: Path) -> None:
    """Truncate ``path`` after its last newline (a row cut short by a kill)."""
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


class _SafeWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: int | None) -> None:
        self.resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        if self.resume_step is None:  # a fresh run: the old rows are not its history
            path.unlink()
            return
        _cut_torn_row(path)
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            # Rows from after the checkpoint are logged again by the resumed run.
            rows = [r for r in reader if r.get("step") and float(r["step"]) < self.resume_step]
            self.metrics_keys = list(reader.fieldnames or [])
        self._write_all(rows)

    def _write_all(self, rows: list[dict]) -> None:
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        write_bytes_atomic(self.metrics_file_path, text.getvalue().encode())

    def save(self) -> None:
        if not self.metrics:
            return
        new_keys = self._record_new_keys()
        path = Path(self.metrics_file_path)
        if path.is_file():
            _cut_torn_row(path)
        exists = path.is_file() and path.stat().st_size > 0
        if new_keys or not exists:
            rows = []
            if exists:
                with open(path, newline="") as f:
                    rows = list(csv.DictReader(f))
            self._write_all([*rows, *self.metrics])
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.metrics_keys).writerows(self.metrics)
                f.flush()
                os.fsync(f.fileno())
        self.metrics = []


class SafeCSVLogger(CSVLogger):
    """:class:`lightning.pytorch.loggers.CSVLogger` whose ``metrics.csv`` is never torn, and
    keeps its rows before ``resume_step`` when a job resumes from a checkpoint at that step."""

    def __init__(self, *args: Any, resume_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _SafeWriter(self.log_dir, self.resume_step)
        return self._experiment
