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
each front's pivot block is diagonalized, ``F_ss = V Lambda V^T`` (``eigh``): its
negative eigenvalues are the front's share of the count, and the Schur complement
``F_bb - W^T Lambda^-1 W`` (``W = V^T F_sb``) is passed to its parent. Directions whose
eigenvalue is tiny against the block's (``|lambda| < DELAY_RTOL max |lambda|``) are
delayed: not eliminated, but passed to the parent as unknowns of its pivot block, with
their row ``lambda`` and coupling ``W_S`` (in the basis V the front is
``[[Lambda, W], [W^T, F_bb]]``, so this is the same elimination in another order).
Static pivoting would divide by them and grow the Schur complements: on a random-init
ResNet-56's stage-0 sum maps at c = 1e-3 the error bound fell from 3e-5 to 4e-8 with
delays, for ~10% more time.

**Certificates.** The order of a dissection is static: a pivot block cannot be
postponed, and a nearly singular one amplifies the rounding of everything after it.
That is how an uncertified elimination of ``J J^T - c^2 I`` lost 20 of 16,384 counts
with nothing to show for it. So no count is taken on trust:

1. *Backward error* (:func:`negative_eigenvalues`). The elimination's negatives are
   exactly those of some ``A + E``. Writing each front's computed quantities as the exact
   ones of a nearby front (``eigh`` is exact for ``F_ss + E1``, ``||E1|| <= k eps
   ||F_ss||``; V is within ``k eps`` of an orthogonal Q, so ``W = Q^T (F_sb + E2)``,
   ``||E2|| <= (k + k^1.5) eps || |F_sb| ||_2``; the update's products add ``E3``,
   elementwise within ``(k + 2) eps |W^T| |Lambda|^-1 |W|``, so ``||E3|| <= (k + 2) eps
   || |W^T| |Lambda|^-1/2 ||_2^2 + eps ||F_bb||_F``; the 2-norms of these nonnegative
   matrices are bounded from above by the Collatz-Wielandt inequality after two power
   steps (up to 200x tighter than products of Frobenius norms); assembling the
   front adds ``(t + 2 + children) eps`` times its norm; G's entries, Gram sums of K
   products, are within ``K eps sqrt(G_pp G_qq)``), every front of the computed
   elimination is the exact front of A plus these, and they add up to E. So ``||E||_2
   <= sum over fronts of (E1 + E2 + E3 + assembly + entries)`` (``Inertia.error``; the
   eigensolver constant, EIG_BACKWARD = 1, is 10x what this solver showed). Growth from an
   ill-conditioned pivot block shows up as a large ``||Lambda^-1 W||``, i.e. a large bound.
   The eigenvalues are checked against the pivot block's trace (they must add up to it
   within ``k ||E1||``); a block that fails makes the bound infinite: a wrong pivot from
   a solver failure or a bug is caught, not counted.
2. *Bracketing* (:func:`certified_counts`). By Weyl's inequality (eigenvalues move by
   at most ``||E||``), the negatives of ``A + a I + E`` with ``||E|| <= a`` are at most
   those of A, and the negatives of ``A - a I + E'`` with ``||E'|| <= a`` at least as
   many. So the counts of A shifted by ``+a`` and ``-a`` bound the true count, and where
   they agree they are it: a certified count. On the gram route A is ``G - c^2 I`` (a on
   sigma^2); on the reduced route the pencil ``|delta| X``, whose inertia gives the count.
   Where the two counts differ, an eigenvalue lies within ``a + error`` of the shift: the
   count is only known to lie between them. The smallest threshold is counted at ``+a``
   first: a count of 0 there certifies ``#{sigma < c} = 0`` in one elimination (frac_zero
   of a trained net's sum maps, and of a random-init ResNet-56's stage-1 ones). The two
   counts of a bracket counted together share the eigendecompositions of their leaf
   fronts, which differ by ``2a I``.
