"""The LightningModule that trains every model of resnet_dyn as a classifier.

Learning rate: ``optim.lr`` applies at ``optim.base_batch_size``; ``optim.lr_scaling``
scales it for the actual batch size (Golmant et al.: none, linear, sqrt). The
schedule steps every iteration: optional linear warm-up, then multistep at
fractions of all training steps (He et al.: /10 at 50% and 75%), cosine or constant.

On a CUDA device the network's 4-d weights and the image batches are put in
``torch.channels_last`` memory format (faster convolutions, above all in bf16);
``channels_last=True`` forces it elsewhere, False turns it off. Nothing in
``training_step`` waits for the device: no ``.item()``, no branching on tensor values.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from resnet_dyn.config.build import refused_arguments
from resnet_dyn.errors import ConfigError, check_choice, check_int, check_positive

LR_SCALINGS = ("none", "linear", "sqrt")
SCHEDULES = ("multistep", "cosine", "constant")


def scaled_lr(lr: float, batch_size: int, base_batch_size: int, rule: str) -> float:
    """The learning rate for ``batch_size`` under a scaling rule relative to ``base_batch_size``.

    >>> scaled_lr(0.1, 512, 128, "linear"), scaled_lr(0.1, 512, 128, "sqrt")
    (0.4, 0.2)
    """
    if rule not in LR_SCALINGS:
        raise ConfigError("optim.lr_scaling", " | ".join(LR_SCALINGS), rule)
    ratio = batch_size / base_batch_size
    return lr * {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}[rule]


def lr_factor(step: int, total_steps: int, schedule: DictConfig | dict) -> float:
    """Multiplier of the base learning rate at iteration ``step`` of ``total_steps``."""
    warmup = int(schedule["warmup_steps"])
    if step < warmup:
        start = float(schedule["warmup_start_factor"])
        return start + (1.0 - start) * step / warmup
    name = schedule["name"]
    if name == "multistep":
        passed = sum(step >= m * total_steps for m in schedule["milestones"])
        return float(schedule["gamma"]) ** passed
    if name == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


def check_optim(optim: DictConfig, net: nn.Module) -> None:
    """Every ``optim.*`` key, and the optimizer's own arguments by building it once for
    ``net`` (torch checks momentum, betas, eps...): a bad value stops before training."""
    check_positive("optim.lr", optim.lr)
    check_positive("optim.weight_decay", optim.weight_decay, allow_zero=True)
    check_int("optim.base_batch_size", optim.base_batch_size, 1)
    check_choice("optim.lr_scaling", optim.lr_scaling, LR_SCALINGS)
    sched = optim.schedule
    check_choice("optim.schedule.name", sched.name, SCHEDULES)
    if any(not 0 < m <= 1 for m in sched.milestones):
        raise ConfigError(
            "optim.schedule.milestones", "fractions of training in (0, 1]", list(sched.milestones)
        )
    check_int("optim.schedule.warmup_steps", sched.warmup_steps, 0)
    check_positive("optim.schedule.gamma", sched.gamma)
    factor = sched.warmup_start_factor
    if check_positive("optim.schedule.warmup_start_factor", factor) > 1:
        raise ConfigError("optim.schedule.warmup_start_factor", "a number in (0, 1]", factor)
    try:
        instantiate(optim.optimizer)(net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    except (ValueError, TypeError) as exc:
        raise refused_arguments("optim.optimizer", optim.optimizer, exc) from None


class Diverged(RuntimeError):
    """Training produced a non-finite loss; the job ends with status ``diverged``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        super().__init__(f"the training loss became NaN or inf in epoch {epoch}")


class ClassificationModule(L.LightningModule):
    """Cross-entropy training of ``net`` with accuracy metrics.

    ``architecture`` (the model config, input shape and classes) is stored in every
    checkpoint under ``"resnet_dyn"``. Logs ``train/loss`` every step, ``train/loss_epoch``
    and ``train/acc`` per epoch,
    ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc`` per epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        optim: DictConfig,
        batch_size: int,
        num_classes: int,
        compile: bool = False,
        architecture: dict | None = None,
        channels_last: bool | None = None,
    ) -> None:
        super().__init__()
        check_optim(optim, net)
        self.channels_last = channels_last  # None: on CUDA devices only
        self.use_channels_last = bool(channels_last)  # what setup decided for this device
        self.net = net
        self.architecture = architecture
        self.optim = optim
        self.batch_size = batch_size
        self.forward_fn = torch.compile(net) if compile else net
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def setup(self, stage: str) -> None:
        on_cuda = self.trainer.strategy.root_device.type == "cuda"
        self.use_channels_last = on_cuda if self.channels_last is None else self.channels_last
        if self.use_channels_last:
            self.net.to(memory_format=torch.channels_last)  # only 4-d tensors change

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fn(x)

    def _step(self, batch: Any, split: str, acc: MulticlassAccuracy) -> torch.Tensor:
        x, y = batch
        if self.use_channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc(logits.detach(), y)
        on_step = split == "train"
        self.log(f"{split}/loss", loss, on_step=on_step, on_epoch=not on_step, prog_bar=True)
        if on_step:
            self.log("train/loss_epoch", loss, on_step=False, on_epoch=True)
        self.log(f"{split}/acc", acc, on_step=False, on_epoch=True, prog_bar=split != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_acc)

    def on_train_epoch_end(self) -> None:
        # One check per epoch (not per step) keeps host synchronisation off the hot path.
        loss = self.trainer.callback_metrics.get("train/loss_epoch")
        if loss is not None and not torch.isfinite(loss):
            raise Diverged(self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain containers only, so that the checkpoint loads with torch.load(weights_only=True)
        # and the analysis can rebuild the model without the training config.
        if self.architecture is not None:
            checkpoint["resnet_dyn"] = self.architecture

    def configure_optimizers(self) -> dict:
        o = self.optim
        lr = scaled_lr(o.lr, self.batch_size, o.base_batch_size, o.lr_scaling)
        optimizer = instantiate(o.optimizer)(self.parameters(), lr=lr, weight_decay=o.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        schedule = dict(o.schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_factor(step, total, schedule)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
