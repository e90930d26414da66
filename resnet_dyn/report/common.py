"""What the report's figure modules share: the Figure and Section records, saving a figure, the
order of override values, and lines of means over seeds.

    lines = line_stats({"all jobs": jobs}, x=lambda j: j.cfg("model.depth"), y=test_acc)
    lines["all jobs"]["mean"], lines["all jobs"]["std"]   # per x, over the jobs there (seeds)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from matplotlib.ticker import FuncFormatter

from resnet_dyn.plots.spectra import _save
from resnet_dyn.report.sweep import Job, Sweep, mean_std

PREFIX = "report_"
MAX_LINES = 8  # beyond this many lines (or rows of panels) in one figure, it is unreadable


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


def number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def order(value: Any) -> tuple:
    """Sort key: numbers by value, then everything else by its text."""
    n = number(value)
    return (0, n, "") if n is not None else (1, 0.0, str(value))


def plain_log(ax: Any) -> None:
    """Log axes labelled 20, 30, 0.5 instead of 2 x 10^1; minor ticks too on a short range."""
    for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() == "log":
            short = min(lo, hi) > 0 and max(lo, hi) / min(lo, hi) < 20
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            axis.set_minor_formatter(FuncFormatter(lambda v, _, s=short: f"{v:g}" if s else ""))
    ax.tick_params(which="both", labelsize=7)


def save_figure(sweep: Sweep, fig: Any, name: str, caption: str) -> Figure:
    """Write ``fig`` as ``report_<name>.png`` into the sweep folder."""
    fig.tight_layout()
    _save(fig, sweep.root / f"{PREFIX}{name}.png")
    return Figure(f"{PREFIX}{name}.png", caption)


def line_stats(
    lines: Mapping[str, Sequence[Job]],
    x: Callable[[Job], Any],
    y: Callable[[Job], float | None],
) -> dict[str, dict[str, list]]:
    """Per line: its x values in order (:func:`order`) and, at each, the mean, the sample std
    (None with one value) and the number of the jobs' finite ``y`` values there: the seeds of
    one configuration when ``lines`` are configurations less the x axis. Lines without a value
    are left out."""
    out = {}
    for label, jobs in lines.items():
        at: dict[Any, list[float | None]] = {}
        for job in jobs:
            at.setdefault(x(job), []).append(y(job))
        xs, means, stds, ns = [], [], [], []
        for value in sorted(at, key=order):
            mean, std, n = mean_std(at[value])
            if n:
                xs.append(value)
                means.append(mean)
                stds.append(std)
                ns.append(n)
        if xs:
            out[label] = {"x": xs, "mean": means, "std": stds, "n": ns}
    return out


def spread_text(n_max: int) -> str:
    """How a figure's points and bars read, for at most ``n_max`` seeds per configuration."""
    if n_max > 1:
        return (
            f"points: mean over each configuration's seeds (up to {n_max}), bars and bands: "
            "their sample std"
        )
    return "one seed per configuration (no spread over seeds)"
