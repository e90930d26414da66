"""Weights from files, as data: reading a weights-only file, recognising a torchvision state
dict, loading one strictly with a one-line account of what does not match.

    state = torchvision_state(read_weights(Path("resnet18.pth"), "model.weights"))
    load_strict(net, state, "model.weights", path)   # or a DataError naming the keys

Below both the model classes (a torchvision ResNet can start from a weights file) and the
checkpoint readers, so that neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnet_dyn.errors import DataError


def read_weights(path: Path, key: str) -> Any:
    """The contents of ``path``, read with ``torch.load(weights_only=True)`` (no code can
    load), or a one-line DataError naming the config ``key`` that gave the path."""
    if not path.is_file():
        raise DataError(f"{key}: no file {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or a pickle that needs code
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{key}: {path} is not a readable weights-only checkpoint ({first})"
        ) from None


def is_tensor_dict(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def torchvision_state(content: Any) -> dict[str, torch.Tensor] | None:
    """The state dict in a file's ``content`` as torchvision's weights are distributed
    (``torch.save(model.state_dict())``), also wrapped as ``{'state_dict': ...}`` or saved
    from ``nn.DataParallel`` / DDP (every key prefixed ``module.``, removed here); None when
    ``content`` is none of these."""
    if isinstance(content, dict) and is_tensor_dict(content.get("state_dict")):
        content = content["state_dict"]
    if not is_tensor_dict(content):
        return None
    if content and all(k.startswith("module.") for k in content):
        return {k.removeprefix("module."): v for k, v in content.items()}
    return dict(content)


def mismatch(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> str:
    """``""`` when ``state`` has exactly ``own``'s keys and shapes, else what differs:
    ``missing: ...; unexpected: ...; wrong shape: ...`` (four keys each, then a count)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    parts = []
    for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            shown = ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")
            parts.append(f"{name}: {shown}")
    return "; ".join(parts)


def load_strict(net: nn.Module, state: dict[str, torch.Tensor], key: str, path: Path) -> None:
    """``net.load_state_dict(state, strict=True)``, or a one-line DataError naming ``key``,
    the file and the mismatched keys. BatchNorm batch counters missing from the file (files
    saved before PyTorch 0.4.1, torchvision's older weights) are taken from ``net``: they
    never affect evaluation."""
    own = net.state_dict()
    state = dict(state)
    for name in own:
        if name.endswith("num_batches_tracked") and name not in state:
            state[name] = own[name]
    if problem := mismatch(own, state):
        raise DataError(f"{key}: {path} does not match the architecture; {problem}")
    net.load_state_dict(state, strict=True)
