"""User-facing errors: one line that names the offending key or file and what is expected,
and the one set of value checks that raise them (configs, models, data, callbacks, analyses).

Entry points catch :class:`UserError` and print ``error: <message>`` instead of a
traceback (set ``HYDRA_FULL_ERROR=1`` to see the traceback anyway).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any


class UserError(Exception):
    """Bad input that the user can fix; its message is a single line."""


class ConfigError(UserError, ValueError):
    """An invalid config value.

    >>> str(ConfigError("model.depth", "6n+2 (20, 32, 44, 56, 110, ...)", 21))
    'model.depth: expected 6n+2 (20, 32, 44, 56, 110, ...), got 21'
    """

    def __init__(self, key: str, expected: str, got: Any) -> None:
        self.key = key
        super().__init__(f"{key}: expected {expected}, got {got!r}")


class DataError(UserError, FileNotFoundError):
    """A dataset, image folder or file that is missing or unreadable."""


def check_int(key: str, value: Any, minimum: int | None = None) -> int:
    """``value`` if it is an integer (>= ``minimum``), else :class:`ConfigError` naming ``key``."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or (minimum is not None and value < minimum)
    ):
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ConfigError(key, expected, value)
    return value


def check_positive(
    key: str, value: Any, *, allow_zero: bool = False, optional: bool = False
) -> Any:
    """``value`` if it is a number > 0 (>= 0 with ``allow_zero``; or None when ``optional``),
    else :class:`ConfigError` naming ``key``."""
    if value is None and optional:
        return value
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (ok and (value >= 0 if allow_zero else value > 0)):
        expected = "a number >= 0" if allow_zero else "a number > 0"
        raise ConfigError(key, expected + (" or null" if optional else ""), value)
    return value


def check_choice(key: str, value: Any, choices: Sequence[str]) -> Any:
    """``value`` if it is one of ``choices``, else :class:`ConfigError` listing them."""
    if value not in choices:
        raise ConfigError(key, " | ".join(map(str, choices)), value)
    return value


def check_bool(key: str, value: Any, *, optional: bool = False) -> bool | None:
    """``value`` if it is true or false (or None when ``optional``), else :class:`ConfigError`."""
    if isinstance(value, bool) or (optional and value is None):
        return value
    raise ConfigError(key, "true or false" + (" or null" if optional else ""), value)


def exit_for_user_error(exc: UserError, multirun: bool) -> None:
    """Print ``error: <message>``; in a single run exit 2 (re-raise with HYDRA_FULL_ERROR=1).

    In a sweep it returns, so that the next job runs (the failure is in this job's summary).
    """
    print(f"error: {exc}", file=sys.stderr)
    if multirun:
        return
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    sys.exit(2)
