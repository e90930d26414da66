"""What W&B will show of a sweep, read back from the offline run files the jobs write
(``wandb_records.OfflineRun``: the records ``wandb sync`` uploads), not from our own logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli_env, run_cli
from wandb_records import OfflineRun, read_records

from resnet_dyn.dynamics.perturbation import SHARES

TINY = ["debug=tiny", "trainer.enable_progress_bar=false"]
SPECTRUM = ["callbacks=spectrum", "analysis.units=[0,1]", "analysis.images=1"]


def offline_runs(job: Path) -> list[OfflineRun]:
    return [OfflineRun.read(d) for d in sorted((job / "wandb").glob("offline-run-*"))]


def only_run(job: Path) -> OfflineRun:
    (run,) = offline_runs(job)
    return run


def table_of(run_dir: Path, value: dict) -> dict:
    """The contents of a table logged to a run (its JSON file in the run's files)."""
    assert value["_type"] == "table-file", value
    return json.loads((run_dir / "files" / value["path"]).read_text())


def _walk_keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _walk_keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _walk_keys(v)}
    return set()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """2 depths x 2 seeds with the spectrum analysis, as a user would run it."""
    root = tmp_path_factory.mktemp("wandb")
    result = run_cli(
        ["-m", "model.depth=8,14", "seed=0,1", *TINY, *SPECTRUM, f"hydra.sweep.dir={root / 's'}"],
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "s"


@pytest.mark.slow  # a real W&B sweep and an analyze sweep on it (make test-fast skips it)
def test_sweep_runs_are_named_grouped_and_summarised_truthfully(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    runs = [only_run(j) for j in jobs]
    names = [r.name for r in runs]
    assert names == [
        "model.depth=8,seed=0 #0",
        "model.depth=8,seed=1 #1",
        "model.depth=14,seed=0 #2",
        "model.depth=14,seed=1 #3",
    ]
    # Seeds are replicates: one group per depth, never two depths in one group.
    groups = [r.group for r in runs]
    assert groups[0] == groups[1] != groups[2] == groups[3]
    assert groups[0].startswith("model.depth=8 [") and groups[2].startswith("model.depth=14 [")
    sweep_id = "/".join(sweep.resolve().parts[-2:])
    for job, run in zip(jobs, runs, strict=True):
        summary = json.loads((job / "summary.json").read_text())
        assert run.exit_code == 0
        assert run.summary["status"] == "completed" and run.summary["epochs"] == 2
        assert run.summary["params"] == summary["params"] > 0
        assert run.summary["wall_s"] > 0
        # The runs table shows the best epoch: val/acc.max, not the last val/acc.
        assert run.summary["val/acc"]["max"] == pytest.approx(
            max(r["val/acc"] for r in run.history if "val/acc" in r)
        )
        assert run.metrics["val/acc"].summary.max and run.metrics["val/loss"].summary.min
        # The config: swept keys and the sweep's id, no machine paths or _target_.
        assert run.config["swept"] == ["model.depth", "seed"]
        assert run.config["sweep_id"] == sweep_id and f"sweep:{sweep_id}" in run.tags
        assert run.config["model"]["depth"] in (8, 14) and "overrides" in run.config
        assert "paths" not in run.config and "_target_" not in _walk_keys(run.config)
        assert str(sweep) not in json.dumps(run.config)
        assert "analysis" not in run.config["callbacks"]["spectrum"]  # no repeated blocks
        assert (job / "wandb" / "run_id").read_text().strip() == run.run_id


@pytest.mark.slow  # a real W&B sweep and an analyze sweep on it (make test-fast skips it)
def test_spectra_are_tables_against_the_unit_on_an_epoch_axis(sweep):
    job = sweep / "0"
    run_dir = next((job / "wandb").glob("offline-run-*"))
    run = OfflineRun.read(run_dir)
    (row,) = [r for r in run.history if "spectrum/table" in r]
    table = table_of(run_dir, row["spectrum/table"])
    columns = table["columns"]
    assert {"epoch", "unit", "stage", "map", "frac_one", "fractions"} <= set(columns)
    cells = [dict(zip(columns, r, strict=True)) for r in table["data"]]
    assert sorted((c["unit"], c["map"]) for c in cells) == [
        (0, "sum"), (0, "unit"), (1, "sum"), (1, "unit"),
    ]  # fmt: skip
    summary = json.loads((job / "summary.json").read_text())["analysis"]
    assert cells[0]["frac_one"] == pytest.approx(summary["units"][0]["sum"]["frac_one"])
    assert row["epoch"] == 2 and all(c["epoch"] == 2 for c in cells)
    assert "spectrum/frac_one_by_unit_table" in row and "figures/spectra_hist" in row
    assert run.metrics["spectrum/*"].step_metric == "epoch"
    assert run.metrics["spectrum/unit_*"].options.hidden


def test_the_reader_follows_records_across_blocks_and_checks_them(tmp_path):
    """A record longer than a 32 KiB block is reassembled; a flipped byte is caught."""
    code = (
        "import wandb\n"
        "run = wandb.init(mode='offline', dir='.', project='p', config={'a': 1})\n"
        "run.log({'long': 'x' * 100000, 'n': 3})\n"
        "run.finish(exit_code=5)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    run = OfflineRun.read(run_dir)
    (row,) = [r for r in run.history if "long" in r]
    assert row["long"] == "x" * 100000 and row["n"] == 3
    assert run.config["a"] == 1 and run.exit_code == 5
    path = next(run_dir.glob("*.wandb"))
    data = bytearray(path.read_bytes())
    data[40000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        read_records(path)


@pytest.fixture(scope="module")
def analysed(sweep, tmp_path_factory) -> Path:
    """resnet-dyn-analyze -m over two skip scales of a checkpoint of the sweep."""
    root = tmp_path_factory.mktemp("analyse")
    ckpt = sweep / "0" / "checkpoints" / "last.ckpt"
    result = run_cli(
        ["-m", f"checkpoint.path={ckpt}", "analysis.intervention.skip_scale=0.5,1.0",
         "model.depth=8", "analysis.units=[0,1]", "analysis.images=1",
         "analysis.perturbation.project=true", f"hydra.sweep.dir={root / 'a'}"],
        cwd=root, module="resnet_dyn.cli.analyze",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "a"


@pytest.mark.slow  # a real W&B sweep and an analyze sweep on it (make test-fast skips it)
def test_analyze_runs_carry_the_same_names_groups_tables_and_definitions(sweep, analysed):
    trained = only_run(sweep / "0")
    runs = [only_run(analysed / str(i)) for i in (0, 1)]
    assert [r.name for r in runs] == [
        "analysis.intervention.skip_scale=0.5 #0",
        "analysis.intervention.skip_scale=1.0 #1",
    ]
    assert runs[0].group != runs[1].group and runs[0].group.startswith("analysis.intervention")
    assert runs[0].config["swept"] == ["analysis.intervention.skip_scale"]
    assert set(runs[0].metrics) == set(trained.metrics)
    for run in runs:
        assert run.exit_code == 0 and run.summary["status"] == "completed"
        (row,) = [r for r in run.history if "spectrum/table" in r]
        assert row["epoch"] == 2  # the checkpoint's epochs
        assert {"perturbation/rel", "perturbation/abs", "figures/perturbation"} <= set(row) | {
            k.removesuffix("_table") for k in row
        }
    train_dir = next((sweep / "0" / "wandb").glob("offline-run-*"))
    (train_row,) = [r for r in trained.history if "spectrum/table" in r]
    analyse_dir = next((analysed / "0" / "wandb").glob("offline-run-*"))
    (row,) = [r for r in runs[0].history if "spectrum/table" in r]
    columns = table_of(analyse_dir, row["spectrum/table"])["columns"]
    assert columns == table_of(train_dir, train_row["spectrum/table"])["columns"]


@pytest.mark.slow  # a real W&B sweep and an analyze sweep on it (make test-fast skips it)
def test_an_intervention_reaches_every_analysis_and_perturbations_are_projected(analysed):
    jobs = [analysed / "0", analysed / "1"]
    half, one = (json.loads((j / "summary.json").read_text())["analysis"] for j in jobs)
    assert (half["intervention"]["skip_scale"], one["intervention"]["skip_scale"]) == (0.5, 1.0)
    for a in (half, one):  # the perturbation attacks the same (intervened) network
        assert a["perturbation"]["clean_accuracy"] == a["accuracy"]
    assert half["perturbation"]["adversarial_rel"] != pytest.approx(
        one["perturbation"]["adversarial_rel"], rel=1e-3
    )
    assert half["identity"]["scaled"] != pytest.approx(one["identity"]["scaled"], rel=1e-3)
    assert half["units"][0]["sum"]["frac_one"] != one["units"][0]["sum"]["frac_one"]
    proj = one["perturbation"]["projection"]
    assert proj["units"] == [0, 1] and proj["skipped"] == []
    for kind in ("adversarial", "random"):
        for i in range(2):
            total = sum(proj[kind][share][i] for share in SHARES)
            assert total == pytest.approx(1.0, abs=1e-6)
    assert (jobs[1] / "analysis" / "spectra_units_final.png").stat().st_size > 1000
