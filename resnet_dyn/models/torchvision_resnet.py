"""torchvision's ResNet family (ResNet-18 ... 152, Wide ResNet, ResNeXt) as residual nets.

    resnet-dyn model=torchvision_resnet model.arch=resnet18 model.stem=cifar data=cifar10
    resnet-dyn-analyze model=torchvision_resnet model.arch=resnet50 model.num_classes=1000 \
      checkpoint.path=resnet50.pth checkpoint.format=torchvision data=image_folder ...

The network is built by torchvision itself (``torchvision.models.get_model(arch)``) and keeps
torchvision's modules under torchvision's names (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``fc``), so its ``state_dict`` is a torchvision state dict and torchvision's weight files load
into it as they are. On top of them it exposes the shared unit interface of
:mod:`resnet_dyn.models.base`: ``stem`` (conv1, bn1, ReLU, max-pool), ``units`` (the blocks in
forward order: ``layer1.0`` is unit 0; stage s is ``layer{s+1}``) and ``head`` (average pool,
fc). These are views of the same modules, not registered a second time, so parameters,
``.to()``, ``.eval()`` and the state dict are torchvision's alone.

Each block is a :class:`~resnet_dyn.models.base.ResidualUnit` ``relu(alpha * shortcut(x) +
F(x))`` with torchvision's own layers: F is conv1-bn1-ReLU-conv2-bn2 (BasicBlock) or
conv1-bn1-ReLU-conv2-bn2-ReLU-conv3-bn3 (Bottleneck), the shortcut is the identity or the
block's ``downsample`` (1x1 conv + BN, a stage's first unit). With alpha = 1 it computes what
torchvision's ``block.forward`` computes (tested on the block modules themselves).

    >>> import torch
    >>> net = TorchvisionResNet("resnet18", input_shape=(3, 32, 32), num_classes=10, stem="cifar")
    >>> len(net.units), [u.stage for u in net.units], net.units[2].shortcut is not None
    (8, [0, 0, 1, 1, 2, 2, 3, 3], True)
    >>> list(net.state_dict())[:2]
    ['conv1.weight', 'bn1.weight']
    >>> net(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from resnet_dyn.errors import ConfigError, DataError, check_positive
from resnet_dyn.models.base import ResidualNet, ResidualUnit, check_input_shape, scale_weights
from resnet_dyn.models.weights import load_strict, read_weights, torchvision_state

log = logging.getLogger("resnet_dyn")

# torchvision's ResNet family: every member is torchvision.models.ResNet with BasicBlock or
# Bottleneck units (ResNeXt: grouped 3x3 convs; Wide ResNet: wider 3x3 convs).
ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)
STEMS = ("imagenet", "cifar")


def block_branch(block: BasicBlock | Bottleneck) -> nn.Sequential:
    """F of a torchvision block as a Sequential of the block's own conv and BN modules.

    The ReLUs are new, non-inplace modules (torchvision shares one ``inplace=True`` ReLU per
    block, which ``torch.func`` transforms would see writing into their inputs); a ReLU has no
    parameters, so the function is the block's."""
    if isinstance(block, Bottleneck):
        layers = [block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2, nn.ReLU()]
        return nn.Sequential(*layers, block.conv3, block.bn3)
    if isinstance(block, BasicBlock):
        return nn.Sequential(block.conv1, block.bn1, nn.ReLU(), block.conv2, block.bn2)
    raise TypeError(f"not a torchvision ResNet block: {type(block).__name__}")


