"""``resnet-dyn-analyze``: linearize a trained network unit by unit and take the SVD of each map.

    resnet-dyn-analyze checkpoint.path=outputs/2026-11-23/12-00-00-000000/checkpoints/last.ckpt
    resnet-dyn-analyze model=cifar_resnet model.depth=56 checkpoint.path=resnet56.th \\
        checkpoint.format=akamaster data=image_folder data.root=imgs \\
        data.classes=[airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck] \\
        data.mean=[0.485,0.456,0.406] data.std=[0.229,0.224,0.225] \\
        analysis.units=[19,22] analysis.images=4 analysis.maps=[sum,unit]

Writes into its job folder: ``summary.json`` (``analysis.accuracy`` on the analysed
images; ``analysis.units``, one entry per unit with the statistics of each map, means
over images and their std; ``analysis.perturbation``, adversarial vs random
perturbations per unit; ``analysis.identity``, ||F(x_l)|| and ||F(x_l)|| / ||x_l||
per block), ``analysis/spectra_final.npz`` (raw spectra), PNG figures (singular-value
histograms, sorted spectra, perturbation growth), and an offline W&B run.
"""

from __future__ import annotations

from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from resnet_dyn.analysis.job import run_analysis_job
from resnet_dyn.cli import CONFIG_DIR
from resnet_dyn.dynamics.maps import MAP_KINDS
from resnet_dyn.errors import UserError, exit_for_user_error


def _cell(section: dict[str, Any], key: str) -> str:
    """A statistic for the console; an extreme that did not converge shows as such, with
    the bound it is, and a fraction whose counts were not all certified as the interval
    they allow (never as a plain number)."""
    if section.get(f"{key}_converged") is False:
        side = ">=" if key == "sigma_max" else "<="
        return f"not converged ({side} {section[f'{key}_bound']:.4f})"
    lo, hi = section.get(f"{key}_lo"), section.get(f"{key}_hi")
    if lo is not None and hi is not None and lo != hi:
        return f"[{lo:.4f}, {hi:.4f}]"
    return f"{section[key]:.4f}"


def _print_units(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    a = summary["analysis"]
    table = Table(title=f"accuracy on {a['images']} images: {a['accuracy']:.3f}")
    stats = ("frac_one", "frac_gt_one", "frac_zero", "sigma_max", "sigma_min")
    for col in ("unit", "stage", "map", *stats, "method"):
        table.add_column(col)
    for r in a["units"] + a["stages"]:
        for kind in MAP_KINDS:
            s = r.get(kind)
            if isinstance(s, dict):
                where = [str(r["index"]), str(r.get("stage", r["index"])), kind]
                table.add_row(*where, *(_cell(s, k) for k in stats), s["method"])
    Console(width=max(Console().width, 132)).print(table)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze")
def main(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = run_analysis_job(cfg)
    except UserError as exc:
        exit_for_user_error(exc, multirun)
        return
    _print_units(summary)
    print(f"results in {cfg.paths.output_dir}")


if __name__ == "__main__":
    main()
