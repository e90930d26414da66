"""Exact counts of singular values through a reduced inertia formulation, for units with an
identity shortcut: J = alpha I + B C.

    >>> import torch
    >>> from resnet_dyn.dynamics.maps import unit_map
    >>> from resnet_dyn.models import CifarResNet
    >>> _ = torch.manual_seed(0)
    >>> net = CifarResNet(depth=8, input_shape=(3, 8, 8)).eval()
    >>> f = unit_map(net, 0, torch.randn(16, 8, 8), "sum")
    >>> split = low_rank_split(f)      # None where the algebra does not hold (with why_not)
    >>> split.alpha, split.active.numel(), split.rank   # alpha, hidden positions, k active
    (1.0, 1024, 518)
    >>> pencil = reduced_pencil(split)   # X(delta) = N0 + N1 / delta on the hidden grid
    >>> pencil.N0.kernels.shape          # (H, W, 5, 5, 2 c_h, 2 c_h): reach 2
    torch.Size([8, 8, 5, 5, 32, 32])

:func:`~resnet_dyn.dynamics.inertia.singular_value_counts` counts through it wherever it
applies.

The branch of such a unit is ``second(act(first(x)))`` with ``first`` a local map onto a
hidden grid, ``act`` elementwise and ``second`` affine (convs and eval-mode BatchNorm), so
at a state x, with D = act'(first(x)) (diagonal, zero where a ReLU is off):

    J_sum = alpha I + B C,   C = D J_first restricted to its k rows with D != 0 (k x n),
                             B = J_second restricted to the same k columns (n x k).

Then ``J^T J - alpha^2 I = Q M Q^T`` with ``Q = [C^T, B]`` (n x 2k) and
``M = [[B^T B, alpha I], [alpha I, 0]]``: sigma = |alpha| has multiplicity >= n - 2k
exactly. For ``delta = alpha^2 - c^2 != 0``, Haynsworth's inertia additivity applied to
``K = [[delta I, Q], [Q^T, -M^{-1}]]`` both ways (its two Schur complements are
``J^T J - c^2 I`` and ``X = -M^{-1} - Q^T Q / delta``; M has k positive and k negative
eigenvalues) gives

    #{sigma < c} = [delta < 0] n + neg(X) - k,
    X = [[0, -I/alpha], [-I/alpha, B^T B / alpha^2]] - Q^T Q / delta      (2k x 2k).

X lives on the hidden grid; its blocks ``C C^T``, ``C B`` and ``B^T B`` couple hidden pixels
at most 2 apart (two 3x3 convs), where ``J J^T`` couples pixels 4 apart, and only active
positions are unknowns: the nested dissection of ``|delta| X`` (scaled so that its
entries stay O(1)) has separators half as thick and ~f = k/n as wide, so a count costs
roughly f^3 of the direct route's (:func:`reduced_flops`). The cluster at sigma = |alpha|
never enters the factorization.

A unit map with a ReLU after the sum, ``J = D2 (alpha I + B C)`` (E: the k2 outputs with
D2 = 1), has n - k2 exact zeros, and the k2 x k2 matrix ``J_a J_a^T`` (J_a = E^T J) reduces
the same way with ``Q' = E^T [B, C^T]`` and ``M' = [[C C^T, alpha I], [alpha I, 0]]``:
``#{sigma < c} = (n - k2) + [delta < 0] k2 + neg(X') - k`` for c > 0.

Where it does not hold: a shortcut that is not the identity (the option-A subsampling or a
1x1 conv of a stage's first unit, where ``P^T P != alpha^2 I``), alpha = 0, a branch of
another shape, a final activation other than ReLU, a threshold c = |alpha|.
:func:`why_not` says which; callers use the direct route of
:mod:`resnet_dyn.dynamics.inertia` there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from resnet_dyn.dynamics.gridlu import dissection_flops
from resnet_dyn.dynamics.jacobian import AD_LOCK, LocalJacobian, local_jacobian
from resnet_dyn.dynamics.maps import UnitMap
from resnet_dyn.dynamics.window import NonLocalMap, Window, local_window
from resnet_dyn.models.base import ResidualUnit

# Elementwise activations whose derivative is a diagonal D; BatchNorm and Dropout are
# pointwise too but not "the" nonlinearity between the two halves of a branch.
ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus)
AFFINE = (nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.Identity)


@dataclass
class LowRankSplit:
    """J of a map as ``alpha I + B C`` (times the output mask ``out_active`` for a unit
    map with a ReLU), with C and B as local kernels in float64 on the hidden grid.

    ``C``: D J_first (hidden x in, rows with D = 0 are zero); ``B``: J_second (out x
    hidden); ``active``: hidden positions with D != 0, (c_h, h, w); ``out_active``: the
    unit map's outputs with D2 = 1, or None for a sum map."""

    alpha: float
    C: LocalJacobian
    B: LocalJacobian
    active: torch.Tensor
    out_active: torch.Tensor | None

    @property
    def rank(self) -> int:
        """k: the active hidden positions."""
        return int(self.active.sum())


