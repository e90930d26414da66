"""The spectrum methods' sizes and budgets are config: ``analysis.solver.*`` and
``analysis.perturbation.project_max`` reach what they name, on both paths that run spectra
(``resnet-dyn-analyze`` and the spectrum callback), and each changes what it says it does.

The network is a ResNet-8 at initialisation on digits: unit 0's sum map is a square stride-1
conv map of 1,024 dimensions (16 channels x 8 x 8), unit 1 maps 1,024 to 512, unit 2 512 to
256; one probe image keeps every analysis under a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import compose_config
from omegaconf import OmegaConf

import resnet_dyn.dynamics.unit_spectra as unit_spectra
from resnet_dyn.analysis.job import run_analysis_job
from resnet_dyn.analysis.run import perturbation_run, spectrum_analysis
from resnet_dyn.config.build import build
from resnet_dyn.config.checks import check_perturbation
from resnet_dyn.training.job import run_job

SMALL = ["model.depth=8", "logger=none", "analysis.images=1", "analysis.maps=[sum]"]

# Every solver key at a value other than its default, and the map_spectrum keyword it becomes.
SOLVER = {
    "dense_max": (512, "dense_max"),
    "slq_probes": (4, "probes"),
    "slq_steps": (20, "steps"),
    "lanczos_tol": (1e-5, "lanczos_tol"),
    "max_matvecs": (300, "max_matvecs"),
    "count_max_gflop": (100.0, "count_max_gflop"),
    "shift_invert_max": (2048, "shift_invert_max"),
    "grid_shift_invert_max": (8192, "grid_shift_invert_max"),
}


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    """The analyze config, its datamodule, the network (eval mode) and one probe image."""
    cfg = compose_config("analyze", SMALL, tmp_path_factory.mktemp("cfg"))
    dm = build(cfg.data)
    net = build(cfg.model, input_shape=dm.input_shape, num_classes=dm.num_classes).eval()
    images, labels = dm.probe_batch(1)
    return cfg, dm, net, images, labels


def _sum_map(setting, tmp_path: Path, unit: int = 0, seed: int = 0, **keys: Any) -> dict[str, Any]:
    """The summary of ``unit``'s sum map with ``analysis.<key>`` (``solver.dense_max``, ...)
    set as given, for a job of ``seed``."""
    cfg, _, net, images, labels = setting
    a = OmegaConf.to_container(cfg.analysis)
    a["units"] = [unit]
    for dotted, value in keys.items():
        group, _, name = dotted.rpartition("__")
        (a[group] if group else a)[name] = value
    result = spectrum_analysis(net, images, labels, OmegaConf.create(a), tmp_path, "t", seed=seed)
    return result.summary["units"][0]["sum"]


def _spy(monkeypatch) -> list[dict[str, Any]]:
    """Record the keyword arguments of every map_spectrum call (and still compute it)."""
    calls: list[dict[str, Any]] = []
    original = unit_spectra.map_spectrum

    def recording(f, **kwargs):
        calls.append(kwargs)
        return original(f, **kwargs)

    monkeypatch.setattr(unit_spectra, "map_spectrum", recording)
    return calls


def _forwarded(calls: list[dict[str, Any]]) -> None:
    assert calls, "no spectrum was computed"
    for name, (value, keyword) in SOLVER.items():
        assert all(c[keyword] == value for c in calls), (name, calls[0])
    assert all(c["seed"] == 7 for c in calls), calls[0]  # the job's seed: the probes' too


SOLVER_OVERRIDES = [f"analysis.solver.{k}={v}" for k, (v, _) in SOLVER.items()] + ["seed=7"]


def test_resnet_dyn_analyze_forwards_every_solver_key(monkeypatch, tmp_path):
    calls = _spy(monkeypatch)
    overrides = [*SMALL, *SOLVER_OVERRIDES, "analysis.units=[0]", "analysis.identity.images=8"]
    summary = run_analysis_job(compose_config("analyze", overrides, tmp_path))
    _forwarded(calls)
    # dense_max 512 < 1,024: counted, not a full spectrum
    assert summary["analysis"]["units"][0]["sum"]["method"].startswith("count")


def test_the_spectrum_callback_forwards_every_solver_key(monkeypatch, tmp_path):
    calls = _spy(monkeypatch)
    overrides = [*SMALL, *SOLVER_OVERRIDES, "analysis.units=0", "callbacks=spectrum",
                 "debug=fast_dev_run", "trainer.enable_progress_bar=false"]  # fmt: skip
    summary = run_job(compose_config("train", overrides, tmp_path))
    _forwarded(calls)
    assert summary["analysis"]["units"][0]["sum"]["method"].startswith("count")


def test_dense_max_switches_auto_from_a_full_spectrum_to_counting(setting, tmp_path):
    assert _sum_map(setting, tmp_path)["method"] == "coloring+gram"  # 1,024 <= 4,096
    counted = _sum_map(setting, tmp_path, solver__dense_max=512)
    assert counted["method"].startswith("count+") and counted["fractions"] == "exact"


def test_count_max_gflop_makes_auto_fall_back_to_slq(setting, tmp_path):
    s = _sum_map(setting, tmp_path, solver__dense_max=512, solver__count_max_gflop=1e-9)
    assert s["method"].startswith("slq+") and s["fractions"] == "estimated"


@pytest.mark.parametrize(
    "dense, grid, smallest",
    [
        (512, 16384, "shift_invert"),  # too big for the dense LU: the nested-dissection one
        (512, 512, "lanczos"),  # too big for both: block Lanczos on J^T J
        (1024, 0, "shift_invert"),  # the dense LU alone
    ],
)
def test_shift_invert_sizes_choose_how_sigma_min_is_found(setting, tmp_path, dense, grid, smallest):
    s = _sum_map(
        setting, tmp_path, method="count",
        solver__shift_invert_max=dense, solver__grid_shift_invert_max=grid,
    )  # fmt: skip
    assert s["method"] == f"count+{smallest}"


def test_max_matvecs_bounds_block_lanczos(setting, tmp_path):
    assert _sum_map(setting, tmp_path, method="lanczos")["converged"] is True
    starved = _sum_map(setting, tmp_path, method="lanczos", solver__max_matvecs=2)
    assert starved["converged"] is False


def test_lanczos_tol_is_the_residual_accepted(setting, tmp_path):
    tight = _sum_map(setting, tmp_path, method="lanczos")
    loose = _sum_map(setting, tmp_path, method="lanczos", solver__lanczos_tol=0.5)
    assert loose["sigma_min_residual"] > 100 * tight["sigma_min_residual"]


def test_slq_steps_resolve_the_quadrature(setting, tmp_path):
    # Fewer nodes per probe: more of the spectrum's weight cannot be placed against 1 +- tol.
    many = _sum_map(setting, tmp_path, method="slq")
    few = _sum_map(setting, tmp_path, method="slq", solver__slq_steps=2)
    assert few["frac_one_unresolved"] > many["frac_one_unresolved"] + 0.2


@pytest.mark.parametrize(
    "project_max, projected, skipped",
    [(4096, [0, 1, 2], []), (600, [1, 2], [0]), (0, [], [0, 1, 2])],
)
def test_project_max_lists_larger_units_as_skipped(
    setting, tmp_path, project_max, projected, skipped
):
    cfg, dm, net, _, _ = setting
    p = OmegaConf.to_container(cfg.analysis.perturbation)
    settings = check_perturbation({**p, "project": True, "project_max": project_max})
    pert = perturbation_run(net, dm, settings, 1, tmp_path, "t")
    assert pert["projection"]["units"] == projected
    assert pert["projection"]["skipped"] == skipped


def test_the_jobs_seed_draws_the_slq_probes(setting, tmp_path):
    # The job's seed reaches the matrix-free probes: another seed, another estimate (within
    # its error bar of the exact fraction); a dense spectrum does not depend on it.
    estimates = [_sum_map(setting, tmp_path, seed=seed, method="slq") for seed in (0, 1)]
    assert estimates[0]["frac_gt_one"] != estimates[1]["frac_gt_one"]
    exact = _sum_map(setting, tmp_path, method="dense")
    for estimate in estimates:
        assert abs(estimate["frac_gt_one"] - exact["frac_gt_one"]) <= estimate["frac_gt_one_err"]
    assert exact == _sum_map(setting, tmp_path, seed=1, method="dense")


def test_the_jobs_seed_draws_the_random_perturbation(setting, tmp_path):
    # FGSM has no random start: the adversarial curve is the same for both seeds, the
    # random one (matched to its norm) is drawn anew.
    cfg, dm, net, _, _ = setting
    settings = check_perturbation(OmegaConf.to_container(cfg.analysis.perturbation))
    runs = [perturbation_run(net, dm, settings, 1, tmp_path, "t", seed=seed) for seed in (0, 1)]
    assert runs[0]["adversarial_rel"] == runs[1]["adversarial_rel"]
    assert runs[0]["random_rel"] != runs[1]["random_rel"]
    assert (runs[0]["seed"], runs[1]["seed"]) == (0, 1)


def test_the_jobs_seed_reaches_every_analysis_callback_that_draws(tmp_path):
    drawing = {}
    for group in ("all_analyses", "noise"):
        cfg = compose_config("train", [*SMALL, "seed=5", f"callbacks={group}"], tmp_path)
        drawing |= {name: build(node) for name, node in cfg.callbacks.items() if "seed" in node}
    assert set(drawing) == {"spectrum", "perturbation", "noise"}
    assert {name: c.seed for name, c in drawing.items()} == dict.fromkeys(drawing, 5)
