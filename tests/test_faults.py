"""Faults injected into real training processes: signals, kills, unwritable folders, secrets."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import NASTY_TAG, SECRETS, run_cli, start_cli
from wandb_records import OfflineRun

from resnet_dyn.training.preemption import CheckpointOnSignal, Preempted

# Digits, ResNet-8: 17 steps per epoch, well under a second each on one core.
TRAIN = ["model.depth=8", "logger=none", "callbacks=default", "trainer.enable_progress_bar=false"]


def _train_rows(metrics: Path) -> list[tuple[int, int]]:
    """``(step, epoch)`` of each training-loss row of a job's ``metrics.csv`` so far (the CSV
    logger writes a row at every step); a row being written is left out."""
    try:
        with open(metrics, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        return []
    found = []
    for row in rows:
        try:
            if row.get("train/loss"):
                found.append((int(row["step"]), int(float(row["epoch"]))))
        except (TypeError, ValueError):
            continue
    return found


def _wait_for_epoch(metrics: Path, epoch: int, proc: subprocess.Popen, timeout: float = 240):
    """Wait until ``metrics`` shows a training step of ``epoch``; return the rows then."""
    deadline = time.time() + timeout
    while True:
        rows = _train_rows(metrics)
        if any(e >= epoch for _, e in rows):
            return rows
        assert proc.poll() is None, f"exited early: {proc.communicate()[0][-2000:]}"
        assert time.time() < deadline, f"no step of epoch {epoch} in {metrics}"
        time.sleep(0.02)


def _end(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, and close its output pipe."""
    proc.kill()
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


# 68 steps per epoch (1,077 training digits in batches of 16), about 10 ms each: a signal
# sent at the first step of epoch 1 lands well before that epoch's end.
SIGNAL_BATCH, SIGNAL_EPOCHS = 16, 3


