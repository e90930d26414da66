"""Shared helpers: compose the real configs in ``conf/`` and run the real CLI."""

from __future__ import annotations

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
