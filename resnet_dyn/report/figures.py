"""The figures of ``resnet-dyn-report``: one section per analysis, drawn only where data exist.

    from resnet_dyn.report.sweep import load_sweep
    sections, batch_rows = draw_all(load_sweep(Path("multirun/demo")))

Every figure is written as ``report_<name>.png`` into the sweep folder; figures of an earlier
report that this one does not draw are removed, so the page never shows stale ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from resnet_dyn.dynamics.identity import loglog_slope, stopping_depth
from resnet_dyn.plots.dynamics import _integer_x, perturbation_axes
from resnet_dyn.plots.spectra import _grid, _save, plt, spectrum_histograms
from resnet_dyn.report.batch import (
    LINEAR_SLOPE,
    REGIMES,
    STAGNANT_SLOPE,
    batch_results,
    batch_rows,
)
from resnet_dyn.report.sweep import ANALYSIS, Job, Sweep, finite, job_scalars

PREFIX = "report_"
PLOTTED = ("test/acc", "val/acc", "train/loss", *ANALYSIS)
MAX_LINES = 8  # beyond this many combinations of the other axes, one mean line with std bars
ALPHA_BETA_KEYS = (
    "model.skip_scale",
    "model.weight_scale",
    "analysis.intervention.skip_scale",
    "analysis.intervention.weight_scale",
)
REGIME_STYLE = {
    REGIMES[0]: ("o", "tab:green"),
    REGIMES[1]: ("s", "tab:orange"),
    REGIMES[2]: ("X", "tab:red"),
}


@dataclass
class Figure:
    """A PNG written by the report and what the page says under it."""

    file: str  # relative to the sweep folder
    caption: str


@dataclass
class Section:
    """A part of the page: one analysis, its figures (none: the sweep has no data for it)."""

    title: str
    about: str
    figures: list[Figure] = field(default_factory=list)
    quiet: bool = False  # no data: leave it out of the page instead of saying so


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _order(value: Any) -> tuple:
    n = _number(value)
    return (0, n, "") if n is not None else (1, 0.0, str(value))


def _plain_log(ax: Any) -> None:
    """Log axes labelled 20, 30, 0.5 instead of 2 x 10^1; minor ticks too on a short range."""
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() == "log":
            short = min(lo, hi) > 0 and max(lo, hi) / min(lo, hi) < 20
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _, s=short: f"{v:g}" if s else ""))
    ax.tick_params(which="both", labelsize=7)


def _figure(sweep: Sweep, fig: Any, name: str, caption: str) -> Figure:
    fig.tight_layout()
    _save(fig, sweep.root / f"{PREFIX}{name}.png")
    return Figure(f"{PREFIX}{name}.png", caption)


def _scalar_values(job: Job) -> dict[str, float | None]:
    metrics = job.summary.get("metrics") or {}
    return {
        **{k: finite(metrics.get(k)) for k in ("test/acc", "val/acc", "train/loss")},
        **job_scalars(job),
    }


def axes_figures(sweep: Sweep) -> list[Figure]:
    """Accuracy and every analysis scalar against each swept axis, one line per combination
    of the other axes (their mean and std when there are more than MAX_LINES)."""
    jobs = sweep.completed()
    values = {j.name: _scalar_values(j) for j in jobs}
    plotted = [c for c in PLOTTED if any(values[j.name].get(c) is not None for j in jobs)]
    out = []
    for i, axis in enumerate(sweep.swept):
        ticks = sorted({j.overrides.get(axis, "-") for j in jobs}, key=_order)
        if len(ticks) < 2 or not plotted:
            continue
        numeric = all(_number(t) is not None for t in ticks)
        where = {t: (_number(t) if numeric else p) for p, t in enumerate(ticks)}
        lines = sweep.groups(jobs, [axis])
        pooled = len(lines) > MAX_LINES
        if pooled:
            lines = {"mean and std over the other axes": jobs}
        fig, axes = _grid(len(plotted))
        for ax, column in zip(axes, plotted, strict=False):
            for label, members in lines.items():
                at: dict[str, list[float]] = {}
                for j in members:
                    if values[j.name][column] is not None:
                        at.setdefault(j.overrides.get(axis, "-"), []).append(values[j.name][column])
                xs = [t for t in ticks if t in at]
                ax.errorbar(
                    [where[t] for t in xs],
                    [np.mean(at[t]) for t in xs],
                    yerr=[np.std(at[t]) for t in xs] if pooled else None,
                    marker="o",
                    ms=3,
                    lw=1.2,
                    capsize=2,
                    label=label,
                )
            ax.set_title(column, fontsize=9)
            ax.set_xlabel(axis, fontsize=8)
            ax.set_xticks([where[t] for t in ticks], ticks, rotation=0 if numeric else 20)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        if len(lines) > 1 or next(iter(lines)) != "all jobs":
            axes[0].legend(fontsize=6)
        caption = f"Completed jobs against {axis}; " + (
            "mean and std over the other axes." if pooled else f"lines: {'; '.join(lines)}."
        )
        out.append(_figure(sweep, fig, f"axis{i}", caption))
    return out


def _alpha_beta(job: Job) -> tuple[Any, Any]:
    """The skip scale and weight scale a job's spectra belong to: the post-hoc intervention of
    resnet-dyn-analyze where one was set, else the model's values at initialisation."""
    iv = job.cfg("analysis.intervention") or {}
    alpha = (
        iv.get("skip_scale") if iv.get("skip_scale") is not None else job.cfg("model.skip_scale")
    )
    beta = iv.get("weight_scale")
    return alpha, beta if beta is not None else job.cfg("model.weight_scale")


