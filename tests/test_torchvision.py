"""torchvision's ResNet family: the unit interface over torchvision's own blocks, their state
dicts as checkpoints, and resnet-dyn-analyze on them against dense oracles built from
torchvision's modules alone (no downloads: the networks are built in the tests)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import run_cli
from PIL import Image
from sklearn.datasets import load_digits
from test_analyze import TOL, assert_fractions_match
from test_models import _randomise_affine
from torch import nn
from torch.func import jacfwd
from torchvision.models.resnet import Bottleneck
from wandb_records import OfflineRun

from resnet_dyn.errors import ConfigError, DataError
from resnet_dyn.models import TorchvisionResNet
from resnet_dyn.models.checkpoints import load_model


def torchvision_net(arch: str, num_classes: int, stem: str = "imagenet") -> nn.Module:
    """torchvision's own network, as a user would build it (a CIFAR stem as usually done:
    conv1 replaced by a 3x3 stride-1 conv, no max-pool)."""
    net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    if stem == "cifar":
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
    return net


def trained_looking(arch: str, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision network whose BatchNorm statistics, gammas and shifts
    are not the defaults (as after training)."""
    torch.manual_seed(seed)
    net = torchvision_net(arch, num_classes)
    _randomise_affine(net)
    return net.state_dict()


def blocks(tv: nn.Module) -> list[nn.Module]:
    return [b for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4) for b in layer]


