"""Run the configured analyses of a network and write their arrays and figures.

Shared by ``resnet-dyn-analyze`` and the training callbacks, so that both write
``analysis`` in one form and log the same scalars and charts. Spectra
(:func:`spectrum_analysis`, whose ``summary`` is ``{"accuracy", "images", "units": [{index,
stage, dim_in, dim_out, sum: {...}, unit: {...}}], "stages": [...], "spectra_file",
"figures"}``);
perturbations (:func:`perturbation_run`) and identity magnitudes (:func:`identity_run`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from resnet_dyn.config.checks import check_analysis_config
from resnet_dyn.dynamics import accuracy, analyze_stages, analyze_units, spectra_arrays
from resnet_dyn.dynamics import with_intervention as intervene
from resnet_dyn.dynamics.maps import MAP_KINDS
from resnet_dyn.errors import ConfigError
from resnet_dyn.files import write_npz_atomic
from resnet_dyn.logs.wandb_charts import LOGGED_STATS
from resnet_dyn.models import ResidualNet
from resnet_dyn.plots.dynamics import perturbation_growth
from resnet_dyn.plots.spectra import sorted_spectra, spectrum_histograms, unit_statistics_figure

Advance = Callable[[str], None]


def check_analysis(acfg: DictConfig, net: ResidualNet) -> dict[str, Any]:
    """Validate ``analysis.*`` against ``net``; the normalised options."""
    return check_analysis_config(acfg, len(net.units))


def check_probe(datamodule: Any, n: Any, key: str = "analysis.images") -> int:
    """``n`` if the test split of ``datamodule`` (set up) holds that many images, else an
    error naming ``key``."""
    available = len(datamodule.test_set)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= available:
        raise ConfigError(key, f"a number of images in 1..{available} (the test split)", n)
    return n


def probe(
    datamodule: Any, n: int, key: str, clamp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (at most all when ``clamp``), or an error naming ``key``."""
    available = len(datamodule.test_set)
    check_probe(datamodule, min(n, available) if clamp and isinstance(n, int) else n, key)
    return datamodule.probe_batch(min(n, available))


