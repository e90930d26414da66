"""Thin Lightning wrappers that run the analyses of ``resnet_dyn.dynamics`` and log them."""

from resnet_dyn.training.callbacks.identity import IdentityCallback
from resnet_dyn.training.callbacks.lagzi import LagziCallback
from resnet_dyn.training.callbacks.noise import NoiseCallback
from resnet_dyn.training.callbacks.perturbation import PerturbationCallback
from resnet_dyn.training.callbacks.spectrum import SpectrumCallback

__all__ = [
    "IdentityCallback",
    "LagziCallback",
    "NoiseCallback",
    "PerturbationCallback",
    "SpectrumCallback",
]
