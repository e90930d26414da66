"""Exact spectral fractions by counting (Sylvester's law of inertia) against dense SVDs, on a
ResNet trained in the test: its mass near sigma = 1 is continuous, as in real networks,
which is what broke the quadrature."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from resnet_dyn.dynamics import map_spectrum, stage_map, unit_map, unit_states
from resnet_dyn.dynamics.inertia import (
    _gram_flops,
    certified_counts,
    count_below,
    countable,
    counted,
    exact_fractions,
    singular_value_counts,
    singular_value_histogram,
)
from resnet_dyn.dynamics.jacobian import LocalJacobian, local_jacobian
from resnet_dyn.dynamics.maps import UnitMap
from resnet_dyn.dynamics.reduced import low_rank_split, reduced_flops, why_not
from resnet_dyn.dynamics.stats import spectrum_stats
from resnet_dyn.dynamics.unit_spectra import all_singular_values
from resnet_dyn.dynamics.window import Window
from resnet_dyn.models import CifarResNet, ResidualUnit, set_skip_scale

TOL = 1e-3


def digits_12() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits upsampled to 3x12x12, normalised."""
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=12, mode="bilinear").repeat(1, 3, 1, 1)
    return (x - x.mean()) / x.std(), torch.tensor(digits.target)


def train(net: CifarResNet, steps: int = 150) -> CifarResNet:
    """SGD on digits at 3x12x12 (batch 64), then eval mode; asserts it learned (> 80%
    train accuracy: the same seeds give 88% to over 90% on different CPUs' kernels)."""
    x, y = digits_12()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        assert (net(x).argmax(1) == y).float().mean() > 0.8
    return net


@pytest.fixture(scope="module")
def trained() -> tuple[CifarResNet, torch.Tensor]:
    """A ResNet-8 trained to ~99% on scikit-learn's digits (upsampled to 3x12x12, ~5 s)."""
    torch.manual_seed(0)
    net = train(CifarResNet(depth=8, input_shape=(3, 12, 12)))
    return net, digits_12()[0][:1]


def maps_of(net: CifarResNet, image: torch.Tensor) -> list:
    states = unit_states(net, image)
    return [unit_map(net, k, states[k][0], kind) for k in range(3) for kind in ("sum", "unit")]


def test_counts_equal_dense_svd_counts_on_every_map_of_a_trained_net(trained) -> None:
    """Square stride-1 units (16x12x12), the stride-2 opening units (rectangular J) and
    unit maps with their exactly zero rows; thresholds at the fractions' edges and inside
    the continuous mass around 1."""
    net, image = trained
    thresholds = [TOL, 1 - TOL, 1 + TOL, 0.5, 0.99, 1.01, 2.0]
    near_one = 0
    for f in maps_of(net, image):
        lj = local_jacobian(f)
        sigma = all_singular_values(lj.dense().double())
        assert sigma.numel() == min(f.dim_in, f.dim_out)
        expected = [int((sigma < c).sum()) for c in thresholds]
        assert singular_value_counts(f, thresholds, lj=lj) == expected, (f.index, f.kind)
        # Certified by the eliminations themselves, with no dense recount to fall back on.
        res = certified_counts(f, thresholds, lj=lj, dense_max=0)
        assert res.exact and res.lo == expected and "dense" not in res.route, res
        near_one += int(((sigma - 1).abs() < 0.05).sum())
        exact = spectrum_stats(sigma, TOL)
        for key, value in exact_fractions(f, TOL).items():
            assert value == pytest.approx(exact[key], abs=1e-12), (f.index, f.kind, key)
        edges = np.linspace(0, float(sigma.max()) * 1.01, 17)
        dense_hist, _ = np.histogram(sigma.numpy(), bins=edges)
        hist = singular_value_histogram(f, edges, lj=lj)
        assert hist.tolist() == dense_hist.tolist(), (f.index, f.kind)
    # A trained network's spectrum: hundreds of sigma near 1 but none exactly 1.
    assert near_one > 500


def test_slq_error_bars_cover_the_exact_fractions_on_a_trained_net(trained) -> None:
    """The quadrature's stated error (two standard errors plus its unresolved weight)
    covers the exact counts on every map of the trained network."""
    net, image = trained
    for f in maps_of(net, image):
        est = map_spectrum(f, method="slq", tol=TOL).stats
        exact = map_spectrum(f, method="count", tol=TOL).stats
        assert exact["fractions"] == "exact" and est["fractions"] == "estimated"
        for key in ("frac_one", "frac_gt_one", "frac_zero"):
            assert abs(est[key] - exact[key]) <= est[f"{key}_err"], (f.index, f.kind, key)


