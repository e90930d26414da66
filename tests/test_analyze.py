"""The spectrum callback in training, and resnet-dyn-analyze on checkpoints and image folders."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import compose_config, make_image_folder, run_cli
from test_checkpoints import akamaster_state
from wandb_records import OfflineRun

from resnet_dyn.training.job import run_job

CIFAR10 = "[airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck]"


def test_spectrum_callback_logs_saves_and_summarises(tmp_path):
    cfg = compose_config(
        "train",
        [
            "debug=tiny",
            "model.depth=8",
            "callbacks=spectrum",
            "analysis.units=[0,2]",
            "analysis.images=2",
            "trainer.enable_progress_bar=false",
        ],  # fmt: skip
        tmp_path,
    )
    summary = run_job(cfg)
    analysis = summary["analysis"]
    assert [u["index"] for u in analysis["units"]] == [0, 2]
    unit0 = analysis["units"][0]
    assert (unit0["dim_in"], unit0["dim_out"]) == (16 * 64, 16 * 64)
    for kind in ("sum", "unit"):
        stats = unit0[kind]
        assert 0 <= stats["frac_one"] <= 1 and stats["sigma_max"] >= stats["sigma_min"] >= 0
    # The post-activation unit's ReLU zeroes singular values that the sum map does not have.
    assert unit0["unit"]["frac_zero"] >= unit0["sum"]["frac_zero"]
    arrays = np.load(tmp_path / "analysis" / "spectra_epoch002.npz")
    sigma = arrays["unit00_sum_sigma"]
    assert sigma.shape == (2, 1024) and np.all(np.diff(sigma, axis=1) <= 1e-6)
    assert (tmp_path / "analysis" / "spectra_hist_epoch002.png").stat().st_size > 1000
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["analysis"]["units"][1]["index"] == 2
    metrics = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "spectrum/unit_02/unit/frac_one" in metrics
    run = OfflineRun.read(next((tmp_path / "wandb").glob("offline-run-*")))
    (row,) = [r for r in run.history if "spectrum/unit_00/sum/hist" in r]
    assert row["spectrum/unit_00/sum/hist"]["_type"] == "histogram" and row["epoch"] == 2
    (scalars,) = [r for r in run.history if "spectrum/unit_02/unit/frac_one" in r]
    assert scalars["spectrum/unit_02/unit/frac_one"] == analysis["units"][1]["unit"]["frac_one"]
    assert scalars["epoch"] == 2


def test_analyze_akamaster_checkpoint_on_an_image_folder(tmp_path):
    path = tmp_path / "resnet20.th"
    torch.save({"state_dict": akamaster_state(20), "best_prec1": 91.0}, path)
    imgs = make_image_folder(tmp_path / "imgs", classes=("cat", "ship"), per_class=2)
    result = run_cli(
        [
            "model.depth=20",
            f"checkpoint.path={path}",
            "checkpoint.format=akamaster",
            "data=image_folder",
            f"data.root={imgs}",
            f"data.classes={CIFAR10}",
            "data.batch_size=4",
            "data.mean=[0.485,0.456,0.406]",
            "data.std=[0.229,0.224,0.225]",
            "analysis.units=[7,8]",
            "analysis.images=1",
            "analysis.maps=[sum,unit]",
            "analysis.method=count",
            "analysis.histogram.units=[8]",
            "analysis.histogram.bins=3",
            "analysis.perturbation.attack=fgsm",
            "analysis.perturbation.eps=0.00392",
            f"hydra.run.dir={tmp_path / 'job'}",
        ],  # fmt: skip
        cwd=tmp_path,
        module="resnet_dyn.cli.analyze",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "completed"
    units = summary["analysis"]["units"]
    assert [u["index"] for u in units] == [7, 8] and units[0]["stage"] == 2
    assert units[0]["dim_in"] == 64 * 8 * 8
    assert units[0]["sum"]["method"].startswith("count+")
    assert units[0]["sum"]["fractions"] == units[1]["unit"]["fractions"] == "exact"
    assert 0.0 <= summary["analysis"]["accuracy"] <= 1.0
    pert = summary["analysis"]["perturbation"]
    assert pert["attack"] == "fgsm" and pert["eps"] == 0.00392
    for curve in ("adversarial_rel", "random_rel", "adversarial_abs", "random_abs"):
        assert len(pert[curve]) == 10  # the input of each of 9 units, and the output
    assert pert["attacked_accuracy"] <= pert["clean_accuracy"]
    identity = summary["analysis"]["identity"]
    assert len(identity["scaled"]) == 9 and identity["scaled_mean"] > 0
    job = tmp_path / "job"
    assert (job / "analysis" / "perturbation_final.png").is_file()
    arrays = np.load(job / "analysis" / "spectra_final.npz")
    assert "unit07_sum_hist_counts" not in arrays  # only the units asked for are counted
    for kind in ("sum", "unit"):  # every singular value in one of the 3 bins
        assert arrays[f"unit08_{kind}_hist_counts"].sum(1).tolist() == [4096]
    assert (job / "analysis" / "spectra_hist_final.png").is_file()
    assert list((job / "wandb").glob("offline-run-*"))


def test_analyze_bad_unit_index_is_one_line(tmp_path):
    result = run_cli(
        ["analysis.units=[99]", "logger=none", f"hydra.run.dir={tmp_path / 'job'}"],
        cwd=tmp_path,
        module="resnet_dyn.cli.analyze",
    )
    assert result.returncode == 2
    assert "analysis.units" in result.stderr and "Traceback" not in result.stderr
