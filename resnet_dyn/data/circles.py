"""Two concentric circles in the plane (Lagzi): radius 1.0 is class 0, radius 0.5 is class 1.

    resnet-dyn model=dense_resnet data=circles data.noise=0.1

Points come from ``sklearn.datasets.make_circles(factor=0.5)``, drawn once for all three
splits (so no point repeats across splits, even with ``noise=0``) and split in order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sklearn.datasets import make_circles

from resnet_dyn.data.base import BaseDataModule, Split, TensorImages
from resnet_dyn.errors import ConfigError, check_int, check_positive


class CirclesDataModule(BaseDataModule):
    """2-d points with 2 classes; ``noise`` is the std of Gaussian noise added to each point."""

    def __init__(
        self,
        batch_size: int = 100,
        num_workers: int = 0,
        fraction: float = 1.0,
        seed: int = 0,
        mean: Sequence[float] = (0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0),
        augment: bool = False,
        n_train: int = 1000,
        n_val: int = 200,
        n_test: int = 1000,
        noise: float = 0.05,
    ) -> None:
        if augment is not False:
            raise ConfigError("data.augment", "false (circles have no augmentation)", augment)
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            fraction=fraction,
            seed=seed,
            mean=mean,
            std=std,
            augment=augment,
            channels=2,
        )
        self.n_train = check_int("data.n_train", n_train, minimum=1)
        self.n_val = check_int("data.n_val", n_val, minimum=1)
        self.n_test = check_int("data.n_test", n_test, minimum=1)
        check_positive("data.noise", noise, allow_zero=True)
        self.noise = float(noise)
        self.input_shape = (2,)
        self.num_classes = 2
        self.setup()  # instant: surface batch-size errors at once

    def load_splits(self) -> Split:
        total = self.n_train + self.n_val + self.n_test
        points, labels = make_circles(
            n_samples=total, shuffle=True, noise=self.noise, random_state=self.seed, factor=0.5
        )
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        x = (torch.tensor(points, dtype=torch.float32) - mean) / std
        y = torch.tensor(labels, dtype=torch.int64)
        cut = (self.n_train, self.n_train + self.n_val)
        return (
            TensorImages(x[: cut[0]], y[: cut[0]]),
            TensorImages(x[cut[0] : cut[1]], y[cut[0] : cut[1]]),
            TensorImages(x[cut[1] :], y[cut[1] :]),
        )
