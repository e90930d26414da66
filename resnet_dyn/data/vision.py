"""MNIST, CIFAR-10, CIFAR-100 and SVHN through torchvision, from files under ``data_dir``.

    resnet-dyn data=cifar10 data.data_dir=/path/to/data
    resnet-dyn data=mnist data.download=true            # fetch the files first (needs network)

Nothing is downloaded unless ``download`` is true. Missing files stop the run with one line
that names the folder and the files expected there. ``val_size`` images of the training
split, chosen by ``seed``, are held out for validation (without augmentation).

``loader="resident"`` (the default) reads the pixel arrays once into one uint8 tensor per
split on the training device and crops, flips and normalises whole batches there;
``loader="torchvision"`` applies the v2 transforms to each PIL image in a ``DataLoader``.
Both give the same values and the same augmentation distribution.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.transforms import v2

from resnet_dyn.data.base import (
    BaseDataModule,
    Split,
    Transformed,
    seeded_permutation,
)
from resnet_dyn.errors import ConfigError, DataError, check_bool, check_int


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class TorchvisionDataModule(BaseDataModule):
    """Shared by the torchvision datasets; a subclass fills in the class attributes below.

    ``mean``/``std``/``augment`` left as None take the dataset's defaults.
    """

    title: str  # the dataset's name in messages
    folder: str  # where its files lie, relative to data_dir
    files: tuple[str, ...]  # the files torchvision needs there
    shape: tuple[int, int, int]
    classes: int
    padding: int  # random-crop padding when augmenting
    flip: bool  # whether augmentation mirrors images
    checksummed: bool  # torchvision verifies md5 sums of the files
    stats: tuple[tuple[float, ...], tuple[float, ...]]  # per-channel mean and std of the pixels
    augment_default: bool

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 128,
        num_workers: int = 0,
        fraction: float = 1.0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool | None = None,
        download: bool = False,
        val_size: int = 5000,
        loader: str = "resident",
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            fraction=fraction,
            seed=seed,
            mean=self.stats[0] if mean is None else mean,
            std=self.stats[1] if std is None else std,
            augment=self.augment_default if augment is None else augment,
            channels=self.shape[0],
            loader=loader,
        )
        self.resident_padding, self.resident_flip = self.padding, self.flip
        if not isinstance(data_dir, (str, Path)) or not str(data_dir):
            raise ConfigError("data.data_dir", "a folder path", data_dir)
        self.data_dir = Path(data_dir).expanduser()
        self.download = check_bool("data.download", download)
        self.val_size = check_int("data.val_size", val_size, minimum=1)
        self.input_shape = self.shape
        self.num_classes = self.classes

    def open(self, train: bool, download: bool = False) -> Dataset:
        """The torchvision dataset of one split, returning ``(PIL image, label)``."""
        raise NotImplementedError

    def arrays(self, dataset: Any) -> tuple[Tensor, Tensor]:
        """A torchvision dataset of :meth:`open` as ``(uint8 (N, C, H, W), int64 labels)``."""
        raise NotImplementedError

    def raw_arrays(self, base: Dataset) -> tuple[Tensor, Tensor] | None:
        return self.arrays(base) if isinstance(base, datasets.VisionDataset) else None

    @property
    def location(self) -> Path:
        return self.data_dir.resolve() / self.folder

    def missing_files(self) -> list[str]:
        return [name for name in self.files if not (self.location / name).is_file()]

    def expected(self) -> str:
        return f"expected {self.location / ('{' + ','.join(self.files) + '}')}"

    def prepare_data(self) -> None:
        """Check the files are there (download them if ``download``), before torchvision reads."""
        missing = self.missing_files()
        if not missing:
            return
        if not self.download:
            where = self.data_dir.resolve()
            found = f"no {self.title} found in {where}"
            if len(missing) < len(self.files):
                found = f"{self.title} in {where} is incomplete (missing {', '.join(missing)})"
            raise DataError(
                f"data.data_dir: {found} ({self.expected()}); put the files there"
                " or set data.download=true with network access"
            )
        try:
            for train in (True, False):
                self.open(train, download=True)
        except Exception as exc:  # any failure here is the network or the disk
            raise DataError(
                f"data.download: could not download {self.title} into {self.data_dir.resolve()}"
                f" ({_one_line(exc)}); put the files there by hand ({self.expected()})"
            ) from exc

    def _read(self, train: bool) -> Dataset:
        try:
            return self.open(train)
        except Exception as exc:  # torchvision's own errors say nothing about our config keys
            if self.checksummed and isinstance(exc, RuntimeError):
                reason = "are corrupted or not the official release (torchvision's md5 check)"
            else:
                reason = f"could not be read ({_one_line(exc)})"
            raise DataError(
                f"data.data_dir: the {self.title} files in {self.location} {reason}; replace"
                " them, or delete them and set data.download=true with network access"
            ) from exc

    def transforms(self, train: bool) -> v2.Compose:
        steps: list[Any] = [v2.ToImage()]
        if train and self.augment:
            steps.append(v2.RandomCrop(self.shape[1:], padding=self.padding))
            if self.flip:
                steps.append(v2.RandomHorizontalFlip())
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(self.mean), list(self.std)),
            v2.ToPureTensor(),
        ]
        return v2.Compose(steps)

    def load_splits(self) -> Split:
        self.prepare_data()
        full_train, test = self._read(train=True), self._read(train=False)
        n = len(full_train)  # type: ignore[arg-type]
        if self.val_size >= n:
            raise ConfigError("data.val_size", f"fewer than the {n} training images", self.val_size)
        order = seeded_permutation(n, self.seed)
        return (
            Transformed(Subset(full_train, order[self.val_size :]), self.transforms(train=True)),
            Transformed(Subset(full_train, order[: self.val_size]), self.transforms(train=False)),
            Transformed(test, self.transforms(train=False)),
        )


class MNISTDataModule(TorchvisionDataModule):
    """MNIST, ``(1, 28, 28)``: 60,000 training images (55,000 + 5,000 validation), 10,000 test.

    Files: ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (``.gz`` ones
    are unpacked next to themselves). ``augment`` shifts by up to 2 pixels, no flips.
    """

    title, folder = "MNIST", "MNIST/raw"
    files = tuple(
        f"{split}-{kind}-ubyte"
        for split in ("train", "t10k")
        for kind in ("images-idx3", "labels-idx1")
    )
    shape, classes, padding, flip, checksummed = (1, 28, 28), 10, 2, False, False
    stats, augment_default = ((0.1307,), (0.3081,)), False

    def prepare_data(self) -> None:
        # torchvision reads only the unpacked files, and unpacks .gz ones only when downloading.
        for name in self.missing_files():
            packed = self.location / f"{name}.gz"
            if packed.is_file():
                with gzip.open(packed, "rb") as src, open(self.location / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        super().prepare_data()

    def open(self, train: bool, download: bool = False) -> Dataset:
        return datasets.MNIST(self.data_dir, train=train, download=download)

    def arrays(self, dataset: Any) -> tuple[Tensor, Tensor]:
        return dataset.data.unsqueeze(1), torch.as_tensor(dataset.targets, dtype=torch.int64)


def _cifar_arrays(dataset: Any) -> tuple[Tensor, Tensor]:
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return images, torch.as_tensor(dataset.targets, dtype=torch.int64)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10, ``(3, 32, 32)``: 50,000 training images (45,000 + 5,000 validation), 10,000 test.

    ``augment`` (default on): pad by 4, random 32x32 crop, random horizontal flip (He et al.).
    """

    title, folder = "CIFAR-10", "cifar-10-batches-py"
    files = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
    shape, classes, padding, flip, checksummed = (3, 32, 32), 10, 4, True, True
    stats = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    augment_default = True

    def open(self, train: bool, download: bool = False) -> Dataset:
        return datasets.CIFAR10(self.data_dir, train=train, download=download)

    def arrays(self, dataset: Any) -> tuple[Tensor, Tensor]:
        return _cifar_arrays(dataset)


