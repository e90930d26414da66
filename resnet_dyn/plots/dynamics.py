"""Figures of the dynamics analyses as PNG files: perturbation growth, residual trajectories, depth.

perturbation_growth(perturbation_analysis(...), "perturbation.png")
class_trajectories(mean, std, classes=[0, 1], path="trajectories.png")   # (C, T, N) arrays
depth_per_epoch([15, 14, 14], [0.002, 0.03, 0.02], threshold=0.01, path="depth.png")
band_line(ax, x, mean, std, label="3 seeds")     # a mean with a band (or bars) of +- std
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from resnet_dyn.plots.spectra import _grid, _save, plt

# Beyond this many neurons one panel per neuron is unreadable; the norm is drawn instead.
MAX_NEURON_PANELS = 8


def _integer_x(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _stage_boundaries(ax: Any, unit_stage: Sequence[int]) -> None:
    # State k is the input of unit k, so a downsampling unit k sits between states k and k+1.
    for k in range(1, len(unit_stage) - 1):
        if unit_stage[k] != unit_stage[k - 1]:
            ax.axvline(k + 0.5, color="gray", lw=0.8, ls=":")


def perturbation_axes(ax: Any, result: Mapping[str, Any], scale: str = "rel") -> None:
    """Adversarial and random curves (``rel`` or ``abs``) of one perturbation result against
    the state index, log scale, with the stage boundaries marked."""
    for kind in ("adversarial", "random"):
        y = np.asarray(result[f"{kind}_{scale}"], dtype=float)
        ax.plot(np.arange(len(y)), y, marker="o", ms=3, lw=1.2, label=kind)
    _stage_boundaries(ax, result.get("unit_stage", []))
    ax.set_yscale("log")
    _integer_x(ax)
    ax.set_xlabel("state k (input of unit k)")


def band_line(
    ax: Any,
    x: Sequence[float],
    mean: Sequence[float | None],
    spread: Sequence[float | None] | None = None,
    label: str | None = None,
    *,
    bars: bool = False,
    step: bool = False,
    **style: Any,
) -> Any:
    """``mean`` against ``x`` with a shaded band of +- ``spread`` (error bars instead with
    ``bars`` or a single point; none where the spread is None or NaN, e.g. one seed);
    ``step`` draws a step line. ``style``: matplotlib line keywords. Returns the line."""
    x = np.asarray(x, dtype=float)
    y = np.array([np.nan if v is None else v for v in mean], dtype=float)
    style = {"marker": "o", "ms": 3, "lw": 1.2, **style}
    if step:
        (line,) = ax.step(x, y, where="post", label=label, **style)
    else:
        (line,) = ax.plot(x, y, label=label, **style)
    s = np.array([np.nan if v is None else v for v in (spread if spread is not None else [])])
    if not s.size or not np.isfinite(s.astype(float)).any():
        return line
    s = s.astype(float)
    if bars or len(x) == 1:
        yerr = np.nan_to_num(s)
        ax.errorbar(x, y, yerr=yerr, fmt="none", ecolor=line.get_color(), capsize=2, lw=0.9)
    else:
        where = "post" if step else None
        ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.2, lw=0, step=where)
    return line


def unit_stage_lines(ax: Any, index: Sequence[int], stage: Sequence[Any]) -> None:
    """Dotted lines between neighbouring analysed units of different stages (x: unit index)."""
    for k in range(1, min(len(index), len(stage))):
        if stage[k] != stage[k - 1]:
            ax.axvline((index[k - 1] + index[k]) / 2, color="gray", lw=0.8, ls=":")


def perturbation_mean_axes(
    ax: Any,
    stats: Mapping[str, tuple[Sequence[float], Sequence[float] | None]],
    unit_stage: Sequence[int] = (),
) -> None:
    """Like :func:`perturbation_axes` for the mean over several runs: ``stats`` holds per kind
    (``adversarial``, ``random``) the mean curve and its std (a band; None: no band)."""
    for kind in ("adversarial", "random"):
        mean, std = stats[kind]
        band_line(ax, np.arange(len(mean)), mean, std, label=kind)
    _stage_boundaries(ax, unit_stage)
    ax.set_yscale("log")
    _integer_x(ax)
    ax.set_xlabel("state k (input of unit k)")


def perturbation_growth(result: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Adversarial vs random perturbations against the state index k (input of unit k, the
    last point the network's output): relative and absolute size, log scale; dotted lines
    mark the downsampling units between stages."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, scale in zip(axes, ("rel", "abs"), strict=True):
        perturbation_axes(ax, result, scale)
        ax.set_title(
            "||x_k(x+d) - x_k(x)||" + (" / ||x_k(x)||" if scale == "rel" else ""), fontsize=9
        )
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1.02)
    return _save(fig, path)


def class_trajectories(
    mean: np.ndarray,
    std: np.ndarray,
    classes: Sequence[int],
    path: str | Path,
    title: str = "",
) -> Path:
    """Per-class mean residual y(t) (shaded: +- one std) against the layer t = 1..T.

    ``mean``, ``std``: (classes, layers, neurons...). One panel per neuron up to
    ``MAX_NEURON_PANELS`` neurons; beyond, one panel of the norm of each class's mean.
    """
    mean = np.asarray(mean, dtype=float)
    mean = mean.reshape(*mean.shape[:2], -1)
    std = np.asarray(std, dtype=float).reshape(mean.shape)
    t = np.arange(1, mean.shape[1] + 1)
    per_neuron = mean.shape[2] <= MAX_NEURON_PANELS
    fig, axes = _grid(mean.shape[2], 3.2) if per_neuron else _grid(1, 5.0)
    for i, ax in enumerate(axes if per_neuron else axes[:1]):
        for c, label in enumerate(classes):
            if per_neuron:
                y, s = mean[c, :, i], std[c, :, i]
                ax.fill_between(t, y - s, y + s, alpha=0.2)
            else:
                y = np.linalg.norm(mean[c], axis=1)
            ax.plot(t, y, lw=1.2, label=f"class {label}")
        ax.set_title(f"neuron {i}" if per_neuron else "||class mean of y(t)||", fontsize=9)
        ax.set_xlabel("layer t", fontsize=8)
        _integer_x(ax)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("residual y(t)", fontsize=8)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1.04)
    return _save(fig, path)


def depth_per_epoch(
    depths: Sequence[int],
    convergence: Sequence[float | None],
    threshold: float,
    path: str | Path,
    title: str = "",
) -> Path:
    """Depth against the epoch (``depths[0]``: before training) and the pruning criterion of
    every epoch against its threshold (log scale; missing values where the net had one layer)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    left.step(np.arange(len(depths)), depths, where="post", marker="o", ms=3)
    left.set_xlabel("epoch")
    left.set_ylabel("layers (after the epoch)")
    left.yaxis.set_major_locator(MaxNLocator(integer=True))
    left.grid(alpha=0.3)
    values = np.array([np.nan if v is None else v for v in convergence], dtype=float)
    right.plot(np.arange(1, len(values) + 1), values, marker="o", ms=3, label="criterion")
    if threshold > 0:
        right.axhline(threshold, color="k", lw=0.8, ls=":", label="threshold")
    if np.any(values > 0):
        right.set_yscale("log")
    right.set_xlabel("epoch")
    for ax in (left, right):
        _integer_x(ax)
    right.set_ylabel("mean |y(T) - y(T-1)|")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10, y=1.02)
    return _save(fig, path)
