"""Dense residual networks and their MLP counterparts (Lagzi), and Hauser's deep ResNets.

    resnet-dyn model=dense_resnet model.tied=true data=circles
    resnet-dyn model=mlp data=circles
    resnet-dyn model=deep_resnet model.depth=100 model.block=fc data=mnist

DenseResNet: x(t+1) = alpha*x(t) + f(W x(t) + b) for T layers, f in {sigmoid,
tanh, relu}; ``tied`` shares one (W, b) across all layers. MLP: x(t+1) = f(W x(t) + b).
The input reaches the N neurons through a learned linear map (``embed="linear"``) or, as in
Lagzi's circles (2-d points in 3 neurons), fixed: in the first coordinates, zeros in the rest
(``embed="zero_pad"``). ``init="orthogonal"`` keeps the spread of the signal through deep
sigmoid layers (the MLP's default; see :func:`centred_orthogonal_init`).
DeepResNet: L blocks x + F(x) at constant width, F = W2 f(W1 x) (fully
connected) or conv3x3-f-conv3x3 (convolutional), optionally with BN.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from resnet_dyn.errors import ConfigError, check_bool, check_choice, check_positive
from resnet_dyn.models.base import (
    ResidualNet,
    ResidualUnit,
    kaiming_init,
    make_activation,
    scale_weights,
)

EMBEDS = ("linear", "zero_pad")
INITS = ("kaiming", "orthogonal")
# Per activation f: (gain, centre) of the orthogonal init. gain = 1 / f'(0) (sigmoid: slope 1/4,
# so 4; tanh: 1; relu: He's sqrt 2); centre = f(0), the mean of f on inputs centred at 0.
ORTHOGONAL = {"sigmoid": (4.0, 0.5), "tanh": (1.0, 0.0), "relu": (math.sqrt(2.0), 0.0)}


class ZeroPad(nn.Module):
    """A fixed embedding: the (flattened) input in the first coordinates, zeros in the rest."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, (0, self.width - x.shape[-1]))

    def extra_repr(self) -> str:
        return f"width={self.width}"


@torch.no_grad()
def centred_orthogonal_init(
    stem: Iterable[nn.Linear],
    layers: Iterable[nn.Linear],
    head: nn.Linear,
    activation: str,
) -> None:
    """An init for deep nets of saturating activations (the sigmoid MLP), in place.

    * ``layers`` (the W of x -> f(W x + b)): orthogonal, gain 1 / f'(0)
      (sigmoid: 4, undoing its slope 1/4), so in f's linear range a layer neither shrinks nor
      grows the spread of its input across samples. Kaiming's ReLU gain sqrt 2 shrinks it by
      sqrt(2)/4 per sigmoid layer: after 15 layers no input can be told apart, and the MLP
      stays at chance.
    * every bias of a map that reads a state (the layers and the head): b = -W c with c = f(0)
      in every coordinate (sigmoid: 0.5), so a state at f's mean gives pre-activations 0, where
      the sigmoid is steepest, not a random offset that pushes some neurons into saturation.
    * ``stem`` (the learned input projection, if any): orthogonal with gain f'(0) (the inverse
      of the layers' gain; sigmoid: 1/4) and bias c, so that inputs normalised to std 1 give a
      state like a layer's output, mean c and spread f'(0): the first layer's pre-activations
      have std about 1, where the sigmoid is steep but not linear.
    * the head: orthogonal (gain 1), centred like the layers.
    """

    gain, centre = ORTHOGONAL[activation]

    def centred(linear: nn.Linear) -> None:
        if linear.bias is not None:
            linear.bias.copy_(-centre * linear.weight.sum(1))

    for linear in stem:
        nn.init.orthogonal_(linear.weight, gain=1.0 / gain)
        if linear.bias is not None:
            nn.init.constant_(linear.bias, centre)
    for linear in layers:
        nn.init.orthogonal_(linear.weight, gain=gain)
        centred(linear)
    nn.init.orthogonal_(head.weight)
    centred(head)


def _check_depth_width(depth: int, width: int) -> None:
    if not isinstance(depth, int) or depth < 1:
        raise ConfigError("model.depth", "a positive integer number of layers", depth)
    if not isinstance(width, int) or width < 1:
        raise ConfigError("model.width", "a positive integer", width)


