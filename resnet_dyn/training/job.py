"""One training job: build it from its config, fit it, and write its summary.

    summary = run_job(cfg)   # cfg: the composed `train` config (see resnet_dyn.cli.train)

Each job writes into its folder: ``summary.json`` (status, resolved config, final
metrics), ``csv/`` metrics, ``checkpoints/`` and, with ``logger=wandb`` (default),
an offline W&B run under ``wandb/``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from omegaconf import DictConfig, OmegaConf

from resnet_dyn.config.build import build, head_classes, plain_settings
from resnet_dyn.config.checks import check_analysis_config, check_job_config
from resnet_dyn.errors import UserError
from resnet_dyn.files import unwritable_reason, write_json_atomic
from resnet_dyn.logs.wandb_run import finish_wandb, start_wandb
from resnet_dyn.models import model_name
from resnet_dyn.models.checkpoints import read_checkpoint
from resnet_dyn.training.checkpoint_io import AtomicCheckpointIO
from resnet_dyn.training.loggers import SafeCSVLogger
from resnet_dyn.training.module import ClassificationModule, Diverged
from resnet_dyn.training.preemption import CheckpointOnSignal, Preempted

log = logging.getLogger("resnet_dyn")

SUMMARY_METRICS = (
    "test/acc", "test/loss", "val/acc", "val/loss", "train/acc", "train/loss", "train/loss_epoch",
)  # fmt: skip


def _metrics(trainer: L.Trainer) -> dict[str, float]:
    out = {}
    for key in SUMMARY_METRICS:
        value = trainer.callback_metrics.get(key)
        if value is not None:
            out[key] = float(value)
    return out


def build_loggers(cfg: DictConfig, job_dir: Path, resume_step: int | None = None) -> list:
    """The CSV logger always (keeping its rows before ``resume_step``); a W&B logger on the
    job's run (:func:`~resnet_dyn.logs.wandb_run.start_wandb`) unless ``logger=none`` or
    W&B cannot start."""
    csv_logger = SafeCSVLogger(save_dir=job_dir, name="csv", version="", resume_step=resume_step)
    run = start_wandb(cfg, job_dir)
    if run is None:
        return [csv_logger]
    from lightning.pytorch.loggers import WandbLogger

    return [csv_logger, WandbLogger(experiment=run, save_dir=str(job_dir))]


def trainer_plugins() -> list:
    """Checkpoints written atomically; under SLURM (e.g. a submitit job) Lightning's
    auto-requeue is off: submitit handles SLURM's signals and resubmits the job itself."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


class Job(NamedTuple):
    """A training job, built and checked, with nothing trained or written yet."""

    datamodule: L.LightningDataModule
    module: ClassificationModule
    trainer: L.Trainer  # its loggers are added by fit, which starts the W&B run


