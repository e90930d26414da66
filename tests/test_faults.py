"""Faults injected into real training processes: signals, kills, unwritable folders, secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli

# Digits, ResNet-8: 17 steps per epoch, well under a second each on one core.
TRAIN = ["model.depth=8", "logger=none", "callbacks=default", "trainer.enable_progress_bar=false"]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_FULL"))}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(
        [sys.executable, "-m", "resnet_dyn", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not path.is_file():
        assert proc.poll() is None, f"exited early: {proc.communicate()[0][-2000:]}"
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_a_checkpoint_mid_epoch_and_the_rerun_finishes(signum, tmp_path):
    job = tmp_path / "job"
    args = [*TRAIN, "trainer.max_epochs=8", f"hydra.run.dir={job}"]
    proc = _start(args, tmp_path)
    last = job / "checkpoints" / "last.ckpt"
    _wait_for(last, proc)  # the end of epoch 0: training is under way
    time.sleep(0.3)
    proc.send_signal(signum)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signum, out[-2000:]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "preempted", summary.get("error")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    # The checkpoint is the step the signal stopped at, not the last epoch end.
    assert saved["global_step"] == summary["preempted_step"] > 0
    assert "Traceback" not in out

    rerun = run_cli(args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming from" in rerun.stdout + rerun.stderr
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 8