# SIGTERM (a scheduler's stop); SIGUSR1 takes the same handler (preemption.stop_signals),
# whose step logic the deterministic test below covers for every step of an epoch.
@pytest.mark.slow  # several real processes one after another (make test-fast skips it)
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_saves_a_checkpoint_mid_epoch_and_the_rerun_finishes(signum, tmp_path):
    job = tmp_path / "job"
    # SIGTERM's job logs to W&B (offline): a resumed job must stay one W&B run.
    train = [a for a in TRAIN if a != "logger=none"] if signum == signal.SIGTERM else TRAIN
    args = [*train, f"data.batch_size={SIGNAL_BATCH}", f"trainer.max_epochs={SIGNAL_EPOCHS}",
            f"hydra.run.dir={job}"]  # fmt: skip
    metrics = job / "csv" / "metrics.csv"
    proc = start_cli(args, tmp_path)
    try:
        before = _wait_for_epoch(metrics, 1, proc)  # epoch 0 is whole, epoch 1 under way
        proc.send_signal(signum)
        out = proc.communicate(timeout=120)[0]
    finally:
        _end(proc)
    assert proc.returncode == 128 + signum, out[-2000:]
    assert "Traceback" not in out
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "preempted", summary.get("error")
    per_epoch = sum(1 for _, epoch in before if epoch == 0)
    assert per_epoch == -(-1077 // SIGNAL_BATCH)  # the steps of epoch 0, each logged once
    step = summary["preempted_step"]
    # The signal came after the last step seen, and stopped training inside an epoch: not at
    # an epoch's end, where an epoch-end checkpoint would do as well.
    assert step > max(s for s, _ in before)
    assert step % per_epoch != 0, f"stopped at step {step}, an epoch's end ({per_epoch} per epoch)"
    saved = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    # The checkpoint is the step the signal stopped at, in the epoch under way.
    assert saved["global_step"] == step and saved["epoch"] == step // per_epoch

    rerun = run_cli(args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resuming from {job / 'checkpoints' / 'last.ckpt'}" in rerun.stdout + rerun.stderr
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == SIGNAL_EPOCHS
    # The CSV history from before the signal is kept and the rerun goes on from the signal's
    # step: every step logged once, in its epoch, and every epoch has its validation row.
    steps = _train_rows(metrics)
    assert steps == [(s, s // per_epoch) for s in range(SIGNAL_EPOCHS * per_epoch)]
    with open(metrics, newline="") as f:
        epochs = [float(r["epoch"]) for r in csv.DictReader(f) if r.get("val/acc")]
    assert epochs == list(range(SIGNAL_EPOCHS))
    if signum == signal.SIGTERM:
        # One run id in the job folder and in both pieces of the offline run (a folder per
        # process; `wandb sync` uploads them in order into the same run, resuming it).
        first, last = (OfflineRun.read(d) for d in sorted((job / "wandb").glob("offline-run-*")))
        assert (job / "wandb" / "run_id").read_text().strip() == first.run_id == last.run_id
        assert first.exit_code == 128 + signum and first.summary["status"] == "preempted"
        assert first.summary["preempted_step"] == step
        assert last.exit_code == 0 and last.summary["status"] == "completed"
        assert (last.name, last.group) == (first.name, first.group)


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("error:")]
    return line


@pytest.mark.parametrize("multirun", [False, True])
def test_a_read_only_output_folder_is_one_line_before_anything_runs(multirun, tmpfs, tmp_path):
    read_only = tmpfs("ro", read_only=True)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    args = (["-m"] if multirun else []) + [*TRAIN, "debug=tiny", f"{key}={read_only / 'job'}"]
    line = _one_error_line(run_cli(args, cwd=tmp_path))
    assert key in line and "read-only file system" in line


def test_an_output_folder_below_a_file_is_one_line(tmp_path):
    (tmp_path / "results").write_text("a file where a folder should be")
    result = run_cli(
        [*TRAIN, "debug=tiny", f"hydra.run.dir={tmp_path / 'results' / 'job'}"], cwd=tmp_path
    )
    line = _one_error_line(result)
    assert "hydra.run.dir" in line and "not a folder" in line


def test_a_full_disk_mid_training_is_one_line_and_leaves_no_half_written_file(tmpfs, tmp_path):
    # Room for the configs, logs and summary, not for a 2 MB checkpoint of a ResNet-20.
    full = tmpfs("full", size="400k")
    job = full / "job"
    line = _one_error_line(
        run_cli([*TRAIN, "model.depth=20", "debug=tiny", f"hydra.run.dir={job}"], cwd=tmp_path)
    )
    assert "hydra.run.dir" in line and "no space left" in line
    for ckpt in job.rglob("*.ckpt"):  # every checkpoint there is whole
        torch.load(ckpt, map_location="cpu", weights_only=True)
    assert not list(job.rglob("*.tmp")), "a temporary file was left behind"
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]


def test_csv_rows_survive_a_resume_and_a_torn_row_is_cut(tmp_path):
    from resnet_dyn.training.loggers import SafeCSVLogger

    logger = SafeCSVLogger(save_dir=tmp_path, name="csv", version="")
    for step in range(3):
        logger.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    logger.save()
    path = tmp_path / "csv" / "metrics.csv"
    with open(path, "a") as f:
        f.write("0.2")  # a row cut short by a kill: no newline
    # Resumed from a checkpoint at step 2: steps 0 and 1 are history, step 2 is logged again.
    resumed = SafeCSVLogger(save_dir=tmp_path, name="csv", version="", resume_step=2)
    resumed.log_metrics({"loss": 0.3}, step=2)
    resumed.save()
    resumed.log_metrics({"loss": 0.25, "acc": 0.5}, step=3)  # a new column: a rewrite
    resumed.save()
    rows = path.read_text().splitlines()
    assert rows == ["acc,loss,step", ",1.0,0", ",0.5,1", ",0.3,2", "0.5,0.25,3"]
    # A fresh run in the same folder starts a fresh file, as Lightning's logger does.
    fresh = SafeCSVLogger(save_dir=tmp_path, name="csv", version="")
    fresh.log_metrics({"loss": 9.0}, step=0)
    fresh.save()
    assert path.read_text().splitlines() == ["loss,step", "9.0,0"]


def test_no_secret_from_the_environment_is_written_anywhere(analysed_sweep):
    # conftest's sweep (every analysis, offline W&B, then resnet-dyn-report) ran with a W&B
    # key and another secret in its environment, as on a cluster node.
    sweep, report, printed = analysed_sweep
    assert report.returncode == 0, report.stderr[-2000:]
    assert list(sweep.glob("0/wandb/offline-run-*/run-*.wandb"))  # a real offline run
    files = [p for p in sweep.rglob("*") if p.is_file()]
    assert len(files) > 20 and any(p.name == "report.html" for p in files)
    # The sweep's tag is a marker: the scan below does see what the configs carry.
    seen = set()
    for path in files:
        data = path.read_bytes()
        if NASTY_TAG.encode() in data:
            seen.add(path.suffix)
        for secret in SECRETS.values():
            assert secret.encode() not in data, f"{secret} written into {path}"
    assert {".json", ".wandb", ".yaml"} <= seen, seen
    for secret in SECRETS.values():
        assert secret not in printed


@pytest.mark.slow  # several real processes one after another (make test-fast skips it)
def test_sigkill_mid_epoch_then_rerun_ends_with_the_metrics_of_an_uninterrupted_run(tmp_path):
    # Three epochs: a kill meant for epoch 1 that lands late still lands mid-epoch (in 2).
    args = [*TRAIN, "trainer.max_epochs=3"]
    whole = run_cli([*args, f"hydra.run.dir={tmp_path / 'whole'}"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    job = tmp_path / "killed"
    metrics = job / "csv" / "metrics.csv"
    proc = start_cli([*args, f"hydra.run.dir={job}"], tmp_path)
    try:
        before = _wait_for_epoch(metrics, 1, proc)  # epoch 0 is done, epoch 1 under way
    finally:
        _end(proc)
    assert not (job / "summary.json").exists()  # it did not finish
    # Killed mid-epoch: it had trained steps past its last checkpoint (an epoch's end).
    per_epoch = sum(1 for _, epoch in before if epoch == 0)
    trained = max(step for step, _ in _train_rows(metrics)) + 1
    saved = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] % per_epoch == 0 and saved["global_step"] < trained
    assert trained % per_epoch != 0, f"killed after step {trained}, an epoch's end"
    rerun = run_cli([*args, f"hydra.run.dir={job}"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout + rerun.stderr
    expected = json.loads((tmp_path / "whole" / "summary.json").read_text())["metrics"]
    resumed = json.loads((job / "summary.json").read_text())["metrics"]
    # Same seed on the CPU: the data order and augmentation of each epoch depend only on
    # (seed, epoch), so the resumed run retraces the uninterrupted one.
    assert resumed.keys() == expected.keys()
    for name, value in expected.items():
        assert resumed[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name


class _Tiny(L.LightningModule):
    """A linear model on 4 batches per epoch that records the epochs it validated."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3, 1)
        self.validated: list[int] = []

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.validated.append(self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _SignalAt(L.Callback):
    """Marks a signal as received when training reaches ``(epoch, batch)``, as the handler of
    :class:`CheckpointOnSignal` does when SIGTERM lands during that step."""

    def __init__(self, target: CheckpointOnSignal, epoch: int, batch: int) -> None:
        self.target, self.at = target, (epoch, batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == self.at:
            self.target.received = signal.SIGTERM


@pytest.mark.parametrize("batch", [1, 3])  # mid-epoch, and the epoch's last batch
def test_a_signal_on_any_step_loses_no_validation_of_the_resumed_run(batch, tmp_path):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 3)), 4)
    ckpt = tmp_path / "last.ckpt"

    def trainer(*callbacks) -> L.Trainer:
        return L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path, callbacks=list(callbacks))  # fmt: skip

    stopper = CheckpointOnSignal(ckpt)
    first = _Tiny()
    with pytest.raises(Preempted) as stop:
        trainer(stopper, _SignalAt(stopper, 1, batch)).fit(first, data, data)
    stopper.teardown(None, first, "fit")
    # Stopped at the signal's step, or after that epoch's validation if it was the last.
    assert stop.value.step == 4 + batch + 1
    assert first.validated == ([0, 1] if batch == 3 else [0])
    second = _Tiny()
    trainer().fit(second, data, data, ckpt_path=ckpt)
    assert sorted(first.validated + second.validated) == [0, 1, 2]
