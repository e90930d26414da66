"""The device-resident loader: exact torchvision outcomes, the augmentation distribution,
epochs as a pure function of (seed, epoch), and the real datamodules and Trainer on both
``data.loader`` values (fake MNIST, CIFAR and SVHN files in torchvision's formats, digits)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from scipy.io import savemat
from test_data import write_idx
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from resnet_dyn.config.build import build
from resnet_dyn.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from resnet_dyn.data import resident as resident_module
from resnet_dyn.data.resident import CropFlip, ResidentLoader, normalise
from resnet_dyn.errors import ConfigError
from resnet_dyn.training.job import run_job

# ---------------------------------------------------------------- fake dataset files


@pytest.fixture
def mnist_dir(tmp_path) -> Path:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for split, n in (("train", 40), ("t10k", 12)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    return tmp_path


@pytest.fixture
def no_md5(monkeypatch):
    """Fake CIFAR/SVHN files cannot have the official md5 sums: skip torchvision's check."""
    monkeypatch.setattr(datasets.cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(datasets.svhn, "check_integrity", lambda *a, **k: True)


def _pickle(path: Path, obj: dict) -> None:
    path.write_bytes(pickle.dumps(obj))


@pytest.fixture
def cifar_dir(tmp_path, no_md5) -> Path:
    """CIFAR-10 and CIFAR-100 python pickles: rows of 3072 uint8 (R plane, G, B), labels."""
    rng = np.random.default_rng(2)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        _pickle(c10 / name, {"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                             "labels": rng.integers(0, 10, 8).tolist()})  # fmt: skip
    _pickle(c10 / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    for name, n in (("train", 40), ("test", 10)):
        _pickle(c100 / name, {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                              "fine_labels": rng.integers(0, 100, n).tolist()})  # fmt: skip
    _pickle(c100 / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    return tmp_path


@pytest.fixture
def svhn_dir(tmp_path, no_md5) -> Path:
    """SVHN .mat files: X (32, 32, 3, N) uint8, y (N, 1) with labels 1..10 (10 is digit 0)."""
    rng = np.random.default_rng(3)
    for split, n in (("train", 40), ("test", 10)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x, "y": rng.integers(1, 11, (n, 1))})
    return tmp_path


def make(which: str, root: Path, **kwargs):
    """A datamodule on the fake files, training on a seeded half of its training split."""
    classes = {"mnist": MNISTDataModule, "cifar10": CIFAR10DataModule,
               "cifar100": CIFAR100DataModule, "svhn": SVHNDataModule}  # fmt: skip
    kwargs.setdefault("fraction", 0.5)
    if which == "digits":
        return DigitsDataModule(**kwargs)
    return classes[which](root, val_size=8, batch_size=kwargs.pop("batch_size", 8), **kwargs)


@pytest.fixture(params=["digits", "mnist", "cifar10", "cifar100", "svhn"])
def data_root(request) -> tuple[str, Path | None]:
    fixture = {"mnist": "mnist_dir", "svhn": "svhn_dir"}.get(request.param, "cifar_dir")
    root = None if request.param == "digits" else request.getfixturevalue(fixture)
    return request.param, root


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


# ---------------------------------------------------------------- the augmentation itself


def test_every_crop_flip_outcome_is_torchvisions():
    """Each code gives exactly torchvision's crop(pad(image)) (then hflip), on uint8."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 10, 13), dtype=torch.uint8)  # not square
    crop_flip = CropFlip(10, 13, padding=3, flip=True)
    assert crop_flip.outcomes == 7 * 7 * 2
    for code in range(crop_flip.outcomes):
        codes = torch.full((4,), code)
        top, left, flipped = (int(t[0]) for t in crop_flip.decode(codes))
        expected = TF.crop(TF.pad(images, [3], fill=0), top, left, 10, 13)
        if flipped:
            expected = TF.hflip(expected)
        assert torch.equal(crop_flip(images, codes), expected), (top, left, flipped)


def test_normalise_is_torchvisions_to_dtype_then_normalize():
    images = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    tv = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)])
    ours = normalise(images, torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1))
    assert torch.equal(ours, tv(images))


def _outcomes(image: torch.Tensor, padding: int, flip: bool) -> dict[bytes, tuple[int, int, int]]:
    """Every torchvision outcome of RandomCrop(padding) (+ flip) of ``image``, by its bytes."""
    h, w = image.shape[1:]
    found = {}
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            cropped = TF.crop(TF.pad(image, [padding], fill=0), top, left, h, w)
            found[cropped.numpy().tobytes()] = (top, left, 0)
            if flip:
                found[TF.hflip(cropped).numpy().tobytes()] = (top, left, 1)
    assert len(found) == (2 * padding + 1) ** 2 * (2 if flip else 1)  # all distinguishable
    return found


def _chi2(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_augmentation_distribution_matches_torchvision():
    """Copies of one image with distinct pixels: each output is a torchvision outcome; offsets
    are uniform over the (2p+1)^2 cells, flips have p=1/2, independently, as for torchvision."""
    p, n = 4, 162 * 60
    image = torch.arange(1, 145, dtype=torch.uint8).view(1, 12, 12)  # distinct, nonzero
    outcomes = _outcomes(image, p, flip=True)
    mean, std = [0.3], [0.2]
    loader = ResidentLoader(image.expand(n, 1, 12, 12), torch.zeros(n, dtype=torch.int64),
                            batch_size=1000, mean=mean, std=std, shuffle=True, padding=p,
                            flip=True, seed=5)  # fmt: skip
    ours = np.zeros((9, 9, 2), np.int64)
    for x, _ in loader:
        levels = (x * 0.2 + 0.3).mul(255).round().to(torch.uint8)
        for one, lv in zip(x, levels, strict=True):
            top, left, flipped = outcomes[lv.numpy().tobytes()]  # KeyError: not an outcome
            ours[top, left, flipped] += 1
            expected = TF.crop(TF.pad(image, [p], fill=0), top, left, 12, 12)
            expected = TF.hflip(expected) if flipped else expected
            norm = v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(expected))
            assert torch.allclose(one, norm, atol=1e-6)
    assert ours.sum() == n
    # chi-square, 80 and 161 degrees of freedom: 124.8 and 218 are the 0.1% critical values
    assert _chi2(ours.sum(2)) < 124.8 and _chi2(ours) < 218
    assert abs(ours[..., 1].sum() - n / 2) < 4 * np.sqrt(n) / 2

    torch.manual_seed(0)  # torchvision's own draws pass the same test
    tv = v2.Compose([v2.RandomCrop(12, padding=p), v2.RandomHorizontalFlip()])
    theirs = np.zeros((9, 9, 2), np.int64)
    for _ in range(3000):
        top, left, flipped = outcomes[tv(image).numpy().tobytes()]
        theirs[top, left, flipped] += 1
    assert _chi2(theirs.sum(2)) < 124.8 and abs(theirs[..., 1].sum() - 1500) < 4 * np.sqrt(750)


# ---------------------------------------------------------------- epochs


def _loader(n: int = 300, batch_size: int = 64, **kwargs) -> ResidentLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    args = {"mean": [0.5] * 3, "std": [0.25] * 3, "shuffle": True, "padding": 2, "flip": True}
    return ResidentLoader(images, torch.arange(n), batch_size=batch_size, **{**args, **kwargs})


def test_an_epoch_is_a_pure_function_of_seed_and_epoch():
    a, b = _loader(seed=1), _loader(seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    first, again = batches(a), batches(b)
    assert all(
        torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(first, again, strict=True)
    )
    b.set_epoch(4)
    fourth = batches(b)
    assert not torch.equal(fourth[0][0], first[0][0])
    other = _loader(seed=2)
    other.set_epoch(3)
    assert not torch.equal(batches(other)[0][1], first[0][1])
    # Without set_epoch, each pass is the next epoch.
    plain = _loader(seed=1)
    passes = [batches(plain) for _ in range(5)]
    assert torch.equal(passes[3][0][0], first[0][0]) and torch.equal(passes[4][0][0], fourth[0][0])
    # Every epoch is a permutation of the split; labels stay with their images.
    assert sorted(torch.cat([y for _, y in first]).tolist()) == list(range(300))


def test_length_drop_last_and_unshuffled_order():
    assert [len(_loader(n, 64)) for n in (256, 257, 258, 300)] == [4, 4, 5, 5]
    assert sum(len(y) for _, y in _loader(257, 64)) == 256  # only a last batch of 1 is dropped
    plain = _loader(257, 64, shuffle=False, padding=0, flip=False)
    assert len(plain) == 5 and plain.crop_flip is None
    assert torch.cat([y for _, y in plain]).tolist() == list(range(257))


def test_ranks_share_an_epoch_like_distributed_sampler():
    ranks = [_loader(301, 50, seed=4, rank=r, world_size=2) for r in (0, 1)]
    whole = _loader(301, 50, seed=4)
    for loader in (*ranks, whole):
        loader.set_epoch(2)
    assert len(ranks[0]) == len(ranks[1]) == 3  # 151 each: 3 batches, the last one of 1 dropped
    seen = torch.cat([y for r in ranks for _, y in r])
    order = whole.plan(2)[0]
    assert set(seen.tolist()) == set(order[:300].tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu_batches():
    cpu, gpu = _loader(seed=3), _loader(seed=3, device="cuda")
    for (x, y), (u, v) in zip(cpu, gpu, strict=True):
        assert u.device.type == "cuda" and torch.equal(x, u.cpu()) and torch.equal(y, v.cpu())


# ---------------------------------------------------------------- the datamodules


def test_resident_is_the_default_and_equals_the_torchvision_path(data_root):
    which, root = data_root
    res, tv = (
        make(which, root, augment=False),
        make(which, root, augment=False, loader="torchvision"),
    )
    assert res.loader == "resident" and tv.loader == "torchvision"
    assert isinstance(res.train_dataloader(), ResidentLoader)
    assert isinstance(tv.train_dataloader(), DataLoader)
    for split in ("val", "test"):
        ours = batches(getattr(res, f"{split}_dataloader")())
        theirs = batches(getattr(tv, f"{split}_dataloader")())
        assert len(ours) == len(theirs)
        for (x, y), (u, v) in zip(ours, theirs, strict=True):
            assert torch.allclose(x, u, atol=1e-6) and torch.equal(y, v)
    # Training batches (no augmentation here) are the torchvision items at the same indices.
    train = res.train_dataloader()
    train.set_epoch(1)
    order = train.plan(1)[0]
    got = torch.cat([x for x, _ in train])
    items = [tv.train_set[int(i)] for i in order[: len(got)]]
    assert torch.allclose(got, torch.stack([x for x, _ in items]), atol=1e-6)
    n = res.batch_size if which != "digits" else 5
    assert all(
        torch.equal(a, b) for a, b in zip(res.probe_batch(n), tv.probe_batch(n), strict=True)
    )


@pytest.mark.parametrize(
    ("which", "padding", "flip"),
    [("digits", 1, False), ("mnist", 2, False), ("cifar10", 4, True), ("svhn", 4, False)],
)
def test_augmentation_settings_follow_the_dataset(which, padding, flip, request):
    fixture = {"mnist": "mnist_dir", "svhn": "svhn_dir", "cifar10": "cifar_dir"}.get(which)
    root = request.getfixturevalue(fixture) if fixture else None
    dm = make(which, root, augment=True)
    train = dm.train_dataloader()
    assert (train.crop_flip.padding, train.crop_flip.flip) == (padding, flip)
    assert dm.val_dataloader().crop_flip is None and dm.test_dataloader().crop_flip is None
    x, y = next(iter(train))
    assert x.shape == (dm.batch_size, *dm.input_shape) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    plain = make(which, root, augment=False).train_dataloader()
    assert plain.crop_flip is None


def test_bad_loader_is_a_config_error(tmp_path):
    for make_bad in (lambda: DigitsDataModule(loader="gpu"),
                     lambda: CIFAR10DataModule("data", loader=1)):  # fmt: skip
        with pytest.raises(ConfigError) as info:
            make_bad()
        assert info.value.key == "data.loader"
        assert str(info.value).startswith("data.loader: expected resident or torchvision, got")
    cfg = compose_config("train", ["data.loader=fast"], tmp_path)
    with pytest.raises(ConfigError, match="data.loader"):
        build(cfg.data)


def test_too_large_for_the_device_falls_back_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(resident_module, "MEMORY_FRACTION", 0.0)
    dm = DigitsDataModule()
    with caplog.at_level(logging.WARNING):
        loader = dm.train_dataloader()
    assert isinstance(loader, DataLoader)
    assert any("data.loader" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- Lightning


class _Recorder(L.LightningModule):
    """A linear classifier that records a fingerprint of every training batch per epoch."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        self.seen: dict[int, list[tuple[float, int]]] = {}

    def training_step(self, batch, _):
        x, y = batch
        self.seen.setdefault(self.current_epoch, []).append((float(x.sum()), int(y.sum())))
        return nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _StopAt(L.Callback):
    """Save a checkpoint after batch ``batch`` of epoch ``epoch``, then stop (a preemption)."""

    def __init__(self, path: Path, epoch: int, batch: int):
        self.path, self.epoch, self.batch = path, epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def _fit(epochs: int, root: Path, ckpt: Path | None = None, stop: _StopAt | None = None):
    model = _Recorder()
    callbacks = [stop] if stop else [L.pytorch.callbacks.ModelCheckpoint(root, save_last=True)]
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=stop is None,
        default_root_dir=root,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=128, augment=True), ckpt_path=ckpt)
    return model


def test_a_resumed_run_sees_the_batches_of_an_uninterrupted_run(tmp_path):
    whole = _fit(3, tmp_path / "whole")
    assert len(whole.seen[0]) == 9 and whole.seen[0] != whole.seen[1] != whole.seen[2]
    _fit(2, tmp_path / "part")  # resumed from the checkpoint of an epoch's end
    resumed = _fit(3, tmp_path / "part", ckpt=tmp_path / "part" / "last.ckpt")
    assert list(resumed.seen) == [2] and resumed.seen[2] == whole.seen[2]
    ckpt = tmp_path / "mid.ckpt"  # resumed from the middle of epoch 1 (after its third batch)
    stopped = _fit(3, tmp_path / "mid", stop=_StopAt(ckpt, epoch=1, batch=2))
    assert stopped.seen[1] == whole.seen[1][:3]
    rest = _fit(3, tmp_path / "mid", ckpt=ckpt)
    assert rest.seen == {1: whole.seen[1][3:], 2: whole.seen[2]}


@pytest.mark.parametrize("loader", ["resident", "torchvision"])
def test_training_runs_with_both_loaders(loader, tmp_path):
    overrides = ["debug=fast_dev_run", "logger=none", "model.depth=8", f"data.loader={loader}",
                 "data.augment=true"]  # fmt: skip
    cfg = compose_config("train", overrides, tmp_path)
    assert OmegaConf.select(cfg, "data.loader") == loader
    summary = run_job(cfg)
    assert summary["status"] == "completed"