3. *Recounts.* What is not certified is counted again on the gram route, on the
   augmented route (``[[0, J], [J^T, 0]] - c I``, whose gap at a small c is ``sigma - c``
   where the gram route's is ``~2 c (sigma - c)``: :func:`augmented_counts`), on the gram
   route with larger fronts, and by a dense ``eigvalsh`` of G where it fits
   (``DENSE_RECOUNT_MAX``; its eigenvalues within ``n eps ||G||`` of G's). What remains
   is an interval (:class:`Counts`; ``fractions: "uncertain"`` in
   :func:`~resnet_dyn.dynamics.unit_spectra.map_spectrum`), never a number. A
   certified count costs two eliminations instead of one.

Under ``route="auto"`` each map takes the route of fewer flops
(:func:`~resnet_dyn.dynamics.reduced.reduced_flops` against a gram route whose unknowns
are the map's active outputs): sum maps and most unit maps take the reduced one. A
pencil can be nearly rank-deficient at a small threshold (reduced errors of 3e-5 with
static pivots, 4e-8 with delayed ones, where the gram route's are 1e-8): a count its
bracket leaves unsure is recounted on the gram route, like any other.

Exactly zero rows of J (a unit map's outputs behind an off ReLU) are zero rows of G:
exact zeros, counted without entering the elimination.

Dtype and BatchNorm folding: the reduced route (:mod:`resnet_dyn.dynamics.reduced`)
colors a float64 copy of the map, so its counts are those of the float64 map (tested
against jacfwd of the unfolded float64 map). The gram route colors J in the map's own
dtype (float32 for a trained net, 4x cheaper): a count can then differ from the float64
map's only for a sigma within about 1e-7 relative of a threshold (float32 rounding of J's
entries and of the folded BatchNorm); pass a float64 map (``analysis.dtype=float64``) to
exclude that. The certificates are for the J that was colored: its G, or its pencil.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from resnet_dyn.dynamics.gridlu import dissection, dissection_flops
from resnet_dyn.dynamics.jacobian import LocalJacobian, local_jacobian
from resnet_dyn.dynamics.maps import UnitMap
from resnet_dyn.dynamics.reduced import (
    LowRankSplit,
    ReducedPencil,
    block_operator,
    low_rank_split,
    reach_of,
    reduced_flops,
    reduced_pencil,
    transpose,
    why_not,
)
from resnet_dyn.dynamics.window import NonLocalMap, Window, local_window

# Above this many floating-point operations per count, a map's fractions are not counted
# (``count_flops``): a stage map's window spans the whole grid, making G dense.
COUNT_MAX_GFLOP = 400.0
SHIFTS_PER_PASS = 8  # shifts factored together by singular_value_counts
EPS = float(torch.finfo(torch.float64).eps)
# Backward error of LAPACK's symmetric eigensolver, per unit of ||F||_2 and of k: the
# computed eigenvalues are exact for F + E with ||E||_2 <= EIG_BACKWARD * k * eps ||F||_2
# and the computed eigenvectors within EIG_BACKWARD * k * eps of an orthogonal matrix.
# Measured on this solver (k = 100..700, Frobenius norms): ||F - V Lambda V^T|| below
# 0.1 k eps ||F|| and ||V^T V - I|| below 0.8 k eps; the eigenvectors' term enters the
# bound next to a sqrt(k) times larger rounding term (E2 in the module docstring).
EIG_BACKWARD = 1.0
# A front's pivot directions with |lambda| below this share of its largest are delayed
# to the parent front (negative_eigenvalues).
DELAY_RTOL = 1e-4


@dataclass(frozen=True)
class Inertia:
    """What one nested-dissection elimination of a symmetric matrix A found: the number
    of negative eigenvalues of some A + E, exactly, and a bound ``error >= ||E||_2``
    (:func:`negative_eigenvalues`; inf where a pivot block was exactly singular)."""

    negatives: int
    error: float


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
    with _one_thread():
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


def count_below(
    gram: LocalJacobian, shifts: Sequence[float], *, leaf: int = 512, entry_rtol: float = 0.0
) -> list[Inertia]:
    """Number of eigenvalues of the symmetric local matrix ``gram`` (:func:`gram_kernels`)
    below each of ``shifts`` (``Inertia.negatives``), with its certificate, from one
    nested-dissection elimination of ``gram - shift I`` each (:func:`negative_eigenvalues`;
    ``entry_rtol``: the error of ``gram``'s entries it allows for).

    Rows of ``gram`` that are zero (zero rows of J) are eigenvalues 0, counted for shifts
    above 0 without entering the elimination.
    """
    c, h, w = gram.out_shape
    keep = _diagonal(gram) != 0  # (co, pixel) order, as J's rows
    dropped = int((~keep).sum())
    dev = gram.kernels.device
    shift = torch.as_tensor(list(shifts), dtype=gram.kernels.dtype, device=dev)
    ones = torch.ones(len(shift), 1, dtype=gram.kernels.dtype, device=dev)
    found = negative_eigenvalues([gram], ones, keep, shift=shift, leaf=leaf, entry_rtol=entry_rtol)
    return [
        replace(i, negatives=i.negatives + (dropped if s > 0 else 0))
        for i, s in zip(found, shifts, strict=True)
    ]


def augmented_operator(lj: LocalJacobian) -> LocalJacobian | None:
    """``[[0, J], [J^T, 0]]`` as a symmetric local operator (J's output channels, then its
    input channels, at J's reach), for J of a stride-1 map from a grid onto the same grid;
    None for any other (a strided stage opener). Its eigenvalues are ``+-sigma`` and
    ``|m - n|`` zeros, so ``#{sigma < c} = neg(A - c I) - max(m, n)``
    (:func:`augmented_counts`)."""
    if lj.in_shape[1:] != lj.out_shape[1:]:
        return None
    try:
        r = reach_of(lj)
    except ValueError:
        return None
    J = replace(lj, kernels=lj.kernels.to(torch.float64))
    return block_operator([[None, J], [transpose(J), None]], r)


def augmented_counts(
    lj: LocalJacobian,
    thresholds: Sequence[float],
    offsets: Sequence[float],
    *,
    augmented: LocalJacobian | None = None,
    leaf: int = 512,
) -> list[Count]:
    """``#{sigma < c}`` of J (``lj``) for each threshold c > 0 from ``neg(A - (c + offset)
    I)`` of its :func:`augmented_operator` A (``augmented``, if already at hand), with the
    elimination's error bound (on sigma itself).

    Where the gram route sees a singular value at ``sigma^2 - c^2 ~ 2 c (sigma - c)``, this
    one sees it at ``sigma - c``: for the small c of ``frac_zero`` it separates values that
    are within the gram route's error of the threshold (a singular value 1% above 1e-3 on
    a random-init ResNet-56: ``sigma^2 - c^2 = 1.9e-8``, the gram route's error 1.6e-8;
    ``sigma - c = 9.5e-6``, this route's error 1.6e-8). A count costs ~1.5x a gram count
    (2n unknowns at J's reach against n at twice the reach); near c = 1 its error is ~50x
    the gram route's, so it comes after it."""
    A = augmented_operator(lj) if augmented is None else augmented
    if A is None:
        raise ValueError("the augmented route needs a stride-1 map onto the same grid")
    dev = A.kernels.device
    # A zero row of J (an output behind an off ReLU) leaves only -(c + offset) < 0 on its
    # row of A - (c + offset) I: a negative counted without entering the elimination.
    rows = lj.kernels.abs().sum(dim=(2, 3, 5)).permute(2, 0, 1).reshape(-1) != 0
    keep = torch.cat([rows, torch.ones(lj.in_shape.numel(), dtype=torch.bool, device=dev)])
    # A has |m - n| zero eigenvalues besides +-sigma, all below c: neg = max(m, n) + count.
    most = max(lj.in_shape.numel(), lj.out_shape.numel()) - int((~rows).sum())
    out: list[Count] = []
    for i in range(0, len(thresholds), SHIFTS_PER_PASS):
        part = range(i, min(i + SHIFTS_PER_PASS, len(thresholds)))
        shift = torch.tensor([thresholds[j] + offsets[j] for j in part], dtype=torch.float64,
                             device=dev)  # fmt: skip
        ones = torch.ones(len(part), 1, dtype=torch.float64, device=dev)
        # J's entries enter A as they are: the count is J's (module docstring).
        found = negative_eigenvalues([A], ones, keep, shift=shift, leaf=leaf)
        out += [Count(n.negatives - most, n.error) for n in found]
    return out


def _diagonal(A: LocalJacobian) -> torch.Tensor:
    """The diagonal of a square local operator, in (channel, pixel) order."""
    c, h, w = A.out_shape
    diag = A.kernels[:, :, A.window.lo[0], A.window.lo[1]].diagonal(dim1=-2, dim2=-1)
    return diag.permute(2, 0, 1).reshape(c * h * w)


def negative_eigenvalues(
    terms: Sequence[LocalJacobian],
    coeffs: torch.Tensor,
    keep: torch.Tensor,
    *,
    shift: torch.Tensor | None = None,
    leaf: int = 512,
    entry_rtol: float = 0.0,
    delay_rtol: float = DELAY_RTOL,
) -> list[Inertia]:
    """Negative eigenvalues of ``A_j = sum_t coeffs[j, t] terms[t] - shift[j] I``
    restricted to the unknowns ``keep`` (bool over (channel, pixel)), for each row j of
    ``coeffs``, each exact for a matrix within ``Inertia.error`` of ``A_j`` (2-norm): one
    nested-dissection elimination each, all rows as one batch.

    ``terms``: symmetric local operators on one grid (same shape and reach).
    ``entry_rtol``: how far the terms' entries may be from the exact ones they stand for,
    per unit of their diagonals: ``|error_pq| <= entry_rtol sqrt(d_p d_q)`` with
    ``d = sum_t |coeffs_t| |diag(terms_t)|`` (a Gram product of K terms: ~K eps, by
    Cauchy-Schwarz); 0 bounds the error against the matrices as given.

    Each front's pivot block is diagonalized, ``F_ss = V Lambda V^T`` (``eigh``): its
    negative eigenvalues are the front's share of the count, and the Schur complement
    passed to the parent is ``F_bb - W^T Lambda^-1 W`` with ``W = V^T F_sb``, less the
    directions delayed to the parent (``delay_rtol``, module docstring). The bound
    on the backward error is the sum over fronts of the module docstring's per-front terms;
    it is infinite where a pivot block has an exactly zero eigenvalue.
    """
    ref = terms[0]
    c, h, w = ref.out_shape
    hw, n = h * w, c * h * w
    dev = ref.kernels.device
    chan = torch.arange(c, device=dev)[:, None] * hw
    pos = torch.full((n,), -1, dtype=torch.long, device=dev)
    ns = coeffs.shape[0]
    coeffs = coeffs.to(ref.kernels.dtype)
    # d: sum_t |coeffs_t| |diag(terms_t)| over (channel, pixel), for the entries' error bound.
    d = sum(coeffs[:, t, None].abs() * _diagonal(term).abs() for t, term in enumerate(terms))
    negatives = torch.zeros(ns, dtype=torch.long, device=dev)
    error = torch.zeros(ns, dtype=torch.float64, device=dev)
    # Rows of coeffs that agree (a bracket's -a and +a) give leaf fronts that differ by
    # a multiple of I: one eigh and one W per such group at the leaves (reps: the first
    # row of each group; group: each row's).
    rows = [tuple(row) for row in coeffs.tolist()]
    distinct = list(dict.fromkeys(rows))
    reps = [rows.index(row) for row in distinct]
    group = torch.tensor([distinct.index(row) for row in rows], device=dev)
    gap = torch.zeros(ns, dtype=coeffs.dtype, device=dev)  # shift of the group's row - own
    if shift is not None:
        own = shift.to(coeffs.dtype)
        gap = own[reps][group] - own
    # Schur complements on a front's halo (one per shift) wait for the parent front, with
    # the pivot directions delayed to it: (halo unknowns, matrix over [delayed; halo], d).
    stack: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    for sep_pix, halo_pix, children in dissection(h, w, ref.window.lo, c, leaf, device=dev):
        s_all = (chan + sep_pix[None, :]).flatten()
        b_all = (chan + halo_pix[None, :]).flatten()
        ks, kb = keep[s_all], keep[b_all]
        s, b = s_all[ks], b_all[kb]
        k0, m = s.numel(), b.numel()
        pending = [stack.pop() for _ in range(children)]
        # The children's delayed directions join this front's pivot block, after its own.
        delayed = sum(dc for _, _, dc in pending)
        k = k0 + delayed
        # All rows of coeffs at once, as a batch: one set of gathers and batched LAPACK calls.
        # The terms' columns at the separator, rows at separator and halo, in one gather
        # each: pixel_block orders rows (channel, pixel) over sep_pix + halo_pix.
        ps, pb = sep_pix.numel(), halo_pix.numel()
        at = torch.arange(c, device=dev)[:, None] * (ps + pb)
        rows = torch.cat([(at + torch.arange(ps, device=dev)).flatten()[ks],
                          (at + ps + torch.arange(pb, device=dev)).flatten()[kb]])  # fmt: skip
        cols = ks.nonzero().flatten()
        both = torch.cat([sep_pix, halo_pix])
        T = torch.stack([t.pixel_block(both, sep_pix)[rows[:, None], cols] for t in terms])
        # Front order: separator, delayed directions, halo. F_SB is read as F_BS^T: the
        # block above F_BB is never used.
        part = torch.tensordot(coeffs, T, dims=1)
        # Only what is read is set: the block above F_BB never is (zeroing whole fronts
        # cost ~5% of an elimination).
        F = ref.kernels.new_empty(ns, k + m, k + m)
        if delayed:  # the delayed directions' rows and columns hold only children's updates
            F[:, :k0, :k0], F[:, k:, :k0] = part[:, :k0], part[:, k0:]
            F[:, k0:k], F[:, :k0, k0:k] = 0, 0
            F[:, k:, k0:] = 0
        else:
            F[:, :, :k] = part
            F[:, k:, k:] = 0
        if shift is not None:  # the delayed directions come shifted already
            F[:, :k0, :k0].diagonal(dim1=1, dim2=2).sub_(shift[:, None])
        tr_s, tr_b = d[:, s].sum(1), d[:, b].sum(1)
        error += entry_rtol * torch.sqrt(2 * tr_s * (tr_s + tr_b))  # (1) the entries
        pos[s] = torch.arange(k0, device=dev)
        pos[b] = torch.arange(k, k + m, device=dev)
        flat = F.view(ns, -1)
        added = torch.zeros(ns, dtype=torch.float64, device=dev)
        slot = k0
        for vars_, upd, dc in pending:  # extend-add: children's halos lie in this front
            p = torch.cat([torch.arange(slot, slot + dc, device=dev), pos[vars_]])
            slot += dc
            flat.index_add_(1, (p[:, None] * (k + m) + p[None, :]).flatten(), upd.view(ns, -1))
            added += _fro(upd)
        pos[s], pos[b] = -1, -1
        F_ss, F_bs, F_bb = F[:, :k, :k], F[:, k:, :k], F[:, k:, k:]
        n_bs, n_bb = _fro(F_bs), _fro(F_bb)
        # (2) the sums that assembled the front: terms, shift and children's updates.
        n_front = torch.sqrt(_fro(F_ss) ** 2 + 2 * n_bs**2 + n_bb**2)
        error += (len(terms) + 2 + children) * EPS * (n_front + added)
        if not k:
            stack.append((b, F_bb.contiguous(), 0))
            continue
        g = _gamma(k)
        shared = not children and len(reps) < ns
        if shared:
            # F_ss = F_ss(rep) + gap I: the rep's eigh is exact for F_ss + E (E as below),
            # and adding gap rounds each eigenvalue by at most eps (|lambda| + |gap|).
            lam_r, V = _pivot_eigh(F_ss[reps])
            lam = lam_r[group] + gap[:, None]
            e1 = EIG_BACKWARD * g * lam_r.abs().amax(1)[group]
            e1 = e1 + EPS * (lam.abs().amax(1) + gap.abs())
        else:
            lam, V = _pivot_eigh(F_ss)
            # (3) eigh: exact for F_ss + E; V within EIG_BACKWARD * g of an orthogonal Q.
            e1 = EIG_BACKWARD * g * lam.abs().amax(1)
        error += e1
        # The eigenvalues must add up to the trace, within k ||E||: a wrong one (a solver
        # failure or a bug) is caught here, not trusted.
        trace = F_ss.diagonal(dim1=1, dim2=2)
        off = (lam.sum(1) - trace.sum(1)).abs()
        wrong = off > k * e1 + g * (lam.abs().sum(1) + trace.abs().sum(1))
        bad = wrong | (lam == 0).any(1) | ~torch.isfinite(lam).all(1)
        error = torch.where(bad, math.inf, error)
        if not m:
            negatives += (lam < 0).sum(1)
            continue
        # W^T = F_bs V, (ns, m, k). (4) W = Q^T F_sb' exactly for an F_sb' this close to
        # F_sb (V - Q and rounding). ||F_bs||_2 <= || |F_bs| ||_2, bounded as in (5) (its
        # Frobenius norm is looser). A leaf's F_bs is its group's.
        if shared:
            Wt = (F_bs[reps] @ V)[group]
            sb_norm = _nonnegative_gram_norm(F_bs[reps].abs()).sqrt()[group]
        else:
            Wt = F_bs @ V
            sb_norm = _nonnegative_gram_norm(F_bs.abs()).sqrt()
        error += 2 * (EIG_BACKWARD * g + g * math.sqrt(k)) * sb_norm
        # Directions whose eigenvalue is small against the block's are not eliminated
        # here (their Lambda^-1 would grow the Schur complement): in the basis Q the front
        # is [[Lambda, W], [W^T, F_bb]], and the rows of Lambda_S go to the parent as
        # unknowns of its pivot block, with W_S their coupling to the halo. The same
        # number per shift (the most any shift needs), the smallest |lambda| of each.
        small = lam.abs() < delay_rtol * lam.abs().amax(1, keepdim=True)
        dn = min(int(small.sum(1).max()), k - 1)
        lam_l, Wt_l = lam, Wt
        if dn:
            order = lam.abs().argsort(1, descending=True)
            elim, late = order[:, : k - dn], order[:, k - dn :]
            lam_l = lam.gather(1, elim)
            Wt_l = Wt.gather(2, elim[:, None, :].expand(ns, m, k - dn))
        negatives += (lam_l < 0).sum(1)
        lam_l = torch.where(lam_l == 0, 1.0, lam_l)  # a zero made the error infinite above
        Z = Wt_l / lam_l[:, None, :]  # (Lambda_L^-1 W_L)^T
        for j in range(ns):
            _symmetric_update(F_bb[j], Wt_l[j], Z[j].mT)
        # (5) the update's products and difference: elementwise within gamma |W^T| |Z^T|^T
        # = gamma |W^T| |Lambda|^-1 |W^T|^T, whose 2-norm is bounded without the slack of
        # Frobenius norms (10-100x on trained units) by _nonnegative_gram_norm.
        scaled = Wt_l.abs() * lam_l.abs().rsqrt()[:, None, :]
        error += _gamma(k + 2) * _nonnegative_gram_norm(scaled) + EPS * n_bb
        if not dn:
            stack.append((b, F_bb.contiguous(), 0))
            continue
        carried = F.new_empty(ns, dn + m, dn + m)  # every block set below
        carried[:, :dn, :dn] = torch.diag_embed(lam.gather(1, late))
        Wt_s = Wt.gather(2, late[:, None, :].expand(ns, m, dn))
        carried[:, dn:, :dn] = Wt_s
        carried[:, :dn, dn:] = Wt_s.mT
        carried[:, dn:, dn:] = F_bb
        stack.append((b, carried, dn))
    return [
        Inertia(nv, er)
        for nv, er in zip(
            negatives.tolist(),
            torch.nan_to_num(error, nan=math.inf, posinf=math.inf).tolist(),
            strict=True,
        )
    ]


def _nonnegative_gram_norm(Y: torch.Tensor, iterations: int = 2) -> torch.Tensor:
    """An upper bound on ``||Y Y^T||_2`` for each nonnegative matrix Y of a batch (ns, m, k):
    by the Collatz-Wielandt inequality, ``rho(M) <= max_i (M x)_i / x_i`` for a nonnegative
    M and any positive x; a few power steps with ``M = Y Y^T`` make x close to the Perron
    vector, so the bound is close to the norm (``||Y||_F^2`` is up to rank(Y) times larger).
    The ratio's own rounding is covered by a factor ``1 + gamma(2 (m + k))``."""
    ns, m, k = Y.shape
    if not m or not k:
        return Y.new_zeros(ns)
    x = Y.new_ones(ns, m, 1)
    for _ in range(iterations):
        x = Y @ (Y.mT @ x)
        # Kept strictly positive (and O(1)): a zero x_i would make the ratio undefined.
        x = x / x.amax(1, keepdim=True).clamp_min(torch.finfo(Y.dtype).tiny) + 1e-3
    ratio = (Y @ (Y.mT @ x)) / x
    return ratio.amax(dim=(1, 2)) * (1 + _gamma(2 * (m + k)))


def _fro(A: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each matrix of a batch (ns, p, q)."""
    return torch.linalg.vector_norm(A, dim=(1, 2))


def _pivot_eigh(F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a batch of pivot blocks: the two halves
    of a batch on two threads of one LAPACK thread each (1.9x faster than the batch on one
    thread for 1024-blocks, 1.1x faster than LAPACK's own two threads); on one thread
    where torch has one (maps analysed side by side, each on its thread)."""
    split = torch.get_num_threads() >= 2 and F.shape[0] >= 2 and F.shape[-1] >= 128
    with _one_thread():
        if not split:
            return torch.linalg.eigh(F)
        half = F.shape[0] // 2
        parts = list(_pool().map(torch.linalg.eigh, (F[:half], F[half:])))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@functools.cache
def _pool() -> ThreadPoolExecutor:
    """Two worker threads for LAPACK calls that release the GIL."""
    return ThreadPoolExecutor(2, thread_name_prefix="inertia")


@contextmanager
def _one_thread() -> Iterator[None]:
    """LAPACK's eigensolvers on one thread: on two cores that another process also uses,
    their many short parallel regions made ``eigh`` of a 1024-block 70x slower with two
    threads than with one (37 s against 0.5 s); on a quiet machine one thread costs ~30%."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Count:
    """``#{sigma < c}`` of J as one elimination found it: exact if the matrix it factored
    (``J J^T - c^2 I``, or the reduced route's ``|delta| X``), shifted by ``-offset I``,
    were within ``error`` (2-norm) of the exact one (the offset is the caller's)."""

    below: int
    error: float


def reduced_counts(
    split: LowRankSplit,
    thresholds: Sequence[float],
    *,
    offsets: Sequence[float] | None = None,
    leaf: int = 512,
    pencil: ReducedPencil | None = None,
) -> list[Count | None]:
    """``#{sigma < c}`` of J for each threshold c > 0 through the reduced pencil of
    :mod:`resnet_dyn.dynamics.reduced`, ``[delta < 0] rows + neg(|delta| X - offset I) - k``
    (plus a unit map's zero rows), with the elimination's error bound; None at c = |alpha|
    (delta = 0), which the reduction cannot count. ``offsets`` (default 0): one per
    threshold, for the bracketing of :func:`certified_counts`. ``pencil``:
    ``reduced_pencil(split)`` if already at hand (building it costs ~0.5 s on a 16x32x32
    unit)."""
    pencil = reduced_pencil(split) if pencil is None else pencil
    offsets = [0.0] * len(thresholds) if offsets is None else list(offsets)
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
    shift = torch.tensor([offsets[i] for i in live], dtype=torch.float64, device=dev)
    # N0's P and N1 are Gram products of C's and B's kernels: K terms per entry.
    inner = max(
        math.prod(K.kernels.shape[2:4]) * max(K.kernels.shape[4:]) for K in (split.C, split.B)
    )
    found = (
        negative_eigenvalues(
            [pencil.N0, pencil.N1],
            coeffs,
            pencil.keep,
            shift=shift,
            leaf=leaf,
            entry_rtol=_gamma(inner),
        )
        if live
        else []
    )
    out: list[Count | None] = [None] * len(thresholds)
    for i, m in zip(live, found, strict=True):
        below = pencil.zeros + (pencil.rows if deltas[i] < 0 else 0) + m.negatives - pencil.k
        out[i] = Count(below, m.error)
    return out


def _row_sum_bound(A: LocalJacobian) -> float:
    """``||A||_inf`` (the largest absolute row sum) of a local operator, ``>= ||A||_2``
    for a symmetric A."""
    return float(A.kernels.abs().sum(dim=(2, 3, 5)).max())


def _gamma(k: int) -> float:
    """Rounding of a sum of k float64 products, relative to the sum of their magnitudes."""
    return 1.01 * k * EPS


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
# The bracket of a certified count: the route's matrix is counted shifted by -a and +a,
# a starting at BRACKET_RTOL of a bound on its norm and, where an elimination's error
# exceeded it, retried once at twice that error, up to BRACKET_MAX of the norm. On the
# gram route a is also at most BRACKET_SHARE (at first) and BRACKET_SHARE_MAX of c^2: a
# sigma^2 within a of c^2 leaves the count uncertain.
BRACKET_RTOL = 1e-9
BRACKET_MAX = 1e-5
BRACKET_SHARE = 0.1
BRACKET_SHARE_MAX = 0.5
BRACKET_ROUNDS = 3  # counts of a threshold's bracket at most (each two eliminations)
# A second gram-route count of what the first could not certify uses fronts this large:
# fewer levels of the dissection, so less rounding carried through ill-conditioned pivots.
RECOUNT_LEAF = 2048
# The last recount, of whatever is still uncertified: eigvalsh of the dense Gram matrix of
# J's nonzero rows, where it has at most this many (8,192: 0.5 GiB, ~15 s on 2 cores).
DENSE_RECOUNT_MAX = 8192


class UncertainCounts(torch.linalg.LinAlgError):
    """Raised by :func:`counted` where some count could not be certified."""


@dataclass
class Counts:
    """``#{sigma < c}`` for each threshold c, as the interval ``[lo[i], hi[i]]`` it is
    known to lie in: a single number (``lo == hi``) where the count was certified, else
    the bounds that its bracketing counts and the certified counts at the other
    thresholds (counts grow with c) allow, within ``[0, r]``. ``route``: how the counts
    were found (see :func:`certified_counts`)."""

    lo: list[int]
    hi: list[int]
    route: str

    @property
    def exact(self) -> bool:
        """Whether every count is certified (a single number)."""
        return self.lo == self.hi


# count(thresholds, offsets): a Count (or None) per (threshold, offset) pair.
CountFn = Callable[[list[float], list[float]], list[Count | None]]


def _bracketed(
    count: CountFn,
    thresholds: Sequence[float],
    widths: Sequence[float],
    most: Sequence[float],
    *,
    leave_unsure_smallest: bool = False,
) -> list[tuple[int, int] | None]:
    """For each threshold: bounds ``(lo, hi)`` on ``#{sigma < c}``, the counts of the
    route's matrix shifted by ``-a`` and ``+a``, where both their errors are at most a
    (None where no a tried allows that); ``lo == hi`` is a certified count (module
    docstring). a starts at ``widths``; where an error exceeded it (up to ``most``), or
    where the two counts differ and the errors allow a bracket under half as wide, it is
    tried again at twice the larger error, up to ``BRACKET_ROUNDS`` brackets in all.

    The smallest threshold is counted at ``+a`` first, alone: where that count is 0
    (within its error), no value lies below, and that one elimination certifies it (the
    usual case for ``frac_zero``); otherwise its ``-a`` count joins the next pass, unless
    ``leave_unsure_smallest`` and that count's error exceeded a: then it is left (None)
    to the caller's next route (the reduced pencil at c << |alpha| is ill-conditioned
    where J has a singular value below c: errors of 1e-5 against 1e-8 on the gram route,
    measured on a ResNet-56's stage-0 sum maps with static pivots; 4e-8 with delayed
    pivots)."""
    out: list[tuple[int, int] | None] = [None] * len(thresholds)
    a = list(widths)
    done: dict[tuple[int, float], Count | None] = {}  # (threshold, offset) -> its count
    first = min(range(len(thresholds)), key=lambda i: thresholds[i])
    (upper,) = count([thresholds[first]], [a[first]])
    done[(first, a[first])] = upper
    if upper is not None and upper.below == 0 and upper.error <= a[first]:
        out[first] = (0, 0)
    unsure = leave_unsure_smallest and (upper is None or upper.error > a[first])
    todo = [i for i in range(len(thresholds)) if out[i] is None and not (unsure and i == first)]
    for _ in range(BRACKET_ROUNDS):
        wanted = [(i, x) for i in todo for x in (-a[i], a[i]) if (i, x) not in done]
        if wanted:
            found = count([thresholds[i] for i, _ in wanted], [x for _, x in wanted])
            done.update(zip(wanted, found, strict=True))
        again = []
        for i in todo:
            lo, hi = done[(i, -a[i])], done[(i, a[i])]
            if lo is None or hi is None:
                continue
            worst = max(lo.error, hi.error)
            if worst <= a[i]:
                out[i] = (lo.below, hi.below)
            if (worst > a[i] and 2 * worst <= most[i]) or (
                lo.below != hi.below and 4 * worst < a[i]
            ):
                a[i] = 2 * worst
                again.append(i)
        todo = again
        if not todo:
            break
    return out


def certified_counts(
    f: UnitMap,
    thresholds: Sequence[float],
    *,
    lj: LocalJacobian | None = None,
    route: str = "auto",
    dense_max: int | None = None,
) -> Counts:
    """``#{sigma < c}`` over the ``min(dim_in, dim_out)`` singular values of J(f) for each
    threshold c > 0: certified counts, or intervals where no count could be certified.

        res = certified_counts(f, [1e-3, 0.999, 1.001])
        res.exact, res.lo, res.hi, res.route  # True, [0, 497, 506], [0, 497, 506], "reduced"

    Routes: ``"reduced"`` (:mod:`resnet_dyn.dynamics.reduced`: the 2k x 2k pencil X on the
    hidden grid, for units with an identity shortcut), ``"gram"`` (``J J^T - c^2 I``, see
    the module docstring), or ``"auto"``: reduced where it applies and costs fewer flops.
    Each count is certified by two bracketing counts that agree (module docstring); the
    thresholds not certified, and those the reduction cannot take (c = |alpha|), are
    counted again, in turn (unless ``route="reduced"``): on the gram route, on the
    augmented route (:func:`augmented_counts`, stride-1 maps onto their own grid), on the
    gram route with larger fronts (``RECOUNT_LEAF``), and by ``eigvalsh`` of the dense Gram
    matrix of J's nonzero rows where they are at most ``dense_max`` (default
    ``DENSE_RECOUNT_MAX``). The route reads e.g.
    ``"reduced"``, ``"reduced+gram+augmented"``, ``"gram+augmented+gram(leaf 2048)+dense"`` or
    ``"gram (reduced: <why>)"``, with ``" (uncertain)"`` where an interval remains.

    ``lj``: J's local kernels if already at hand (the gram route's input; found by
    coloring in the map's dtype otherwise). Raises :class:`NonLocalMap` for a map
    without a receptive window.
    """
    if any(not c > 0 for c in thresholds):
        raise ValueError(f"thresholds must be positive, got {list(thresholds)}")
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    r = min(f.dim_in, f.dim_out)
    bounds: list[tuple[int, int]] = [(0, r)] * len(thresholds)
    steps: list[str] = []

    def take(found: dict[int, tuple[int, int] | None]) -> list[int]:
        """Narrow the bounds by those found (threshold index -> bounds); what is left."""
        for i, b in found.items():
            if b is not None:
                bounds[i] = (max(bounds[i][0], b[0]), min(bounds[i][1], b[1]))
        return [i for i, (lo, hi) in enumerate(bounds) if lo != hi]

    rest = list(range(len(thresholds)))
    split = low_rank_split(f) if route != "gram" else None
    if route == "reduced" and split is None:
        raise ValueError(f"the reduced route does not apply: {why_not(f) or 'branch shape'}")
    failed = ""
    # A unit map's pencil can be nearly rank-deficient where its gram route (zero rows
    # dropped) is not: its counts are certified or recounted like any other.
    if split is not None and (route == "reduced" or reduced_flops(split) <= _gram_flops(f, split)):
        pencil = reduced_pencil(split)
        # ||delta| N0 + N1|| with |delta| <= max(alpha^2, c^2) over the thresholds.
        top = max([split.alpha**2, *(c * c for c in thresholds)])
        scale = top * _row_sum_bound(pencil.N0) + _row_sum_bound(pencil.N1)

        def reduced(cs: list[float], offsets: list[float]) -> list[Count | None]:
            return reduced_counts(split, cs, offsets=offsets, pencil=pencil)

        nt = len(thresholds)
        found = _bracketed(
            reduced,
            thresholds,
            [BRACKET_RTOL * scale] * nt,
            [BRACKET_MAX * scale] * nt,
            leave_unsure_smallest=True,
        )
        exact = [(c, b[0]) for c, b in zip(thresholds, found, strict=True) if b and b[0] == b[1]]
        try:
            # What must hold exactly, as a last guard on certified counts.
            _check_counts(exact, r, abs(split.alpha), _cluster(split, r))
            rest = take(dict(enumerate(found)))
            steps.append("reduced")
        except torch.linalg.LinAlgError as e:
            failed = f" (reduced: {e})"
    if rest and route != "reduced":
        lj = local_jacobian(f) if lj is None else lj
        gram = gram_kernels(lj)
        # G's entries are sums of kh * kw * c_in products of J's entries.
        rtol = _gamma(math.prod(lj.kernels.shape[2:4]) * lj.kernels.shape[5])
        extra = max(0, f.dim_out - f.dim_in)
        # In turn: the gram route; the augmented one, whose gap at a small c is sigma - c
        # instead of ~2 c (sigma - c); the gram route with larger fronts.
        for name, leaf in (("gram", 512), ("augmented", 512), ("gram", RECOUNT_LEAF)):
            if name == "augmented":
                augmented = augmented_operator(lj)
                if augmented is None:
                    continue

                def counter(
                    cs: list[float], offsets: list[float], A: LocalJacobian = augmented
                ) -> list[Count | None]:
                    return list(augmented_counts(lj, cs, offsets, augmented=A))

                scale, power = _row_sum_bound(augmented), 1
            else:

                def counter(
                    cs: list[float], offsets: list[float], leaf: int = leaf
                ) -> list[Count | None]:
                    shifts = [c * c + o for c, o in zip(cs, offsets, strict=True)]
                    # Each shift in a pass holds its own copy of every front: a few per pass.
                    found = [
                        n for i in range(0, len(shifts), SHIFTS_PER_PASS)
                        for n in count_below(gram, shifts[i : i + SHIFTS_PER_PASS],
                                             leaf=leaf, entry_rtol=rtol)
                    ]  # fmt: skip
                    return [Count(n.negatives - extra, n.error) for n in found]

                scale, power = _row_sum_bound(gram), 2

            cs = [thresholds[i] for i in rest]
            # A value within a of the threshold (c^power) breaks the bracket: a is kept
            # small against it.
            widths = [min(BRACKET_RTOL * scale, BRACKET_SHARE * c**power) for c in cs]
            most = [min(BRACKET_MAX * scale, BRACKET_SHARE_MAX * c**power) for c in cs]
            sub = _bracketed(counter, cs, widths, most)
            rest = take(dict(zip(rest, sub, strict=True)))
            steps.append(name if leaf == 512 else f"{name}(leaf {leaf})")
            if not rest:
                break
        dense_max = DENSE_RECOUNT_MAX if dense_max is None else dense_max
        if rest and int((_diagonal(gram) != 0).sum()) <= dense_max:
            dense = _dense_counts(gram, [thresholds[i] ** 2 for i in rest], rtol)
            rest = take({i: None if n is None else (n - extra, n - extra)
                         for i, n in zip(rest, dense, strict=True)})  # fmt: skip
            steps.append("dense")
    lo, hi = _envelope(thresholds, bounds)
    how = "+".join(steps) + failed
    return Counts(lo, hi, how if lo == hi else f"{how} (uncertain)")


def _gram_flops(f: UnitMap, split: LowRankSplit) -> float:
    """Floating-point operations of one gram-route count of ``f`` (a unit map's zero rows,
    the outputs behind an off ReLU, do not enter it)."""
    reach = _gram_reach(local_window(f))
    if split.out_active is None:
        return count_flops(f.out_shape, reach)
    c, h, w = f.out_shape
    unknowns = split.out_active.reshape(c, h * w).sum(0)
    return dissection_flops(h, w, reach, c, unknowns=unknowns)


def _cluster(split: LowRankSplit, n: int) -> int:
    """How many singular values of an n x n J equal |alpha| at least: rows - 2k (module
    docstring of :mod:`~resnet_dyn.dynamics.reduced`; rows: n, or a unit map's active
    outputs)."""
    rows = n if split.out_active is None else int(split.out_active.sum())
    return rows - 2 * split.rank


def _envelope(
    thresholds: Sequence[float], bounds: Sequence[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Bounds on each count made consistent across thresholds: a count is at least every
    lower bound at a smaller threshold and at most every upper bound at a larger one."""
    pairs = list(zip(thresholds, bounds, strict=True))
    lo = [max(b[0] for d, b in pairs if d <= c) for c in thresholds]
    hi = [min(b[1] for d, b in pairs if d >= c) for c in thresholds]
    return lo, hi


def _dense_counts(gram: LocalJacobian, shifts: Sequence[float], rtol: float) -> list[int | None]:
    """Eigenvalues of ``gram`` below each shift from ``eigvalsh`` of its dense nonzero rows
    (zero rows: eigenvalues 0), None where an eigenvalue is too close to the shift to say
    on which side it lies: ``eigvalsh`` is exact for ``G + E``, ``||E||_2 <=
    EIG_BACKWARD n eps ||G||_2``, and G's entries are within ``rtol tr(G)`` of the exact
    ones."""
    keep = _diagonal(gram) != 0
    G = gram.dense()[keep][:, keep]
    with _one_thread():
        lam = torch.linalg.eigvalsh(G)
    bound = EIG_BACKWARD * _gamma(G.shape[0]) * lam.abs().max() + rtol * G.diagonal().abs().sum()
    dropped = int((~keep).sum())
    out: list[int | None] = []
    for s in shifts:
        close = bool(((lam - s).abs() <= bound).any())
        out.append(None if close else int((lam < s).sum()) + (dropped if s > 0 else 0))
    return out


def counted(
    f: UnitMap,
    thresholds: Sequence[float],
    *,
    lj: LocalJacobian | None = None,
    route: str = "auto",
) -> tuple[list[int], str]:
    """``#{sigma < c}`` over the ``min(dim_in, dim_out)`` singular values of J(f), exactly,
    for each threshold c > 0, and the route the counts took (:func:`certified_counts`).
    Raises :class:`UncertainCounts` where a count could not be certified."""
    res = certified_counts(f, thresholds, lj=lj, route=route)
    if not res.exact:
        raise UncertainCounts(f"counts not certified: within [{res.lo}, {res.hi}] ({res.route})")
    return res.lo, res.route


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


def fraction_bounds(counts: Counts, r: int) -> dict[str, float]:
    """``frac_one``, ``frac_gt_one``, ``frac_zero`` of r singular values from the counts
    below ``tol``, ``1 - tol`` and ``1 + tol`` (:func:`certified_counts`), with
    ``<frac>_lo`` and ``<frac>_hi``, the interval the counts allow (equal to the fraction
    where every count is certified; the fraction is its midpoint otherwise)."""
    (z0, z1), (b0, b1), (u0, u1) = zip(counts.lo, counts.hi, strict=True)
    lo = fractions_from_counts(z0, b1, max(u0, b1), r) | {"frac_gt_one": (r - u1) / r}
    hi = fractions_from_counts(z1, b0, u1, r) | {"frac_gt_one": (r - u0) / r}
    out = {k: (lo[k] + hi[k]) / 2 for k in lo}
    return out | {f"{k}_lo": v for k, v in lo.items()} | {f"{k}_hi": v for k, v in hi.items()}


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
