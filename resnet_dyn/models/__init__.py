"""The models, nn.Modules: every one is stem -> ordered residual units -> head (see ``base``);
reading them back from checkpoint files is ``checkpoints``."""

from typing import Any

from resnet_dyn.models.base import (
    ResidualNet,
    ResidualUnit,
    branch_weights,
    drop_last_unit,
    scale_weights,
    scaled_parameters,
    set_skip_scale,
)
from resnet_dyn.models.cifar_resnet import CifarResNet
from resnet_dyn.models.dense import MLP, DeepResNet, DenseResNet
from resnet_dyn.models.torchvision_resnet import TorchvisionResNet

# The model classes a checkpoint may name (by key): loading looks the name up here, so a
# file never chooses what code runs. The keys are the option names of conf/model.
MODELS: dict[str, type[ResidualNet]] = {
    "cifar_resnet": CifarResNet,
    "dense_resnet": DenseResNet,
    "mlp": MLP,
    "deep_resnet": DeepResNet,
    "torchvision_resnet": TorchvisionResNet,
}


def model_name(net: ResidualNet) -> str | None:
    """The :data:`MODELS` key of ``net``'s class, or None for a class not registered."""
    return next((name for name, cls in MODELS.items() if type(net) is cls), None)


def group_model_name(node: Any) -> str | None:
    """The :data:`MODELS` key of a ``model`` config group, from the class its ``_target_``
    names (compared as a string: nothing is imported), or None."""
    target = str(node.get("_target_", "")).rsplit(".", 1)[-1]
    return next((name for name, cls in MODELS.items() if cls.__name__ == target), None)


__all__ = [
    "MLP",
    "MODELS",
    "CifarResNet",
    "DeepResNet",
    "DenseResNet",
    "ResidualNet",
    "ResidualUnit",
    "TorchvisionResNet",
    "branch_weights",
    "drop_last_unit",
    "group_model_name",
    "model_name",
    "scale_weights",
    "scaled_parameters",
    "set_skip_scale",
]
