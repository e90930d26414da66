"""The one structural interface every model of resnet_dyn shares.

A model is ``stem -> units[0] -> units[1] -> ... -> head``. Each
:class:`ResidualUnit` exposes its parts separately so that analyses can evaluate

* ``unit.sum_map(x) = skip_scale * shortcut(x) + branch(x)`` (before the final activation), and
* ``unit(x) = act(unit.sum_map(x))`` (the whole unit, x_k -> x_{k+1}).

A unit without a shortcut (``shortcut is None``, the MLP) computes ``act(branch(x))``.

    >>> from resnet_dyn.models import CifarResNet
    >>> net = CifarResNet(depth=20, input_shape=(3, 32, 32), num_classes=10)
    >>> len(net.units), net.units[3].stage
    (9, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from resnet_dyn.errors import ConfigError, check_positive


class ResidualUnit(nn.Module):
    """x -> act(skip_scale * shortcut(x) + branch(x)).

    ``skip_scale`` is a plain float, not a buffer, so that checkpoints of
    other projects load strictly and it can be changed post hoc with
    :func:`set_skip_scale`.
    """

    def __init__(
        self,
        branch: nn.Module,
        shortcut: nn.Module | None,
        act: nn.Module | None = None,
        skip_scale: float = 1.0,
        stage: int = 0,
    ) -> None:
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.act = act if act is not None else nn.Identity()
        self.skip_scale = float(skip_scale)
        self.stage = stage

    def sum_map(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.branch(x)
        return self.skip_scale * self.shortcut(x) + self.branch(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.sum_map(x))

    def extra_repr(self) -> str:
        return f"stage={self.stage}, skip_scale={self.skip_scale}"


class ResidualNet(nn.Module):
    """stem -> ordered residual units -> head. Subclasses build the three parts."""

    stem: nn.Module
    units: nn.ModuleList
    head: nn.Module
    # Every unit shares one set of weights, so the net can be unrolled to another depth.
    tied: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for unit in self.units:
            h = unit(h)
        return self.head(h)

    def unit_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The states x_0, ..., x_K: the input of every unit and the output of the last."""
        states = [self.stem(x)]
        for unit in self.units:
            states.append(unit(states[-1]))
        return states

    @property
    def num_stages(self) -> int:
        return max((u.stage for u in self.units), default=-1) + 1

    def unrolled(self, depth: int) -> ResidualNet:
        """A copy with ``depth`` units sharing the trained weights: only for ``tied`` nets."""
        raise ConfigError("model.tied", "true to unroll a model to another depth", self.tied)

    def stage_units(self, stage: int) -> list[int]:
        """Global indices of the units of ``stage`` in forward order."""
        return [k for k, u in enumerate(self.units) if u.stage == stage]


def _unit_indices(net: ResidualNet, units: int | Iterable[int] | None, key: str) -> list[int]:
    if units is None:
        return list(range(len(net.units)))
    idx = [units] if isinstance(units, int) else list(units)
    for k in idx:
        if not isinstance(k, int) or not 0 <= k < len(net.units):
            raise ConfigError(key, f"unit indices in [0, {len(net.units) - 1}]", k)
    return idx


def set_skip_scale(
    net: ResidualNet, alpha: float, units: int | Iterable[int] | None = None
) -> ResidualNet:
    """Set alpha on the given units (all by default), in place, without retraining."""
    check_positive("skip_scale", alpha, allow_zero=True)
    for k in _unit_indices(net, units, "units"):
        if net.units[k].shortcut is None:
            raise ConfigError("skip_scale", "a model with skip connections", type(net).__name__)
        net.units[k].skip_scale = float(alpha)
    return net


def drop_last_unit(net: ResidualNet) -> ResidualNet:
    """Remove the last unit in place (the head then reads x(T-1)); returns ``net``.

    Tied units share one Linear, which the remaining units keep. An optimizer built before
    still holds the dropped unit's own parameters (untied), which then get no gradient.
    """
    if len(net.units) < 2:
        raise ConfigError("model.depth", "at least 2 layers to drop one", len(net.units))
    del net.units[-1]
    if hasattr(net, "depth"):
        net.depth = len(net.units)
    return net


