"""Jacobians of unit and stage maps from batched Jacobian-vector products.

    >>> import torch
    >>> from resnet_dyn.dynamics.maps import unit_map, unit_states
    >>> from resnet_dyn.models import CifarResNet
    >>> _ = torch.manual_seed(0)
    >>> net = CifarResNet(depth=8, input_shape=(3, 8, 8)).eval()
    >>> states = unit_states(net, torch.randn(1, 3, 8, 8))
    >>> f = unit_map(net, 0, states[0][0], "sum")
    >>> jac = jacobian(f)                 # coloring for conv units, dense JVPs otherwise
    >>> jac.matrix.shape, jac.method      # (dim_out, dim_in), "coloring" or "dense"
    (torch.Size([1024, 1024]), 'coloring')

``dense``: ``torch.func.jvp`` under ``vmap`` over chunks of basis vectors.
``coloring``: an output pixel of a conv map only sees a window of the input
(:mod:`resnet_dyn.dynamics.window`), so input pixels colored by
``(i mod P_h, j mod P_w)`` with ``P`` the window size never meet in one output
pixel; ``C_in * P_h * P_w`` probes recover J exactly (400 instead of 16,384
JVPs for a 16x32x32 unit of two 3x3 convs). :func:`local_jacobian` keeps J of such a
map without its zeros, as one kernel per output pixel (:class:`LocalJacobian`).
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import jvp, linearize, vjp, vmap

from resnet_dyn.dynamics.maps import UnitMap
from resnet_dyn.dynamics.window import NonLocalMap, Window, local_window
from resnet_dyn.errors import ConfigError

Batched = Callable[[torch.Tensor], torch.Tensor]

# Forward-mode AD levels are global to a process: maps analysed on several threads
# (analyze_units' workers) take turns at every JVP and VJP (their eliminations do not).
AD_LOCK = threading.RLock()

# Forward-mode AD keeps no tape: a tangent costs its input, its output and a few
# live intermediates of the largest state.
_LIVE_STATES = 6


def jvp_op(f: UnitMap, *, repeated: bool = False) -> Batched:
    """(b, *in_shape) tangents -> (b, *out_shape) products J t, one batched pass (of
    ``f.folded()``, the map with BatchNorm folded into its convs).

    ``repeated``: for an operator applied many times (Krylov methods), trace the
    linearization once (``torch.func.linearize``, ~0.1 s) so that no product re-runs
    the map itself: a product of 16 float64 tangents of a 16x32x32 unit then takes
    ~7 ms instead of ~12 ms.
    """
    g = f.folded()
    if not repeated:
        return _in_turn(vmap(lambda t: jvp(g, (g.x,), (t,))[1]))
    with warnings.catch_warnings(), AD_LOCK:
        # torch's constant folding of the traced graph warns about its own attributes.
        warnings.filterwarnings("ignore", "Attempted to insert a get_attr Node", UserWarning)
        _, linear = linearize(g, g.x)
    return _in_turn(vmap(linear))


def vjp_op(f: UnitMap) -> Batched:
    """(b, *out_shape) cotangents -> (b, *in_shape) products J^T u (forward pass done once,
    of ``f.folded()``)."""
    g = f.folded()
    with torch.no_grad(), AD_LOCK:
        _, pull = vjp(g, g.x)
    return _in_turn(vmap(lambda u: pull(u)[0]))


def _in_turn(op: Batched) -> Batched:
    """``op`` holding :data:`AD_LOCK`."""

    def run(t: torch.Tensor) -> torch.Tensor:
        with AD_LOCK:
            return op(t)

    return run


def chunk_for(f: UnitMap, memory_mb: float, chunk_size: int | None = None) -> int:
    """Tangents per batched pass so that one pass stays within ``memory_mb``."""
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError("chunk_size", "a positive integer", chunk_size)
        return chunk_size
    if not memory_mb > 0:
        raise ConfigError("memory_mb", "a positive number of MiB", memory_mb)
    per_tangent = f.x.element_size() * _LIVE_STATES * max(f.dim_in, f.dim_out)
    return max(1, int(memory_mb * 2**20 // per_tangent))


def fill_chunked(
    op: Batched, make: Callable[[int, int], torch.Tensor], out: torch.Tensor, chunk: int
) -> torch.Tensor:
    """``out[start:stop] = op(make(start, stop))`` chunk by chunk over ``out``'s rows."""
    with torch.no_grad():
        for start in range(0, out.shape[0], chunk):
            stop = min(out.shape[0], start + chunk)
            out[start:stop] = op(make(start, stop)).reshape(stop - start, *out.shape[1:])
    return out


@dataclass
class Jacobian:
    """J of shape (dim_out, dim_in); ``method`` "dense" or "coloring"; ``note`` why a fallback."""

    matrix: torch.Tensor
    method: str
    probes: int
    note: str = ""


