"""Linearizations of residual units and their singular values, against independent oracles:
``torch.func.jacfwd``, ``torch.linalg.svdvals`` and spectra known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import jacfwd

from resnet_dyn.dynamics import (
    EvalModeError,
    Window,
    accuracy,
    analyze_stages,
    analyze_units,
    dense_jacobian,
    dense_singular_values,
    extreme_singular_values,
    intervention_grid,
    jacobian,
    local_window,
    map_spectrum,
    quadrature_fractions,
    singular_value_quadrature,
    spectra_arrays,
    spectrum_stats,
    stage_map,
    summarize,
    unit_map,
    unit_states,
    with_intervention,
)
from resnet_dyn.dynamics.gridlu import GridLU, dissection
from resnet_dyn.dynamics.jacobian import local_jacobian
from resnet_dyn.dynamics.maps import UnitMap, fold_batchnorm
from resnet_dyn.dynamics.spectrum import zero_rows
from resnet_dyn.dynamics.unit_spectra import all_singular_values
from resnet_dyn.errors import ConfigError
from resnet_dyn.models import CifarResNet, DeepResNet, DenseResNet, ResidualUnit


def with_running_stats(net: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """Random BN affine parameters and running statistics from a few train-mode passes, then eval,
    so that BN is a non-trivial fixed affine map inside the linearizations."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=gen) * 0.4 - 0.2)
        net.train()
        for _ in range(3):
            net(torch.randn(16, *input_shape, generator=gen) * 2 + 0.5)
    return net.eval()


def reference(f: UnitMap) -> torch.Tensor:
    return jacfwd(f)(f.x).reshape(f.dim_out, f.dim_in)


def single_unit_map(unit: ResidualUnit, x: torch.Tensor, kind: str = "sum") -> UnitMap:
    return UnitMap(((unit.eval(), kind == "unit"),), x, kind, 0)


def cifar(shortcut: str = "A", preact: bool = False, depth: int = 8, size: int = 12):
    torch.manual_seed(0)
    net = CifarResNet(depth=depth, input_shape=(3, size, size), shortcut=shortcut, preact=preact)
    return with_running_stats(net, (3, size, size))


@pytest.mark.parametrize(("shortcut", "preact"), [("A", False), ("B", False), ("A", True)])
def test_dense_and_colored_jacobians_match_jacfwd(shortcut: str, preact: bool) -> None:
    net = cifar(shortcut, preact)
    states = unit_states(net, torch.randn(2, 3, 12, 12))
    for k in range(len(net.units)):  # unit 0: 16x12x12; units 1, 2: stride 2
        for kind in ("sum", "unit"):
            f = unit_map(net, k, states[k][1], kind)
            ref = reference(f)
            assert ref.abs().max() > 0.1
            torch.testing.assert_close(dense_jacobian(f, chunk_size=100), ref, atol=1e-5, rtol=0)
            col = jacobian(f, "coloring")
            assert col.method == "coloring"
            torch.testing.assert_close(col.matrix, ref, atol=1e-5, rtol=0)
    # The colorings are genuinely sparse where the window is smaller than the map.
    assert jacobian(unit_map(net, 0, states[0][0], "sum")).probes == 16 * 5 * 5
    assert jacobian(unit_map(net, 1, states[1][0], "sum")).probes == 16 * 7 * 7
    assert unit_map(net, 1, states[1][0]).out_shape == (32, 6, 6)


def test_stage_jacobians_match_jacfwd() -> None:
    net = cifar(depth=14)
    states = unit_states(net, torch.randn(1, 3, 12, 12))
    expected = {0: Window((1, 1), (4, 4), (4, 4)), 1: Window((2, 2), (7, 7), (7, 7))}
    for stage, window in expected.items():
        f = stage_map(net, stage, states[net.stage_units(stage)[0]][0])
        assert local_window(f) == window
        jac = jacobian(f)
        assert jac.method == "coloring" or jac.probes == f.dim_in
        torch.testing.assert_close(jac.matrix, reference(f), atol=1e-5, rtol=0)


