"""``resnet-dyn-dashboard`` through its console entry, on a small sweep folder laid out as
Hydra and the training job write it: the dry run's workspace (swept keys, filter, grouping,
sections), and the one-line failures without an API key or network and for a non-sweep."""

from __future__ import annotations

import json
import os
import pty
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from resnet_dyn.logs.wandb_run import sweep_id
from resnet_dyn.report import dashboard

MODULE = "resnet_dyn.cli.dashboard"
DEPTHS, SEEDS = (8, 14), (0, 1)


def job_config(depth: int, seed: int) -> dict:
    """The resolved config a job's summary.json holds (the parts the dashboard reads)."""
    return {
        "seed": seed,
        "model": {"_target_": "resnet_dyn.models.CifarResNet", "depth": depth, "width": 1},
        "data": {"_target_": "resnet_dyn.data.DigitsDataModule", "batch_size": 32},
        "callbacks": {
            "model_checkpoint": {"_target_": "lightning.pytorch.callbacks.ModelCheckpoint"},
            "spectrum": {"_target_": "resnet_dyn.training.callbacks.SpectrumCallback"},
            "perturbation": {"_target_": "resnet_dyn.training.callbacks.PerturbationCallback"},
        },
        "logger": {"wandb": {"project": "dyn_test", "entity": None, "offline": True}},
    }


def unit(index: int) -> dict:
    stats = {"frac_one": 0.5, "frac_gt_one": 0.1, "frac_zero": 0.0, "sigma_max": 1.2}
    return {"index": index, "stage": 0, "dim_in": 16, "dim_out": 16, "sum": stats, "unit": stats}


def make_sweep(root: Path) -> Path:
    """A 2 x 2 sweep (model.depth x seed) of completed jobs with spectra and perturbations."""
    task = [f"model.depth={','.join(map(str, DEPTHS))}", f"seed={','.join(map(str, SEEDS))}"]
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(json.dumps({"hydra": {"overrides": {"task": task}}}))
    for num, (depth, seed) in enumerate((d, s) for d in DEPTHS for s in SEEDS):
        job = root / str(num)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"model.depth={depth}", f"seed={seed}"]
        (job / ".hydra" / "overrides.yaml").write_text(json.dumps(overrides))
        summary = {
            "status": "completed",
            "config": job_config(depth, seed),
            "metrics": {"val/acc": 0.8, "test/acc": 0.79, "val/loss": 0.6, "train/loss": 0.5},
            "epochs": 2,
            "wall_s": 3.0,
            "params": 1000,
            "analysis": {
                "accuracy": 0.8,
                "units": [unit(0), unit(1)],
                "stages": [],
                "figures": ["spectra_hist_final.png", "spectra_sorted_final.png"],
                "perturbation": {"attack": "fgsm", "final_ratio": 2.5, "attacked_accuracy": 0.1},
            },
        }
        (job / "summary.json").write_text(json.dumps(summary))
    return root


