"""Perturbation-from-identity magnitudes and the depth stopping rule (paper 3)."""

from __future__ import annotations

import pytest
import torch

from resnet_dyn.dynamics.identity import identity_magnitudes, loglog_slope, stopping_depth
from resnet_dyn.dynamics.maps import EvalModeError
from resnet_dyn.models import MLP, CifarResNet, DeepResNet


def test_zeroed_residual_branches_are_exactly_the_identity() -> None:
    torch.manual_seed(0)
    net = CifarResNet(depth=8, input_shape=(1, 8, 8), num_classes=3).eval()
    with torch.no_grad():
        for unit in net.units:
            unit.branch[-1].weight.zero_()  # the branch's last BN: F(x) = 0
            unit.branch[-1].bias.zero_()
    m = identity_magnitudes(net, torch.randn(5, 1, 8, 8))
    assert m["abs"] == [0.0, 0.0, 0.0] and m["scaled"] == [0.0, 0.0, 0.0]
    assert m["abs_mean"] == 0.0 and m["scaled_mean"] == 0.0
    with pytest.raises(EvalModeError):
        identity_magnitudes(net.train(), torch.randn(2, 1, 8, 8))


def test_magnitudes_match_a_hand_computation_averaged_over_samples() -> None:
    torch.manual_seed(0)
    net = DeepResNet(depth=2, input_shape=(3,), num_classes=2, width=3, batch_norm=False).eval()
    x = torch.randn(5, 3, dtype=torch.float32)
    stem = net.stem[1]
    h = x @ stem.weight.T + stem.bias
    abs_ref, scaled_ref = [], []
    for unit in net.units:
        l1, l2 = unit.branch[0], unit.branch[2]
        f = torch.relu(h @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
        abs_ref.append(f.norm(dim=1).mean().item())
        scaled_ref.append((f.norm(dim=1) / h.norm(dim=1)).mean().item())
        h = h + f
    # Uneven batches: the average is over samples, not over batches.
    batches = [(x[:1], torch.zeros(1)), (x[1:], torch.zeros(4))]
    m = identity_magnitudes(net, batches)
    assert m["abs"] == pytest.approx(abs_ref, rel=1e-5)
    assert m["scaled"] == pytest.approx(scaled_ref, rel=1e-5)
    assert m["abs_mean"] == pytest.approx(sum(abs_ref) / 2, rel=1e-5)
    assert m["scaled_mean"] == pytest.approx(sum(scaled_ref) / 2, rel=1e-5)


def test_an_mlp_has_no_identity_to_perturb() -> None:
    with pytest.raises(ValueError, match="skip connections"):
        identity_magnitudes(MLP(depth=3, input_shape=(3,), width=3), torch.randn(2, 3))


def test_stopping_depth_is_the_smallest_depth_below_epsilon() -> None:
    depths, mags = [48, 6, 24, 12], [0.05, 0.4, 0.09, 0.2]
    assert stopping_depth(depths, mags, 0.1) == 24
    assert stopping_depth(depths, mags, 0.2) == 24  # strictly below
    assert stopping_depth(depths, mags, 0.01) is None
    with pytest.raises(ValueError, match="epsilon"):
        stopping_depth(depths, mags, 0.0)
    with pytest.raises(ValueError, match="as many depths"):
        stopping_depth(depths, mags[:2], 0.1)


def test_loglog_slope_of_an_inverse_law_is_minus_one() -> None:
    depths = [6, 12, 50, 300]
    assert loglog_slope(depths, [3.0 / d for d in depths]) == pytest.approx(-1.0)
    assert loglog_slope(depths, [2.0 / d**0.5 for d in depths]) == pytest.approx(-0.5)