class TorchvisionResNet(ResidualNet):
    """A member of torchvision's ResNet family with the unit interface; see the module docstring.

    Args:
        arch: the torchvision builder's name, one of :data:`ARCHS`.
        input_shape: (channels, height, width) of the images, from the datamodule. torchvision's
            nets take any size (the head pools adaptively); channels other than 3 change
            ``conv1``'s input channels.
        num_classes: outputs of ``fc``.
        stem: ``imagenet``: torchvision's 7x7 stride-2 conv + 3x3 stride-2 max-pool (images
            of 224x224: layer1 at 56x56); ``cifar``: a 3x3 stride-1 conv and no pool (32x32
            images: layer1 at 32x32). Both keep the key ``conv1.weight``.
        skip_scale: alpha on the shortcut of every unit.
        weight_scale: beta at initialisation, every branch F -> beta * F exactly (train and eval
            mode): the gamma and shift of its last BN (bn2 or bn3), by
            :func:`~resnet_dyn.models.base.scale_weights` (after ``weights`` are loaded).
        weights: a torchvision state dict file to start from (fine-tuning), e.g. torchvision's
            ImageNet weights: every tensor is loaded, except ``fc`` where ``num_classes``
            differs and ``conv1`` where the stem or the channels differ, which keep their
            initialisation (:attr:`kept_at_init` names them). Anything else that does not
            match is a one-line error naming the keys.
    """

    def __init__(
        self,
        arch: str = "resnet18",
        input_shape: Sequence[int] = (3, 224, 224),
        num_classes: int = 1000,
        stem: str = "imagenet",
        skip_scale: float = 1.0,
        weight_scale: float = 1.0,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError("model.arch", "one of " + ", ".join(ARCHS), arch)
        if stem not in STEMS:
            raise ConfigError("model.stem", " or ".join(STEMS), stem)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError("model.num_classes", "a positive integer", num_classes)
        check_positive("model.skip_scale", skip_scale, allow_zero=True)
        check_positive("model.weight_scale", weight_scale)
        channels, _, _ = check_input_shape(input_shape, 3)
        self.arch, self.stem_kind = arch, stem
        tv = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        width = tv.conv1.out_channels
        if stem == "cifar":
            tv.conv1 = nn.Conv2d(channels, width, 3, stride=1, padding=1, bias=False)
            tv.maxpool = nn.Identity()
        elif channels != 3:
            tv.conv1 = nn.Conv2d(channels, width, 7, stride=2, padding=3, bias=False)
        # torchvision's own initialisation of its first conv, for the replaced ones too.
        nn.init.kaiming_normal_(tv.conv1.weight, mode="fan_out", nonlinearity="relu")
        # torchvision's modules under torchvision's names: the state dict is torchvision's.
        for name, module in tv.named_children():
            self.add_module(name, module)
        units = [
            ResidualUnit(
                branch=block_branch(block),
                shortcut=block.downsample if block.downsample is not None else nn.Identity(),
                act=nn.ReLU(),
                skip_scale=skip_scale,
                stage=stage,
            )
            for stage, layer in enumerate((tv.layer1, tv.layer2, tv.layer3, tv.layer4))
            for block in layer
        ]
        # Views of the registered modules, set around nn.Module's registration so that no
        # parameter appears twice in the state dict.
        self._set_view("stem", nn.Sequential(tv.conv1, tv.bn1, nn.ReLU(), tv.maxpool))
        self._set_view("units", nn.ModuleList(units))
        self._set_view("head", nn.Sequential(tv.avgpool, nn.Flatten(), tv.fc))
        self.kept_at_init: list[str] = []
        if weights is not None:
            self._start_from(weights)
        scale_weights(self, weight_scale)  # the post-hoc path, so both mean the same

    def _start_from(self, weights: str) -> None:
        if not isinstance(weights, str) or not weights:
            raise ConfigError(
                "model.weights", "null or the path of a torchvision state dict", weights
            )
        path = Path(weights)
        state = torchvision_state(read_weights(path, "model.weights"))
        if state is None:
            raise DataError(
                f"model.weights: {path} is not a torchvision state dict (a dictionary of tensors, "
                "as torch.save(model.state_dict()) writes)"
            )
        own = self.state_dict()
        # The parts another task or image size changes by design keep their initialisation.
        self.kept_at_init = [
            k for k in ("conv1.weight", "fc.weight", "fc.bias")
            if k in state and k in own and state[k].shape != own[k].shape
        ]  # fmt: skip
        kept = {k: own[k] for k in self.kept_at_init}
        load_strict(self, state | kept, "model.weights", path)
        if self.kept_at_init:
            log.info("model.weights: %s kept at initialisation", ", ".join(self.kept_at_init))

    def _set_view(self, name: str, module: nn.Module) -> None:
        object.__setattr__(self, name, module)

    def train(self, mode: bool = True) -> TorchvisionResNet:
        # The views' containers are not children; keep their flags with the net's.
        super().train(mode)
        for view in (self.stem, self.units, self.head):
            view.train(mode)
        return self

    def extra_repr(self) -> str:
        return f"arch={self.arch}, stem={self.stem_kind}"
