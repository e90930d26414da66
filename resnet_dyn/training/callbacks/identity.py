"""Identity callback: how far each residual block is from the identity, epoch by epoch (paper 3).

    resnet-dyn model=deep_resnet data=mnist callbacks=identity analysis.identity.epsilon=0.05

After every n-th epoch (and at the end of training) measures ``||F(x_l)||`` and
``||F(x_l)|| / ||x_l||`` of every block on the first ``identity.images`` test images. Logs
``identity/scaled_mean``, ``identity/abs_mean`` and ``identity/below_epsilon`` (1 when the
mean scaled magnitude is below epsilon: Hauser's stopping rule calls this depth enough), and
W&B line plots of the per-block values; saves ``analysis/identity_epoch<NNN>.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from resnet_dyn.dynamics.identity import identity_magnitudes
from resnet_dyn.errors import ConfigError, check_int, check_positive
from resnet_dyn.logs.wandb_charts import wandb_curves
from resnet_dyn.plots.spectra import unit_curves
from resnet_dyn.training.callbacks.base import (
    evaluating,
    is_last_epoch,
    log_results,
)


class IdentityCallback(L.Callback):
    """Runs :func:`resnet_dyn.dynamics.identity.identity_magnitudes` during training.

    Args:
        identity: the ``analysis.identity`` config (images, epsilon).
        output_dir: the job folder; figures go to ``<output_dir>/analysis``.
        every_n_epochs: measure after every n-th epoch; 0: only at the end of training.
    """

    def __init__(self, identity: DictConfig, output_dir: str, every_n_epochs: int = 1) -> None:
        self.images = check_int("analysis.identity.images", identity["images"], 1)
        check_positive("analysis.identity.epsilon", identity["epsilon"])
        self.epsilon = float(identity["epsilon"])
        self.every_n_epochs = check_int("callbacks.identity.every_n_epochs", every_n_epochs, 0)
        self.out_dir = Path(output_dir) / "analysis"
        self.history: list[dict[str, float]] = []
        self.last: dict[str, Any] | None = None
        self._measured_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if any(unit.shortcut is None for unit in pl_module.net.units):
            raise ConfigError(
                "callbacks.identity",
                "a model with skip connections (not model=mlp)",
                type(pl_module.net).__name__,
            )

    def analysis_summary(self) -> dict[str, Any]:
        """``{"identity": {...}}``: the last per-block magnitudes and the per-epoch history."""
        if self.last is None:
            return {}
        first = next((h["epoch"] for h in self.history if h["below_epsilon"]), None)
        return {"identity": {**self.last, "first_epoch_below": first, "history": self.history}}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            self._run(trainer, pl_module, epoch, figure=is_last_epoch(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # The weights of the last measurement are the final ones unless training stopped
        # between measurements (every_n_epochs 0 or not a divisor of the epochs).
        if self._measured_step != trainer.global_step:
            self._run(trainer, pl_module, trainer.current_epoch, figure=True)

    def _run(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int, figure: bool
    ) -> None:
        # At most the whole test split, as resnet-dyn-analyze does (identity_run).
        dm = trainer.datamodule
        images, _ = dm.probe_batch(min(self.images, len(dm.test_set)))
        with evaluating(pl_module.net) as net:
            m = identity_magnitudes(net, images.to(pl_module.device))
        below = m["scaled_mean"] < self.epsilon
        scalars = {
            "identity/scaled_mean": m["scaled_mean"],
            "identity/abs_mean": m["abs_mean"],
            "identity/below_epsilon": float(below),
        }

        def charts() -> dict[str, Any]:
            blocks = range(len(m["abs"]))
            curves = {"abs": m["abs"], "scaled": m["scaled"]}
            return {"identity/blocks": wandb_curves(blocks, curves, f"epoch {epoch}", "block l")}

        log_results(trainer, scalars, charts, epoch)
        self._measured_step = trainer.global_step
        means = {"abs_mean": m["abs_mean"], "scaled_mean": m["scaled_mean"]}
        self.history.append({"epoch": epoch, **means, "below_epsilon": below})
        self.last = {**m, "epsilon": self.epsilon, "below_epsilon": below}
        self.last.update(images=len(images), epoch=epoch)
        if figure:
            path = self.out_dir / f"identity_epoch{epoch:03d}.png"
            title = f"perturbation from identity, epoch {epoch}, {len(images)} images"
            curves = {"||F(x_l)||": m["abs"], "||F(x_l)|| / ||x_l||": m["scaled"]}
            self.last["figure"] = unit_curves(curves, path, "magnitude", title, log=True).name