def test_count_below_matches_eigvalsh_on_an_indefinite_local_matrix() -> None:
    """A random symmetric local matrix on an 8x8 grid (reach 1, 3 channels), shifted into
    its spectrum: the counts need 2x2 pivots and exactly zero rows to be handled right."""
    gen = torch.Generator().manual_seed(0)
    c, h, w = 3, 8, 8
    K = torch.randn(h, w, 3, 3, c, c, generator=gen, dtype=torch.float64)
    shape = torch.Size((c, h, w))
    lj = LocalJacobian(K, Window((1, 1), (1, 1), (1, 1)), shape, shape)
    A = lj.dense()
    A[:, 5] = 0  # zero rows/columns, as a unit map's masked outputs give
    A[5, :] = 0
    A = (A + A.T) / 2
    sym = LocalJacobian(torch.zeros_like(K), lj.window, lj.in_shape, lj.out_shape)
    # Write A back as kernels of reach 1: entry [oi, oj, di, dj, u, v] = A[(u, o), (v, o - 1 + d)].
    grid = A.view(c, h, w, c, h, w)
    for oi in range(h):
        for oj in range(w):
            for di in range(3):
                for dj in range(3):
                    i, j = oi - 1 + di, oj - 1 + dj
                    if 0 <= i < h and 0 <= j < w:
                        sym.kernels[oi, oj, di, dj] = grid[:, oi, oj, :, i, j]
    assert torch.equal(sym.dense(), A)
    eig = torch.linalg.eigvalsh(A)
    shifts = [-2.0, -0.3, 0.1, 0.7, 3.0]
    expected = [int((eig < s).sum()) for s in shifts]
    found = count_below(sym, shifts, leaf=16)
    assert [n.negatives for n in found] == expected
    # Each count is exact for a matrix within its error of A: none of A's eigenvalues is
    # that close to a shift here, and the bound is at the scale of rounding.
    gaps = [float((eig - s).abs().min()) for s in shifts]
    assert all(n.error < min(1e-9, g) for n, g in zip(found, gaps, strict=True)), found


def test_stage_maps_are_refused_when_counting_would_be_dense() -> None:
    """A ResNet-56's first stage (nine units: a 37x37 window on a 32x32 grid) makes J J^T
    dense; its units stay countable. Structural, so an untrained net will do."""
    torch.manual_seed(0)
    net = CifarResNet(depth=56).eval()
    x = unit_states(net, torch.randn(1, 3, 32, 32))[0][0]
    ok, why = countable(stage_map(net, 0, x))
    assert not ok and "GFLOP" in why, why
    assert countable(unit_map(net, 0, x, "sum")) == (True, "")
    ok, why = countable(unit_map(net, 0, x, "sum"), max_gflop=1e-6)
    assert not ok and "GFLOP" in why


def test_counts_of_a_map_with_more_outputs_than_inputs() -> None:
    """dim_out > dim_in: J J^T has dim_out - dim_in structural zeros, which are not
    singular values and must not be counted."""
    torch.manual_seed(0)
    branch = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1))
    unit = ResidualUnit(branch, nn.Conv2d(2, 6, 1), nn.ReLU()).double().eval()
    x = torch.randn(2, 7, 7, dtype=torch.float64)
    for kind in ("sum", "unit"):
        f = UnitMap(((unit, kind == "unit"),), x, kind, 0)
        assert (f.dim_in, f.dim_out) == (98, 294)
        sigma = all_singular_values(local_jacobian(f).dense())
        assert sigma.numel() == 98
        thresholds = [TOL, 0.5, 1.0, 2.0]
        expected = [int((sigma < c).sum()) for c in thresholds]
        assert singular_value_counts(f, thresholds) == expected, kind


