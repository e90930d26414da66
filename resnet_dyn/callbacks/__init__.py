"""Thin Lightning wrappers that run the analyses of ``resnet_dyn.dynamics`` and log them."""

from resnet_dyn.callbacks.spectrum import SpectrumCallback

__all__ = ["SpectrumCallback"]
