"""Shared helpers: compose the real configs in ``conf/`` and run the real CLI."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# The tests' models are tiny: one thread avoids two threads fighting over two cores.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_config(name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/<name>.yaml`` as the CLI would, with its job folder at ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a user's command runs in: no W&B or Hydra settings of the test
    process, one torch thread (tiny models), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_FULL"))}
    return env | {"OMP_NUM_THREADS": "1"} | (extra or {})


def run_cli(
    args: list[str],
    cwd: Path,
    timeout: float = 300,
    module: str = "resnet_dyn",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` in ``cwd`` the way a user would (``env``: extra variables)."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """Start ``python -m resnet_dyn ARGS`` in ``cwd`` as :func:`run_cli` does, without
    waiting (for tests that signal or cancel it); stdout and stderr go to one text pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "resnet_dyn", *args],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def make_image_folder(
    root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 2
) -> Path:
    """A torchvision ImageFolder layout of small random RGB PNGs: ``root/<class>/<i>.png``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def _quiet_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs: ``mount(name, size, read_only)`` returns its folder (root only:
    skipped elsewhere, a failure under ``CI=true``)."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "1m", read_only: bool = False) -> Path:
        where = tmp_path / name
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            message = f"cannot mount a tmpfs (needs root): {done.stderr.strip()}"
            if os.environ.get("CI") == "true":
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True)


# --- Keeping the suite fast -----------------------------------------------------------------
# `make test` runs every test (CI runs it); `make test-fast` deselects the `slow` mark: the
# system tests that each start several real processes or a whole sweep. A test is slow by its
# own `@pytest.mark.slow`, or by using one of these shared real-sweep fixtures.
SLOW_FIXTURES = {"slurm_cluster", "analysed_sweep"}
# Both run in two pytest-xdist workers (`-n 2`, one per core) that take work in units: a
# file by default, so that its module-scoped trained fixtures are made once; the files that
# share a session-scoped fixture of this conftest are one unit, so it is made once too; the
# tests of a file in SPLIT_FILES (no fixture wider than a test) are a unit each, so that the
# longest file (about a third of the suite) is shared between the workers.
SHARED_FIXTURE_FILES = {"analysed_sweep": ("test_faults.py", "test_report.py")}
UNIT_OF_FILE = {file: name for name, files in SHARED_FIXTURE_FILES.items() for file in files}
SPLIT_FILES = {"test_train.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & used:
            item.add_marker(pytest.mark.slow)
        for name in SHARED_FIXTURE_FILES.keys() & used:
            if item.path.name not in SHARED_FIXTURE_FILES[name]:
                raise pytest.UsageError(
                    f"{item.path.name} uses the session fixture {name}: add it to"
                    f" SHARED_FIXTURE_FILES[{name!r}] in tests/conftest.py"
                )
        if item.path.name in SPLIT_FILES:
            wide = sorted(  # of the suite's own fixtures (pytest's tmp_path_factory is fine)
                name
                for name, defs in item._fixtureinfo.name2fixturedefs.items()
                if defs[-1].scope != "function"
                and Path(inspect.getfile(defs[-1].func)).parent == ROOT / "tests"
            )
            if wide:
                raise pytest.UsageError(
                    f"{item.nodeid} uses the wider-scoped fixtures {wide}: its file cannot"
                    " be in SPLIT_FILES in tests/conftest.py"
                )


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist (make test runs it)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        """The work units above; xdist hands the ones of most tests out first."""

        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return nodeid if file in SPLIT_FILES else UNIT_OF_FILE.get(file, file)

    return ByUnit(config, log)


def run_clis(cases: dict, jobs: int = 2) -> dict:
    """:func:`run_cli` for each ``key: (args, cwd, kwargs)`` of ``cases``, ``jobs`` at a time;
    returns ``key: CompletedProcess``. For tests of one-line errors, whose few seconds each
    are the interpreter importing torch and Lightning on one core: two at once use both
    cores of a CI runner, and each test still asserts on its own process alone."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {
            key: pool.submit(run_cli, args, cwd, **kwargs)
            for key, (args, cwd, kwargs) in cases.items()
        }
        return {key: future.result() for key, future in futures.items()}


def selected_params(request, function: str) -> list[dict]:
    """The parameters of each selected test of ``function`` in the requesting module (the
    ones this run will call, after -k or -m), so a shared fixture does only their work."""
    module = request.node.path if hasattr(request.node, "path") else None
    return [
        item.callspec.params
        for item in request.session.items
        if getattr(item, "originalname", None) == function
        and getattr(item, "path", None) == module
        and hasattr(item, "callspec")
    ]


# The tag a report must escape (tests/test_report.py) doubles as the marker that shows the
# secrets scan of tests/test_faults.py does see what the configs carry.
NASTY_TAG = "<script>alert(1)</script>"
# A W&B key and another secret in the environment, as on a cluster node.
SECRETS = {"WANDB_API_KEY": "0123456789abcdef" * 2 + "feedface", "MY_SERVICE_TOKEN": "s3cr3t-4242"}


@pytest.fixture(scope="session")
def analysed_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, str]:
    """One real sweep, shared by the report's tests and the secrets scan (they used to make a
    sweep each): 2 x 2 jobs of a CIFAR ResNet with every analysis and offline W&B, run with
    :data:`SECRETS` in the environment; model.depth=21 fails both of its jobs. Returns the
    sweep folder, the ``resnet-dyn-report`` run on it (same environment), and everything the
    two commands printed."""
    root = tmp_path_factory.mktemp("report") / "sweep"
    args = [
        "-m",
        "debug=tiny",
        "trainer.enable_progress_bar=false",
        "model.depth=8,21",
        "data.batch_size=16,32",
        "callbacks=all_analyses",
        "analysis.images=2",
        "analysis.units=[0]",
        "analysis.identity.images=8",
        f'tags=["{NASTY_TAG}"]',
        f"hydra.sweep.dir={root}",
    ]
    made = run_cli(args, cwd=root.parent, env=SECRETS)
    assert made.returncode == 0, made.stderr[-2000:]
    report = run_cli([str(root)], cwd=root.parent, module="resnet_dyn.cli.report", env=SECRETS)
    printed = made.stdout + made.stderr + report.stdout + report.stderr
    return root, report, printed
