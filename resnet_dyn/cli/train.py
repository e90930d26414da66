"""``resnet-dyn``: train one model from the Hydra configs in ``conf/``, or sweep with ``-m``.

    resnet-dyn                                          # quickstart: ResNet-20 on digits, CPU
    resnet-dyn model.depth=56 data=cifar10 trainer=gpu
    resnet-dyn -m model.depth=8,14,20 model.skip_scale=0.5,1.0 model.weight_scale=0.5,1.0
    resnet-dyn -m hydra/launcher=joblib model.depth=8,14   # the same jobs in parallel processes

Each job writes into its folder: ``summary.json`` (status, resolved config, final
metrics), ``csv/`` metrics, ``checkpoints/`` and, with ``logger=wandb`` (default),
an offline W&B run under ``wandb/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from resnet_dyn.cli import CONFIG_DIR
from resnet_dyn.errors import UserError, exit_for_user_error
from resnet_dyn.training.job import run_job

log = logging.getLogger("resnet_dyn")


def _print_result(job_dir: Path, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary['status']}: {job_dir}", show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.get("metrics", {}).items():
        table.add_row(key, f"{value:.4f}")
    table.add_row("epochs", str(summary.get("epochs")))
    table.add_row("wall_s", f"{summary['wall_s']:.1f}")
    Console(stderr=False).print(table)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    torch.set_float32_matmul_precision("high")
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        summary = run_job(cfg)
        _print_result(Path(cfg.paths.output_dir), summary)
    except UserError as exc:
        exit_for_user_error(exc, multirun)
        return None
    except Exception:
        if not multirun:
            raise
        log.exception("job failed; recorded in its summary.json, the sweep goes on")
        return None
    return summary.get("metrics", {}).get("val/acc")


if __name__ == "__main__":
    main()
