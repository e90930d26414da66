"""Read trained models from files: this project's Lightning checkpoints, akamaster state
dicts, or torchvision state dicts. Here, below both jobs, because training resumes from the
same files that analysis loads.

    net, info = load_model("outputs/.../checkpoints/last.ckpt")
    net, info = load_model("resnet56.th", fmt="akamaster", depth=56)
    net, info = load_model("resnet50.pth", fmt="torchvision", num_classes=1000,
                           model={"arch": "resnet50"}, input_shape=(3, 224, 224))

Every file is read with ``torch.load(weights_only=True)``, so a checkpoint can carry no code,
and a checkpoint never chooses code either: its architecture is a model name from the fixed
registry :data:`resnet_dyn.models.MODELS` plus plain values (numbers, strings, lists), which
are checked and passed to that class; nothing read from a file reaches ``instantiate``.
Loading is strict: a mismatch names the missing and unexpected keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from resnet_dyn.errors import ConfigError, DataError, UserError
from resnet_dyn.models import MODELS, CifarResNet, ResidualNet, TorchvisionResNet
from resnet_dyn.models.weights import load_strict, read_weights, torchvision_state

FORMATS = ("lightning", "akamaster", "torchvision")


def read_checkpoint(path: Path) -> Any:
    """The contents of a checkpoint file, weights only, or a one-line DataError."""
    return read_weights(path, "checkpoint.path")


def _load_strict(net: ResidualNet, state: dict[str, torch.Tensor], path: Path) -> None:
    load_strict(net, state, "checkpoint.path", path)


def akamaster_to_units(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Rename akamaster/pytorch_resnet_cifar10 keys to this project's CifarResNet keys.

    ``module.conv1`` -> ``stem.0``, ``module.bn1`` -> ``stem.1``,
    ``module.layer{s}.{i}.conv1|bn1|conv2|bn2`` -> ``units.{k}.branch.0|1|3|4`` with
    k = (s - 1) * n + i, ``module.linear`` -> ``head.2``. Unknown keys are kept as they are,
    so that strict loading reports them.
    """
    n = (depth - 2) // 6
    parts = {"conv1": 0, "bn1": 1, "conv2": 3, "bn2": 4}
    out = {}
    for key, value in state.items():
        name = key.removeprefix("module.")
        if m := re.fullmatch(r"layer(\d)\.(\d+)\.(conv1|bn1|conv2|bn2)\.(.+)", name):
            k = (int(m[1]) - 1) * n + int(m[2])
            name = f"units.{k}.branch.{parts[m[3]]}.{m[4]}"
        elif m := re.fullmatch(r"(conv1|bn1)\.(.+)", name):
            name = f"stem.{0 if m[1] == 'conv1' else 1}.{m[2]}"
        elif m := re.fullmatch(r"linear\.(.+)", name):
            name = f"head.2.{m[1]}"
        else:
            name = key
        out[name] = value
    return out


def units_to_akamaster(state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`akamaster_to_units` (for exporting and for tests)."""
    n = (depth - 2) // 6
    parts = {0: "conv1", 1: "bn1", 3: "conv2", 4: "bn2"}
    out = {}
    for key, value in state.items():
        if m := re.fullmatch(r"units\.(\d+)\.branch\.(\d)\.(.+)", key):
            s, i = divmod(int(m[1]), n)
            name = f"layer{s + 1}.{i}.{parts[int(m[2])]}.{m[3]}"
        elif m := re.fullmatch(r"stem\.(\d)\.(.+)", key):
            name = f"{'conv1' if m[1] == '0' else 'bn1'}.{m[2]}"
        else:
            name = re.sub(r"^head\.2\.", "linear.", key)
        out[f"module.{name}"] = value
    return out


def _plain(value: Any, where: str) -> str | None:
    """Where ``value`` holds something other than plain data (None, bool, int, float, str,
    lists of them, dicts of them with string keys) or a Hydra key such as ``_target_``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, (list, tuple)):
        return next((w for i, v in enumerate(value) if (w := _plain(v, f"{where}[{i}]"))), None)
    if isinstance(value, dict):
        for key, v in value.items():
            if not isinstance(key, str):
                return f"{where}: a key of type {type(key).__name__}"
            if key.startswith("_") and key.endswith("_"):
                return f"{where}.{key}"
            if w := _plain(v, f"{where}.{key}"):
                return w
        return None
    return f"{where}: a {type(value).__name__}"


# Checkpoints written before the registry stored the model's class path; only these exact
# strings are understood (as names, never imported).
_LEGACY_TARGETS = {f"resnet_dyn.models.{cls.__name__}": name for name, cls in MODELS.items()}


def _build_architecture(arch: dict, path: Path) -> ResidualNet:
    """The registered model class named in ``arch`` built from its plain values, or a
    one-line DataError naming the file; nothing in ``arch`` is imported or called."""

    def refuse(why: str) -> DataError:
        return DataError(f"checkpoint.path: {path} is refused: {why}")

    model = arch.get("model")
    if not isinstance(model, dict):
        raise refuse("its stored architecture has no 'model' dictionary")
    model = dict(model)
    if "name" not in model and model.get("_target_") in _LEGACY_TARGETS:
        model["name"] = _LEGACY_TARGETS[model.pop("_target_")]
    if bad := _plain(arch | {"model": model}, "architecture"):
        raise refuse(
            f"its stored architecture holds {bad}, not a plain value (a checkpoint names "
            f"its model as one of {', '.join(MODELS)} with numbers, strings and lists; "
            "if you trust the file, build the model yourself and load its state_dict)"
        )
    name = model.pop("name", None)
    model.pop("num_classes", None)  # the head's size is the architecture's num_classes
    model.pop("weights", None)  # what training started from: the checkpoint's weights replace it
    if name not in MODELS:
        raise refuse(f"its stored model {name!r} is none of {', '.join(MODELS)}")
    shape, classes = arch.get("input_shape"), arch.get("num_classes")
    if not (isinstance(shape, list) and all(isinstance(d, int) for d in shape)):
        raise refuse(f"its stored input_shape {shape!r} is not a list of integers")
    if not isinstance(classes, int) or isinstance(classes, bool):
        raise refuse(f"its stored num_classes {classes!r} is not an integer")
    try:
        return MODELS[name](**model, input_shape=tuple(shape), num_classes=classes)
    except (TypeError, UserError) as exc:
        raise refuse(f"its stored {name} arguments are invalid ({exc})") from None


