"""LightningDataModules, one per ``conf/data/<name>.yaml``; each knows its ``input_shape`` and
``num_classes`` as soon as it is created, and serves ``(x float32 normalised, y int64)`` batches.

    resnet-dyn data=digits          # default: scikit-learn's 8x8 digits, nothing to download
    resnet-dyn data=cifar10 data.data_dir=/path/to/data
    resnet-dyn data=cifar10 data.loader=torchvision data.num_workers=8   # per-image transforms
    resnet-dyn data=circles data.noise=0.1

    >>> dm = DigitsDataModule(batch_size=64, augment=True)   # loader="resident" by default
    >>> x, y = next(iter(dm.train_dataloader()))            # a ResidentLoader on the CPU here
    >>> x.shape, x.dtype, y.dtype
    (torch.Size([64, 1, 8, 8]), torch.float32, torch.int64)

``data.loader``: for the in-memory image datasets (digits, MNIST, CIFAR-10/100, SVHN),
``resident`` holds each split as one uint8 tensor on the training device (the Trainer's root
device) and crops, flips and normalises whole batches there (:mod:`resnet_dyn.data.resident`);
``torchvision`` runs the per-image v2 transforms in a ``DataLoader`` with ``num_workers``.
Both give the same values and the same augmentation distribution; the resident epochs are a
function of ``(seed, epoch)`` and survive a resume. Circles and image folders always use
the ``DataLoader``.
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
