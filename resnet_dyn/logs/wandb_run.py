"""The W&B run of a training or analysis job: one set-up and one failure policy for both.

    run = start_wandb(cfg, job_dir)   # None with logger=none, or when W&B fails (warned)
    ...
    finish_wandb(exit_code, {"status": "completed", ...})

The run is offline by default (``<job dir>/wandb/offline-run-*``; upload with ``wandb sync``).
W&B is a view of the results, never a reason to lose them: when it cannot start, the job
warns once and goes on with its summary.json and CSV logs.

What a run carries, so that a sweep reads well in the W&B UI:

* **name**: the job's swept overrides and its number, e.g. ``model.depth=14,seed=1 #3``
  (a single run: its command-line overrides);
* **group** (``logger.wandb.group``): ``replicates`` (default) groups runs whose configs
  differ only in the seed, so W&B's group mean and band are over seeds and different
  configs are never averaged; ``sweep`` groups a whole sweep; any other string is the
  group's name;
* **config**: the resolved config without machine paths, ``_target_`` entries (a node's
  class is under ``class``) or blocks repeated by interpolation (the full config stays in
  the job folder), plus ``overrides``, ``swept`` and ``sweep_id``; the sweep is also a tag,
  ``sweep:<sweep_id>``;
* **summary**: ``val/acc`` keeps its maximum (column ``val/acc.max``), ``val/loss`` and
  ``train/loss`` their minimum (``.min``), other metrics their last value; the job adds
  ``status``, ``epochs``, ``wall_s``, ``params`` and its failure fields, and the run ends
  with exit code 0 only when the job completed;
* **axes**: training metrics are plotted against ``trainer/global_step``; spectrum,
  perturbation, identity, noise and Lagzi scalars against ``epoch``; the per-unit scalars
  (``spectrum/unit_07/...``) are hidden from the default workspace, their tables (one row
  per epoch, unit and map) are not;
* **resuming**: the run id is kept in ``<job dir>/wandb/run_id``, so a resumed job
  (preemption, a kill, a requeue) continues the same run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import string
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("resnet_dyn")

SEED_KEYS = ("seed",)  # overrides whose values make replicates of one config
RUN_ID_FILE = "run_id"
# Summary of each metric in the runs table: the best epoch, not the last.
SUMMARIES = {"val/acc": "max", "val/loss": "min", "train/loss": "min", "train/acc": "max"}
# Training metrics against the optimizer step (Lightning's step, also in the CSV logs).
TRAINING_AXIS = ("train/*", "val/*", "test/*", "lr-*")
# Scalars of the analyses, plotted against the epoch they describe.
EPOCH_AXIS = ("spectrum/*", "perturbation/*", "identity/*", "noise/*", "lagzi/*", "figures/*")
HIDDEN = ("spectrum/unit_*", "spectrum/stage_*")


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_overrides() -> dict[str, str]:
    """The job's command-line overrides, ``{"model.depth": "14", "seed": "1"}``."""
    if not HydraConfig.initialized():
        return {}
    out = {}
    for item in HydraConfig.get().overrides.task:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def sweep_id(sweep_dir: str | os.PathLike) -> str:
    """A sweep's id: the last two parts of its folder, e.g. ``2026-11-30/13-00-00-123456``."""
    return "/".join(Path(sweep_dir).resolve().parts[-2:])


def swept_keys(sweep_dir: str | os.PathLike) -> list[str]:
    """The keys a sweep varies, from its ``multirun.yaml`` (data: only parsed, never run)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        saved = yaml.safe_load((Path(sweep_dir) / "multirun.yaml").read_text()) or {}
        task = saved["hydra"]["overrides"]["task"] or []
        parsed = OverridesParser.create().parse_overrides([str(t) for t in task])
    except Exception:  # no multirun.yaml (e.g. a hand-made folder): nothing known as swept
        return []
    return [o.key_or_group for o in parsed if o.is_sweep_override()]


def _clean(node: Any) -> Any:
    """The plain values of a config node without interpolations (they repeat another key
    or name a machine path) and with ``_target_`` as the class's name."""
    if isinstance(node, DictConfig):
        out = {}
        for key in node:
            if OmegaConf.is_interpolation(node, key):
                continue
            if key == "_target_":
                out["class"] = str(node[key]).rsplit(".", 1)[-1]
            elif key != "_partial_":
                out[key] = _clean(node[key])
        return out
    if OmegaConf.is_list(node):
        return [_clean(v) for v in node]
    return node


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """What a W&B run records as its config (see the module docstring)."""
    config = {k: v for k, v in _clean(cfg).items() if k != "paths"}
    overrides = job_overrides()
    config["overrides"] = [f"{k}={v}" for k, v in overrides.items()]
    if _multirun():
        folder = HydraConfig.get().sweep.dir
        config["sweep_id"] = sweep_id(folder)
        config["swept"] = swept_keys(folder)
    return config


