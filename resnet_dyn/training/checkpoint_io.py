"""Checkpoint files that are whole or absent (Lightning's writer, made atomic)."""

from __future__ import annotations

import io
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from resnet_dyn.files import write_bytes_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, but a checkpoint file is whole or absent: serialised in
    memory, written beside its name, fsynced and renamed (a full disk leaves no stub)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(path, buffer.getvalue())
