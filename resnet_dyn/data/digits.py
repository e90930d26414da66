"""scikit-learn's bundled 8x8 handwritten digits: real images, nothing to download.

    resnet-dyn data=digits data.batch_size=64 data.fraction=0.5

The 1,797 images are split once, stratified by class and seeded by ``seed``: 30% test
(540 images), 10% validation (180), 60% training (1,077).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.transforms import v2

from resnet_dyn.data.base import BaseDataModule, Split, TensorImages

TEST_FRACTION = 0.3
VAL_FRACTION = 0.1


class DigitsDataModule(BaseDataModule):
    """Digits 0-9 as ``(1, 8, 8)`` images in [0, 1], normalised by ``mean``/``std``.

    ``augment`` shifts each training image by up to one pixel (no flips: digits are not
    mirror-symmetric). ``loader="resident"`` keeps the pixel levels 0..16 as uint8 and shifts
    and normalises whole batches; ``loader="torchvision"`` shifts each normalised image.
    """

    resident_padding, resident_flip, resident_max_value = 1, False, 16

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        fraction: float = 1.0,
        seed: int = 0,
        mean: Sequence[float] = (0.3053,),
        std: Sequence[float] = (0.3760,),
        augment: bool = False,
        loader: str = "resident",
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            fraction=fraction,
            seed=seed,
            mean=mean,
            std=std,
            augment=augment,
            channels=1,
            loader=loader,
        )
        self.input_shape = (1, 8, 8)
        self.num_classes = 10
        self.setup()  # small and in memory: surface split or batch-size errors at once

    def load_splits(self) -> Split:
        digits = load_digits()
        levels = torch.tensor(digits.images, dtype=torch.uint8).unsqueeze(1)  # 0..16
        x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
        x = (x - self.mean[0]) / self.std[0]
        y = torch.tensor(digits.target, dtype=torch.int64)
        index = list(range(len(y)))
        rest, test = train_test_split(
            index, test_size=TEST_FRACTION, stratify=y, random_state=self.seed
        )
        train, val = train_test_split(
            rest,
            test_size=VAL_FRACTION / (1 - TEST_FRACTION),
            stratify=y[rest],
            random_state=self.seed,
        )
        shift = None
        if self.augment:
            background = -self.mean[0] / self.std[0]  # a zero pixel, after normalisation
            shift = v2.RandomCrop(8, padding=1, fill=background)
        return (
            TensorImages(x[train], y[train], shift, levels=levels[train]),
            TensorImages(x[val], y[val], levels=levels[val]),
            TensorImages(x[test], y[test], levels=levels[test]),
        )