def test_folded_batchnorm_is_the_same_map_without_batchnorm() -> None:
    for preact in (False, True):
        net = cifar(preact=preact).double()
        states = unit_states(net, torch.randn(2, 3, 12, 12, dtype=torch.float64))
        for k in range(len(net.units)):
            f = unit_map(net, k, states[k][1], "unit")
            g = f.folded()
            z = torch.randn(f.in_shape, dtype=torch.float64)
            torch.testing.assert_close(g(z), f(z), atol=1e-12, rtol=1e-12)
            if k == 1:  # stride 2
                torch.testing.assert_close(dense_jacobian(g), reference(f), atol=1e-12, rtol=0)
            bns = [m for m in g.steps[0][0].modules() if isinstance(m, nn.BatchNorm2d)]
            # Post-activation units: both BNs follow a conv. Pre-activation units: the
            # BN after the first conv folds, the one in front (before a ReLU) cannot.
            assert len(bns) == (1 if preact else 0)
    # The caller's model keeps its layers, and a BN in train mode is never folded.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) > 0
    branch = nn.Sequential(nn.Conv2d(2, 2, 3), nn.BatchNorm2d(2))
    assert isinstance(fold_batchnorm(branch)[1], nn.BatchNorm2d)


def test_window_is_derived_from_the_layers() -> None:
    torch.manual_seed(0)
    branch = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=2, dilation=2),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Conv2d(3, 3, (4, 3), padding="same"),  # even kernel: rows o-1 .. o+2
    )
    unit = ResidualUnit(branch, nn.Identity(), nn.ReLU(), skip_scale=0.5)
    with_running_stats(unit, (3, 14, 14))
    f = single_unit_map(unit, torch.randn(3, 14, 14), "unit")
    assert local_window(f) == Window((1, 1), (3, 3), (4, 3))
    jac = jacobian(f)
    assert jac.method == "coloring" and jac.probes == 3 * 8 * 7
    torch.testing.assert_close(jac.matrix, reference(f), atol=1e-5, rtol=0)


def test_non_convolutional_units_fall_back_to_dense() -> None:
    torch.manual_seed(0)
    dense = DenseResNet(depth=3, input_shape=(5,), width=7, activation="sigmoid", tied=False).eval()
    fc = with_running_stats(DeepResNet(depth=2, input_shape=(6,), width=9, block="fc"), (6,))
    conv = with_running_stats(
        DeepResNet(depth=2, input_shape=(2, 9, 9), width=4, block="conv"), (2, 9, 9)
    )
    for net, shape, method in [
        (dense, (5,), "dense"),
        (fc, (6,), "dense"),
        (conv, (2, 9, 9), "coloring"),
    ]:
        states = unit_states(net, torch.randn(2, *shape))
        for k in range(len(net.units)):
            f = unit_map(net, k, states[k][1], "unit")
            jac = jacobian(f, "coloring")
            assert jac.method == method
            assert (method == "dense") == ("coloring impossible" in jac.note)
            torch.testing.assert_close(jac.matrix, reference(f), atol=1e-5, rtol=0)


def test_zeroed_branch_gives_alpha_and_rectangular_spectra() -> None:
    net = cifar("A").double()
    for unit in net.units:
        nn.init.zeros_(unit.branch[-1].weight)  # the last BN: F(x) = 0 for every x
        nn.init.zeros_(unit.branch[-1].bias)
        unit.skip_scale = 0.7
    states = unit_states(net, torch.randn(1, 3, 12, 12, dtype=torch.float64))
    square = unit_map(net, 0, states[0][0], "sum")
    sigma, _ = dense_singular_values(jacobian(square).matrix)
    torch.testing.assert_close(sigma, torch.full((2304,), 0.7, dtype=torch.float64))
    ext = extreme_singular_values(square, k=3)
    for end in ("largest", "smallest"):
        torch.testing.assert_close(ext[end].values, torch.full((3,), 0.7, dtype=torch.float64))
    # Option A, stride 2, 16x12x12 -> 32x6x6: 0.7 on the 16*36 subsampled pixels, zero on the
    # padded channels: min(2304, 1152) singular values, half 0.7 and half 0.
    wide = unit_map(net, 1, states[1][0], "sum")
    J = jacobian(wide).matrix
    sigma, _ = dense_singular_values(J)
    assert sigma.shape == (1152,)
    torch.testing.assert_close(sigma, torch.linalg.svdvals(J))
    expected = torch.cat([torch.full((576,), 0.7), torch.zeros(576)]).double()
    torch.testing.assert_close(sigma, expected, atol=1e-7, rtol=0)
    stats = spectrum_stats(sigma, tol=1e-3)
    assert stats["frac_zero"] == 0.5 and stats["frac_one"] == 0.0 and stats["cond"] == math.inf


