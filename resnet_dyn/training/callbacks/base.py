"""What the dynamics callbacks share: eval mode for a measurement, epoch checks, logging.

with evaluating(pl_module.net) as net:
    result = identity_magnitudes(net, x)
log_results(trainer, {"identity/scaled_mean": 0.07}, lambda: {"identity/blocks": chart})
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning as L
from torch import nn


@contextmanager
def evaluating(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` in eval mode inside the block (BatchNorm on its running statistics, so each
    input has its own map); the training mode it had is restored after, even on errors."""
    was_training = net.training
    net.eval()
    try:
        yield net
    finally:
        net.train(was_training)


def is_last_epoch(trainer: L.Trainer) -> bool:
    """Whether no training follows the epoch that has just ended."""
    max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    out_of_epochs = max_epochs is not None and trainer.current_epoch + 1 >= max_epochs
    out_of_steps = 0 <= trainer.max_steps <= trainer.global_step
    return bool(trainer.should_stop or out_of_epochs or out_of_steps)


def log_results(
    trainer: L.Trainer,
    scalars: Mapping[str, float],
    wandb_extras: Callable[[], dict[str, Any]] | None = None,
    epoch: int | None = None,
) -> None:
    """Scalars to every logger at the current step, with ``epoch`` (the epochs trained so
    far; default: ``trainer.current_epoch``) as their W&B x-axis; ``wandb_extras()``
    (tables, charts, images) to W&B.

    The extras are built lazily so that runs without W&B never import it.
    """
    epoch = trainer.current_epoch if epoch is None else epoch
    for logger in trainer.loggers:
        logger.log_metrics({**scalars, "epoch": epoch}, step=trainer.global_step)
        if wandb_extras is not None and type(logger).__name__ == "WandbLogger":
            logger.experiment.log(
                {**wandb_extras(), "epoch": epoch, "trainer/global_step": trainer.global_step}
            )