def tv_states(tv: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every block's input, then the last block's output, from torchvision's modules."""
    h = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = [h]
    for block in blocks(tv):
        out.append(block(out[-1]))
    return out


def tv_sum(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block before its final ReLU, from its own modules: shortcut(x) + F(x)."""
    out = torch.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(out)))))
    else:
        out = block.bn2(block.conv2(out))
    return out + (x if block.downsample is None else block.downsample(x))


@pytest.mark.parametrize(
    "arch, stem, shape",
    [("resnet18", "imagenet", (3, 32, 32)), ("resnet18", "cifar", (3, 8, 8)),
     ("resnet50", "imagenet", (3, 16, 16)), ("resnext50_32x4d", "cifar", (3, 4, 4))],
)  # fmt: skip
def test_units_stages_and_forward_are_torchvisions(arch, stem, shape):
    tv = torchvision_net(arch, 7, stem)
    _randomise_affine(tv)
    tv.eval()
    net = TorchvisionResNet(arch, shape, 7, stem=stem)
    net.load_state_dict(tv.state_dict(), strict=True)  # the same keys, the same shapes
    net.eval()
    assert list(net.state_dict()) == list(tv.state_dict())
    layers = [len(layer) for layer in (tv.layer1, tv.layer2, tv.layer3, tv.layer4)]
    assert [u.stage for u in net.units] == [s for s, n in enumerate(layers) for _ in range(n)]
    # A block with a downsample is a stage's first unit (layer1.0 has one for Bottlenecks).
    openers = [k for k, b in enumerate(blocks(tv)) if b.downsample is not None]
    assert openers == [
        k for k, u in enumerate(net.units) if not isinstance(u.shortcut, nn.Identity)
    ]
    assert set(openers) >= {net.stage_units(s)[0] for s in (1, 2, 3)}
    x = torch.randn(3, *shape)
    with torch.no_grad():
        ref = tv_states(tv, x)
        ours = net.unit_inputs(x)
        for k, block in enumerate(blocks(tv)):
            torch.testing.assert_close(ours[k], ref[k])
            torch.testing.assert_close(net.units[k](ref[k]), block(ref[k]))
            torch.testing.assert_close(net.units[k].sum_map(ref[k]), tv_sum(block, ref[k]))
        torch.testing.assert_close(net(x), tv(x))
    # Modes reach torchvision's modules (registered once) and the unit views alike.
    net.train()
    assert all(m.training for m in net.modules()) and net.units[0].training
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in tv.parameters())


def test_architecture_choices_are_one_line():
    with pytest.raises(ConfigError, match=r"^model\.arch: expected one of resnet18, .*resnet101_2"):
        TorchvisionResNet("resnet19", (3, 8, 8), 10)
    with pytest.raises(ConfigError, match=r"^model\.stem: expected imagenet or cifar"):
        TorchvisionResNet("resnet18", (3, 8, 8), 10, stem="tiny")


def test_torchvision_state_dicts_load_in_every_layout(tmp_path):
    state = trained_looking("resnet18", 10, 0)
    x = torch.randn(2, 3, 32, 32)
    tv = torchvision_net("resnet18", 10).eval()
    tv.load_state_dict(state)
    with torch.no_grad():
        expected = tv(x)
    layouts = {
        "plain": state,
        "wrapped": {"state_dict": state, "epoch": 90},
        "data_parallel": {f"module.{k}": v for k, v in state.items()},
    }
    settings = {"name": "torchvision_resnet", "arch": "resnet18", "stem": "imagenet"}
    for name, content in layouts.items():
        torch.save(content, tmp_path / f"{name}.pth")
        net, info = load_model(
            tmp_path / f"{name}.pth", "torchvision", num_classes=10, model=settings,
            input_shape=(3, 32, 32),
        )  # fmt: skip
        assert not net.training
        with torch.no_grad():
            torch.testing.assert_close(net(x), expected)
        assert info["model"] == {**settings, "skip_scale": 1.0, "weight_scale": 1.0}

    def refused(path, **kw):
        kw = {"num_classes": 10, "model": settings, "input_shape": (3, 32, 32)} | kw
        with pytest.raises((DataError, ConfigError)) as err:
            load_model(path, "torchvision", **kw)
        message = str(err.value)
        assert "\n" not in message
        return message

    plain = tmp_path / "plain.pth"
    # Another architecture: the keys that differ, named.
    msg = refused(plain, model=settings | {"arch": "resnet34"})
    assert msg.startswith("checkpoint.path:") and "missing: layer1.2." in msg
    # Another head size: fc's shape named.
    msg = refused(plain, num_classes=1000)
    assert "wrong shape: fc.bias, fc.weight" in msg
    # Images of another channel count: conv1.
    assert "wrong shape: conv1.weight" in refused(plain, input_shape=(1, 32, 32))
    assert refused(plain, model=settings | {"weight_scale": 2.0}).startswith("model.weight_scale:")
    assert refused(plain, model={"name": "cifar_resnet"}).startswith("model:")
    torch.save([1, 2], tmp_path / "list.pth")
    assert "is not a torchvision state dict" in refused(tmp_path / "list.pth")
    torch.save({"weights": {"a": 1}}, tmp_path / "odd.pth")
    assert "is not a torchvision state dict" in refused(tmp_path / "odd.pth")


def test_model_weights_start_training_from_a_torchvision_file(tmp_path, caplog):
    """Fine-tuning: ImageNet-shaped weights (1000 classes, 7x7 RGB stem) into a 10-class
    network with a CIFAR stem on greyscale images: every block's tensors are the file's, fc and
    conv1 keep their initialisation; beta scales the loaded last BN of each branch."""
    state = trained_looking("resnet18", 1000, 2)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    with caplog.at_level("INFO", logger="resnet_dyn"):
        net = TorchvisionResNet("resnet18", (1, 8, 8), 10, stem="cifar", weights=str(path))
    assert net.kept_at_init == ["conv1.weight", "fc.weight", "fc.bias"]
    assert "conv1.weight, fc.weight, fc.bias kept at initialisation" in caplog.text
    own = net.state_dict()
    for key, value in state.items():
        if key not in net.kept_at_init:
            assert torch.equal(own[key], value), key
    scaled = TorchvisionResNet("resnet18", (3, 32, 32), 1000, weights=str(path), weight_scale=0.5)
    assert scaled.kept_at_init == []
    torch.testing.assert_close(scaled.layer2[1].bn2.weight, 0.5 * state["layer2.1.bn2.weight"])
    torch.testing.assert_close(scaled.layer2[1].bn1.weight, state["layer2.1.bn1.weight"])
    with pytest.raises(DataError, match=r"^model\.weights: .* does not match .*missing: layer1\.2"):
        TorchvisionResNet("resnet34", (3, 32, 32), 10, weights=str(path))


def digits_folder(root, size: int) -> None:
    """Real images: scikit-learn's handwritten digits (greyscale PNGs, 8x8) in class folders;
    the datamodule converts them to RGB and resizes them to ``size``."""
    digits = load_digits()
    for label in (3, 8):
        (root / f"d{label}").mkdir(parents=True)
        picks = np.flatnonzero(digits.target == label)[:2]
        for i in picks:
            pixels = (digits.images[i] * 255 / 16).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / f"d{label}" / f"{i}.png")


DIGITS = "[" + ",".join(f"d{i}" for i in range(10)) + "]"  # class folder names, label order

# (arch, image size, analysed units, dense_max): stage openers and plain units; dense_max low
# enough that the larger maps are counted (the reduced route for BasicBlock sum maps with an
# identity shortcut, the gram route elsewhere) and the rest get full spectra.
ANALYSED = {
    "resnet18": (16, "[0,1,2,3,4,6,7]", 300, "[sum,unit,stage]"),
    "resnet50": (8, "[0,1,3,7]", 600, "[sum,unit]"),
}


@pytest.mark.slow  # resnet-dyn-analyze processes, then dense oracles (not in test-fast)
@pytest.mark.parametrize("arch", ANALYSED)
def test_analyze_a_torchvision_state_dict_matches_dense_spectra_of_its_blocks(arch, tmp_path):
    size, units, dense_max, maps = ANALYSED[arch]
    state = trained_looking(arch, 10, 1)
    torch.save(state, tmp_path / f"{arch}.pth")
    digits_folder(tmp_path / "imgs", size)
    job = tmp_path / "job"
    result = run_cli(
        [
            "model=torchvision_resnet",
            f"model.arch={arch}",
            "model.num_classes=10",
            f"checkpoint.path={tmp_path / f'{arch}.pth'}",
            "checkpoint.format=torchvision",
            "data=image_folder",
            f"data.root={tmp_path / 'imgs'}",
            f"data.classes={DIGITS}",
            f"data.image_size={size}",
            "data.convert=true",
            "data.mean=[0.485,0.456,0.406]",
            "data.std=[0.229,0.224,0.225]",
            f"analysis.units={units}",
            "analysis.images=1",
            f"analysis.maps={maps}",
            f"analysis.solver.dense_max={dense_max}",
            "analysis.dtype=float64",
            "analysis.identity.images=4",
            "analysis.perturbation.project=true",
            "logger=none",
            f"hydra.run.dir={job}",
        ],
        cwd=tmp_path,
        module="resnet_dyn.cli.analyze",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["model"] == {"name": "torchvision_resnet", "arch": arch, "stem": "imagenet",
                                "skip_scale": 1.0, "weight_scale": 1.0}  # fmt: skip
    # The oracle: torchvision's own network with the saved weights, in float64, on the image
    # the datamodule serves; every singular value of each map by jacfwd and a dense SVD.
    tv = torchvision_net(arch, 10).double().eval()
    tv.load_state_dict(state)
    from resnet_dyn.data import ImageFolderDataModule

    dm = ImageFolderDataModule(
        tmp_path / "imgs", classes=DIGITS.strip("[]").split(","), image_size=size, convert=True,
        mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
    )  # fmt: skip
    images, _ = dm.probe_batch(1)
    with torch.no_grad():
        states = tv_states(tv, images.double())
    analysed = summary["analysis"]["units"]
    assert [u["index"] for u in analysed] == json.loads(units)
    methods = set()
    for entry in analysed:
        k = entry["index"]
        block = blocks(tv)[k]
        for kind, f in (("sum", lambda v, b=block: tv_sum(b, v)), ("unit", block)):
            x = states[k]
            J = jacfwd(lambda v, f=f: f(v[None])[0])(x[0]).reshape(-1, x[0].numel()).detach()
            sigma = torch.linalg.svdvals(J).numpy()[None]
            stats = entry[kind]
            assert stats["fractions"] == "exact", (k, kind, stats["method"])
            assert_fractions_match(stats, sigma)
            assert stats["sigma_max"] == pytest.approx(sigma.max(), rel=1e-6), (k, kind)
            methods.add(stats["method"].split("+")[0])
    assert {"count", "dense"} <= methods or {"count", "coloring"} <= methods, methods
    # Stage maps (a whole layer) against the composition of torchvision's blocks.
    stages = summary["analysis"]["stages"]
    assert len(stages) == (4 if "stage" in maps else 0)
    for entry in stages:
        first = entry["units"][0]
        layer = [blocks(tv)[k] for k in entry["units"]]

        def stage(v, layer=layer):
            for block in layer:
                v = block(v)
            return v

        x = states[first][0]
        J = jacfwd(lambda v: stage(v[None])[0])(x).reshape(-1, x.numel()).detach()
        sigma = torch.linalg.svdvals(J).numpy()[None]
        if entry["stage"]["fractions"] == "exact":
            assert_fractions_match(entry["stage"], sigma)
        else:  # an estimate's error bar covers the truth
            for key in ("frac_one", "frac_zero"):
                truth = {"frac_one": (np.abs(sigma - 1) < TOL).mean(),
                         "frac_zero": (sigma < TOL).mean()}[key]  # fmt: skip
                assert abs(entry["stage"][key] - truth) <= 3 * entry["stage"][f"{key}_err"]
    # Perturbation curves: one point per unit plus the output; identity: one per block.
    n_units = len(blocks(tv))
    pert = summary["analysis"]["perturbation"]
    assert len(pert["adversarial_rel"]) == len(pert["random_rel"]) == n_units + 1
    assert len(summary["analysis"]["identity"]["scaled"]) == n_units
    projection = pert["projection"]
    assert projection["units"] == json.loads(units) and not projection["skipped"]
    for shares in (projection["adversarial"], projection["random"]):  # per unit, they add up
        np.testing.assert_allclose(np.sum(list(shares.values()), axis=0), 1.0, atol=1e-6)


@pytest.mark.slow  # a resnet-dyn process with W&B (not in test-fast)
def test_a_torchvision_resnet_trains_through_resnet_dyn(tmp_path):
    """The issue's command, `resnet-dyn model=torchvision_resnet model.arch=resnet18
    trainer.max_epochs=1`, on the default data (digits, 1x8x8) with its default callbacks
    (the spectra of every unit at the end) and W&B offline, a few batches."""
    result = run_cli(
        ["model=torchvision_resnet", "model.arch=resnet18", "trainer.max_epochs=1",
         "trainer.limit_train_batches=3", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", f"hydra.run.dir={tmp_path / 'job'}"],
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "completed"
    units = summary["analysis"]["units"]
    assert len(units) == 8 and [u["stage"] for u in units] == [0, 0, 1, 1, 2, 2, 3, 3]
    # The records W&B wrote: the per-unit scalars and the spectrum table, every unit and map.
    run = OfflineRun.read(next((tmp_path / "job" / "wandb").glob("offline-run-*")))
    (row,) = [r for r in run.history if "spectrum/unit_07/sum/frac_one" in r]
    assert row["spectrum/unit_07/sum/frac_one"] == units[7]["sum"]["frac_one"]
    assert run.config["model"]["arch"] == "resnet18"
    net, info = load_model(tmp_path / "job" / "checkpoints" / "last.ckpt")
    assert isinstance(net, TorchvisionResNet) and info["model"]["arch"] == "resnet18"
    # The checkpoint's weights are torchvision's state dict under Lightning's "net." prefix.
    ckpt = torch.load(tmp_path / "job" / "checkpoints" / "last.ckpt", weights_only=True)
    state = {k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    tv = torchvision_net("resnet18", 10)
    tv.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    assert list(state) == list(tv.state_dict())
    tv.load_state_dict(state)


def test_model_num_classes_must_fit_the_data(tmp_path):
    from conftest import compose_config

    from resnet_dyn.training.job import build_job

    cfg = compose_config("train", ["model=torchvision_resnet", "model.num_classes=7",
                                   "logger=none"], tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match=r"^model\.num_classes: expected null or 10"):
        build_job(cfg)
    net = copy.deepcopy(build_job(compose_config(
        "train", ["model=torchvision_resnet", "model.num_classes=10", "logger=none"], tmp_path
    )).module.net)  # fmt: skip
    assert net.fc.out_features == 10


def test_an_auto_map_too_large_to_count_says_why_in_its_note():
    torch.manual_seed(0)
    net = TorchvisionResNet("resnet18", (3, 16, 16), 10, stem="cifar").eval()
    from resnet_dyn.dynamics import map_spectrum, unit_map, unit_states

    x = unit_states(net, torch.randn(1, 3, 16, 16))[7][0]
    f = unit_map(net, 7, x, "sum")  # 512 x 2 x 2 = 2048 dimensions
    stats = map_spectrum(f, dense_max=100, count_max_gflop=1e-6, probes=2, steps=8).stats
    assert stats["method"].startswith("slq") and stats["fractions"] == "estimated"
    assert "not counted: a count would take" in stats["note"]
