"""Checkpoint loading: akamaster key layout round trip, strict mismatch messages, weights only."""

import pytest
import torch
from conftest import compose_config

from resnet_dyn.analysis.job import run_analysis_job
from resnet_dyn.errors import UserError
from resnet_dyn.models import CifarResNet
from resnet_dyn.models.checkpoints import akamaster_to_units, load_model, units_to_akamaster


def akamaster_state(depth: int) -> dict[str, torch.Tensor]:
    """A state dict with akamaster's exact key layout, built independently of our mapping."""
    n = (depth - 2) // 6
    torch.manual_seed(depth)
    state = {"module.conv1.weight": torch.randn(16, 3, 3, 3)}

    def bn(prefix: str, c: int) -> None:
        state[f"{prefix}.weight"] = torch.rand(c) + 0.5
        state[f"{prefix}.bias"] = torch.randn(c)
        state[f"{prefix}.running_mean"] = torch.randn(c)
        state[f"{prefix}.running_var"] = torch.rand(c) + 0.5

    bn("module.bn1", 16)
    cin = 16
    for s, c in enumerate((16, 32, 64), start=1):
        for i in range(n):
            p = f"module.layer{s}.{i}"
            state[f"{p}.conv1.weight"] = torch.randn(c, cin, 3, 3) * 0.1
            bn(f"{p}.bn1", c)
            state[f"{p}.conv2.weight"] = torch.randn(c, c, 3, 3) * 0.1
            bn(f"{p}.bn2", c)
            cin = c
    state["module.linear.weight"] = torch.randn(10, 64)
    state["module.linear.bias"] = torch.randn(10)
    return state


def test_akamaster_round_trip(tmp_path):
    state = akamaster_state(20)
    path = tmp_path / "resnet20.th"
    torch.save({"state_dict": state, "best_prec1": 91.7}, path)
    net, info = load_model(path, fmt="akamaster", depth=20)
    assert not net.training and info["input_shape"] == [3, 32, 32]
    ours = net.state_dict()
    assert torch.equal(ours["units.4.branch.3.weight"], state["module.layer2.1.conv2.weight"])
    assert torch.equal(ours["head.2.bias"], state["module.linear.bias"])
    back = units_to_akamaster({k: v for k, v in ours.items() if "num_batches" not in k}, 20)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_akamaster_mismatch_names_keys(tmp_path):
    state = akamaster_state(20)
    path = tmp_path / "resnet20.th"
    torch.save({"state_dict": state}, path)
    with pytest.raises(UserError, match=r"missing: units\.\d+") as info:
        load_model(path, fmt="akamaster", depth=32)
    assert "\n" not in str(info.value)


