"""A few real images in class folders, ``root/<class>/<image>``, for analysing a trained model.

    resnet-dyn data=image_folder data.root=/path/to/images data.image_size=32 data.batch_size=8

The label of an image is the position of its folder's name in ``classes`` (default: the
sorted folder names), so a folder holding only ``cat/`` and ``ship/`` still gets CIFAR-10's
labels 3 and 8 from the ten CIFAR-10 names. Every image is in all three splits: the test
split is the point, and train/val only let Lightning run on the same images. All images are
read (and every problem reported) when the datamodule is created.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2.functional import pil_to_tensor

from resnet_dyn.data.base import BaseDataModule, Split, TensorImages
from resnet_dyn.errors import ConfigError, DataError, check_bool, check_int


def _visible(path: str) -> bool:
    # Every other file must be an image: a stray file is reported, not silently skipped.
    return not Path(path).name.startswith(".")


GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "F")  # PIL modes of one colour channel


class _ClassFolders(ImageFolder):
    """``ImageFolder`` whose labels follow a given class list, and which reads every file."""

    def __init__(
        self, root: Path, classes: list[str] | None, mode: str, size: int | None, convert: bool
    ):
        self.fixed_classes, self.mode, self.size, self.convert = classes, mode, size, convert
        super().__init__(
            str(root),
            loader=self.read,
            is_valid_file=_visible,
            allow_empty=True,  # a listed class need not have a folder
        )

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        found = sorted(p.name for p in Path(directory).iterdir() if p.is_dir())
        if not found:
            raise DataError(
                f"data.root: no class folders in {directory} (expected {directory}/<class>/<image>)"
            )
        classes = found if self.fixed_classes is None else self.fixed_classes
        for name in found:
            if name not in classes:
                raise DataError(
                    f"data.classes: folder {Path(directory) / name} is not one of the classes"
                    f" {classes}; add it to data.classes or move it out of data.root"
                )
        return classes, {name: i for i, name in enumerate(classes)}

    def read(self, path: str) -> torch.Tensor:
        try:
            with Image.open(path) as image:
                grey = image.mode in GREY_MODES
                if not self.convert and grey != (self.mode == "L"):
                    kind, want = ("greyscale", 1) if grey else ("colour", 3)
                    raise DataError(
                        f"data.channels: {path} is a {kind} image (mode {image.mode}), not"
                        f" {self.mode}; set data.channels={want}, or data.convert=true to"
                        " convert every image"
                    )
                image = image.convert(self.mode)  # drops an alpha channel
                if self.size is not None:
                    image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
                return pil_to_tensor(image)
        except DataError:
            raise
        except UnidentifiedImageError as exc:
            raise DataError(f"data.root: {path} is not an image PIL can read") from exc
        except OSError as exc:  # truncated or otherwise broken image files
            raise DataError(f"data.root: cannot read image {path} ({exc})") from exc


class ImageFolderDataModule(BaseDataModule):
    """Images from ``root/<class>/*`` with ``channels`` colour channels, optionally resized.

    An image with another number of channels (greyscale among colour images, say) is an
    error naming the file, unless ``convert`` converts every image to ``channels``.
    """

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] | None = None,
        image_size: int | None = None,
        channels: int = 3,
        convert: bool = False,
        batch_size: int = 16,
        num_workers: int = 0,
        fraction: float = 1.0,
        seed: int = 0,
        mean: Sequence[float] = (0.4914, 0.4822, 0.4465),
        std: Sequence[float] = (0.2470, 0.2435, 0.2616),
        augment: bool = False,
    ) -> None:
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ConfigError("data.channels", "1 (grey) or 3 (RGB)", channels)
        check_bool("data.convert", convert)
        if augment is not False:
            raise ConfigError("data.augment", "false (image folders are not augmented)", augment)
        super().__init__(
            batch_size=batch_size,
            num_workers=num_workers,
            fraction=fraction,
            seed=seed,
            mean=mean,
            std=std,
            augment=augment,
            channels=channels,
        )
        if image_size is not None:
            check_int("data.image_size", image_size, minimum=1)
        if classes is not None:
            ok = not isinstance(classes, str) and all(isinstance(c, str) for c in classes)
            if not ok or len(classes) == 0 or len(set(classes)) != len(classes):
                raise ConfigError(
                    "data.classes", "null or a list of distinct folder names", classes
                )
            classes = list(classes)
        if root is None or not str(root):
            raise ConfigError("data.root", "a folder of <class>/<image> files", root)
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(
                f"data.root: folder {self.root} not found (expected {self.root}/<class>/<image>)"
            )
        mode = "RGB" if channels == 3 else "L"
        folders = _ClassFolders(
            self.root, classes, mode, image_size, check_bool("data.convert", convert)
        )
        self.classes: list[str] = list(folders.classes)
        self.num_classes = len(self.classes)
        self.files = [Path(path) for path, _ in folders.samples]
        self.images, self.labels = self._read_all(folders)
        self.input_shape = tuple(self.images.shape[1:])
        # A folder of a few images is for analysis: batches simply hold all of them.
        self.batch_size = min(self.batch_size, len(self.labels))
        self.setup()

    def _read_all(self, folders: _ClassFolders) -> tuple[torch.Tensor, torch.Tensor]:
        if not folders.samples:
            raise DataError(
                f"data.root: no images in the class folders of {self.root}"
                f" (expected {self.root}/<class>/<image>)"
            )
        xs, ys = [], []
        for path, (x, y) in zip(self.files, folders, strict=True):
            if xs and x.shape != xs[0].shape:
                first = self.files[0]
                raise DataError(
                    f"data.image_size: {path} is {x.shape[2]}x{x.shape[1]} but {first} is"
                    f" {xs[0].shape[2]}x{xs[0].shape[1]}; set data.image_size to resize them all"
                )
            xs.append(x)
            ys.append(y)
        x = torch.stack(xs).float() / 255.0
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std, torch.tensor(ys, dtype=torch.int64)

    def load_splits(self) -> Split:
        everything = TensorImages(self.images, self.labels)
        return everything, everything, everything
