"""Models: published parameter counts, the shared unit interface, skip and weight scaling."""

import copy

import pytest
import torch

from resnet_dyn.errors import ConfigError
from resnet_dyn.models import (
    MLP,
    CifarResNet,
    DeepResNet,
    DenseResNet,
    ResidualNet,
    branch_weights,
    scale_weights,
    set_skip_scale,
)


@pytest.mark.parametrize(
    "depth, params",
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)],
)
def test_cifar_resnet_parameter_counts_match_he_et_al(depth, params):
    net = CifarResNet(depth=depth, input_shape=(3, 32, 32), num_classes=10, shortcut="A")
    assert sum(p.numel() for p in net.parameters()) == params


def test_cifar_resnet_units_stages_and_shapes():
    net = CifarResNet(depth=20, input_shape=(3, 32, 32), num_classes=10).eval()
    assert [u.stage for u in net.units] == [0] * 3 + [1] * 3 + [2] * 3
    assert net.stage_units(1) == [3, 4, 5]
    states = net.unit_inputs(torch.randn(2, 3, 32, 32))
    assert [tuple(s.shape[1:]) for s in states] == [(16, 32, 32)] * 4 + [(32, 16, 16)] * 3 + [
        (64, 8, 8)
    ] * 3
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("shortcut, preact", [("A", False), ("B", False), ("A", True)])
def test_cifar_resnet_any_input(shape, shortcut, preact):
    net = CifarResNet(depth=8, input_shape=shape, num_classes=7, shortcut=shortcut, preact=preact)
    assert net(torch.randn(3, *shape)).shape == (3, 7)


def test_unit_is_act_of_sum_map_and_post_vs_preact():
    torch.manual_seed(0)
    post = CifarResNet(depth=8, input_shape=(1, 8, 8)).eval()
    pre = CifarResNet(depth=8, input_shape=(1, 8, 8), preact=True).eval()
    x = torch.randn(2, 16, 8, 8)
    for unit in post.units[:1]:
        assert torch.allclose(unit(x), torch.relu(unit.sum_map(x)))
        expected = unit.skip_scale * unit.shortcut(x) + unit.branch(x)
        assert torch.allclose(unit.sum_map(x), expected)
    unit = pre.units[0]
    assert torch.allclose(unit(x), unit.sum_map(x))
    assert (post.units[0](x) >= 0).all() and (pre.units[0](x) < 0).any()


def test_option_a_shortcut_subsamples_and_zero_pads():
    net = CifarResNet(depth=8, input_shape=(3, 16, 16))
    shortcut = net.units[1].shortcut
    x = torch.randn(1, 16, 16, 16)
    y = shortcut(x)
    assert y.shape == (1, 32, 8, 8)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


def test_skip_scale_at_init_and_post_hoc():
    torch.manual_seed(0)
    a = CifarResNet(depth=8, input_shape=(1, 8, 8), skip_scale=0.5).eval()
    b = copy.deepcopy(a)
    set_skip_scale(b, 1.0)
    x = torch.randn(2, 16, 8, 8)
    unit_a, unit_b = a.units[0], b.units[0]
    assert unit_a.skip_scale == 0.5 and unit_b.skip_scale == 1.0
    assert torch.allclose(unit_b.sum_map(x) - unit_a.sum_map(x), 0.5 * x, atol=1e-6)
    set_skip_scale(b, 2.0, units=[2])
    assert [u.skip_scale for u in b.units] == [1.0, 1.0, 2.0]
    with pytest.raises(ConfigError, match="units"):
        set_skip_scale(b, 1.0, units=[3])


