"""Run the configured spectrum analysis of a network and write its arrays and figures.

Shared by ``resnet-dyn-analyze`` and the training callbacks, so that both write
``analysis`` in one form: ``{"accuracy", "images", "units": [{index, stage, dim_in,
dim_out, sum: {...}, unit: {...}}], "stages": [...], "spectra_file", "figures"}``.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from resnet_dyn.config_checks import MAPS, check_analysis_config
from resnet_dyn.dynamics import accuracy, analyze_stages, analyze_units, spectra_arrays
from resnet_dyn.dynamics import with_intervention as intervene
from resnet_dyn.errors import ConfigError
from resnet_dyn.io import write_bytes_atomic
from resnet_dyn.models import ResidualNet
from resnet_dyn.plots import sorted_spectra, spectrum_histograms, unit_curves

Advance = Callable[[str], None]


def check_analysis(acfg: DictConfig, net: ResidualNet) -> dict[str, Any]:
    """Validate ``analysis.*`` against ``net``; the normalised options."""
    return check_analysis_config(acfg, len(net.units))


def probe(
    datamodule: Any, n: int, key: str, clamp: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` test images (at most all when ``clamp``), or an error naming ``key``."""
    available = len(datamodule.test_set)
    if not isinstance(n, int) or n < 1 or (n > available and not clamp):
        raise ConfigError(key, f"a number of images in 1..{available} (the test split)", n)
    return datamodule.probe_batch(min(n, available))


