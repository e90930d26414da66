"""Golmant et al.'s iterations to a loss and speedup against the batch size (paper 4), and the
report's figure of them.

    >>> steps = np.arange(8)
    >>> r = batch_scaling({16: (steps, np.array([4, 2, 1, .5, .4, .3, .2, .1])),
    ...                    32: (steps[:4], np.array([3, .5, .2, .1]))})
    >>> r["k"], r["speedup"], r["regime"]      # epsilon: lower quartile of m=32's losses, 0.175
    ([8, 4], [1.0, 2.0], ['linear', 'linear'])

    results = batch_results(load_sweep(Path("multirun/demo")))  # per optim.lr_scaling and seed
    batch_replicates(results)          # per optim.lr_scaling: k, s over seeds, regimes per seed

k(m) counts the iterations until the per-step training loss (``train/loss`` in the job's
``csv/metrics.csv``) is at most epsilon; s(m) = k(m0) / k(m) is linear when it equals m / m0.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter

from resnet_dyn.plots.dynamics import band_line
from resnet_dyn.plots.spectra import plt
from resnet_dyn.report.common import Figure, plain_log, save_figure, spread_text
from resnet_dyn.report.sweep import MISSING, Job, Sweep, mean_std, seed_of

# Golmant et al.'s regimes from the local slope of log s(m) against log m between neighbouring
# batch sizes: near 1 is linear scaling, near 0 (or negative) no gain at all.
LINEAR_SLOPE = 0.8
STAGNANT_SLOPE = 0.1
REGIMES = ("linear", "diminishing returns", "stagnation")
REGIME_STYLE = {
    REGIMES[0]: ("o", "tab:green"),
    REGIMES[1]: ("s", "tab:orange"),
    REGIMES[2]: ("X", "tab:red"),
}


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
    """:func:`batch_scaling` per configuration of the axes other than data.batch_size (e.g.
    one per optim.lr_scaling, its ``label``) and per seed (``seed``: each seed has its own
    epsilon, k(m) and regimes), with its loss curves and jobs; those with fewer than two batch
    sizes are left out. Failed jobs count (a diverged run never reaches epsilon); unfinished
    ones (status missing) do not, as they may reach it yet."""
    jobs = [j for j in sweep.jobs if j.status != MISSING]
    out = []
    for label, members in sweep.configurations(jobs, ["data.batch_size"]).items():
        seeds: dict[str, list[Job]] = {}
        for job in members:
            seeds.setdefault(seed_of(job), []).append(job)
        for seed, seed_jobs in seeds.items():
            curves, owners = {}, {}
            for job in seed_jobs:
                m = job.cfg("data.batch_size")
                steps, losses = train_losses(job)
                if isinstance(m, int) and losses.size and m not in curves:
                    curves[m], owners[m] = (steps, losses), job
            if len(curves) > 1:
                scaling = batch_scaling(curves)
                out.append(
                    {"label": label, "seed": seed, "curves": curves, "jobs": owners, **scaling}
                )
    return out


def batch_replicates(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The seeds of each configuration (``label``) of :func:`batch_results` together: per
    batch size of any seed (``m``), the mean and sample std over seeds of k(m) and s(m) (over
    the seeds that reach epsilon: ``reached`` of ``n``; std None below two), every seed's
    regime (``regimes``: one list per m), the most frequent one (``regime``) and the share
    of the seeds that have it (``agreement``, 1.0 when they all agree); ``epsilon`` and
    ``seeds`` list each seed's."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_label.setdefault(r["label"], []).append(r)
    out = []
    for label, runs in by_label.items():
        m = sorted({b for r in runs for b in r["m"]})
        row: dict[str, Any] = {"label": label, "m": m, "seeds": [r["seed"] for r in runs]}
        row["epsilon"] = [r["epsilon"] for r in runs]
        lists = ("k_mean", "k_std", "speedup_mean", "speedup_std", "n", "reached")
        row.update({key: [] for key in (*lists, "regimes", "regime", "agreement")})
        for b in m:
            at = [r for r in runs if b in r["m"]]
            for key in ("k", "speedup"):
                mean, std, _ = mean_std(r[key][r["m"].index(b)] for r in at)
                row[f"{key}_mean"].append(mean)
                row[f"{key}_std"].append(std)
            regimes = [r["regime"][r["m"].index(b)] for r in at]
            top, count = Counter(regimes).most_common(1)[0]
            row["regimes"].append(regimes)
            row["regime"].append(top)
            row["agreement"].append(count / len(regimes))
            row["n"].append(len(at))
            row["reached"].append(sum(r["k"][r["m"].index(b)] is not None for r in at))
        out.append(row)
    return out


def batch_rows(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """``{job name: {"batch/k": k, "batch/speedup": s}}``, the summary.csv columns."""
    rows = {}
    for r in results:
        for m, k, s in zip(r["m"], r["k"], r["speedup"], strict=True):
            rows[r["jobs"][m].name] = {"batch/k": k, "batch/speedup": s}
    return rows


def _regime_text(m: int, regimes: list[str]) -> str:
    """``m=256 linear`` when the seeds agree, ``m=256 linear 2/3, stagnation 1/3`` if not."""
    counts = Counter(regimes).most_common()
    if len(counts) == 1:
        return f"m={m} {counts[0][0]}" + (f" ({len(regimes)} seeds)" if len(regimes) > 1 else "")
    return f"m={m} " + ", ".join(f"{r} {c}/{len(regimes)}" for r, c in counts)


def batch_figures(sweep: Sweep, results: list[dict[str, Any]]) -> list[Figure]:
    """Golmant et al.: loss curves with epsilon, k(m) and s(m) against the ideal m / m0, mean
    and std over seeds; regime markers hollow where the seeds disagree."""
    if not results:
        return []
    summary = batch_replicates(results)
    labels = [s["label"] for s in summary]
    fig, (curves_ax, k_ax, s_ax) = plt.subplots(1, 3, figsize=(15, 4))
    cmap = plt.get_cmap("viridis")
    sizes = sorted({m for r in results for m in r["m"]})
    styles = ("-", "--", ":", "-.")
    for r in results:
        g = labels.index(r["label"])
        colour, style = f"C{g % 10}", styles[g % len(styles)]
        for m, (steps, losses) in r["curves"].items():
            shade = cmap(sizes.index(m) / max(1, len(sizes) - 1))
            curves_ax.plot(steps + 1, losses, ls=style, color=shade, lw=1.0)
        curves_ax.axhline(r["epsilon"], color=colour, lw=0.8, ls=style)
    for g, s in enumerate(summary):
        colour, style = f"C{g % 10}", styles[g % len(styles)]
        band_line(k_ax, s["m"], s["k_mean"], s["k_std"], label=s["label"], color=colour, ls=style,
                  bars=True)  # fmt: skip
        band_line(s_ax, s["m"], s["speedup_mean"], s["speedup_std"], label=s["label"],
                  color=colour, ls=style, bars=True, marker="")  # fmt: skip
        for m, v, regime, agree in zip(
            s["m"], s["speedup_mean"], s["regime"], s["agreement"], strict=True
        ):
            marker, face = REGIME_STYLE[regime]
            if v is not None:
                s_ax.plot([m], [v], marker=marker, color=face, ms=7, ls="none",
                          mfc=face if agree == 1 else "none")  # fmt: skip
    m0 = min(r["m0"] for r in results)
    s_ax.plot(sizes, [m / m0 for m in sizes], color="k", lw=0.8, ls="--", label="linear m / m0")
    for regime, (marker, face) in REGIME_STYLE.items():
        s_ax.plot([], [], marker=marker, color=face, ls="none", label=regime)
    for m in sizes:
        curves_ax.plot([], [], color=cmap(sizes.index(m) / max(1, len(sizes) - 1)), label=f"m={m}")
    curves_ax.set(xscale="log", yscale="log", xlabel="iteration", ylabel="training loss")
    k_ax.set(xscale="log", yscale="log", xlabel="batch size m", ylabel="k(m): iterations to eps")
    s_ax.set(xscale="log", yscale="log", xlabel="batch size m", ylabel="speedup s(m)")
    for ax in (curves_ax, k_ax, s_ax):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        plain_log(ax)
    for ax in (k_ax, s_ax):  # the batch sizes of the sweep, and no other labels
        ax.set_xticks(sizes, [str(m) for m in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
    details = []
    for s in summary:
        eps_mean, eps_std, n = mean_std(s["epsilon"])
        eps = f"eps={eps_mean:.4g}" + (f" +- {eps_std:.2g} over {n} seeds" if n > 1 else "")
        regimes = ", ".join(_regime_text(m, r) for m, r in zip(s["m"], s["regimes"], strict=True))
        details.append(f"{s['label']}: {eps}, {regimes}")
    n_max = max(len(s["seeds"]) for s in summary)
    caption = (
        "Training loss per iteration (lines: epsilon, the lower quartile of the largest "
        "batch's loss, per seed), iterations k(m) to reach it and speedup s(m) = k(m0)/k(m) "
        f"against the ideal linear line; {spread_text(n_max)} (k and s over the seeds that "
        "reach epsilon); regimes per seed, the marker shows the most frequent one, hollow "
        f"where the seeds disagree. {'; '.join(details)}."
    )
    return [save_figure(sweep, fig, "batch", caption)]