def _parts(f: UnitMap) -> tuple[ResidualUnit, nn.Module, nn.Module, nn.Module] | str:
    """(unit, first, act, second) of ``f``'s branch, or why the split does not apply."""
    if len(f.steps) != 1:
        return "a stage map (several units)"
    unit, with_act = f.steps[0]
    if not isinstance(unit.shortcut, nn.Identity):
        return f"shortcut {type(unit.shortcut).__name__}, not the identity"
    if unit.skip_scale == 0:
        return "alpha = 0"
    if with_act and not isinstance(unit.act, nn.ReLU | nn.Identity):
        return f"final activation {type(unit.act).__name__}: its D2^2 is not a projection"
    branch = unit.branch
    if not isinstance(branch, nn.Sequential):
        return f"branch {type(branch).__name__} is not a Sequential"
    acts = [i for i, m in enumerate(branch) if isinstance(m, ELEMENTWISE)]
    if not acts:
        return "a branch without an elementwise activation"
    i = acts[-1]
    second = list(branch)[i + 1 :]
    if not all(isinstance(m, AFFINE) for m in second):
        return "the branch's last part after its last activation is not affine"
    return unit, nn.Sequential(*list(branch)[:i]), branch[i], nn.Sequential(*second)


def why_not(f: UnitMap) -> str:
    """``""`` if :func:`low_rank_split` applies to ``f`` (structurally), else why not."""
    parts = _parts(f)
    if isinstance(parts, str):
        return parts
    if f.in_shape != f.out_shape or len(f.in_shape) != 3:
        return "not a square map of (C, H, W) states"
    try:
        window = local_window(f)
    except NonLocalMap as e:
        return f"no receptive window ({e})"
    if window.stride != (1, 1):
        return "a strided map"
    return ""


def _sub_map(part: nn.Module, x: torch.Tensor, index: int) -> UnitMap:
    """``part`` as a map of one sample (a unit without shortcut: its sum map is ``part``)."""
    return UnitMap(((ResidualUnit(part, None), False),), x, "sum", index)


def low_rank_split(f: UnitMap) -> LowRankSplit | None:
    """J(f) as ``alpha I + B C`` with C, B in float64 (see the module docstring), or None
    where :func:`why_not` gives a reason. The kernels are found by coloring a float64 copy
    of the map, so the count cannot depend on the map's dtype or on BatchNorm folding
    beyond float64 rounding."""
    if why_not(f):
        return None
    g = f.to(torch.float64)
    unit, first, act, second = _parts(g)  # type: ignore[misc]
    x = g.x
    with torch.no_grad():
        z = first(x.unsqueeze(0)).squeeze(0)
    if z.dim() != 3 or z.shape[1:] != x.shape[1:]:
        return None
    # D = act'(z) elementwise, from one JVP with a tangent of ones.
    with AD_LOCK:
        _, d = torch.func.jvp(act, (z,), (torch.ones_like(z),))
    first_map, second_map = _sub_map(first, x, f.index), _sub_map(second, act(z), f.index)
    try:
        C, B = local_jacobian(first_map), local_jacobian(second_map)
    except NonLocalMap:
        return None
    if C.window.stride != (1, 1) or B.window.stride != (1, 1):
        return None
    C.kernels.mul_(d.permute(1, 2, 0)[:, :, None, None, :, None])
    out_active = None
    if f.steps[0][1] and isinstance(unit.act, nn.ReLU):
        with torch.no_grad():
            out_active = unit.sum_map(x.unsqueeze(0)).squeeze(0) > 0
    return LowRankSplit(float(unit.skip_scale), C, B, d != 0, out_active)


