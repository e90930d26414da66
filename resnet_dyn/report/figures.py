"""The figures of ``resnet-dyn-report``: one section per analysis, drawn only where data exist.

    from resnet_dyn.report.sweep import load_sweep
    sections, batch_rows = draw_all(load_sweep(Path("multirun/demo")))

Every figure is written as ``report_<name>.png`` into the sweep folder; figures of an earlier
report that this one does not draw are removed, so the page never shows stale ones. Jobs that
differ only in their seed are replicates: figures draw their mean with error bars or bands of
the sample std over seeds. The per-unit, intervention-grid and projection figures are in
:mod:`resnet_dyn.report.units`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator, NullFormatter

from resnet_dyn.dynamics.identity import loglog_slope, stopping_depth
from resnet_dyn.plots.dynamics import _integer_x, band_line, perturbation_mean_axes
from resnet_dyn.plots.spectra import _grid, plt, spectrum_histograms
from resnet_dyn.report.batch import (
    LINEAR_SLOPE,
    STAGNANT_SLOPE,
    batch_figures,
    batch_results,
    batch_rows,
)
from resnet_dyn.report.common import (
    MAX_LINES,
    PREFIX,
    Figure,
    Section,
    line_stats,
    number,
    order,
    plain_log,
    save_figure,
    spread_text,
)
from resnet_dyn.report.sweep import (
    ANALYSIS,
    SEED,
    Job,
    Sweep,
    alpha_beta,
    finite,
    job_scalars,
    mean_std,
    seed_of,
)
from resnet_dyn.report.units import (
    ALPHA_BETA_KEYS,
    alpha_beta_figures,
    projection_figures,
    unit_figures,
)

__all__ = ["ALPHA_BETA_KEYS", "Figure", "Section", "draw_all"]

# A count of unconverged maps is a warning in the table, not a quantity to plot.
PLOTTED = (
    "test/acc",
    "val/acc",
    "train/loss",
    *(c for c in ANALYSIS if c != "spectrum/unconverged"),
)
UNTRAINED_ACC = 0.5  # test/acc below this is not clearly above chance for the 10-class tasks


def _scalar_values(job: Job) -> dict[str, float | None]:
    metrics = job.summary.get("metrics") or {}
    return {
        **{k: finite(metrics.get(k)) for k in ("test/acc", "val/acc", "train/loss")},
        **job_scalars(job),
    }


def axes_data(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """Per swept axis (``seed`` aside) with two values or more: ``{"ticks", "pooled",
    "columns": {column: line_stats}}``: every plotted scalar against the axis, one line per
    configuration of the other axes with the mean and std over its seeds at each tick (beyond
    MAX_LINES configurations, one line pooling them all: mean and std over the other axes
    and the seeds)."""
    jobs = sweep.completed()
    values = {j.name: _scalar_values(j) for j in jobs}
    plotted = [c for c in PLOTTED if any(values[j.name].get(c) is not None for j in jobs)]
    out = {}
    for axis in sweep.swept:
        ticks = sorted({j.overrides.get(axis, "-") for j in jobs}, key=order)
        if axis == SEED or len(ticks) < 2 or not plotted:
            continue
        lines = sweep.configurations(jobs, [axis])
        pooled = len(lines) > MAX_LINES
        if pooled:
            lines = {"mean and std over the other axes": jobs}
        columns = {
            c: line_stats(
                lines, lambda j, a=axis: j.overrides.get(a, "-"), lambda j, c=c: values[j.name][c]
            )
            for c in plotted
        }
        out[axis] = {"ticks": ticks, "pooled": pooled, "columns": columns}
    return out


def axes_figures(sweep: Sweep) -> list[Figure]:
    """Accuracy and every analysis scalar against each swept axis (:func:`axes_data`)."""
    data = axes_data(sweep)
    out = []
    for i, axis in enumerate(sweep.swept):
        if axis not in data:
            continue
        ticks, pooled, columns = data[axis]["ticks"], data[axis]["pooled"], data[axis]["columns"]
        numeric = all(number(t) is not None for t in ticks)
        where = {t: (number(t) if numeric else p) for p, t in enumerate(ticks)}
        labels = list(dict.fromkeys(label for lines in columns.values() for label in lines))
        n_max = max(n for lines in columns.values() for s in lines.values() for n in s["n"])
        fig, axes = _grid(len(columns))
        for ax, (column, lines) in zip(axes, columns.items(), strict=False):
            for label, s in lines.items():
                std = [np.nan if v is None else v for v in s["std"]]
                ax.errorbar(
                    [where[t] for t in s["x"]],
                    s["mean"],
                    yerr=None if np.isnan(std).all() else std,
                    marker="o",
                    ms=3,
                    lw=1.2,
                    capsize=2,
                    color=f"C{labels.index(label) % 10}",
                    label=label,
                )
            ax.set_title(column, fontsize=9)
            ax.set_xlabel(axis, fontsize=8)
            ax.set_xticks([where[t] for t in ticks], ticks, rotation=0 if numeric else 20)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        if labels != ["all jobs"]:
            axes[0].legend(fontsize=6)
        caption = f"Completed jobs against {axis}; " + (
            "one line: mean and std over the other axes and the seeds."
            if pooled
            else f"lines: {'; '.join(labels)}; {spread_text(n_max)}."
        )
        out.append(save_figure(sweep, fig, f"axis{i}", caption))
    return out


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
    units, images and seeds; one figure per configuration of the other swept axes."""
    out = []
    jobs = [j for j in sweep.completed() if j.analysis.get("spectra_file")]
    for i, (label, members) in enumerate(sweep.configurations(jobs, ALPHA_BETA_KEYS).items()):
        pooled: dict[tuple, dict[str, list[np.ndarray]]] = {}
        seeds: dict[tuple, set[str]] = {}
        for job in members:
            for map_name, sigmas in _sigmas(job).items():
                pooled.setdefault(alpha_beta(job), {}).setdefault(map_name, []).append(sigmas)
                seeds.setdefault(alpha_beta(job), set()).add(seed_of(job))
        if not pooled:
            continue
        panels = {
            f"alpha={a}, beta={b}": {m: np.concatenate(v) for m, v in maps.items()}
            for (a, b), maps in sorted(pooled.items(), key=lambda kv: tuple(map(order, kv[0])))
        }
        path = sweep.root / f"{PREFIX}spectra{i}.png"
        spectrum_histograms(panels, path, title=label)
        n = max(len(s) for s in seeds.values())
        caption = (
            f"{label}: singular values of the analysed units' linearizations (all probe "
            "images), per skip scale alpha and weight scale beta; counts on a log scale."
            + (f" Each panel pools its seeds (up to {n})." if n > 1 else "")
        )
        out.append(Figure(path.name, caption))
    return out


