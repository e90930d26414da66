"""The datamodules on real data: scikit-learn's digits and circles, MNIST from generated idx
files read by torchvision, image folders of generated PNGs, and the shipped ``conf/data`` yamls."""

from __future__ import annotations

import gzip
import inspect
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn
from torchvision import datasets

from resnet_dyn.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    CirclesDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from resnet_dyn.errors import ConfigError, DataError

CONF_DATA = Path(__file__).resolve().parents[1] / "conf" / "data"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer"]
CIFAR10_NAMES += ["dog", "frog", "horse", "ship", "truck"]


def all_examples(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.stack(ys)


def rows(x: torch.Tensor) -> list[tuple[float, ...]]:
    """Examples as sorted hashable rows, to compare datasets as multisets."""
    return sorted(map(tuple, x.flatten(1).numpy().round(4).tolist()))


# ---------------------------------------------------------------- digits


def test_digits_shapes_splits_and_normalisation():
    dm = DigitsDataModule(batch_size=32, seed=0)
    assert (dm.input_shape, dm.num_classes, dm.batch_size) == ((1, 8, 8), 10, 32)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1077, 180, 540)

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64

    # The three splits together are exactly the 1,797 bundled digits, normalised.
    raw = torch.tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)
    parts = [all_examples(s) for s in (dm.train_set, dm.val_set, dm.test_set)]
    together = torch.cat([p[0] for p in parts])
    assert rows(together * 0.3760 + 0.3053) == rows(raw)
    assert abs(together.mean()) < 0.02 and abs(together.std() - 1) < 0.02

    test_labels = parts[2][1]
    assert test_labels.bincount(minlength=10).min() >= 50  # stratified: every class in test
    assert sum(len(b[1]) for b in dm.test_dataloader()) == 540


def test_digits_split_is_seeded():
    a, b, c = (DigitsDataModule(seed=s) for s in (0, 0, 1))
    assert torch.equal(a.probe_batch(50)[0], b.probe_batch(50)[0])
    assert torch.equal(all_examples(a.train_set)[0], all_examples(b.train_set)[0])
    assert not torch.equal(a.probe_batch(50)[0], c.probe_batch(50)[0])
    assert rows(all_examples(a.test_set)[0]) != rows(all_examples(c.test_set)[0])


def test_probe_batch_is_the_first_test_examples():
    dm = DigitsDataModule()
    x, y = dm.probe_batch(7)
    first = next(iter(dm.test_dataloader()))
    assert torch.equal(x, first[0][:7]) and torch.equal(y, first[1][:7])
    with pytest.raises(ConfigError):
        dm.probe_batch(541)


def test_fraction_trains_on_a_nested_seeded_subset():
    full = rows(all_examples(DigitsDataModule(fraction=1.0).train_set)[0])
    quarter = DigitsDataModule(fraction=0.25)
    tenth = DigitsDataModule(fraction=0.1)
    assert (len(quarter.train_set), len(tenth.train_set)) == (269, 108)
    assert len(quarter.test_set) == 540  # only training shrinks
    q_rows, t_rows = (
        rows(all_examples(quarter.train_set)[0]),
        rows(all_examples(tenth.train_set)[0]),
    )
    assert set(t_rows) <= set(q_rows) <= set(full)
    assert len(CirclesDataModule(fraction=0.5, n_train=300).train_set) == 150


def test_digits_augment_shifts_training_images_only():
    plain, shifted = DigitsDataModule(augment=False), DigitsDataModule(augment=True)
    torch.manual_seed(0)
    x_plain, x_shifted = all_examples(plain.train_set)[0], all_examples(shifted.train_set)[0]
    assert x_shifted.shape == x_plain.shape
    assert (x_shifted != x_plain).flatten(1).any(1).float().mean() > 0.5
    assert torch.equal(plain.probe_batch(20)[0], shifted.probe_batch(20)[0])


# ---------------------------------------------------------------- circles


