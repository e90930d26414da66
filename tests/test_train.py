"""Training end to end through the real configs, the real CLI and offline W&B."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONF, compose_config, make_image_folder, run_cli
from lightning.pytorch.strategies import DDPStrategy
from wandb_records import OfflineRun

from resnet_dyn.config.build import build
from resnet_dyn.training.job import run_job
from resnet_dyn.training.module import lr_factor, scaled_lr

GROUP_OPTIONS = {
    group: sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    for group in ("model", "data", "optim", "trainer", "logger", "callbacks", "experiment", "debug")
}


# Options that need a partner from another group to make sense.
PARTNER = {
    "model=dense_resnet": "data=circles",
    "model=mlp": "data=circles",
    "data=circles": "model=dense_resnet",
}


# What conf/trainer/gpu.yaml and ddp.yaml promise on top of default.yaml.
GPU_TRAINERS = {
    "trainer=gpu": {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"},
    "trainer=ddp": {"accelerator": "gpu", "devices": 2, "strategy": "ddp",
                    "sync_batchnorm": True, "precision": "bf16-mixed"},
}  # fmt: skip


def test_every_gpu_trainer_config_is_checked():
    assert {o for o in GROUP_OPTIONS["trainer"] if "gpu" in o or "ddp" in o} == {
        key.removeprefix("trainer=") for key in GPU_TRAINERS
    }


def _on_this_machine(trainer_cfg) -> dict:
    """Overrides that let a GPU trainer config instantiate here: none where there are the
    GPUs it asks for, else the CPU accelerator, keeping every other argument (devices,
    precision bf16-mixed, strategy ddp and sync_batchnorm are all valid on CPUs)."""
    if torch.cuda.is_available() and torch.cuda.device_count() >= trainer_cfg.devices:
        return {}
    return {"accelerator": "cpu"}


@pytest.mark.parametrize(
    "override", [f"{g}={o}" for g, opts in GROUP_OPTIONS.items() for o in opts]
)
def test_every_config_option_composes_and_instantiates(override, tmp_path):
    overrides = [override] + ([PARTNER[override]] if override in PARTNER else [])
    if override == "data=image_folder":
        overrides.append(f"data.root={make_image_folder(tmp_path / 'imgs', per_class=8)}")
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.paths.output_dir == str(tmp_path)
    dm = build(cfg.data)
    net = build(cfg.model, input_shape=dm.input_shape, num_classes=dm.num_classes)
    assert len(net.units) >= 1 and dm.num_classes >= 2
    promised = GPU_TRAINERS.get(override)
    if promised is None:
        trainer = build(cfg.trainer, logger=False)
    else:
        assert {key: cfg.trainer.get(key) for key in promised} == promised
        # Every other argument as written: a misspelt or invalid one fails here.
        trainer = build(cfg.trainer, logger=False, **_on_this_machine(cfg.trainer))
        assert trainer.precision == promised["precision"]
        assert trainer.num_devices == promised["devices"]
        assert isinstance(trainer.strategy, DDPStrategy) is ("strategy" in promised)
    assert isinstance(trainer, L.Trainer)
    assert trainer.max_epochs >= 1


def test_lr_scaling_and_schedule():
    assert scaled_lr(0.1, 128, 128, "none") == 0.1
    assert scaled_lr(0.1, 512, 128, "linear") == pytest.approx(0.4)
    assert scaled_lr(0.1, 32, 128, "sqrt") == pytest.approx(0.05)
    sched = {"name": "multistep", "milestones": [0.5, 0.75], "gamma": 0.1, "warmup_steps": 10,
             "warmup_start_factor": 0.1}  # fmt: skip
    assert lr_factor(0, 100, sched) == pytest.approx(0.1)
    assert lr_factor(5, 100, sched) == pytest.approx(0.55)
    assert [lr_factor(s, 100, sched) for s in (49, 50, 74, 75)] == pytest.approx(
        [1.0, 0.1, 0.1, 0.01]
    )
    cosine = dict(sched, name="cosine", warmup_steps=0)
    assert lr_factor(0, 100, cosine) == 1.0 and lr_factor(100, 100, cosine) == pytest.approx(0.0)


# Experiments on CIFAR-10 or MNIST run here on digits, since those cannot be downloaded offline.
OFFLINE_DATA = {
    "rothauge": "digits",
    "hauser": "digits",
    "lagzi_mnist": "digits",
    "lagzi_noise": "digits",
    "golmant": "digits",
}


@pytest.mark.parametrize("experiment", GROUP_OPTIONS["experiment"])
def test_every_experiment_runs_fast_dev_run(experiment, tmp_path):
    data = [f"data={OFFLINE_DATA[experiment]}"] if experiment in OFFLINE_DATA else []
    cfg = compose_config(
        "train",
        # One probe image: the experiment's wiring is tested here, the analyses elsewhere.
        [
            f"experiment={experiment}",
            "debug=fast_dev_run",
            "logger=none",
            "analysis.images=1",
            *data,
        ],  # fmt: skip
        tmp_path,
    )
    summary = run_job(cfg)
    assert summary["status"] == "completed"
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "completed" and "test/acc" in on_disk["metrics"]


def test_seeded_run_is_reproducible_and_writes_csv(tmp_path):
    results = []
    for run in ("a", "b"):
        cfg = compose_config(
            "train", ["debug=tiny", "logger=none", "model.depth=8"], tmp_path / run
        )
        results.append(run_job(cfg)["metrics"])
        assert (tmp_path / run / "csv" / "metrics.csv").is_file()
        assert (tmp_path / run / "checkpoints" / "last.ckpt").is_file()
    assert results[0] == results[1]
    cfg = compose_config(
        "train", ["debug=tiny", "logger=none", "model.depth=8", "seed=1"], tmp_path / "c"
    )
    assert run_job(cfg)["metrics"] != results[0]


def test_failed_job_records_failed_summary(tmp_path):
    cfg = compose_config("train", ["model.depth=21", "logger=none"], tmp_path)
    with pytest.raises(ValueError, match="model.depth"):
        run_job(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "model.depth" in summary["error"]


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


def test_multirun_failed_job_does_not_stop_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "model.depth=21,8",
            "debug=tiny",
            "callbacks=default",  # the sweep's bookkeeping is tested, not the analyses
            "logger=none",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep}",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    statuses = [json.loads((j / "summary.json").read_text())["status"] for j in _job_dirs(sweep)]
    assert statuses == ["failed", "completed"]
    assert "model.depth" in result.stderr


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.depth=21", "model.depth"),
        ("model.skip_scale=-1", "model.skip_scale"),
        ("data=imagenet", "data"),
        ("model.not_a_key=1", "not_a_key"),
        ("optim.lr_scaling=cubic", "optim.lr_scaling"),
    ],
)
def test_bad_overrides_fail_with_a_message_naming_the_key(override, key, tmp_path):
    result = run_cli([override, "logger=none"], cwd=tmp_path)
    assert result.returncode != 0
    assert key in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_dataset_offline_gives_one_line(tmp_path):
    result = run_cli(
        ["data=cifar10", f"paths.data_dir={tmp_path / 'nodata'}", "logger=none"], cwd=tmp_path
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and str(tmp_path / "nodata") in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow  # a sweep and two joblib worker processes (make test-fast skips it)
def test_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "model.depth=8,14",
            "debug=tiny",
            "callbacks=default",  # the launcher is tested, not the analyses
            "logger=none",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep}",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = [json.loads((j / "summary.json").read_text()) for j in _job_dirs(sweep)]
    assert [s["status"] for s in summaries] == ["completed", "completed"]
    assert sorted(s["config"]["model"]["depth"] for s in summaries) == [8, 14]


@pytest.mark.slow  # several real processes one after another (make test-fast skips it)
def test_a_killed_sweep_rerun_finishes_only_the_unfinished_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    # No analysis callbacks: what is tested is the sweep's bookkeeping, not the analyses.
    args = ["-m", "model.depth=8,14,20", "debug=tiny", "trainer.max_epochs=3", "logger=none",
            "callbacks=default", "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "resnet_dyn", *args], cwd=tmp_path, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        # Kill the whole sweep as soon as job 1 has its first checkpoint, mid-training.
        deadline = time.time() + 240
        while not (sweep / "1" / "checkpoints" / "last.ckpt").is_file():
            assert proc.poll() is None and time.time() < deadline, "job 1 never checkpointed"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "completed"
    assert not (sweep / "1" / "summary.json").exists()
    kept = (sweep / "0" / "summary.json").read_text()
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (sweep / "0" / "summary.json").read_text() == kept  # skipped, not redone
    assert "resuming from" in result.stderr + result.stdout
    summaries = [json.loads((job / "summary.json").read_text()) for job in _job_dirs(sweep)]
    assert [s["status"] for s in summaries] == ["completed"] * 3
    assert all(s["epochs"] == 3 for s in summaries)
    # A completed job with another config in the same folder is refused, not overwritten.
    other = run_cli(["-m", "model.depth=8", *args[2:], "seed=5"], cwd=tmp_path)
    assert "another config" in other.stderr
    assert (sweep / "0" / "summary.json").read_text() == kept


def test_divergence_ends_the_job_as_diverged_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        [
            "-m",
            "optim.lr=1.0e6,0.1",
            "model.depth=8",
            "debug=tiny",
            "callbacks=spectrum",
            "trainer.enable_progress_bar=false",
            f"hydra.sweep.dir={sweep}",
        ],  # fmt: skip
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    diverged, fine = (json.loads((j / "summary.json").read_text()) for j in _job_dirs(sweep))
    assert diverged["status"] == "diverged" and diverged["diverged_epoch"] in (0, 1)
    assert "NaN or inf" in diverged["error"]
    assert fine["status"] == "completed"
    # W&B shows the truth: the diverged job's run ends with a non-zero exit code and its
    # outcome in the summary; the completed one with 0.
    runs = [OfflineRun.read(next((j / "wandb").glob("offline-run-*"))) for j in _job_dirs(sweep)]
    assert runs[0].exit_code == 2 and runs[0].summary["status"] == "diverged"
    assert runs[0].summary["diverged_epoch"] == diverged["diverged_epoch"]
    assert "NaN" in runs[0].summary["error"]
    assert runs[1].exit_code == 0 and runs[1].summary["status"] == "completed"


def test_wandb_failure_warns_and_training_goes_on(tmp_path):
    # Online mode with no API key anywhere (fresh HOME): wandb.init fails at once.
    result = run_cli(
        [
            "logger.wandb.offline=false",
            "debug=tiny",
            "callbacks=default",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={tmp_path / 'job'}",
        ],  # fmt: skip
        cwd=tmp_path,
        env={"HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "W&B unavailable" in result.stdout + result.stderr
    assert json.loads((tmp_path / "job" / "summary.json").read_text())["status"] == "completed"
    assert (tmp_path / "job" / "csv" / "metrics.csv").is_file()


def test_truncated_checkpoint_stops_resume_with_one_line_and_is_kept(tmp_path):
    job = tmp_path / "job"
    (job / "checkpoints").mkdir(parents=True)
    (job / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    result = run_cli(["debug=tiny", "logger=none", f"hydra.run.dir={job}"], cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "last.ckpt" in errors[0] and "Traceback" not in result.stderr
    assert (job / "checkpoints" / "last.ckpt").read_bytes() == b"PK\x03\x04 truncated"


@pytest.mark.slow  # two real sweeps at once (make test-fast skips it)
def test_two_sweeps_started_together_write_to_distinct_folders(tmp_path):
    args = [sys.executable, "-m", "resnet_dyn", "-m", "model.depth=8", "debug=fast_dev_run",
            "logger=none", "callbacks=default", "trainer.enable_progress_bar=false"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )  # fmt: skip
        for _ in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    sweeps = [p for p in (tmp_path / "multirun").glob("*/*") if p.is_dir()]
    assert len(sweeps) == 2
    assert all((s / "0" / "summary.json").is_file() for s in sweeps)