def _curve_stats(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and sample std over seeds of curves of one model (cut to the shortest)."""
    length = min(len(c) for c in curves)
    stats = [mean_std(c[i] for c in curves) for i in range(length)]
    mean = np.array([np.nan if m is None else m for m, _, _ in stats])
    std = np.array([np.nan if s is None else s for _, s, _ in stats])
    return mean, std if len(curves) > 1 else None


def perturbation_figures(sweep: Sweep) -> list[Figure]:
    """Relative size of adversarial and random perturbations at every state, one panel per
    configuration: the mean over its seeds, with a band of the std."""
    jobs = [
        j for j in sweep.completed() if (j.analysis.get("perturbation") or {}).get("random_rel")
    ]
    if not jobs:
        return []
    groups = sweep.configurations(jobs)
    fig, axes = _grid(len(groups), 3.4)
    for ax, (label, members) in zip(axes, groups.items(), strict=False):
        stats = {
            kind: _curve_stats([j.analysis["perturbation"][f"{kind}_rel"] for j in members])
            for kind in ("adversarial", "random")
        }
        stages = members[0].analysis["perturbation"].get("unit_stage", [])
        perturbation_mean_axes(ax, stats, stages)
        title = sweep.label(members[0]) if len(members) == 1 else f"{label} ({len(members)} seeds)"
        ax.set_title(title, fontsize=8)
        ax.xaxis.label.set_fontsize(8)
        ax.tick_params(which="both", labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("||x_k(x+d) - x_k(x)|| / ||x_k(x)||", fontsize=8)
    axes[0].legend(fontsize=7)
    attacks = sorted({f"{j.analysis['perturbation'].get('attack')}" for j in jobs})
    n_max = max(len(m) for m in groups.values())
    caption = (
        f"Adversarial ({', '.join(attacks)}) vs random perturbations of the same L2 "
        "norm, relative size at the input of every unit; dotted: stage boundaries; "
        f"{spread_text(n_max)}."
    )
    return [save_figure(sweep, fig, "perturbation", caption)]


def identity_scaling(sweep: Sweep) -> list[dict[str, Any]]:
    """Per configuration of the axes other than model.depth: the blocks L, mean ``scaled`` and
    ``abs`` magnitudes over the seeds of each L (and their sample std, None for one seed),
    their log-log slopes (None below two depths), the slope fitted to each seed on its own
    (``seed_slopes``) with its mean and std over seeds, and the stopping rule's depth over a
    grid of epsilons spanning the mean scaled magnitudes."""
    jobs = [j for j in sweep.completed() if (j.analysis.get("identity") or {}).get("scaled")]
    out = []
    for label, members in sweep.configurations(jobs, ["model.depth"]).items():
        by_depth: dict[int, list[tuple[float, float]]] = {}
        per_seed: dict[str, dict[int, tuple[float, float]]] = {}
        for job in members:
            ident = job.analysis["identity"]
            pair = (ident["scaled_mean"], ident["abs_mean"])
            by_depth.setdefault(len(ident["scaled"]), []).append(pair)
            per_seed.setdefault(seed_of(job), {})[len(ident["scaled"])] = pair
        blocks = sorted(by_depth)
        scaled = [mean_std(s for s, _ in by_depth[b]) for b in blocks]
        absolute = [mean_std(a for _, a in by_depth[b]) for b in blocks]
        means = [s[0] for s in scaled], [a[0] for a in absolute]
        positive = min(means[0]) > 0 and min(means[1]) > 0
        fit = len(blocks) > 1 and positive
        grid = np.geomspace(min(means[0]) / 2, max(means[0]) * 2, 200) if positive else []
        slopes = {}
        for seed, depths in per_seed.items():
            ls = sorted(depths)
            if len(ls) > 1 and min(min(depths[b]) for b in ls) > 0:
                slopes[seed] = loglog_slope(ls, [depths[b][0] for b in ls])
        slope_mean, slope_std, _ = mean_std(slopes.values())
        out.append(
            {
                "label": label,
                "blocks": blocks,
                "scaled": means[0],
                "abs": means[1],
                "scaled_std": [s[1] for s in scaled],
                "abs_std": [a[1] for a in absolute],
                "n": [len(by_depth[b]) for b in blocks],
                "slope_scaled": loglog_slope(blocks, means[0]) if fit else None,
                "slope_abs": loglog_slope(blocks, means[1]) if fit else None,
                "seed_slopes": slopes,
                "seed_slope_mean": slope_mean,
                "seed_slope_std": slope_std,
                "epsilon": list(map(float, grid)),
                "stop": [stopping_depth(blocks, means[0], float(e)) for e in grid],
                "configured_epsilon": members[0].analysis["identity"].get("epsilon"),
            }
        )
    return out


def _slope_text(g: dict[str, Any]) -> str:
    """``-0.98`` or ``-0.98 (per-seed fits -0.97 +- 0.04, 3 seeds)``."""
    text = f"{g['label']}: {g['slope_scaled']:.2f}"
    if len(g["seed_slopes"]) > 1:
        text += (
            f" (per-seed fits {g['seed_slope_mean']:.2f} +- {g['seed_slope_std']:.2f}, "
            f"{len(g['seed_slopes'])} seeds)"
        )
    return text


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
            band_line(ax, g["blocks"], g[key], g[f"{key}_std"], label=g["label"] + tail, bars=True)
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
        plain_log(ax)
    for ax in axes[:2]:  # the depths of the sweep, and no other labels
        ax.set_xticks(blocks, [str(b) for b in blocks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    slopes = "; ".join(_slope_text(g) for g in data if g["slope_scaled"] is not None)
    n_max = max(n for g in data for n in g["n"])
    caption = (
        "Average perturbation from identity against the number of blocks (log-log; "
        f"fitted slopes of the scaled magnitude: {slopes or 'needs two depths'}), and the "
        "depth the stopping rule picks for each epsilon (dotted: the configured one); "
        f"{spread_text(n_max)}; slopes fitted to the means, and in brackets the mean +- "
        "std of the slopes fitted to each seed on its own."
    )
    return [save_figure(sweep, fig, "identity", caption)]


def _trajectory_axes(ax: Any, sweep: Sweep, job: Job) -> None:
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


def transient_figures(sweep: Sweep) -> list[Figure]:
    """Per-class mean residual trajectories of every job (seeds apart: their neurons do not
    correspond), and the depth epoch by epoch, mean and std over the seeds."""
    jobs = [j for j in sweep.completed() if j.analysis.get("transient")]
    if not jobs:
        return []
    fig, axes = _grid(len(jobs), 3.4)
    for ax, job in zip(axes, jobs, strict=False):
        _trajectory_axes(ax, sweep, job)
    axes[0].set_ylabel("class mean of y(t)", fontsize=8)
    depth_fig, ax = plt.subplots(figsize=(6, 3.6))
    groups = sweep.configurations(jobs)
    for label, members in groups.items():
        depths = [
            [
                j.analysis["transient"].get("initial_depth"),
                *j.analysis["transient"].get("depth_per_epoch", []),
            ]
            for j in members
        ]
        mean, std = _curve_stats(depths)
        name = sweep.label(members[0]) if len(members) == 1 else f"{label} ({len(members)} seeds)"
        band_line(ax, np.arange(len(mean)), mean, std, label=name, step=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("layers after the epoch")
    _integer_x(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    n_max = max(len(m) for m in groups.values())
    return [
        save_figure(
            sweep,
            fig,
            "transients",
            "Per-class mean residuals y(t) against the layer t "
            "(one line style per neuron, or the norm beyond four neurons); one panel per job, "
            "seeds apart (the neurons of different seeds do not correspond).",
        ),
        save_figure(
            sweep,
            depth_fig,
            "depth",
            "Depth during training after Lagzi's pruning (the last point is the final depth); "
            f"{spread_text(n_max)}.",
        ),
    ]


def _model_kind(job: Job) -> str:
    return str(job.cfg("model._target_", "model")).rsplit(".", 1)[-1]


def untrained(job: Job) -> float | None:
    """The job's test accuracy when it is below :data:`UNTRAINED_ACC` (a model that did not
    learn the task), else None."""
    acc = finite((job.summary.get("metrics") or {}).get("test/acc"))
    return acc if acc is not None and acc < UNTRAINED_ACC else None


def noise_data(sweep: Sweep) -> tuple[dict[str, dict[str, Any]], list[Job]]:
    """The noise curves per configuration of the models that trained, and the jobs left out
    because they did not (:func:`untrained`). Per configuration: ``kind`` (ResNet class or
    MLP), ``sigmas``, and ``(mean, std)`` over its seeds of the relative noise at the last
    layer (``final``) and of the accuracy on noisy inputs (``accuracy``)."""
    jobs = [j for j in sweep.completed() if (j.analysis.get("noise") or {}).get("sigmas")]
    dropped = [j for j in jobs if untrained(j) is not None]
    kept = [j for j in jobs if untrained(j) is None]
    lines = {}
    for label, members in sweep.configurations(kept).items():
        name = sweep.label(members[0]) if len(members) == 1 else f"{label} ({len(members)} seeds)"
        noises = [j.analysis["noise"] for j in members]
        lines[f"{_model_kind(members[0])} {name}"] = {
            "kind": _model_kind(members[0]),
            "sigmas": noises[0]["sigmas"],
            "final": _curve_stats([[row[-1] for row in n["relative"]] for n in noises]),
            "accuracy": _curve_stats([n["accuracy"] for n in noises]),
            "n": len(members),
        }
    return lines, dropped


def noise_figures(sweep: Sweep) -> list[Figure]:
    """Input noise at the last layer and accuracy against its std, ResNet (solid) vs MLP, mean
    and std over seeds; models that did not train are left out and named in the caption."""
    lines, dropped = noise_data(sweep)
    if not lines and not dropped:
        return []
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for g, (name, d) in enumerate(lines.items()):
        style = {"ls": "--" if d["kind"] == "MLP" else "-", "color": f"C{g % 10}"}
        for ax, (mean, std) in ((left, d["final"]), (right, d["accuracy"])):
            band_line(ax, d["sigmas"][: len(mean)], mean, std, label=name, **style)
    for ax in (left, right) if not lines else ():
        ax.text(0.5, 0.5, "no model trained", ha="center", va="center", transform=ax.transAxes)
    left.set_ylabel("||x_noisy(T) - x(T)|| / ||x(T)||")
    right.set_ylabel("accuracy on noisy inputs")
    for ax in (left, right):
        ax.set_xlabel("input noise std")
        ax.grid(alpha=0.3)
    if lines:
        left.legend(fontsize=7)
    n_max = max((d["n"] for d in lines.values()), default=1)
    caption = (
        "Gaussian input noise: relative size at the last layer and accuracy, ResNets solid, "
        f"MLPs dashed; {spread_text(n_max)}."
    )
    if dropped:
        names = ", ".join(
            f"{_model_kind(j)} {sweep.label(j)} (test/acc {untrained(j):.3f})" for j in dropped
        )
        caption += (
            f" Not drawn: models that did not train (test/acc below {UNTRAINED_ACC}): {names}."
        )
    return [save_figure(sweep, fig, "noise", caption)]


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
            "Completed jobs only; spectrum scalars are means over the analysed units; "
            "seeds of one configuration give the mean and the error bars (sample std).",
            axes_figures(sweep),
        ),
        Section(
            "Singular values (Rothauge et al.)",
            "The paper finds most singular values of a residual unit's linearization at 1, "
            "and skip and weight scaling moving them.",
            [*spectra_figures(sweep), *alpha_beta_figures(sweep), *unit_figures(sweep)],
        ),
        Section(
            "Perturbation growth (Rothauge et al.)",
            "The paper finds adversarial perturbations jumping towards the end of the last "
            "stage, and random ones not; projected on the units' singular vectors, where "
            "the projection was computed.",
            [*perturbation_figures(sweep), *projection_figures(sweep)],
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
            "returns between; computed per seed.",
            batch_figures(sweep, results),
        ),
    ]
    _remove_stale(sweep.root, {f.file for s in sections for f in s.figures})
    return sections, batch_rows(results)
