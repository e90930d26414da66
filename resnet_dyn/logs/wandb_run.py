"""The W&B run of a training or analysis job: one set-up and one failure policy for both.

    run = start_wandb(cfg, job_dir)   # None with logger=none, or when W&B fails (warned)
    ...
    finish_wandb()

The run is offline by default (``<job dir>/wandb/offline-run-*``; upload with ``wandb sync``).
W&B is a view of the results, never a reason to lose them: when it cannot start, the job
warns once and goes on with its summary.json and CSV logs.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("resnet_dyn")


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def wandb_group(cfg: DictConfig) -> str | None:
    """``logger.wandb.group``, else the sweep's folder (date/time) under ``-m``, else none."""
    if cfg.logger.wandb.group:
        return cfg.logger.wandb.group
    if _multirun():
        return "/".join(Path(HydraConfig.get().sweep.dir).parts[-2:])
    return None


def start_wandb(cfg: DictConfig, job_dir: Path) -> Any:
    """The job's W&B run, started now (so that a failure shows before any work), or None
    with ``logger=none`` or when W&B cannot start."""
    wb = cfg.logger.get("wandb")
    if not wb:
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        import wandb

        return wandb.init(
            project=wb.project,
            entity=wb.entity,
            mode="offline" if wb.offline else "online",
            dir=str(job_dir),
            group=wandb_group(cfg),
            job_type=wb.job_type,
            tags=list(cfg.tags),
            name=job_dir.name if _multirun() else None,
            config=OmegaConf.to_container(cfg, resolve=True),
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("W&B unavailable, the job goes on without it: %s", first)
        finish_wandb()
        return None


def finish_wandb() -> None:
    """Finish the W&B run of this process, if one is open."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


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
