"""Noise callback: how Gaussian input noise spreads through the layers, and what it costs (paper 2).

    resnet-dyn -m experiment=lagzi_noise_small     # the same measurement for a ResNet and its MLP

At the end of training, adds noise of each std in ``analysis.noise.sigmas`` to the first
``analysis.noise.images`` test inputs and records, per layer, ||x_noisy(t) - x_clean(t)||
(absolute and relative) and the accuracy on the noisy inputs. The report compares these
curves between jobs, e.g. ``model=dense_resnet`` against ``model=mlp``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from resnet_dyn.dynamics.transient import noise_evolution
from resnet_dyn.errors import check_int
from resnet_dyn.plots.spectra import unit_curves
from resnet_dyn.training.callbacks.base import evaluating, log_results


class NoiseCallback(L.Callback):
    """Runs :func:`resnet_dyn.dynamics.transient.noise_evolution` at the end of training.

    Args:
        noise: the ``analysis.noise`` config (images, sigmas).
        output_dir: the job folder; the figure goes to ``<output_dir>/analysis``.
        seed: the noise draw's (the job's ``seed``).
    """

    def __init__(self, noise: DictConfig, output_dir: str, seed: int = 0) -> None:
        self.seed = check_int("seed", seed, 0)
        self.images = check_int("analysis.noise.images", noise["images"], 1)
        self.sigmas = [float(s) for s in noise["sigmas"]]
        self.out_dir = Path(output_dir) / "analysis"
        self.result: dict[str, Any] | None = None

    def analysis_summary(self) -> dict[str, Any]:
        """``{"noise": {sigmas, distance, relative, accuracy, figure}}`` once measured."""
        return {"noise": self.result} if self.result is not None else {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        n = min(self.images, len(dm.test_set))
        x, y = dm.probe_batch(n)
        with evaluating(pl_module.net) as net:
            result = noise_evolution(
                net, x.to(pl_module.device), y.to(pl_module.device), self.sigmas, self.seed
            )
        curves = {
            f"sigma={s:g}": d for s, d in zip(result["sigmas"], result["distance"], strict=True)
        }
        figure = unit_curves(
            curves,
            self.out_dir / "noise.png",
            "||x_noisy(t) - x_clean(t)||",
            f"input noise through the layers ({type(pl_module.net).__name__})",
        )
        self.result = {**result, "figure": figure.name}
        scalars = {
            f"noise/accuracy/sigma_{s:g}": acc
            for s, acc in zip(result["sigmas"], result["accuracy"], strict=True)
        }
        log_results(trainer, scalars)
