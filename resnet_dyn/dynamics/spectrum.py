"""Singular values of unit and stage linearizations: dense, extreme (Krylov) and distribution (SLQ).

    >>> sigma = dense_singular_values(jacobian(f).matrix)            # all, descending
    >>> ext = extreme_singular_values(f, k=5, which="both", vectors=True)
    >>> ext["largest"].values, ext["smallest"].residuals, ext["largest"].vectors.shape
    >>> quad = singular_value_quadrature(f, probes=16, steps=80)    # for fractions

Rectangular maps: J (dim_out x dim_in) has ``min(dim_in, dim_out)`` singular values.
The matrix-free methods work on the Gram operator of the smaller side, ``J^T J``
(when dim_in <= dim_out) or ``J J^T``, whose eigenvalues are exactly those sigma^2;
the larger side's Gram operator would add ``|dim_in - dim_out|`` structural zeros
that are not singular values. Residuals are those of that Gram operator,
``||G v - sigma^2 v||``. Working with sigma^2 costs accuracy at the small end: an
eigenvalue error e gives a sigma error of about e / (2 sigma), or sqrt(e) near 0.
Float32 products put e near 1e-7 * sigma_max^2, i.e. sigma ~ 1e-3 for a zero singular
value, the very tolerance of ``frac_zero``; so the matrix-free methods evaluate a
float64 copy of the map by default (``dtype=``), at about twice the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resnet_dyn.dynamics.jacobian import jvp_op, vjp_op
from resnet_dyn.dynamics.krylov import (
    EigenPairs,
    MatVec,
    Quadrature,
    block_lanczos,
    lanczos_quadrature,
)
from resnet_dyn.dynamics.maps import UnitMap


def dense_singular_values(
    J: torch.Tensor, *, vectors: bool = False, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All ``min(m, n)`` singular values of ``J`` (descending) and, if asked, right singular
    vectors as rows.

    Square J: LAPACK SVD in ``dtype`` (default J's). Rectangular J: eigenvalues of the
    smaller Gram matrix in float64, because LAPACK's SVD of a wide 4096 x 8192 matrix is
    ~15x slower than forming ``J J^T`` and ``eigvalsh``; float64 keeps sigma accurate to
    ~1e-8 * sigma_max even near 0.
    """
    if J.shape[0] == J.shape[1]:
        J = J if dtype is None else J.to(dtype)
        if vectors:
            _, s, vh = torch.linalg.svd(J)
            return s, vh
        return torch.linalg.svdvals(J), None
    J = J.to(torch.float64)
    right = J.shape[1] < J.shape[0]
    G = J.T @ J if right else J @ J.T
    if not vectors:
        return torch.linalg.eigvalsh(G).flip(0).clamp_min(0).sqrt(), None
    lam, U = torch.linalg.eigh(G)
    s, U = lam.flip(0).clamp_min(0).sqrt(), U.flip(1)
    return s, U.T if right else _right_vectors(J.T @ U, s)


