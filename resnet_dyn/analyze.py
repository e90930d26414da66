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

import os
import time
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from resnet_dyn.analysis import (
    check_analysis,
    dynamics_scalars,
    perturbation_and_identity,
    probe,
    spectrum_analysis,
    spectrum_scalars,
    wandb_spectra,
)
from resnet_dyn.checkpoints import load_model
from resnet_dyn.config import build
from resnet_dyn.errors import ConfigError, UserError, exit_for_user_error
from resnet_dyn.io import write_json_atomic
from resnet_dyn.models import ResidualNet
from resnet_dyn.progress import unit_progress
from resnet_dyn.train import CONFIG_DIR, finish_wandb


def load_network(cfg: DictConfig, input_shape: tuple, num_classes: int) -> ResidualNet:
    """The network to analyse, in eval mode: from ``checkpoint.path``, or at initialisation."""
    ck = cfg.checkpoint
    if ck.path is None:
        net = build(cfg.model, input_shape=input_shape, num_classes=num_classes)
        return net.eval()
    depth = cfg.model.get("depth")
    net, info = load_model(ck.path, ck.format, depth=depth, num_classes=num_classes)
    if tuple(info["input_shape"]) != tuple(input_shape):
        raise ConfigError(
            "data",
            f"images of shape {tuple(info['input_shape'])} for this model",
            tuple(input_shape),
        )
    return net


def start_wandb(cfg: DictConfig, job_dir: Path) -> Any:
    """An offline (by default) W&B run in the job folder, or None with ``logger=none``."""
    wb = cfg.logger.get("wandb")
    if not wb:
        return None
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    return wandb.init(
        project=wb.project,
        entity=wb.entity,
        mode="offline" if wb.offline else "online",
        dir=str(job_dir),
        group=wb.group,
        job_type=wb.job_type,
        tags=list(cfg.tags),
        config=OmegaConf.to_container(cfg, resolve=True),
    )


def analyze(cfg: DictConfig) -> dict[str, Any]:
    """Load, analyse, log; always finish the W&B run and write summary.json."""
    start = time.time()
    job_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {
        "status": "failed",
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    try:
        L.seed_everything(cfg.seed, verbose=False)
        datamodule = build(cfg.data)
        net = load_network(cfg, datamodule.input_shape, datamodule.num_classes)
        a = check_analysis(cfg.analysis, net)
        images, labels = probe(datamodule, a["images"], "analysis.images")
        device = torch.device(cfg.device)
        net = net.to(device)
        run = start_wandb(cfg, job_dir)
        total = (len(net.units) if a["units"] == "all" else len(a["units"])) * any(
            m != "stage" for m in a["maps"]
        ) + (net.num_stages if "stage" in a["maps"] else 0)
        with unit_progress(total, "spectra") as advance:
            result = spectrum_analysis(
                net, images.to(device), labels.to(device), cfg.analysis, job_dir / "analysis",
                "final", advance,
            )  # fmt: skip
        extra = perturbation_and_identity(
            net, datamodule, cfg.analysis, job_dir / "analysis", "final", cfg.seed
        )
        if run is not None:
            run.log(
                {**spectrum_scalars(result), **wandb_spectra(result), **dynamics_scalars(extra)}
            )
        result.pop("_results")
        result.update(extra)
        summary.update(status="completed", analysis=result)
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        finish_wandb()
        summary["wall_s"] = time.time() - start
        write_json_atomic(job_dir / "summary.json", summary)
    return summary


def _print_units(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    a = summary["analysis"]
    table = Table(title=f"accuracy on {a['images']} images: {a['accuracy']:.3f}")
    stats = ("frac_one", "frac_gt_one", "frac_zero", "sigma_max", "sigma_min")
    for col in ("unit", "stage", "map", *stats, "method"):
        table.add_column(col)
    for r in a["units"] + a["stages"]:
        for kind in ("sum", "unit", "stage"):
            s = r.get(kind)
            if isinstance(s, dict):
                where = [str(r["index"]), str(r.get("stage", r["index"])), kind]
                table.add_row(*where, *(f"{s[k]:.4f}" for k in stats), s["method"])
    Console(width=max(Console().width, 132)).print(table)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="analyze")
def main(cfg: DictConfig) -> None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = analyze(cfg)
    except UserError as exc:
        exit_for_user_error(exc, multirun)
        return
    _print_units(summary)
    print(f"results in {cfg.paths.output_dir}")


if __name__ == "__main__":
    main()
