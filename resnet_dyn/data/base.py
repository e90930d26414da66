"""What every datamodule shares: argument checks, seeded splits and subsets, loaders, probe batches.

A subclass sets ``input_shape`` and ``num_classes`` in ``__init__`` (the model is built from them
before any data is read) and implements :meth:`BaseDataModule.load_splits`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from resnet_dyn.errors import ConfigError

Split = tuple[Dataset, Dataset, Dataset]


class TensorImages(Dataset):
    """In-memory ``(x, y)`` tensors; ``transform`` (if any) applies to each ``x`` as it is read."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor] | None = None):
        self.x, self.y, self.transform = x, y, transform

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


def check_int(key: str, value: Any, minimum: int | None = None) -> int:
    """``value`` as an int, or :class:`ConfigError` naming ``key``."""
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or (minimum is not None and value < minimum)
    ):
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ConfigError(key, expected, value)
    return value


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "true or false", value)
    return value


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
    """

    input_shape: tuple[int, ...]
    num_classes: int

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
        self._splits: Split | None = None

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

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def probe_batch(self, n: int) -> tuple[Tensor, Tensor]:
        """The first ``n`` normalised test examples and their labels, the same on every call."""
        test = self.test_set
        if not isinstance(n, int) or not 1 <= n <= len(test):  # type: ignore[arg-type]
            raise ConfigError("probe_batch n", f"an integer in 1..{len(test)}", n)  # type: ignore[arg-type]
        if isinstance(test, TensorImages) and test.transform is None:
            return test.x[:n].clone(), test.y[:n].clone()
        xs, ys = zip(*(test[i] for i in range(n)), strict=True)
        return torch.stack(xs), torch.as_tensor(ys, dtype=torch.int64)