def user_env(home: Path, **extra: str) -> dict[str, str]:
    """A user without W&B credentials: no WANDB_* variables, an empty HOME (no ~/.netrc)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return env | {"HOME": str(home), "OMP_NUM_THREADS": "1"} | extra


def run_dashboard(args: list[str], home: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m resnet_dyn.cli.dashboard ARGS`` as such a user, output captured."""
    return subprocess.run(
        [sys.executable, "-m", MODULE, *args],
        env=user_env(home, **env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def run_at_terminal(args: list[str], home: Path, timeout: float) -> tuple[int, str]:
    """The same at a terminal (stdin and stderr on a pty) with W&B's messages on, where
    ``wandb.Api()`` prompts for a key and waits for an answer that never comes: the exit
    code and all the output; fails the test on a hang."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", MODULE, *args],
        env=user_env(home, TERM="xterm", WANDB_SILENT="false"),
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=secondary,
    )
    os.close(secondary)
    chunks = []
    try:
        stdout, _ = proc.communicate(timeout=timeout)
        while select.select([primary], [], [], 0.5)[0]:
            try:
                chunk = os.read(primary, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"no answer within {timeout} s (a prompt?)")
    finally:
        os.close(primary)
    return proc.returncode, stdout.decode() + b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("dashboard")
    sweep = make_sweep(tmp / "multirun" / "2026-11-30" / "13-00-00-123456")
    done = run_dashboard([str(sweep), "--dry-run"], home=tmp)
    assert done.returncode == 0, done.stderr
    return sweep, json.loads(done.stdout)


def test_dry_run_names_the_swept_keys_but_not_the_seed(dry_run):
    _, spec = dry_run
    assert spec["sweep"]["swept"] == ["model.depth", "seed"]
    assert spec["sweep"]["axes"] == ["model.depth"]
    parallel = spec["sections"][0]["panels"][0]
    assert parallel["type"] == "ParallelCoordinatesPlot"
    assert parallel["keys"] == ["config:model.depth", "summary:val/acc.max", "summary:test/acc"]
    # The uploaded view: the same axes in W&B's own accessors, and no seed axis anywhere.
    views = spec["spec"]["spec"]["section"]["panelBankConfig"]["sections"]
    axes = [
        c["accessor"]
        for s in views
        for p in s["panels"]
        if p["viewType"] == "Parallel Coordinates Plot"
        for c in p["config"]["columns"]
    ]
    assert "config:model.value.depth" in axes and "summary:val/acc.max" in axes
    assert not [a for a in axes if a.startswith("config:seed")]
    assert spec["workspace"]["project"] == "dyn_test"


def test_dry_run_filters_on_the_sweep_and_groups_replicates(dry_run):
    sweep, spec = dry_run
    sid = sweep_id(sweep)
    assert sid == "2026-11-30/13-00-00-123456"
    assert spec["workspace"]["name"] == f"resnet_dyn sweep {sid}"
    assert sid in spec["runs"]["filter"] and f"sweep:{sid}" in spec["runs"]["filter"]
    runset = spec["spec"]["spec"]["section"]["runSets"][0]
    leaves = runset["filters"]["filters"]
    assert {"section": "config", "name": "sweep_id"} in [f["key"] for f in leaves]
    assert sid in [f["value"] for f in leaves]
    assert runset["grouping"] == [{"section": "run", "name": "group"}]
    assert "config:model.depth" in runset["runFeed"]["columnPinned"]


def test_dry_run_has_the_sections_of_the_analyses_the_sweep_ran(dry_run):
    _, spec = dry_run
    names = [s["name"] for s in spec["sections"]]
    assert names[:2] == ["Sweep", "Loss curves"]
    assert "Perturbation growth" in names and "Spectra" in names and "Figures" in names
    assert "Identity magnitudes" not in names and "Input noise" not in names
    keys = {k for s in spec["sections"] for p in s["panels"] for k in p["keys"]}
    assert {"perturbation/rel_table", "perturbation/final_ratio", "train/loss"} <= keys
    assert {"figures/spectra_hist", "figures/spectra_sorted", "spectrum/table"} <= keys
    assert spec["not_expressed"]


def test_saving_without_an_api_key_is_one_line_and_fast(tmp_path):
    """Checked before any request: no prompt at the terminal, no network."""
    sweep = make_sweep(tmp_path / "sweep")
    code, output = run_at_terminal([str(sweep)], home=tmp_path, timeout=60)
    lines = output.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and "API key" in lines[0], lines


@pytest.fixture
def silent_server():
    """A local server that accepts connections and never answers (nor closes them): a
    request's connect succeeds and its read waits forever. Yields its base URL."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # the server closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in accepted:
        conn.close()


TIMEOUT_S = 2  # the command's --timeout here
START_S = 15  # start-up (Python, wandb's import) on a loaded two-core machine


@pytest.mark.parametrize("server", ["closed", "silent"])
def test_saving_without_network_is_one_line_within_the_timeout(tmp_path, server, request):
    """A key but no server, as on a clean CI clone (empty HOME, no ~/.netrc, W&B's folders
    new, CI=true): a closed local port, or a server that accepts and stays silent. The
    command ends within --timeout plus start-up with one error line, whatever W&B's own
    retries do; never a traceback, a W&B log line or a hang."""
    sweep = make_sweep(tmp_path / "sweep")
    base = "http://127.0.0.1:9" if server == "closed" else request.getfixturevalue("silent_server")
    dirs = {f"WANDB_{k}_DIR": str(tmp_path / k.lower()) for k in ("CONFIG", "CACHE", "DATA")}
    start = time.monotonic()
    done = run_dashboard(
        [str(sweep), "--timeout", str(TIMEOUT_S)],
        home=tmp_path,
        WANDB_API_KEY="a" * 40,
        WANDB_BASE_URL=base,
        WANDB_DIR=str(tmp_path / "wandb"),
        CI="true",
        **dirs,
    )
    elapsed = time.monotonic() - start
    assert not (tmp_path / ".netrc").exists()
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot save the workspace to {base}")
    assert elapsed < TIMEOUT_S + START_S, elapsed


@pytest.mark.parametrize("fork", [True, False])
def test_the_deadline_holds_when_the_network_part_never_returns(monkeypatch, fork):
    """A save that ignores every timeout (W&B retrying forever): save() still raises one
    line at the deadline, in the killed process (fork) or the abandoned thread (no fork)."""

    def forever(workspace, timeout_s, tell) -> str:
        tell("http://127.0.0.1:9")
        while True:
            time.sleep(60)

    monkeypatch.setattr(dashboard, "_save_now", forever)
    if not fork:
        monkeypatch.setattr(dashboard.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    start = time.monotonic()
    with pytest.raises(dashboard.SaveError, match="no answer within 0.5 s") as caught:
        dashboard.save(object(), 0.5)
    assert time.monotonic() - start < 3
    assert "http://127.0.0.1:9" in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_that_is_not_a_sweep_is_one_line(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text('{"loss": 0.1}')
    done = run_dashboard([str(tmp_path), "--dry-run"], home=tmp_path)
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert done.returncode == 2
    assert (
        len(lines) == 1 and lines[0].startswith("error: ") and "not a resnet-dyn sweep" in lines[0]
    )