# --------------------------------------------------------------------- local operator algebra
# Stride-1 local operators on one h x w grid, as LocalJacobian kernels
# ``K[oi, oj, di, dj, u, v] = A[(u, o), (v, o + d - r)]`` of reach r per axis.


def reach_of(A: LocalJacobian) -> tuple[int, int]:
    """The reach per grid axis of a stride-1 operator with a symmetric window (ValueError
    for any other)."""
    if A.window.stride != (1, 1) or A.window.lo != A.window.hi:
        raise ValueError(f"a stride-1 operator with a symmetric window, got {A.window}")
    return A.window.lo


def _shifted(T: torch.Tensor, e: tuple[int, int]) -> torch.Tensor:
    """``out[o] = T[o + e]`` over the first two (grid) axes, zero where o + e is off it."""
    h, w = T.shape[:2]
    out = torch.zeros_like(T)
    i0, i1, j0, j1 = max(0, -e[0]), min(h, h - e[0]), max(0, -e[1]), min(w, w - e[1])
    if i0 < i1 and j0 < j1:
        out[i0:i1, j0:j1] = T[i0 + e[0] : i1 + e[0], j0 + e[1] : j1 + e[1]]
    return out


def _operator(K: torch.Tensor, reach: tuple[int, int], out_c: int, in_c: int) -> LocalJacobian:
    h, w = K.shape[:2]
    return LocalJacobian(
        K,
        Window((1, 1), reach, reach),
        torch.Size((in_c, h, w)),
        torch.Size((out_c, h, w)),
    )


def transpose(A: LocalJacobian) -> LocalJacobian:
    """A^T: ``A^T[p, e] = A[p + e, -e]^T`` (entry (v at p, u at p + e))."""
    r = reach_of(A)
    K = A.kernels
    out = torch.zeros_like(K.transpose(-1, -2))
    for di in range(2 * r[0] + 1):
        for dj in range(2 * r[1] + 1):
            e = (di - r[0], dj - r[1])
            src = _shifted(K[:, :, 2 * r[0] - di, 2 * r[1] - dj], e)
            out[:, :, di, dj] = src.transpose(-1, -2)
    return _operator(out, r, A.in_shape[0], A.out_shape[0])


def product(A: LocalJacobian, B: LocalJacobian) -> LocalJacobian:
    """A B, of reach r_A + r_B: ``(AB)[o, e1 + e2] += A[o, e1] B[o + e1, e2]``."""
    ra, rb = reach_of(A), reach_of(B)
    if A.in_shape != B.out_shape:
        raise ValueError(f"A's columns {tuple(A.in_shape)} != B's rows {tuple(B.out_shape)}")
    h, w, kai, kaj, cu, _ = A.kernels.shape
    _, _, kbi, kbj, _, cv = B.kernels.shape
    r = (ra[0] + rb[0], ra[1] + rb[1])
    out = A.kernels.new_zeros(h, w, 2 * r[0] + 1, 2 * r[1] + 1, cu, cv)
    for di in range(kai):
        for dj in range(kaj):
            Bs = _shifted(B.kernels, (di - ra[0], dj - ra[1]))
            out[:, :, di : di + kbi, dj : dj + kbj] += torch.einsum(
                "xyum,xyabmv->xyabuv", A.kernels[:, :, di, dj], Bs
            )
    return _operator(out, r, cu, cv)


def _mask_rows(A: LocalJacobian, mask: torch.Tensor) -> LocalJacobian:
    """diag(mask) A: rows of A (output positions) where ``mask`` (c, h, w) is False are 0."""
    m = mask.permute(1, 2, 0).to(A.kernels.dtype)[:, :, None, None, :, None]
    return _operator(A.kernels * m, reach_of(A), A.out_shape[0], A.in_shape[0])