def _sigmas(job: Job) -> dict[str, np.ndarray]:
    """``{map: every singular value of every analysed unit and image}`` from the job's npz."""
    name = job.analysis.get("spectra_file")
    path = job.path / "analysis" / str(name)
    if not name or not path.is_file():
        return {}
    out: dict[str, list[np.ndarray]] = {}
    with np.load(path) as npz:
        for key in npz.files:
            parts = key.rsplit("_", 2)  # unit07_sum_sigma
            if len(parts) == 3 and parts[2] == "sigma":
                out.setdefault(parts[1], []).append(npz[key].ravel())
    return {m: np.concatenate(v) for m, v in out.items()}


def spectra_figures(sweep: Sweep) -> list[Figure]:
    """Singular-value histograms, one panel per (skip scale, weight scale) pooling its jobs'
    units and images; one figure per combination of the other swept axes."""
    out = []
    jobs = [j for j in sweep.completed() if j.analysis.get("spectra_file")]
    for i, (label, members) in enumerate(sweep.groups(jobs, ALPHA_BETA_KEYS).items()):
        pooled: dict[tuple, dict[str, list[np.ndarray]]] = {}
        for job in members:
            for map_name, sigmas in _sigmas(job).items():
                pooled.setdefault(_alpha_beta(job), {}).setdefault(map_name, []).append(sigmas)
        if not pooled:
            continue
        panels = {
            f"alpha={a}, beta={b}": {m: np.concatenate(v) for m, v in maps.items()}
            for (a, b), maps in sorted(pooled.items(), key=lambda kv: tuple(map(_order, kv[0])))
        }
        path = sweep.root / f"{PREFIX}spectra{i}.png"
        spectrum_histograms(panels, path, title=label)
        caption = (
            f"{label}: singular values of the analysed units' linearizations (all probe "
            "images), per skip scale alpha and weight scale beta; counts on a log scale."
        )
        out.append(Figure(path.name, caption))
    return out


