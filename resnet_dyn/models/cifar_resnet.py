"""The CIFAR ResNet of He et al. (2016): depth 6n+2, three stages of n units.

    resnet-dyn model=cifar_resnet model.depth=56 data=cifar10

Stem: 3x3 conv to 16*width channels (+ BN + ReLU for post-activation units).
Stages: n units each at 16/32/64 (times ``width``) channels; the first unit of
stages 2 and 3 halves the map. Head: (BN + ReLU for pre-activation) global
average pool, linear. With 10 classes and option A the parameter counts are
the published ones: ResNet-20 269,722; ResNet-56 853,018; ResNet-110 1,727,962.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnet_dyn.errors import ConfigError, check_bool, check_positive
from resnet_dyn.models.base import (
    ResidualNet,
    ResidualUnit,
    check_input_shape,
    kaiming_init,
    scale_weights,
)


class ShortcutA(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the channels equally on both sides.

    ``subsample_stride`` tells the analyses that each output reads one input pixel."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = self.subsample_stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}"


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def make_shortcut(cin: int, cout: int, stride: int, kind: str) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(cin, cout, stride)
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


def basic_branch(cin: int, cout: int, stride: int, preact: bool) -> nn.Sequential:
    """conv-BN-ReLU-conv-BN (post-activation) or BN-ReLU-conv-BN-ReLU-conv (pre-activation)."""
    if preact:
        return nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.ReLU(),
            conv3x3(cin, cout, stride),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            conv3x3(cout, cout),
        )
    return nn.Sequential(
        conv3x3(cin, cout, stride),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        conv3x3(cout, cout),
        nn.BatchNorm2d(cout),
    )


class CifarResNet(ResidualNet):
    """He et al. (2016) CIFAR ResNet; see the module docstring.

    Args:
        depth: 6n+2 layers (20, 32, 44, 56, 110, ...).
        input_shape: (channels, height, width) of the images, from the datamodule.
        num_classes: outputs of the linear head, from the datamodule.
        width: channel multiplier of the 16/32/64 stages.
        shortcut: "A" (subsample + zero-pad, no parameters) or "B" (1x1 conv + BN).
        preact: False: relu(alpha*shortcut(x) + F(x)); True: alpha*x + F(x) (He et al. 2016b).
        skip_scale: alpha on every unit.
        weight_scale: beta on every unit at initialisation, F -> beta * F: the gamma and shift
            of each branch's last BN (post-activation) or its last conv (pre-activation),
            by :func:`~resnet_dyn.models.base.scale_weights`.
    """

    def __init__(
        self,
        depth: int = 20,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        width: int = 1,
        shortcut: str = "A",
        preact: bool = False,
        skip_scale: float = 1.0,
        weight_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(
                "model.depth", "6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...)", depth
            )
        if not isinstance(width, int) or width < 1:
            raise ConfigError("model.width", "a positive integer channel multiplier", width)
        if shortcut not in ("A", "B"):
            raise ConfigError("model.shortcut", "A or B", shortcut)
        check_bool("model.preact", preact)
        check_positive("model.skip_scale", skip_scale, allow_zero=True)
        check_positive("model.weight_scale", weight_scale)
        in_channels, _, _ = check_input_shape(input_shape, 3)
        n = (depth - 2) // 6
        self.depth, self.width, self.preact = depth, width, preact
        widths = [16 * width, 32 * width, 64 * width]

        stem: list[nn.Module] = [conv3x3(in_channels, widths[0])]
        if not preact:
            stem += [nn.BatchNorm2d(widths[0]), nn.ReLU()]
        self.stem = nn.Sequential(*stem)

        units = []
        cin = widths[0]
        for stage, cout in enumerate(widths):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                units.append(
                    ResidualUnit(
                        branch=basic_branch(cin, cout, stride, preact),
                        shortcut=make_shortcut(cin, cout, stride, shortcut),
                        act=nn.Identity() if preact else nn.ReLU(),
                        skip_scale=skip_scale,
                        stage=stage,
                    )
                )
                cin = cout
        self.units = nn.ModuleList(units)

        head: list[nn.Module] = [nn.BatchNorm2d(cin), nn.ReLU()] if preact else []
        head += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
        self.head = nn.Sequential(*head)

        kaiming_init(self.modules())
        scale_weights(self, weight_scale)  # the post-hoc path, so both mean the same