def test_weight_scale_at_init_equals_post_hoc_scaling():
    torch.manual_seed(1)
    scaled = CifarResNet(depth=8, input_shape=(1, 8, 8), weight_scale=0.3)
    torch.manual_seed(1)
    plain = CifarResNet(depth=8, input_shape=(1, 8, 8))
    scale_weights(plain, 0.3)
    for p, q in zip(plain.parameters(), scaled.parameters(), strict=True):
        assert torch.allclose(p, q)
    # the stem and head are untouched; only branch convs are scaled
    torch.manual_seed(1)
    ref = CifarResNet(depth=8, input_shape=(1, 8, 8))
    assert torch.equal(ref.stem[0].weight, scaled.stem[0].weight)
    w_ref = ref.units[1].branch[0].weight
    assert torch.allclose(scaled.units[1].branch[0].weight, 0.3 * w_ref)
    before = [w.clone() for w in branch_weights(plain)]
    scale_weights(plain, 2.0, units=1)
    after = branch_weights(plain)
    assert torch.allclose(after[2], 2 * before[2]) and torch.equal(after[0], before[0])


def test_dense_resnet_equation_and_tied_weights():
    torch.manual_seed(0)
    net = DenseResNet(depth=4, input_shape=(3,), num_classes=2, width=3, tied=True, skip_scale=0.7)
    lin = net.units[0].branch[0]
    assert all(u.branch[0] is lin for u in net.units)
    assert sum(p.numel() for p in net.parameters()) == 12 + 8  # one (W, b) + head
    x = torch.randn(5, 3)
    states = net.unit_inputs(x)
    for t in range(4):
        expected = 0.7 * states[t] + torch.sigmoid(states[t] @ lin.weight.T + lin.bias)
        assert torch.allclose(states[t + 1], expected)
    w = lin.weight.clone()
    scale_weights(net, 2.0)  # scaled once, not once per unit
    assert torch.allclose(lin.weight, 2 * w)
    with pytest.raises(ConfigError, match="tied"):
        scale_weights(net, 2.0, units=[0])


def test_dense_untied_projection_unroll_and_mlp():
    net = DenseResNet(depth=3, input_shape=(1, 8, 8), num_classes=10, width=5, tied=False)
    assert isinstance(net.stem[1], torch.nn.Linear) and net.stem[1].in_features == 64
    assert len({id(u.branch[0]) for u in net.units}) == 3
    tied = DenseResNet(depth=15, input_shape=(2,), num_classes=2, width=3)
    deep = tied.unrolled(1000)
    assert len(deep.units) == 1000 and deep.units[999].branch[0] is deep.units[0].branch[0]
    x = torch.randn(4, 2)
    assert torch.allclose(deep.unit_inputs(x)[15], tied.unit_inputs(x)[15])
    with pytest.raises(ConfigError, match="model.tied"):
        net.unrolled(10)
    mlp = MLP(depth=3, input_shape=(3,), num_classes=2, width=3)
    h = torch.randn(4, 3)
    unit = mlp.units[0]
    assert torch.allclose(unit(h), torch.sigmoid(unit.branch[0](h)))
    with pytest.raises(ConfigError, match="model.skip_scale"):
        MLP(depth=3, skip_scale=0.5)


@pytest.mark.parametrize(
    "block, shape", [("fc", (1, 28, 28)), ("conv", (3, 16, 16)), ("fc", (20,))]
)
def test_deep_resnet_depth_sweep(block, shape):
    for depth in (2, 50):
        net = DeepResNet(depth=depth, input_shape=shape, num_classes=10, width=8, block=block)
        assert len(net.units) == depth and isinstance(net, ResidualNet)
        assert net.eval()(torch.randn(2, *shape)).shape == (2, 10)


def test_deep_resnet_zero_branch_is_identity():
    net = DeepResNet(depth=300, input_shape=(16,), width=16, batch_norm=False).eval()
    for w in branch_weights(net):
        torch.nn.init.zeros_(w)
    for u in net.units:
        for m in u.branch.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.zeros_(m.bias)
    x = torch.randn(3, 16)
    states = net.unit_inputs(x)
    assert torch.allclose(states[0], states[-1])


