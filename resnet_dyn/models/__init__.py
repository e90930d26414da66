"""nn.Modules only: every model is stem -> ordered residual units -> head (see ``base``)."""

from resnet_dyn.models.base import (
    ResidualNet,
    ResidualUnit,
    branch_weights,
    scale_weights,
    set_skip_scale,
)
from resnet_dyn.models.cifar_resnet import CifarResNet
from resnet_dyn.models.dense import MLP, DeepResNet, DenseResNet

__all__ = [
    "MLP",
    "CifarResNet",
    "DeepResNet",
    "DenseResNet",
    "ResidualNet",
    "ResidualUnit",
    "branch_weights",
    "scale_weights",
    "set_skip_scale",
]
