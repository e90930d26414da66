"""Receptive windows of convolutional maps, derived from their layers.

Output pixel ``o`` of a map with ``Window(stride=s, lo=l, hi=h)`` (per spatial
axis) depends only on input pixels ``s*o - l .. s*o + h``. Two 3x3 convs give
``Window((1, 1), (2, 2), (2, 2))``: a 5x5 window.

    >>> import torch
    >>> from resnet_dyn.dynamics.maps import unit_map
    >>> from resnet_dyn.models import CifarResNet
    >>> net = CifarResNet(depth=8, input_shape=(3, 8, 8)).eval()
    >>> x = torch.zeros(16, 8, 8)  # a state at unit 0 or 1 (16 channels)
    >>> local_window(unit_map(net, 0, x, "sum"))
    Window(stride=(1, 1), lo=(2, 2), hi=(2, 2))
    >>> local_window(unit_map(net, 1, x, "sum"))  # first conv of stride 2: a 7x7 window
    Window(stride=(2, 2), lo=(3, 3), hi=(3, 3))

Layers that mix all positions (Linear, pooling, unknown modules) raise
:class:`NonLocalMap` with the reason, so callers can fall back to dense Jacobians.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from resnet_dyn.dynamics.maps import UnitMap
from resnet_dyn.models.base import ResidualUnit

POINTWISE = (
    nn.Identity,
    nn.modules.batchnorm._BatchNorm,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.Softplus,
    nn.modules.dropout._DropoutNd,
)


class NonLocalMap(Exception):
    """The map is not a composition of local (convolution-like) layers; the message says why."""


@dataclass(frozen=True)
class Window:
    """Per axis (height, width): output o reads inputs stride*o - lo .. stride*o + hi."""

    stride: tuple[int, int] = (1, 1)
    lo: tuple[int, int] = (0, 0)
    hi: tuple[int, int] = (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        return (self.lo[0] + self.hi[0] + 1, self.lo[1] + self.hi[1] + 1)

    def then(self, nxt: Window) -> Window:
        """This window followed by ``nxt``: strides multiply, reaches grow by stride*reach."""
        s = self.stride
        return Window(
            tuple(s[a] * nxt.stride[a] for a in (0, 1)),
            tuple(s[a] * nxt.lo[a] + self.lo[a] for a in (0, 1)),
            tuple(s[a] * nxt.hi[a] + self.hi[a] for a in (0, 1)),
        )

    def union(self, other: Window) -> Window:
        """Two parallel paths that are summed (branch and shortcut)."""
        if self.stride != other.stride:
            raise NonLocalMap(f"parallel paths with strides {self.stride} and {other.stride}")
        return Window(
            self.stride,
            tuple(max(a, b) for a, b in zip(self.lo, other.lo, strict=True)),
            tuple(max(a, b) for a, b in zip(self.hi, other.hi, strict=True)),
        )


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _conv_window(conv: nn.Conv2d) -> Window:
    if conv.padding_mode != "zeros":
        raise NonLocalMap(f"Conv2d with padding_mode={conv.padding_mode!r}")
    k, s, d = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.dilation)
    reach = tuple(d[a] * (k[a] - 1) for a in (0, 1))
    if conv.padding == "valid":
        lo = (0, 0)
    elif conv.padding == "same":
        lo = tuple(r // 2 for r in reach)
    else:
        lo = _pair(conv.padding)
    # o reads s*o - pad + d*t for t in 0..k-1.
    return Window(s, lo, tuple(reach[a] - lo[a] for a in (0, 1)))


def module_window(m: nn.Module) -> Window:
    """The window of one module (containers are walked)."""
    if isinstance(m, POINTWISE):
        return Window()
    if isinstance(m, nn.Conv2d):
        return _conv_window(m)
    stride = getattr(m, "subsample_stride", None)  # a shortcut that only subsamples pixels
    if stride is not None:
        return Window(_pair(stride))
    if isinstance(m, nn.Sequential):
        w = Window()
        for child in m:
            w = w.then(module_window(child))
        return w
    if isinstance(m, ResidualUnit):
        return unit_window(m, with_act=True)
    raise NonLocalMap(f"{type(m).__name__} is not a recognised local layer")


def unit_window(unit: ResidualUnit, with_act: bool) -> Window:
    w = module_window(unit.branch)
    if unit.shortcut is not None:
        w = w.union(module_window(unit.shortcut))
    return w.then(module_window(unit.act)) if with_act else w


def local_window(f: UnitMap) -> Window:
    """The receptive window of a map of (C, H, W) states; :class:`NonLocalMap` if it has none."""
    if len(f.in_shape) != 3 or len(f.out_shape) != 3:
        raise NonLocalMap(f"states of shape {tuple(f.in_shape)} are not (C, H, W) images")
    w = Window()
    for unit, with_act in f.steps:
        w = w.then(unit_window(unit, with_act))
    return w
