"""Numerical checks that act: unconverged extremes are marked and never reported as plain
numbers, shift-invert's fallback keeps the caller's settings, and nearly singular pivot
blocks of the nested-dissection factorizations are detected, not silently used."""

from __future__ import annotations

import math

import pytest
import torch
from test_device import small_net

from resnet_dyn.dynamics import map_spectrum, unit_map, unit_states
from resnet_dyn.dynamics import spectrum as spectrum_mod
from resnet_dyn.dynamics.gridlu import GridLU
from resnet_dyn.dynamics.inertia import count_below
from resnet_dyn.dynamics.jacobian import LocalJacobian, jacobian
from resnet_dyn.dynamics.window import Window


@pytest.fixture(scope="module")
def sum_map():
    """The sum map of unit 0 of a ResNet-8 (16x8x8, n = 1024) with warmed BatchNorm, and
    its singular values from the dense J of its float64 copy."""
    net = small_net()
    x = unit_states(net, torch.randn(1, 3, 8, 8))[0][0]
    f = unit_map(net, 0, x, "sum")
    return f, torch.linalg.svdvals(jacobian(f.to(torch.float64)).matrix)


def test_a_planted_large_residual_is_reported_as_not_converged(sum_map, monkeypatch) -> None:
    """Shift-invert through a wrong factorization (of J + 0.3 I) converges on its own
    operator; the Rayleigh-Ritz residual with J itself is large, so sigma_min is marked not
    converged: NaN as a value (and cond), its bound kept under its own name."""
    f, sigma = sum_map
    options = {"method": "count", "dense_max": 256}
    good = map_spectrum(f, **options).stats
    assert good["sigma_min_converged"] and good["converged"]
    assert good["sigma_min"] == pytest.approx(sigma[-1].item(), rel=1e-6)

    def wrong(g, native, local=None):  # noqa: ANN001
        J = jacobian(native).matrix.double() + 0.3 * torch.eye(g.dim_in, dtype=torch.float64)
        return (lambda V: torch.linalg.solve(J, V.T).T), (lambda V: torch.linalg.solve(J.T, V.T).T)

    monkeypatch.setattr(spectrum_mod, "_factor", wrong)
    bad = map_spectrum(f, **options).stats
    assert bad["method"] == "count+shift_invert"
    assert not bad["sigma_min_converged"] and not bad["converged"]
    assert math.isnan(bad["sigma_min"]) and math.isnan(bad["cond"])
    assert bad["sigma_min_bound"] > sigma[-1].item()  # a Ritz value: an upper bound
    assert bad["sigma_min_residual"] > 1e-6 * bad["sigma_max"] ** 2
    assert bad["sigma_max_converged"] and bad["sigma_max"] == good["sigma_max"]
    # Fractions are counts: untouched by the extremes.
    assert bad["frac_one"] == good["frac_one"]


def test_an_unconverged_lanczos_end_is_a_bound_not_a_value(sum_map) -> None:
    """Two Gram products cannot resolve sigma_max: not converged, NaN, bound below it."""
    f, sigma = sum_map
    stats = map_spectrum(f, method="lanczos", max_matvecs=2, lanczos_tol=1e-12).stats
    assert not stats["sigma_max_converged"] and math.isnan(stats["sigma_max"])
    assert stats["sigma_max_bound"] <= sigma[0].item() * (1 + 1e-9)


def test_shift_invert_fallback_keeps_the_callers_settings(sum_map, monkeypatch) -> None:
    """A factorization that fails (LinAlgError) sends shift-invert to block Lanczos on
    J^T J with the caller's block size, budget, seed and vectors, not the defaults."""
    f, _ = sum_map

    def singular(*args, **kwargs):  # noqa: ANN002, ANN003
        raise torch.linalg.LinAlgError("planted")

    seen = {}
    real = spectrum_mod.block_lanczos

    def spy(matvec, n, k, which, **kw):  # noqa: ANN001, ANN003
        seen.update(kw)
        return real(matvec, n, k, which, **kw)

    monkeypatch.setattr(spectrum_mod, "_factor", singular)
    monkeypatch.setattr(spectrum_mod, "block_lanczos", spy)
    out = spectrum_mod.extreme_singular_values(
        f, 2, "smallest", method="shift_invert", block_size=3, max_matvecs=60, seed=7,
        vectors=True, tol=1e-4,
    )["smallest"]  # fmt: skip
    assert (seen["block_size"], seen["max_matvecs"], seen["seed"], seen["tol"]) == (3, 60, 7, 1e-4)
    assert out.method == "gram" and out.matvecs <= 60 + 3 and out.vectors.shape == (2, 16, 8, 8)


