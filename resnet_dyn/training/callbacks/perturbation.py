"""Perturbation callback: adversarial vs random input perturbations followed through the units.

    resnet-dyn callbacks=perturbation analysis.perturbation.attack=pgd_linf analysis.images=64

At the end of training (and after every n-th epoch) attacks the probe images (the first
``images`` test images, in pixel space), draws a random perturbation of the same L2 norm,
and measures both at the input of every unit and at the last unit's output (paper 1).
Logs ``perturbation/attacked_accuracy``, ``perturbation/final_ratio`` (adversarial over
random relative size at the output) and more; W&B also gets line plots of the curves against
the unit index. Saves ``analysis/perturbation_epoch<NNN>.png`` in the job folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from resnet_dyn.analysis.run import (
    check_probe,
    perturbation_run,
    perturbation_scalars,
)
from resnet_dyn.config.checks import check_perturbation, check_tol, check_units
from resnet_dyn.errors import check_int
from resnet_dyn.logs.wandb_charts import perturbation_charts
from resnet_dyn.training.callbacks.base import evaluating, is_last_epoch, log_results


class PerturbationCallback(L.Callback):
    """Runs :func:`resnet_dyn.analysis.run.perturbation_run` on the probe images.

    Args:
        perturbation: the ``analysis.perturbation`` config (attack, eps, steps, step_size,
            random_kind).
        images: how many test images to attack.
        output_dir: the job folder; figures go to ``<output_dir>/analysis``.
        every_n_epochs: also run after every n-th training epoch; 0: only at the end.
        units, tol: with ``analysis.perturbation.project``, the units whose directions the
            perturbations are split over ("all", one index or a list), and the width of the
            neutral band around 1 (in (0, 0.5], as ``analysis.tol``).
        seed: the PGD random start's and the random perturbation's (the job's ``seed``).
    """

    def __init__(
        self,
        perturbation: DictConfig,
        images: int,
        output_dir: str,
        every_n_epochs: int = 0,
        units: str | list[int] = "all",
        tol: float = 1e-3,
        seed: int = 0,
    ) -> None:
        self.settings = check_perturbation(perturbation)
        self.seed = check_int("seed", seed, 0)
        # One index is one unit, as for the spectrum ("all", 3 or [3, 5]).
        self.units = [units] if isinstance(units, int) else units
        self.units = list(self.units) if not isinstance(self.units, str) else self.units
        self.tol = check_tol("analysis.tol", tol)
        self.images = check_int("analysis.images", images, 1)
        self.every_n_epochs = check_int("callbacks.perturbation.every_n_epochs", every_n_epochs, 0)
        self.out_dir = Path(output_dir) / "analysis"
        self.summary: dict[str, Any] | None = None

    def analysis_summary(self) -> dict[str, Any]:
        """``{"perturbation": {...}}``: the last result, for the job's summary.json."""
        return {"perturbation": self.summary} if self.summary else {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Fail before training, not after it: the units exist, the test split holds the
        # probe images (the datamodule is set up before the callbacks).
        check_units("analysis.units", self.units, len(pl_module.net.units))
        if stage == "fit" and trainer.datamodule is not None:
            self.check_data(trainer.datamodule)

    def check_data(self, datamodule: L.LightningDataModule) -> None:
        """Whether the test split of ``datamodule`` holds the probe images (one-line error)."""
        check_probe(datamodule, self.images)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        # The last epoch is analysed by on_train_end.
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and not is_last_epoch(trainer):
            self._run(trainer, pl_module, epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module, trainer.current_epoch)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        with evaluating(pl_module.net) as net:
            pert = perturbation_run(
                net, trainer.datamodule, self.settings, self.images, self.out_dir,
                f"epoch{epoch:03d}", units=self.units, tol=self.tol, seed=self.seed,
            )  # fmt: skip
        log_results(
            trainer,
            perturbation_scalars(pert),
            lambda: perturbation_charts(pert, f"epoch {epoch}", self.out_dir),
            epoch,
        )
        self.summary = pert
