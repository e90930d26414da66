"""What every datamodule shares: argument checks, seeded splits and subsets, loaders, probe batches.

A subclass sets ``input_shape`` and ``num_classes`` in ``__init__`` (the model is built from them
before any data is read) and implements :meth:`BaseDataModule.load_splits`. One whose images are
uint8 levels also implements :meth:`BaseDataModule.raw_arrays` and sets the ``resident_*``
attributes: with ``loader="resident"`` its loaders are then
:class:`~resnet_dyn.data.resident.ResidentLoader` on the training device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from resnet_dyn.data.resident import ResidentLoader, fits
from resnet_dyn.errors import ConfigError, check_bool, check_int

Split = tuple[Dataset, Dataset, Dataset]
LOADERS = ("resident", "torchvision")

log = logging.getLogger(__name__)


class TensorImages(Dataset):
    """In-memory ``(x, y)`` tensors; ``transform`` (if any) applies to each ``x`` as it is read.

    ``levels`` (optional): the same images as uint8 levels, for the resident loader.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        transform: Callable[[Tensor], Tensor] | None = None,
        levels: Tensor | None = None,
    ):
        self.x, self.y, self.transform, self.levels = x, y, transform, levels

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x = self.x[i]
        return (self.transform(x) if self.transform else x), self.y[i]


class Transformed(Dataset):
    """``dataset`` with ``transform`` applied to its inputs (train and val share one loaded set)."""

    def __init__(self, dataset: Dataset, transform: Callable[[Any], Tensor]):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.dataset[i]
        return self.transform(x), torch.as_tensor(y, dtype=torch.int64)


def seeded_permutation(n: int, seed: int) -> list[int]:
    """The same permutation of ``range(n)`` for the same seed, on every machine."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def check_loader(value: Any) -> str:
    if not isinstance(value, str) or value not in LOADERS:
        raise ConfigError("data.loader", "resident or torchvision", value)
    return value


def unwrap(dataset: Dataset) -> tuple[Dataset, Tensor | None]:
    """The dataset under ``Subset`` and ``Transformed`` layers, and which of its items
    ``dataset`` holds, in order (None: all of them)."""
    if isinstance(dataset, Subset):
        base, inner = unwrap(dataset.dataset)
        index = torch.as_tensor(dataset.indices, dtype=torch.int64)
        return base, index if inner is None else inner[index]
    if isinstance(dataset, Transformed):
        return unwrap(dataset.dataset)
    return dataset, None


def _numbers(key: str, values: Any, length: int) -> tuple[float, ...]:
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) == length
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if not ok:
        raise ConfigError(key, f"a list of {length} numbers (one per channel)", values)
    return tuple(float(v) for v in values)


def check_stats(mean: Any, std: Any, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel normalisation constants; ``std`` must be positive."""
    mean_t = _numbers("data.mean", mean, channels)
    std_t = _numbers("data.std", std, channels)
    if min(std_t) <= 0:
        raise ConfigError("data.std", "positive numbers", list(std_t))
    return mean_t, std_t


