"""Krylov methods for a symmetric positive semi-definite operator given only by block products.

``matvec`` maps a block of row vectors ``(b, n)`` to ``(b, n)`` (float64); in this
package it is ``v -> J^T J v`` or ``u -> J J^T u`` built from vmapped JVPs/VJPs.

* :func:`block_lanczos`: extreme eigenpairs with full reorthogonalisation, thick
  restarts and a residual ``||A y - theta y||`` per pair. Blocks matter here:
  spectra of residual units are clustered (many eigenvalues exactly 1), and a
  single-vector Krylov space holds only one copy of a repeated eigenvalue.
* :func:`lanczos_quadrature`: stochastic Lanczos quadrature (SLQ), independent
  Lanczos runs from Rademacher probes, batched; each run's tridiagonal matrix
  gives Gauss quadrature nodes (its eigenvalues) and weights (squared first
  components of its eigenvectors), a discrete approximation of the spectral
  measure seen from that probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]

# Relative size below which a new Krylov direction counts as already in the space.
_BREAKDOWN = 1e-10
# The same for block directions found through a Gram matrix, which squares sizes: below
# ~sqrt(machine epsilon) they are rounding noise.
_BLOCK_BREAKDOWN = 1e-7


def _project_out(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Rows of ``w`` minus their components along the orthonormal rows of ``basis``, twice
    (one classical Gram-Schmidt pass loses orthogonality in floating point; two suffice)."""
    if basis.shape[-2] == 0:
        return w
    for _ in range(2):
        w = w - (w @ basis.mT) @ basis
    return w


def _orthonormal_span(w: torch.Tensor, floor: float) -> torch.Tensor:
    """Orthonormal rows spanning the rows of ``w``, dropping directions of size <= ``floor``.

    From the eigenvectors of the small Gram matrix ``w w^T``, much cheaper than an SVD of
    a few rows of length n; that route loses orthogonality in proportion to the spread
    of the sizes, so a second pass on the (now nearly orthonormal) rows restores it.
    """
    for lo in (floor, 0.5):
        lam, u = torch.linalg.eigh(w @ w.T)
        keep = lam > lo**2
        w = (u[:, keep].T @ w) / lam[keep].sqrt()[:, None]
    return w


def _new_directions(
    w: torch.Tensor, basis: torch.Tensor, b: int, gen: torch.Generator
) -> torch.Tensor:
    """Up to ``b`` orthonormal rows spanning the part of ``w`` outside ``basis``.

    Vanishing directions (an invariant subspace was reached) are replaced by random
    ones, so that an eigenvalue of multiplicity > 1 still gets one basis vector per copy.
    """
    n = w.shape[1]
    b = min(b, n - basis.shape[0])
    scale = w.norm(dim=1).max().item()
    out = _orthonormal_span(_project_out(w, basis), _BLOCK_BREAKDOWN * scale)[:b]
    for _ in range(3):
        if out.shape[0] >= b:
            break
        r = torch.randn(b - out.shape[0], n, generator=gen, dtype=w.dtype, device=w.device)
        r = _project_out(_project_out(r, basis), out)
        out = torch.cat([out, _orthonormal_span(r, _BLOCK_BREAKDOWN * n**0.5)])
    return out


