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
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from resnet_dyn.dynamics.gridlu import dissection
from resnet_dyn.dynamics.jacobian import LocalJacobian, local_jacobian
from resnet_dyn.dynamics.maps import UnitMap
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
    total = 0.0
    for sep, halo, _ in dissection(h, w, reach, c, leaf):
        k, m = c * sep.numel(), c * halo.numel()
        total += k**3 + 2 * k * k * m + 2 * k * m * m
    return total


def count_below(gram: LocalJacobian, shifts: Sequence[float], *, leaf: int = 512) -> list[int]:
    """Number of eigenvalues of the symmetric local matrix ``gram`` (:func:`gram_kernels`)
    below each of ``shifts``, from one nested-dissection LDL^T of ``gram - shift I`` each.

    Rows of ``gram`` that are zero (zero rows of J) are eigenvalues 0, counted for shifts
    above 0 without entering the elimination. Raises ``torch.linalg.LinAlgError`` when a
    pivot block is exactly singular (a shift equal to an eigenvalue of a pivot block).
    """
    c, h, w = gram.out_shape
    hw, n = h * w, c * h * w
    dev = gram.kernels.device
    diag = gram.kernels[:, :, gram.window.lo[0], gram.window.lo[1]].diagonal(dim1=-2, dim2=-1)
    keep = (diag != 0).permute(2, 0, 1).reshape(n)  # (co, pixel) order, as J's rows
    dropped = int((~keep).sum())
    chan = torch.arange(c, device=dev)[:, None] * hw
    pos = torch.full((n,), -1, dtype=torch.long, device=dev)
    shift = torch.as_tensor(list(shifts), dtype=gram.kernels.dtype, device=dev)
    negatives = torch.zeros(len(shift), dtype=torch.long, device=dev)
    failed = torch.zeros((), dtype=torch.long, device=dev)
    # Schur complements on a front's halo (one per shift) wait for the parent front.
    stack: list[tuple[torch.Tensor, torch.Tensor]] = []
    ns = len(shift)
    for sep_pix, halo_pix, children in dissection(h, w, gram.window.lo, c, leaf, device=dev):
        s_all = (chan + sep_pix[None, :]).flatten()
        b_all = (chan + halo_pix[None, :]).flatten()
        G_ss = gram.pixel_block(sep_pix, sep_pix)
        G_bs = gram.pixel_block(halo_pix, sep_pix)
        s, b = s_all, b_all
        if dropped:
            ks, kb = keep[s_all], keep[b_all]
            s, b = s_all[ks], b_all[kb]
            G_ss, G_bs = G_ss[ks][:, ks], G_bs[kb][:, ks]
        k, m = s.numel(), b.numel()
        idx = torch.cat([s, b])
        # All shifts at once, as a batch: one set of gathers and batched LAPACK calls.
        F = gram.kernels.new_empty(ns, k + m, k + m)
        F[:, :k, :k] = G_ss
        F[:, :k, :k].diagonal(dim1=1, dim2=2).sub_(shift[:, None])
        F[:, k:, :k] = G_bs  # F_SB is read as F_BS^T: the block above is never used
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
            negatives += ((ld.diagonal(dim1=1, dim2=2) < 0) & one).sum(1) + (~one).sum(1) // 2
            failed += info.clamp_min(0).sum()
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
        raise torch.linalg.LinAlgError("a pivot block of the shifted Gram matrix is singular")
    zeros = torch.where(shift > 0, dropped, 0)
    return (negatives + zeros).tolist()


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


def countable(f: UnitMap, *, max_gflop: float = COUNT_MAX_GFLOP) -> tuple[bool, str]:
    """Whether :func:`singular_value_counts` applies to ``f`` and, if not, why: the map
    must have a receptive window (:func:`~resnet_dyn.dynamics.window.local_window`) and a
    count must stay within ``max_gflop`` (:func:`count_flops`)."""
    try:
        window = local_window(f)
    except NonLocalMap as e:
        return False, f"no receptive window ({e})"
    (kh, kw), (sh, sw) = window.size, window.stride
    reach = ((kh - 1) // sh, (kw - 1) // sw)
    gflop = count_flops(f.out_shape, reach) / 1e9
    if gflop > max_gflop:
        return False, f"a count would take {gflop:.0f} GFLOP (> {max_gflop:g})"
    return True, ""


def singular_value_counts(
    f: UnitMap, thresholds: Sequence[float], *, lj: LocalJacobian | None = None
) -> list[int]:
    """``#{sigma < c}`` over the ``min(dim_in, dim_out)`` singular values of J(f), exactly,
    for each threshold c > 0 (one symmetric factorization each; see the module docstring).

    ``lj``: J's local kernels if already at hand (else found by coloring, in the map's
    dtype; the counting itself runs in float64). Raises :class:`NonLocalMap` for a map
    without a receptive window.
    """
    if any(not c > 0 for c in thresholds):
        raise ValueError(f"thresholds must be positive, got {list(thresholds)}")
    lj = local_jacobian(f) if lj is None else lj
    gram = gram_kernels(lj)
    shifts = [c * c for c in thresholds]
    # Each shift in a pass holds its own copy of every front: a few per pass bound memory.
    below = [
        n for i in range(0, len(shifts), SHIFTS_PER_PASS)
        for n in count_below(gram, shifts[i : i + SHIFTS_PER_PASS])
    ]  # fmt: skip
    extra = max(0, f.dim_out - f.dim_in)
    return [b - extra for b in below]


def exact_fractions(f: UnitMap, tol: float = 1e-3, **kwargs: object) -> dict[str, float]:
    """``frac_one``, ``frac_gt_one`` and ``frac_zero`` of J(f) (see
    :mod:`resnet_dyn.dynamics.stats`) from counts at ``tol``, ``1 - tol`` and ``1 + tol``."""
    zero, below_one, up_to_one = singular_value_counts(f, [tol, 1 - tol, 1 + tol], **kwargs)
    r = min(f.dim_in, f.dim_out)
    return {
        "frac_one": (up_to_one - below_one) / r,
        "frac_gt_one": (r - up_to_one) / r,
        "frac_zero": zero / r,
    }


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
