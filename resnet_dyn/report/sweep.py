"""A sweep folder read as data: its jobs, their summaries and overrides, and the summary tables.

sweep = load_sweep(Path("multirun/demo"))
columns, rows = table(sweep, batch={})
by_columns, by_rows = by_config(sweep, columns, rows)   # seeds as replicates of a configuration

A configuration is a job's overrides less ``seed``: jobs that differ only in their seed are
replicates, and every figure and summary_by_config.csv show their mean and sample std.
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
    "spectrum/unconverged",  # maps whose sigma_max or sigma_min did not converge (NaN)
    "identity/scaled_mean",
    "identity/abs_mean",
    "perturbation/final_ratio",
    "perturbation/attacked_accuracy",
    "projection/adversarial_expanding",
    "projection/random_expanding",
    "final_depth",
)
BATCH = ("batch/k", "batch/speedup")
SEED = "seed"  # the override whose values are replicates of one configuration
DDOF = 1  # the std over seeds is the sample standard deviation (numpy's std with ddof=1)
# The counts and notes of summary_by_config.csv before the <column>_mean, <column>_std pairs.
BY_CONFIG = ("n_seeds", "n_failed", "n_missing", "seeds", "incomplete")


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

    def configurations(self, jobs: Sequence[Job], exclude: Sequence[str] = ()) -> dict:
        """``jobs`` grouped by configuration (their swept values less ``seed`` and
        ``exclude``): ``{"model.depth=8": [the jobs of seeds 0, 1, 2], ...}``."""
        return self.groups(jobs, [*exclude, SEED])

    def has_replicates(self) -> bool:
        """Whether some configuration has more than one job (several seeds)."""
        return any(len(m) > 1 for m in self.configurations(self.jobs).values())

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


def seed_of(job: Job) -> str:
    """The job's seed as text: its override, else its config's, else ``""``."""
    seed = job.overrides.get(SEED, job.cfg(SEED))
    return "" if seed is None else str(seed)


def mean_std(values: Iterable[Any]) -> tuple[float | None, float | None, int]:
    """Mean, sample std (:data:`DDOF`; None for fewer than two values) and count of the finite
    numbers among ``values`` (None, NaN and text are left out); ``(None, None, 0)`` if none.

    >>> mean_std([1.0, 2.0, None, float("nan")])
    (1.5, 0.7071067811865476, 2)
    """
    kept = [v for v in (finite(x) for x in values) if v is not None]
    if not kept:
        return None, None, 0
    std = float(np.std(kept, ddof=DDOF)) if len(kept) > DDOF else None
    return float(np.mean(kept)), std, len(kept)


def alpha_beta(job: Job) -> tuple[Any, Any]:
    """The skip scale alpha and weight scale beta of the network a job analysed: the model's
    (a resnet-dyn-analyze job's summary ``model``: the checkpoint's settings; else the job's
    config), changed by a post-hoc intervention where one was set (its summary's
    ``analysis.intervention``, else its config's), which sets alpha and multiplies beta
    (:func:`~resnet_dyn.dynamics.interventions.with_intervention`)."""
    built = job.summary.get("model") or job.cfg("model") or {}
    iv = job.analysis.get("intervention") or job.cfg("analysis.intervention") or {}
    alpha, beta = built.get("skip_scale"), built.get("weight_scale")
    if iv.get("skip_scale") is not None:
        alpha = iv["skip_scale"]
    if iv.get("weight_scale") is not None:
        beta = iv["weight_scale"] * (1.0 if beta is None else beta)
    return alpha, beta


def spectrum_mean(job: Job, map_name: str, stat: str) -> float | None:
    """The mean over the analysed units of one statistic of one map; None (an empty cell)
    when a unit's value is not a number: an extreme that did not converge is NaN in
    summary.json, and a mean over the other units would read as a plain value."""
    raw = [(u.get(map_name) or {}).get(stat) for u in job.analysis.get("units") or []]
    raw = [v for v in raw if v is not None]
    values = [finite(v) for v in raw]
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(values))


def unconverged_maps(job: Job) -> int | None:
    """How many (unit, map) spectra of the job have an extreme that did not converge."""
    units = job.analysis.get("units")
    if not units:
        return None
    return sum(
        1 for u in units for m in ("sum", "unit") if (u.get(m) or {}).get("converged") is False
    )


def job_scalars(job: Job) -> dict[str, float | None]:
    """The analysis scalars of :data:`ANALYSIS` for one job (None where it has none)."""
    a = job.analysis
    identity, perturbation = a.get("identity") or {}, a.get("perturbation") or {}
    out = {f"spectrum/{m}/{s}": spectrum_mean(job, m, s) for m, s in SPECTRUM_STATS}
    out["spectrum/unconverged"] = unconverged_maps(job)
    out["identity/scaled_mean"] = finite(identity.get("scaled_mean"))
    out["identity/abs_mean"] = finite(identity.get("abs_mean"))
    out["perturbation/final_ratio"] = finite(perturbation.get("final_ratio"))
    out["perturbation/attacked_accuracy"] = finite(perturbation.get("attacked_accuracy"))
    projection = perturbation.get("projection") or {}
    for kind in ("adversarial", "random"):
        shares = (projection.get(kind) or {}).get("expanding") or []
        out[f"projection/{kind}_expanding"] = mean_std(shares)[0]
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


def by_config(
    sweep: Sweep, columns: Sequence[str], rows: Sequence[dict]
) -> tuple[list[str], list[dict]]:
    """summary_by_config.csv from summary.csv's ``columns`` and ``rows`` (one per job, in
    ``sweep.jobs`` order): one row per configuration with its swept values (``seed`` left
    out), ``n_seeds`` (completed jobs: the replicates the statistics are over), ``n_failed``
    (failed, diverged or unreadable: in no statistic), ``n_missing`` (unfinished), ``seeds``
    (those completed), and ``<column>_mean``, ``<column>_std`` (sample std, empty with one
    value) of every numeric column over the completed jobs that have a value; ``incomplete``
    names the columns that only some completed jobs have (``batch/k (2 of 3)``)."""
    keys = [k for k in sweep.swept if k != SEED]
    numeric = [c for c in columns if c not in ("job", "status", "error", *sweep.swept)]
    stats = [f"{c}_{s}" for c in numeric for s in ("mean", "std")]
    row_of = {job.name: row for job, row in zip(sweep.jobs, rows, strict=True)}
    out = []
    for members in sweep.configurations(sweep.jobs).values():
        done = [j for j in members if j.status == "completed"]
        row: dict[str, Any] = {k: members[0].overrides.get(k) for k in keys}
        row.update(
            n_seeds=len(done),
            n_failed=sum(j.status not in ("completed", MISSING) for j in members),
            n_missing=sum(j.status == MISSING for j in members),
            seeds=" ".join(seed_of(j) for j in done),
        )
        incomplete = []
        for c in numeric:
            mean, std, n = mean_std(row_of[j.name].get(c) for j in done)
            row[f"{c}_mean"], row[f"{c}_std"] = mean, std
            if 0 < n < len(done):
                incomplete.append(f"{c} ({n} of {len(done)})")
        row["incomplete"] = "; ".join(incomplete)
        out.append(row)
    return [*keys, *BY_CONFIG, *stats], out


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return write_bytes_atomic(path, buf.getvalue().encode())
