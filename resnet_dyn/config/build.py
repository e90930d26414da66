"""Instantiating config nodes so that a user's mistake surfaces as the one-line error it is."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from resnet_dyn.errors import UserError


def build(node: Any, /, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate(node, **kwargs)``, re-raising a :class:`UserError` unwrapped.

    Hydra wraps whatever a ``_target_`` raises in an InstantiationException with the
    target's name and a repr of the error; a bad value should read as its own message.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise
