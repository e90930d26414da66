"""Post-hoc interventions without retraining: change alpha (skip scale) or beta (weight scale)
on a copy of a trained model, then re-run any analysis.

    weak = with_intervention(net, skip_scale=0.5, units=[19])
    accuracy(weak, x_test, y_test), analyze_units(weak, images, units=[19])[0]["sum"]
    rows = intervention_grid(net, images, (x_test, y_test), skip_scales=[0.5, 1.0, 2.0], units=[19])
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from resnet_dyn.dynamics.maps import check_eval
from resnet_dyn.dynamics.unit_spectra import analyze_units
from resnet_dyn.models.base import ResidualNet, scale_weights, set_skip_scale


def with_intervention(
    net: ResidualNet,
    *,
    skip_scale: float | None = None,
    weight_scale: float | None = None,
    units: int | Iterable[int] | None = None,
) -> ResidualNet:
    """A deep copy of ``net`` with alpha set to ``skip_scale`` and weight scale ``weight_scale``
    applied on ``units`` (all when None); ``net`` is left unchanged.

    The weight scale is :func:`~resnet_dyn.models.base.scale_weights`, the same map as
    ``model.weight_scale`` at construction: F -> beta * F (dense_resnet, mlp: f(beta (W x + b))).
    On a trained model it multiplies the trained values, on top of any beta it was built with."""
    new = copy.deepcopy(net)
    # Both setters iterate over units: a generator must be read once.
    units = list(units) if units is not None and not isinstance(units, int) else units
    if skip_scale is not None:
        set_skip_scale(new, skip_scale, units)
    if weight_scale is not None:
        scale_weights(new, weight_scale, units)
    return new


@torch.no_grad()
def accuracy(net: ResidualNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``net`` (in eval mode) on inputs ``x`` with integer labels ``y``."""
    check_eval(net)
    dtype = next(net.parameters()).dtype
    correct = sum(
        (net(xb.to(dtype)).argmax(1) == yb).sum().item()
        for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True)
    )
    return correct / len(y)


def intervention_grid(
    net: ResidualNet,
    images: torch.Tensor,
    labelled: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    skip_scales: Sequence[float | None] = (None,),
    weight_scales: Sequence[float | None] = (None,),
    units: int | Iterable[int] | None = None,
    analyze: Callable[..., list[dict]] = analyze_units,
    analysis: dict[str, Any] | None = None,
) -> list[dict]:
    """Every combination of ``skip_scales`` x ``weight_scales`` applied to ``units``.

    Each row: ``{"skip_scale", "weight_scale", "accuracy" (on ``labelled``, else None),
    "results": analyze(copy, images, **analysis)}``, e.g. ``analysis={"units": [19],
    "maps": ["sum"]}``; ``analyze=analyze_stages`` for stages.
    """
    rows = []
    for alpha, beta in itertools.product(skip_scales, weight_scales):
        new = with_intervention(net, skip_scale=alpha, weight_scale=beta, units=units)
        acc = accuracy(new, *labelled) if labelled is not None else None
        rows.append(
            {
                "skip_scale": alpha,
                "weight_scale": beta,
                "accuracy": acc,
                "results": analyze(new, images, **(analysis or {})),
            }
        )
    return rows
