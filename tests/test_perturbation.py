"""Attacks, matched random perturbations, their propagation and projection (paper 1)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from resnet_dyn.dynamics.maps import EvalModeError
from resnet_dyn.dynamics.perturbation import (
    Normalized,
    fgsm,
    matched_random,
    perturbation_analysis,
    pgd,
    project_perturbation,
    propagate,
    propagate_jvp,
    to_normalized,
    to_pixels,
)
from resnet_dyn.errors import ConfigError
from resnet_dyn.models import CifarResNet, DenseResNet

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
EPS = 8 / 255


def tiny_net(dtype: torch.dtype = torch.float32) -> CifarResNet:
    torch.manual_seed(0)
    return CifarResNet(depth=8, input_shape=(3, 16, 16), num_classes=4).to(dtype).eval()


def pixel_batch(
    n: int = 4, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 3, 16, 16, generator=g, dtype=dtype)
    # Saturated pixels make the [0, 1] clamp bite.
    x[:, :, :3] = 0.0
    x[:, :, -3:] = 1.0
    return x, torch.randint(0, 4, (n,), generator=g)


def losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def test_normalisation_helpers_and_wrapper() -> None:
    net = tiny_net()
    x, _ = pixel_batch()
    z = to_normalized(x, MEAN, STD)
    for c in range(3):
        assert torch.allclose(z[:, c], (x[:, c] - MEAN[c]) / STD[c])
    assert torch.allclose(to_pixels(z, MEAN, STD), x, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(Normalized(net, MEAN, STD)(x), net(z))


def test_fgsm_moves_by_eps_inside_the_box_and_raises_the_loss() -> None:
    model = Normalized(tiny_net(), MEAN, STD)
    x, y = pixel_batch()
    x_adv = fgsm(model, x, y, EPS)
    delta = x_adv - x
    assert delta.abs().max() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    # Away from the box's faces FGSM moves every pixel by exactly eps.
    free = (x > EPS) & (x < 1 - EPS)
    assert torch.allclose(delta[free].abs(), torch.full_like(delta[free], EPS), atol=1e-6)
    assert losses(model, x_adv, y).sum() > losses(model, x, y).sum()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_its_ball_and_the_box_and_raises_the_loss(norm: str) -> None:
    model = Normalized(tiny_net(), MEAN, STD)
    x, y = pixel_batch()
    eps = EPS if norm == "linf" else 0.5
    x_adv = pgd(model, x, y, eps, norm=norm, steps=5)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all()
    # A 5-step attack from a random start reaches the boundary of the ball.
    assert (size >= 0.5 * eps).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (losses(model, x_adv, y) > losses(model, x, y)).all()


def test_attacks_refuse_a_model_in_train_mode() -> None:
    net = tiny_net().train()
    x, y = pixel_batch()
    with pytest.raises(EvalModeError, match="eval mode"):
        fgsm(Normalized(net, MEAN, STD), x, y, EPS)
    with pytest.raises(EvalModeError):
        perturbation_analysis(net, x, y, MEAN, STD)
    assert net.training  # the caller's mode is left alone


@pytest.mark.parametrize("kind", ["gaussian", "sign"])
def test_random_perturbation_has_the_adversarial_norm_after_clamping(kind: str) -> None:
    model = Normalized(tiny_net(), MEAN, STD)
    x, y = pixel_batch()
    delta = pgd(model, x, y, 0.5, norm="l2", steps=3) - x
    r = matched_random(x, delta, kind, seed=3)
    assert torch.allclose(r.flatten(1).norm(dim=1), delta.flatten(1).norm(dim=1), rtol=1e-5)
    assert (x + r).min() >= 0 and (x + r).max() <= 1
    # The clamp was active: some saturated pixels could not move outwards.
    assert ((x == 0) & (r == 0)).any() and ((x == 1) & (r == 0)).any()
    if kind == "sign":
        # One magnitude per image on the pixels that the clamp left alone.
        for xi, ri in zip(x, r, strict=True):
            mags = ri.abs()[(xi > 0.1) & (xi < 0.9)]
            assert torch.allclose(mags, mags[0].expand_as(mags), rtol=1e-4)


def test_finite_and_jvp_propagation_agree_for_small_perturbations() -> None:
    net = tiny_net(torch.float64)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 3, 16, 16, generator=g, dtype=torch.float64)
    d = 1e-6 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    finite, inf = propagate(net, x, d), propagate_jvp(net, x, d)
    assert finite["abs"].shape == (3, len(net.units) + 1)
    assert torch.allclose(finite["abs"], inf["abs"], rtol=1e-4)
    assert torch.allclose(finite["rel"], inf["rel"], rtol=1e-4)


def test_propagation_at_the_input_is_the_perturbation_itself() -> None:
    torch.manual_seed(0)
    net = DenseResNet(depth=4, input_shape=(3,), width=3).eval()  # identity stem
    x, d = torch.randn(5, 3), 0.1 * torch.randn(5, 3)
    out = propagate(net, x, d)
    assert torch.allclose(out["abs"][:, 0], d.norm(dim=1))
    assert torch.allclose(out["rel"][:, 0], d.norm(dim=1) / x.norm(dim=1))


def test_projection_shares_on_a_constructed_basis() -> None:
    g = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    coeff = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    s = torch.tensor([2.0, 1.0005, 0.5], dtype=torch.float64)
    # Only three of the four directions: the fourth's energy is "outside".
    out = project_perturbation(Q @ coeff, Q[:, :3], s, tol=1e-3)
    assert torch.allclose(out["coefficients"], coeff[:3])
    expected = {"expanding": 1 / 30, "neutral": 4 / 30, "contracting": 9 / 30, "outside": 16 / 30}
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, abs=1e-12)
    with pytest.raises(ValueError, match="expected V"):
        project_perturbation(coeff, Q[:, :3], s[:2])


def test_projection_on_a_complete_svd_basis_accounts_for_all_energy() -> None:
    g = torch.Generator().manual_seed(0)
    J = torch.eye(6, dtype=torch.float64) + 0.5 * torch.randn(
        6, 6, generator=g, dtype=torch.float64
    )
    _, s, vh = torch.linalg.svd(J)
    d = torch.randn(2, 3, generator=g, dtype=torch.float64)  # any shape, flattened
    out = project_perturbation(d, vh.T, s)
    total = out["expanding"] + out["neutral"] + out["contracting"] + out["outside"]
    assert total == pytest.approx(1.0, abs=1e-12)
    assert out["outside"] == pytest.approx(0.0, abs=1e-12)
    # ||J d||^2 = sum_i s_i^2 c_i^2 on the right singular vectors.
    c = out["coefficients"]
    assert (s.square() * c.square()).sum() == pytest.approx(float((J @ d.flatten()).square().sum()))


@pytest.mark.parametrize("attack", ["fgsm", "pgd_linf", "pgd_l2"])
def test_analysis_is_json_with_one_value_per_state(attack: str) -> None:
    net = tiny_net()
    x, y = pixel_batch()
    out = perturbation_analysis(net, x, y, MEAN, STD, attack=attack, steps=2, seed=1)
    json.dumps(out)
    n_states = len(net.units) + 1
    for key in ("adversarial_rel", "random_rel", "adversarial_abs", "random_abs", "unit_stage"):
        assert len(out[key]) == n_states
    assert out["attack"] == attack and out["eps"] == (0.5 if attack == "pgd_l2" else EPS)
    assert 0 <= out["attacked_accuracy"] <= out["clean_accuracy"] <= 1
    # The same attack, redone by hand, gives the reported adversarial differences.
    model = Normalized(net, MEAN, STD)
    if attack == "fgsm":
        x_adv = fgsm(model, x, y, EPS)
    else:
        x_adv = pgd(model, x, y, out["eps"], norm=attack.removeprefix("pgd_"), steps=2, seed=1)
    z = model.normalize(x)
    ref = propagate(net, z, model.normalize(x_adv) - z)
    assert out["adversarial_rel"] == pytest.approx(ref["rel"].mean(0).tolist(), rel=1e-4)
    assert out["adversarial_abs"] == pytest.approx(ref["abs"].mean(0).tolist(), rel=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"eps": -0.1}, "eps"),
        ({"attack": "cw"}, "attack"),
        ({"steps": 0}, "steps"),
        ({"step_size": 0.0}, "step_size"),
        ({"random_kind": "uniform"}, "random_kind"),
    ],
)
def test_analysis_rejects_bad_settings_naming_the_argument(kwargs: dict, key: str) -> None:
    # A library error naming the argument; config.checks names the config key before this.
    x, y = pixel_batch(2)
    with pytest.raises(ValueError, match=f"^{key}: expected") as err:
        perturbation_analysis(tiny_net(), x, y, MEAN, STD, **kwargs)
    assert not isinstance(err.value, ConfigError)
