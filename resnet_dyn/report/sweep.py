"""A sweep folder read as data: its jobs, their summaries and overrides, and the summary table.

sweep = load_sweep(Path("multirun/demo"))
columns, rows = table(sweep, batch={})
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from resnet_dyn.errors import UserError
from resnet_dyn.files import write_bytes_atomic

MISSING = "missing"  # a job folder without summary.json: still running, or killed
UNREADABLE = "unreadable"  # a summary.json that is not valid JSON

METRICS = ("test/acc", "val/acc", "train/acc", "test/loss", "val/loss", "train/loss")
SPECTRUM_STATS = (
    ("sum", "frac_one"),
    ("unit", "frac_one"),
    ("sum", "frac_gt_one"),
    ("unit", "frac_zero"),
    ("sum", "sigma_max"),
)
ANALYSIS = (
    *(f"spectrum/{m}/{s}" for m, s in SPECTRUM_STATS),
    "identity/scaled_mean",
    "identity/abs_mean",
    "perturbation/final_ratio",
    "perturbation/attacked_accuracy",
    "final_depth",
)
BATCH = ("batch/k", "batch/speedup")


@dataclass
class Job:
    """One job folder: its overrides, status, summary.json and resolved config."""

    name: str
    path: Path
    overrides: dict[str, str]
    status: str
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    def cfg(self, dotted: str, default: Any = None) -> Any:
        """A value of the job's config by its dotted key, e.g. ``job.cfg("model.depth")``."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def analysis(self) -> dict[str, Any]:
        return self.summary.get("analysis") or {}


@dataclass
class Sweep:
    """The jobs of a sweep folder and the override keys that vary between them."""

    root: Path
    jobs: list[Job]
    swept: list[str]  # override keys whose value differs between jobs, in first-seen order
    common: dict[str, str]  # overrides every job shares
    command: str  # the sweep's overrides from multirun.yaml ("" when there is none)

    def label(self, job: Job) -> str:
        """``#3 model.depth=14, model.skip_scale=0.5``: the job and its swept values."""
        values = ", ".join(f"{k}={job.overrides.get(k, '-')}" for k in self.swept)
        return f"#{job.name} {values}".strip()

    def completed(self) -> list[Job]:
        return [j for j in self.jobs if j.status == "completed"]

    def groups(self, jobs: Sequence[Job], exclude: Sequence[str]) -> dict[str, list[Job]]:
        """``jobs`` grouped by their values of the swept keys not in ``exclude``, labelled
        ``"k=v, k=v"`` (``"all jobs"`` when no other key is swept)."""
        keys = [k for k in self.swept if k not in exclude]
        out: dict[str, list[Job]] = {}
        for job in jobs:
            label = ", ".join(f"{k}={job.overrides.get(k, '-')}" for k in keys) or "all jobs"
            out.setdefault(label, []).append(job)
        return out


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["model.depth=8", "+tags=[a]"]`` -> ``{"model.depth": "8", "tags": "[a]"}``."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if sep:  # "~key" deletions have no value and no column
            out[key.lstrip("+")] = value
    return out


def _job_sort_key(path: Path) -> tuple[int, int, str]:
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def load_job(path: Path) -> Job:
    """Read one job folder; a job without summary.json has status ``missing``."""
    overrides = parse_overrides(_read_yaml(path / ".hydra" / "overrides.yaml") or [])
    job = Job(path.name, path, overrides, MISSING)
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
            if not isinstance(summary, dict):
                raise ValueError(f"expected a JSON object, got {type(summary).__name__}")
        except (OSError, ValueError) as exc:
            job.status, job.error = UNREADABLE, f"summary.json: {exc}"
        else:
            job.summary, job.status = summary, str(summary.get("status", UNREADABLE))
            job.error = str(summary.get("error", ""))
    config = job.summary.get("config")
    if not isinstance(config, dict):  # unfinished jobs: the composed, unresolved config
        config = _read_yaml(path / ".hydra" / "config.yaml")
    job.config = config if isinstance(config, dict) else {}
    return job


