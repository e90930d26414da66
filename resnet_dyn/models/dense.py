"""Dense residual networks and their MLP counterparts (Lagzi), and Hauser's deep ResNets.

    resnet-dyn model=dense_resnet model.tied=true data=circles
    resnet-dyn model=mlp data=circles
    resnet-dyn model=deep_resnet model.depth=100 model.block=fc data=mnist

DenseResNet: x(t+1) = alpha*x(t) + f(W x(t) + b) for T layers, f in {sigmoid,
tanh, relu}; ``tied`` shares one (W, b) across all layers. MLP: x(t+1) = f(W x(t) + b).
DeepResNet: L blocks x + F(x) at constant width, F = W2 f(W1 x) (fully
connected) or conv3x3-f-conv3x3 (convolutional), optionally with BN.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

from torch import nn

from resnet_dyn.errors import ConfigError, check_bool, check_positive
from resnet_dyn.models.base import (
    ResidualNet,
    ResidualUnit,
    kaiming_init,
    make_activation,
    scale_weights,
)


def _check_depth_width(depth: int, width: int) -> None:
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError("model.depth", "a positive integer number of layers", depth)
    if not isinstance(width, int) or width < 1:
        raise ConfigError("model.width", "a positive integer", width)


class DenseResNet(ResidualNet):
    """Lagzi's dense ResNet: N neurons (``width``) in each of T (``depth``) layers.

    Args:
        depth: number of layers T.
        input_shape: shape of one input; it is flattened, and projected linearly to
            ``width`` when its size differs (or when ``input_projection`` is true).
        num_classes: outputs of the linear head on x(T).
        width: neurons per layer N.
        activation: sigmoid (the paper), tanh or relu.
        tied: share one (W, b) across all layers.
        skip_scale: alpha on every layer.
        weight_scale: beta multiplying every W at initialisation.
        input_projection: force (true) or forbid (false) the projection; null: only when needed.
    """

    residual = True

    def __init__(
        self,
        depth: int = 15,
        input_shape: Sequence[int] = (2,),
        num_classes: int = 2,
        width: int = 3,
        activation: str = "sigmoid",
        tied: bool = True,
        skip_scale: float = 1.0,
        weight_scale: float = 1.0,
        input_projection: bool | None = None,
    ) -> None:
        super().__init__()
        _check_depth_width(depth, width)
        check_positive("model.skip_scale", skip_scale, allow_zero=True)
        check_positive("model.weight_scale", weight_scale)
        make_activation(activation)  # validates the name before anything is built
        check_bool("model.tied", tied)
        check_bool("model.input_projection", input_projection, optional=True)
        in_features = math.prod(int(s) for s in input_shape)
        project = in_features != width if input_projection is None else input_projection
        if not project and in_features != width:
            raise ConfigError(
                "model.input_projection",
                f"true or null for inputs of size {in_features} != width {width}",
                False,
            )
        self.depth, self.width, self.tied, self.activation = depth, width, tied, activation
        self.skip_scale = skip_scale
        self.stem = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, width) if project else nn.Identity()
        )
        shared = nn.Linear(width, width) if tied else None
        self.units = nn.ModuleList(
            self._make_unit(shared if tied else nn.Linear(width, width)) for _ in range(depth)
        )
        self.head = nn.Linear(width, num_classes)
        kaiming_init(self.modules())
        if weight_scale != 1.0:
            scale_weights(self, weight_scale)

    def _make_unit(self, linear: nn.Linear) -> ResidualUnit:
        branch = nn.Sequential(linear, make_activation(self.activation))
        shortcut = nn.Identity() if self.residual else None
        return ResidualUnit(branch, shortcut, skip_scale=self.skip_scale)

    def unrolled(self, depth: int) -> DenseResNet:
        """A copy of a tied model with ``depth`` layers sharing the trained (W, b)."""

        if not self.tied:
            raise ConfigError("model.tied", "true to unroll a model to another depth", self.tied)
        if not isinstance(depth, int) or depth < 1:
            raise ConfigError("depth", "a positive integer", depth)
        new = copy.deepcopy(self)
        linear = new.units[0].branch[0]
        alphas = [u.skip_scale for u in new.units]
        new.units = nn.ModuleList(new._make_unit(linear) for _ in range(depth))
        for u in new.units:
            u.skip_scale = alphas[-1]
        new.depth = depth
        return new


class MLP(DenseResNet):
    """DenseResNet without skips: x(t+1) = f(W x(t) + b). Same arguments but no skip_scale."""

    residual = False

    def __init__(self, *args, **kwargs) -> None:
        if kwargs.get("skip_scale", 1.0) != 1.0:
            raise ConfigError(
                "model.skip_scale", "no value: an MLP has no skip connections", kwargs["skip_scale"]
            )
        super().__init__(*args, **kwargs)


class DeepResNet(ResidualNet):
    """Hauser's constant-width ResNet of L (``depth``) residual blocks.

    Args:
        depth: number of residual blocks L (2 to 300+).
        input_shape: (features,) or (channels, height, width); fc blocks flatten images.
        num_classes: outputs of the linear head.
        width: features (fc) or channels (conv) of every block.
        block: "fc" (Linear-f-Linear) or "conv" (conv3x3-f-conv3x3).
        batch_norm: BN after each linear map / conv of the block.
        activation: f inside the block.
        final_activation: applied after the sum (post-activation unit); "none" gives x + F(x).
        skip_scale, weight_scale: alpha and beta as for every residual model.
    """

    def __init__(
        self,
        depth: int = 6,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        width: int = 64,
        block: str = "fc",
        batch_norm: bool = True,
        activation: str = "relu",
        final_activation: str = "none",
        skip_scale: float = 1.0,
        weight_scale: float = 1.0,
    ) -> None:
        super().__init__()
        _check_depth_width(depth, width)
        if block not in ("fc", "conv"):
            raise ConfigError("model.block", "fc or conv", block)
        if block == "conv" and len(input_shape) != 3:
            raise ConfigError("model.block", "fc for inputs that are not images", block)
        check_bool("model.batch_norm", batch_norm)
        check_positive("model.skip_scale", skip_scale, allow_zero=True)
        check_positive("model.weight_scale", weight_scale)
        make_activation(activation)
        if final_activation != "none":
            make_activation(final_activation, "model.final_activation")
        self.depth, self.width, self.block = depth, width, block

        if block == "fc":
            in_features = math.prod(int(s) for s in input_shape)
            self.stem = nn.Sequential(nn.Flatten(), nn.Linear(in_features, width))
            self.head = nn.Linear(width, num_classes)
        else:
            self.stem = nn.Conv2d(int(input_shape[0]), width, 3, padding=1, bias=False)
            self.head = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes)
            )

        def layer() -> list[nn.Module]:
            if block == "fc":
                mods: list[nn.Module] = [nn.Linear(width, width, bias=not batch_norm)]
                return mods + ([nn.BatchNorm1d(width)] if batch_norm else [])
            mods = [nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm)]
            return mods + ([nn.BatchNorm2d(width)] if batch_norm else [])

        def unit() -> ResidualUnit:
            branch = nn.Sequential(*layer(), make_activation(activation), *layer())
            act = None if final_activation == "none" else make_activation(final_activation)
            return ResidualUnit(branch, nn.Identity(), act, skip_scale=skip_scale)

        self.units = nn.ModuleList(unit() for _ in range(depth))
        kaiming_init(self.modules())
        if weight_scale != 1.0:
            scale_weights(self, weight_scale)