def branch_weights(
    net: ResidualNet, units: int | Iterable[int] | None = None
) -> list[nn.Parameter]:
    """The weight tensors of the convolutions and linear maps in the residual branches of ``units``.

    Parameters shared by several units (tied weights) appear once.
    """
    seen: dict[int, nn.Parameter] = {}
    for k in _unit_indices(net, units, "units"):
        for m in net.units[k].branch.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                seen.setdefault(id(m.weight), m.weight)
    return list(seen.values())


# The layers whose weight and bias are affine in their input: the candidates for the last
# affine layer of a branch, the one that weight scaling multiplies.
AFFINE = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d)


def last_affine(branch: nn.Module) -> nn.Module:
    """The last Conv2d, Linear or (affine) BatchNorm of ``branch`` in forward order.

    Every branch of resnet_dyn is an ``nn.Sequential`` (or nests them), whose modules are
    registered in forward order, so the last one met is the one nearest the branch output.
    """
    last = None
    for m in branch.modules():
        if isinstance(m, AFFINE):
            last = m
    if last is None or getattr(last, "weight", None) is None:
        raise ConfigError(
            "weight_scale", "a residual branch ending in an affine layer", type(branch).__name__
        )
    return last


def scaled_parameters(
    net: ResidualNet, units: int | Iterable[int] | None = None
) -> list[nn.Parameter]:
    """What weight scaling multiplies: weight and bias of the last affine layer of each branch.

    Parameters shared by several units (tied weights) appear once.
    """
    seen: dict[int, nn.Parameter] = {}
    for k in _unit_indices(net, units, "units"):
        layer = last_affine(net.units[k].branch)
        for p in (layer.weight, layer.bias):
            if p is not None:
                seen.setdefault(id(p), p)
    return list(seen.values())


@torch.no_grad()
def scale_weights(
    net: ResidualNet, beta: float, units: int | Iterable[int] | None = None
) -> ResidualNet:
    """Weight scale beta on ``units`` (all by default), in place: multiply the weight and bias
    of the last affine layer (Conv2d, Linear, or BatchNorm's gamma and shift) of each branch.

    * A branch that ends in that layer (cifar_resnet, deep_resnet; BN or not) becomes
      F -> beta * F exactly, in train and in eval mode: scaling a conv that feeds a BatchNorm
      would be undone by the normalisation, and scaling every layer of a ReLU branch would
      give beta**2 * F (without biases) or no simple law at all (with them).
    * A branch f(W x + b) (dense_resnet, mlp) becomes f(beta * (W x + b)): beta is the gain
      of the pre-activation (zero biases at a Kaiming init: f(beta W x)).

    One implementation for ``model.weight_scale`` (the constructors call this after their
    init) and for post-hoc scaling of a trained model (``analysis.intervention``). Tied
    weights are scaled once even when several units share them.
    """
    check_positive("weight_scale", beta)
    if units is not None and getattr(net, "tied", False):
        raise ConfigError("units", "all units (None) for a model with tied weights", units)
    for p in scaled_parameters(net, units):
        p.mul_(beta)
    return net


def kaiming_init(modules: Iterable[nn.Module]) -> None:
    """Kaiming-normal convs and linear maps (zero biases), BN to identity."""
    for m in modules:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def check_input_shape(input_shape: Sequence[int], ndim: int, key: str = "data") -> tuple[int, ...]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != ndim or any(s <= 0 for s in shape):
        what = "(channels, height, width) images" if ndim == 3 else f"{ndim}-d inputs"
        raise ConfigError(key, f"a dataset of {what} for this model", shape)
    return shape


ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def make_activation(name: str, key: str = "model.activation") -> nn.Module:
    if name not in ACTIVATIONS:
        raise ConfigError(key, f"one of {sorted(ACTIVATIONS)}", name)
    return ACTIVATIONS[name]()
