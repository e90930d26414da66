"""Models: published parameter counts, the shared unit interface, skip and weight scaling."""

import copy
import math

import pytest
import torch

from resnet_dyn.errors import ConfigError
from resnet_dyn.models import (
    MLP,
    CifarResNet,
    DeepResNet,
    DenseResNet,
    ResidualNet,
    TorchvisionResNet,
    branch_weights,
    scale_weights,
    scaled_parameters,
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
    x = torch.randn(2, 3, 32, 32)
    states = net.unit_inputs(x)
    assert [tuple(s.shape[1:]) for s in states] == [(16, 32, 32)] * 4 + [(32, 16, 16)] * 3 + [
        (64, 8, 8)
    ] * 3
    assert torch.allclose(net.head(states[-1]), net(x))  # the units compose to the forward


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("shortcut, preact", [("A", False), ("B", False), ("A", True)])
def test_cifar_resnet_any_input(shape, shortcut, preact):
    torch.manual_seed(0)
    net = CifarResNet(depth=8, input_shape=shape, num_classes=7, shortcut=shortcut, preact=preact)
    # ResNet-8 counted by hand: branch convs 16-16-16, 16-32-32, 32-64-64 (3x3, no bias);
    # each BN has 2 parameters per channel; the stem conv reads the image's channels.
    convs = 9 * (16 * 16 * 2 + 16 * 32 + 32 * 32 + 32 * 64 + 64 * 64)
    if preact:  # BN on each conv's input; BN before the head, none in the stem
        bns = 2 * (16 + 16 + 16 + 32 + 32 + 64) + 2 * 64
    else:  # BN on each conv's output, and in the stem
        bns = 2 * (16 + 16 + 32 + 32 + 64 + 64) + 2 * 16
    option_b = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64) if shortcut == "B" else 0
    expected = 9 * 16 * shape[0] + convs + bns + option_b + 64 * 7 + 7
    assert sum(p.numel() for p in net.parameters()) == expected
    net.eval()
    x = torch.randn(3, *shape)
    out = net(x)
    assert out.shape == (3, 7)
    h = net.stem(x)
    for unit in net.units:
        h = unit.act(unit.skip_scale * unit.shortcut(h) + unit.branch(h))
    torch.testing.assert_close(net.head(h), out)
    assert _relative_change(net(x[[1, 0, 2]]), out) > 0.01  # each image its own output


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
    # only the last BN of each branch (gamma and shift) is scaled: the convs, stem and head not
    torch.manual_seed(1)
    ref = CifarResNet(depth=8, input_shape=(1, 8, 8))
    assert torch.equal(ref.stem[0].weight, scaled.stem[0].weight)
    assert torch.equal(scaled.units[1].branch[0].weight, ref.units[1].branch[0].weight)
    assert torch.equal(scaled.units[1].branch[3].weight, ref.units[1].branch[3].weight)
    assert torch.allclose(scaled.units[1].branch[4].weight, 0.3 * ref.units[1].branch[4].weight)
    assert scaled_parameters(scaled, 1) == [
        scaled.units[1].branch[4].weight,
        scaled.units[1].branch[4].bias,
    ]
    before = copy.deepcopy(plain)
    scale_weights(plain, 2.0, units=1)
    changed = {id(p) for p in scaled_parameters(plain, 1)}
    for p, q in zip(plain.parameters(), before.parameters(), strict=True):
        assert torch.equal(p, 2 * q if id(p) in changed else q)