class BaseDataModule(L.LightningDataModule):
    """Checks the common ``data.*`` keys and serves the splits of :meth:`load_splits`.

    Batches are ``(x float32 normalised, y int64)``; the training loader shuffles, the others
    keep the split order. ``fraction`` < 1 trains on the first part of a seeded permutation of
    the training split, so smaller fractions are subsets of larger ones.

    ``loader``: ``"torchvision"`` serves the datasets through ``DataLoader`` (per-sample
    transforms, ``num_workers`` processes); ``"resident"`` (only where :meth:`raw_arrays`
    gives uint8 images) puts the three splits on the training device and augments batches
    there, falling back to ``"torchvision"`` with a warning when they would take more than
    half of its free memory (:data:`resnet_dyn.data.resident.MEMORY_FRACTION`).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    resident_padding: int = 0  # random-crop padding of resident training batches when augmenting
    resident_flip: bool = False  # whether resident training batches are mirrored when augmenting
    resident_max_value: int = 255  # the uint8 level that means 1.0

    def __init__(
        self,
        *,
        batch_size: int,
        num_workers: int,
        fraction: float,
        seed: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool,
        channels: int,
        loader: str = "torchvision",
    ) -> None:
        super().__init__()
        self.batch_size = check_int("data.batch_size", batch_size, minimum=1)
        self.num_workers = check_int("data.num_workers", num_workers, minimum=0)
        numeric = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
        if not numeric or not 0 < fraction <= 1:
            raise ConfigError("data.fraction", "a number in (0, 1]", fraction)
        self.fraction = float(fraction)
        self.seed = check_int("data.seed", seed)
        self.mean, self.std = check_stats(mean, std, channels)
        self.augment = check_bool("data.augment", augment)
        self.loader = check_loader(loader)
        self._splits: Split | None = None
        self._resident: dict[str, tuple[tuple[Tensor, Tensor], ...] | None] = {}

    def load_splits(self) -> Split:
        """Return the full ``(train, val, test)`` datasets; called once, by :meth:`setup`."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        train, val, test = self.load_splits()
        if self.fraction < 1:
            keep = max(1, round(self.fraction * len(train)))
            train = Subset(train, seeded_permutation(len(train), self.seed)[:keep])
        if self.batch_size > len(train):
            expected = f"at most the {len(train)} training examples"
            raise ConfigError("data.batch_size", expected, self.batch_size)
        self._splits = (train, val, test)

    def _split(self, index: int) -> Dataset:
        self.setup()
        assert self._splits is not None
        return self._splits[index]

    @property
    def train_set(self) -> Dataset:
        return self._split(0)

    @property
    def val_set(self) -> Dataset:
        return self._split(1)

    @property
    def test_set(self) -> Dataset:
        return self._split(2)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        # A last training batch of one example would break BatchNorm; drop it only then.
        drop_last = shuffle and len(dataset) % self.batch_size == 1  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            drop_last=drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def raw_arrays(self, base: Dataset) -> tuple[Tensor, Tensor] | None:
        """All of ``base`` (a dataset under the splits' ``Subset``/``Transformed`` layers) as
        ``(uint8 (N, C, H, W) levels, int64 labels)``; None: no resident loader."""
        if isinstance(base, TensorImages) and base.levels is not None:
            return base.levels, base.y
        return None

    def _device(self) -> torch.device:
        trainer = getattr(self, "trainer", None)
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def resident_splits(self, device: torch.device) -> tuple[tuple[Tensor, Tensor], ...] | None:
        """``(images, labels)`` of train, val and test on ``device``, once per device; None
        when ``loader`` is torchvision, there are no uint8 levels, or they do not fit."""
        if self.loader != "resident":
            return None
        key = str(device)
        if key not in self._resident:
            self._resident[key] = self._place(device)
        return self._resident[key]

    def _place(self, device: torch.device) -> tuple[tuple[Tensor, Tensor], ...] | None:
        splits = [unwrap(self._split(i)) for i in range(3)]
        raws: dict[int, tuple[Tensor, Tensor] | None] = {}
        for base, _ in splits:
            if id(base) not in raws:
                raws[id(base)] = self.raw_arrays(base)
        if any(raw is None for raw in raws.values()):
            return None
        sizes = [len(self._split(i)) for i in range(3)]  # type: ignore[arg-type]
        nbytes = sum(sizes) * math.prod(self.input_shape)
        if not fits(nbytes, device):
            log.warning(
                "data.loader: the splits (%.0f MiB) do not fit in the free memory of %s;"
                " using data.loader=torchvision",
                nbytes / 2**20,
                device,
            )
            return None
        placed = []
        for base, index in splits:
            images, labels = raws[id(base)]  # type: ignore[misc]
            if index is not None:
                images, labels = images[index], labels[index]
            placed.append((images.to(device).contiguous(), labels.to(device, torch.int64)))
        return tuple(placed)

    def _resident_loader(self, index: int, shuffle: bool) -> ResidentLoader | None:
        device = self._device()
        splits = self.resident_splits(device)
        if splits is None:
            return None
        augment = shuffle and self.augment
        trainer = getattr(self, "trainer", None)
        return ResidentLoader(
            *splits[index],
            batch_size=self.batch_size,
            mean=self.mean,
            std=self.std,
            max_value=self.resident_max_value,
            shuffle=shuffle,
            padding=self.resident_padding if augment else 0,
            flip=self.resident_flip and augment,
            seed=self.seed,
            device=device,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )

    def _either(self, index: int, shuffle: bool) -> DataLoader | ResidentLoader:
        resident = self._resident_loader(index, shuffle)
        return resident if resident is not None else self._loader(self._split(index), shuffle)

    def train_dataloader(self) -> DataLoader | ResidentLoader:
        return self._either(0, shuffle=True)

    def val_dataloader(self) -> DataLoader | ResidentLoader:
        return self._either(1, shuffle=False)

    def test_dataloader(self) -> DataLoader | ResidentLoader:
        return self._either(2, shuffle=False)

    def probe_batch(self, n: int) -> tuple[Tensor, Tensor]:
        """The first ``n`` normalised test examples and their labels, the same on every call."""
        test = self.test_set
        if not isinstance(n, int) or not 1 <= n <= len(test):  # type: ignore[arg-type]
            raise ConfigError("probe_batch n", f"an integer in 1..{len(test)}", n)  # type: ignore[arg-type]
        if isinstance(test, TensorImages) and test.transform is None:
            return test.x[:n].clone(), test.y[:n].clone()
        xs, ys = zip(*(test[i] for i in range(n)), strict=True)
        return torch.stack(xs), torch.as_tensor(ys, dtype=torch.int64)