def dense_jacobian(
    f: UnitMap, *, chunk_size: int | None = None, memory_mb: float = 256.0
) -> torch.Tensor:
    """J (dim_out, dim_in) from JVPs with the basis vectors, ``chunk`` of them per pass.

    Returned as the transposed view of the contiguous J^T that the JVPs fill row by row.
    """
    n = f.dim_in

    def basis(start: int, stop: int) -> torch.Tensor:
        t = f.x.new_zeros(stop - start, n)
        t[:, start:stop].fill_diagonal_(1)
        return t.view(-1, *f.in_shape)

    Jt = f.x.new_empty(n, f.dim_out)
    return fill_chunked(jvp_op(f), basis, Jt, chunk_for(f, memory_mb, chunk_size)).T


def colors(f: UnitMap, window: Window) -> tuple[int, int]:
    """Colors per axis: the window size, or the axis length if smaller (one pixel per color)."""
    _, h, w = f.in_shape
    return min(window.size[0], h), min(window.size[1], w)


@dataclass
class LocalJacobian:
    """J of a conv map as one dense kernel per output pixel, without the zeros of J.

    ``kernels[oi, oj, di, dj, co, c]`` is ``J[(co, oi, oj), (c, s*oi - lo + di, s*oj -
    lo + dj)]`` per axis (``window``: stride s, reach lo), zero where that input pixel is
    off the grid: ``n_out * C_in * kh * kw`` numbers where J has ``n_out * n_in`` (26 MB
    against 1 GiB for a 16x32x32 unit).

        >>> import torch
        >>> from resnet_dyn.dynamics.maps import unit_map
        >>> from resnet_dyn.models import CifarResNet
        >>> _ = torch.manual_seed(0)
        >>> net = CifarResNet(depth=8, input_shape=(3, 8, 8)).eval()
        >>> f = unit_map(net, 0, torch.randn(16, 8, 8), "sum")  # unit 0 at a random state
        >>> lj = local_jacobian(f)
        >>> lj.kernels.shape          # (H_out, W_out, kh, kw, C_out, C_in)
        torch.Size([8, 8, 5, 5, 16, 16])
        >>> rows, cols = torch.tensor([0, 1]), torch.tensor([0, 1, 2])
        >>> lj.pixel_block(rows, cols).shape  # J between output pixels rows, input pixels cols
        torch.Size([32, 48])
        >>> torch.allclose(lj.dense(), jacobian(f).matrix)  # J itself
        True
    """

    kernels: torch.Tensor
    window: Window
    in_shape: torch.Size
    out_shape: torch.Size

    def pixel_block(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The block of J between output pixels ``rows`` and input pixels ``cols`` (flat
        pixel indices), every channel: ``(C_out * len(rows), C_in * len(cols))``, rows
        ordered (co, pixel) and columns (c, pixel) as in J."""
        c_in, h, w = self.in_shape
        c_out, ho, wo = self.out_shape
        kh, kw = self.window.size
        (sh, sw), (lh, lw) = self.window.stride, self.window.lo
        di = (cols // w)[None, :] - (sh * (rows // wo) - lh)[:, None]
        dj = (cols % w)[None, :] - (sw * (rows % wo) - lw)[:, None]
        inside = (di >= 0) & (di < kh) & (dj >= 0) & (dj < kw)
        offset = torch.where(inside, di * kw + dj, 0)
        kernels = self.kernels.view(ho * wo, kh * kw, c_out, c_in)
        blocks = torch.where(inside[..., None, None], kernels[rows[:, None], offset], 0)
        return blocks.permute(2, 0, 3, 1).reshape(c_out * rows.numel(), c_in * cols.numel())

    def dense(self) -> torch.Tensor:
        """J (n_out, n_in); each kernel offset (di, dj) fills one strided view of it."""
        c_in, h, w = self.in_shape
        c_out, ho, wo = self.out_shape
        (sh, sw), (lh, lw) = self.window.stride, self.window.lo
        n_in = c_in * h * w
        J = self.kernels.new_zeros(c_out * ho * wo, n_in)
        for di in range(self.kernels.shape[2]):
            oi = _valid_range(sh, di - lh, ho, h)
            for dj in range(self.kernels.shape[3]):
                oj = _valid_range(sw, dj - lw, wo, w)
                if not oi or not oj:
                    continue
                # (len oi, len oj, c_out, c_in) -> (c_out, oi, oj, c_in)
                vals = self.kernels[oi.start : oi.stop, oj.start : oj.stop, di, dj]
                target = J.as_strided(
                    size=(c_out, len(oi), len(oj), c_in),
                    stride=(ho * wo * n_in, wo * n_in + sh * w, n_in + sw, h * w),
                    storage_offset=oi[0] * wo * n_in
                    + oj[0] * n_in
                    + (sh * oi[0] + di - lh) * w
                    + (sw * oj[0] + dj - lw),
                )
                target.copy_(vals.permute(2, 0, 1, 3))
        return J


def local_jacobian(
    f: UnitMap,
    window: Window | None = None,
    *,
    chunk_size: int | None = None,
    memory_mb: float = 256.0,
) -> LocalJacobian:
    """J of a conv map as a :class:`LocalJacobian`, from ``C_in * P_h * P_w`` colored probes.

    ``window`` defaults to :func:`local_window` (raises :class:`NonLocalMap` if none).
    """
    window = local_window(f) if window is None else window
    c_in, h, w = f.in_shape
    c_out, ho, wo = f.out_shape
    ph, pw = colors(f, window)
    dev = f.x.device
    eye = f.x.new_ones(c_in).diag()
    rows_h = torch.arange(h, device=dev) % ph == torch.arange(ph, device=dev)[:, None]
    rows_w = torch.arange(w, device=dev) % pw == torch.arange(pw, device=dev)[:, None]
    rows_h, rows_w = rows_h.to(f.dtype), rows_w.to(f.dtype)

    def probes(start: int, stop: int) -> torch.Tensor:
        p = torch.arange(start, stop, device=dev)
        c, a, b = p // (ph * pw), (p // pw) % ph, p % pw
        return eye[c][:, :, None, None] * rows_h[a][:, None, :, None] * rows_w[b][:, None, None, :]

    Y = f.x.new_empty(c_in * ph * pw, c_out, ho, wo)
    fill_chunked(jvp_op(f), probes, Y, chunk_for(f, memory_mb, chunk_size))
    # Probe (c, a, b) holds, at output (co, oi, oj), the entry of the one input pixel of
    # color (a, b) in that output's window: gather it for every offset of the window.
    (sh, sw), (lh, lw), (kh, kw) = window.stride, window.lo, window.size
    ii = sh * torch.arange(ho, device=dev)[:, None] - lh + torch.arange(kh, device=dev)
    jj = sw * torch.arange(wo, device=dev)[:, None] - lw + torch.arange(kw, device=dev)
    Y = Y.view(c_in, ph, pw, c_out, ho, wo).permute(4, 5, 1, 2, 3, 0)
    K = Y[
        torch.arange(ho, device=dev)[:, None, None, None],
        torch.arange(wo, device=dev)[None, :, None, None],
        (ii % ph)[:, None, :, None],
        (jj % pw)[None, :, None, :],
    ]
    on_grid = ((ii >= 0) & (ii < h))[:, None, :, None] & ((jj >= 0) & (jj < w))[None, :, None, :]
    K = torch.where(on_grid[..., None, None], K, 0).contiguous()
    return LocalJacobian(K, window, f.in_shape, f.out_shape)


def colored_jacobian(
    f: UnitMap,
    window: Window | None = None,
    *,
    chunk_size: int | None = None,
    memory_mb: float = 256.0,
) -> torch.Tensor:
    """J (dim_out, dim_in) of a conv map from ``C_in * P_h * P_w`` colored probes.

    ``window`` defaults to :func:`local_window` (raises :class:`NonLocalMap` if none).
    """
    lj = local_jacobian(f, window, chunk_size=chunk_size, memory_mb=memory_mb)
    return lj.dense()


def _valid_range(stride: int, offset: int, n_out: int, n_in: int) -> range:
    """Outputs o whose input stride*o + offset lies in [0, n_in)."""
    return range(max(0, -(offset // stride)), min(n_out - 1, (n_in - 1 - offset) // stride) + 1)


def coloring_probes(f: UnitMap, window: Window) -> int:
    """JVPs that coloring needs for J(f): ``C_in`` times the colors per axis."""
    return f.in_shape[0] * math.prod(colors(f, window))


def coloring_pays(f: UnitMap) -> bool:
    """Whether ``jacobian(f, "auto")`` colors: f has a receptive window and coloring needs
    fewer probes than the ``dim_in`` basis vectors."""
    try:
        return coloring_probes(f, local_window(f)) < f.dim_in
    except NonLocalMap:
        return False


def jacobian(
    f: UnitMap,
    method: str = "auto",
    *,
    chunk_size: int | None = None,
    memory_mb: float = 256.0,
) -> Jacobian:
    """J of ``f`` by ``method``: "dense", "coloring", or "auto" (coloring when it needs fewer JVPs).

    "coloring" on a map without a receptive window (Linear layers, ...) falls back to
    dense and says why in ``note``.
    """
    if method not in ("auto", "dense", "coloring"):
        raise ConfigError("method", "auto, dense or coloring", method)
    note = ""
    if method != "dense":
        try:
            window = local_window(f)
            n_probes = coloring_probes(f, window)
            if n_probes < f.dim_in or method == "coloring":
                J = colored_jacobian(f, window, chunk_size=chunk_size, memory_mb=memory_mb)
                return Jacobian(J, "coloring", n_probes)
            note = f"coloring needs {n_probes} probes, no fewer than dim_in"
        except NonLocalMap as e:
            note = f"coloring impossible: {e}"
    J = dense_jacobian(f, chunk_size=chunk_size, memory_mb=memory_mb)
    return Jacobian(J, "dense", f.dim_in, note)
