"""LU factorization of a local map's Jacobian in nested-dissection order, dense per front.

    >>> import torch
    >>> from resnet_dyn.dynamics.jacobian import jacobian, local_jacobian
    >>> from resnet_dyn.dynamics.maps import unit_map
    >>> from resnet_dyn.models import CifarResNet
    >>> _ = torch.manual_seed(0)
    >>> net = CifarResNet(depth=8, input_shape=(3, 8, 8)).eval()
    >>> f = unit_map(net, 0, torch.randn(16, 8, 8), "sum")  # stride 1, two 3x3 convs
    >>> lu = GridLU.factor(local_jacobian(f), f.in_shape, reach=(2, 2))  # or a dense J
    >>> b = torch.randn(3, f.dim_in, dtype=torch.float64)
    >>> x = lu.solve(b)        # rows of b: J x_i = b_i
    >>> y = lu.solve_t(b)      # J^T y_i = b_i
    >>> J = jacobian(f).matrix.double()
    >>> torch.allclose(x @ J.T, b), torch.allclose(y @ J, b)
    (True, True)

J of a stride-1 conv map on a (C, H, W) grid couples pixels at most ``reach`` apart per
axis (its receptive window). Cutting the grid by separators ``reach`` pixels thick splits
it into halves that do not couple; doing so recursively (nested dissection) and
eliminating each region before its separator keeps the fill inside small dense "fronts"
(the region's separator plus the pixels around it). For a 16x32x32 unit that is a few
GFLOP instead of the ~3 TFLOP of a dense LU of the 16,384 x 16,384 J, and LAPACK's
SuperLU (COLAMD ordering, single-threaded) needs 8-20 s. Pivoting is partial within each
front's separator block only (static across fronts); residual units are well enough
conditioned for that, and callers check residuals (Rayleigh quotients) with the map itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class _Front:
    """One node of the dissection tree: its eliminated variables S, the variables B it
    updates, and the factors of its frontal matrix [[F_SS, F_SB], [F_BS, F_BB]]:
    F_SS = P L U (``lu``, ``perm``: P^T b = b[perm]), ``u_sb`` = L^-1 P^T F_SB,
    ``l_bs`` = F_BS U^-1."""

    s: torch.Tensor
    b: torch.Tensor
    lu: torch.Tensor | None = None
    perm: torch.Tensor | None = None
    u_sb: torch.Tensor | None = None
    l_bs: torch.Tensor | None = None


class PixelBlocks(Protocol):
    """J given by its blocks between pixel sets, like
    :class:`~resnet_dyn.dynamics.jacobian.LocalJacobian`."""

    kernels: torch.Tensor

    def pixel_block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor: ...


def _pixel_blocks(
    J: torch.Tensor | PixelBlocks, c: int, hw: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if not isinstance(J, torch.Tensor):
        return J.pixel_block
    grid = J.view(c, hw, c, hw)

    def block(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return grid[:, rows][:, :, :, cols].reshape(c * rows.numel(), c * cols.numel())

    return block


# A pivot block whose smallest pivot is below this share of its largest entry is taken as
# nearly singular: the static order of a dissection cannot pivot across fronts, so the
# rounding of everything after it would be amplified by the inverse of that pivot.
PIVOT_RTOL = 1e-11


def lu_factor_checked(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.lu_factor`` raising ``LinAlgError`` (not a bare RuntimeError) when a
    pivot is zero, or below ``PIVOT_RTOL`` of A's largest entry (nearly singular), so that
    callers can tell a singular matrix from a bug and fall back."""
    lu, piv, info = torch.linalg.lu_factor_ex(A)
    if info.item() > 0:
        raise torch.linalg.LinAlgError(f"pivot {info.item()} of a {A.shape[0]}-block is zero")
    if A.numel():
        smallest = lu.diagonal().abs().min()
        if smallest <= PIVOT_RTOL * A.abs().max():
            raise torch.linalg.LinAlgError(
                f"a {A.shape[0]}-block is nearly singular (pivot {smallest.item():.1e})"
            )
    return lu, piv


