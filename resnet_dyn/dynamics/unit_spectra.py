"""Spectral statistics of every unit (and stage) linearization of a ResidualNet at a set of images.

    results = analyze_units(net.eval(), images[:4], units="all", maps=("sum", "unit"))
    r = results[19]
    r["index"], r["stage"], r["dim_in"], r["sum"]["frac_one"], r["sum"]["frac_one_std"]
    r["sum"]["method"], r["sum"]["fractions"]   # e.g. "count+shift_invert", "exact"
    np.savez("spectra.npz", **spectra_arrays(results))

Every image is linearized on its own; a map's summary holds the mean over images of
each statistic (:mod:`resnet_dyn.dynamics.stats`) and ``<stat>_std``, its raw
per-image spectra are under ``r["raw"][map]``. Methods (``method=``):

* ``dense``: J from JVPs with every basis vector, all singular values.
* ``coloring``: J from colored probes (conv maps; others fall back to dense, see
  ``note``), all singular values.
* ``count``: no J, no quadrature. Fractions counted exactly by Sylvester's law of
  inertia at c = tol, 1 - tol, 1 + tol (:mod:`resnet_dyn.dynamics.inertia`): for a
  unit with an identity shortcut, J = alpha I + B C, a nested-dissection LDL^T of a
  2k x 2k pencil on the hidden grid (:mod:`resnet_dyn.dynamics.reduced`,
  ``count_route: "reduced"``); elsewhere (and for unit maps with a ReLU after the sum)
  one of ``J J^T - c^2 I`` built from J's local kernels (``"gram"``). Conv maps whose
  count stays within ``COUNT_MAX_GFLOP``. sigma_max by block Lanczos, sigma_min by
  shift-invert (square stride-1 maps), exact zero rows, or block Lanczos; an extreme
  whose residual exceeds ``lanczos_tol * sigma_max^2`` is NaN, its Ritz value kept as
  ``sigma_*_bound`` and ``sigma_*_converged`` false.
* ``slq``: no J. Fractions *estimated* by stochastic Lanczos quadrature. ``<frac>_err``
  is the standard error over probes plus ``<frac>_unresolved``, the weight of nodes that
  the quadrature cannot place on one side of an interval's ends (see
  :func:`~resnet_dyn.dynamics.spectrum.singular_value_quadrature`): on trained units the
  mass near sigma = 1 is continuous and the quadrature moves it across 1 +- tol by whole
  nodes, a bias the standard error alone does not cover. sigma_max and sigma_min from
  the same Lanczos runs, refined by block Lanczos where not converged, with residuals.
* ``lanczos``: no J. Only the ``top_k`` largest and smallest singular values;
  fractions are NaN.
* ``auto`` (default): with ``r = min(dim_in, dim_out)``, all singular values (by
  coloring when the map has a receptive window smaller than its input, else dense)
  when ``full_spectrum`` or ``r <= dense_max`` (4096); else ``count`` where the map is
  countable (:func:`~resnet_dyn.dynamics.inertia.countable`), else ``slq``.

Every summary says how its fractions were obtained: ``fractions`` is ``"exact"`` (a
full spectrum or certified counts), ``"uncertain"`` (counts that could not all be
certified, see :func:`~resnet_dyn.dynamics.inertia.certified_counts`: each fraction is
then the midpoint of ``[<frac>_lo, <frac>_hi]``, the interval the certified counts
allow), ``"estimated"`` (SLQ) or ``"none"`` (``lanczos``). ``count`` always reports
``<frac>_lo`` and ``<frac>_hi`` (equal to the fraction where exact) and ``count_route``. The method
used is reported as ``"<jacobian>+svd"`` (``"coloring+gram"``: all singular values of a
large conv map as the float64 eigenvalues of J J^T built from J's local kernels),
``"count+<smallest end>"`` or
``"slq+<smallest end>"``, the smallest end being ``lanczos``, ``shift_invert`` (sigma_min
of a square map by shift-invert, see
:func:`~resnet_dyn.dynamics.spectrum.shift_invert_applies`) or ``zero_rows`` (below).

Rows of J that are exactly zero (a unit map's outputs behind an off ReLU: J = D J_sum)
contribute exact zero singular values and nothing else. Every method counts them
exactly: the dense path takes the singular values of the other rows (a smaller Gram
matrix), ``count`` leaves them out of the elimination, ``slq`` runs its quadrature on
the other rows only (``note`` says how many were set aside); when there are at least
``top_k`` of them sigma_min = 0 is exact (``"count+zero_rows"``, ``"slq+zero_rows"``),
with no Lanczos run on the slowly converging smallest end.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from resnet_dyn.dynamics.inertia import (
    COUNT_MAX_GFLOP,
    UncertainCounts,
    certified_counts,
    countable,
    fraction_bounds,
    gram_singular_values,
    singular_value_histogram,
)
from resnet_dyn.dynamics.jacobian import coloring_pays, jacobian, local_jacobian
from resnet_dyn.dynamics.maps import UnitMap, check_eval, stage_map, unit_map, unit_states
from resnet_dyn.dynamics.spectrum import (
    GRID_SHIFT_INVERT_MAX,
    SHIFT_INVERT_MAX,
    SVD_VALUES_MAX,
    SingularTriplets,
    dense_singular_values,
    extreme_singular_values,
    singular_value_quadrature,
    to_singular,
    zero_rows,
)
from resnet_dyn.dynamics.stats import FRACTIONS, condition, quadrature_fractions, spectrum_stats
from resnet_dyn.dynamics.stats import summarize as summarize_images
from resnet_dyn.errors import ConfigError, check_int
from resnet_dyn.models.base import ResidualNet

METHODS = ("auto", "dense", "coloring", "count", "lanczos", "slq")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
Progress = Callable[[int, int], None]


@dataclass
class MapSpectrum:
    """One map at one image: ``stats`` (numbers, plus ``method`` and ``note``), the full
    spectrum ``sigma`` (descending) when computed, the ``top_k`` extremes from each end."""

    stats: dict
    sigma: torch.Tensor | None
    largest: torch.Tensor
    smallest: torch.Tensor


def map_spectrum(
    f: UnitMap,
    *,
    method: str = "auto",
    tol: float = 1e-3,
    top_k: int = 1,
    full_spectrum: bool = False,
    dense_max: int = 4096,
    probes: int = 16,
    steps: int = 80,
    lanczos_tol: float = 1e-6,
    max_matvecs: int = 500,
    chunk_size: int | None = None,
    memory_mb: float = 256.0,
    seed: int = 0,
    count_max_gflop: float = COUNT_MAX_GFLOP,
    shift_invert_max: int = SHIFT_INVERT_MAX,
    grid_shift_invert_max: int = GRID_SHIFT_INVERT_MAX,
    count_route: str = "auto",
) -> MapSpectrum:
    """Statistics of the singular values of J(f); see the module docstring for ``method``.

    ``top_k``: extremes kept per end. ``probes``/``steps``: SLQ probes and Lanczos steps.
    sigma_max and sigma_min come from the SLQ runs when their Ritz residual r is at most
    ``lanczos_tol * sigma_max^2``, else from a block Lanczos started there, with a budget
    of ``max_matvecs`` Gram products. sigma_min of a sum map converges slowly; the report
    carries ``sigma_min_residual`` (r) and ``converged``. A Ritz value is never below the
    smallest eigenvalue, so sigma_min is an upper bound, and some eigenvalue lies within
    r of sigma_min^2: a tiny sigma_min is only known to about sqrt(r).
    ``chunk_size``/``memory_mb``: JVPs per batched pass for Jacobians.
    ``count_max_gflop``: the largest count (GFLOP per threshold) ``auto`` and ``count``
    attempt (:func:`~resnet_dyn.dynamics.inertia.countable`). ``shift_invert_max`` /
    ``grid_shift_invert_max``: the square maps whose sigma_min comes from shift-invert
    (:func:`~resnet_dyn.dynamics.spectrum.shift_invert_applies`). ``count_route``: how
    counts are factored (:func:`~resnet_dyn.dynamics.inertia.counted`: ``auto``,
    ``reduced`` or ``gram``); the route taken is ``stats["count_route"]``. Counted
    fractions are exact only where every count is certified (``stats["fractions"] ==
    "exact"``); otherwise ``"uncertain"``, each fraction the midpoint of
    ``[stats["<frac>_lo"], stats["<frac>_hi"]]``, the interval its counts allow.
    """
    if method not in METHODS:
        raise ConfigError("method", " | ".join(METHODS), method)
    if not isinstance(top_k, int) or top_k < 1:
        raise ConfigError("top_k", "a positive integer", top_k)
    if method == "auto" and not full_spectrum and min(f.dim_in, f.dim_out) > dense_max:
        ok, not_counted = countable(f, max_gflop=count_max_gflop)
        method = "count" if ok else "slq"
    else:
        not_counted = ""
    if method in ("auto", "dense", "coloring"):
        if method != "dense" and coloring_pays(f) and min(f.dim_in, f.dim_out) > SVD_VALUES_MAX:
            # Large conv maps: G = J J^T from J's local kernels, never the dense J.
            local = local_jacobian(f, chunk_size=chunk_size, memory_mb=memory_mb)
            sigma, how, note = gram_singular_values(local), "coloring+gram", ""
        else:
            jac = jacobian(f, method, chunk_size=chunk_size, memory_mb=memory_mb)
            sigma, how, note = all_singular_values(jac.matrix), f"{jac.method}+svd", jac.note
        stats = spectrum_stats(sigma, tol) | {"method": how, "fractions": "exact", "note": note}
        return MapSpectrum(stats, sigma, sigma[:top_k], sigma.flip(0)[:top_k])
    ends, starts, note, local = {}, {}, "", None
    r = min(f.dim_in, f.dim_out)
    if method == "count":
        ok, why = countable(f, max_gflop=count_max_gflop)
        if not ok:
            raise ConfigError("method", "auto or slq for this map (count: " + why + ")", method)
        local = local_jacobian(f)  # shared by the gram route's counts and shift-invert
        counts = certified_counts(f, [tol, 1 - tol, 1 + tol], lj=local, route=count_route)
        stats = fraction_bounds(counts, r) | {
            "method": "count",
            "fractions": "exact" if counts.exact else "uncertain",
            "count_route": counts.route,
        }
        zeros = r - int((~zero_rows(f, seed)).sum().clamp_max(r))
        if zeros >= top_k:  # exact zero rows: sigma_min = 0 with no Lanczos run
            z = torch.zeros(top_k, dtype=torch.float64, device=f.x.device)
            ends["smallest"] = SingularTriplets(z, z, None, True, 0, "zero_rows")
    elif method == "slq":
        kept = (~zero_rows(f, seed)).nonzero().flatten()
        zeros = r - min(kept.numel(), f.dim_in)
        # Structurally zero rows (unit maps: outputs behind an off ReLU) are exact zero
        # singular values: count them exactly and run SLQ on the other rows only. Where
        # they are at least top_k, sigma_min = 0 is exact too (no Lanczos on J^T J, whose
        # smallest end converges slowly); the largest end is the same either way.
        if zeros and kept.numel() >= 2:
            quad = singular_value_quadrature(
                f, probes, steps, tol=lanczos_tol, seed=seed, rows=kept
            )
            stats = _scaled(quadrature_fractions(quad, tol), (r - zeros) / r, zeros / r)
            ends["largest"] = to_singular(f, quad.extremes["largest"])
            note = f"{zeros} structurally zero rows counted exactly"
            if zeros >= top_k:
                z = torch.zeros(top_k, dtype=torch.float64, device=f.x.device)
                ends["smallest"] = SingularTriplets(z, z, None, True, 0, "zero_rows")
        else:
            quad = singular_value_quadrature(f, probes, steps, tol=lanczos_tol, seed=seed)
            stats = quadrature_fractions(quad, tol)
            ends = {e: to_singular(f, p) for e, p in quad.extremes.items()}
            starts = {e: p.vectors for e, p in quad.extremes.items()}
        stats |= {"method": "slq", "fractions": "estimated"}
    else:
        stats = dict.fromkeys(FRACTIONS, math.nan) | {"method": "lanczos", "fractions": "none"}
    for end in ("largest", "smallest"):
        if (
            end not in ends
            or (top_k > 1 and ends[end].values.numel() < top_k)
            or not ends[end].converged
        ):
            ends[end] = extreme_singular_values(
                f,
                top_k,
                end,
                tol=lanczos_tol,
                max_matvecs=max_matvecs,
                start=starts.get(end),
                seed=seed,
                dtype=torch.float64,
                local=local,
                shift_invert_max=shift_invert_max,
                grid_shift_invert_max=grid_shift_invert_max,
            )[end]
    big, small = ends["largest"], ends["smallest"]
    if stats["method"] != "lanczos":
        stats["method"] += "+" + ("lanczos" if small.method == "gram" else small.method)
    smax, smin = big.values[0].item(), small.values[0].item()
    # An end counts as converged when its method says so and its Rayleigh-Ritz residual
    # ||J^T J v - sigma^2 v|| is at most lanczos_tol * sigma_max^2. An unconverged value
    # is a bound (a Ritz value lies inside the spectrum: sigma_max from below, sigma_min
    # from above), kept as ``sigma_*_bound``; the value itself is NaN, so that no summary,
    # logger or report shows it as a plain number.
    limit = lanczos_tol * smax**2
    ok_max = big.converged and big.residuals[0].item() <= limit
    ok_min = small.converged and small.residuals[0].item() <= limit
    stats |= {
        "sigma_max": smax if ok_max else math.nan,
        "sigma_min": smin if ok_min else math.nan,
        "cond": condition(smax, smin) if ok_max and ok_min else math.nan,
        "sigma_max_bound": smax,
        "sigma_min_bound": smin,
        "sigma_max_residual": big.residuals[0].item(),
        "sigma_min_residual": small.residuals[0].item(),
        "sigma_max_converged": ok_max,
        "sigma_min_converged": ok_min,
        "converged": ok_max and ok_min,
        # Why an auto map was estimated rather than counted (e.g. the count's GFLOP).
        "note": "; ".join(n for n in (note, not_counted and f"not counted: {not_counted}") if n),
    }
    return MapSpectrum(stats, None, big.values, small.values)


def _scaled(fracs: dict, share: float, zeros: float) -> dict:
    """Fractions over a subset of the singular values (``share`` of them) as fractions over
    all, with exact zeros (``zeros`` of them) added to ``frac_zero``."""
    out = {k: v * share for k, v in fracs.items()}
    out["frac_zero"] += zeros
    return out


def all_singular_values(J: torch.Tensor) -> torch.Tensor:
    """All ``min(m, n)`` singular values of J (float64, descending).

    Exactly zero rows (unit maps: outputs behind an off ReLU) only add zero singular
    values; dropping them first leaves a smaller, wide matrix whose Gram matrix is
    smaller too (see :func:`dense_singular_values`).
    """
    r = min(J.shape)
    keep = J.abs().amax(dim=1) > 0
    if bool(keep.all()):
        return dense_singular_values(J)[0].to(torch.float64)
    sigma = J.new_zeros(0, dtype=torch.float64)
    if bool(keep.any()):
        sigma = dense_singular_values(J[keep])[0].to(torch.float64)
    return torch.cat([sigma, sigma.new_zeros(r - sigma.numel())])


def _select(which: str | int | Iterable[int], n: int, key: str) -> list[int]:
    if which == "all":
        return list(range(n))
    idx = [which] if isinstance(which, int) else list(which)
    if not idx or any(not isinstance(i, int) or not 0 <= i < n for i in idx):
        raise ConfigError(key, f"all or indices in [0, {n - 1}]", which)
    return idx


def _prepared(
    net: ResidualNet, images: torch.Tensor, dtype: torch.dtype | str | None
) -> tuple[ResidualNet, torch.Tensor]:
    """``net`` in ``dtype`` (a converted copy where it differs; the caller's model is left
    as it is) and ``images`` on the model's device in that dtype. Everything after this
    (Jacobians, Krylov vectors, factorizations, SVDs) lives on the model's device."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConfigError("dtype", " or ".join(DTYPES), dtype)
        dtype = DTYPES[dtype]
    param = next(net.parameters())
    dtype = param.dtype if dtype is None else dtype
    if param.dtype != dtype:
        net = copy.deepcopy(net).to(dtype=dtype)
    return net, images.to(device=param.device, dtype=dtype)