class CIFAR100DataModule(TorchvisionDataModule):
    """CIFAR-100 (fine labels), ``(3, 32, 32)``, 100 classes; otherwise as CIFAR-10."""

    title, folder = "CIFAR-100", "cifar-100-python"
    files = ("train", "test", "meta")
    shape, classes, padding, flip, checksummed = (3, 32, 32), 100, 4, True, True
    stats = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    augment_default = True

    def open(self, train: bool, download: bool = False) -> Dataset:
        return datasets.CIFAR100(self.data_dir, train=train, download=download)

    def arrays(self, dataset: Any) -> tuple[Tensor, Tensor]:
        return _cifar_arrays(dataset)


class SVHNDataModule(TorchvisionDataModule):
    """SVHN cropped digits, ``(3, 32, 32)``: 73,257 training images, 26,032 test ("extra" unused).

    Files: ``<data_dir>/{train,test}_32x32.mat``. ``augment`` shifts by up to 4 pixels, no flips.
    """

    title, folder = "SVHN", "."
    files = ("train_32x32.mat", "test_32x32.mat")
    shape, classes, padding, flip, checksummed = (3, 32, 32), 10, 4, False, True
    stats = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))
    augment_default = False

    def open(self, train: bool, download: bool = False) -> Dataset:
        split = "train" if train else "test"
        return datasets.SVHN(self.data_dir, split=split, download=download)

    def arrays(self, dataset: Any) -> tuple[Tensor, Tensor]:
        labels = torch.as_tensor(dataset.labels, dtype=torch.int64)
        return torch.from_numpy(dataset.data), labels  # already (N, 3, 32, 32)