class DenseResNet(ResidualNet):
    """Lagzi's dense ResNet: N neurons (``width``) in each of T (``depth``) layers.

    Args:
        depth: number of layers T.
        input_shape: shape of one input; it is flattened, and embedded in ``width`` neurons
            when its size differs (or when ``input_projection`` is true).
        num_classes: outputs of the linear head on x(T).
        width: neurons per layer N.
        activation: sigmoid (the paper), tanh or relu.
        tied: share one (W, b) across all layers.
        skip_scale: alpha on every layer.
        weight_scale: beta multiplying every (W, b) at initialisation, x(t+1) =
            alpha x(t) + f(beta (W x(t) + b)), by :func:`~resnet_dyn.models.base.scale_weights`
            (tied: once).
        input_projection: force (true) or forbid (false) the projection; null: only when needed.
        embed: how an input of another size reaches the ``width`` neurons: "linear", a learned
            projection; "zero_pad", fixed: the input in the first coordinates, zeros in the
            rest, no parameters (Lagzi's circles: 2-d points in 3 neurons; needs an input no
            larger than ``width``, and ``input_projection`` null or false).
        init: "kaiming" (Kaiming-normal W, zero b) or "orthogonal"
            (:func:`centred_orthogonal_init`, for deep sigmoid MLPs).
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
        embed: str = "linear",
        init: str = "kaiming",
    ) -> None:
        super().__init__()
        _check_depth_width(depth, width)
        check_positive("model.skip_scale", skip_scale, allow_zero=True)
        check_positive("model.weight_scale", weight_scale)
        make_activation(activation)  # validates the name before anything is built
        check_bool("model.tied", tied)
        check_bool("model.input_projection", input_projection, optional=True)
        check_choice("model.embed", embed, EMBEDS)
        check_choice("model.init", init, INITS)
        in_features = math.prod(int(s) for s in input_shape)
        self.depth, self.width, self.tied, self.activation = depth, width, tied, activation
        self.skip_scale = skip_scale
        self.stem = nn.Sequential(
            nn.Flatten(), self._embedding(in_features, input_projection, embed)
        )
        shared = nn.Linear(width, width) if tied else None
        self.units = nn.ModuleList(
            self._make_unit(shared if tied else nn.Linear(width, width)) for _ in range(depth)
        )
        self.head = nn.Linear(width, num_classes)
        if init == "orthogonal":
            centred_orthogonal_init(
                [m for m in self.stem if isinstance(m, nn.Linear)],
                {id(u.branch[0]): u.branch[0] for u in self.units}.values(),  # tied: once
                self.head,
                activation,
            )
        else:
            kaiming_init(self.modules())
        # The post-hoc path, so both mean the same. After the orthogonal init it keeps the
        # biases centred: b = -W f(0) scales with W.
        scale_weights(self, weight_scale)

    def _embedding(self, in_features: int, input_projection: bool | None, embed: str) -> nn.Module:
        """The map from the flattened input to the ``width`` neurons (see ``embed``)."""
        width = self.width
        if embed == "zero_pad":
            if input_projection:
                expected = "null or false with model.embed=zero_pad (a fixed embedding)"
                raise ConfigError("model.input_projection", expected, input_projection)
            if in_features > width:
                expected = f"linear for inputs of size {in_features} > width {width}"
                raise ConfigError("model.embed", expected, embed)
            return ZeroPad(width) if in_features < width else nn.Identity()
        project = in_features != width if input_projection is None else input_projection
        if not project and in_features != width:
            raise ConfigError(
                "model.input_projection",
                f"true or null for inputs of size {in_features} != width {width}",
                False,
            )
        return nn.Linear(in_features, width) if project else nn.Identity()

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
    """DenseResNet without skips: x(t+1) = f(W x(t) + b). Same arguments but no skip_scale.

    ``init`` defaults to "orthogonal": with Kaiming's init a 15-layer sigmoid MLP forgets its
    input at initialisation and does not train (see :func:`centred_orthogonal_init`).
    """

    residual = False

    def __init__(self, *args, init: str = "orthogonal", **kwargs) -> None:
        if kwargs.get("skip_scale", 1.0) != 1.0:
            raise ConfigError(
                "model.skip_scale", "no value: an MLP has no skip connections", kwargs["skip_scale"]
            )
        super().__init__(*args, init=init, **kwargs)


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
        skip_scale: alpha on every unit.
        weight_scale: beta on every unit at initialisation, F -> beta * F: the gamma and shift
            of each block's last BN, or (``batch_norm`` false) the weight and bias of its last
            linear map / conv, by :func:`~resnet_dyn.models.base.scale_weights`.
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
        scale_weights(self, weight_scale)  # the post-hoc path, so both mean the same
