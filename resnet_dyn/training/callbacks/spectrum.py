"""Spectrum callback: SVD of every unit's linearization at chosen epochs and at the end of training.

    resnet-dyn callbacks=spectrum analysis.images=4 callbacks.spectrum.every_n_epochs=5

Logs ``spectrum/unit_07/sum/frac_one`` and the other statistics per unit and map,
a W&B histogram of the singular values per unit, the time spent, and saves the raw
spectra as ``analysis/spectra_epoch<NNN>.npz`` in the job folder. Its last result is
the ``analysis`` of the training job's summary.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from resnet_dyn.analysis.run import (
    check_analysis,
    check_probe,
    intervened,
    spectrum_analysis,
    spectrum_scalars,
)
from resnet_dyn.errors import check_int
from resnet_dyn.logs.wandb_charts import wandb_spectra
from resnet_dyn.progress import unit_progress
from resnet_dyn.training.callbacks.base import evaluating, is_last_epoch, log_results


class SpectrumCallback(L.Callback):
    """Runs :func:`resnet_dyn.analysis.run.spectrum_analysis` on a fixed probe batch.

    Args:
        analysis: the ``analysis`` config (images, units, maps, method, tol, ...).
        every_n_epochs: also run after every n-th training epoch; 0: only at the end.
        output_dir: the job folder; spectra go to ``<output_dir>/analysis``.
        seed: the random probes of the matrix-free methods (the job's ``seed``).
    """

    def __init__(
        self, analysis: DictConfig, output_dir: str, every_n_epochs: int = 0, seed: int = 0
    ) -> None:
        self.analysis = analysis
        self.seed = check_int("seed", seed, 0)
        self.every_n_epochs = check_int("callbacks.spectrum.every_n_epochs", every_n_epochs, 0)
        self.out_dir = Path(output_dir) / "analysis"
        self.summary: dict[str, Any] | None = None

    def analysis_summary(self) -> dict[str, Any]:
        """The last result, for the ``analysis`` section of the job's summary.json."""
        return self.summary or {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Fail before training, not after it: the keys, and the probe images the test split
        # holds (the datamodule is set up before the callbacks).
        check_analysis(self.analysis, pl_module.net)
        if stage == "fit" and trainer.datamodule is not None:
            self.check_data(trainer.datamodule)

    def check_data(self, datamodule: L.LightningDataModule) -> None:
        """Whether the test split of ``datamodule`` holds the probe images (one-line error)."""
        check_probe(datamodule, self.analysis.images)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        # The last epoch is analysed by on_train_end.
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and not is_last_epoch(trainer):
            self._run(trainer, pl_module, epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._run(trainer, pl_module, trainer.current_epoch)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        images, labels = trainer.datamodule.probe_batch(self.analysis.images)
        with evaluating(pl_module.net) as trained:
            # The checked options: one unit index, or one map name, reads as a list of one.
            a = check_analysis(self.analysis, trained)
            # A copy with analysis.intervention applied, if one is set; else the model itself.
            net = intervened(trained, a["intervention"])
            n = len(net.units) if a["units"] == "all" else len(a["units"])
            n = n * any(m != "stage" for m in a["maps"])
            n += net.num_stages if "stage" in a["maps"] else 0
            with unit_progress(n, "spectra", trainer) as advance:
                result = spectrum_analysis(
                    net,
                    images.to(pl_module.device),
                    labels.to(pl_module.device),
                    self.analysis,
                    self.out_dir,
                    f"epoch{epoch:03d}",
                    advance,
                    seed=self.seed,
                )
        scalars = spectrum_scalars(result.summary)

        def charts() -> dict[str, Any]:
            return wandb_spectra(result.summary, result.results, result.folder, epoch)

        log_results(trainer, scalars, charts, epoch)
        self.summary = {**result.summary, "epoch": epoch}