def test_exact_histograms_of_chosen_units_equal_dense_svd_histograms(trained, tmp_path) -> None:
    """analyze_units(histogram=...) on counted maps: every image's bins equal those of the
    dense SVD (20 edges: three passes of shifts), and the figure draws them."""
    from resnet_dyn.dynamics import analyze_units
    from resnet_dyn.plots.spectra import spectrum_histograms

    net, image = trained
    images = torch.cat([image, image.flip(-1)])
    (r,) = analyze_units(net, images, [1], method="count", histogram=[1], bins=20)
    states = unit_states(net, images)
    for kind in ("sum", "unit"):
        raw = r["raw"][kind]
        assert "sigma" not in raw and raw["hist_counts"].shape == (2, 20)
        for i in range(2):
            f = unit_map(net, 1, states[1][i], kind)
            sigma = all_singular_values(local_jacobian(f).dense().double()).numpy()
            dense, _ = np.histogram(sigma, bins=raw["hist_edges"])
            assert raw["hist_counts"][i].tolist() == dense.tolist(), (kind, i)
    (untouched,) = analyze_units(net, image, [2], method="count", histogram=[1])
    assert "hist_counts" not in untouched["raw"]["sum"]
    counted = {"unit01": {k: (r["raw"][k]["hist_counts"].sum(0), r["raw"][k]["hist_edges"])
                          for k in ("sum", "unit")}}  # fmt: skip
    path = spectrum_histograms({}, tmp_path / "h.png", "counted", counted)
    assert path.stat().st_size > 1000


@pytest.fixture(scope="module")
def reducible() -> dict[str, CifarResNet]:
    """Trained nets with identity-shortcut units: a post-activation ResNet-14 (units 1, 3
    and 5 have identity shortcuts; 2 and 4 open stages 1 and 2) and a pre-activation
    ResNet-8 (unit 0), each ~4 s of SGD on digits at 3x12x12."""
    torch.manual_seed(1)
    post = train(CifarResNet(depth=14, input_shape=(3, 12, 12)), steps=120)
    torch.manual_seed(2)
    pre = train(CifarResNet(depth=8, input_shape=(3, 12, 12), preact=True), steps=120)
    return {"post": post, "pre": pre}


def _variants(net: CifarResNet, unit: int) -> dict[str, CifarResNet]:
    """The trained net, alpha = 0.8 post hoc, and the middle BatchNorm's shift moved by -1 /
    +1 (few / many active hidden positions)."""
    out = {"trained": net, "alpha=0.8": set_skip_scale(copy.deepcopy(net), 0.8)}
    for name, shift in (("few active", -1.0), ("many active", 1.0)):
        moved = copy.deepcopy(net)
        bn = next(m for m in moved.units[unit].branch if isinstance(m, nn.BatchNorm2d))
        if net.preact:  # the BN in front of the middle ReLU is the second one
            bn = [m for m in moved.units[unit].branch if isinstance(m, nn.BatchNorm2d)][1]
        with torch.no_grad():
            bn.bias += shift
        out[name] = moved
    return out


@pytest.mark.parametrize(("net_key", "unit"), [("post", 1), ("post", 3), ("pre", 0)])
def test_reduced_counts_equal_dense_svd_counts_on_trained_units(reducible, net_key, unit) -> None:
    """The reduced route (a 2k x 2k pencil on the hidden grid) against the dense float64
    SVD of J from jacfwd of the unfolded map, on trained units, at alpha = 1 and 0.8 and
    with few and many active positions; thresholds at the fractions' edges, inside the
    mass around 1 and next to the cluster at |alpha|. The counts of the float32 map and
    of its float64 copy agree: the map's dtype and BatchNorm folding change no count."""
    net = reducible[net_key]
    image = digits_12()[0][3:4]
    actives = []
    cheaper_seen: list[tuple[str, bool]] = []
    variants = _variants(net, unit)
    if unit != 3:  # few and many active positions: on the cheaper stage-1 unit only
        variants = {k: v for k, v in variants.items() if "active" not in k}
    for name, variant in variants.items():
        x = unit_states(variant, image)[unit][0]
        alpha = variant.units[unit].skip_scale
        thresholds = [TOL, 1 - TOL, 1 + TOL, 0.5, 0.9, 1.1, 2.0, alpha - TOL, alpha + TOL]
        kinds = ("sum", "unit") if name == "trained" and not net.preact else ("sum",)
        for kind in kinds:
            f = unit_map(variant, unit, x, kind)
            g = f.to(torch.float64)
            with torch.no_grad():
                J = torch.func.jacfwd(g)(g.x).reshape(g.dim_out, g.dim_in)  # unfolded BN
            sigma = torch.linalg.eigvalsh(J.T @ J).clamp_min(0).sqrt()
            expected = [int((sigma < c).sum()) for c in thresholds]
            counts, route = counted(f, thresholds, route="reduced")
            assert (counts, route) == (expected, "reduced"), (name, kind)
            split = low_rank_split(f)
            actives.append(split.rank / split.active.numel())
            # sigma = |alpha| has multiplicity >= rows - 2k, as the algebra says (rows: n,
            # or a unit map's active outputs).
            rows = f.dim_in if split.out_active is None else int(split.out_active.sum())
            cluster = int(((sigma - alpha).abs() < 1e-9).sum())
            assert cluster >= rows - 2 * split.rank, (name, kind)
            if name == "trained":
                assert counted(g, thresholds, route="reduced")[0] == expected, kind
                # "auto": the reduced route for sum and unit maps where it costs fewer
                # flops than the gram route (whose unknowns are a unit map's active outputs).
                auto = counted(f, thresholds)
                cheaper = reduced_flops(split) <= _gram_flops(f, split)
                assert auto == (expected, "reduced" if cheaper else "gram"), kind
                cheaper_seen.append((kind, cheaper))
    if net_key == "post" and unit == 1:  # "auto" takes the reduced route for a unit map here
        assert ("unit", True) in cheaper_seen, cheaper_seen
    if unit == 3:
        assert min(actives) < 0.3 and max(actives) > 0.7, actives