def build_job(cfg: DictConfig) -> Job:
    """The seeded datamodule, Lightning module and Trainer (with its callbacks) of ``cfg``,
    every key a user can set checked: a bad value stops here, before anything is trained or
    written, as one line naming the key."""
    check_job_config(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build(cfg.data)
    num_classes = head_classes(cfg.model, datamodule.num_classes, training=True)
    net = build(cfg.model, input_shape=datamodule.input_shape, num_classes=num_classes)
    # Plain values only, under a registry name: loading never instantiates what a file says.
    architecture = {
        "model": {"name": model_name(net), **plain_settings(cfg.model)},
        "input_shape": list(datamodule.input_shape),
        "num_classes": datamodule.num_classes,
        "mean": list(datamodule.mean),
        "std": list(datamodule.std),
    }
    module = ClassificationModule(
        net,
        cfg.optim,
        datamodule.batch_size,
        datamodule.num_classes,
        compile=cfg.compile,
        architecture=architecture,
    )
    # Read only at the end of training, by the analyses.
    check_analysis_config(cfg.analysis, len(net.units))
    callbacks = [
        build(node, key=f"callbacks.{name}")
        for name, node in cfg.callbacks.items()
        if node is not None
    ]
    # Probe images beyond the test split: refused here, before any logger or job file starts
    # (loading the split now costs nothing more: the datamodule keeps it for fit).
    for callback in callbacks:
        if hasattr(callback, "check_data"):
            callback.check_data(datamodule)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    trainer: L.Trainer = build(
        cfg.trainer,
        key="trainer",
        logger=False,
        callbacks=[*callbacks, CheckpointOnSignal(last)],
        plugins=trainer_plugins(),
    )
    return Job(datamodule, module, trainer)


def fit(
    cfg: DictConfig, job_dir: Path, ckpt_path: Path | None = None, resume_step: int | None = None
) -> dict[str, Any]:
    """Build data, model, module and trainer from ``cfg``; train (resuming from ``ckpt_path``,
    saved at ``resume_step``), test; return the summary fields."""
    datamodule, module, trainer = build_job(cfg)
    trainer.loggers = build_loggers(cfg, job_dir, resume_step)
    if ckpt_path is not None:
        log.info("resuming from %s", ckpt_path)
    # weights_only: a checkpoint file can carry no code into the job.
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = _metrics(trainer)
    trainer.test(module, datamodule=datamodule, verbose=False)
    metrics.update(_metrics(trainer))
    # Analysis callbacks report into summary.json: their results under "analysis",
    # and job-level facts (e.g. final_depth after pruning) at the top.
    analysis: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for callback in trainer.callbacks:
        if hasattr(callback, "analysis_summary"):
            analysis.update(callback.analysis_summary())
        if hasattr(callback, "summary_fields"):
            fields.update(callback.summary_fields())
    params = sum(p.numel() for p in module.net.parameters())
    return {
        "metrics": metrics,
        "epochs": trainer.current_epoch,
        "params": params,
        "analysis": analysis,
        **fields,
    }


def _without_paths(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != "paths"}


def previous_summary(job_dir: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The summary of this job if it already completed in ``job_dir`` with the same config."""
    path = job_dir / "summary.json"
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # written atomically, so this is not ours; run the job again
    if old.get("status") != "completed":
        return None
    if _without_paths(old.get("config", {})) != _without_paths(config):
        raise UserError(
            f"{job_dir} holds a completed job with another config; "
            "use a new hydra.sweep.dir (or hydra.run.dir) or set resume=false"
        )
    return old


# What the W&B run's summary holds beside the metrics: the job's outcome.
RUN_FIELDS = ("status", "epochs", "wall_s", "params", "error", "diverged_epoch", "preempted_step")


def _exit_code(summary: dict[str, Any], preempted: Preempted | None) -> int:
    """The W&B run's exit code: 0 only for a completed job; a preempted one exits as its
    process does (128 + the signal), a diverged one 2, a failed one 1."""
    if preempted is not None:
        return 128 + preempted.signum
    return {"completed": 0, "diverged": 2}.get(summary["status"], 1)


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """One job: train, always finish the W&B run, always write summary.json (completed/failed).

    With ``resume=true`` (default) a job whose folder already holds a completed summary with
    the same config is skipped, and one that was interrupted resumes from ``last.ckpt``:
    re-running a sweep command with the same ``hydra.sweep.dir`` finishes only what is left.
    """
    start = time.time()
    job_dir = Path(cfg.paths.output_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    last = job_dir / "checkpoints" / "last.ckpt"
    if cfg.resume:
        done = previous_summary(job_dir, config)
        if done is not None:
            log.info("already completed, skipped: %s", job_dir)
            return done
    summary: dict[str, Any] = {"status": "failed", "config": config}
    error: BaseException | None = None
    preempted: Preempted | None = None
    try:
        resume_from = last if cfg.resume and last.is_file() else None
        resume_step = None
        if resume_from is not None:
            # A truncated file stops here, before anything is written.
            resume_step = int(read_checkpoint(resume_from).get("global_step", 0))
        result = fit(cfg, job_dir, resume_from, resume_step)
        summary.update(status="completed", **result)
    except Diverged as exc:  # a result, not an error: the report shows it
        summary.update(status="diverged", diverged_epoch=exc.epoch, error=str(exc))
        log.warning("diverged: %s", exc)
    except Preempted as exc:  # resumable: the same command continues from the checkpoint
        preempted = exc
        summary.update(status="preempted", preempted_step=exc.step, error=str(exc))
        log.warning("stopped on %s", exc)
    except Exception as exc:  # recorded in the summary; the sweep goes on
        error = exc
        summary["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        summary["wall_s"] = time.time() - start
        finish_wandb(_exit_code(summary, preempted), {k: summary.get(k) for k in RUN_FIELDS})
        try:
            write_json_atomic(job_dir / "summary.json", summary)
        except OSError as exc:
            error = error or exc
    if error is not None:
        reason = unwritable_reason(error)
        if reason is not None:  # the folder, not the job, is at fault
            raise UserError(
                f"hydra.run.dir: cannot write to {job_dir} ({reason}); free space there or"
                " set hydra.run.dir (hydra.sweep.dir for sweeps) to another folder"
            ) from error
        raise error
    if preempted is not None:
        preempted.hand_on()
    return summary