def orthogonal(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))[0]


def linear_map(W: torch.Tensor, x: torch.Tensor | None = None) -> UnitMap:
    """The map x -> W x + tanh-free bias: a ResidualUnit without shortcut whose J is W."""
    lin = nn.Linear(W.shape[1], W.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(W)
    x = torch.randn(W.shape[1], dtype=torch.float64) if x is None else x
    return single_unit_map(ResidualUnit(lin, None), x)


def test_orthogonal_maps_have_unit_singular_values() -> None:
    f = linear_map(orthogonal(300))
    sigma, _ = dense_singular_values(jacobian(f).matrix)
    torch.testing.assert_close(sigma, torch.ones(300, dtype=torch.float64))
    ext = extreme_singular_values(f, k=2)
    torch.testing.assert_close(ext["smallest"].values, torch.ones(2, dtype=torch.float64))
    fracs = quadrature_fractions(singular_value_quadrature(f, probes=4, steps=10))
    assert fracs["frac_one"] == pytest.approx(1.0, abs=1e-9)
    # An orthogonal 1x1 convolution, linearized through the colored path.
    conv = nn.Conv2d(8, 8, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(orthogonal(8, seed=1)[:, :, None, None])
    g = single_unit_map(ResidualUnit(conv, None), torch.randn(8, 6, 6, dtype=torch.float64))
    jac = jacobian(g)
    assert jac.method == "coloring" and jac.probes == 8
    sigma, _ = dense_singular_values(jac.matrix)
    torch.testing.assert_close(sigma, torch.ones(288, dtype=torch.float64))


def clustered(n: int, rank: int, scale: float, seed: int) -> torch.Tensor:
    """I + scale * (a rank-``rank`` perturbation) + scale/100 * (a dense one)."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.randn(n, rank, generator=gen) @ torch.randn(rank, n, generator=gen) / n
    dense = torch.randn(n, n, generator=gen) / n**0.5
    return (torch.eye(n) + scale * low + scale / 100 * dense).double()


@pytest.mark.parametrize(("n_out", "n_in"), [(1200, 1200), (700, 1000)])
def test_extreme_singular_values_match_svdvals_on_clustered_spectra(n_out: int, n_in: int) -> None:
    W = clustered(max(n_out, n_in), rank=4, scale=0.3, seed=n_in)[:n_out, :n_in]
    f = linear_map(W)
    exact = torch.linalg.svdvals(W)
    assert (exact - 1).abs().median() < 5e-3  # the spectrum clusters tightly around 1
    ext = extreme_singular_values(f, k=5, which="both", vectors=True)
    torch.testing.assert_close(ext["largest"].values, exact[:5], atol=1e-4, rtol=0)
    torch.testing.assert_close(ext["smallest"].values, exact.flip(0)[:5], atol=1e-4, rtol=0)
    for end in ("largest", "smallest"):
        assert ext[end].converged and (ext[end].residuals < 1e-6).all()
        v, s = ext[end].vectors, ext[end].values
        torch.testing.assert_close(v.norm(dim=1), torch.ones(5, dtype=torch.float64))
        torch.testing.assert_close((v @ W.T).norm(dim=1), s, atol=1e-6, rtol=0)


def test_slq_fractions_agree_with_exact_counts_within_error_bars() -> None:
    # Atoms at 0 and 1 (as in real units: masked rows, directions F' ignores) and spread mass.
    gen = torch.Generator().manual_seed(3)
    n = 1000
    s = torch.cat(
        [
            torch.ones(550),
            torch.zeros(100),
            1.2 + 0.8 * torch.rand(200, generator=gen),
            0.2 + 0.6 * torch.rand(150, generator=gen),
        ]
    ).double()
    f = linear_map(orthogonal(n, 1) @ torch.diag(s) @ orthogonal(n, 2))
    exact = spectrum_stats(dense_singular_values(jacobian(f).matrix)[0])
    est = quadrature_fractions(singular_value_quadrature(f, probes=24, steps=60, seed=1))
    for key in ("frac_one", "frac_gt_one", "frac_zero"):
        assert 0 < est[f"{key}_err"] < 0.05  # informative on a spectrum of spikes and gaps
        assert abs(est[key] - exact[key]) <= est[f"{key}_err"], key


def test_linearization_refuses_train_mode() -> None:
    net = CifarResNet(depth=8, input_shape=(3, 8, 8))
    with pytest.raises(EvalModeError, match=r"call model\.eval\(\)") as err:
        analyze_units(net, torch.randn(1, 3, 8, 8))
    assert "\n" not in str(err.value)
    x = torch.randn(16, 8, 8)
    net.eval()
    net.units[0].branch[1].train()  # one BN left in train mode is enough to refuse
    with pytest.raises(EvalModeError):
        unit_map(net, 0, x)


def test_statistics_on_a_known_spectrum() -> None:
    sigma = np.array([2.0, 1.0005, 1.0, 0.9995, 0.5, 1e-4, 0.0])
    stats = spectrum_stats(sigma, tol=1e-3)
    assert stats == {
        "frac_one": 3 / 7,
        "frac_gt_one": 1 / 7,
        "frac_zero": 2 / 7,
        "sigma_max": 2.0,
        "sigma_min": 0.0,
        "cond": math.inf,
    }
    other = spectrum_stats(np.array([4.0, 1.0, 0.5, 0.5]), tol=0.1)
    assert other["frac_one"] == 0.25 and other["frac_zero"] == 0.0 and other["cond"] == 8.0
    both = summarize(
        [other | {"method": "dense", "x_err": 0.3}, stats | {"method": "slq", "x_err": 0.4}]
    )
    assert both["sigma_max"] == 3.0 and both["sigma_max_std"] == 1.0
    assert both["cond"] == math.inf and math.isnan(both["cond_std"])
    assert both["method"] == "dense,slq"
    assert both["x_err"] == pytest.approx(0.35)  # a bias bar does not shrink over images


def test_maps_analysed_side_by_side_give_what_one_at_a_time_gives() -> None:
    """analyze_units(workers=2) runs maps on two threads: every summary, raw array and
    per-image record is the one workers=1 gives, in the units' order; a bad count of
    workers is one error naming the key."""
    net = cifar(depth=8)
    images = torch.randn(2, 3, 12, 12)
    runs, calls = {}, {1: [], 2: []}
    for w in (1, 2):
        runs[w] = analyze_units(net, images, units=[0, 1, 2], dense_max=1500, workers=w,
                                progress=lambda *a, w=w: calls[w].append(a))  # fmt: skip
    assert calls[1] == calls[2] == [(1, 3), (2, 3), (3, 3)]
    assert [r["name"] for r in runs[2]] == ["unit00", "unit01", "unit02"]
    assert {"count+shift_invert", "coloring+gram"} <= {r["sum"]["method"] for r in runs[2]}
    for one, two in zip(runs[1], runs[2], strict=True):
        for kind in ("sum", "unit"):
            assert one[kind] == two[kind]
            assert one["raw"][kind]["per_image"] == two["raw"][kind]["per_image"]
            assert len(two["raw"][kind]["seconds"]) == 2
    a1, a2 = spectra_arrays(runs[1]), spectra_arrays(runs[2])
    assert a1.keys() == a2.keys() and all(np.array_equal(a1[k], a2[k]) for k in a1)
    with pytest.raises(ConfigError, match="workers"):
        analyze_units(net, images, units=[0], workers=0)


def test_analyze_units_and_stages_report_methods_and_raw_spectra() -> None:
    net = cifar(depth=8)
    images = torch.randn(2, 3, 12, 12)
    calls = []
    res = analyze_units(
        net, images, units=[0, 1], dense_max=1500, top_k=2, progress=lambda *a: calls.append(a)
    )
    assert calls == [(1, 2), (2, 2)]
    assert [r["index"] for r in res] == [0, 1] and res[1]["stage"] == 1
    assert (res[0]["dim_in"], res[1]["dim_in"], res[1]["dim_out"]) == (2304, 2304, 1152)
    # 2304 > dense_max: fractions counted (sigma_min of the square map by shift-invert);
    # 1152 <= dense_max: all singular values, from J J^T built from the colored J.
    assert res[0]["sum"]["method"] == "count+shift_invert"
    assert res[1]["sum"]["method"] == "coloring+gram"
    assert res[0]["sum"]["fractions"] == res[1]["sum"]["fractions"] == "exact"
    arrays = spectra_arrays(res)
    assert arrays["unit01_unit_sigma"].shape == (2, 1152)
    assert arrays["unit00_sum_largest"].shape == (2, 2) and "unit00_sum_sigma" not in arrays
    for i in range(2):
        exact = spectrum_stats(arrays["unit01_unit_sigma"][i])
        assert (
            res[1]["raw"]["unit"]["per_image"][i] | exact == res[1]["raw"]["unit"]["per_image"][i]
        )
    # The counted fractions equal those of the full spectrum of the same unit; the SLQ
    # estimates agree within their stated error bars.
    slq_res = analyze_units(net, images[:1], units=[0], method="slq")
    for kind in ("sum", "unit"):
        exact = map_spectrum(unit_map(net, 0, unit_states(net, images)[0][0], kind)).stats
        counted = res[0]["raw"][kind]["per_image"][0]
        slq = slq_res[0]["raw"][kind]["per_image"][0]
        assert slq["fractions"] == "estimated" and slq["method"].startswith("slq+")
        for stats in (counted, slq):
            assert stats["sigma_max"] == pytest.approx(exact["sigma_max"], abs=1e-5)
            assert stats["sigma_max_residual"] < 1e-6
        for key in ("frac_one", "frac_gt_one", "frac_zero"):
            assert counted[key] == pytest.approx(exact[key], abs=1e-12), (kind, key)
            assert abs(slq[key] - exact[key]) <= slq[f"{key}_err"], (kind, key)
    assert counted["frac_zero"] > 0.3  # the rows masked by the final ReLU
    assert res[0]["sum"]["sigma_max_std"] > 0  # two different images
    stages = analyze_stages(net, images[:1], stages=[1], method="lanczos")
    assert stages[0]["units"] == [1] and stages[0]["stage"]["method"] == "lanczos"
    assert math.isnan(stages[0]["stage"]["frac_one"])


def test_interventions_act_on_a_copy() -> None:
    torch.manual_seed(0)
    net = DeepResNet(depth=3, input_shape=(6,), width=8, block="fc", batch_norm=False).double()
    for p in net.parameters():
        if p.dim() == 1:
            nn.init.normal_(p, std=0.3)  # beta scales F exactly, biases and all
    net.eval()
    x = torch.randn(1, 6, dtype=torch.float64)
    base = with_intervention(net)
    scaled = with_intervention(net, skip_scale=0.25, weight_scale=2.0, units=[1])
    assert net.units[1].skip_scale == 1.0 and scaled.units[1].skip_scale == 0.25
    assert scaled.units[0].skip_scale == 1.0
    eye = torch.eye(8, dtype=torch.float64)

    def J(model: nn.Module) -> torch.Tensor:
        return jacobian(unit_map(model, 1, unit_states(model, x)[1][0], "sum")).matrix

    # alpha x + beta F(x): J = alpha I + beta (J_1 - I)
    torch.testing.assert_close(J(scaled), 0.25 * eye + 2.0 * (J(base) - eye))
    inputs = torch.randn(32, 6, dtype=torch.float64)
    with torch.no_grad():
        y = net(inputs).argmax(1)  # the base model is right on all of them
    assert accuracy(net, inputs, y) == 1.0
    scales = [(0.5, None), (0.5, 3.0), (1.0, None), (1.0, 3.0)]
    rows = intervention_grid(
        net,
        x,
        (inputs, y),
        skip_scales=[0.5, 1.0],
        weight_scales=[None, 3.0],
        units=[2],
        analysis={"units": [2], "maps": ["sum"]},
    )
    assert [(r["skip_scale"], r["weight_scale"]) for r in rows] == scales
    # The documented effect, from the untouched net: unit 2 sees the same state x_2 (units 0
    # and 1 are not intervened on) and becomes x -> alpha x + beta F(x), so its sum map's
    # Jacobian is alpha I + beta J_F with J_F from jacfwd of the branch alone.
    unit = net.units[2]
    with torch.no_grad():
        h = net.units[1](net.units[0](net.stem(inputs)))  # x_2 of every input
        x2 = net.units[1](net.units[0](net.stem(x)))[0]
    J_F = jacfwd(unit.branch)(x2).detach()
    for row, (alpha, beta) in zip(rows, scales, strict=True):
        b = 1.0 if beta is None else beta
        sigma = torch.linalg.svdvals(alpha * eye + b * J_F)
        got = row["results"][0]["raw"]["sum"]["sigma"][0]
        np.testing.assert_allclose(got, sigma.numpy(), rtol=1e-10, atol=1e-12)
        assert row["results"][0]["sum"]["sigma_max"] == pytest.approx(sigma[0].item(), rel=1e-10)
        with torch.no_grad():
            logits = net.head(unit.act(alpha * h + b * unit.branch(h)))
        assert row["accuracy"] == (logits.argmax(1) == y).double().mean().item()
    assert rows[2]["accuracy"] == 1.0 and min(r["accuracy"] for r in rows) < 1.0


def test_nested_dissection_lu_solves_like_dense() -> None:
    net = cifar(depth=8, size=8).double()
    x = unit_states(net, torch.randn(1, 3, 8, 8, dtype=torch.float64))[0][0]
    f = unit_map(net, 0, x, "sum")  # 16x8x8, a 5x5 window
    J = jacobian(f).matrix
    # Every pixel is eliminated exactly once, each region before its separator.
    nodes = dissection(8, 8, (2, 2), 16, leaf=64)
    assert len(nodes) > 3
    assert sorted(torch.cat([s for s, _, _ in nodes]).tolist()) == list(range(64))
    B = torch.randn(3, 1024, dtype=torch.float64)
    # From the dense J and from J kept as local kernels (never formed): the same solves.
    for source in (J, local_jacobian(f)):
        lu = GridLU.factor(source, f.in_shape, (2, 2), leaf=64)
        torch.testing.assert_close(lu.solve(B), torch.linalg.solve(J, B.T).T, atol=1e-9, rtol=0)
        torch.testing.assert_close(lu.solve_t(B), torch.linalg.solve(J.T, B.T).T, atol=1e-9, rtol=0)
    # A singular J is a LinAlgError (the callers' fallback), not some other RuntimeError.
    with pytest.raises(torch.linalg.LinAlgError):
        GridLU.factor(torch.zeros_like(J), f.in_shape, (2, 2), leaf=64)


def test_local_jacobian_blocks_match_the_dense_jacobian() -> None:
    net = cifar(depth=8, size=8).double()
    states = unit_states(net, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    # unit 0: stride 1, 16x8x8; unit 1: stride 2, 16x8x8 -> 32x4x4 (option A shortcut)
    for k in (0, 1):
        f = unit_map(net, k, states[k][0], "sum")
        lj = local_jacobian(f)
        J = reference(f)
        torch.testing.assert_close(lj.dense(), J, atol=1e-12, rtol=0)
        c_in, h, w = f.in_shape
        c_out, ho, wo = f.out_shape
        grid = J.view(c_out, ho * wo, c_in, h * w)
        for n_rows, n_cols in ((5, 9), (ho * wo, h * w), (3, 0)):
            rows = torch.randperm(ho * wo, generator=gen)[:n_rows]
            cols = torch.randperm(h * w, generator=gen)[:n_cols]
            block = grid[:, rows][:, :, :, cols].reshape(c_out * n_rows, c_in * n_cols)
            torch.testing.assert_close(lj.pixel_block(rows, cols), block, atol=1e-12, rtol=0)


def test_shift_invert_smallest_singular_values_match_svdvals() -> None:
    net = cifar(depth=8, size=8).double()
    with torch.no_grad():
        net.units[0].branch[1].bias -= 1.0  # most ReLUs off: a cluster at sigma = 1
    states = unit_states(net, torch.randn(1, 3, 8, 8, dtype=torch.float64))
    x = states[0][0]
    f = unit_map(net, 0, x, "sum")
    exact = torch.linalg.svdvals(reference(f))
    inv = extreme_singular_values(f, 6, "smallest", vectors=True, tol=1e-9)["smallest"]
    assert inv.method == "shift_invert" and inv.converged
    torch.testing.assert_close(inv.values, exact.flip(0)[:6], atol=1e-10, rtol=0)
    assert (inv.residuals < 1e-9).all()
    # The default stop (1e-6) loses nothing in the values: Rayleigh-Ritz with J squares it.
    fast = extreme_singular_values(f, 6, "smallest")["smallest"]
    torch.testing.assert_close(fast.values, exact.flip(0)[:6], atol=1e-9, rtol=0)
    J = reference(f)
    v = inv.vectors.reshape(6, -1)
    torch.testing.assert_close((v @ J.T).norm(dim=1), inv.values, atol=1e-9, rtol=0)
    gram = extreme_singular_values(f, 6, "smallest", method="gram")["smallest"]
    assert gram.method == "gram"
    torch.testing.assert_close(gram.values, inv.values, atol=1e-6, rtol=0)
    # The largest end of a float32 map stays in float32, accurate to ~1e-6 relative.
    f32 = unit_map(cifar(depth=8, size=8), 0, x.float(), "sum")
    top = extreme_singular_values(f32, 4, "largest")["largest"]
    exact32 = torch.linalg.svdvals(reference(f32).double())[:4]
    assert ((top.values - exact32).abs() / exact32).max() < 1e-5
    wide = unit_map(net, 1, states[1][0], "sum")
    with pytest.raises(ConfigError):
        extreme_singular_values(wide, 2, "smallest", method="shift_invert")


def test_zero_rows_are_exact_zero_singular_values() -> None:
    net = cifar(depth=8, size=8)
    x = unit_states(net, torch.randn(1, 3, 8, 8))[0][0]
    f = unit_map(net, 0, x, "unit")  # D J_sum: rows behind an off ReLU vanish
    J = reference(f)
    zero = zero_rows(f)
    assert 0 < int(zero.sum()) < f.dim_out
    assert torch.equal(zero, J.abs().amax(1) == 0)
    exact = torch.linalg.svdvals(J.double())
    torch.testing.assert_close(all_singular_values(J), exact, atol=1e-5, rtol=0)
    slq = map_spectrum(f, method="slq").stats
    dense = spectrum_stats(exact)
    assert slq["method"] == "slq+zero_rows" and slq["sigma_min"] == 0 and slq["converged"]
    assert slq["sigma_max"] == pytest.approx(dense["sigma_max"], rel=1e-6)
    assert slq["frac_zero"] >= int(zero.sum()) / f.dim_out
    for key in ("frac_one", "frac_gt_one", "frac_zero"):
        bound = 4 * slq[f"{key}_err"] + slq[f"{key}_unresolved"] + 0.02
        assert abs(slq[key] - dense[key]) <= bound, key


def test_slq_path_takes_sigma_min_of_a_conv_map_by_shift_invert(monkeypatch) -> None:
    # As for the 16,384-dimensional units of a CIFAR ResNet-56, here on a small one: the
    # dense LU limit set to 0 leaves only the nested-dissection LU of a stride-1 conv map.
    from resnet_dyn.dynamics import spectrum

    monkeypatch.setattr(spectrum, "SHIFT_INVERT_MAX", 0)
    net = cifar(depth=8, size=8).double()
    image = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    f = unit_map(net, 0, unit_states(net, image)[0][0], "sum")
    assert spectrum.shift_invert_applies(f)
    (res,) = analyze_units(net, image, [0], maps=("sum",), method="slq")
    exact = torch.linalg.svdvals(reference(f)).min().item()
    assert res["sum"]["method"] == "slq+shift_invert"
    assert res["sum"]["sigma_min"] == pytest.approx(exact, rel=1e-8)
    # A map whose input and output differ in shape (a stage's first unit) has no such LU.
    wide = unit_map(net, 1, unit_states(net, image)[1][0], "sum")
    assert not spectrum.shift_invert_applies(wide)


def test_right_singular_vectors_of_a_rank_deficient_wide_map_are_exact_or_zero():
    """The Gram route's v_i = J^T u_i / sigma_i: a sigma at rounding level gives a zero row,
    not noise blown up by 1e16 (a unit map's off ReLUs make such J)."""
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(300, 240, generator=gen, dtype=torch.float64) @ torch.randn(
        240, 1000, generator=gen, dtype=torch.float64
    )  # rank 240: 60 singular values at rounding level, some of them not exactly 0
    sigma, vh = dense_singular_values(J, vectors=True)
    rank = int((sigma > 1e-6 * sigma[0]).sum())
    assert rank == 240
    kept = vh[:rank]
    assert torch.allclose(kept @ kept.T, torch.eye(rank, dtype=torch.float64), atol=1e-8)
    assert vh[rank:].abs().max() == 0
    exact = torch.linalg.svdvals(J)
    assert torch.allclose(sigma[:rank], exact[:rank], rtol=1e-10)
