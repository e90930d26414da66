"""The report's figures by unit and by intervention (Rothauge et al.): spectral statistics
against the unit index, spectra and perturbations over a grid of skip scale alpha and weight
scale beta, and the perturbations' shares on each unit's expanding, neutral and contracting
directions. Each is drawn only where the sweep's summaries hold its data.

    stats = unit_statistics_by_configuration(sweep)  # {configuration: {(map, stat): ...}}
    grid = alpha_beta_grid(sweep)     # [{label, x, lines: {beta: {column: line_stats}}}]
    shares = projection_stats(sweep)  # {configuration: {units, n, adversarial, random}}
"""

from __future__ import annotations

from typing import Any

# The share names that perturbation_run writes into summary.json, read under the same names.
from resnet_dyn.dynamics.perturbation import SHARES
from resnet_dyn.plots.dynamics import _integer_x, band_line, unit_stage_lines
from resnet_dyn.plots.spectra import UNIT_STATS, _grid, plt
from resnet_dyn.report.common import (
    MAX_LINES,
    Figure,
    line_stats,
    order,
    save_figure,
    spread_text,
)
from resnet_dyn.report.sweep import (
    Job,
    Sweep,
    alpha_beta,
    finite,
    job_scalars,
    mean_std,
    spectrum_mean,
)

ALPHA_BETA_KEYS = (
    "model.skip_scale",
    "model.weight_scale",
    "analysis.intervention.skip_scale",
    "analysis.intervention.weight_scale",
)
UNIT_MAPS = ("sum", "unit")
GRID_COLUMNS = (
    *(f"spectrum/{m}/{s}" for m in UNIT_MAPS for s in UNIT_STATS),
    "perturbation/final_ratio",
    "identity/scaled_mean",
)
SHARE_COLOURS = {
    "expanding": "tab:red",
    "neutral": "tab:gray",
    "contracting": "tab:blue",
    "outside": "k",
}


def _chunks(items: list, size: int = MAX_LINES) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _units(job: Job) -> list[dict[str, Any]]:
    return [u for u in job.analysis.get("units") or [] if isinstance(u, dict) and "index" in u]


def unit_statistics_by_configuration(
    sweep: Sweep,
) -> dict[str, dict[tuple[str, str], dict[str, Any]]]:
    """Per configuration (seeds together) and per (map, statistic) of :data:`UNIT_MAPS` x
    :data:`UNIT_STATS` that its jobs have: ``index`` and ``stage`` of the analysed units,
    ``mean`` over the seeds, ``spread`` and what it is over (``over``): the sample std over
    the seeds, or for a configuration of one seed the job's own ``<stat>_std`` over the probe
    images; ``n``: the seeds at each unit."""
    jobs = [j for j in sweep.completed() if _units(j)]
    out: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for label, members in sweep.configurations(jobs).items():
        stages = {u["index"]: u.get("stage") for j in members for u in _units(j)}
        index = sorted(stages)
        for map_name in UNIT_MAPS:
            for stat in UNIT_STATS:
                at: dict[int, list[dict]] = {k: [] for k in index}
                for job in members:
                    for u in _units(job):
                        section = u.get(map_name)
                        if isinstance(section, dict) and finite(section.get(stat)) is not None:
                            at[u["index"]].append(section)
                kept = [k for k in index if at[k]]
                if not kept:
                    continue
                one_seed = len(members) == 1
                stats = [mean_std(s[stat] for s in at[k]) for k in kept]
                spread = (
                    [finite(at[k][0].get(f"{stat}_std")) for k in kept]
                    if one_seed
                    else [s[1] for s in stats]
                )
                out.setdefault(label, {})[(map_name, stat)] = {
                    "index": kept,
                    "stage": [stages[k] for k in kept],
                    "mean": [s[0] for s in stats],
                    "spread": spread,
                    "over": "images" if one_seed else "seeds",
                    "n": [s[2] for s in stats],
                }
    return out


