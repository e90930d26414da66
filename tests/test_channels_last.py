"""``ClassificationModule`` in channels_last memory format (automatic on CUDA), forced on the CPU:
the same training losses as the contiguous format, and no host sync in the training step."""

from __future__ import annotations

import contextlib
from unittest import mock

import lightning as L
import pytest
import torch
from conftest import CONF
from omegaconf import OmegaConf

from resnet_dyn.data.resident import ResidentLoader
from resnet_dyn.models.cifar_resnet import CifarResNet
from resnet_dyn.training.module import ClassificationModule


class _Losses(L.Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.formats: list[bool] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _train(channels_last: bool | None, tmp_path) -> tuple[ClassificationModule, _Losses]:
    torch.manual_seed(0)
    optim = OmegaConf.load(CONF / "optim" / "sgd.yaml")
    net = CifarResNet(depth=8, input_shape=(3, 8, 8), num_classes=10)
    module = ClassificationModule(net, optim, 64, 10, channels_last=channels_last)
    record = _Losses()
    stem = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    stem.register_forward_pre_hook(  # channels innermost in memory: channels_last
        lambda _, inputs: record.formats.append(inputs[0].stride(1) == 1)
    )
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, callbacks=[record],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=tmp_path)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (256, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (256,), generator=g)
    loader = ResidentLoader(images, labels, batch_size=64, mean=[0.5] * 3, std=[0.25] * 3,
                            shuffle=True, padding=1, flip=True)  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    return module, record


@pytest.mark.parametrize("forced", [True, None])
def test_channels_last_trains_like_contiguous(forced, tmp_path):
    plain, plain_losses = _train(False, tmp_path / "plain")
    other, losses = _train(forced, tmp_path / "other")
    conv = next(m.weight for m in other.net.modules() if isinstance(m, torch.nn.Conv2d))
    on = forced is True  # None: only on CUDA, so off here
    assert other.use_channels_last is on and not plain.use_channels_last
    assert conv.is_contiguous(memory_format=torch.channels_last) is on
    assert losses.formats == [on] * 4 and plain_losses.formats == [False] * 4
    assert all(torch.isfinite(torch.tensor(losses.losses)))
    assert losses.losses == pytest.approx(plain_losses.losses, rel=1e-4, abs=1e-5)


def test_training_step_does_not_sync_with_the_device(monkeypatch, tmp_path):
    """Nothing in training_step reads a tensor on the host (``.item()``, ``bool(t)``, ...) or
    calls an op whose output size depends on the values (``torch.unique``, ``nonzero``)."""
    calls: list[str] = []
    original = ClassificationModule.training_step
    watch = [(torch.Tensor, n) for n in ("item", "__bool__", "__int__", "__float__", "tolist")]
    watch += [(owner, n) for owner in (torch, torch.Tensor) for n in ("unique", "nonzero")]

    def watched(self, batch, batch_idx):
        with contextlib.ExitStack() as stack:
            for owner, name in watch:
                stack.enter_context(mock.patch.object(owner, name, _fail(name, calls)))
            return original(self, batch, batch_idx)

    monkeypatch.setattr(ClassificationModule, "training_step", watched)
    _, record = _train(False, tmp_path)
    assert calls == [] and len(record.losses) == 4


def _fail(name, calls):
    def sync(*args, **kwargs):
        calls.append(name)
        raise AssertionError(f"{name} called in training_step (a host sync on CUDA)")

    return sync
