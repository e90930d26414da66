"""Checkpoint on SIGTERM and on SLURM's preemption and time-limit signals, then stop.

    kill -TERM <pid>                     # the job saves checkpoints/last.ckpt and exits 143
    resnet-dyn ...                       # the same command again resumes from that step

SLURM sends SIGTERM when it preempts or cancels a job, and a user signal shortly before the
time limit (``--signal``: SIGUSR1 for Lightning's convention, SIGUSR2 for submitit's, which
``hydra/launcher=slurm`` uses). A handler only notes the signal: the checkpoint is written
at the end of the current training step, where the model, optimizer and loop counters agree.
The job then stops with :class:`Preempted`; its ``summary.json`` says ``preempted`` with the
step, and the process exits with 128 + the signal number.

In a submitit job SIGTERM only saves the checkpoint and training goes on, as submitit
expects: its own signal (SIGUSR2) follows, and then, after the checkpoint, submitit's handler
requeues the job, which resumes from the checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L

log = logging.getLogger("resnet_dyn")

Handler = Callable[[int, FrameType | None], Any] | int | None


def submitit_signal() -> signal.Signals | None:
    """The signal submitit requeues on when this process is a submitit job, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    found = getattr(signal, f"SIG{name}", None)
    return found if isinstance(found, signal.Signals) else signal.SIGUSR2


def stop_signals() -> list[signal.Signals]:
    """SIGTERM, SIGUSR1, SIGUSR2 and submitit's preemption signal if set to another one."""
    signals = [signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2]
    extra = submitit_signal()
    return signals if extra is None or extra in signals else [*signals, extra]


class Preempted(Exception):
    """Training stopped on a signal after saving ``checkpoint`` at ``step``."""

    def __init__(self, signum: int, step: int, epoch: int, checkpoint: Path, previous: Handler):
        self.signum, self.step, self.epoch, self.checkpoint = signum, step, epoch, checkpoint
        self.previous = previous  # the handler that was there before ours (submitit's, say)
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step} (epoch {epoch}); checkpoint {checkpoint}")

    def hand_on(self) -> None:
        """Let the signal's previous handler act (submitit requeues), else exit 128 + signum."""
        if callable(self.previous) and self.previous.__module__.startswith("submitit"):
            self.previous(self.signum, None)  # requeues and exits
        sys.exit(128 + self.signum)


class CheckpointOnSignal(L.Callback):
    """Save ``checkpoint`` and raise :class:`Preempted` at the first step end after a signal
    (after the epoch's validation when that step is the epoch's last)."""

    def __init__(self, checkpoint: str | os.PathLike) -> None:
        self.checkpoint = Path(checkpoint)
        self.received: int | None = None
        self._previous: dict[int, Handler] = {}

    def _note(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            log.warning(
                "received %s: checkpointing at the end of this step", signal.strsignal(signum)
            )
        self.received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, after Lightning has set its own handlers, so that ours is the one that runs.
        for signum in stop_signals():
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._note)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.received is None:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            # A checkpoint taken here resumes past this epoch's validation, which would then
            # never run: stop after it instead (on_validation_end or on_train_epoch_end).
            return
        # Lightning logs this step's metrics (its CSV row) only after this hook; the resumed
        # run starts at the next step, so log them now or that row is lost for good.
        trainer._logger_connector.update_train_step_metrics()
        self._stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received is not None and not trainer.sanity_checking and trainer.state.fn == "fit":
            self._stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received is not None:
            self._stop(trainer)

    def _stop(self, trainer: L.Trainer) -> None:
        signum, self.received = self.received, None
        # The full state, to resume; the trainer's checkpoint writer renames it into place.
        trainer.save_checkpoint(self.checkpoint, weights_only=False)
        requeue = submitit_signal()
        if requeue is not None and signum != requeue:
            # submitit ignores SIGTERM and requeues on its own signal, which SLURM sends next.
            log.warning("checkpoint saved at step %d; training goes on", trainer.global_step)
            return
        raise Preempted(
            signum,
            trainer.global_step,
            trainer.current_epoch,
            self.checkpoint,
            self._previous.get(signum),
        )

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._note and handler is not None:
                signal.signal(signum, handler)
        self._previous = {}