@dataclass
class EigenPairs:
    """Ritz values, their Ritz vectors as rows and residual norms ||A y - theta y||."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    converged: bool
    matvecs: int


_ENDS = {"both": ("largest", "smallest"), "largest": ("largest",), "smallest": ("smallest",)}


def block_lanczos(
    matvec: MatVec,
    n: int,
    k: int,
    which: str = "both",
    *,
    block_size: int | None = None,
    tol: float = 1e-6,
    max_matvecs: int = 4000,
    max_basis: int | None = None,
    start: torch.Tensor | None = None,
    seed: int = 0,
    check_every: int = 32,
    device: torch.device | str | None = None,
) -> dict[str, EigenPairs]:
    """The ``k`` largest and/or smallest eigenpairs of a symmetric PSD operator on R^n.

    ``which``: "largest", "smallest" or "both"; returns ``{"largest": ..., "smallest": ...}``
    with the ends asked for, each ordered from the extreme inwards. Converged when every
    wanted residual is at most ``tol * theta_max``. ``block_size`` defaults to ``k``: a
    block must be as large as the multiplicity it should resolve, and smaller blocks
    reach a higher polynomial degree per product. When the basis would exceed
    ``max_basis`` rows (default 600, more if k needs it) it restarts from the Ritz
    vectors of the wanted end(s), a quarter of the basis each (thick restart),
    continued along their residuals. ``start``: rows to begin with (e.g. approximate
    eigenvectors from :func:`lanczos_quadrature`), completed by random ones to a block.
    ``check_every``: rows added between Rayleigh-Ritz checks at first (later a quarter of
    the basis); small when products are expensive (shift-invert solves) and the basis
    small. ``device``: where the Krylov vectors live (that of ``matvec``'s operator;
    default: ``start``'s, else the CPU).
    """
    if which not in _ENDS:
        raise ValueError(f"which: expected largest, smallest or both, got {which!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    ends = _ENDS[which]
    k = min(k, n)
    b = min(n, block_size or k)
    # Room for the kept Ritz vectors of each end and a few blocks beyond them.
    max_basis = max(max_basis or 600, 3 * (k + b) * len(ends))
    # A restart keeps a quarter of the basis per end: keeping only the wanted vectors
    # throws away the Krylov information that makes Lanczos converge.
    keep = max(k + b, max_basis // 4)
    # Rayleigh-Ritz costs O(m^3): checking when the basis has grown by a quarter (or 32
    # rows) keeps it below the cost of the products, at <= 25% extra products.
    next_check = check_every
    device = _device(device, start)
    gen = torch.Generator(device).manual_seed(seed)
    # Preallocated so that growing the basis does not copy it every step.
    Qbuf = torch.zeros(max_basis + b, n, dtype=torch.float64, device=device)
    AQbuf = torch.zeros_like(Qbuf)
    Hbuf = torch.zeros(max_basis + b, max_basis + b, dtype=torch.float64, device=device)
    m = matvecs = 0
    V = torch.randn(b, n, generator=gen, dtype=torch.float64, device=device)
    if start is not None:
        V = torch.cat([start.reshape(-1, n).to(device=device, dtype=torch.float64), V])[:b]
    V = _new_directions(V, Qbuf[:0], b, gen)
    while True:
        W = matvec(V)
        r = V.shape[0]
        Hbuf[:m, m : m + r] = Qbuf[:m] @ W.T
        Hbuf[m : m + r, m : m + r] = V @ W.T
        Hbuf[m : m + r, :m] = Hbuf[:m, m : m + r].T
        Qbuf[m : m + r], AQbuf[m : m + r] = V, W
        m, matvecs = m + r, matvecs + r
        full, last = m + b > max_basis, m >= n or matvecs >= max_matvecs
        ritz = None
        if full or last or m >= next_check:
            next_check = max(m + check_every, m * 5 // 4)
            ritz = _Ritz(Hbuf[:m, :m], Qbuf[:m], AQbuf[:m], k, ends, tol)
            if last or ritz.converged():
                return ritz.pairs(exact=m >= n, matvecs=matvecs)
            if full:
                kept = _restart_set(m, keep, ends, device)
                m = kept.shape[0]
                S = ritz.S[:, kept]
                Qbuf[:m], AQbuf[:m] = S.T @ Qbuf[: S.shape[0]], S.T @ AQbuf[: S.shape[0]]
                Hbuf[:m, :m] = torch.diag(ritz.theta[kept])
                W = AQbuf[:m] - ritz.theta[kept, None] * Qbuf[:m]
                next_check = m + check_every
        V = _new_directions(W, Qbuf[:m], b, gen)
        if V.shape[0] == 0:  # no direction left: the basis spans R^n, Ritz pairs are exact
            ritz = ritz or _Ritz(Hbuf[:m, :m], Qbuf[:m], AQbuf[:m], k, ends, tol)
            return ritz.pairs(exact=True, matvecs=matvecs)


class _Ritz:
    """Rayleigh-Ritz on the basis Q (rows) with H = Q A Q^T: the wanted pairs and residuals."""

    def __init__(
        self, H: torch.Tensor, Q: torch.Tensor, AQ: torch.Tensor, k: int, ends: tuple, tol: float
    ) -> None:
        self.theta, self.S = torch.linalg.eigh((H + H.T) / 2)
        m, dev = self.theta.shape[0], H.device
        order = {
            "largest": torch.arange(m - 1, m - 1 - min(k, m), -1, device=dev),
            "smallest": torch.arange(min(k, m), device=dev),
        }
        self.wanted = {e: order[e] for e in ends}
        self.idx = torch.cat(list(self.wanted.values())).unique()
        Sw = self.S[:, self.idx]
        self.Y = Sw.T @ Q
        self.res = (Sw.T @ AQ - self.theta[self.idx, None] * self.Y).norm(dim=1)
        self.limit = tol * max(self.theta.abs().max().item(), 1e-300)

    def converged(self) -> bool:
        return bool((self.res <= self.limit).all())

    def pairs(self, exact: bool, matvecs: int) -> dict[str, EigenPairs]:
        out = {}
        for end, sel in self.wanted.items():
            pos = torch.searchsorted(self.idx, sel)
            ok = exact or bool((self.res[pos] <= self.limit).all())
            out[end] = EigenPairs(self.theta[sel], self.Y[pos], self.res[pos], ok, matvecs)
        return out


def _restart_set(m: int, keep: int, ends: tuple[str, ...], device: torch.device) -> torch.Tensor:
    """Indices of the Ritz pairs kept at a restart: ``keep`` from each wanted end."""
    parts = []
    if "largest" in ends:
        parts.append(torch.arange(max(0, m - keep), m, device=device))
    if "smallest" in ends:
        parts.append(torch.arange(min(keep, m), device=device))
    return torch.cat(parts).unique()


def _device(device: torch.device | str | None, like: torch.Tensor | None) -> torch.device:
    """``device`` if given, else that of ``like``, else the CPU."""
    if device is not None:
        return torch.device(device)
    return like.device if like is not None else torch.device("cpu")


@dataclass
class Quadrature:
    """Per probe p: Gauss nodes ``nodes[p]`` (Ritz values of A) with ``weights[p]`` summing
    to 1, and ``residuals[p]``, ``||A y - theta y||`` of each node's Ritz vector y.
    ``extremes``: the largest and the smallest Ritz pair over all probes, which are
    often converged eigenpairs already (see :func:`lanczos_quadrature`)."""

    nodes: torch.Tensor
    weights: torch.Tensor
    residuals: torch.Tensor
    extremes: dict[str, EigenPairs]

    def mass(self, lo: float, hi: float) -> torch.Tensor:
        """Per probe: the quadrature's estimate of the fraction of eigenvalues in (lo, hi)."""
        return (self.weights * ((self.nodes > lo) & (self.nodes < hi))).sum(1)

    def unresolved(self, lo: float, hi: float) -> torch.Tensor:
        """Per probe: the weight of nodes that cannot be placed on one side of lo or hi.

        A Ritz vector with residual r has at most (r / d)^2 of its spectral mass
        farther than d from its Ritz value (Chebyshev), so a node at distance d from
        the nearest end contributes ``weight * min(1, (r / d)^2)``. A heuristic size of
        the quadrature bias of :meth:`mass` (cross terms between nodes are ignored): a
        converged node (an exact cluster) contributes ~0, a node standing for a
        stretch of continuous spectrum across an end contributes its weight.
        """
        dist = torch.minimum((self.nodes - lo).abs(), (self.nodes - hi).abs())
        ratio = self.residuals / dist.clamp_min(1e-300)
        return (self.weights * ratio.square().clamp(max=1.0)).sum(1)


def lanczos_quadrature(
    matvec: MatVec,
    n: int,
    probes: int = 16,
    steps: int = 80,
    *,
    tol: float = 1e-6,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Quadrature:
    """SLQ: ``steps`` Lanczos steps from each of ``probes`` Rademacher vectors, batched.

    For a unit probe q, ``q^T f(A) q ~= sum_j weights[j] f(nodes[j])``; with
    ``q = z / sqrt(n)``, ``z`` Rademacher, its mean over probes estimates
    ``tr f(A) / n``. A run is exact once ``steps`` reaches the number of distinct
    eigenvalues; a breakdown (invariant subspace) is continued with a random
    direction, whose nodes get weight zero because T splits into blocks there.
    The extreme Ritz pairs count as converged when their residual is at most
    ``tol * theta_max``. ``device``: where the Lanczos vectors live (default: the CPU).
    """
    if not isinstance(probes, int) or probes < 2:
        raise ValueError(f"probes: expected an integer >= 2 (error bars need two), got {probes!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    steps = min(steps, n)
    device = _device(device, None)
    gen = torch.Generator(device).manual_seed(seed)
    z = torch.randint(0, 2, (probes, n), generator=gen, dtype=torch.float64, device=device)
    z = z * 2 - 1
    basis = torch.zeros(probes, steps, n, dtype=torch.float64, device=device)
    alpha = torch.zeros(probes, steps, dtype=torch.float64, device=device)
    beta = torch.zeros(probes, steps, dtype=torch.float64, device=device)
    q = z / n**0.5
    for j in range(steps):
        basis[:, j] = q
        w = matvec(q)
        alpha[:, j] = (q * w).sum(1)
        scale = w.norm(dim=1)
        # The three-term recurrence removes the large components; what rounding leaves
        # along older vectors is tiny, so one pass against the basis restores orthogonality
        # (a second one, as in _project_out, would double this memory-bound step).
        w = w - alpha[:, j, None] * q
        if j:
            w = w - beta[:, j - 1, None] * basis[:, j - 1]
        B = basis[:, : j + 1]
        w = w - torch.bmm(torch.bmm(w[:, None, :], B.mT), B)[:, 0]
        norm = w.norm(dim=1)
        broke = norm <= _BREAKDOWN * scale.clamp_min(1e-300)
        beta[:, j] = torch.where(broke, 0.0, norm)
        if j + 1 == steps:
            break
        for p in broke.nonzero().flatten().tolist():
            w[p] = _new_directions(torch.zeros_like(w[p : p + 1]), basis[p, : j + 1], 1, gen)[0]
            norm[p] = 1.0
        q = w / norm[:, None]
    off = beta[:, :-1]
    T = torch.diag_embed(alpha) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    nodes, vecs = torch.linalg.eigh(T)
    # Ritz residual of node j: beta_m |s_mj| (Lanczos relation A Q = Q T + beta_m q e_m^T).
    residuals = beta[:, -1:] * vecs[:, -1, :].abs()
    limit = tol * nodes.abs().max().item()
    extremes = {}
    for end, col in (("largest", steps - 1), ("smallest", 0)):
        p = int(nodes[:, col].argmax() if end == "largest" else nodes[:, col].argmin())
        res = residuals[p, col : col + 1]
        ritz = vecs[p, :, col] @ basis[p]
        ok = bool(res.item() <= limit)
        extremes[end] = EigenPairs(nodes[p, col : col + 1], ritz[None], res, ok, probes * steps)
    return Quadrature(nodes, vecs[:, 0, :] ** 2, residuals, extremes)
