"""A sweep on a real SLURM cluster through ``hydra/launcher=slurm_cpu`` (submitit).

Needs a reachable cluster with a ``debug`` partition, e.g. the single-node one of
``scripts/local-slurm.sh start``. Without one the test skips, except under ``CI=true``, where a
missing cluster is a broken CI set-up and fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from conftest import run_cli, start_cli

PARTITION = "debug"  # the partition of conf/hydra/launcher/slurm_cpu.yaml
READY_STATES = {"idle", "mixed", "allocated", "completing"}


def _cluster_problem() -> str | None:
    """Why no job could run on ``PARTITION`` now, or None when a node there is up."""
    if shutil.which("sinfo") is None:
        return "no SLURM client (sinfo not found)"
    try:
        out = subprocess.run(
            ["sinfo", "--noheader", f"--partition={PARTITION}", "--format=%a %T"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld unreachable"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip() or out.returncode}"
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    if not rows:
        return f"no partition {PARTITION!r}"
    if not any(avail == "up" and state in READY_STATES for avail, state in rows):
        return f"no node up in partition {PARTITION!r}: {out.stdout.strip()}"
    return None


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    problem = _cluster_problem()
    if problem is None:
        return
    message = f"no SLURM cluster: {problem} (start one with scripts/local-slurm.sh start)"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)  # CI promises a cluster; skipping would hide it
    pytest.skip(message)


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())


def test_sweep_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    # A unique job name finds this sweep's jobs for scancel if the sweep does not finish.
    name = f"resnet_dyn_test_{uuid.uuid4().hex[:8]}"
    args = [
        "-m",
        "hydra/launcher=slurm_cpu",
        "model.depth=8,14",
        "model.skip_scale=0.5,1.0",
        "debug=tiny",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
        f"hydra.launcher.name={name}",
        # Runs in the batch script: the job's stdout shows the id SLURM gave it.
        "hydra.launcher.setup=['echo SLURM_JOB_ID=$SLURM_JOB_ID']",
    ]
    try:
        result = run_cli(args, cwd=tmp_path, timeout=300)
    finally:
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr[-3000:]

    jobs = _job_dirs(sweep)
    assert len(jobs) == 4, sorted(p.name for p in sweep.iterdir())
    seen = set()
    for job in jobs:
        summary = json.loads((job / "summary.json").read_text())
        assert summary["status"] == "completed", summary.get("error")
        seen.add((summary["config"]["model"]["depth"], summary["config"]["model"]["skip_scale"]))
    assert seen == {(8, 0.5), (8, 1.0), (14, 0.5), (14, 1.0)}

    # submitit's folder per array task, named <array job id>_<task>, holds the task's logs:
    # stdout from the batch script (SLURM_JOB_ID set by slurmd) and submitit's own record of
    # the SLURM job environment it found.
    tasks = sorted(p for p in (sweep / ".submitit").iterdir() if re.fullmatch(r"\d+_\d+", p.name))
    assert len(tasks) == 4, sorted(p.name for p in (sweep / ".submitit").iterdir())
    for task in tasks:
        out = (task / f"{task.name}_0_log.out").read_text()
        err = (task / f"{task.name}_0_log.err").read_text()
        assert re.search(r"^SLURM_JOB_ID=\d+$", out, re.MULTILINE), out[-2000:]
        assert f"JobEnvironment(job_id={task.name}," in out + err, (out + err)[-2000:]
        assert "Job completed successfully" in out + err, (out + err)[-2000:]


def _squeue(name: str) -> list[tuple[str, str, str]]:
    out = subprocess.run(
        ["squeue", "--noheader", f"--name={name}", "--format=%i %T %r"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return [tuple(line.split()) for line in out.splitlines() if line.strip()]  # type: ignore[misc]


def test_a_preempted_slurm_job_checkpoints_is_requeued_and_finishes(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    name = f"resnet_dyn_test_{uuid.uuid4().hex[:8]}"
    args = [
        "-m",
        "hydra/launcher=slurm_cpu",
        "model.depth=8",
        "trainer.max_epochs=30",
        "callbacks=default",
        "logger=none",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep}",
        f"hydra.launcher.name={name}",
    ]
    sweep_proc = start_cli(args, tmp_path)
    try:
        deadline = time.time() + 240
        while not (sweep / "0" / "checkpoints" / "last.ckpt").is_file():
            assert sweep_proc.poll() is None, sweep_proc.communicate()[0][-3000:]
            assert time.time() < deadline, "the job never checkpointed"
            time.sleep(0.1)
        (job_id, state, _), *_ = _squeue(name)
        assert state == "RUNNING"
        # Preemption as SLURM does it for a submitit job: SIGTERM, then submitit's SIGUSR2.
        for sig in ("TERM", "USR2"):
            subprocess.run(["scancel", f"--signal={sig}", job_id], check=True, timeout=30)
            time.sleep(0.5)
        # A requeued job waits for a begin time SLURM sets (minutes); let it start now, but
        # not within the second its first run's credential was revoked: credential times are
        # whole seconds, and a restart in that same second is killed ("Job credential revoked").
        time.sleep(1.5)
        deadline = time.time() + 60
        while not any(s == "PENDING" for _, s, _ in _squeue(name)):
            assert time.time() < deadline, f"not requeued: {_squeue(name)}"
            time.sleep(0.5)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], timeout=30)
        out = sweep_proc.communicate(timeout=240)[0]
    finally:
        if sweep_proc.poll() is None:
            sweep_proc.kill()
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=30)
    assert sweep_proc.returncode == 0, out[-3000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 30, summary.get("error")
    (task,) = (p for p in (sweep / ".submitit").iterdir() if p.name.startswith(job_id))
    log = "".join(p.read_text() for p in task.glob("*_log.*"))
    assert "checkpoint saved at step" in log  # on SIGTERM, training went on
    assert "stopped on SIGUSR2" in log  # on SIGUSR2, checkpoint and stop
    assert "this job is preempted" in log  # then submitit requeued it
    assert "resuming from" in log  # and the second run resumed from the checkpoint
