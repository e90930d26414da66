"""Checks Hydra runs before any job starts, so that a bad output folder costs one line.

Registered in ``conf/hydra/default.yaml`` under ``hydra.callbacks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from resnet_dyn.errors import UserError, exit_for_user_error
from resnet_dyn.files import check_writable


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(key: str, folder: str) -> None:
    """Raise :class:`UserError` unless ``folder``, or its nearest existing parent (the
    folder itself is Hydra's to create), is a folder that takes files."""
    where = _existing_ancestor(Path(folder))
    reason = check_writable(where) if where.is_dir() else "a file, not a folder"
    if reason:
        raise UserError(
            f"{key}: cannot write to {folder} ({where}: {reason}); set {key} to a writable folder"
        )


class CheckOutputDir(Callback):
    """Stop with one line (exit 2) when the run or sweep folder cannot be written.

    Hydra turns a callback's exception into a warning and goes on to a traceback of its own,
    so this one exits itself (``HYDRA_FULL_ERROR=1`` lets Hydra's traceback through).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.run.dir", str(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", str(config.hydra.sweep.dir))

    @staticmethod
    def _check(key: str, folder: str) -> None:
        try:
            check_output_dir(key, folder)
        except UserError as exc:
            exit_for_user_error(exc, multirun=False)


class CheckLauncher(Callback):
    """Stop a sweep with one line (exit 2) when a ``hydra.launcher.*`` key is out of range
    (:func:`~resnet_dyn.config.checks.check_launcher`), before any job is launched or
    submitted to SLURM."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from resnet_dyn.config.checks import check_launcher

        try:
            check_launcher(config.hydra.launcher)
        except UserError as exc:
            exit_for_user_error(exc, multirun=False)