def perturbation_run(
    net: ResidualNet,
    datamodule: Any,
    settings: dict[str, Any],
    images: int,
    out_dir: Path,
    tag: str,
    units: str | list[int] = "all",
    tol: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Adversarial vs random perturbations of ``net`` (eval mode) at the first ``images``
    test images, in pixel space: the one path of ``resnet-dyn-analyze`` and the perturbation
    callback. ``settings``: :func:`~resnet_dyn.config.checks.check_perturbation`.

    Returns the ``analysis.perturbation`` summary: what
    :func:`~resnet_dyn.dynamics.perturbation.perturbation_analysis` returns, plus
    ``final_ratio`` (adversarial over random relative size at the output; None when eps = 0
    moves nothing), ``images`` and ``figure`` (``perturbation_<tag>.png`` in ``out_dir``).
    With ``settings["project"]``, ``projection`` holds the shares of both perturbations on
    the expanding, neutral and contracting directions of each of ``units`` whose unit map
    has at most ``settings["project_max"]`` dimensions (default ``PROJECT_MAX``; a dense SVD
    each; larger ones are listed under ``projection["skipped"]``), for singular values
    within ``tol`` of 1 counted as neutral. ``units``: "all", one index or a list of them.
    ``seed``: the PGD random start's and the random perturbation's (the job's ``seed``).
    """
    from resnet_dyn.dynamics.perturbation import perturbation_analysis, to_pixels

    device = next(net.parameters()).device
    x, labels = probe(datamodule, images, "analysis.images")
    mean, std = datamodule.mean, datamodule.std
    settings = dict(settings)
    project, skipped = [], []
    project_max = settings.pop("project_max", PROJECT_MAX)
    asked = settings.pop("project", False)
    if asked:
        with torch.no_grad():
            sizes = [s[0].numel() for s in net.unit_inputs(x[:1].to(device))]
        chosen = [units] if isinstance(units, int) else units
        chosen = range(len(net.units)) if chosen == "all" else chosen
        for k in chosen:
            (project if min(sizes[k], sizes[k + 1]) <= project_max else skipped).append(k)
    result = perturbation_analysis(
        net, to_pixels(x, mean, std).to(device), labels.to(device), mean, std, **settings,
        project_units=project, tol=tol, seed=seed,
    )  # fmt: skip
    if asked:
        # Every unit too large (project_max): still say so, rather than drop the section.
        empty = {"map": "unit", "tol": tol, "units": [], "adversarial": {}, "random": {}}
        result.setdefault("projection", empty)["skipped"] = skipped
    adv, rnd = result["adversarial_rel"][-1], result["random_rel"][-1]
    title = f"{result['attack']}, eps {result['eps']:.4g}, {len(labels)} images, {tag}"
    figure = perturbation_growth(result, out_dir / f"perturbation_{tag}.png", title)
    return {
        **result,
        "final_ratio": adv / rnd if rnd > 0 else None,
        "images": len(labels),
        "figure": figure.name,
    }


# Default of analysis.perturbation.project_max: dimensions of a unit map up to which
# perturbations are projected (a dense SVD of its Jacobian each).
PROJECT_MAX = 4096

PERTURBATION_SCALARS = (
    "clean_accuracy", "attacked_accuracy", "random_accuracy", "perturbation_l2", "final_ratio",
)  # fmt: skip


def perturbation_scalars(pert: dict[str, Any]) -> dict[str, float]:
    """``perturbation/<field>`` scalars of a :func:`perturbation_run` summary, for loggers."""
    return {
        f"perturbation/{k}": float(pert[k]) for k in PERTURBATION_SCALARS if pert[k] is not None
    }


def identity_run(net: ResidualNet, datamodule: Any, images: int) -> dict[str, Any] | None:
    """How far each block of ``net`` is from the identity, averaged over ``images`` test
    images (all of them when fewer); None for a net without skip connections."""
    from resnet_dyn.dynamics.identity import identity_magnitudes

    if any(u.shortcut is None for u in net.units):
        return None
    x, _ = probe(datamodule, images, "analysis.identity.images", clamp=True)
    return identity_magnitudes(net, x.to(next(net.parameters()).device))


def intervened(net: ResidualNet, intervention: dict[str, Any]) -> ResidualNet:
    """``net`` itself, or a changed copy when ``analysis.intervention`` asks for one."""
    alpha, beta = intervention.get("skip_scale"), intervention.get("weight_scale")
    if alpha is None and beta is None:
        return net
    return intervene(net, skip_scale=alpha, weight_scale=beta, units=intervention.get("units"))


def _panels(results: Sequence[dict], field: str) -> dict[str, dict[str, Any]]:
    """Per unit, per map: all singular values (``field="sigma"``) or the exact histogram
    summed over images (``"hist_counts"``: ``(counts, edges)``), where there is one."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        for kind, raw in r["raw"].items():
            if field in raw:
                value = raw[field] if field == "sigma" else (raw[field].sum(0), raw["hist_edges"])
                out.setdefault(r["name"], {})[kind] = value
    return out


def _strip(r: dict) -> dict:
    """A unit's or stage's result without its raw spectra: what summary.json holds."""
    return {k: v for k, v in r.items() if k != "raw"}


@dataclass(frozen=True)
class Spectra:
    """What :func:`compute_spectra` finds: per-unit and per-stage results, each with its raw
    spectra under ``"raw"``, and the accuracy of the analysed network on the probe images."""

    units: list[dict]
    stages: list[dict]
    accuracy: float
    images: int
    intervention: dict[str, Any]


@dataclass(frozen=True)
class SpectrumAnalysis:
    """A spectrum analysis as :func:`spectrum_analysis` leaves it: ``summary``, the
    JSON-ready ``analysis`` section; ``results``, every unit's then stage's result with its
    raw spectra (for W&B histograms); ``folder``, where the npz and figures that ``summary``
    names are."""

    summary: dict[str, Any]
    results: list[dict]
    folder: Path


def compute_spectra(
    net: ResidualNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    acfg: DictConfig,
    advance: Advance | None = None,
    seed: int = 0,
) -> Spectra:
    """The spectra ``acfg`` asks for of ``net`` (eval mode) at ``images``; nothing written.
    ``analysis.intervention`` is applied by the caller (:func:`intervened`), so that every
    analysis sees the same network; it is recorded here. ``seed``: the random probes of the
    matrix-free methods (the job's ``seed``)."""
    a = check_analysis(acfg, net)
    options = {key: a[key] for key in ("method", "tol", "top_k", "dtype")} | {"seed": seed}
    # analysis.solver: map_spectrum's sizes and budgets, for unit and stage maps alike.
    options |= a["solver"]
    unit_maps = [m for m in a["maps"] if m != "stage"]
    progress = (lambda done, total: advance(f"{done}/{total}")) if advance else None
    units: list[dict] = []
    if unit_maps:
        hist = a["histogram"]
        units = analyze_units(
            net, images, a["units"], unit_maps, progress=progress,
            histogram=hist["units"], bins=hist["bins"], workers=a["workers"], **options,
        )  # fmt: skip
    stages = (
        analyze_stages(net, images, progress=progress, **options) if "stage" in a["maps"] else []
    )
    return Spectra(
        units=units,
        stages=stages,
        accuracy=accuracy(net, images, labels),
        images=len(images),
        intervention=a["intervention"],
    )


def write_spectra(spectra: Spectra, out_dir: Path, tag: str) -> tuple[Path, list[Path]]:
    """``spectra_<tag>.npz`` (every raw spectrum) and the PNG figures in ``out_dir``: the
    histograms and sorted spectra of the maps that have them, the per-unit statistics."""
    results = spectra.units + spectra.stages
    out_dir.mkdir(parents=True, exist_ok=True)
    spectra_file = write_npz_atomic(out_dir / f"spectra_{tag}.npz", spectra_arrays(results))
    figures = []
    panels, counted = _panels(results, "sigma"), _panels(spectra.units, "hist_counts")
    title = f"singular values ({tag}, {spectra.images} images)"
    if panels or counted:
        hist = out_dir / f"spectra_hist_{tag}.png"
        figures.append(spectrum_histograms(panels, hist, title, counted))
    if panels:
        figures.append(sorted_spectra(panels, out_dir / f"spectra_sorted_{tag}.png", title))
    if spectra.units:
        units_title = f"per-unit statistics ({tag}; band: +- std over {spectra.images} images)"
        figures.append(
            unit_statistics_figure(
                [_strip(r) for r in spectra.units],
                out_dir / f"spectra_units_{tag}.png",
                units_title,
            )
        )
    return spectra_file, figures


def spectrum_analysis(
    net: ResidualNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    acfg: DictConfig,
    out_dir: Path,
    tag: str,
    advance: Advance | None = None,
    seed: int = 0,
) -> SpectrumAnalysis:
    """:func:`compute_spectra`, then :func:`write_spectra` into ``out_dir``: the one path of
    ``resnet-dyn-analyze`` and the spectrum callback."""
    start = time.time()
    spectra = compute_spectra(net, images, labels, acfg, advance, seed)
    spectra_file, figures = write_spectra(spectra, out_dir, tag)
    summary = {
        "accuracy": spectra.accuracy,
        "images": spectra.images,
        "intervention": spectra.intervention,
        "units": [_strip(r) for r in spectra.units],
        "stages": [_strip(r) for r in spectra.stages],
        "spectra_file": spectra_file.name,
        "figures": [f.name for f in figures],
        "time_s": time.time() - start,
    }
    return SpectrumAnalysis(summary, spectra.units + spectra.stages, out_dir)


def spectrum_scalars(analysis: dict[str, Any], prefix: str = "spectrum") -> dict[str, float]:
    """Flat scalars for loggers: ``spectrum/unit_07/sum/frac_one``, ``spectrum/accuracy``, ..."""
    out = {f"{prefix}/accuracy": float(analysis["accuracy"])}
    for r in analysis["units"] + analysis["stages"]:
        what = "stage" if "units" in r else "unit"
        for kind in MAP_KINDS:
            for stat in LOGGED_STATS:
                section = r.get(kind)
                value = section.get(stat) if isinstance(section, dict) else None
                if isinstance(value, (int, float)) and np.isfinite(value):
                    out[f"{prefix}/{what}_{r['index']:02d}/{kind}/{stat}"] = float(value)
    out[f"{prefix}/time_s"] = float(analysis["time_s"])
    return out


def identity_scalars(ident: dict[str, Any]) -> dict[str, float]:
    """``identity/abs_mean`` and ``identity/scaled_mean`` for loggers."""
    return {f"identity/{k}": float(ident[k]) for k in ("abs_mean", "scaled_mean")}