def test_units_outside_the_algebra_take_the_gram_route_and_say_why(reducible) -> None:
    """A stage's first unit (option-A shortcut: P^T P != alpha^2 I) and alpha = 0 are not
    reducible: the gram route counts them, exactly, and why_not names the reason."""
    net = reducible["post"]
    image = digits_12()[0][3:4]
    x = unit_states(net, image)[2][0]
    f = unit_map(net, 2, x, "sum")
    assert "ShortcutA" in why_not(f) and low_rank_split(f) is None
    sigma = all_singular_values(local_jacobian(f).dense().double())
    thresholds = [TOL, 1 - TOL, 1 + TOL]
    assert counted(f, thresholds) == ([int((sigma < c).sum()) for c in thresholds], "gram")
    with pytest.raises(ValueError, match="ShortcutA"):
        counted(f, thresholds, route="reduced")
    zero = set_skip_scale(copy.deepcopy(net), 0.0)
    assert why_not(unit_map(zero, 0, unit_states(zero, image)[0][0], "sum")) == "alpha = 0"


def test_a_count_that_breaks_what_must_hold_is_recounted_by_the_gram_route(
    reducible, monkeypatch
) -> None:
    """A reduced count off by 100 (a planted error, as lost pivots would give) breaks what
    must hold (counts grow with c), is caught, and is recounted on the gram route, which
    says so."""
    from resnet_dyn.dynamics import inertia

    net = reducible["post"]
    f = unit_map(net, 0, unit_states(net, digits_12()[0][3:4])[0][0], "sum")
    real = inertia.negative_eigenvalues

    def planted(terms, coeffs, keep, **kw):  # noqa: ANN001, ANN003
        out = real(terms, coeffs, keep, **kw)
        if len(terms) != 2 or len(out) < 2:
            return out  # not the reduced route, or its first, lone count (smallest c)
        # Both counts of the last threshold's bracket, so that the bracket still agrees.
        return [*out[:-2], *(replace(n, negatives=n.negatives - 100) for n in out[-2:])]

    monkeypatch.setattr(inertia, "negative_eigenvalues", planted)
    counts, route = counted(f, [TOL, 0.5, 1 - TOL, 1 + TOL])
    assert route.startswith("gram (reduced: counts decrease"), route
    sigma = all_singular_values(local_jacobian(f).dense().double())
    assert counts == [int((sigma < c).sum()) for c in [TOL, 0.5, 1 - TOL, 1 + TOL]]


