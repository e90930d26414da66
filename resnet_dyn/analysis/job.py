"""One ``resnet-dyn-analyze`` job: load a network, run the configured analyses, log them.

summary = run_analysis_job(cfg)   # cfg: the composed `analyze` config (see resnet_dyn.cli.analyze)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from resnet_dyn.analysis.run import (
    check_analysis,
    identity_run,
    identity_scalars,
    intervened,
    perturbation_run,
    perturbation_scalars,
    probe,
    spectrum_analysis,
    spectrum_scalars,
)
from resnet_dyn.config.build import build, head_classes, plain_settings
from resnet_dyn.config.checks import check_job_config
from resnet_dyn.errors import ConfigError, check_choice
from resnet_dyn.files import write_json_atomic
from resnet_dyn.logs.wandb_charts import perturbation_charts, wandb_spectra
from resnet_dyn.logs.wandb_run import finish_wandb, start_wandb
from resnet_dyn.models import ResidualNet, group_model_name, model_name
from resnet_dyn.models.checkpoints import FORMATS, load_model
from resnet_dyn.progress import unit_progress


def check_checkpoint(ck: DictConfig) -> None:
    """``checkpoint.*``, before any data is loaded (a missing or unreadable file is
    :func:`~resnet_dyn.models.checkpoints.read_checkpoint`'s own one-line error)."""
    path = ck.path
    if path is not None and not (isinstance(path, str) and path):
        raise ConfigError("checkpoint.path", "a file path or null", path)
    check_choice("checkpoint.format", ck.format, FORMATS)


def check_device(name: Any) -> torch.device:
    """``device`` as a torch device that exists here, else a one-line error."""
    expected = "cpu, cuda or cuda:<index>"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError("device", expected, name) from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError("device", expected, name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError("device", "cpu (no CUDA device is available here)", name)
        if device.index is not None and device.index >= count:
            raise ConfigError("device", f"cpu, cuda or cuda:<index in 0..{count - 1}>", name)
    return device


def load_network(
    cfg: DictConfig, input_shape: tuple, data_classes: int
) -> tuple[ResidualNet, int, dict[str, Any]]:
    """The network to analyse, in eval mode, the epochs it was trained for (0 for a network
    at initialisation or a checkpoint that does not say) and the model settings it was built
    with (a checkpoint's own, not the ``model`` group's): from ``checkpoint.path``, or at
    initialisation. The head has ``model.num_classes`` outputs where the group sets it
    (:func:`~resnet_dyn.config.build.head_classes`), else the data's classes."""
    ck = cfg.checkpoint
    num_classes = head_classes(cfg.model, data_classes, training=False)
    if ck.path is None:
        net = build(cfg.model, input_shape=input_shape, num_classes=num_classes)
        return net.eval(), 0, {"name": model_name(net), **plain_settings(cfg.model)}
    if cfg.model.get("weights") is not None:
        raise ConfigError(
            "model.weights", "null when checkpoint.path gives the weights", cfg.model.weights
        )
    group = {"name": group_model_name(cfg.model), **plain_settings(cfg.model)}
    net, info = load_model(
        ck.path, ck.format, depth=cfg.model.get("depth"), num_classes=num_classes,
        model=group, input_shape=input_shape,
    )  # fmt: skip
    if tuple(info["input_shape"]) != tuple(input_shape):
        raise ConfigError(
            "data",
            f"images of shape {tuple(info['input_shape'])} for this model",
            tuple(input_shape),
        )
    return net, info.get("epoch") or 0, info.get("model") or {}


def run_analysis_job(cfg: DictConfig) -> dict[str, Any]:
    """Load, analyse, log; always finish the W&B run and write summary.json."""
    start = time.time()
    job_dir = Path(cfg.paths.output_dir)
    summary: dict[str, Any] = {
        "status": "failed",
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    try:
        check_job_config(cfg)
        check_checkpoint(cfg.checkpoint)
        device = check_device(cfg.device)
        L.seed_everything(cfg.seed, verbose=False)
        datamodule = build(cfg.data)
        net, epoch, built_with = load_network(cfg, datamodule.input_shape, datamodule.num_classes)
        # What the report places the analyses at (alpha, beta): the checkpoint's settings.
        summary["model"] = built_with
        a = check_analysis(cfg.analysis, net)
        images, labels = probe(datamodule, a["images"], "analysis.images")
        # Every analysis below sees the intervened network (analysis.intervention).
        net = intervened(net.to(device), a["intervention"])
        run = start_wandb(cfg, job_dir)
        total = (len(net.units) if a["units"] == "all" else len(a["units"])) * any(
            m != "stage" for m in a["maps"]
        ) + (net.num_stages if "stage" in a["maps"] else 0)
        with unit_progress(total, "spectra") as advance:
            result = spectrum_analysis(
                net, images.to(device), labels.to(device), cfg.analysis, job_dir / "analysis",
                "final", advance, seed=cfg.seed,
            )  # fmt: skip
        pert = perturbation_run(
            net, datamodule, a["perturbation"], a["images"], job_dir / "analysis", "final",
            units=a["units"], tol=a["tol"], seed=cfg.seed,
        )  # fmt: skip
        ident = identity_run(net, datamodule, a["identity"]["images"])
        if run is not None:  # the same keys, tables and charts as the training callbacks
            run.log(
                {
                    "epoch": epoch,
                    **spectrum_scalars(result.summary),
                    **wandb_spectra(result.summary, result.results, result.folder, epoch),
                    **perturbation_scalars(pert),
                    **perturbation_charts(pert, "final", job_dir / "analysis"),
                    **(identity_scalars(ident) if ident else {}),
                }
            )
        analysis = {**result.summary, "perturbation": pert}
        if ident is not None:
            analysis["identity"] = ident
        summary.update(status="completed", analysis=analysis)
    except Exception as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        summary["wall_s"] = time.time() - start
        fields = {k: summary.get(k) for k in ("status", "wall_s", "error")}
        finish_wandb(0 if summary["status"] == "completed" else 1, fields)
        write_json_atomic(job_dir / "summary.json", summary)
    return summary
