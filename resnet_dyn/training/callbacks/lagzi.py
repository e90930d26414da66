"""Lagzi callback: depth that shrinks during training, and the residual transients (paper 2).

    resnet-dyn model=dense_resnet data=circles callbacks=lagzi
    resnet-dyn model=dense_resnet data=circles callbacks=lagzi callbacks.lagzi.prune=false

After every training epoch computes Lagzi's criterion, the mean over neurons and probe
samples of |y(T) - y(T-1)|; when it is below ``threshold`` (and the net is deeper than
``min_depth``, and another epoch follows) the last layer is removed and training goes on.
Logs ``lagzi/depth``, ``lagzi/convergence`` and ``lagzi/pruned`` every epoch. At the end of
training saves the per-class mean and std of the residuals y(t) on the probe samples as
``analysis/transient_trajectories.npz`` (``mean``, ``std``: classes x layers x neurons;
``classes``; ``convergence``: mean |y(t) - y(t-1)| for t = 2..T) with a figure, and the depth
per epoch as ``analysis/transient_depth.png``.

Pruning and the optimizer: the optimizer keeps the parameters of a removed untied layer; they
receive no gradient, so SGD and AdamW skip them (weight decay included). Tied layers share one
(W, b), which the remaining layers keep. Checkpoints store the pruned depth with the
architecture, so ``resnet-dyn-analyze`` rebuilds the pruned model. No layer is removed after the
last epoch: the head would be left untrained on the shallower output.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch

from resnet_dyn.dynamics.transient import (
    class_statistics,
    convergence,
    last_layer_converged,
    trajectory,
)
from resnet_dyn.errors import ConfigError, check_bool, check_int, check_positive
from resnet_dyn.files import write_npz_atomic
from resnet_dyn.logs.wandb_charts import wandb_image
from resnet_dyn.models import DenseResNet, ResidualNet, drop_last_unit
from resnet_dyn.plots.dynamics import class_trajectories, depth_per_epoch
from resnet_dyn.training.callbacks.base import (
    evaluating,
    is_last_epoch,
    log_results,
)

KEY = "callbacks.lagzi"


def _finite_or_none(value: float) -> float | None:
    # A one-layer net has no criterion (NaN), which JSON cannot hold.
    return None if math.isnan(value) else value


class LagziCallback(L.Callback):
    """Prunes converged last layers during training and records the residual trajectories.

    Args:
        output_dir: the job folder; arrays and figures go to ``<output_dir>/analysis``.
        threshold: remove the last layer when the criterion is below this (Lagzi: 0.01).
        prune: false only measures and logs the criterion.
        min_depth: never prune below this many layers.
        images: probe test samples for the criterion and the trajectories.
        trajectory_depth: unroll a tied dense ResNet to this many layers for the final
            trajectories (Lagzi: 1000); null: the trained depth.
    """

    def __init__(
        self,
        output_dir: str,
        threshold: float = 0.01,
        prune: bool = True,
        min_depth: int = 1,
        images: int = 256,
        trajectory_depth: int | None = None,
    ) -> None:
        check_positive(f"{KEY}.threshold", threshold, allow_zero=True)
        check_bool(f"{KEY}.prune", prune)
        self.threshold, self.prune = float(threshold), prune
        self.min_depth = check_int(f"{KEY}.min_depth", min_depth, 1)
        self.images = check_int(f"{KEY}.images", images, 1)
        if trajectory_depth is not None:
            check_int(f"{KEY}.trajectory_depth", trajectory_depth, 1)
        self.trajectory_depth = trajectory_depth
        self.out_dir = Path(output_dir) / "analysis"
        self.initial_depth: int | None = None
        self.depths: list[int] = []
        self.convergence: list[float | None] = []
        self.result: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net: ResidualNet = pl_module.net
        if self.initial_depth is not None:  # fit, then test: checked once
            return
        x, _ = trainer.datamodule.probe_batch(2)
        with evaluating(net), torch.no_grad():
            shapes = {s.shape[1:] for s in net.unit_inputs(x.to(next(net.parameters()).device))}
        if len(shapes) > 1:
            raise ConfigError(
                "model",
                "units that keep the shape (dense_resnet, mlp, deep_resnet)",
                type(net).__name__,
            )
        tied_dense = isinstance(net, DenseResNet) and net.residual and net.tied
        if self.trajectory_depth is not None and not tied_dense:
            expected = "null unless model=dense_resnet model.tied=true"
            raise ConfigError(f"{KEY}.trajectory_depth", expected, self.trajectory_depth)
        self.initial_depth = len(net.units)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.net
        x, _ = trainer.datamodule.probe_batch(self.images)
        with evaluating(net):
            converged, value = last_layer_converged(net, x.to(pl_module.device), self.threshold)
        pruned = (
            self.prune
            and converged
            and len(net.units) > self.min_depth
            and not is_last_epoch(trainer)
        )
        if pruned:
            drop_last_unit(net)
            # The architecture saved in checkpoints must match the pruned state dict.
            if isinstance(getattr(pl_module, "architecture", None), dict):
                pl_module.architecture["model"]["depth"] = len(net.units)
        self.depths.append(len(net.units))
        self.convergence.append(_finite_or_none(value))
        scalars = {"lagzi/depth": float(len(net.units)), "lagzi/pruned": float(pruned)}
        if self.convergence[-1] is not None:
            scalars["lagzi/convergence"] = value
        log_results(trainer, scalars)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        images, labels = trainer.datamodule.probe_batch(self.images)
        with evaluating(pl_module.net) as net:
            traj = trajectory(net, images.to(pl_module.device), self.trajectory_depth)
        stats = class_statistics(traj.residuals, labels.to(pl_module.device))
        mean = torch.stack(stats["mean"], dim=1).cpu().numpy()  # classes x layers x neurons
        std = torch.stack(stats["std"], dim=1).cpu().numpy()
        c = convergence(traj.residuals).mean(0).cpu().numpy()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        arrays = {"mean": mean, "std": std, "classes": stats["classes"], "convergence": c}
        npz = write_npz_atomic(self.out_dir / "transient_trajectories.npz", arrays)
        title = f"residuals per class, {len(labels)} samples, {mean.shape[1]} layers"
        figure = class_trajectories(
            mean, std, stats["classes"], self.out_dir / "transient_trajectories.png", title
        )
        depth_figure = depth_per_epoch(
            [self.initial_depth, *self.depths],
            self.convergence,
            self.threshold,
            self.out_dir / "transient_depth.png",
            f"Lagzi pruning, threshold {self.threshold:g}",
        )
        self.result = {
            "threshold": self.threshold,
            "prune": self.prune,
            "min_depth": self.min_depth,
            "initial_depth": self.initial_depth,
            "depth_per_epoch": self.depths,
            "final_depth": len(net.units),
            "convergence": self.convergence,
            "images": len(labels),
            "classes": stats["classes"],
            "trajectory_layers": mean.shape[1],
            "trajectory_file": npz.name,
            "figure": figure.name,
            "depth_figure": depth_figure.name,
        }

        log_results(
            trainer,
            {"lagzi/final_depth": float(len(net.units))},
            lambda: {"lagzi/trajectories": wandb_image(figure)},
        )

    def analysis_summary(self) -> dict[str, Any]:
        """``{"transient": {...}}``: depth and criterion per epoch, trajectory file and figures."""
        return {"transient": self.result} if self.result else {}

    def summary_fields(self) -> dict[str, Any]:
        """``{"final_depth": layers after pruning}``, a top-level field of summary.json."""
        if self.initial_depth is None:
            return {}
        return {"final_depth": self.depths[-1] if self.depths else self.initial_depth}