def _record(timed: Sequence[tuple[MapSpectrum, float]]) -> tuple[dict, dict]:
    """Summary over images and raw per-image arrays of one map kind (each image's
    spectrum with the seconds it took)."""
    per = [p for p, _ in timed]
    raw = {
        "largest": torch.stack([p.largest for p in per]).cpu().numpy(),
        "smallest": torch.stack([p.smallest for p in per]).cpu().numpy(),
        "per_image": [p.stats for p in per],
        "seconds": [s for _, s in timed],
    }
    if per[0].sigma is not None:
        raw["sigma"] = torch.stack([p.sigma for p in per]).cpu().numpy()
    return summarize_images([p.stats for p in per]), raw


Job = tuple[int, str, int]  # (unit, map kind, image)


def _timed(f: UnitMap, options: dict) -> tuple[MapSpectrum, float]:
    t0 = time.perf_counter()
    spectrum = map_spectrum(f, **options)
    return spectrum, time.perf_counter() - t0


def _spectra(
    net: ResidualNet, states: list[torch.Tensor], jobs: list[Job], options: dict, workers: int
) -> Iterator[tuple[MapSpectrum, float]]:
    """Each job's spectrum and seconds, in the jobs' order: ``workers`` at a time, on
    threads that share this process's torch threads (torch releases the GIL in its
    kernels, and a map's work is nearly all kernels)."""

    def run(job: Job) -> tuple[MapSpectrum, float]:
        k, kind, i = job
        return _timed(unit_map(net, k, states[k][i], kind), options)

    if workers == 1:
        yield from map(run, jobs)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // workers))
    pool = ThreadPoolExecutor(workers, thread_name_prefix="maps")
    try:
        futures = [pool.submit(run, job) for job in jobs]
        for future in futures:
            yield future.result()
    finally:  # an error, or a caller that stops early: what is queued is not run
        pool.shutdown(wait=True, cancel_futures=True)
        torch.set_num_threads(threads)