def block_operator(
    P: Sequence[Sequence[LocalJacobian | None]], r: tuple[int, int]
) -> LocalJacobian:
    """A block operator ``[[P00, P01], [P10, P11]]`` (None: zero) as one operator whose
    channels are the blocks' channels in order, at reach r (smaller blocks centred)."""
    rows = [next(b for b in row if b is not None).out_shape[0] for row in P]
    cols = [next(P[i][j] for i in range(len(P)) if P[i][j] is not None).in_shape[0]
            for j in range(len(P[0]))]  # fmt: skip
    ref = next(b for row in P for b in row if b is not None).kernels
    h, w = ref.shape[:2]
    out = ref.new_zeros(h, w, 2 * r[0] + 1, 2 * r[1] + 1, sum(rows), sum(cols))
    for i, row in enumerate(P):
        for j, b in enumerate(row):
            if b is None:
                continue
            (bi, bj), (u0, v0) = reach_of(b), (sum(rows[:i]), sum(cols[:j]))
            out[:, :, r[0] - bi : r[0] + bi + 1, r[1] - bj : r[1] + bj + 1,
                u0 : u0 + rows[i], v0 : v0 + cols[j]] = b.kernels  # fmt: skip
    return _operator(out, r, sum(rows), sum(cols))


def _identity(c: int, like: torch.Tensor) -> LocalJacobian:
    h, w = like.shape[:2]
    eye = torch.eye(c, dtype=like.dtype, device=like.device)
    return _operator(eye.expand(h, w, 1, 1, c, c).clone(), (0, 0), c, c)


@dataclass
class ReducedPencil:
    """``X(delta) = N0 + N1 / delta`` on the hidden grid (2 c_h channels, reach 2), its
    unknowns ``keep`` (active positions in both halves), the reduced rank k, the
    dimension ``rows`` of the Gram matrix it replaces (n for a sum map, k2 for a unit
    map) and the exact zeros ``zeros`` set aside (n - k2 for a unit map)."""

    N0: LocalJacobian
    N1: LocalJacobian
    keep: torch.Tensor
    k: int
    rows: int
    zeros: int


def reduced_pencil(split: LowRankSplit) -> ReducedPencil:
    """The pencil of :func:`reduced_counts` (see the module docstring): with
    ``Q = [L, R]`` and ``M = [[P, alpha I], [alpha I, 0]]``, ``X = -M^-1 - Q^T Q / delta``,
    ``-M^-1 = [[0, -I/alpha], [-I/alpha, P / alpha^2]]``. Sum map: ``L = C^T``, ``R = B``,
    ``P = B^T B``; unit map: ``L = E B``, ``R = E C^T``, ``P = C C^T``."""
    a = split.alpha
    C, B = split.C, split.B
    Ct = transpose(C)
    if split.out_active is None:
        L, R, P = Ct, B, None
    else:
        L, R = _mask_rows(B, split.out_active), _mask_rows(Ct, split.out_active)
        P = product(C, Ct)
    Lt, Rt = transpose(L), transpose(R)
    LtL, LtR, RtR = product(Lt, L), product(Lt, R), product(Rt, R)
    P = RtR if P is None else P
    c_h = C.out_shape[0]
    # The widest block sets the reach: P = C C^T is wider than L^T L where B is 1x1.
    reaches = [reach_of(b) for b in (LtL, LtR, RtR, P)]
    r = (max(e[0] for e in reaches), max(e[1] for e in reaches))
    inv_a = _identity(c_h, C.kernels)
    inv_a.kernels.mul_(-1 / a)
    p_term = _operator(P.kernels / a**2, reach_of(P), c_h, c_h)
    N0 = block_operator([[None, inv_a], [inv_a, p_term]], r)
    N1 = block_operator([[LtL, LtR], [transpose(LtR), RtR]], r)
    N1.kernels.neg_()
    active = split.active.reshape(-1)
    n = C.in_shape.numel()
    k2 = n if split.out_active is None else int(split.out_active.sum())
    return ReducedPencil(N0, N1, torch.cat([active, active]), int(active.sum()), k2, n - k2)


def reduced_flops(split: LowRankSplit, leaf: int = 512) -> float:
    """Floating-point operations of one reduced count: the fronts of the nested dissection
    of X over its active unknowns (pivot factorizations, solves and Schur updates)."""
    c, h, w = split.active.shape
    (ci, cj), (bi, bj) = reach_of(split.C), reach_of(split.B)
    unknowns = 2 * split.active.reshape(c, h * w).sum(0)  # both halves of X at each pixel
    reach = (2 * max(ci, bi), 2 * max(cj, bj))  # the pencil's reach (see reduced_pencil)
    return dissection_flops(h, w, reach, 2 * c, leaf, unknowns)