def unit_figures(sweep: Sweep) -> list[Figure]:
    """``frac_one``, ``frac_gt_one`` and ``sigma_max`` of the sum and unit maps against the
    unit index, one line per configuration (mean over its seeds) with a band of the spread;
    MAX_LINES configurations per figure."""
    data = unit_statistics_by_configuration(sweep)
    panels = [
        (m, s) for m in UNIT_MAPS for s in UNIT_STATS if any((m, s) in d for d in data.values())
    ]
    out = []
    for c, labels in enumerate(_chunks(list(data))):
        fig, axes = _grid(len(panels), 3.6)
        for ax, (map_name, stat) in zip(axes, panels, strict=False):
            for i, label in enumerate(labels):
                d = data[label].get((map_name, stat))
                if d is None:
                    continue
                band_line(ax, d["index"], d["mean"], d["spread"], label=label, color=f"C{i % 10}")
                unit_stage_lines(ax, d["index"], d["stage"])
            ax.set_title(f"{map_name} map: {stat}", fontsize=9)
            ax.set_xlabel("unit k", fontsize=8)
            _integer_x(ax)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        if labels != ["all jobs"]:
            axes[0].legend(fontsize=6)
        over = {data[label][p]["over"] for label in labels for p in data[label]}
        spread = {
            "seeds": "the sample std over its seeds",
            "images": "the std over the probe images (one seed)",
        }
        caption = (
            "Per-unit statistics of the units' linearizations (sum map x + F(x), unit map with "
            "its final ReLU) against the unit index k, one line per configuration: the mean "
            f"over its seeds; band: {'; or '.join(spread[o] for o in sorted(over))}. Dotted: "
            "stage boundaries."
        )
        out.append(save_figure(sweep, fig, f"units{c}", caption))
    return out


def alpha_beta_grid(sweep: Sweep) -> list[dict[str, Any]]:
    """Spectra and perturbation scalars over the grid of skip scale alpha and weight scale
    beta (:func:`~resnet_dyn.report.sweep.alpha_beta`: a post-hoc intervention, else the
    model's), per configuration of the other swept axes that has two grid points or more:
    ``{"label", "x": "alpha" or "beta" (beta when alpha has one value), "lines": {value of
    the other: {column: line_stats}}}``, columns of :data:`GRID_COLUMNS` that have data."""
    jobs = [j for j in sweep.completed() if any(v is not None for v in alpha_beta(j))]
    out = []
    for label, members in sweep.configurations(jobs, ALPHA_BETA_KEYS).items():
        points = {alpha_beta(j) for j in members}
        if len(points) < 2:
            continue
        x_is_alpha = len({a for a, _ in points}) > 1
        values = {j.name: _grid_values(j) for j in members}
        lines: dict[Any, list[Job]] = {}
        for job in members:
            alpha, beta = alpha_beta(job)
            lines.setdefault(beta if x_is_alpha else alpha, []).append(job)
        lines = dict(sorted(lines.items(), key=lambda kv: order(kv[0])))
        columns = {}
        for column in GRID_COLUMNS:
            stats = line_stats(
                lines,
                lambda j, a=x_is_alpha: alpha_beta(j)[0 if a else 1],
                lambda j, c=column, v=values: v[j.name][c],
            )
            if stats:
                columns[column] = stats
        if columns:
            out.append({"label": label, "x": "alpha" if x_is_alpha else "beta", "lines": columns})
    return out


def _grid_values(job: Job) -> dict[str, float | None]:
    scalars = job_scalars(job)
    spectra = {f"spectrum/{m}/{s}": spectrum_mean(job, m, s) for m in UNIT_MAPS for s in UNIT_STATS}
    return {**spectra, **{c: scalars[c] for c in GRID_COLUMNS if c in scalars}}


def alpha_beta_figures(sweep: Sweep) -> list[Figure]:
    """:func:`alpha_beta_grid` drawn: each column against alpha, one line per beta (or the
    other way round when alpha has one value); one figure per configuration of the rest."""
    out = []
    for i, g in enumerate(alpha_beta_grid(sweep)):
        other = "beta" if g["x"] == "alpha" else "alpha"
        fig, axes = _grid(len(g["lines"]), 3.4)
        n_max = 1
        for ax, (column, lines) in zip(axes, g["lines"].items(), strict=False):
            for k, (value, s) in enumerate(lines.items()):
                x = [float(v) for v in s["x"]]
                label = f"{other}={value}"
                band_line(ax, x, s["mean"], s["std"], label=label, bars=True, color=f"C{k % 10}")
                n_max = max(n_max, *s["n"])
            ax.set_title(column, fontsize=9)
            ax.set_xlabel(f"{g['x']} ({'skip' if g['x'] == 'alpha' else 'weight'} scale)")
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        caption = (
            f"{g['label']}: spectrum statistics (mean over the analysed units) and perturbation "
            f"and identity scalars against {g['x']}, one line per {other}; alpha and beta of the "
            f"post-hoc intervention where one was set, else the model's; {spread_text(n_max)}."
        )
        out.append(save_figure(sweep, fig, f"alphabeta{i}", caption))
    return out


