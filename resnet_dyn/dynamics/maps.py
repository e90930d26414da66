"""The maps that are linearized: one residual unit or a whole stage, at one image's state.

    >>> import torch
    >>> from resnet_dyn.models import CifarResNet
    >>> _ = torch.manual_seed(0)
    >>> net = CifarResNet(depth=8, input_shape=(3, 8, 8)).eval()  # 3 units, one per stage
    >>> images = torch.randn(2, 3, 8, 8)
    >>> states = unit_states(net, images)          # x_0 .. x_K, each (B, C, H, W)
    >>> [tuple(x.shape) for x in states]
    [(2, 16, 8, 8), (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2)]
    >>> f = unit_map(net, 1, states[1][0], "sum")  # x -> alpha*shortcut(x) + F(x) at image 0
    >>> f.in_shape, f.out_shape                    # unit 1 starts stage 1: stride 2
    (torch.Size([16, 8, 8]), torch.Size([32, 4, 4]))
    >>> f(f.x).shape == f.out_shape
    True

A map acts on ONE sample without a batch dimension (shape ``in_shape``), so that
``torch.func.vmap`` over tangents and ``jvp``/``vjp`` compose with it directly.
Kinds: ``"sum"`` (alpha*shortcut(x) + F(x), before the final activation; for a
pre-activation unit this is the whole unit), ``"unit"`` (x_k -> x_{k+1}) and
``"stage"`` (the composition of a stage's units, at the stage's input).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from resnet_dyn.errors import UserError
from resnet_dyn.models.base import ResidualNet, ResidualUnit

MAP_KINDS = ("sum", "unit", "stage")


class EvalModeError(UserError, RuntimeError):
    """A linearization was asked of a model whose BatchNorm/Dropout layers are in train mode."""


def check_eval(module: nn.Module) -> None:
    """Raise :class:`EvalModeError` unless every BatchNorm and Dropout layer is in eval mode.

    In train mode BatchNorm normalises with the statistics of the batch, so the
    "map of one image" would not exist; switching modes silently would change
    the caller's model, hence an error.
    """
    stochastic = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    if any(m.training for m in module.modules() if isinstance(m, stochastic)):
        raise EvalModeError(
            "model must be in eval mode (BatchNorm uses batch statistics in train mode): "
            "call model.eval()"
        )


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in which every eval-mode BatchNorm2d that directly follows a
    Conv2d inside an ``nn.Sequential`` is folded into that conv.

    The same function up to rounding (~1e-7 relative in float32), with no BatchNorm to
    differentiate: a Jacobian-vector product of a CIFAR unit is 15-20% cheaper.
    """
    module = copy.deepcopy(module)
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        layers, fused = list(seq), []
        while layers:
            layer = layers.pop(0)
            bn = layers[0] if layers else None
            if (
                isinstance(layer, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and not (layer.training or bn.training)
                and bn.running_mean is not None
            ):
                fused.append(fuse_conv_bn_eval(layer, layers.pop(0)))
            else:
                fused.append(layer)
        seq._modules = OrderedDict((str(i), m) for i, m in enumerate(fused))
    return module


@dataclass(eq=False)
class UnitMap:
    """A map of one sample, ``steps`` applied in order, and the point ``x`` it is linearized at.

    Each step is ``(unit, with_act)``: ``unit(h)`` if ``with_act`` else ``unit.sum_map(h)``.
    ``index`` is the global index of the first unit; ``kind`` one of :data:`MAP_KINDS`.
    """

    steps: tuple[tuple[ResidualUnit, bool], ...]
    x: torch.Tensor
    kind: str
    index: int
    out_shape: torch.Size = field(init=False)
    _folded: UnitMap | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.out_shape = self(self.x).shape

    def folded(self) -> UnitMap:
        """This map with its BatchNorm folded into convs (:func:`fold_batchnorm`), made
        once: what Jacobian-vector products evaluate."""
        if self._folded is None:
            steps = tuple((fold_batchnorm(u), act) for u, act in self.steps)
            self._folded = UnitMap(steps, self.x, self.kind, self.index)
        return self._folded

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        h = z.unsqueeze(0)
        for unit, with_act in self.steps:
            h = unit(h) if with_act else unit.sum_map(h)
        return h.squeeze(0)

    def to(self, dtype: torch.dtype) -> UnitMap:
        """The same map in ``dtype`` (copies of the units; this map is unchanged)."""
        if dtype == self.dtype:
            return self
        steps = tuple((copy.deepcopy(u).to(dtype), act) for u, act in self.steps)
        return UnitMap(steps, self.x.to(dtype), self.kind, self.index)

    @property
    def in_shape(self) -> torch.Size:
        return self.x.shape

    @property
    def dim_in(self) -> int:
        return self.x.numel()

    @property
    def dim_out(self) -> int:
        return self.out_shape.numel()

    @property
    def stage(self) -> int:
        return self.steps[0][0].stage

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype


def unit_states(net: ResidualNet, images: torch.Tensor) -> list[torch.Tensor]:
    """x_0, ..., x_K for a batch of images (one forward pass, eval mode enforced)."""
    check_eval(net)
    with torch.no_grad():
        return net.unit_inputs(images)


def unit_map(net: ResidualNet, index: int, x: torch.Tensor, kind: str = "sum") -> UnitMap:
    """The ``"sum"`` or ``"unit"`` map of unit ``index`` at its input ``x`` (one sample)."""
    check_eval(net)
    if not isinstance(index, int) or not 0 <= index < len(net.units):
        raise ValueError(
            f"index: expected a unit index in [0, {len(net.units) - 1}], got {index!r}"
        )
    if kind not in ("sum", "unit"):
        raise ValueError(f"kind: expected sum or unit for a unit map, got {kind!r}")
    return UnitMap(((net.units[index], kind == "unit"),), x, kind, index)


def stage_map(net: ResidualNet, stage: int, x: torch.Tensor) -> UnitMap:
    """The composition of the units of ``stage`` at the stage's input ``x`` (one sample)."""
    check_eval(net)
    idx = net.stage_units(stage) if isinstance(stage, int) else []
    if not idx:
        raise ValueError(
            f"stage: expected a stage index in [0, {net.num_stages - 1}], got {stage!r}"
        )
    return UnitMap(tuple((net.units[k], True) for k in idx), x, "stage", idx[0])
