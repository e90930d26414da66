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
from omegaconf import DictConfig, OmegaConf

from resnet_dyn.callbacks.base import (
    check_count,
    evaluating,
    is_last_epoch,
    log_results,
    wandb_curves,
)
from resnet_dyn.dynamics.perturbation import (
    ATTACKS,
    RANDOM_KINDS,
    perturbation_analysis,
    to_pixels,
)
from resnet_dyn.errors import ConfigError, check_positive
from resnet_dyn.plots_dynamics import perturbation_growth

KEY = "analysis.perturbation"
KNOWN = ("attack", "eps", "steps", "step_size", "random_kind", "seed")


def _settings(node: DictConfig) -> dict[str, Any]:
    """The ``analysis.perturbation`` keys as keyword arguments, checked before any training.

    Keys left out take the defaults of ``perturbation_analysis``.
    """
    s = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    unknown = sorted(set(s) - set(KNOWN))
    if unknown:
        raise ConfigError(KEY, f"keys among {list(KNOWN)}", unknown)
    if s.get("attack", "fgsm") not in ATTACKS:
        raise ConfigError(f"{KEY}.attack", " | ".join(ATTACKS), s["attack"])
    if s.get("random_kind", "gaussian") not in RANDOM_KINDS:
        raise ConfigError(f"{KEY}.random_kind", " | ".join(RANDOM_KINDS), s["random_kind"])
    if s.get("eps") is not None:  # null: the attack's customary radius (8/255 L-inf, 0.5 L2)
        check_positive(f"{KEY}.eps", s["eps"], allow_zero=True)
    check_count(f"{KEY}.steps", s.get("steps", 1), 1)
    check_count(f"{KEY}.seed", s.get("seed", 0), 0)
    if s.get("step_size") is not None:
        check_positive(f"{KEY}.step_size", s["step_size"])
    return s


class PerturbationCallback(L.Callback):
    """Runs :func:`resnet_dyn.dynamics.perturbation.perturbation_analysis` on the probe images.

    Args:
        perturbation: the ``analysis.perturbation`` config (attack, eps, steps, step_size,
            random_kind).
        images: how many test images to attack.
        output_dir: the job folder; figures go to ``<output_dir>/analysis``.
        every_n_epochs: also run after every n-th training epoch; 0: only at the end.
    """

    def __init__(
        self,
        perturbation: DictConfig,
        images: int,
        output_dir: str,
        every_n_epochs: int = 0,
    ) -> None:
        self.settings = _settings(perturbation)
        self.images = check_count("analysis.images", images, 1)
        self.every_n_epochs = check_count(
            "callbacks.perturbation.every_n_epochs", every_n_epochs, 0
        )
        self.out_dir = Path(output_dir) / "analysis"
        self.summary: dict[str, Any] | None = None

    def analysis_summary(self) -> dict[str, Any]:
        """``{"perturbation": {...}}``: the last result, for the job's summary.json."""
        return {"perturbation": self.summary} if self.summary else {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        # The last epoch is analysed by on_train_end.
        if self.every_n_epochs and epoch % self.every_n_epochs == 0 and not is_last_epoch(trainer):
            self._run(trainer, pl_module, epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module, trainer.current_epoch)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        dm = trainer.datamodule
        images, labels = dm.probe_batch(self.images)
        pixels = to_pixels(images, dm.mean, dm.std).to(pl_module.device)
        with evaluating(pl_module.net) as net:
            result = perturbation_analysis(
                net, pixels, labels.to(pl_module.device), dm.mean, dm.std, **self.settings
            )
        adv, rnd = result["adversarial_rel"][-1], result["random_rel"][-1]
        # eps = 0 moves nothing, and 0 / 0 has no ratio to report.
        ratio = adv / rnd if rnd > 0 else None
        figure = perturbation_growth(
            result,
            self.out_dir / f"perturbation_epoch{epoch:03d}.png",
            f"{result['attack']}, eps {result['eps']:.4g}, {len(labels)} images, epoch {epoch}",
        )
        scalars = {
            f"perturbation/{k}": float(result[k])
            for k in ("clean_accuracy", "attacked_accuracy", "random_accuracy", "perturbation_l2")
        }
        if ratio is not None:
            scalars["perturbation/final_ratio"] = ratio

        def charts() -> dict[str, Any]:
            k = range(len(result["adversarial_rel"]))
            return {
                f"perturbation/{scale}": wandb_curves(
                    k,
                    {kind: result[f"{kind}_{scale}"] for kind in ("adversarial", "random")},
                    f"{scale} perturbation size per unit (epoch {epoch})",
                    "unit k",
                )
                for scale in ("rel", "abs")
            }

        log_results(trainer, scalars, charts)
        self.summary = {
            **result,
            "final_ratio": ratio,
            "images": len(labels),
            "epoch": epoch,
            "figure": figure.name,
        }
