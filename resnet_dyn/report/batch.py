"""Golmant et al.'s iterations to a loss and speedup against the batch size (paper 4).

    >>> steps = np.arange(8)
    >>> r = batch_scaling({16: (steps, np.array([4, 2, 1, .5, .4, .3, .2, .1])),
    ...                    32: (steps[:4], np.array([3, .5, .2, .1]))})
    >>> r["k"], r["speedup"], r["regime"]      # epsilon: lower quartile of m=32's losses, 0.175
    ([8, 4], [1.0, 2.0], ['linear', 'linear'])

    batch_results(load_sweep(Path("multirun/demo")))   # per optim.lr_scaling, say

k(m) counts the iterations until the per-step training loss (``train/loss`` in the job's
``csv/metrics.csv``) is at most epsilon; s(m) = k(m0) / k(m) is linear when it equals m / m0.
"""

from __future__ import annotations

import csv
import math
from typing import Any

import numpy as np

from resnet_dyn.report.sweep import MISSING, Job, Sweep

# Golmant et al.'s regimes from the local slope of log s(m) against log m between neighbouring
# batch sizes: near 1 is linear scaling, near 0 (or negative) no gain at all.
LINEAR_SLOPE = 0.8
STAGNANT_SLOPE = 0.1
REGIMES = ("linear", "diminishing returns", "stagnation")


def train_losses(job: Job) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, losses)`` of the per-step ``train/loss`` in the job's csv/metrics.csv."""
    steps, losses = [], []
    try:
        with open(job.path / "csv" / "metrics.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("train/loss") and row.get("step"):
                    steps.append(int(float(row["step"])))
                    losses.append(float(row["train/loss"]))
    except (OSError, ValueError):
        return np.array([], dtype=int), np.array([])
    return np.asarray(steps, dtype=int), np.asarray(losses, dtype=float)


def iterations_to_loss(steps: np.ndarray, losses: np.ndarray, epsilon: float) -> int | None:
    """k: iterations until the training loss is at most ``epsilon`` (the logged step + 1, so
    a loss reached on the very first batch counts one iteration); None if never reached."""
    hit = np.flatnonzero(np.asarray(losses, dtype=float) <= epsilon)
    return int(np.asarray(steps)[hit[0]]) + 1 if hit.size else None


def _regime(slope: float) -> str:
    if slope >= LINEAR_SLOPE:
        return REGIMES[0]
    return REGIMES[2] if slope <= STAGNANT_SLOPE else REGIMES[1]


def batch_scaling(curves: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Golmant et al.'s k(m), s(m) = k(m0) / k(m) and regimes, for ``{m: (steps, losses)}``.

    epsilon is the lower quartile of the training losses of the largest batch size with finite
    losses; m0 is the smallest batch size that reaches epsilon. Returns ``{"epsilon", "m0",
    "m": [...sorted], "k": [...], "speedup": [...], "ideal": [m / m0], "regime": [...]}``
    (None where a batch size never reaches epsilon, whose regime is then stagnation).
    """
    m = sorted(curves)
    usable = [b for b in m if np.isfinite(curves[b][1]).any()]  # a diverged run has only NaN
    if not usable:
        raise ValueError("batch_scaling: no batch size has a finite training loss")
    last = curves[usable[-1]][1]
    epsilon = float(np.percentile(last[np.isfinite(last)], 25))
    k = [iterations_to_loss(*curves[b], epsilon) for b in m]
    m0 = next(b for b, kb in zip(m, k, strict=True) if kb is not None)
    k0 = k[m.index(m0)]
    speedup = [None if kb is None else k0 / kb for kb in k]
    regime, prev = [], None  # prev: the last (m, s) where s is defined
    for b, s in zip(m, speedup, strict=True):
        if s is None:
            regime.append(REGIMES[2])
            continue
        slope = 1.0 if prev is None else math.log(s / prev[1]) / math.log(b / prev[0])
        regime.append(_regime(slope))
        prev = (b, s)
    return {
        "epsilon": epsilon,
        "m0": m0,
        "m": m,
        "k": k,
        "speedup": speedup,
        "ideal": [b / m0 for b in m],
        "regime": regime,
    }


def batch_results(sweep: Sweep) -> list[dict[str, Any]]:
    """:func:`batch_scaling` per group of the axes other than data.batch_size (e.g. one group
    per optim.lr_scaling), with its loss curves and jobs; groups with fewer than two batch sizes
    are left out. Failed jobs count (a diverged run never reaches epsilon); unfinished ones
    (status missing) do not, as they may reach it yet."""
    jobs = [j for j in sweep.jobs if j.status != MISSING]
    out = []
    for label, members in sweep.groups(jobs, ["data.batch_size"]).items():
        curves, owners = {}, {}
        for job in members:
            m = job.cfg("data.batch_size")
            steps, losses = train_losses(job)
            if isinstance(m, int) and losses.size and m not in curves:
                curves[m], owners[m] = (steps, losses), job
        if len(curves) > 1:
            out.append({"label": label, "curves": curves, "jobs": owners, **batch_scaling(curves)})
    return out


def batch_rows(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{job name: {"batch/k": k, "batch/speedup": s}}``, the summary.csv columns."""
    rows = {}
    for r in results:
        for m, k, s in zip(r["m"], r["k"], r["speedup"], strict=True):
            rows[r["jobs"][m].name] = {"batch/k": k, "batch/speedup": s}
    return rows
