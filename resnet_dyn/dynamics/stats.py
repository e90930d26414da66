"""Summary statistics of singular value spectra, exact or estimated, per image and over images.

    >>> stats = spectrum_stats(torch.tensor([2.0, 1.0, 1.0, 0.0]), tol=1e-3)
    >>> stats["frac_one"], stats["frac_gt_one"], stats["frac_zero"], stats["cond"]
    (0.5, 0.25, 0.25, inf)

Fractions are over the ``min(dim_in, dim_out)`` singular values: ``frac_one``
counts ``|sigma - 1| < tol``, ``frac_gt_one`` ``sigma > 1 + tol``, ``frac_zero``
``sigma < tol``. ``cond = sigma_max / sigma_min`` (inf when sigma_min is 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from resnet_dyn.dynamics.krylov import Quadrature

FRACTIONS = ("frac_one", "frac_gt_one", "frac_zero")


def sigma_intervals(tol: float) -> dict[str, tuple[float, float]]:
    """The open sigma-intervals counted by each fraction."""
    return {
        "frac_one": (1 - tol, 1 + tol),
        "frac_gt_one": (1 + tol, math.inf),
        "frac_zero": (-math.inf, tol),
    }


def condition(sigma_max: float, sigma_min: float) -> float:
    return math.inf if sigma_min <= 0 else sigma_max / sigma_min


def spectrum_stats(sigma: torch.Tensor | np.ndarray, tol: float = 1e-3) -> dict[str, float]:
    """Exact fractions and extremes of a full spectrum."""
    s = torch.as_tensor(sigma, dtype=torch.float64).flatten()
    out = {
        k: ((s > lo) & (s < hi)).double().mean().item()
        for k, (lo, hi) in sigma_intervals(tol).items()
    }
    smax, smin = s.max().item(), s.min().item()
    return out | {"sigma_max": smax, "sigma_min": smin, "cond": condition(smax, smin)}


def quadrature_fractions(quad: Quadrature, tol: float = 1e-3) -> dict[str, float]:
    """SLQ estimates of the fractions (its nodes are sigma^2) with ``<name>_unresolved``,
    the weight of nodes too coarse to place against the interval's ends (the size of the
    quadrature's bias), and ``<name>_err``: two standard errors over probes (2 std /
    sqrt(probes)) plus that weight. The standard error alone does not cover the truth on
    trained units, whose mass near sigma = 1 is continuous (tests/test_inertia.py checks
    the sum against exact counts)."""
    out = {}
    for key, (lo, hi) in sigma_intervals(tol).items():
        lam = (-math.inf if lo < 0 else lo**2, hi**2)
        per_probe = quad.mass(*lam)
        out[key] = per_probe.mean().item()
        unresolved = quad.unresolved(*lam).mean().item()
        se = per_probe.std().item() / math.sqrt(per_probe.numel())
        out[f"{key}_err"] = 2 * se + unresolved
        out[f"{key}_unresolved"] = unresolved
    return out


def summarize(per_image: Sequence[dict]) -> dict:
    """Mean and ``<key>_std`` (population std over images) of every number; ``<key>_err``
    and ``<key>_unresolved`` are averaged (an error bar made mostly of quadrature bias does
    not shrink over images); booleans must hold for every image; strings are joined when
    they differ."""
    out: dict = {}
    for key in per_image[0]:
        vals = [r[key] for r in per_image]
        if isinstance(vals[0], bool):
            out[key] = all(vals)
        elif key.endswith(("_err", "_unresolved", "_lo", "_hi")):
            out[key] = sum(vals) / len(vals)
        elif isinstance(vals[0], (int, float)):
            arr = np.asarray(vals, dtype=np.float64)
            out[key] = float(arr.mean())
            if np.all(arr == arr[0]):  # also an always-infinite cond
                out[f"{key}_std"] = 0.0
            else:
                out[f"{key}_std"] = float(arr.std()) if np.isfinite(arr).all() else math.nan
        else:
            out[key] = vals[0] if all(v == vals[0] for v in vals) else ",".join(sorted(set(vals)))
    return out