def _projection(job: Job) -> dict[str, Any]:
    p = (job.analysis.get("perturbation") or {}).get("projection")
    return p if isinstance(p, dict) and p.get("units") else {}


def projection_stats(sweep: Sweep) -> dict[str, dict[str, Any]]:
    """Per configuration whose jobs have ``analysis.perturbation.projection``: the projected
    ``units``, ``n`` seeds, the ``map`` and ``skipped`` units, and per perturbation kind
    (``adversarial``, ``random``) and share of :data:`SHARES` present, ``(mean, std)`` over
    the seeds at each unit (std None with one seed); ``tol`` as the first job has it."""
    jobs = [j for j in sweep.completed() if _projection(j)]
    out = {}
    for label, members in sweep.configurations(jobs).items():
        projections = [_projection(j) for j in members]
        units = sorted({k for p in projections for k in p["units"]})
        entry: dict[str, Any] = {
            "units": units,
            "n": len(members),
            "map": projections[0].get("map", "unit"),
            "skipped": sorted({k for p in projections for k in p.get("skipped") or []}),
            "tol": projections[0].get("tol"),
        }
        for kind in ("adversarial", "random"):
            shares = {}
            for share in SHARES:
                per_unit = []
                for k in units:
                    values = [
                        ((p.get(kind) or {}).get(share) or [None] * len(p["units"]))[
                            p["units"].index(k)
                        ]
                        for p in projections
                        if k in p["units"]
                    ]
                    per_unit.append(mean_std(values))
                if any(n for _, _, n in per_unit):
                    shares[share] = ([m for m, _, _ in per_unit], [s for _, s, _ in per_unit])
            entry[kind] = shares
        out[label] = entry
    return out


def projection_figures(sweep: Sweep) -> list[Figure]:
    """The expanding, neutral and contracting shares (and ``outside``, the null space of a
    unit that maps to fewer dimensions, where present) of the adversarial (left) and random
    (right) perturbation against the unit index, one row per configuration, mean over its
    seeds with a band of the std."""
    data = projection_stats(sweep)
    out = []
    for c, labels in enumerate(_chunks(list(data), 4)):
        fig, axes = plt.subplots(
            len(labels), 2, figsize=(10, 3.2 * len(labels)), squeeze=False, sharey=True
        )
        for row, label in zip(axes, labels, strict=True):
            d = data[label]
            for ax, kind in zip(row, ("adversarial", "random"), strict=True):
                for share, (mean, std) in d[kind].items():
                    band_line(ax, d["units"], mean, std, label=share, color=SHARE_COLOURS[share])
                ax.set_ylim(-0.02, 1.02)
                seeds = f" ({d['n']} seeds)" if d["n"] > 1 else ""
                ax.set_title(f"{kind}\n{label}{seeds}", fontsize=8)
                ax.set_xlabel("unit k (at its input)", fontsize=8)
                _integer_x(ax)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
            row[0].set_ylabel("share of ||d||^2", fontsize=8)
        axes[0][0].legend(fontsize=7)
        maps = sorted({data[label]["map"] for label in labels})
        skipped = sorted({k for label in labels for k in data[label]["skipped"]})
        tols = sorted({str(data[label]["tol"]) for label in labels if data[label]["tol"]})
        caption = (
            "Where the perturbations sit: at each projected unit's input, the share of the "
            f"perturbation's squared norm on the directions of that unit's {'/'.join(maps)} "
            "map linearization that expand (sigma > 1 + tol), keep (|sigma - 1| <= tol) or "
            "contract (sigma < 1 - tol), adversarial (left) vs random (right); "
            f"{spread_text(max(data[label]['n'] for label in labels))}."
            + (f" tol = {', '.join(tols)}." if tols else "")
            + (f" Units too large to project: {skipped}." if skipped else "")
        )
        out.append(save_figure(sweep, fig, f"projection{c}", caption))
    return out