def is_job_folder(path: Path) -> bool:
    """A folder that a resnet-dyn job wrote: Hydra's ``.hydra/overrides.yaml`` (written when
    the job starts), or a ``summary.json`` with the job's ``status`` and ``config``."""
    if (path / ".hydra" / "overrides.yaml").is_file():
        return True
    try:
        summary = json.loads((path / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(summary, dict) and "status" in summary and "config" in summary


def load_sweep(root: Path) -> Sweep:
    """All job folders of ``root`` (:func:`is_job_folder`), numbered ones first.

    Raises :class:`UserError` when ``root`` is not a folder, is one job's folder, or holds no
    job folder: nothing is written into a folder that is not a sweep.
    """
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    if is_job_folder(root):
        raise UserError(
            f"{root}: this is one job's folder, not a sweep; pass the sweep folder that holds"
            " the job folders (a -m run's hydra.sweep.dir)"
        )
    paths = [
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and is_job_folder(p)
    ]
    if not paths:
        raise UserError(
            f"{root}: no job folders (with .hydra/overrides.yaml or a job's summary.json) in"
            " this folder: not a resnet-dyn sweep"
        )
    jobs = [load_job(p) for p in sorted(paths, key=_job_sort_key)]
    keys = list(dict.fromkeys(k for j in jobs for k in j.overrides))
    swept = [k for k in keys if len({j.overrides.get(k) for j in jobs}) > 1]
    common = {k: jobs[0].overrides[k] for k in keys if k not in swept}
    multirun = _read_yaml(root / "multirun.yaml")
    task = (((multirun or {}).get("hydra") or {}).get("overrides") or {}).get("task") or []
    return Sweep(root, jobs, swept, common, " ".join(str(t) for t in task))


def finite(value: Any) -> float | None:
    """``value`` as a float if it is a finite number, else None (NaN, inf, strings, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _spectrum_mean(job: Job, map_name: str, stat: str) -> float | None:
    """The mean over the analysed units of one statistic of one map."""
    values = [finite((u.get(map_name) or {}).get(stat)) for u in job.analysis.get("units") or []]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def job_scalars(job: Job) -> dict[str, float | None]:
    """The analysis scalars of :data:`ANALYSIS` for one job (None where it has none)."""
    a = job.analysis
    identity, perturbation = a.get("identity") or {}, a.get("perturbation") or {}
    out = {f"spectrum/{m}/{s}": _spectrum_mean(job, m, s) for m, s in SPECTRUM_STATS}
    out["identity/scaled_mean"] = finite(identity.get("scaled_mean"))
    out["identity/abs_mean"] = finite(identity.get("abs_mean"))
    out["perturbation/final_ratio"] = finite(perturbation.get("final_ratio"))
    out["perturbation/attacked_accuracy"] = finite(perturbation.get("attacked_accuracy"))
    out["final_depth"] = finite(job.summary.get("final_depth"))
    return out


def table(sweep: Sweep, batch: dict[str, dict[str, float | None]]) -> tuple[list[str], list[dict]]:
    """Columns and one row per job for summary.csv; ``batch``: job name -> k and speedup."""
    columns = ["job", *sweep.swept, "status", *METRICS, "epochs", "wall_s", *ANALYSIS, *BATCH]
    columns.append("error")
    rows = []
    for job in sweep.jobs:
        metrics = job.summary.get("metrics") or {}
        row: dict[str, Any] = {"job": job.name, **{k: job.overrides.get(k) for k in sweep.swept}}
        row.update(status=job.status, error=job.error)
        row.update({k: finite(metrics.get(k)) for k in METRICS})
        row.update(epochs=job.summary.get("epochs"), wall_s=finite(job.summary.get("wall_s")))
        row.update(job_scalars(job))
        row.update(batch.get(job.name, {}))
        rows.append(row)
    return columns, rows


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return write_bytes_atomic(path, buf.getvalue().encode())
