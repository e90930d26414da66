"""Residual trajectories, fixed points, continuous time, noise and pruning (paper 2)."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import brentq

from resnet_dyn.dynamics.transient import (
    class_statistics,
    continuous_trajectory,
    convergence,
    fixed_points,
    integrate_residuals,
    last_layer_converged,
    noise_evolution,
    trajectory,
)
from resnet_dyn.errors import ConfigError
from resnet_dyn.models import MLP, CifarResNet, DenseResNet, drop_last_unit

D = torch.float64


def dense(
    weight: list[list[float]],
    bias: list[float],
    depth: int = 15,
    activation: str = "sigmoid",
    skip_scale: float = 1.0,
) -> DenseResNet:
    """A tied dense ResNet of identity stem with the given W and b."""
    n = len(bias)
    net = DenseResNet(
        depth=depth, input_shape=(n,), width=n, activation=activation, skip_scale=skip_scale
    ).to(D)
    with torch.no_grad():
        net.units[0].branch[0].weight.copy_(torch.tensor(weight, dtype=D))
        net.units[0].branch[0].bias.copy_(torch.tensor(bias, dtype=D))
    return net


def test_residuals_are_what_each_layer_adds() -> None:
    torch.manual_seed(0)
    net = DenseResNet(depth=4, input_shape=(3,), width=3, skip_scale=0.7).to(D)
    x = torch.randn(5, 3, dtype=D)
    tr = trajectory(net, x)
    assert len(tr.states) == 5 and len(tr.residuals) == 4
    W, b = net.units[0].branch[0].weight, net.units[0].branch[0].bias
    state = x
    for t in range(4):
        y = torch.sigmoid(state @ W.T + b)
        assert torch.allclose(tr.residuals[t], y)
        state = 0.7 * state + y
        assert torch.allclose(tr.states[t + 1], state)
    mlp = MLP(depth=3, input_shape=(3,), width=3).to(D)
    mt = trajectory(mlp, x)
    assert all(torch.equal(y, s) for y, s in zip(mt.residuals, mt.states[1:], strict=True))
    conv = CifarResNet(depth=8, input_shape=(1, 8, 8), num_classes=2).eval()
    ct = trajectory(conv, torch.randn(2, 1, 8, 8))
    unit = conv.units[1]  # downsampling: the skip is subsampled and zero-padded
    assert torch.allclose(ct.states[2] - ct.residuals[1], unit.shortcut(ct.states[1]))


def test_class_statistics_and_convergence_by_hand() -> None:
    layer = torch.tensor([[0.0, 2.0], [2.0, 4.0], [5.0, 5.0]])
    labels = torch.tensor([1, 1, 0])
    stats = class_statistics([layer, 2 * layer], labels)
    assert stats["classes"] == [0, 1]
    assert torch.equal(stats["mean"][0], torch.tensor([[5.0, 5.0], [1.0, 3.0]]))
    assert torch.equal(stats["std"][0], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(stats["mean"][1], 2 * stats["mean"][0])
    ys = [torch.zeros(3, 2), layer, layer, torch.zeros(3, 4)]
    c = convergence(ys)
    assert c.shape == (3, 3)
    assert torch.equal(c[:, 0], torch.tensor([1.0, 3.0, 5.0]))
    assert torch.equal(c[:, 1], torch.zeros(3))
    assert c[:, 2].isnan().all()  # residuals of different shapes


def test_fixed_point_eigenvalues_of_a_diagonal_tanh_model() -> None:
    # f(0) = 0, f'(0) = 1: a* = 0 and J = alpha I + W diag(f'(0)) = I + W.
    net = dense([[-0.5, 0, 0], [0, -0.2, 0], [0, 0, -1.5]], [0.0, 0.0, 0.0], activation="tanh")
    fp = fixed_points(net, torch.randn(4, 3, dtype=D), tol=1e-12)
    assert fp.converged.all() and (fp.layers > 15).all()
    assert fp.residual.abs().max() < 1e-10
    lam = fp.eigenvalues.real.sort(dim=1).values
    assert torch.allclose(lam, torch.tensor([-0.5, 0.5, 0.8], dtype=D).expand(4, 3), atol=1e-8)
    assert fp.eigenvalues.imag.abs().max() < 1e-12
    assert (fp.unstable_discrete == 0).all() and (fp.unstable_continuous == 0).all()
    assert not fp.saddle.any()


def test_a_saddle_reached_on_its_stable_manifold() -> None:
    # The second neuron is repelling (1 + 0.3 > 1) but starts, and stays, at exactly 0.
    net = dense([[-0.5, 0, 0], [0, 0.3, 0], [0, 0, -0.2]], [0.0, 0.0, 0.0], activation="tanh")
    x = torch.randn(3, 3, dtype=D)
    x[:, 1] = 0
    fp = fixed_points(net, x, tol=1e-12)
    assert fp.converged.all()
    lam = fp.eigenvalues.real.sort(dim=1).values
    assert torch.allclose(lam, torch.tensor([0.5, 0.8, 1.3], dtype=D).expand(3, 3), atol=1e-8)
    assert (fp.unstable_discrete == 1).all() and (fp.unstable_continuous == 1).all()
    assert fp.saddle.all()


def test_fixed_point_of_a_one_neuron_sigmoid_model_with_scaled_skip() -> None:
    alpha, w, b = 0.5, -1.0, 0.3
    net = dense([[w]], [b], skip_scale=alpha)
    fp = fixed_points(net, torch.tensor([[0.2], [-3.0]], dtype=D), tol=1e-13)

    # a* solves a = alpha a + (1 - alpha) b + w sigma(a); J = alpha + w sigma'(a*).
    def sig(a: float) -> float:
        return 1 / (1 + math.exp(-a))

    a_star = brentq(lambda a: (1 - alpha) * (a - b) - w * sig(a), -10, 10, xtol=1e-14)
    lam = alpha + w * sig(a_star) * (1 - sig(a_star))
    assert fp.converged.all()
    assert torch.allclose(fp.preactivation, torch.full((2, 1), a_star, dtype=D), atol=1e-10)
    assert torch.allclose(fp.residual, torch.full((2, 1), sig(a_star), dtype=D), atol=1e-10)
    assert torch.allclose(fp.eigenvalues.real, torch.full((2, 1), lam, dtype=D), atol=1e-10)


def test_fixed_points_need_a_tied_dense_resnet() -> None:
    with pytest.raises(ValueError, match="tied"):
        fixed_points(DenseResNet(depth=3, input_shape=(3,), width=3, tied=False), torch.randn(2, 3))
    with pytest.raises(ValueError, match="tied"):
        fixed_points(MLP(depth=3, input_shape=(3,), width=3), torch.randn(2, 3))


def test_unrolled_trajectory_extends_the_trained_one() -> None:
    torch.manual_seed(0)
    net = DenseResNet(depth=15, input_shape=(3,), width=3).to(D)
    x = torch.randn(4, 3, dtype=D)
    short, long = trajectory(net, x), trajectory(net, x, depth=1000)
    assert len(long.residuals) == 1000 and len(long.states) == 1001
    for a, b in zip(short.residuals, long.residuals[:15], strict=True):
        assert torch.allclose(a, b)
    assert len(net.units) == 15  # the model itself is untouched


def test_integration_matches_a_closed_form_solution() -> None:
    # W = [[0, w], [0, 0]]: y2 is constant and y1 is logistic, y1(t) = sigma(logit y1(0) + w y2 t).
    w = 1.5
    y0 = torch.tensor([[0.2, 0.6], [0.7, 0.1]], dtype=D)
    times = [0.0, 0.5, 1.0, 3.0, 6.0]
    ys = integrate_residuals(torch.tensor([[0.0, w], [0.0, 0.0]]), y0, times)
    assert ys.shape == (2, 5, 2)
    t = torch.tensor(times, dtype=D)
    for i in range(2):
        logit = math.log(y0[i, 0] / (1 - y0[i, 0]))
        exact = torch.sigmoid(logit + w * y0[i, 1] * t)
        assert torch.allclose(ys[i, :, 0], exact, atol=1e-8)
        assert torch.allclose(ys[i, :, 1], y0[i, 1].expand(5), atol=1e-12)


def test_continuous_and_discrete_residuals_agree_for_small_weights() -> None:
    torch.manual_seed(0)
    net = DenseResNet(depth=15, input_shape=(3,), width=3).to(D)
    x = torch.randn(4, 3, dtype=D)

    def gap() -> float:
        discrete = torch.stack(trajectory(net, x).residuals, dim=1)
        continuous = continuous_trajectory(net, x)
        assert torch.allclose(continuous[:, 0], discrete[:, 0])  # same start y(1)
        return float((continuous - discrete).abs().max())

    # Discrete layers are Euler steps of da/dt = W y: the gap shrinks like |W|^2.
    coarse = gap()
    with torch.no_grad():
        net.units[0].branch[0].weight.mul_(0.1)
    fine = gap()
    assert coarse > 1e-3 and fine < coarse / 20


def test_noise_grows_from_its_input_size_and_zero_noise_changes_nothing() -> None:
    torch.manual_seed(0)
    for net in (DenseResNet(depth=5, input_shape=(3,), width=3), MLP(depth=5, input_shape=(3,))):
        net = net.to(D)
        x, labels = torch.randn(6, 3, dtype=D), torch.randint(0, 2, (6,))
        out = noise_evolution(net, x, labels, [0.0, 0.1, 1.0], seed=4)
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=D)
        assert out["distance"][0] == [0.0] * 6
        assert out["distance"][1][0] == pytest.approx(0.1 * float(noise.norm(dim=1).mean()))
        assert out["distance"][2][0] == pytest.approx(10 * out["distance"][1][0])
        clean = int((net(x).argmax(1) == labels).sum()) / 6
        assert out["accuracy"][0] == clean


def test_pruning_criterion_and_dropping_the_last_unit() -> None:
    still = dense([[0.0] * 3] * 3, [0.0] * 3, depth=5)  # y(t) = sigma(0) = 0.5 for every t
    x = torch.randn(4, 3, dtype=D)
    converged, value = last_layer_converged(still, x)
    assert converged and value < 1e-12
    torch.manual_seed(0)
    moving = DenseResNet(depth=5, input_shape=(3,), width=3, weight_scale=3.0).to(D)
    ys = trajectory(moving, x).residuals
    expected = float((ys[-1] - ys[-2]).abs().mean())
    converged, value = last_layer_converged(moving, x, threshold=0.01)
    assert value == pytest.approx(expected) and value > 0.01 and not converged

    before = moving.unit_inputs(x)[4]
    assert drop_last_unit(moving) is moving
    assert len(moving.units) == 4 and moving.depth == 4
    assert all(u.branch[0] is moving.units[0].branch[0] for u in moving.units)
    assert torch.allclose(moving(x), moving.head(before))
    single = dense([[0.0]], [0.0], depth=1)
    converged, value = last_layer_converged(single, torch.zeros(1, 1, dtype=D))
    assert not converged and math.isnan(value)
    with pytest.raises(ConfigError, match="model.depth"):
        drop_last_unit(single)