# Every model kind the weight scale acts on, small: (constructor, input shape). BN-free
# variants too, where beta already changed the network before it meant F -> beta F.
BETA_MODELS = {
    "cifar_post_A": (lambda **kw: CifarResNet(8, (1, 8, 8), 5, shortcut="A", **kw), (1, 8, 8)),
    "cifar_post_B": (lambda **kw: CifarResNet(8, (1, 8, 8), 5, shortcut="B", **kw), (1, 8, 8)),
    "cifar_pre_A": (
        lambda **kw: CifarResNet(8, (1, 8, 8), 5, shortcut="A", preact=True, **kw),
        (1, 8, 8),
    ),
    "cifar_pre_B": (
        lambda **kw: CifarResNet(8, (1, 8, 8), 5, shortcut="B", preact=True, **kw),
        (1, 8, 8),
    ),
    "deep_fc_bn": (lambda **kw: DeepResNet(3, (12,), 5, width=8, **kw), (12,)),
    "deep_conv_bn": (
        lambda **kw: DeepResNet(2, (2, 6, 6), 5, width=4, block="conv", **kw),
        (2, 6, 6),
    ),
    "deep_fc": (lambda **kw: DeepResNet(3, (12,), 5, width=8, batch_norm=False, **kw), (12,)),
    "deep_conv_relu_after": (
        lambda **kw: DeepResNet(
            2, (2, 6, 6), 5, width=4, block="conv", batch_norm=False, final_activation="relu", **kw
        ),
        (2, 6, 6),
    ),
    "dense": (lambda **kw: DenseResNet(4, (12,), 5, width=6, tied=False, **kw), (12,)),
    "dense_tied": (lambda **kw: DenseResNet(4, (12,), 5, width=6, activation="tanh", **kw), (12,)),
    "mlp": (lambda **kw: MLP(4, (12,), 5, width=6, **kw), (12,)),
    # torchvision's blocks: BasicBlock (cifar stem) and Bottleneck (ImageNet stem), with
    # 1x1-conv downsample shortcuts.
    "tv_resnet18_cifar": (
        lambda **kw: TorchvisionResNet("resnet18", (1, 8, 8), 5, stem="cifar", **kw),
        (1, 8, 8),
    ),
    "tv_resnet50": (lambda **kw: TorchvisionResNet("resnet50", (3, 16, 16), 5, **kw), (3, 16, 16)),
}
RESIDUAL = [name for name in BETA_MODELS if name != "mlp"]