def test_lightning_format_and_bad_files(tmp_path):
    net = CifarResNet(depth=8, input_shape=(1, 8, 8), num_classes=10)
    arch = {"model": {"_target_": "resnet_dyn.models.CifarResNet", "depth": 8},
            "input_shape": [1, 8, 8], "num_classes": 10}  # fmt: skip
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "resnet_dyn": arch}, tmp_path / "ok.ckpt")
    loaded, _ = load_model(tmp_path / "ok.ckpt")
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), net.state_dict().values(), strict=True)
    )
    torch.save({"state_dict": state}, tmp_path / "noarch.ckpt")
    with pytest.raises(UserError, match="not a resnet-dyn checkpoint"):
        load_model(tmp_path / "noarch.ckpt")
    (tmp_path / "trunc.ckpt").write_bytes((tmp_path / "ok.ckpt").read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable"):
        load_model(tmp_path / "trunc.ckpt")
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(UserError, match="state_dict"):
        load_model(tmp_path / "tensor.pt")


def test_weights_only_refuses_code(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(UserError, match="weights-only"):
        load_model(tmp_path / "evil.ckpt")


def test_mapping_is_total_for_resnet56():
    net = CifarResNet(depth=56)
    aka = units_to_akamaster(net.state_dict(), 56)
    assert "module.layer3.8.bn2.running_var" in aka
    assert akamaster_to_units(aka, 56).keys() == net.state_dict().keys()


def _save(tmp_path, name: str, model: dict, net: CifarResNet | None = None, **arch) -> object:
    net = net or CifarResNet(depth=8, input_shape=(1, 8, 8), num_classes=10)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    stored = {"model": model, "input_shape": [1, 8, 8], "num_classes": 10} | arch
    torch.save({"state_dict": state, "resnet_dyn": stored}, tmp_path / name)
    return tmp_path / name


def test_a_checkpoint_names_its_model_from_the_registry(tmp_path):
    net = CifarResNet(depth=8, input_shape=(1, 8, 8), num_classes=10, skip_scale=0.5)
    model = {"name": "cifar_resnet", "depth": 8, "skip_scale": 0.5}
    path = _save(tmp_path, "named.ckpt", model, net)
    loaded, info = load_model(path)
    assert isinstance(loaded, CifarResNet) and loaded.units[0].skip_scale == 0.5
    assert info["input_shape"] == [1, 8, 8]


TOUCH = {
    "_target_": "pathlib.Path.touch",
    "self": {"_target_": "pathlib.Path", "_args_": ["{marker}"]},
}


@pytest.mark.parametrize(
    ("model", "arch", "says"),
    [
        # The file asks for a callable by its _target_, at the top or nested anywhere: each
        # of these writes the marker file when handed to hydra.utils.instantiate.
        ({"_target_": "builtins.open", "file": "{marker}", "mode": "w"}, {}, "_target_"),
        (
            {"name": "cifar_resnet", "depth": 8, "width": TOUCH},
            {},
            "architecture.model.width._target_",
        ),  # fmt: skip
        ({"name": "cifar_resnet", "depth": 8}, {"mean": [TOUCH]}, "architecture.mean[0]._target_"),
        ({"name": "os.system", "depth": 8}, {}, "'os.system' is none of"),
        ({"name": "cifar_resnet", "depth": 8, "_partial_": True}, {}, "_partial_"),
        ({"name": "cifar_resnet", "depth": torch.tensor(8)}, {}, "a Tensor"),
        ({"name": "cifar_resnet", "depth": 8, "evil": 1}, {}, "arguments are invalid"),
        ({"name": "cifar_resnet", "depth": 9}, {}, "model.depth"),
    ],
)
def test_a_crafted_architecture_is_refused_and_nothing_it_asks_for_happens(
    tmp_path, model, arch, says
):
    marker = tmp_path / "marker"

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value.format(marker=marker) if isinstance(value, str) else value

    path = _save(tmp_path, "crafted.ckpt", fill(model), **fill(arch))
    with pytest.raises(UserError) as info:
        load_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and says in message
    assert not marker.exists()


def test_resnet_dyn_analyze_records_the_checkpoints_settings_not_the_model_groups(tmp_path):
    # Built with alpha = beta = 0.5; analysed with analyze.yaml's model group (1.0, 1.0).
    net = CifarResNet(depth=8, input_shape=(1, 8, 8), num_classes=10, skip_scale=0.5,
                      weight_scale=0.5)  # fmt: skip
    model = {"name": "cifar_resnet", "depth": 8, "skip_scale": 0.5, "weight_scale": 0.5}
    arch = {"model": model, "input_shape": [1, 8, 8], "num_classes": 10}
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "resnet_dyn": arch}, tmp_path / "half.ckpt")
    _, info = load_model(tmp_path / "half.ckpt")
    assert info["model"] == model
    overrides = [
        f"checkpoint.path={tmp_path / 'half.ckpt'}", "logger=none", "analysis.images=1",
        "analysis.units=[0]", "analysis.maps=[sum]", "analysis.identity.images=8",
    ]  # fmt: skip
    summary = run_analysis_job(compose_config("analyze", overrides, tmp_path / "job"))
    assert summary["config"]["model"]["skip_scale"] == 1.0
    assert summary["model"] == model