def test_circles_radii_labels_and_splits():
    dm = CirclesDataModule(noise=0.0, n_train=400, n_val=50, n_test=300, batch_size=50)
    assert (dm.input_shape, dm.num_classes) == ((2,), 2)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (400, 50, 300)
    x, y = all_examples(dm.train_set)
    radius = x.norm(dim=1)
    assert torch.allclose(radius[y == 0], torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(radius[y == 1], torch.tensor(0.5), atol=1e-5)
    assert 150 < int((y == 1).sum()) < 250
    splits = [rows(all_examples(s)[0]) for s in (dm.train_set, dm.val_set, dm.test_set)]
    assert len(set().union(*map(set, splits))) == 750  # no point in two splits

    noisy = all_examples(CirclesDataModule(noise=0.1).test_set)
    spread = noisy[0].norm(dim=1)[noisy[1] == 0]
    assert 0.05 < spread.std() < 0.15 and abs(spread.mean() - 1.0) < 0.05


# ---------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: DigitsDataModule(batch_size=0), "data.batch_size"),
        (lambda: DigitsDataModule(batch_size=2000), "data.batch_size"),
        (lambda: DigitsDataModule(batch_size=1.5), "data.batch_size"),
        (lambda: DigitsDataModule(fraction=0.0), "data.fraction"),
        (lambda: DigitsDataModule(fraction=1.5), "data.fraction"),
        (lambda: DigitsDataModule(mean=[0.1, 0.2]), "data.mean"),
        (lambda: DigitsDataModule(std=[0.0]), "data.std"),
        (lambda: DigitsDataModule(num_workers=-1), "data.num_workers"),
        (lambda: CirclesDataModule(noise=-0.1), "data.noise"),
        (lambda: CirclesDataModule(n_train=0), "data.n_train"),
        (lambda: CirclesDataModule(n_train=50, batch_size=60), "data.batch_size"),
        (lambda: CirclesDataModule(augment=True), "data.augment"),
        (lambda: CIFAR10DataModule("data", mean=[0.5]), "data.mean"),
        (lambda: CIFAR10DataModule("data", std=[0.2, 0.2, -0.2]), "data.std"),
        (lambda: CIFAR10DataModule(None), "data.data_dir"),
        (lambda: MNISTDataModule("data", val_size=0), "data.val_size"),
        (lambda: ImageFolderDataModule(None), "data.root"),
        (lambda: ImageFolderDataModule("x", channels=2), "data.channels"),
        (lambda: ImageFolderDataModule("x", classes=["a", "a"]), "data.classes"),
    ],
)
def test_bad_values_raise_config_error_naming_the_key(make, key):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: expected") and "\n" not in str(info.value)


# ---------------------------------------------------------------- torchvision


