"""Figures as PNG files (matplotlib, no display needed).

spectrum_histograms({"unit 07": {"sum": sigmas, "unit": sigmas}}, "hist.png")
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from resnet_dyn.files import write_bytes_atomic  # noqa: E402

Panels = Mapping[str, Mapping[str, np.ndarray]]
CountedPanels = Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]


def _save(fig: plt.Figure, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return write_bytes_atomic(path, buf.getvalue())


def _finish(fig: plt.Figure, axes: np.ndarray, path: str | Path, title: str) -> Path:
    """Legend on the first panel, the figure title, and the PNG written atomically."""
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _grid(n: int, size: float = 3.2) -> tuple[plt.Figure, np.ndarray]:
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, 0.8 * size * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def spectrum_histograms(
    panels: Panels, path: str | Path, title: str = "", counted: CountedPanels | None = None
) -> Path:
    """One panel per unit (or stage): histograms of its singular values, one colour per map.

    ``panels``: all singular values of a map; ``counted``: exact histograms counted at
    bin edges (``(counts, edges)``, counts summed over images) of maps whose values were
    never all computed, drawn as steps and labelled "counted". Counts are on a log scale
    because most singular values sit at exactly 1.
    """
    counted = counted or {}
    names = list(dict.fromkeys([*panels, *counted]))
    fig, axes = _grid(len(names))
    for ax, name in zip(axes, names, strict=False):
        values = {k: np.asarray(v).ravel() for k, v in panels.get(name, {}).items()}
        steps = counted.get(name, {})
        hi = max(
            1.5,
            *(1.02 * float(v.max()) for v in values.values() if v.size),
            *(float(e[-1]) for _, e in steps.values()),
        )
        bins = np.linspace(0.0, hi, 60)
        for label, v in values.items():
            ax.hist(v, bins=bins, alpha=0.55, label=label, log=True)
        for label, (c, e) in steps.items():
            ax.stairs(c, e, fill=True, alpha=0.55, label=f"{label} (counted)")
            ax.set_yscale("log")
        ax.axvline(1.0, color="k", lw=0.8, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("singular value", fontsize=8)
        ax.tick_params(labelsize=7)
    return _finish(fig, axes, path, title)


def sorted_spectra(panels: Panels, path: str | Path, title: str = "") -> Path:
    """One panel per unit: singular values in descending order against their rank."""
    fig, axes = _grid(len(panels))
    for ax, (name, maps) in zip(axes, panels.items(), strict=False):
        for label, v in maps.items():
            v = np.sort(np.asarray(v).ravel())[::-1]
            ax.plot(np.arange(1, v.size + 1), v, lw=1.0, label=label)
        ax.axhline(1.0, color="k", lw=0.8, ls=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("rank", fontsize=8)
        ax.set_ylabel("singular value", fontsize=8)
        ax.tick_params(labelsize=7)
    return _finish(fig, axes, path, title)


def unit_curves(
    curves: Mapping[str, np.ndarray],
    path: str | Path,
    ylabel: str,
    title: str = "",
    log: bool = False,
) -> Path:
    """Several curves against the unit index k in one panel (e.g. frac_one per unit)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, y in curves.items():
        y = np.asarray(y, dtype=float)
        ax.plot(np.arange(len(y)), y, marker="o", ms=3, lw=1.2, label=label)
    ax.set_xlabel("unit k")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


UNIT_STATS = ("frac_one", "frac_gt_one", "sigma_max")


def unit_statistics_figure(units: Sequence[Mapping], path: str | Path, title: str = "") -> Path:
    """``frac_one``, ``frac_gt_one`` and ``sigma_max`` against the unit index, one line per
    map, with a band of +- one std over the probe images (``<stat>_std``): how much the
    spectra differ between images, and how they change with depth.

    ``units``: the ``analysis.units`` entries of a summary (``index`` and, per map, the
    statistics and their ``_std``)."""
    fig, axes = plt.subplots(1, len(UNIT_STATS), figsize=(4.2 * len(UNIT_STATS), 3.4))
    index = np.array([u["index"] for u in units])
    for ax, stat in zip(axes, UNIT_STATS, strict=True):
        for kind in ("sum", "unit"):
            rows = [u.get(kind) or {} for u in units]
            mean = np.array([r.get(stat, np.nan) for r in rows], dtype=float)
            if np.all(np.isnan(mean)):
                continue
            std = np.array([r.get(f"{stat}_std", 0.0) for r in rows], dtype=float)
            ax.plot(index, mean, marker="o", ms=3, lw=1.2, label=f"{kind} map")
            ax.fill_between(index, mean - std, mean + std, alpha=0.25)
        ax.set_xlabel("unit k")
        ax.set_title(stat, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1.02)
    return _save(fig, path)