def exact_histogram(
    maps: Sequence[UnitMap], raw: dict, bins: int = 40, max_gflop: float = COUNT_MAX_GFLOP
) -> str:
    """Exact histograms of the singular values of maps with no full spectrum, by counting
    at the bin edges (:func:`~resnet_dyn.dynamics.inertia.singular_value_histogram`, one
    LDL^T per edge): ``raw["hist_counts"]`` (images x bins) and ``raw["hist_edges"]``,
    ``bins`` equal bins on [0, 1.02 * the largest sigma_max over the images] (at least
    [0, 1.5]). Returns ``""``, or why no histogram was counted."""
    ok, why = countable(maps[0], max_gflop=max_gflop)
    if not ok:
        return f"no exact histogram: {why}"
    hi = max(1.5, 1.02 * float(raw["largest"][:, 0].max()))
    edges = torch.linspace(0.0, hi, bins + 1, dtype=torch.float64)
    try:
        counts = [singular_value_histogram(f, edges) for f in maps]
    except UncertainCounts as e:
        return f"no exact histogram: {e}"
    raw["hist_edges"] = edges.numpy()
    raw["hist_counts"] = torch.stack(counts).cpu().numpy()
    return ""


def analyze_units(
    net: ResidualNet,
    images: torch.Tensor,
    units: str | int | Iterable[int] = "all",
    maps: Sequence[str] = ("sum", "unit"),
    *,
    dtype: torch.dtype | str | None = None,
    progress: Progress | None = None,
    histogram: str | Iterable[int] = (),
    bins: int = 40,
    workers: int = 1,
    **options: Any,
) -> list[dict]:
    """Spectral statistics of the ``maps`` ("sum", "unit") of ``units`` at each of ``images``.

    Returns per unit ``{"name": "unit03", "index", "stage", "dim_in", "dim_out",
    <map>: summary, "raw": {<map>: {"sigma"?, "largest", "smallest", "per_image",
    "seconds"}}}`` (``seconds``: each image's, for that map).
    ``dtype`` ("float32"/"float64") runs a converted copy of ``net``; the analysis runs
    on the model's device. ``progress(done, total)`` is called after each unit.
    ``histogram`` (unit indices or "all"): units whose maps without a full spectrum get
    exact histograms of ``bins`` bins (:func:`exact_histogram`; a reason in the summary's
    ``note`` where none could be counted). ``workers``: maps computed side by side, on
    threads that split this process's torch threads (a model on a GPU: one at a time): a
    map's small eliminations keep several cores only partly busy. ``options`` go to
    :func:`map_spectrum`.
    """
    check_eval(net)
    idx = _select(units, len(net.units), "units")
    histogrammed = set(_select(histogram, len(net.units), "histogram")) if histogram else set()
    maps = tuple(maps)
    if not maps or any(m not in ("sum", "unit") for m in maps):
        raise ConfigError("maps", "sum and/or unit (stage maps: analyze_stages)", maps)
    check_int("workers", workers, 1)
    net, images = _prepared(net, images, dtype)
    workers = workers if images.device.type == "cpu" else 1  # one device: one map at a time
    states = unit_states(net, images)
    n = images.shape[0]
    jobs = [(k, kind, i) for k in idx for kind in maps for i in range(n)]
    found = _spectra(net, states, jobs, options, workers)
    results = []
    for done, k in enumerate(idx, 1):
        x = states[k]
        entry: dict = {"name": f"unit{k:02d}", "index": k, "stage": net.units[k].stage, "raw": {}}
        for kind in maps:
            fs = [unit_map(net, k, x[i], kind) for i in range(n)]
            entry[kind], entry["raw"][kind] = _record([next(found) for _ in range(n)])
            if k in histogrammed and "sigma" not in entry["raw"][kind]:
                budget = options.get("count_max_gflop", COUNT_MAX_GFLOP)
                why = exact_histogram(fs, entry["raw"][kind], bins, budget)
                entry[kind]["note"] = "; ".join(n for n in (entry[kind]["note"], why) if n)
        entry["dim_in"], entry["dim_out"] = fs[0].dim_in, fs[0].dim_out
        results.append(entry)
        if progress is not None:
            progress(done, len(idx))
    return results