def perturbation_figures(sweep: Sweep) -> list[Figure]:
    """Relative size of adversarial and random perturbations at every state, one panel a job."""
    jobs = [
        j for j in sweep.completed() if (j.analysis.get("perturbation") or {}).get("random_rel")
    ]
    if not jobs:
        return []
    fig, axes = _grid(len(jobs), 3.4)
    for ax, job in zip(axes, jobs, strict=False):
        perturbation_axes(ax, job.analysis["perturbation"], "rel")
        ax.set_title(sweep.label(job), fontsize=8)
        ax.xaxis.label.set_fontsize(8)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("||x_k(x+d) - x_k(x)|| / ||x_k(x)||", fontsize=8)
    axes[0].legend(fontsize=7)
    attacks = sorted({f"{j.analysis['perturbation'].get('attack')}" for j in jobs})
    caption = (
        f"Adversarial ({', '.join(attacks)}) vs random perturbations of the same L2 "
        "norm, relative size at the input of every unit; dotted: stage boundaries."
    )
    return [_figure(sweep, fig, "perturbation", caption)]


def identity_scaling(sweep: Sweep) -> list[dict[str, Any]]:
    """Per group of the axes other than model.depth: the blocks L, mean ``scaled`` and ``abs``
    magnitudes (averaged over jobs of equal L), their log-log slopes (None below two depths),
    and the stopping rule's depth over a grid of epsilons spanning the scaled magnitudes."""
    jobs = [j for j in sweep.completed() if (j.analysis.get("identity") or {}).get("scaled")]
    out = []
    for label, members in sweep.groups(jobs, ["model.depth"]).items():
        by_depth: dict[int, list[tuple[float, float]]] = {}
        for job in members:
            ident = job.analysis["identity"]
            by_depth.setdefault(len(ident["scaled"]), []).append(
                (ident["scaled_mean"], ident["abs_mean"])
            )
        blocks = sorted(by_depth)
        scaled = [float(np.mean([s for s, _ in by_depth[b]])) for b in blocks]
        absolute = [float(np.mean([a for _, a in by_depth[b]])) for b in blocks]
        positive = min(scaled) > 0 and min(absolute) > 0
        fit = len(blocks) > 1 and positive
        grid = np.geomspace(min(scaled) / 2, max(scaled) * 2, 200) if positive else np.array([])
        out.append(
            {
                "label": label,
                "blocks": blocks,
                "scaled": scaled,
                "abs": absolute,
                "slope_scaled": loglog_slope(blocks, scaled) if fit else None,
                "slope_abs": loglog_slope(blocks, absolute) if fit else None,
                "epsilon": grid.tolist(),
                "stop": [stopping_depth(blocks, scaled, float(e)) for e in grid],
                "configured_epsilon": members[0].analysis["identity"].get("epsilon"),
            }
        )
    return out