def _diagonal_grid(values: torch.Tensor) -> LocalJacobian:
    """A symmetric local operator of reach 1 on a (c, h, w) grid: diag(values) plus a weak
    coupling of channels >= 1 to the horizontal neighbours (so the dissection has real
    fronts); channel 0 stays diagonal, its values are eigenvalues."""
    c, h, w = values.shape
    K = torch.zeros(h, w, 3, 3, c, c, dtype=torch.float64)
    K[:, :, 1, 1] = torch.diag_embed(values.permute(1, 2, 0))
    couple = torch.diag(torch.tensor([0.0] + [1e-3] * (c - 1), dtype=torch.float64))
    K[:, :-1, 1, 2] = couple
    K[:, 1:, 1, 0] = couple
    shape = torch.Size((c, h, w))
    return LocalJacobian(K, Window((1, 1), (1, 1), (1, 1)), shape, shape)


def test_nearly_singular_pivot_blocks_are_detected() -> None:
    """One entry at 1e-14 of the rest makes a pivot block nearly singular: the LU of
    shift-invert refuses it (LinAlgError) instead of returning factors whose rounding it
    would amplify; the count at 0 is exact only for a matrix within its error bound, which
    exceeds that eigenvalue's distance from 0, so no bracket certifies it (see
    ``inertia.certified_counts``). At 1e-3 both go through, the count with an error at the
    scale of rounding."""
    values = torch.ones(2, 8, 8, dtype=torch.float64) + torch.rand(2, 8, 8, dtype=torch.float64)
    values[0, 3, 4] = 1e-3
    ok = _diagonal_grid(values)
    GridLU.factor(ok, ok.out_shape, (1, 1), leaf=16)
    (good,) = count_below(ok, [0.5], leaf=16)
    assert good.negatives == 1 and good.error < 1e-12
    values[0, 3, 4] = 1e-14
    bad = _diagonal_grid(values)
    with pytest.raises(torch.linalg.LinAlgError, match="nearly singular"):
        GridLU.factor(bad, bad.out_shape, (1, 1), leaf=16)
    (near,) = count_below(bad, [0.0], leaf=16)
    assert near.error > 1e-14, near


def test_the_report_shows_no_mean_over_an_unconverged_value(tmp_path) -> None:
    """A job whose unit 1 sigma_max did not converge (NaN in summary.json): its
    spectrum/sum/sigma_max cell is empty, not the mean of the other units, and
    spectrum/unconverged counts the map."""
    from resnet_dyn.report.sweep import Job, job_scalars

    def unit(index: int, smax: float, ok: bool) -> dict:
        stats = {"frac_one": 0.5, "frac_gt_one": 0.1, "sigma_max": smax, "converged": ok}
        return {"index": index, "sum": stats, "unit": dict(stats, sigma_max=1.0, converged=True)}

    done = {"analysis": {"units": [unit(0, 2.0, True), unit(1, 3.0, True)]}}
    nan = {"analysis": {"units": [unit(0, 2.0, True), unit(1, math.nan, False)]}}
    good = job_scalars(Job("a", tmp_path, {}, "completed", done))
    bad = job_scalars(Job("b", tmp_path, {}, "completed", nan))
    assert good["spectrum/sum/sigma_max"] == 2.5 and good["spectrum/unconverged"] == 0
    assert bad["spectrum/sum/sigma_max"] is None and bad["spectrum/unconverged"] == 1
    assert bad["spectrum/sum/frac_one"] == 0.5