def test_each_count_is_exact_within_its_error_bound(trained) -> None:
    """What the certificates rest on: a count of G - s I is exact for a matrix within its
    error bound of G, so it lies between the true counts at s -+ error, at shifts right
    next to eigenvalues of G (sigma^2 -+ 1e-12) on every map of the trained net; the bound
    is at the scale of rounding there."""
    from resnet_dyn.dynamics.inertia import gram_kernels

    net, image = trained
    for f in maps_of(net, image):
        lj = local_jacobian(f)
        sigma = all_singular_values(lj.dense().double())
        lam = torch.cat([sigma**2, sigma.new_zeros(max(0, f.dim_out - f.dim_in))])
        near = sigma[(sigma - 1).abs().argsort()[:2]] ** 2
        shifts = [float(x) for s in near for x in (s - 1e-12, s + 1e-12)]
        for n, s in zip(count_below(gram_kernels(lj), shifts), shifts, strict=True):
            lo, hi = int((lam < s - n.error).sum()), int((lam < s + n.error).sum())
            assert lo <= n.negatives <= hi and n.error < 1e-6, (f.index, f.kind, s, n)


def test_augmented_counts_are_exact_next_to_singular_values(trained) -> None:
    """The augmented route, [[0, J], [J^T, 0]] - c I, on the trained net's square maps (a
    sum map; a unit map, whose zero rows are set aside): thresholds 1e-6 relative below and
    above the smallest singular value, the median one and the one nearest 1, each count
    bracketed by shifts -+a with errors below a, both equal to the dense SVD count (the
    smallest nonzero one: a unit map has exact zeros). The
    strided stage openers have no augmented operator."""
    from resnet_dyn.dynamics.inertia import augmented_counts, augmented_operator

    net, image = trained
    maps = maps_of(net, image)
    assert augmented_operator(local_jacobian(maps[2])) is None  # unit 1: stride 2
    for f in (maps[0], maps[1]):
        lj = local_jacobian(f)
        sigma = all_singular_values(lj.dense().double())
        picks = [sigma[sigma > 1e-6].min(), sigma.median(), sigma[(sigma - 1).abs().argmin()]]
        cs = [float(s) * (1 + e) for s in picks for e in (-1e-6, 1e-6)]
        a = [0.1e-6 * float(s) for s in picks for _ in (0, 1)]  # a tenth of the gap
        lo = augmented_counts(lj, cs, [-x for x in a])
        hi = augmented_counts(lj, cs, a)
        for c, x, n0, n1 in zip(cs, a, lo, hi, strict=True):
            expected = int((sigma < c).sum())
            assert n0.below == n1.below == expected and max(n0.error, n1.error) < x, (
                f.kind, c, n0, n1, expected)  # fmt: skip
        # The offset moves the threshold up: from just below each value to just above it.
        moved = augmented_counts(
            lj, cs[0::2], [b - a for a, b in zip(cs[0::2], cs[1::2], strict=True)]
        )
        assert [n.below for n in moved] == [int((sigma < c).sum()) for c in cs[1::2]]


def test_a_threshold_the_gram_route_cannot_certify_is_recounted_on_the_augmented_route(
    trained, monkeypatch
) -> None:
    """Gram-route counts whose error bounds are too large to certify anything (as for a
    singular value within the gram route's error of c^2) are recounted on the augmented
    route, which certifies them: counts equal to the dense SVD's, the route says so."""
    from resnet_dyn.dynamics import inertia

    net, image = trained
    f = maps_of(net, image)[1]  # unit 0's unit map: zero rows
    lj = local_jacobian(f)
    sigma = all_singular_values(lj.dense().double())
    thresholds = [TOL, 1 - TOL, 1 + TOL]
    real = inertia.count_below

    def loose(*args, **kw):  # noqa: ANN002, ANN003
        return [replace(n, error=1.0) for n in real(*args, **kw)]

    monkeypatch.setattr(inertia, "count_below", loose)
    res = certified_counts(f, thresholds, lj=lj, route="gram")
    assert res.exact and res.route == "gram+augmented", res
    assert res.lo == [int((sigma < c).sum()) for c in thresholds]