def identity_figures(sweep: Sweep) -> list[Figure]:
    """Hauser's figures: magnitudes against blocks (log-log, fitted slope) and the stopping rule."""
    data = identity_scaling(sweep)
    if not data:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for g in data:
        for ax, key in zip(axes[:2], ("scaled", "abs"), strict=True):
            slope = g[f"slope_{key}"]
            tail = f" (slope {slope:.2f})" if slope is not None else ""
            ax.plot(g["blocks"], g[key], marker="o", ms=4, lw=1.2, label=g["label"] + tail)
        stop = [np.nan if d is None else d for d in g["stop"]]
        axes[2].step(g["epsilon"], stop, where="post", label=g["label"])
        if g["configured_epsilon"]:
            axes[2].axvline(g["configured_epsilon"], color="k", lw=0.8, ls=":")
    titles = ("mean ||F(x_l)|| / ||x_l||", "mean ||F(x_l)||", "stopping rule")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[2].set_xlabel("epsilon")
    axes[2].set_ylabel("stopping depth L")
    axes[2].yaxis.set_major_locator(MaxNLocator(integer=True))
    blocks = sorted({b for g in data for b in g["blocks"]})
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.set_xlabel("blocks L")
    for ax in axes:
        _plain_log(ax)
    for ax in axes[:2]:  # the depths of the sweep, and no other labels
        ax.set_xticks(blocks, [str(b) for b in blocks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    slopes = "; ".join(
        f"{g['label']}: {g['slope_scaled']:.2f}" for g in data if g["slope_scaled"] is not None
    )
    caption = (
        "Average perturbation from identity against the number of blocks (log-log; "
        f"fitted slopes of the scaled magnitude: {slopes or 'needs two depths'}), and the "
        "depth the stopping rule picks for each epsilon (dotted: the configured one)."
    )
    return [_figure(sweep, fig, "identity", caption)]


def transient_figures(sweep: Sweep) -> list[Figure]:
    """Per-class mean residual trajectories of every job, and its depth epoch by epoch."""
    jobs = [j for j in sweep.completed() if j.analysis.get("transient")]
    if not jobs:
        return []
    fig, axes = _grid(len(jobs), 3.4)
    for ax, job in zip(axes, jobs, strict=False):
        t = job.analysis["transient"]
        path = job.path / "analysis" / str(t.get("trajectory_file"))
        if path.is_file():
            with np.load(path) as npz:
                mean, classes = npz["mean"], npz["classes"]
            mean = mean.reshape(*mean.shape[:2], -1)
            layers = np.arange(1, mean.shape[1] + 1)
            for c, cls in enumerate(classes):
                colour = f"C{c % 10}"
                if mean.shape[2] <= 4:  # a line per neuron; beyond, the norm stays readable
                    for n, style in zip(range(mean.shape[2]), ("-", "--", ":", "-."), strict=False):
                        ax.plot(layers, mean[c, :, n], ls=style, color=colour, lw=1.1)
                else:
                    ax.plot(layers, np.linalg.norm(mean[c], axis=1), color=colour, lw=1.1)
                ax.plot([], [], color=colour, label=f"class {cls}")
        _integer_x(ax)
        title = f"{sweep.label(job)}\n{t.get('initial_depth')} -> {t.get('final_depth')} layers"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("layer t", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0].set_ylabel("class mean of y(t)", fontsize=8)
    depth_fig, ax = plt.subplots(figsize=(6, 3.6))
    for job in jobs:
        t = job.analysis["transient"]
        depths = [t.get("initial_depth"), *t.get("depth_per_epoch", [])]
        ax.step(range(len(depths)), depths, where="post", marker="o", ms=3, label=sweep.label(job))
    ax.set_xlabel("epoch")
    ax.set_ylabel("layers after the epoch")
    _integer_x(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return [
        _figure(
            sweep,
            fig,
            "transients",
            "Per-class mean residuals y(t) against the layer t "
            "(one line style per neuron, or the norm beyond four neurons).",
        ),
        _figure(
            sweep,
            depth_fig,
            "depth",
            "Depth during training after Lagzi's pruning (the last point is the final depth).",
        ),
    ]


def noise_figures(sweep: Sweep) -> list[Figure]:
    """Input noise at the last layer and accuracy against its std, ResNet (solid) vs MLP."""
    jobs = [j for j in sweep.completed() if (j.analysis.get("noise") or {}).get("sigmas")]
    if not jobs:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for job in jobs:
        noise = job.analysis["noise"]
        kind = str(job.cfg("model._target_", "model")).rsplit(".", 1)[-1]
        style = "--" if kind == "MLP" else "-"
        label = f"{kind} {sweep.label(job)}"
        final = [row[-1] for row in noise["relative"]]
        left.plot(noise["sigmas"], final, ls=style, marker="o", ms=3, label=label)
        right.plot(noise["sigmas"], noise["accuracy"], ls=style, marker="o", ms=3, label=label)
    left.set_ylabel("||x_noisy(T) - x(T)|| / ||x(T)||")
    right.set_ylabel("accuracy on noisy inputs")
    for ax in (left, right):
        ax.set_xlabel("input noise std")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    return [
        _figure(
            sweep,
            fig,
            "noise",
            "Gaussian input noise: relative size at the last layer "
            "and accuracy, ResNets solid, MLPs dashed.",
        )
    ]


def batch_figures(sweep: Sweep, results: list[dict[str, Any]]) -> list[Figure]:
    """Golmant et al.: loss curves with epsilon, k(m) and s(m) against the ideal m / m0."""
    if not results:
        return []
    fig, (curves_ax, k_ax, s_ax) = plt.subplots(1, 3, figsize=(15, 4))
    cmap = plt.get_cmap("viridis")
    sizes = sorted({m for r in results for m in r["m"]})
    styles = ("-", "--", ":", "-.")
    for g, r in enumerate(results):
        colour, style = f"C{g % 10}", styles[g % len(styles)]
        for m, (steps, losses) in r["curves"].items():
            shade = cmap(sizes.index(m) / max(1, len(sizes) - 1))
            curves_ax.plot(steps + 1, losses, ls=style, color=shade, lw=1.0)
        curves_ax.axhline(r["epsilon"], color=colour, lw=0.8, ls=style)
        k = [np.nan if v is None else v for v in r["k"]]
        k_ax.plot(r["m"], k, color=colour, ls=style, marker="o", ms=4, label=r["label"])
        s = [np.nan if v is None else v for v in r["speedup"]]
        s_ax.plot(r["m"], s, color=colour, ls=style, lw=1.2, label=r["label"])
        for m, v, regime in zip(r["m"], s, r["regime"], strict=True):
            marker, face = REGIME_STYLE[regime]
            if not np.isnan(v):
                s_ax.plot([m], [v], marker=marker, color=face, ms=7, ls="none")
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
        _plain_log(ax)
    for ax in (k_ax, s_ax):  # the batch sizes of the sweep, and no other labels
        ax.set_xticks(sizes, [str(m) for m in sizes])
        ax.xaxis.set_minor_formatter(NullFormatter())
    details = "; ".join(
        f"{r['label']}: eps={r['epsilon']:.4g}, "
        + ", ".join(f"m={m} {reg}" for m, reg in zip(r["m"], r["regime"], strict=True))
        for r in results
    )
    caption = (
        "Training loss per iteration (lines: epsilon, the lower quartile of the largest "
        "batch's loss), iterations k(m) to reach it and speedup s(m) = k(m0)/k(m) against "
        f"the ideal linear line. {details}."
    )
    return [_figure(sweep, fig, "batch", caption)]


def _remove_stale(root: Path, keep: set[str]) -> None:
    for path in root.glob(f"{PREFIX}*.png"):
        if path.name not in keep:
            path.unlink(missing_ok=True)


def draw_all(sweep: Sweep) -> tuple[list[Section], dict[str, dict[str, float | None]]]:
    """Draw every section's figures; returns the sections and each batch job's k and s(m)."""
    results = batch_results(sweep)
    sections = [
        Section(
            "Accuracy and analysis scalars against each swept axis",
            "Completed jobs only; spectrum scalars are means over the analysed units.",
            axes_figures(sweep),
        ),
        Section(
            "Singular values (Rothauge et al.)",
            "The paper finds most singular values of a residual unit's linearization at 1, "
            "and skip and weight scaling moving them.",
            spectra_figures(sweep),
        ),
        Section(
            "Perturbation growth (Rothauge et al.)",
            "The paper finds adversarial perturbations jumping towards the end of the last "
            "stage, and random ones not.",
            perturbation_figures(sweep),
        ),
        Section(
            "Perturbation from identity (Hauser)",
            "The paper finds the scaled magnitude falling roughly as 1/L (slope -1).",
            identity_figures(sweep),
        ),
        Section(
            "Residual transients and pruning (Lagzi)",
            "The paper finds classes sharing a fixed point and differing in their transients.",
            transient_figures(sweep),
        ),
        Section("Noise: ResNet vs MLP (Lagzi)", "", noise_figures(sweep), quiet=True),
        Section(
            "Batch size and iterations (Golmant et al.)",
            f"Regimes from the local log-log slope of s(m): linear at >= {LINEAR_SLOPE}, "
            f"stagnation at <= {STAGNANT_SLOPE} or when epsilon is never reached, diminishing "
            "returns between.",
            batch_figures(sweep, results),
        ),
    ]
    _remove_stale(sweep.root, {f.file for s in sections for f in s.figures})
    return sections, batch_rows(results)
