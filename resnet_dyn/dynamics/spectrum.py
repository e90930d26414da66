"""Singular values of unit and stage linearizations: dense, extreme (Krylov) and distribution (SLQ).

    >>> import torch
    >>> from resnet_dyn.dynamics.maps import unit_map
    >>> from resnet_dyn.models import CifarResNet
    >>> _ = torch.manual_seed(0)
    >>> net = CifarResNet(depth=8, input_shape=(3, 4, 4)).eval()
    >>> f = unit_map(net, 0, torch.randn(16, 4, 4), "sum")          # J: 256 x 256
    >>> sigma, _ = dense_singular_values(jacobian(f).matrix)         # all, descending
    >>> ext = extreme_singular_values(f, k=5, which="both", vectors=True)
    >>> ext["largest"].values.shape, ext["smallest"].residuals.shape, ext["largest"].vectors.shape
    (torch.Size([5]), torch.Size([5]), torch.Size([5, 16, 4, 4]))
    >>> torch.allclose(ext["largest"].values, sigma[:5].double())
    True
    >>> quad = singular_value_quadrature(f, probes=16, steps=80)    # for fractions
    >>> quad.nodes.shape           # per probe, 80 nodes (sigma^2)
    torch.Size([16, 80])
    >>> ext["smallest"].method     # "shift_invert" (square maps up to n = 4096) or "gram"
    'shift_invert'

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

from resnet_dyn.dynamics.gridlu import GridLU, lu_factor_checked
from resnet_dyn.dynamics.jacobian import (
    LocalJacobian,
    jacobian,
    jvp_op,
    local_jacobian,
    vjp_op,
)
from resnet_dyn.dynamics.krylov import (
    EigenPairs,
    MatVec,
    Quadrature,
    block_lanczos,
    lanczos_quadrature,
)
from resnet_dyn.dynamics.maps import UnitMap
from resnet_dyn.dynamics.window import NonLocalMap, local_window
from resnet_dyn.errors import ConfigError

# Singular vectors of shapes with min(m, n) at least this share of max(m, n) come from
# LAPACK's SVD: a 3191 x 4096 J (a unit map's nonzero rows) took 1.3 s there against 2.1 s
# for the float64 Gram route on an Intel Xeon, which wins on flatter shapes (2048 x 4096:
# 0.5 s against 1.7 s; 2048 x 8192: 0.75 s against 4.3 s).
SVD_MIN_ASPECT = 0.7
# Values alone of matrices up to this size come from LAPACK's SVD; larger ones always from
# the Gram route: on an AMD EPYC, ``svdvals`` of a trained-like 4096 x 4096 float32 J took
# 10.9 s (16.6 s in float64) against 1.6 s for J J^T and 3.4 s for its float64 eigvalsh,
# and the Gram route's float64 is the more accurate of the two near sigma = 0 and 1.
SVD_VALUES_MAX = 512


def dense_singular_values(
    J: torch.Tensor, *, vectors: bool = False, dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """All ``min(m, n)`` singular values of ``J`` (descending) and, if asked, right singular
    vectors as rows.

    Values of a small J (``SVD_VALUES_MAX``), or values and vectors of a square or nearly
    square J (``SVD_MIN_ASPECT``): LAPACK SVD in ``dtype`` (default J's). Otherwise the
    eigenvalues of the smaller Gram matrix in float64, which keeps sigma accurate to
    ~1e-8 * sigma_max even near 0.
    """
    small = min(J.shape) <= SVD_VALUES_MAX
    if (small or vectors) and min(J.shape) >= SVD_MIN_ASPECT * max(J.shape):
        J = J if dtype is None else J.to(dtype)
        if vectors:
            _, s, vh = torch.linalg.svd(J, full_matrices=False)
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
    """Rows v_i = J^T u_i / sigma_i from the columns of ``J^T U``; zero where sigma is 0 to
    the Gram route's rounding (sigma_i^2 <= sigma_max^2 * n * eps: dividing by it would give
    noise, not a vector)."""
    tiny = sigma.max().clamp_min(0) * (max(jt_u.shape) * torch.finfo(jt_u.dtype).eps) ** 0.5
    inv = torch.where(sigma > tiny, 1 / sigma.clamp_min(1e-300), 0.0)
    return (jt_u * inv).T


def gram_side(f: UnitMap) -> str:
    """Which Gram operator: "right" (J^T J) when dim_in <= dim_out, else "left" (J J^T)."""
    return "right" if f.dim_in <= f.dim_out else "left"


def zero_rows(f: UnitMap, seed: int = 0) -> torch.Tensor:
    """Boolean mask (dim_out,) of the rows of J(f) that are exactly zero.

    Such rows (outputs behind a ReLU that is off: the unit map's ``D J_sum``) give exact
    zeros in ``J t`` for every tangent; a nonzero row does so for a Gaussian ``t`` with
    probability 0, and for two independent ones never in practice. One batched JVP.
    """
    gen = torch.Generator(f.x.device).manual_seed(seed)
    t = torch.randn(2, *f.in_shape, generator=gen, dtype=torch.float64, device=f.x.device)
    t = t.to(f.dtype)
    with torch.no_grad():
        y = jvp_op(f)(t).reshape(2, -1)
    return (y == 0).all(0)


def gram_operator(
    f: UnitMap, rows: torch.Tensor | None = None, *, repeated: bool | None = None
) -> tuple[MatVec, int]:
    """The Gram operator of the smaller side on float64 row blocks, and its dimension.

    ``rows``: indices of output rows; the operator is then ``J_R J_R^T`` of those rows
    of J alone (dimension ``len(rows)``), e.g. the rows that are not structurally zero.
    ``repeated``: trace the linearization once (see :func:`jvp_op`); by default for
    float64 maps, whose products are slow enough to pay for the ~0.1 s of tracing.
    """
    repeated = f.dtype == torch.float64 if repeated is None else repeated
    jv, vj = jvp_op(f, repeated=repeated), vjp_op(f)
    if rows is not None:
        rows = rows.to(device=f.x.device, dtype=torch.long)

        def restricted(U: torch.Tensor) -> torch.Tensor:
            full = U.new_zeros(U.shape[0], f.dim_out)
            full[:, rows] = U
            with torch.no_grad():
                out = jv(vj(full.to(f.dtype).view(-1, *f.out_shape)))
            return out.reshape(U.shape[0], -1)[:, rows].to(torch.float64)

        return restricted, rows.numel()
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
    ``||G v - sigma^2 v||`` per value, right singular vectors ``(k, *in_shape)`` if asked,
    and how they were found (``method``: "gram", "shift_invert" or "zero_rows")."""

    values: torch.Tensor
    residuals: torch.Tensor
    vectors: torch.Tensor | None
    converged: bool
    matvecs: int
    method: str = "gram"


# Largest square map whose smallest singular values "auto" finds by shift-invert: forming
# and factoring its J takes well under a second there, while the smallest end of the
# Gram operator, clustered against sigma_max^2, takes thousands of products.
SHIFT_INVERT_MAX = 4096  # square maps up to this size: a dense LU of J
# Stride-1 conv maps up to this size: the nested-dissection LU (the 16,384-dimensional
# units of a CIFAR ResNet's first stage take ~1 s; J is never formed).
GRID_SHIFT_INVERT_MAX = 16384


def _grid_map(f: UnitMap) -> bool:
    """Whether J(f) is a square stride-1 conv map, which the nested-dissection LU factors."""
    try:
        window = local_window(f)
    except NonLocalMap:
        return False
    return window.stride == (1, 1) and f.in_shape == f.out_shape


def shift_invert_applies(
    f: UnitMap,
    dense_max: int = SHIFT_INVERT_MAX,
    grid_max: int = GRID_SHIFT_INVERT_MAX,
) -> bool:
    """Whether ``method="auto"`` finds the smallest end of J(f) by shift-invert: square maps
    up to ``dense_max`` (a dense LU) and square stride-1 conv maps up to ``grid_max`` (the
    nested-dissection LU)."""
    if f.dim_in != f.dim_out:
        return False
    return f.dim_in <= dense_max or (f.dim_in <= grid_max and _grid_map(f))


EXTREME_METHODS = ("auto", "gram", "shift_invert")


def extreme_singular_values(
    f: UnitMap,
    k: int = 1,
    which: str = "both",
    *,
    vectors: bool = False,
    tol: float | None = None,
    block_size: int | None = None,
    max_matvecs: int = 4000,
    dtype: torch.dtype | None = None,
    start: torch.Tensor | None = None,
    seed: int = 0,
    method: str = "auto",
    local: LocalJacobian | None = None,
    shift_invert_max: int = SHIFT_INVERT_MAX,
    grid_shift_invert_max: int = GRID_SHIFT_INVERT_MAX,
) -> dict[str, SingularTriplets]:
    """The ``k`` largest and/or smallest singular values of J(f), by block Lanczos.

    ``which``: "largest", "smallest" or "both"; the result maps each asked end to its
    :class:`SingularTriplets`. ``method``: "gram" (Lanczos on the Gram operator from
    JVP/VJP products), "shift_invert" (the smallest end of a square map by Lanczos on
    ``(J^T J)^-1``, through an LU of J formed by coloring: the smallest sigma become the
    largest, well separated eigenvalues; then Rayleigh-Ritz with J itself), or "auto":
    shift-invert for the smallest end of square maps with n <= ``SHIFT_INVERT_MAX`` and of
    stride-1 conv maps with n <= ``GRID_SHIFT_INVERT_MAX`` (:func:`shift_invert_applies`),
    gram otherwise. ``tol`` bounds the Lanczos residual relative to the largest Ritz
    value (sigma_max^2, or 1/sigma_min^2 for shift-invert); by default 1e-9 in float64
    and 1e-3 in float32 (values converge with the square of it). ``dtype`` of the
    Gram products: float64 by default, but a float32 map asked only for its largest end
    stays float32 (twice as fast; errors are ~1e-7 relative to sigma_max, i.e. to the
    values themselves). ``start``: vectors of the Gram operator's space to begin the
    Krylov space with. Residuals are those of the Gram operator. Right singular vectors
    of a "left" Gram operator are ``J^T u / sigma`` (zero where sigma is 0). ``local``:
    J's local kernels in the map's own dtype if already at hand (shift-invert factors
    them instead of coloring the map again). ``shift_invert_max`` and
    ``grid_shift_invert_max``: the sizes up to which ``auto`` uses shift-invert.
    """
    if which not in ("both", "largest", "smallest"):
        raise ConfigError("which", "largest, smallest or both", which)
    if method not in EXTREME_METHODS:
        raise ConfigError("method", " | ".join(EXTREME_METHODS), method)
    if dtype is None:
        dtype = f.dtype if which == "largest" else torch.float64
    native, f = f, f.to(dtype)
    # Shift-invert ends in a Rayleigh-Ritz step with J, exact to the subspace's squared
    # error: its Lanczos needs no tighter default stop than 1e-6.
    invert_tol = 1e-6 if tol is None else tol
    if tol is None:
        # Ritz values converge with the square of the residual: 1e-3 leaves ~1e-6 relative
        # error in float32, about its rounding; float64 has room for a tighter stop.
        tol = 1e-9 if f.dtype == torch.float64 else 1e-3
    ends = ("largest", "smallest") if which == "both" else (which,)
    square = f.dim_in == f.dim_out
    invert = "smallest" in ends and (
        method == "shift_invert"
        or (method == "auto" and shift_invert_applies(f, shift_invert_max, grid_shift_invert_max))
    )
    if invert and not square:
        raise ConfigError("method", "gram or auto for a rectangular map", method)
    out = {}
    rest = [e for e in ends if not (invert and e == "smallest")]
    if rest:
        matvec, n = gram_operator(f)
        pairs = block_lanczos(
            matvec,
            n,
            k,
            "both" if len(rest) == 2 else rest[0],
            block_size=block_size,
            tol=tol,
            max_matvecs=max_matvecs,
            start=start,
            seed=seed,
            device=f.x.device,
        )
        out = {end: to_singular(f, p, vectors) for end, p in pairs.items()}
    if invert:
        out["smallest"] = _shift_invert(
            f, native, k, invert_tol, block_size, max_matvecs, seed, vectors, local, tol
        )
    return out


def _shift_invert(
    f: UnitMap,
    native: UnitMap,
    k: int,
    tol: float,
    block_size: int | None,
    max_matvecs: int,
    seed: int,
    vectors: bool,
    local: LocalJacobian | None = None,
    fallback_tol: float = 1e-9,
) -> SingularTriplets:
    """The k smallest singular values of a square J(f) from Lanczos on (J^T J)^-1.

    J is formed from ``native`` (the map in its own dtype, float32 for a trained net:
    coloring in float64 costs 4x as much) and factored in float64; the final
    Rayleigh-Ritz step uses ``f`` itself. Where J or a pivot block is singular or nearly
    so, block Lanczos on J^T J runs instead with the caller's settings (``fallback_tol``:
    the caller's Gram stop)."""
    try:
        solve, solve_t = _factor(f, native, local)

        def inverse_gram(V: torch.Tensor) -> torch.Tensor:
            return solve(solve_t(V))

        pairs = block_lanczos(
            inverse_gram,
            f.dim_in,
            k,
            "largest",
            block_size=block_size,
            tol=tol,
            max_matvecs=max_matvecs,
            seed=seed,
            check_every=block_size or k,
            device=f.x.device,
        )["largest"]
    except torch.linalg.LinAlgError:  # J (or a pivot block) singular, or nearly so
        # Plain Lanczos on J^T J instead, with the caller's block, budget, seed and stop.
        pairs = block_lanczos(
            gram_operator(f)[0],
            f.dim_in,
            k,
            "smallest",
            block_size=block_size,
            tol=fallback_tol,
            max_matvecs=max_matvecs,
            seed=seed,
            device=f.x.device,
        )
        return to_singular(f, pairs["smallest"], vectors)
    # Rayleigh-Ritz with J itself on the converged subspace: sigma^2 to full accuracy and
    # the Gram residuals ||J^T J z - sigma^2 z|| that the other methods report.
    with torch.no_grad():
        JY = jvp_op(f)(pairs.vectors.view(-1, *f.in_shape)).reshape(pairs.vectors.shape[0], -1)
        theta, S = torch.linalg.eigh(JY @ JY.T)
        Z, JZ = S.T @ pairs.vectors, S.T @ JY
        JtJZ = vjp_op(f)(JZ.view(-1, *f.out_shape)).reshape(Z.shape)
    residuals = (JtJZ - theta[:, None] * Z).norm(dim=1)
    sigma = theta.clamp_min(0).sqrt()
    vecs = Z.view(-1, *f.in_shape) if vectors else None
    # "converged" is the inverse Lanczos's own; the residuals are J's, which callers
    # that know sigma_max test (map_spectrum: at most lanczos_tol * sigma_max^2).
    return SingularTriplets(sigma, residuals, vecs, pairs.converged, pairs.matvecs, "shift_invert")


def _factor(
    f: UnitMap, native: UnitMap, local: LocalJacobian | None = None
) -> tuple[MatVec, MatVec]:
    """Row-block solves with J and J^T in float64: a nested-dissection LU for stride-1
    conv maps (:class:`~resnet_dyn.dynamics.gridlu.GridLU`, which reads only the blocks
    it needs from J kept as local kernels), a dense LU otherwise."""
    if _grid_map(f):
        window = local_window(f)
        reach = (max(window.lo[0], window.hi[0]), max(window.lo[1], window.hi[1]))
        local = local_jacobian(native, window) if local is None else local
        lu = GridLU.factor(local, f.in_shape, reach)
        return lu.solve, lu.solve_t
    LU, piv = lu_factor_checked(jacobian(native).matrix.to(torch.float64))

    def solve(V: torch.Tensor) -> torch.Tensor:
        return torch.linalg.lu_solve(LU, piv, V.T).T

    def solve_t(V: torch.Tensor) -> torch.Tensor:
        return torch.linalg.lu_solve(LU, piv, V.T, adjoint=True).T

    return solve, solve_t


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
    rows: torch.Tensor | None = None,
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
    :func:`to_singular`. ``dtype``: see the module docstring. ``rows``: quadrature of the
    singular values of those rows of J only (see :func:`gram_operator`).
    """
    matvec, n = gram_operator(f.to(dtype), rows)
    return lanczos_quadrature(matvec, n, probes, steps, tol=tol, seed=seed, device=f.x.device)
