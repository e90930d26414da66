"""Exact counts of singular values below thresholds, by Sylvester's law of inertia.

    >>> import torch
    >>> from resnet_dyn.dynamics.maps import unit_map
    >>> from resnet_dyn.models import CifarResNet
    >>> _ = torch.manual_seed(0)
    >>> net = CifarResNet(depth=8, input_shape=(3, 8, 8)).eval()
    >>> f = unit_map(net, 0, torch.randn(16, 8, 8), "sum")  # 1024 singular values
    >>> singular_value_counts(f, [1e-3, 1 - 1e-3, 1 + 1e-3])  # #{sigma < c} for each c
    [0, 497, 506]
    >>> exact_fractions(f, tol=1e-3)      # frac_one, frac_gt_one, frac_zero: counts, not estimates
    {'frac_one': 0.0087890625, 'frac_gt_one': 0.505859375, 'frac_zero': 0.0}
    >>> singular_value_histogram(f, torch.linspace(0, 2, 9))  # exact counts per bin
    tensor([ 57,  78, 113, 258, 126,  81,  62,  50])

For a symmetric matrix A and a shift s, the number of eigenvalues of A below s is the
number of negative eigenvalues of D in any factorization A - sI = L D L^T (Sylvester's
law of inertia), and over a block elimination it adds up front by front (Haynsworth):
``neg(A) = neg(A_SS) + neg(A / A_SS)``. With the output-side Gram matrix G = J J^T
(m x m; J is m x n), ``#{sigma < c} = #{eig(G) < c^2} - max(0, m - n)``: G has the
``min(m, n)`` values sigma^2 and ``m - n`` structural zeros when m > n.

J of a conv map couples output pixels whose receptive windows overlap, so G is local on
the output grid too (:func:`gram_kernels`: one kernel per output pixel, as for J
itself) and the count uses the nested dissection of :mod:`resnet_dyn.dynamics.gridlu`:
each front's pivot block is factored by Bunch-Kaufman (``ldl_factor``, symmetric
indefinite pivoting inside the front) for its inertia, and its Schur complement is passed
to its parent. A 2x2 Bunch-Kaufman pivot always has one negative and one positive
eigenvalue, so the negatives are the negative 1x1 pivots plus one per 2x2 pivot.

Squaring J costs nothing that matters here: in float64 the rounding of G is ~1e-16
relative to sigma_max^2, far below the thresholds ``tol^2 = 1e-6`` and ``(1 +- tol)^2``,
so a count can only differ from the exact one for a sigma within ~1e-12 of a threshold.
Exactly zero rows of J (a unit map's outputs behind an off ReLU) are zero rows of G:
exact zeros, counted without entering the elimination.

Dtype and BatchNorm folding: the reduced route (:mod:`resnet_dyn.dynamics.reduced`)
colors a float64 copy of the map, so its counts are those of the float64 map (tested
against jacfwd of the unfolded float64 map). The gram route colors J in the map's own
dtype (float32 for a trained net, 4x cheaper): a count can then differ from the float64
map's only for a sigma within about 1e-7 relative of a threshold (float32 rounding of J's
entries and of the folded BatchNorm); pass a float64 map (``analysis.dtype=float64``) to
exclude that.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from resnet_dyn.dynamics.gridlu import PIVOT_RTOL, dissection, dissection_flops
from resnet_dyn.dynamics.jacobian import LocalJacobian, local_jacobian
from resnet_dyn.dynamics.maps import UnitMap
from resnet_dyn.dynamics.reduced import (
    LowRankSplit,
    low_rank_split,
    reduced_flops,
    reduced_pencil,
    relu_after_sum,
    why_not,
)
from resnet_dyn.dynamics.window import NonLocalMap, Window, local_window

# Above this many floating-point operations per count, a map's fractions are not counted
# (``count_flops``): a stage map's window spans the whole grid, making G dense.
COUNT_MAX_GFLOP = 400.0
SHIFTS_PER_PASS = 8  # shifts factored together by singular_value_counts


def gram_kernels(lj: LocalJacobian, dtype: torch.dtype = torch.float64) -> LocalJacobian:
    """G = J J^T on the output grid as a :class:`LocalJacobian` (stride 1, reach R per axis).

    Output pixels o and o' share an input pixel iff ``|s (o - o')| <= k - 1`` (window
    size k, stride s), so ``R = (k - 1) // s``. Kernel entry ``[oi, oj, di, dj, u, v]`` is
    ``G[(u, o), (v, o - R + d)]``: a sum over the input offsets that both windows cover.
    """
    K = lj.kernels.to(dtype)
    ho, wo, kh, kw, c_out, _ = K.shape
    (sh, sw), size = lj.window.stride, (kh, kw)
    reach = ((kh - 1) // sh, (kw - 1) // sw)
    G = K.new_zeros(ho, wo, 2 * reach[0] + 1, 2 * reach[1] + 1, c_out, c_out)
    spans = [[_overlap(e, s, k, n) for e in range(-r, r + 1)]
             for r, s, k, n in zip(reach, (sh, sw), size, (ho, wo), strict=True)]  # fmt: skip
    for ei, (oi, di) in enumerate(spans[0]):
        for ej, (oj, dj) in enumerate(spans[1]):
            e0, e1 = ei - reach[0], ej - reach[1]
            # G is symmetric: the block at offset -e of pixel o + e is that of e at o,
            # transposed, so half the offsets suffice.
            if oi is None or oj is None or (e0, e1) < (0, 0):
                continue
            (a0, a1), (b0, b1) = oi, oj
            (p0, p1, q0), (r0, r1, t0) = di, dj
            A = K[a0:a1, b0:b1, p0:p1, r0:r1]
            B = K[a0 + e0 : a1 + e0, b0 + e1 : b1 + e1, q0 : q0 + p1 - p0, t0 : t0 + r1 - r0]
            block = torch.einsum("xyabuc,xyabvc->xyuv", A, B)
            G[a0:a1, b0:b1, ei, ej] = block
            G[a0 + e0 : a1 + e0, b0 + e1 : b1 + e1, -1 - ei, -1 - ej] = block.mT
    return LocalJacobian(G, Window((1, 1), reach, reach), lj.out_shape, lj.out_shape)


def gram_singular_values(lj: LocalJacobian) -> torch.Tensor:
    """All ``min(m, n)`` singular values of J (float64, descending) from its local kernels:
    the float64 eigenvalues of G = J J^T formed from :func:`gram_kernels` (J's zero rows
    set aside as exact zeros). Cheaper than a dense J and its SVD or ``J @ J.T`` at the
    sizes ``method="auto"`` computes in full (a 4096 x 8192 J: 0.6 s for G instead of 3.5 s)."""
    G = gram_kernels(lj).dense()
    keep = G.diagonal() > 0
    m, n = lj.out_shape.numel(), lj.in_shape.numel()
    lam = torch.linalg.eigvalsh(G[keep][:, keep]).flip(0)[: min(m, n)]
    sigma = lam.clamp_min(0).sqrt()
    return torch.cat([sigma, sigma.new_zeros(min(m, n) - sigma.numel())])


def _overlap(
    e: int, stride: int, size: int, n: int
) -> tuple[tuple[int, int] | None, tuple[int, int, int]]:
    """For an output offset e along one axis: the outputs o with o + e on the grid, and the
    window offsets d1 in [p0, p1) of o that o + e also covers (at d2 = d1 - stride * e,
    starting at q0)."""
    lo, hi = max(0, -e), min(n, n - e)
    p0, p1 = max(0, stride * e), min(size, size + stride * e)
    if lo >= hi or p0 >= p1:
        return None, (0, 0, 0)
    return (lo, hi), (p0, p1, p0 - stride * e)


def count_flops(shape: Sequence[int], reach: tuple[int, int], leaf: int = 512) -> float:
    """Floating-point operations of one count on a (C, H, W) grid of Gram reach ``reach``
    (pivot factorizations, solves and Schur updates of every front; no zero rows)."""
    c, h, w = shape
    return dissection_flops(h, w, reach, c, leaf)


def count_below(gram: LocalJacobian, shifts: Sequence[float], *, leaf: int = 512) -> list[int]:
    """Number of eigenvalues of the symmetric local matrix ``gram`` (:func:`gram_kernels`)
    below each of ``shifts``, from one nested-dissection LDL^T of ``gram - shift I`` each.

    Rows of ``gram`` that are zero (zero rows of J) are eigenvalues 0, counted for shifts
    above 0 without entering the elimination. Raises ``torch.linalg.LinAlgError`` when a
    pivot block is singular or nearly so (see :func:`negative_eigenvalues`).
    """
    c, h, w = gram.out_shape
    diag = gram.kernels[:, :, gram.window.lo[0], gram.window.lo[1]].diagonal(dim1=-2, dim2=-1)
    keep = (diag != 0).permute(2, 0, 1).reshape(c * h * w)  # (co, pixel) order, as J's rows
    dropped = int((~keep).sum())
    dev = gram.kernels.device
    shift = torch.as_tensor(list(shifts), dtype=gram.kernels.dtype, device=dev)
    ones = torch.ones(len(shift), 1, dtype=gram.kernels.dtype, device=dev)
    negatives = negative_eigenvalues([gram], ones, keep, shift=shift, leaf=leaf)
    return [n + (dropped if s > 0 else 0) for n, s in zip(negatives, shifts, strict=True)]


def negative_eigenvalues(
    terms: Sequence[LocalJacobian],
    coeffs: torch.Tensor,
    keep: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    leaf: int = 512,
) -> list[int]:
    """Negative eigenvalues of ``A_j = sum_t coeffs[j, t] terms[t] - shift[j] I``
    restricted to the unknowns ``keep`` (bool over (channel, pixel)), for each row j of
    ``coeffs``: one nested-dissection LDL^T each, all rows as one batch.

    ``terms``: symmetric local operators on one grid (same shape and reach). Each front's
    pivot block is factored by Bunch-Kaufman (``ldl_factor``); the negatives are its
    negative 1x1 pivots plus one per 2x2 pivot (which always has one of each sign).
    Raises ``torch.linalg.LinAlgError`` when a pivot block is singular or its smallest
    pivot is below ``PIVOT_RTOL`` of its largest entry (nearly singular).
    """
    ref = terms[0]
    c, h, w = ref.out_shape
    hw, n = h * w, c * h * w
    dev = ref.kernels.device
    chan = torch.arange(c, device=dev)[:, None] * hw
    pos = torch.full((n,), -1, dtype=torch.long, device=dev)
    ns = coeffs.shape[0]
    coeffs = coeffs.to(ref.kernels.dtype)
    negatives = torch.zeros(ns, dtype=torch.long, device=dev)
    failed = torch.zeros((), dtype=torch.long, device=dev)
    tiny = torch.zeros((), dtype=torch.bool, device=dev)
    # Schur complements on a front's halo (one per shift) wait for the parent front.
    stack: list[tuple[torch.Tensor, torch.Tensor]] = []
    for sep_pix, halo_pix, children in dissection(h, w, ref.window.lo, c, leaf, device=dev):
        s_all = (chan + sep_pix[None, :]).flatten()
        b_all = (chan + halo_pix[None, :]).flatten()
        ks, kb = keep[s_all], keep[b_all]
        s, b = s_all[ks], b_all[kb]
        k, m = s.numel(), b.numel()
        idx = torch.cat([s, b])
        # All rows of coeffs at once, as a batch: one set of gathers and batched LAPACK calls.
        F = ref.kernels.new_empty(ns, k + m, k + m)
        F[:, :k, :k] = 0
        F[:, k:, :k] = 0
        for t, term in enumerate(terms):
            G_ss = term.pixel_block(sep_pix, sep_pix)[ks][:, ks]
            G_bs = term.pixel_block(halo_pix, sep_pix)[kb][:, ks]
            a = coeffs[:, t, None, None]
            F[:, :k, :k] += a * G_ss
            F[:, k:, :k] += a * G_bs  # F_SB is read as F_BS^T: the block above is never used
        if shift is not None:
            F[:, :k, :k].diagonal(dim1=1, dim2=2).sub_(shift[:, None])
        F[:, k:, k:] = 0
        pos[idx] = torch.arange(k + m, device=dev)
        flat = F.view(ns, -1)
        for _ in range(children):  # extend-add: children's halos lie in this front
            vars_, upd = stack.pop()
            p = pos[vars_]
            flat.index_add_(1, (p[:, None] * (k + m) + p[None, :]).flatten(), upd.view(ns, -1))
        pos[idx] = -1
        F_ss = F[:, :k, :k].contiguous()
        if k:
            ld, piv, info = torch.linalg.ldl_factor_ex(F_ss)
            one = piv > 0
            d = ld.diagonal(dim1=1, dim2=2)
            negatives += ((d < 0) & one).sum(1) + (~one).sum(1) // 2
            failed += info.clamp_min(0).sum()
            scale = F_ss.abs().amax(dim=(1, 2), keepdim=True).squeeze(-1)
            # 1x1 pivots only: a 2x2 pivot is chosen because it is well conditioned.
            small = (d.abs() <= PIVOT_RTOL * scale) & one
            tiny |= small.any()
        if m:
            upd = F[:, k:, k:]
            if k:
                # One LU per shift: the batched LU of this torch/MKL build returns
                # garbage pivots for blocks of a few hundred rows.
                for j in range(ns):
                    X, info = torch.linalg.solve_ex(F_ss[j], F[j, k:, :k].mT)
                    failed += info.clamp_min(0)
                    _symmetric_update(upd[j], F[j, k:, :k], X)
            stack.append((b, upd.contiguous()))
    if failed.item():
        raise torch.linalg.LinAlgError("a pivot block of the shifted matrix is singular")
    if tiny.item():
        raise torch.linalg.LinAlgError("a pivot block of the shifted matrix is nearly singular")
    return negatives.tolist()


def reduced_counts(
    split: LowRankSplit, thresholds: Sequence[float], *, leaf: int = 512
) -> list[int | None]:
    """``#{sigma < c}`` of J for each threshold c > 0 through the reduced pencil of
    :mod:`resnet_dyn.dynamics.reduced`; None for a threshold at c = |alpha| (delta = 0),
    which the reduction cannot count.

    The counts are checked against what must hold exactly: they grow with c, lie in
    [0, r], and thresholds on both sides of |alpha| enclose the cluster of at least
    n - 2k singular values equal to |alpha|. A failed check raises
    ``torch.linalg.LinAlgError``, as a nearly singular pivot block does."""
    pencil = reduced_pencil(split)
    a2 = split.alpha**2
    deltas = [a2 - c * c for c in thresholds]
    live = [i for i, d in enumerate(deltas) if d != 0]
    dev = split.C.kernels.device
    # |delta| X = |delta| N0 + sign(delta) N1 has the inertia of X and O(1) entries.
    coeffs = torch.tensor(
        [[abs(deltas[i]), 1.0 if deltas[i] > 0 else -1.0] for i in live],
        dtype=torch.float64,
        device=dev,
    )
    terms = [pencil.N0, pencil.N1]
    neg = negative_eigenvalues(terms, coeffs, pencil.keep, leaf=leaf) if live else []
    out: list[int | None] = [None] * len(thresholds)
    for i, m in zip(live, neg, strict=True):
        out[i] = pencil.zeros + (pencil.rows if deltas[i] < 0 else 0) + m - pencil.k
    _check_counts(
        [(thresholds[i], out[i]) for i in live],
        pencil.zeros + pencil.rows,
        abs(split.alpha),
        pencil.rows - 2 * pencil.k,
    )
    return out


def _check_counts(
    counts: Sequence[tuple[float, int | None]], r: int, alpha: float, cluster: int
) -> None:
    """Raise ``LinAlgError`` unless the (threshold, count) pairs are consistent: counts in
    [0, r], nondecreasing in the threshold, and at least ``cluster`` values between a
    threshold below ``alpha`` and one above it."""
    pairs = sorted((c, n) for c, n in counts if n is not None)
    for c, n in pairs:
        if not 0 <= n <= r:
            raise torch.linalg.LinAlgError(f"count {n} at {c:g} is outside [0, {r}]")
    for (c0, n0), (c1, n1) in zip(pairs, pairs[1:], strict=False):
        if n1 < n0:
            raise torch.linalg.LinAlgError(f"counts decrease: {n0} below {c0:g}, {n1} below {c1:g}")
        if c0 < alpha < c1 and n1 - n0 < cluster:
            raise torch.linalg.LinAlgError(
                f"{n1 - n0} values in [{c0:g}, {c1:g}), fewer than the {cluster} at |alpha|"
            )


def _symmetric_update(C: torch.Tensor, A: torch.Tensor, X: torch.Tensor, blocks: int = 4) -> None:
    """``C -= A @ X`` where C and the product are symmetric (a Schur complement update):
    only the row blocks' parts on and left of the diagonal are multiplied (5/8 of the
    work for 4 blocks), the rest is their transpose."""
    m = C.shape[0]
    if m < 128 * blocks:
        C.addmm_(A, X, alpha=-1)
        return
    cuts = [m * i // blocks for i in range(blocks + 1)]
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        C[lo:hi, :hi].addmm_(A[lo:hi], X[:, :hi], alpha=-1)
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        C[:lo, lo:hi] = C[lo:hi, :lo].mT


def _gram_reach(window: Window) -> tuple[int, int]:
    (kh, kw), (sh, sw) = window.size, window.stride
    return ((kh - 1) // sh, (kw - 1) // sw)


def countable(f: UnitMap, *, max_gflop: float = COUNT_MAX_GFLOP) -> tuple[bool, str]:
    """Whether :func:`singular_value_counts` applies to ``f`` and, if not, why: the map
    must have a receptive window (:func:`~resnet_dyn.dynamics.window.local_window`) and a
    count must stay within ``max_gflop`` (:func:`count_flops` of the direct route, or the
    reduced route's at its worst, every hidden position active, where it applies)."""
    try:
        window = local_window(f)
    except NonLocalMap as e:
        return False, f"no receptive window ({e})"
    gflop = count_flops(f.out_shape, _gram_reach(window)) / 1e9
    if not why_not(f):
        c_h, h, w = f.in_shape  # the hidden grid of a stride-1 unit has the input's pixels
        gflop = min(gflop, count_flops((2 * c_h, h, w), window.lo) / 1e9)
    if gflop > max_gflop:
        return False, f"a count would take {gflop:.0f} GFLOP (> {max_gflop:g})"
    return True, ""


ROUTES = ("auto", "reduced", "gram")


def counted(
    f: UnitMap,
    thresholds: Sequence[float],
    *,
    lj: LocalJacobian | None = None,
    route: str = "auto",
) -> tuple[list[int], str]:
    """``#{sigma < c}`` over the ``min(dim_in, dim_out)`` singular values of J(f), exactly,
    for each threshold c > 0, and the route the counts took.

    Routes: ``"reduced"`` (:mod:`resnet_dyn.dynamics.reduced`: an LDL^T of the 2k x 2k
    pencil X on the hidden grid, for units with an identity shortcut), ``"gram"`` (an
    LDL^T of ``J J^T - c^2 I``, see the module docstring), or ``"auto"``: reduced where it
    applies and costs fewer flops. Thresholds the reduction cannot take (c = |alpha|), and
    every threshold when its factorization meets a nearly singular pivot block, go the
    gram route; the route then reads ``"reduced+gram"`` or ``"gram (<why>)"``.

    ``lj``: J's local kernels if already at hand (the gram route's input; found by
    coloring in the map's dtype otherwise). Raises :class:`NonLocalMap` for a map
    without a receptive window.
    """
    if any(not c > 0 for c in thresholds):
        raise ValueError(f"thresholds must be positive, got {list(thresholds)}")
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    counts: list[int | None] = [None] * len(thresholds)
    how = "gram"
    # Unit maps with a ReLU after the sum stay on the gram route under "auto": their
    # pencil's leading blocks are nearly rank-deficient (fewer active outputs than 2k
    # unknowns), and the dissection's static pivoting lost counts there (36 of 16,384 on a
    # 16x32x32 unit) while its gram route, which drops the zero rows, costs about as much.
    wanted = route == "reduced" or (route == "auto" and not relu_after_sum(f))
    split = low_rank_split(f) if wanted else None
    if route == "reduced" and split is None:
        raise ValueError(f"the reduced route does not apply: {why_not(f) or 'branch shape'}")
    if split is not None and (
        route == "reduced"
        or reduced_flops(split) <= count_flops(f.out_shape, _gram_reach(local_window(f)))
    ):
        try:
            counts = reduced_counts(split, thresholds)
            how = "reduced"
        except torch.linalg.LinAlgError as e:
            how = f"gram (reduced: {e})"
    rest = [i for i, n in enumerate(counts) if n is None]
    if rest:
        lj = local_jacobian(f) if lj is None else lj
        gram = gram_kernels(lj)
        shifts = [thresholds[i] ** 2 for i in rest]
        # Each shift in a pass holds its own copy of every front: a few per pass bound memory.
        below = [
            n for i in range(0, len(shifts), SHIFTS_PER_PASS)
            for n in count_below(gram, shifts[i : i + SHIFTS_PER_PASS])
        ]  # fmt: skip
        extra = max(0, f.dim_out - f.dim_in)
        for i, b in zip(rest, below, strict=True):
            counts[i] = b - extra
        if how == "reduced":
            how = "reduced+gram"
    return [int(n) for n in counts], how  # type: ignore[arg-type]


def singular_value_counts(
    f: UnitMap,
    thresholds: Sequence[float],
    *,
    lj: LocalJacobian | None = None,
    route: str = "auto",
) -> list[int]:
    """``#{sigma < c}`` over the ``min(dim_in, dim_out)`` singular values of J(f), exactly,
    for each threshold c > 0 (:func:`counted`, without the route)."""
    return counted(f, thresholds, lj=lj, route=route)[0]


def fractions_from_counts(zero: int, below_one: int, up_to_one: int, r: int) -> dict[str, float]:
    """``frac_one``, ``frac_gt_one``, ``frac_zero`` of r singular values from the counts
    below ``tol``, ``1 - tol`` and ``1 + tol``."""
    return {
        "frac_one": (up_to_one - below_one) / r,
        "frac_gt_one": (r - up_to_one) / r,
        "frac_zero": zero / r,
    }


def exact_fractions(f: UnitMap, tol: float = 1e-3, **kwargs: object) -> dict[str, float]:
    """``frac_one``, ``frac_gt_one`` and ``frac_zero`` of J(f) (see
    :mod:`resnet_dyn.dynamics.stats`) from counts at ``tol``, ``1 - tol`` and ``1 + tol``."""
    counts = singular_value_counts(f, [tol, 1 - tol, 1 + tol], **kwargs)
    return fractions_from_counts(*counts, min(f.dim_in, f.dim_out))


def singular_value_histogram(
    f: UnitMap, edges: torch.Tensor | Sequence[float], **kwargs: object
) -> torch.Tensor:
    """Exact number of singular values of J(f) in each bin ``[edges[i], edges[i+1])``;
    an edge <= 0 counts from 0 (no sigma is negative). One count per positive edge."""
    e = [float(v) for v in edges]
    if len(e) < 2 or any(b <= a for a, b in zip(e, e[1:], strict=False)):
        raise ValueError("edges must be at least two increasing numbers")
    positive = [v for v in e if v > 0]
    counts = dict(zip(positive, singular_value_counts(f, positive, **kwargs), strict=True))
    below = torch.tensor([counts.get(v, 0) for v in e], dtype=torch.long, device=f.x.device)
    return below[1:] - below[:-1]