def _relative_change(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("name", BETA_MODELS)
def test_weight_scale_changes_the_network_at_init_and_after_training(name):
    """beta = 0.5 vs 1, same seed: different outputs at init in train mode (a conv scaled in
    front of a train-mode BN would give the same ones), and after a few SGD steps in eval mode."""
    make, shape = BETA_MODELS[name]
    gen = torch.Generator().manual_seed(7)
    x, y = torch.randn(32, *shape, generator=gen), torch.randint(0, 5, (32,), generator=gen)
    nets = {}
    for beta in (0.5, 1.0):
        torch.manual_seed(0)
        nets[beta] = make(weight_scale=beta).train()
    with torch.no_grad():
        change = _relative_change(nets[0.5](x), nets[1.0](x))
    assert change > 0.01, change
    for net in nets.values():
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        net.eval()
    with torch.no_grad():
        change = _relative_change(nets[0.5](x), nets[1.0](x))
    assert change > 0.01, change


def _randomise_affine(net: torch.nn.Module) -> None:
    """Give every BN and bias a trained-looking, non-trivial value (init has gamma 1, shift 0,
    running mean 0 and variance 1, zero biases), so that the scaling law is tested where a
    missed bias or shift would show."""
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
            if getattr(m, "bias", None) is not None:
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", BETA_MODELS)
def test_post_hoc_weight_scale_is_the_documented_map(name, mode):
    """cifar_resnet, deep_resnet: the branch part of every sum map scales by beta exactly,
    alpha s(x) + F(x) -> alpha s(x) + beta F(x); dense_resnet, mlp: f(W x + b) ->
    f(beta (W x + b)). Units left out are untouched."""
    make, shape = BETA_MODELS[name]
    torch.manual_seed(0)
    net = make().double()
    _randomise_affine(net)
    tied = getattr(net, "tied", False)
    units = None if tied else [0, len(net.units) - 1]
    scaled = scale_weights(copy.deepcopy(net), 0.5, units)
    net.train(mode == "train")
    scaled.train(mode == "train")
    x = torch.randn(16, *shape, dtype=torch.float64)
    states = net.unit_inputs(x)
    with torch.no_grad():
        for k, (unit, new) in enumerate(zip(net.units, scaled.units, strict=True)):
            h = states[k]
            beta = 0.5 if units is None or k in units else 1.0
            if unit.shortcut is None or isinstance(net, DenseResNet):
                linear, act = unit.branch
                torch.testing.assert_close(new.branch(h), act(beta * linear(h)))
                continue
            skip = unit.skip_scale * unit.shortcut(h)
            torch.testing.assert_close(new.sum_map(h) - skip, beta * (unit.sum_map(h) - skip))
            torch.testing.assert_close(new(h), new.act(skip + beta * unit.branch(h)))


@pytest.mark.parametrize("name", BETA_MODELS)
def test_weight_scale_at_construction_is_the_post_hoc_scaling(name):
    """One meaning: model.weight_scale is scale_weights right after the init, and it scales
    exactly the parameters scaled_parameters names (each once), nothing else."""
    make, _ = BETA_MODELS[name]
    torch.manual_seed(3)
    built = make(weight_scale=0.3)
    torch.manual_seed(3)
    ref = make()
    scaled = {id(p) for p in scaled_parameters(ref)}
    assert scaled and len(scaled) <= 2 * len(ref.units)  # a weight and a bias per unit at most
    torch.manual_seed(3)
    post = scale_weights(make(), 0.3)
    for (key, b), p in zip(built.state_dict().items(), post.state_dict().values(), strict=True):
        assert torch.equal(b, p), key  # the same code on the same numbers: bit for bit
    for b, r in zip(built.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(b, 0.3 * r if id(r) in scaled else r)
    if name == "mlp":  # the orthogonal init's biases stay centred for the scaled W: b = -W f(0)
        for unit in built.units[:1]:
            w, b = unit.branch[0].weight, unit.branch[0].bias
            torch.testing.assert_close(w @ w.T, (4 * 0.3) ** 2 * torch.eye(6))
            torch.testing.assert_close(b, -0.5 * w.sum(1))


@pytest.mark.parametrize("name", RESIDUAL)
def test_skip_scale_changes_the_sum_map_by_alpha_times_the_shortcut(name):
    """model.skip_scale and set_skip_scale agree, and alpha enters as alpha * s(x) only."""
    make, shape = BETA_MODELS[name]
    torch.manual_seed(0)
    built = make(skip_scale=0.5).eval()
    torch.manual_seed(0)
    plain = make().eval()
    post = set_skip_scale(copy.deepcopy(plain), 0.5)
    x = torch.randn(4, *shape)
    with torch.no_grad():
        states = plain.unit_inputs(x)
        for k, unit in enumerate(plain.units):
            h = states[k]
            s = unit.shortcut(h)
            torch.testing.assert_close(built.units[k].sum_map(h), post.units[k].sum_map(h))
            torch.testing.assert_close(unit.sum_map(h) - post.units[k].sum_map(h), 0.5 * s)
        assert _relative_change(built(x), plain(x)) > 0.01
        torch.testing.assert_close(built(x), post(x))


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
    w, b = lin.weight.clone(), lin.bias.clone()
    assert scaled_parameters(net) == [lin.weight, lin.bias]
    scale_weights(net, 2.0)  # scaled once, not once per unit
    assert torch.allclose(lin.weight, 2 * w) and torch.allclose(lin.bias, 2 * b)
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
    n_in = shape[0] if block == "conv" else math.prod(shape)
    # fc: Linear stem with bias, each block two bias-free 8x8 maps and two BNs; conv: 3x3
    stem, layer = (9 * n_in * 8, 9 * 8 * 8) if block == "conv" else (n_in * 8 + 8, 8 * 8)
    for depth in (2, 50):
        net = DeepResNet(depth=depth, input_shape=shape, num_classes=10, width=8, block=block)
        assert len(net.units) == depth and isinstance(net, ResidualNet)
        expected = stem + depth * 2 * (layer + 2 * 8) + 8 * 10 + 10
        assert sum(p.numel() for p in net.parameters()) == expected
        x = torch.randn(2, *shape)
        states = net.eval().unit_inputs(x)
        out = net(x)
        assert out.shape == (2, 10) and len(states) == depth + 1
        torch.testing.assert_close(net.head(states[-1]), out)
        for k, unit in enumerate(net.units):  # x + F(x) with final_activation none
            torch.testing.assert_close(states[k + 1], states[k] + unit.branch(states[k]))


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