def perturbation_and_identity(
    net: ResidualNet,
    datamodule: Any,
    acfg: DictConfig,
    out_dir: Path,
    tag: str,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"perturbation": ..., "identity": ...}`` of ``net`` (eval mode) on the test images.

    Perturbations follow ``analysis.perturbation`` on the ``analysis.images`` probe images
    in pixel space; identity magnitudes average over ``analysis.identity.images``.
    A PNG of the adversarial and random curves against the unit index goes to ``out_dir``.
    """
    from resnet_dyn.dynamics.identity import identity_magnitudes
    from resnet_dyn.dynamics.perturbation import perturbation_analysis, to_pixels

    device = next(net.parameters()).device
    images, labels = probe(datamodule, acfg.images, "analysis.images")
    p = acfg.perturbation
    mean, std = datamodule.mean, datamodule.std
    pert = perturbation_analysis(
        net, to_pixels(images, mean, std).to(device), labels.to(device), mean, std,
        attack=p.attack, eps=p.eps, steps=p.steps, step_size=p.step_size,
        random_kind=p.random_kind, seed=seed,
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {"adversarial": pert["adversarial_rel"], "random": pert["random_rel"]}
    title = f"{p.attack}, eps={p.eps:g}: ||x_k(x+d) - x_k(x)|| / ||x_k(x)||"
    figure = unit_curves(
        curves, out_dir / f"perturbation_{tag}.png", "relative perturbation", title
    )
    pert["figure"] = figure.name
    result = {"perturbation": pert}
    if all(u.shortcut is not None for u in net.units):
        x, _ = probe(datamodule, acfg.identity.images, "analysis.identity.images", clamp=True)
        result["identity"] = identity_magnitudes(net, x.to(device))
    return result


def intervened(net: ResidualNet, intervention: dict[str, Any]) -> ResidualNet:
    """``net`` itself, or a changed copy when ``analysis.intervention`` asks for one."""
    alpha, beta = intervention.get("skip_scale"), intervention.get("weight_scale")
    if alpha is None and beta is None:
        return net
    return intervene(net, skip_scale=alpha, weight_scale=beta, units=intervention.get("units"))


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


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


def spectrum_analysis(
    net: ResidualNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    acfg: DictConfig,
    out_dir: Path,
    tag: str,
    advance: Advance | None = None,
) -> dict[str, Any]:
    """Analyse ``net`` (eval mode) at ``images`` as ``acfg`` says; npz and PNGs go to ``out_dir``.

    Returns the JSON-ready ``analysis`` summary and, under ``"_results"``, the full
    per-unit results (with raw spectra) for loggers.
    """
    a = check_analysis(acfg, net)
    start = time.time()
    net = intervened(net, a["intervention"])
    options = {"method": a["method"], "tol": a["tol"], "top_k": a["top_k"], "dtype": a["dtype"]}
    unit_maps = [m for m in a["maps"] if m != "stage"]
    progress = (lambda done, total: advance(f"{done}/{total}")) if advance else None
    results: list[dict] = []
    if unit_maps:
        hist = a["histogram"]
        results += analyze_units(
            net, images, a["units"], unit_maps, progress=progress,
            histogram=hist["units"], bins=hist["bins"], **options,
        )  # fmt: skip
    stages = (
        analyze_stages(net, images, progress=progress, **options) if "stage" in a["maps"] else []
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    spectra_file = write_bytes_atomic(
        out_dir / f"spectra_{tag}.npz", _npz_bytes(spectra_arrays(results + stages))
    )
    figures = []
    panels, counted = _panels(results + stages, "sigma"), _panels(results, "hist_counts")
    title = f"singular values ({tag}, {len(images)} images)"
    if panels or counted:
        hist = out_dir / f"spectra_hist_{tag}.png"
        figures.append(spectrum_histograms(panels, hist, title, counted))
    if panels:
        figures.append(sorted_spectra(panels, out_dir / f"spectra_sorted_{tag}.png", title))

    def strip(r: dict) -> dict:
        return {k: v for k, v in r.items() if k != "raw"}

    return {
        "accuracy": accuracy(net, images, labels),
        "images": len(images),
        "intervention": a["intervention"],
        "units": [strip(r) for r in results],
        "stages": [strip(r) for r in stages],
        "spectra_file": spectra_file.name,
        "figures": [f.name for f in figures],
        "time_s": time.time() - start,
        "_results": results + stages,
    }


LOGGED_STATS = ("frac_one", "frac_gt_one", "frac_zero", "sigma_max", "sigma_min", "cond")


def spectrum_scalars(analysis: dict[str, Any], prefix: str = "spectrum") -> dict[str, float]:
    """Flat scalars for loggers: ``spectrum/unit_07/sum/frac_one``, ``spectrum/accuracy``, ..."""
    out = {f"{prefix}/accuracy": float(analysis["accuracy"])}
    for r in analysis["units"] + analysis["stages"]:
        what = "stage" if "units" in r else "unit"
        for kind in MAPS:
            for stat in LOGGED_STATS:
                section = r.get(kind)
                value = section.get(stat) if isinstance(section, dict) else None
                if isinstance(value, (int, float)) and np.isfinite(value):
                    out[f"{prefix}/{what}_{r['index']:02d}/{kind}/{stat}"] = float(value)
    out[f"{prefix}/time_s"] = float(analysis["time_s"])
    return out


def wandb_spectra(analysis: dict[str, Any], prefix: str = "spectrum") -> dict[str, Any]:
    """W&B histograms of every computed spectrum and the figures, ready for ``run.log``."""
    import wandb

    out: dict[str, Any] = {}
    for r in analysis["_results"]:
        what = "stage" if "units" in r else "unit"
        for kind, raw in r["raw"].items():
            if "sigma" in raw:
                out[f"{prefix}/{what}_{r['index']:02d}/{kind}/hist"] = wandb.Histogram(
                    np.asarray(raw["sigma"]).ravel(), num_bins=128
                )
    return out


def dynamics_scalars(extra: dict[str, Any]) -> dict[str, float]:
    """Flat scalars of the perturbation and identity results for loggers."""
    out: dict[str, float] = {}
    pert = extra.get("perturbation")
    if pert:
        out["perturbation/attacked_accuracy"] = float(pert["attacked_accuracy"])
        out["perturbation/clean_accuracy"] = float(pert["clean_accuracy"])
        for k, (adv, rnd) in enumerate(
            zip(pert["adversarial_rel"], pert["random_rel"], strict=True)
        ):
            out[f"perturbation/adversarial_rel/state_{k:02d}"] = float(adv)
            out[f"perturbation/random_rel/state_{k:02d}"] = float(rnd)
    ident = extra.get("identity")
    if ident:
        out["identity/abs_mean"] = float(ident["abs_mean"])
        out["identity/scaled_mean"] = float(ident["scaled_mean"])
    return out
