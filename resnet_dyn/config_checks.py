"""Checks of the ``analysis`` and ``optim`` config groups, run before any training.

Models and datamodules check their own keys when they are built; these two groups are only
read later (by the optimizer at the start of training, by the analyses at its end), so a bad
value would otherwise cost a whole run before it surfaced. Every failure is a
:class:`~resnet_dyn.errors.ConfigError`: one line naming the key and what it expects.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from resnet_dyn.dynamics.analyze import DTYPES, METHODS
from resnet_dyn.dynamics.perturbation import ATTACKS, RANDOM_KINDS
from resnet_dyn.errors import ConfigError

MAPS = ("sum", "unit", "stage")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(key: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(key, f"an integer >= {minimum}", value)


def _positive(key: str, value: Any, *, zero: bool = False, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not _number(value) or not (value >= 0 if zero else value > 0):
        expected = "a number >= 0" if zero else "a number > 0"
        raise ConfigError(key, expected + (" or null" if optional else ""), value)


def _choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(key, " | ".join(choices), value)


def check_units(key: str, units: Any, n: int, *, allow_all: bool = True) -> None:
    """``units``: ``all`` (if allowed), one index, or a non-empty list of indices in [0, n)."""
    if allow_all and units == "all":
        return
    listed = [units] if isinstance(units, int) and not isinstance(units, bool) else units
    expected = ("all or " if allow_all else "") + f"a list of unit indices in [0, {n - 1}]"
    if not isinstance(listed, list) or not listed:
        raise ConfigError(key, expected, units)
    for k in listed:
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < n:
            raise ConfigError(key, f"unit indices in [0, {n - 1}]", k)


def check_analysis_config(acfg: DictConfig | dict, num_units: int) -> dict[str, Any]:
    """Every ``analysis.*`` key, for a network of ``num_units`` residual units."""
    a = OmegaConf.to_container(acfg, resolve=True) if isinstance(acfg, DictConfig) else acfg
    _int("analysis.images", a["images"], 1)
    check_units("analysis.units", a["units"], num_units)
    maps = [a["maps"]] if isinstance(a["maps"], str) else a["maps"]
    if not isinstance(maps, list) or not maps or any(m not in MAPS for m in maps):
        raise ConfigError("analysis.maps", f"a non-empty list drawn from {list(MAPS)}", a["maps"])
    _choice("analysis.method", a["method"], METHODS)
    _positive("analysis.tol", a["tol"])
    _int("analysis.top_k", a["top_k"], 1)
    _choice("analysis.dtype", a["dtype"], tuple(DTYPES))
    hist = a["histogram"]
    if hist["units"] != []:
        check_units("analysis.histogram.units", hist["units"], num_units)
    _int("analysis.histogram.bins", hist["bins"], 1)
    iv = a["intervention"]
    _positive("analysis.intervention.skip_scale", iv["skip_scale"], zero=True, optional=True)
    _positive("analysis.intervention.weight_scale", iv["weight_scale"], optional=True)
    if iv["units"] is not None:
        check_units("analysis.intervention.units", iv["units"], num_units, allow_all=False)
    p = a["perturbation"]
    _choice("analysis.perturbation.attack", p["attack"], ATTACKS)
    _positive("analysis.perturbation.eps", p["eps"], zero=True, optional=True)
    _int("analysis.perturbation.steps", p["steps"], 1)
    _positive("analysis.perturbation.step_size", p["step_size"], optional=True)
    _choice("analysis.perturbation.random_kind", p["random_kind"], RANDOM_KINDS)
    _int("analysis.identity.images", a["identity"]["images"], 1)
    _positive("analysis.identity.epsilon", a["identity"]["epsilon"])
    _int("analysis.noise.images", a["noise"]["images"], 1)
    sigmas = a["noise"]["sigmas"]
    if not isinstance(sigmas, list) or not sigmas or not all(_number(s) and s >= 0 for s in sigmas):
        raise ConfigError("analysis.noise.sigmas", "a non-empty list of numbers >= 0", sigmas)
    units = [a["units"]] if isinstance(a["units"], int) else a["units"]
    counted = [hist["units"]] if isinstance(hist["units"], int) else hist["units"]
    return {**a, "maps": maps, "units": units, "histogram": {**hist, "units": counted}}


def check_optimizer(optim: DictConfig, net: nn.Module) -> None:
    """The schedule keys ``check_optim`` leaves to this one, and the optimizer's own arguments,
    by building the optimizer once (torch checks momentum, betas, eps...)."""
    from hydra.utils import instantiate

    sched = optim.schedule
    _positive("optim.schedule.gamma", sched.gamma)
    factor = sched.warmup_start_factor
    if not _number(factor) or not 0 < factor <= 1:
        raise ConfigError("optim.schedule.warmup_start_factor", "a number in (0, 1]", factor)
    try:
        instantiate(optim.optimizer)(net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    except (ValueError, TypeError) as exc:
        given = OmegaConf.to_container(optim.optimizer, resolve=True)
        target = given.pop("_target_", "the optimizer")  # type: ignore[union-attr]
        given.pop("_partial_", None)  # type: ignore[union-attr]
        reason = " ".join(str(exc).split())
        raise ConfigError(
            "optim.optimizer", f"arguments {target} accepts ({reason})", given
        ) from None
