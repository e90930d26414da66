"""LightningDataModules, one per ``conf/data/<name>.yaml``; each knows its ``input_shape`` and
``num_classes`` as soon as it is created, and serves ``(x float32 normalised, y int64)`` batches.

    resnet-dyn data=digits          # default: scikit-learn's 8x8 digits, nothing to download
    resnet-dyn data=cifar10 data.data_dir=/path/to/data
    resnet-dyn data=circles data.noise=0.1
"""

from resnet_dyn.data.base import BaseDataModule
from resnet_dyn.data.circles import CirclesDataModule
from resnet_dyn.data.digits import DigitsDataModule
from resnet_dyn.data.folder import ImageFolderDataModule
from resnet_dyn.data.vision import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    MNISTDataModule,
    SVHNDataModule,
    TorchvisionDataModule,
)

__all__ = [
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CirclesDataModule",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MNISTDataModule",
    "SVHNDataModule",
    "TorchvisionDataModule",
]
