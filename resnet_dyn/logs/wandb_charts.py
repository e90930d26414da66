"""What W&B shows of the analyses, built from their results and ready for ``run.log``:
tables, line charts, histograms and the PNG figures.

    run.log({**wandb_spectra(summary, results, folder, epoch), **perturbation_charts(...)})

Every W&B object of the project is built here or in :mod:`.wandb_run`, so that the analyses
and callbacks hand over plain data; each function imports wandb itself, so that a job
without W&B never imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from resnet_dyn.dynamics.maps import MAP_KINDS
from resnet_dyn.dynamics.perturbation import SHARES

# The statistics of each map logged as scalars (spectrum/unit_07/sum/frac_one, ...) and
# the columns of the spectrum table, which adds what a table holds better than a curve.
LOGGED_STATS = ("frac_one", "frac_gt_one", "frac_zero", "sigma_max", "sigma_min", "cond")
# An unconverged extreme is NaN in its column and False in its *_converged column.
TABLE_STATS = (
    *LOGGED_STATS,
    "frac_one_std",
    "frac_one_err",
    "fractions",
    "method",
    "count_route",
    "sigma_max_converged",
    "sigma_min_converged",
)


def wandb_curves(
    xs: Sequence[float], curves: Mapping[str, Sequence[float]], title: str, xname: str
) -> Any:
    """A W&B line plot of several curves against the same x (e.g. one value per unit)."""
    import wandb

    return wandb.plot.line_series(
        xs=list(xs),
        ys=[list(map(float, y)) for y in curves.values()],
        keys=list(curves),
        title=title,
        xname=xname,
    )


def wandb_image(path: Path) -> Any:
    """A PNG file as a W&B image."""
    import wandb

    return wandb.Image(str(path))


def spectrum_rows(summary: Mapping[str, Any], epoch: int) -> tuple[list[str], list[list[Any]]]:
    """One row per (epoch, unit or stage, map) of a spectrum analysis' summary: its
    statistics."""
    columns = ["epoch", "unit", "stage", "map", "dim", *TABLE_STATS]
    rows = []
    for r in summary["units"] + summary["stages"]:
        unit = r["index"] if "units" not in r else -1  # a whole stage's map: unit -1
        stage = r.get("stage", r["index"])
        for kind in MAP_KINDS:
            section = r.get(kind)
            if isinstance(section, dict):
                dim = min(r["dim_in"], r["dim_out"])
                rows.append([epoch, unit, stage, kind, dim, *(section.get(k) for k in TABLE_STATS)])
    return columns, rows


def wandb_spectra(
    summary: Mapping[str, Any], results: Sequence[Mapping[str, Any]], folder: Path, epoch: int
) -> dict[str, Any]:
    """What W&B shows of a spectrum analysis (its ``summary``; ``results`` with their raw
    spectra; ``folder`` holding the figures the summary names): the table of
    :func:`spectrum_rows` (``spectrum/table``), ``frac_one`` against the unit index, one
    line per map (``spectrum/frac_one_by_unit``), a histogram of every computed spectrum,
    and the PNG figures (``figures/spectra_hist``, ...)."""
    import wandb

    columns, rows = spectrum_rows(summary, epoch)
    table = wandb.Table(columns=columns, data=[r for r in rows if r[1] >= 0])
    out: dict[str, Any] = {
        "spectrum/table": table,
        "spectrum/frac_one_by_unit": wandb.plot.line(
            table, "unit", "frac_one", stroke="map", title=f"frac_one per unit (epoch {epoch})"
        ),
    }
    for r in results:
        what = "stage" if "units" in r else "unit"
        for kind, raw in r["raw"].items():
            if "sigma" in raw:
                out[f"spectrum/{what}_{r['index']:02d}/{kind}/hist"] = wandb.Histogram(
                    np.asarray(raw["sigma"]).ravel(), num_bins=128
                )
    for name in summary["figures"]:
        out[f"figures/{Path(name).stem.rsplit('_', 1)[0]}"] = wandb_image(folder / name)
    return out


def perturbation_charts(pert: Mapping[str, Any], when: str, folder: Path) -> dict[str, Any]:
    """W&B line plots of the relative and absolute perturbation sizes against the state
    index, the figure (in ``folder``) as ``figures/perturbation``, and with a projection the
    table of its shares per unit and perturbation kind."""
    import wandb

    k = range(len(pert["adversarial_rel"]))
    charts = {
        f"perturbation/{scale}": wandb_curves(
            k,
            {kind: pert[f"{kind}_{scale}"] for kind in ("adversarial", "random")},
            f"{scale} perturbation size per unit ({when})",
            "unit k",
        )
        for scale in ("rel", "abs")
    }
    charts["figures/perturbation"] = wandb_image(folder / pert["figure"])
    proj = pert.get("projection")
    if proj:
        rows = [
            [unit, kind, *(proj[kind][share][i] for share in SHARES)]
            for i, unit in enumerate(proj["units"])
            for kind in ("adversarial", "random")
        ]
        charts["perturbation/projection"] = wandb.Table(
            columns=["unit", "perturbation", *SHARES], data=rows
        )
    return charts