def write_idx(path: Path, array: np.ndarray, packed: bool = False) -> None:
    """An MNIST idx file: magic (0, 0, uint8, ndim), big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if packed:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 40), ("t10k", 12)):
        images = np.zeros((n, 28, 28), np.uint8)
        images[:, 0, 0] = np.arange(n) * 5  # each image carries its index
        images[:, 10:18, 10:18] = 255
        write_idx(raw / f"{split}-images-idx3-ubyte", images, packed=split == "t10k")
        write_idx(raw / f"{split}-labels-idx1-ubyte", (np.arange(n) * 7) % 10)
    return tmp_path


def test_mnist_reads_idx_files_through_torchvision(mnist_dir):
    dm = MNISTDataModule(mnist_dir, batch_size=4, val_size=8, seed=0)
    assert (dm.input_shape, dm.num_classes) == ((1, 28, 28), 10)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (32, 8, 12)
    assert (mnist_dir / "MNIST" / "raw" / "t10k-images-idx3-ubyte").is_file()  # unpacked .gz

    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert type(x) is torch.Tensor

    # Train and val partition the 40 training images; labels stay with their images.
    seen = []
    for split in (dm.train_set, dm.val_set):
        xs, ys = all_examples(split)
        index = ((xs[:, 0, 0, 0] * 0.3081 + 0.1307) * 255 / 5).round().long()
        assert torch.equal(ys, (index * 7) % 10)
        seen += index.tolist()
    assert sorted(seen) == list(range(40))

    x, y = dm.probe_batch(12)
    assert torch.equal(y, (torch.arange(12) * 7) % 10)
    pixels = x * 0.3081 + 0.1307
    assert torch.allclose(pixels[:, 0, 12, 12], torch.ones(12), atol=1e-5)
    assert torch.allclose(pixels[:, 0, 0, 0], torch.arange(12) * 5 / 255, atol=1e-5)

    other = MNISTDataModule(mnist_dir, batch_size=4, val_size=8, seed=1)
    assert not torch.equal(all_examples(other.val_set)[1], all_examples(dm.val_set)[1])
    shifted = MNISTDataModule(mnist_dir, batch_size=4, val_size=8, augment=True)
    assert next(iter(shifted.train_dataloader()))[0].shape == (4, 1, 28, 28)
    with pytest.raises(ConfigError, match="data.val_size"):
        MNISTDataModule(mnist_dir, val_size=40).setup()


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (MNISTDataModule, "MNIST/raw/{train-images-idx3-ubyte,"),
        (CIFAR10DataModule, "cifar-10-batches-py/{data_batch_1,"),
        (CIFAR100DataModule, "cifar-100-python/{train,test,meta}"),
        (SVHNDataModule, "{train_32x32.mat,test_32x32.mat}"),
    ],
)
def test_missing_dataset_is_one_line_naming_the_folder(cls, expected, tmp_path):
    dm = cls(tmp_path / "data")
    assert len(dm.input_shape) == 3  # known without any files
    with pytest.raises(DataError) as info:
        dm.setup()
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.data_dir: no ")
    assert f"{(tmp_path / 'data').resolve()}/{expected}" in message
    assert "data.download=true" in message
    assert info.value.__cause__ is None  # stopped before torchvision was asked


def test_incomplete_and_corrupted_cifar_are_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"incomplete \(missing data_batch_2, .*test_batch"):
        CIFAR10DataModule(tmp_path).setup()
    for name in CIFAR10DataModule.files:
        (folder / name).write_bytes(b"not the official release")
    with pytest.raises(DataError) as info:
        CIFAR10DataModule(tmp_path).setup()
    message = str(info.value)
    assert "\n" not in message and "md5" in message and str(folder.resolve()) in message


def test_download_without_network_is_one_line(tmp_path, monkeypatch):
    # Offline on every machine: each request torchvision's downloader makes fails as it does
    # without a network (name resolution), whether or not this machine has one.
    requested: list[str] = []

    def offline(request, *args, **kwargs):
        requested.append(getattr(request, "full_url", request))
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        CIFAR10DataModule(tmp_path, download=True).setup()
    assert requested and requested[0] == datasets.CIFAR10.url  # torchvision's own download
    message = str(info.value)
    into = f"data.download: could not download CIFAR-10 into {tmp_path.resolve()} ("
    assert message.startswith(into)
    assert "name resolution" in message and "\n" not in message
    assert "cifar-10-batches-py/{data_batch_1," in message  # the files to put there by hand
    assert isinstance(info.value.__cause__, urllib.error.URLError)


# ---------------------------------------------------------------- image folders


def write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_image_folder_labels_follow_the_class_list(tmp_path):
    for i in range(3):
        write_png(tmp_path / "cat" / f"{i}.png", (255, 0, 0))
    for i in range(2):
        write_png(tmp_path / "ship" / f"{i}.png", (0, 0, 255))
    dm = ImageFolderDataModule(tmp_path, classes=CIFAR10_NAMES, batch_size=2)
    assert (dm.input_shape, dm.num_classes) == ((3, 6, 8), 10)
    x, y = dm.probe_batch(5)
    assert y.tolist() == [3, 3, 3, 8, 8]
    rgb = x[:, :, 0, 0] * torch.tensor(dm.std) + torch.tensor(dm.mean)
    assert torch.allclose(rgb, torch.tensor([[1.0, 0, 0]] * 3 + [[0, 0, 1.0]] * 2), atol=1e-5)
    assert len(dm.train_set) == len(dm.val_set) == len(dm.test_set) == 5

    default = ImageFolderDataModule(tmp_path, batch_size=2)
    assert (
        default.classes == ["cat", "ship"]
        and default.probe_batch(5)[1].tolist() == [0] * 3 + [1] * 2
    )

    grey = ImageFolderDataModule(
        tmp_path, image_size=4, channels=1, convert=True, mean=[0.5], std=[0.5], batch_size=2
    )
    assert grey.input_shape == (1, 4, 4) and grey.probe_batch(5)[0].shape == (5, 1, 4, 4)


@pytest.mark.parametrize(
    ("layout", "key", "named"),
    [
        ({"cat/a.png": "png", "cat/b.png": b"\x89PNG garbage"}, "data.root", "cat/b.png"),
        ({"cat/a.png": "png", "cat/notes.txt": b"hello"}, "data.root", "cat/notes.txt"),
        ({"cat/a.png": "png", "ship/b.png": "big"}, "data.image_size", "ship/b.png"),
        ({"cat/a.png": "png", "bird/c.png": "png"}, "data.classes", "bird"),
        ({"cat/a.png": "png", "cat/g.png": "grey"}, "data.channels", "cat/g.png"),
        ({"cat/.keep": b""}, "data.root", "no images"),
        ({"notes.txt": b"no folders"}, "data.root", "no class folders"),
        ({}, "data.root", "not found"),
    ],
)
def test_image_folder_problems_are_one_line(layout, key, named, tmp_path):
    root = tmp_path / "images"
    for name, content in layout.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content == "png":
            write_png(path, (10, 20, 30))
        elif content == "big":
            write_png(path, (10, 20, 30), size=(16, 16))
        elif content == "grey":
            Image.new("L", (8, 6), 128).save(path)
        else:
            path.write_bytes(content)
    with pytest.raises(DataError) as info:
        ImageFolderDataModule(root, classes=["cat", "ship"], batch_size=1)
    message = str(info.value)
    assert message.startswith(f"{key}: ") and "\n" not in message and named in message


# ---------------------------------------------------------------- Lightning and configs


class _Linear(L.LightningModule):
    """A linear classifier that keeps every batch Lightning hands it, by stage."""

    def __init__(self, inputs: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(inputs, classes))
        self.seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def _step(self, stage: str, batch) -> torch.Tensor:
        x, y = batch
        self.seen.setdefault(stage, []).append((x.detach().clone(), y.detach().clone()))
        return nn.functional.cross_entropy(self.net(x), y)

    def training_step(self, batch, _):
        return self._step("train", batch)

    def validation_step(self, batch, _):
        self._step("val", batch)

    def test_step(self, batch, _):
        self._step("test", batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def labelled_rows(x: torch.Tensor, y: torch.Tensor) -> list[tuple]:
    """Examples with their labels as sorted hashable rows: datasets compared as multisets."""
    return sorted(zip(map(tuple, x.flatten(1).numpy().round(4).tolist()), y.tolist(), strict=True))


@pytest.mark.parametrize("which", ["digits", "image_folder"])
def test_lightning_fits_and_tests_on_the_datamodule(which, tmp_path):
    """What the model is fed in fit and test is the datamodule's data: every training
    example once an epoch (shuffled, labels with their images), validation and test in
    order, batch shapes and dtypes, and normalised pixels."""
    if which == "digits":
        dm = DigitsDataModule(batch_size=64)
    else:
        for i in range(4):
            write_png(tmp_path / ("cat" if i % 2 else "dog") / f"{i}.png", (i * 60, 0, 0))
        dm = ImageFolderDataModule(tmp_path, batch_size=2)
    model = _Linear(int(np.prod(dm.input_shape)), dm.num_classes)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,  # so that "val" holds exactly one pass
    )
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm, verbose=False)
    steps = -(-len(dm.train_set) // dm.batch_size)
    assert trainer.global_step == steps == len(model.seen["train"])
    seen = {
        k: (torch.cat([b[0] for b in v]), torch.cat([b[1] for b in v]))
        for k, v in model.seen.items()
    }
    for stage, split in (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set)):
        x, y = seen[stage]
        assert x.shape == (len(split), *dm.input_shape) and x.dtype == torch.float32, stage
        assert y.dtype == torch.int64 and len(y) == len(split)
        assert [len(b[1]) for b in model.seen[stage][:-1]] == [dm.batch_size] * (
            len(model.seen[stage]) - 1
        )
        expected = all_examples(split)
        if stage == "train":  # shuffled: the same multiset of (image, label), not the order
            assert labelled_rows(x, y) == labelled_rows(*expected)
        else:
            assert torch.equal(x, expected[0]) and torch.equal(y, expected[1]), stage
    x, y = seen["train"]
    if which == "digits":
        assert not torch.equal(y, all_examples(dm.train_set)[1])  # shuffled
        assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05  # normalised
        assert y.bincount(minlength=10).min() > 80  # every class in training
        raw = torch.tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)
        assert set(rows(x * 0.3760 + 0.3053)) <= set(rows(raw))
    else:  # pixels back to [0, 1]: the red channel is the image's index * 60 / 255
        red = x[:, 0] * dm.std[0] + dm.mean[0]
        index = (red[:, 0, 0] * 255 / 60).round().long()
        assert torch.allclose(red, red[:, :1, :1].expand_as(red), atol=1e-5)
        assert sorted(index.tolist()) == [0, 1, 2, 3]
        assert torch.equal(y, (index % 2 == 0).long())  # dog (even index) sorts after cat: label 1


def compose_data(name: str, data_dir: Path, **overrides) -> DictConfig:
    root = OmegaConf.create({"seed": 3, "paths": {"data_dir": str(data_dir)}})
    cfg = OmegaConf.merge(root, {"data": OmegaConf.load(CONF_DATA / f"{name}.yaml")})
    OmegaConf.set_struct(cfg, True)  # as Hydra does: unknown keys are errors
    for key, value in overrides.items():
        OmegaConf.update(cfg, f"data.{key}", value)
    return cfg


EXPECTED = {
    "digits": ((1, 8, 8), 10),
    "circles": ((2,), 2),
    "mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
    "svhn": ((3, 32, 32), 10),
    "image_folder": ((3, 6, 8), 10),
}


def test_every_data_config_is_tested():
    assert sorted(p.stem for p in CONF_DATA.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_data_config_instantiates(name, tmp_path):
    overrides = {}
    if name == "image_folder":
        write_png(tmp_path / "images" / "cat" / "a.png", (0, 0, 0))
        overrides = {"root": str(tmp_path / "images"), "classes": CIFAR10_NAMES, "batch_size": 1}
    cfg = compose_data(name, tmp_path, **overrides)
    dm = instantiate(cfg.data)
    assert (dm.input_shape, dm.num_classes) == EXPECTED[name]
    assert dm.seed == 3 and dm.batch_size == cfg.data.batch_size
    assert list(dm.mean) == list(cfg.data.mean) and list(dm.std) == list(cfg.data.std)
    if name in ("mnist", "cifar10", "cifar100", "svhn"):
        assert dm.data_dir == tmp_path and dm.download is False
        assert dm.augment is name.startswith("cifar")

    # The yaml keys are exactly the constructor's arguments, each documented with a comment.
    params = set(inspect.signature(type(dm).__init__).parameters) - {"self"}
    assert set(cfg.data) - {"_target_"} == params
    lines = (CONF_DATA / f"{name}.yaml").read_text().splitlines()
    for key in params:
        line = next(line for line in lines if line.startswith(f"{key}:"))
        assert "#" in line, f"{name}.yaml: {key} has no comment"