def load_torchvision(
    path: Path,
    ckpt: Any,
    model: dict[str, Any],
    input_shape: tuple[int, ...],
    num_classes: int,
) -> tuple[ResidualNet, dict[str, Any]]:
    """A torchvision ResNet state dict (``torch.save(model.state_dict())``, also wrapped as
    ``{'state_dict': ...}`` or with DataParallel's ``module.`` prefix) loaded strictly into
    :class:`~resnet_dyn.models.TorchvisionResNet` built from the ``model`` group's ``arch``,
    ``stem`` and ``skip_scale`` (the file holds weights only). ``weight_scale`` must be 1:
    it scales weights at initialisation, and these come from the file."""
    state = torchvision_state(ckpt)
    if state is None:
        raise DataError(
            f"checkpoint.path: {path} is not a torchvision state dict (a dictionary of "
            "tensors, as torch.save(model.state_dict()) writes, or {'state_dict': ...})"
        )
    if model.get("name", "torchvision_resnet") != "torchvision_resnet":
        raise ConfigError(
            "model", "torchvision_resnet for checkpoint.format=torchvision", model.get("name")
        )
    if model.get("weight_scale", 1.0) != 1.0:
        raise ConfigError(
            "model.weight_scale",
            "1.0 with checkpoint.format=torchvision (the weights come from the file; a "
            "post-hoc beta is analysis.intervention.weight_scale)",
            model.get("weight_scale"),
        )
    settings = {
        "arch": model.get("arch", "resnet18"),
        "stem": model.get("stem", "imagenet"),
        "skip_scale": model.get("skip_scale", 1.0),
    }
    net = TorchvisionResNet(**settings, input_shape=input_shape, num_classes=num_classes)
    _load_strict(net, state, path)
    info = {"format": "torchvision", "input_shape": list(input_shape), "num_classes": num_classes}
    info["model"] = {"name": "torchvision_resnet", **settings, "weight_scale": 1.0}
    return net.eval(), info


def load_model(
    path: str | Path,
    fmt: str = "lightning",
    depth: int | None = None,
    num_classes: int = 10,
    *,
    model: dict[str, Any] | None = None,
    input_shape: Sequence[int] = (3, 224, 224),
) -> tuple[ResidualNet, dict[str, Any]]:
    """The model stored at ``path`` in eval mode, and what is known of it.

    ``fmt="lightning"``: a checkpoint of ``resnet-dyn``; the architecture comes from the
    checkpoint. ``fmt="akamaster"``: ``{'state_dict': {'module.conv1.weight', ...}}``, a
    post-activation option-A CIFAR ResNet of ``depth`` layers on 3x32x32 images.
    ``fmt="torchvision"``: a torchvision ResNet state dict (:func:`load_torchvision`), built
    from ``model`` (the settings of ``model=torchvision_resnet``) with ``num_classes``
    outputs for images of ``input_shape``.
    What is known: ``format``, ``input_shape``, ``num_classes``, ``model`` (the settings it
    was built with: ``name``, ``depth``, ``skip_scale``, ``weight_scale``, ...) and, for a
    lightning checkpoint, ``epoch`` (epochs trained, None when it does not say).
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ConfigError("checkpoint.format", " | ".join(FORMATS), fmt)
    ckpt = read_checkpoint(path)
    if fmt == "torchvision":
        return load_torchvision(path, ckpt, model or {}, tuple(input_shape), num_classes)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise DataError(f"checkpoint.path: {path} holds no 'state_dict' dictionary of tensors")
    if fmt == "akamaster":
        if depth is None:
            raise ConfigError(
                "model.depth", "the depth of the akamaster ResNet (20, 32, ..., 1202)", depth
            )
        net = CifarResNet(
            depth=depth, input_shape=(3, 32, 32), num_classes=num_classes, shortcut="A"
        )
        _load_strict(net, akamaster_to_units(ckpt["state_dict"], depth), path)
        info = {"format": fmt, "input_shape": [3, 32, 32], "num_classes": num_classes}
        info["model"] = {"name": "cifar_resnet", "depth": depth, "shortcut": "A",
                         "skip_scale": 1.0, "weight_scale": 1.0}  # fmt: skip
        return net.eval(), info
    arch = ckpt.get("resnet_dyn")
    if not isinstance(arch, dict):
        raise DataError(
            f"checkpoint.path: {path} is not a resnet-dyn checkpoint (no architecture); "
            "for akamaster files set checkpoint.format=akamaster, for torchvision state "
            "dicts checkpoint.format=torchvision"
        )
    net = _build_architecture(arch, path)
    state = {
        k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")
    }
    _load_strict(net, state, path)
    # Lightning stores the 0-based epoch it saved in; counted from 1 it is the epochs trained
    # (for the checkpoints saved at an epoch's end, as best-*.ckpt and last.ckpt are).
    saved_in = ckpt.get("epoch")
    epoch = saved_in + 1 if isinstance(saved_in, int) else None
    return net.eval(), {"format": fmt, **arch, "epoch": epoch}