def analyze_stages(
    net: ResidualNet,
    images: torch.Tensor,
    stages: str | int | Iterable[int] = "all",
    *,
    dtype: torch.dtype | str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> list[dict]:
    """Like :func:`analyze_units` for the composition of each stage's units, at its input.

    Returns per stage ``{"name": "stage1", "index", "units", "dim_in", "dim_out",
    "stage": summary, "raw": {"stage": ...}}``.
    """
    check_eval(net)
    idx = _select(stages, net.num_stages, "stages")
    net, images = _prepared(net, images, dtype)
    states = unit_states(net, images)
    results = []
    for done, s in enumerate(idx, 1):
        units = net.stage_units(s)
        x = states[units[0]]
        fs = [stage_map(net, s, x[i]) for i in range(x.shape[0])]
        summary, raw = _record([_timed(f, options) for f in fs])
        results.append(
            {
                "name": f"stage{s}",
                "index": s,
                "units": units,
                "dim_in": fs[0].dim_in,
                "dim_out": fs[0].dim_out,
                "stage": summary,
                "raw": {"stage": raw},
            }
        )
        if progress is not None:
            progress(done, len(idx))
    return results


def spectra_arrays(results: Sequence[dict]) -> dict[str, np.ndarray]:
    """The raw per-image arrays of results, flat for ``np.savez``: ``<name>_<map>_<field>``
    with fields ``sigma`` (images x min(dim_in, dim_out)), ``largest``, ``smallest`` and,
    for exact histograms, ``hist_counts`` (images x bins) and ``hist_edges``."""
    return {
        f"{r['name']}_{kind}_{field}": value
        for r in results
        for kind, raw in r["raw"].items()
        for field, value in raw.items()
        if isinstance(value, np.ndarray)
    }