def _flip_one_eigenvalue(monkeypatch, every: int) -> None:  # noqa: ANN001
    """Make the counts' pivot eigensolver flip the sign of the largest eigenvalue of every
    ``every``-th block it returns, as a wrong pivot from a solver failure or a bug would."""
    from resnet_dyn.dynamics import inertia

    real, calls = inertia._pivot_eigh, [0]

    def eigh(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam, V = real(F)
        calls[0] += 1
        if calls[0] % every == 0:
            lam = lam.clone()
            lam[..., -1] = -lam[..., -1]
        return lam, V

    monkeypatch.setattr(inertia, "_pivot_eigh", eigh)


def test_a_planted_wrong_pivot_is_caught(trained, monkeypatch) -> None:
    """A pivot eigenvalue flipped in some fronts: the eliminations' counts go wrong, and no
    wrong count comes out as certified: it is recounted right, or (every front planted, no
    dense recount) reported as an interval that holds the truth, and map_spectrum says
    "uncertain" with fraction intervals that hold the exact fractions."""
    from resnet_dyn.dynamics import inertia

    net, image = trained
    f = unit_map(net, 1, unit_states(net, image)[1][0], "unit")
    lj = local_jacobian(f)
    sigma = all_singular_values(lj.dense().double())
    thresholds = [TOL, 1 - TOL, 1 + TOL]
    expected = [int((sigma < c).sum()) for c in thresholds]
    gram = inertia.gram_kernels(lj)
    assert [n.negatives for n in count_below(gram, [c * c for c in thresholds])] == expected
    _flip_one_eigenvalue(monkeypatch, every=3)
    raw = count_below(gram, [c * c for c in thresholds])
    assert [n.negatives for n in raw] != expected  # the plant does make counts wrong
    assert all(n.error == float("inf") for n in raw)  # and it is caught
    res = certified_counts(f, thresholds, lj=lj, route="gram")
    assert res.exact and res.lo == expected and res.route != "gram", res
    monkeypatch.undo()
    _flip_one_eigenvalue(monkeypatch, every=1)
    res = certified_counts(f, thresholds, lj=lj, route="gram")
    assert res.exact and res.lo == expected and res.route.endswith("dense"), res
    res = certified_counts(f, thresholds, lj=lj, route="gram", dense_max=0)
    assert not res.exact and res.route.endswith("(uncertain)"), res
    assert all(lo <= n <= hi for lo, n, hi in zip(res.lo, expected, res.hi, strict=True))
    monkeypatch.setattr(inertia, "DENSE_RECOUNT_MAX", 0)
    stats = map_spectrum(f, method="count", tol=TOL).stats
    exact = spectrum_stats(sigma, TOL)
    assert stats["fractions"] == "uncertain", stats
    for key in ("frac_one", "frac_gt_one", "frac_zero"):
        assert stats[f"{key}_lo"] <= exact[key] <= stats[f"{key}_hi"], key
        assert stats[key] == (stats[f"{key}_lo"] + stats[f"{key}_hi"]) / 2


def test_delayed_pivots_keep_counts_exact_where_static_pivots_grow(monkeypatch) -> None:
    """A random-init unit (BatchNorm statistics warmed, dead ReLUs) counted at small c on
    the reduced route: eliminating every pivot direction where it arises leaves nearly
    singular pivots whose inverse grows the Schur complements (error bound ~1e-6);
    delaying the small directions to the parent front keeps the bound ~350x smaller, and
    the counts equal dense SVD counts at thresholds next to the smallest singular values."""
    from functools import partial

    from resnet_dyn.dynamics import inertia
    from resnet_dyn.dynamics.inertia import reduced_counts

    torch.manual_seed(0)
    net = CifarResNet(depth=8, input_shape=(3, 12, 12)).train()
    with torch.no_grad():
        for _ in range(10):
            net(torch.randn(64, 3, 12, 12) * 1.5 + 0.2)
    net.eval()
    image = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    f = unit_map(net, 0, unit_states(net, image)[0][0], "sum")
    split = low_rank_split(f)
    sigma = all_singular_values(local_jacobian(f).dense().double()).sort().values
    # Thresholds between neighbouring small singular values, and the fractions' tol.
    thresholds = [TOL, *(float((sigma[i] * sigma[i + 1]).sqrt()) for i in (0, 1, 4, 8))]
    expected = [int((sigma < c).sum()) for c in thresholds]
    assert expected[0] > 0  # a singular value below tol: the ill-conditioned case
    delayed = reduced_counts(split, thresholds)
    assert [n.below for n in delayed] == expected
    assert delayed[0].error < 1e-8, delayed
    monkeypatch.setattr(
        inertia, "negative_eigenvalues", partial(inertia.negative_eigenvalues, delay_rtol=0.0)
    )
    static = reduced_counts(split, thresholds)
    assert static[0].error > 100 * delayed[0].error, (static, delayed)
    monkeypatch.undo()
    res = certified_counts(f, thresholds, route="reduced")
    assert res.exact and res.lo == expected and res.route == "reduced", res
