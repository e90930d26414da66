"""Instantiating config nodes so that a user's mistake surfaces as the one-line error it is."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf

from resnet_dyn.errors import ConfigError, UserError


def build(node: Any, /, key: str | None = None, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``, re-raising a :class:`UserError` unwrapped.

    Hydra wraps whatever a ``_target_`` raises in an InstantiationException with the
    target's name and a repr of the error; a bad value should read as its own message.
    With ``key`` (the node's config key, e.g. ``callbacks.model_checkpoint``), any other
    error of the target's arguments (ValueError, TypeError, Lightning's
    MisconfigurationException) becomes a :class:`ConfigError` naming that key.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if key is None or not isinstance(cause, (ValueError, TypeError, MisconfigurationException)):
            raise
        raise refused_arguments(key, node, cause) from None


def plain_settings(node: Any) -> dict[str, Any]:
    """The resolved values of a ``_target_`` config node without its ``_target_``: what a
    checkpoint or summary stores of a model (plain values, never code)."""
    values = OmegaConf.to_container(node, resolve=True)
    values.pop("_target_", None)
    return values


def refused_arguments(key: str, node: Any, cause: BaseException) -> ConfigError:
    """The one-line error for arguments that the ``_target_`` of ``node`` refuses: it names
    ``key``, the target, the target's reason and the values given (without ``_target_`` and
    ``_partial_``)."""
    given = OmegaConf.to_container(node, resolve=True)
    target = given.pop("_target_", "the target")
    given.pop("_partial_", None)
    reason = " ".join(str(cause).split())
    return ConfigError(key, f"arguments {target} accepts ({reason})", given)


def head_classes(model: Any, data_classes: int, *, training: bool) -> int:
    """The outputs of the model's head: ``model.num_classes`` where its group has that key
    and sets it (``model=torchvision_resnet``), else the data's ``data_classes``.

    Training needs the data's number; an analysis only needs every label to be a class of the
    head, so a larger one is allowed (ImageNet weights, 1000 classes, on a few class folders).
    """
    wanted = model.get("num_classes") if hasattr(model, "get") else None
    if wanted is None:
        return data_classes
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise ConfigError("model.num_classes", "a positive integer or null", wanted)
    if training and wanted != data_classes:
        raise ConfigError(
            "model.num_classes", f"null or {data_classes} (the classes of the data)", wanted
        )
    if wanted < data_classes:
        raise ConfigError(
            "model.num_classes", f"at least {data_classes} (the classes of the data)", wanted
        )
    return wanted
