"""Checks of the ``analysis`` config group, run before any training.

Models, datamodules and the optimizer check their own keys when they are built; the
``analysis`` keys are only read at the end of training, so a bad value would otherwise cost
a whole run before it surfaced. Every failure is a :class:`~resnet_dyn.errors.ConfigError`:
one line naming the key and what it expects.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from resnet_dyn.dynamics.analyze import DTYPES, METHODS
from resnet_dyn.dynamics.perturbation import ATTACKS, RANDOM_KINDS
from resnet_dyn.errors import ConfigError, check_choice, check_int, check_positive

MAPS = ("sum", "unit", "stage")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


PERTURBATION_KEYS = ("attack", "eps", "steps", "step_size", "random_kind", "seed")


def check_perturbation(node: DictConfig | dict) -> dict[str, Any]:
    """The ``analysis.perturbation`` keys, checked, as keyword arguments of
    :func:`~resnet_dyn.dynamics.perturbation.perturbation_analysis` (keys left out take its
    defaults)."""
    key = "analysis.perturbation"
    p = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    unknown = sorted(set(p) - set(PERTURBATION_KEYS))
    if unknown:
        raise ConfigError(key, f"keys among {list(PERTURBATION_KEYS)}", unknown)
    check_choice(f"{key}.attack", p.get("attack", "fgsm"), ATTACKS)
    # eps null: the attack's customary radius (8/255 L-inf, 0.5 L2)
    check_positive(f"{key}.eps", p.get("eps"), allow_zero=True, optional=True)
    check_int(f"{key}.steps", p.get("steps", 1), 1)
    check_positive(f"{key}.step_size", p.get("step_size"), optional=True)
    check_choice(f"{key}.random_kind", p.get("random_kind", "gaussian"), RANDOM_KINDS)
    check_int(f"{key}.seed", p.get("seed", 0), 0)
    return p


def check_analysis_config(acfg: DictConfig | dict, num_units: int) -> dict[str, Any]:
    """Every ``analysis.*`` key, for a network of ``num_units`` residual units."""
    a = OmegaConf.to_container(acfg, resolve=True) if isinstance(acfg, DictConfig) else acfg
    check_int("analysis.images", a["images"], 1)
    check_units("analysis.units", a["units"], num_units)
    maps = [a["maps"]] if isinstance(a["maps"], str) else a["maps"]
    if not isinstance(maps, list) or not maps or any(m not in MAPS for m in maps):
        raise ConfigError("analysis.maps", f"a non-empty list drawn from {list(MAPS)}", a["maps"])
    check_choice("analysis.method", a["method"], METHODS)
    check_positive("analysis.tol", a["tol"])
    check_int("analysis.top_k", a["top_k"], 1)
    check_choice("analysis.dtype", a["dtype"], tuple(DTYPES))
    hist = a["histogram"]
    if hist["units"] != []:
        check_units("analysis.histogram.units", hist["units"], num_units)
    check_int("analysis.histogram.bins", hist["bins"], 1)
    iv = a["intervention"]
    check_positive(
        "analysis.intervention.skip_scale", iv["skip_scale"], allow_zero=True, optional=True
    )
    check_positive("analysis.intervention.weight_scale", iv["weight_scale"], optional=True)
    if iv["units"] is not None:
        check_units("analysis.intervention.units", iv["units"], num_units, allow_all=False)
    check_perturbation(a["perturbation"])
    check_int("analysis.identity.images", a["identity"]["images"], 1)
    check_positive("analysis.identity.epsilon", a["identity"]["epsilon"])
    check_int("analysis.noise.images", a["noise"]["images"], 1)
    sigmas = a["noise"]["sigmas"]
    if not isinstance(sigmas, list) or not sigmas or not all(_number(s) and s >= 0 for s in sigmas):
        raise ConfigError("analysis.noise.sigmas", "a non-empty list of numbers >= 0", sigmas)
    units = [a["units"]] if isinstance(a["units"], int) else a["units"]
    counted = [hist["units"]] if isinstance(hist["units"], int) else hist["units"]
    return {**a, "maps": maps, "units": units, "histogram": {**hist, "units": counted}}