@pytest.mark.parametrize(
    "make, key",
    [
        (lambda: CifarResNet(depth=21), "model.depth"),
        (lambda: CifarResNet(depth=20, width=0), "model.width"),
        (lambda: CifarResNet(depth=20, shortcut="C"), "model.shortcut"),
        (lambda: CifarResNet(depth=20, skip_scale=-1.0), "model.skip_scale"),
        (lambda: CifarResNet(depth=20, weight_scale=0.0), "model.weight_scale"),
        (lambda: CifarResNet(depth=20, input_shape=(2,)), "data"),
        (lambda: DenseResNet(depth=0), "model.depth"),
        (lambda: DenseResNet(activation="gelu"), "model.activation"),
        (lambda: DeepResNet(block="attn"), "model.block"),
        (lambda: DeepResNet(block="conv", input_shape=(5,)), "model.block"),
    ],
)
def test_invalid_values_name_the_key(make, key):
    with pytest.raises(ConfigError) as info:
        make()
    message = str(info.value)
    assert message.startswith(key + ":") and "\n" not in message


def test_zero_pad_embedding_is_fixed_and_places_the_point_first():
    """Lagzi's fixed dimension: a 2-d point in 3 neurons is (x1, x2, 0), with no parameters."""
    for cls in (DenseResNet, MLP):
        net = cls(depth=4, input_shape=(2,), num_classes=2, width=3, embed="zero_pad")
        x = torch.randn(7, 2)
        h = net.stem(x)
        assert h.shape == (7, 3)
        assert torch.equal(h[:, :2], x) and torch.equal(h[:, 2:], torch.zeros(7, 1))
        assert not any(p.requires_grad for p in net.stem.parameters())
        assert list(net.stem.parameters()) == []
        tied_layer, head = 3 * 3 + 3, 3 * 2 + 2
        assert sum(p.numel() for p in net.parameters()) == tied_layer + head
        linear = cls(depth=4, input_shape=(2,), num_classes=2, width=3)  # the learned map
        assert sum(p.numel() for p in linear.stem.parameters()) == 2 * 3 + 3
    images = DenseResNet(depth=2, input_shape=(1, 2, 2), width=6, embed="zero_pad")
    x = torch.randn(3, 1, 2, 2)
    assert torch.equal(images.stem(x), torch.cat([x.flatten(1), torch.zeros(3, 2)], 1))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"embed": "rotate"}, "model.embed"),
        ({"init": "xavier"}, "model.init"),
        ({"embed": "zero_pad", "input_shape": (5,)}, "model.embed"),  # 5 inputs, 3 neurons
        ({"embed": "zero_pad", "input_projection": True}, "model.input_projection"),
    ],
)
def test_embed_and_init_refuse_bad_values(kwargs, key):
    with pytest.raises(ConfigError) as info:
        DenseResNet(**{"depth": 2, "input_shape": (2,), "width": 3} | kwargs)
    assert str(info.value).startswith(key + ":")


def _preactivation_spread(net: DenseResNet, x: torch.Tensor) -> list[float]:
    """Per layer: the std over samples of W x(t) + b, averaged over neurons (what tells the
    inputs apart; a constant offset shared by all samples does not count)."""
    spreads, h = [], net.stem(x)
    with torch.no_grad():
        for unit in net.units:
            z = unit.branch[0](h)
            spreads.append(float(z.std(0).mean()))
            h = unit(h)
    return spreads


@pytest.mark.parametrize("tied", [False, True])
def test_orthogonal_init_keeps_the_spread_through_15_sigmoid_layers(tied):
    """The MLP's init: the last layer's pre-activations vary across inputs about as much as
    the first's; with the old init (Kaiming's ReLU gain, zero biases) they collapse."""
    torch.manual_seed(0)
    x = torch.randn(512, 64)  # inputs normalised to std 1, as the datamodules give them
    kw = {"depth": 15, "input_shape": (64,), "num_classes": 10, "width": 32, "tied": tied}
    mlp = MLP(**kw)  # init="orthogonal" is the MLP's default
    assert mlp.units[0].branch[0].bias.abs().max() > 0  # centred: b = -W 0.5, not 0
    spread = _preactivation_spread(mlp, x)
    assert 0.5 < spread[0] < 2.0  # the first layer sees std about 1: the sigmoid's steep range
    assert spread[-1] > spread[0] / 4, spread
    old = _preactivation_spread(MLP(**kw, init="kaiming"), x)
    assert old[-1] < old[0] / 1000, old