def _pixels(r0: int, r1: int, c0: int, c1: int, w: int, device: torch.device) -> torch.Tensor:
    rows, cols = torch.arange(r0, r1, device=device), torch.arange(c0, c1, device=device)
    return (rows[:, None] * w + cols[None, :]).flatten()


def dissection(
    h: int,
    w: int,
    reach: tuple[int, int],
    channels: int,
    leaf: int = 512,
    device: torch.device | str | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Nodes (eliminated pixels, halo pixels, number of children) of a nested dissection
    of an h x w grid, children before parents. A region is split across its longer axis
    by a separator ``reach`` pixels thick until it holds at most ``leaf`` variables or is
    too thin. Every pixel within ``reach`` of a region but outside it lies in a separator
    of an ancestor, so a region's halo is exactly what eliminating it can fill in.
    Index tensors live on ``device`` (default: the CPU)."""
    device = torch.device("cpu") if device is None else torch.device(device)
    nodes: list[tuple[torch.Tensor, torch.Tensor, int]] = []

    def halo(r0: int, r1: int, c0: int, c1: int) -> torch.Tensor:
        rr = torch.arange(max(0, r0 - reach[0]), min(h, r1 + reach[0]), device=device)
        cc = torch.arange(max(0, c0 - reach[1]), min(w, c1 + reach[1]), device=device)
        inside = ((rr >= r0) & (rr < r1))[:, None] & ((cc >= c0) & (cc < c1))[None, :]
        return (rr[:, None] * w + cc[None, :])[~inside]

    def split(r0: int, r1: int, c0: int, c1: int) -> None:
        nh, nw = r1 - r0, c1 - c0
        axis = 0 if nh * reach[1] >= nw * reach[0] else 1
        extent, r = (nh, reach[0]) if axis == 0 else (nw, reach[1])
        if nh * nw * channels <= leaf or extent < r + 2:
            nodes.append((_pixels(r0, r1, c0, c1, w, device), halo(r0, r1, c0, c1), 0))
            return
        m = (r0 if axis == 0 else c0) + (extent - r) // 2
        if axis == 0:
            split(r0, m, c0, c1)
            split(m + r, r1, c0, c1)
            sep = _pixels(m, m + r, c0, c1, w, device)
        else:
            split(r0, r1, c0, m)
            split(r0, r1, m + r, c1)
            sep = _pixels(r0, r1, m, m + r, w, device)
        nodes.append((sep, halo(r0, r1, c0, c1), 2))

    split(0, h, 0, w)
    return nodes


def dissection_flops(
    h: int,
    w: int,
    reach: tuple[int, int],
    channels: int,
    leaf: int = 512,
    unknowns: torch.Tensor | None = None,
) -> float:
    """Floating-point operations of one factorization in :func:`dissection` order (pivot
    block, solves and Schur update of every front). ``unknowns``: the number of unknowns at
    each pixel (h * w,), where fewer than ``channels`` take part; default ``channels``."""
    dev = None if unknowns is None else unknowns.device
    total = 0.0
    for sep, halo, _ in dissection(h, w, reach, channels, leaf, device=dev):
        if unknowns is None:
            k, m = channels * sep.numel(), channels * halo.numel()
        else:
            k, m = int(unknowns[sep].sum()), int(unknowns[halo].sum())
        total += k**3 + 2 * k * k * m + 2 * k * m * m
    return total


class GridLU:
    """Solves with J (and J^T) of a square local map on a (C, H, W) grid; see the module
    docstring. Build with :meth:`factor`."""

    def __init__(self, fronts: list[_Front], n: int, dtype: torch.dtype) -> None:
        self.fronts, self.n, self.dtype = fronts, n, dtype

    @classmethod
    def factor(
        cls,
        J: torch.Tensor | PixelBlocks,
        shape: tuple[int, int, int] | torch.Size,
        reach: tuple[int, int],
        *,
        dtype: torch.dtype = torch.float64,
        leaf: int = 512,
    ) -> GridLU:
        """Factor J (n x n, rows and columns indexed by (c, i, j) of ``shape``), whose
        entry (p, q) is zero when pixels p and q are more than ``reach`` apart on an axis.
        J is dense or gives its blocks between pixel sets (``J.pixel_block(rows,
        cols)``); only the blocks of the fronts are read.

        Raises ``torch.linalg.LinAlgError`` on an exactly singular pivot block (J singular,
        or a pivot order that the static ordering cannot avoid)."""
        c, h, w = shape
        n = c * h * w
        block = _pixel_blocks(J, c, h * w)
        dev = J.device if isinstance(J, torch.Tensor) else J.kernels.device
        chan = torch.arange(c, device=dev)[:, None] * (h * w)
        pos = torch.full((n,), -1, dtype=torch.long, device=dev)
        fronts: list[_Front] = []
        # Update matrices (Schur complements on a front's halo) wait for their parent; in
        # postorder a node's children are the last ones pushed.
        stack: list[tuple[torch.Tensor, torch.Tensor]] = []
        for sep_pix, halo_pix, children in dissection(h, w, reach, c, leaf, device=dev):
            s = (chan + sep_pix[None, :]).flatten()
            b = (chan + halo_pix[None, :]).flatten()
            idx = torch.cat([s, b])
            k = s.numel()
            F = torch.zeros(idx.numel(), idx.numel(), dtype=dtype, device=dev)
            F[:k, :k] = block(sep_pix, sep_pix)
            F[k:, :k] = block(halo_pix, sep_pix)
            F[:k, k:] = block(sep_pix, halo_pix)
            pos[idx] = torch.arange(idx.numel(), device=dev)
            for _ in range(children):  # extend-add: children's halos lie in this front
                vars_, upd = stack.pop()
                p = pos[vars_]
                F[p[:, None], p[None, :]] += upd
            pos[idx] = -1
            lu, piv = lu_factor_checked(F[:k, :k])
            P, L, U = torch.lu_unpack(lu, piv)
            perm = P.argmax(dim=0)
            u_sb = torch.linalg.solve_triangular(
                L, F[:k, k:][perm], upper=False, unitriangular=True
            )
            l_bs = torch.linalg.solve_triangular(U, F[k:, :k], upper=True, left=False)
            stack.append((b, F[k:, k:].addmm_(l_bs, u_sb, alpha=-1)))
            fronts.append(_Front(s, b, lu, perm, u_sb, l_bs))
        return cls(fronts, n, dtype)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """X with J x_i = b_i for the rows b_i of ``rhs`` (k, n)."""
        x = rhs.reshape(-1, self.n).T.to(self.dtype).clone()
        for fr in self.fronts:  # L: children first
            y = torch.linalg.solve_triangular(
                fr.lu, x[fr.s][fr.perm], upper=False, unitriangular=True
            )
            x[fr.s] = y
            if fr.b.numel():
                x[fr.b] -= fr.l_bs @ y
        for fr in reversed(self.fronts):  # U: parents first
            y = x[fr.s]
            if fr.b.numel():
                y = y - fr.u_sb @ x[fr.b]
            x[fr.s] = torch.linalg.solve_triangular(fr.lu, y, upper=True)
        return x.T.reshape(rhs.shape)

    def solve_t(self, rhs: torch.Tensor) -> torch.Tensor:
        """X with J^T x_i = b_i for the rows b_i of ``rhs`` (k, n)."""
        x = rhs.reshape(-1, self.n).T.to(self.dtype).clone()
        for fr in self.fronts:  # U^T: children first
            z = torch.linalg.solve_triangular(fr.lu.mT, x[fr.s], upper=False)
            x[fr.s] = z
            if fr.b.numel():
                x[fr.b] -= fr.u_sb.mT @ z
        for fr in reversed(self.fronts):  # L^T P^T: parents first
            z = x[fr.s]
            if fr.b.numel():
                z = z - fr.l_bs.mT @ x[fr.b]
            y = torch.linalg.solve_triangular(fr.lu.mT, z, upper=True, unitriangular=True)
            out = torch.empty_like(y)
            out[fr.perm] = y
            x[fr.s] = out
        return x.T.reshape(rhs.shape)