def _right_vectors(jt_u: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Rows v_i = J^T u_i / sigma_i from the columns of ``J^T U``; zero where sigma is 0."""
    inv = torch.where(sigma > 0, 1 / sigma.clamp_min(1e-300), 0.0)
    return (jt_u * inv).T


def gram_side(f: UnitMap) -> str:
    """Which Gram operator: "right" (J^T J) when dim_in <= dim_out, else "left" (J J^T)."""
    return "right" if f.dim_in <= f.dim_out else "left"


def gram_operator(f: UnitMap) -> tuple[MatVec, int]:
    """The Gram operator of the smaller side on float64 row blocks, and its dimension."""
    jv, vj = jvp_op(f), vjp_op(f)
    if gram_side(f) == "right":
        first, second, shape = jv, vj, f.in_shape
    else:
        first, second, shape = vj, jv, f.out_shape

    def matvec(V: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = second(first(V.to(f.dtype).view(-1, *shape)))
        return out.reshape(V.shape).to(torch.float64)

    return matvec, shape.numel()


@dataclass
class SingularTriplets:
    """Extreme singular values (from the extreme inwards), the Gram residuals
    ``||G v - sigma^2 v||`` per value, right singular vectors ``(k, *in_shape)`` if asked."""

    values: torch.Tensor
    residuals: torch.Tensor
    vectors: torch.Tensor | None
    converged: bool
    matvecs: int


def extreme_singular_values(
    f: UnitMap,
    k: int = 1,
    which: str = "both",
    *,
    vectors: bool = False,
    tol: float | None = None,
    block_size: int | None = None,
    max_matvecs: int = 4000,
    dtype: torch.dtype = torch.float64,
    start: torch.Tensor | None = None,
    seed: int = 0,
) -> dict[str, SingularTriplets]:
    """The ``k`` largest and/or smallest singular values of J(f), by block Lanczos on its Gram.

    ``which``: "largest", "smallest" or "both"; the result maps each asked end to its
    :class:`SingularTriplets`. ``tol`` bounds the Gram residual relative to sigma_max^2;
    by default 1e-9 in float64 and 1e-5 in float32 (whose products carry ~1e-7 relative
    noise). ``start``: vectors of the Gram operator's space to begin the Krylov space
    with. Right singular vectors of a "left" Gram operator are ``J^T u / sigma`` (zero
    where sigma is 0).
    """
    f = f.to(dtype)
    if tol is None:
        tol = 1e-9 if f.dtype == torch.float64 else 1e-5
    matvec, n = gram_operator(f)
    pairs = block_lanczos(
        matvec,
        n,
        k,
        which,
        block_size=block_size,
        tol=tol,
        max_matvecs=max_matvecs,
        start=start,
        seed=seed,
    )
    return {end: to_singular(f, p, vectors) for end, p in pairs.items()}


def to_singular(f: UnitMap, pairs: EigenPairs, vectors: bool = False) -> SingularTriplets:
    """Eigenpairs of the Gram operator of J(f) as singular values (and right vectors)."""
    sigma = pairs.values.clamp_min(0).sqrt()
    vecs = None
    if vectors and gram_side(f) == "right":
        vecs = pairs.vectors.view(-1, *f.in_shape)
    elif vectors:
        with torch.no_grad():
            u = pairs.vectors.to(f.dtype).view(-1, *f.out_shape)
            v = vjp_op(f)(u).reshape(u.shape[0], -1).to(torch.float64)
        vecs = _right_vectors(v.T, sigma).view(-1, *f.in_shape)
    return SingularTriplets(sigma, pairs.residuals, vecs, pairs.converged, pairs.matvecs)


def singular_value_quadrature(
    f: UnitMap,
    probes: int = 16,
    steps: int = 80,
    *,
    dtype: torch.dtype = torch.float64,
    tol: float = 1e-6,
    seed: int = 0,
) -> Quadrature:
    """SLQ of the Gram operator of J(f): nodes are sigma^2, see :class:`Quadrature`.

    Resolution: ``steps`` = m nodes per probe, about sigma_max^2 / m apart inside the
    spectrum (closer at its ends). A cluster of exactly equal singular values (the
    sigma = 1 of directions that the residual branch and its transpose both
    annihilate, the zeros of masked rows) becomes one node carrying the cluster's
    weight, so its fraction is estimated well. Mass spread continuously across an end
    of a counted interval (a peak near, but not at, sigma = 1 against
    ``|sigma - 1| < 1e-3``, or the threshold ``1 + tol`` of ``frac_gt_one`` inside
    such a peak) moves to one side by whole nodes: a bias of several percent at
    m = 80, not in the error bars; :meth:`Quadrature.unresolved` gives the weight of
    such nodes. ``quad.extremes`` holds the extreme Ritz pairs (sigma^2) over all probes,
    converged when their residual is at most ``tol * sigma_max^2``; pass them through
    :func:`to_singular`. ``dtype``: see the module docstring.
    """
    matvec, n = gram_operator(f.to(dtype))
    return lanczos_quadrature(matvec, n, probes, steps, tol=tol, seed=seed)