def run_name(cfg: DictConfig) -> str | None:
    """The swept overrides of a sweep's job and its number; a single run's overrides."""
    overrides = job_overrides()
    if not _multirun():
        return ",".join(f"{k}={v}" for k, v in overrides.items()) or None
    swept = swept_keys(HydraConfig.get().sweep.dir) or list(overrides)
    values = ",".join(f"{k}={overrides[k]}" for k in swept if k in overrides)
    return f"{values} #{HydraConfig.get().job.num}".strip()


def replicate_group(cfg: DictConfig) -> str:
    """The group of the runs whose configs differ only in the seed: their overrides without
    the seed, and a hash of the whole config without it (two sweeps that share overrides
    but differ elsewhere are never averaged together)."""
    config = run_config(cfg)
    for key in ("overrides", "swept", "sweep_id", "tags", *SEED_KEYS):
        config.pop(key, None)
    if isinstance(config.get("data"), dict):
        config["data"].pop("seed", None)
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    overrides = job_overrides()
    shown = list(overrides)
    if _multirun():  # a sweep's groups differ in its swept keys: show only those
        shown = swept_keys(HydraConfig.get().sweep.dir) or shown
    values = ",".join(f"{k}={overrides[k]}" for k in shown if k in overrides and k not in SEED_KEYS)
    return f"{values or 'defaults'} [{digest[:8]}]"


def wandb_group(cfg: DictConfig) -> str | None:
    """The run's group, as ``logger.wandb.group`` says: replicates, sweep or a fixed name."""
    choice = cfg.logger.wandb.group
    if choice == "replicates":
        return replicate_group(cfg)
    if choice == "sweep":
        return sweep_id(HydraConfig.get().sweep.dir) if _multirun() else None
    return choice


def _define_metrics(run: Any) -> None:
    run.define_metric("epoch", hidden=True)
    run.define_metric("trainer/global_step", hidden=True)
    for pattern in TRAINING_AXIS:
        run.define_metric(pattern, step_metric="trainer/global_step")
    for name, summary in SUMMARIES.items():
        run.define_metric(name, step_metric="trainer/global_step", summary=summary)
    for pattern in EPOCH_AXIS:
        run.define_metric(pattern, step_metric="epoch")
    for pattern in HIDDEN:
        run.define_metric(pattern, step_metric="epoch", hidden=True)


def _new_run_id() -> str:
    """A W&B-style run id: 8 random lowercase letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def start_wandb(cfg: DictConfig, job_dir: Path) -> Any:
    """The job's W&B run, started now (so that a failure shows before any work), or None
    with ``logger=none`` or when W&B cannot start. A job folder that already ran one (the
    job is resuming) continues that run."""
    wb = cfg.logger.get("wandb")
    if not wb:
        return None
    os.environ.setdefault("WANDB_SILENT", "true")
    id_file = Path(job_dir) / "wandb" / RUN_ID_FILE
    try:
        import wandb

        run_id = id_file.read_text().strip() if id_file.is_file() else _new_run_id()
        sweep = [f"sweep:{sweep_id(HydraConfig.get().sweep.dir)}"] if _multirun() else []
        run = wandb.init(
            project=wb.project,
            entity=wb.entity,
            mode="offline" if wb.offline else "online",
            dir=str(job_dir),
            id=run_id,
            resume="allow",
            group=wandb_group(cfg),
            job_type=wb.job_type,
            tags=[*cfg.tags, *sweep],
            name=run_name(cfg),
            notes=" ".join(run_config(cfg)["overrides"]) or None,
            config=run_config(cfg),
        )
        _define_metrics(run)
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run.id + "\n")
        return run
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning("W&B unavailable, the job goes on without it: %s", first)
        finish_wandb(1)
        return None


def finish_wandb(exit_code: int = 0, summary: Mapping[str, Any] | None = None) -> None:
    """Write ``summary`` into the run's summary and finish it with ``exit_code`` (non-zero:
    W&B shows the run as failed), if a run is open."""
    if "wandb" not in sys.modules:
        return
    import wandb

    if wandb.run is None:
        return
    if summary:
        wandb.run.summary.update({k: v for k, v in summary.items() if v is not None})
    wandb.finish(exit_code=exit_code)
