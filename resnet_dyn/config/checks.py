"""Checks of the keys that no built object checks for us, run before any training.

Models, datamodules, callbacks and the optimizer check their own keys when they are built.
The top-level keys (seed, resume, ...), ``trainer.*`` and ``logger.wandb.*`` are handed to
libraries whose errors are tracebacks, and the ``analysis`` keys are only read at the end
of training, so a bad value would otherwise cost a whole run before it surfaced. Every
failure is a :class:`~resnet_dyn.errors.ConfigError`: one line naming the key and what it
expects.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from resnet_dyn.dynamics.inertia import ROUTES
from resnet_dyn.dynamics.maps import MAP_KINDS
from resnet_dyn.dynamics.perturbation import ATTACKS, RANDOM_KINDS
from resnet_dyn.dynamics.unit_spectra import DTYPES, METHODS
from resnet_dyn.errors import ConfigError, check_bool, check_choice, check_int, check_positive


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_units(key: str, units: Any, n: int, *, allow_all: bool = True) -> None:
    """``units``: ``all`` (if allowed), one index, or a non-empty list of indices in [0, n)."""
    if allow_all and units == "all":
        return
    listed = [units] if isinstance(units, int) and not isinstance(units, bool) else units
    expected = ("all or " if allow_all else "") + f"a list of unit indices in [0, {n - 1}]"
    if not isinstance(listed, list) or not listed:
        raise ConfigError(key, expected, units)
    for k in listed:
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < n:
            raise ConfigError(key, f"unit indices in [0, {n - 1}]", k)


PERTURBATION_KEYS = (
    "attack", "eps", "steps", "step_size", "random_kind", "project", "project_max",
)  # fmt: skip


def check_perturbation(node: DictConfig | dict) -> dict[str, Any]:
    """The ``analysis.perturbation`` keys, checked: keyword arguments of
    :func:`~resnet_dyn.dynamics.perturbation.perturbation_analysis` (keys left out take its
    defaults) and ``project`` (:func:`resnet_dyn.analysis.run.perturbation_run`). No seed:
    the random draws follow the job's ``seed``."""
    key = "analysis.perturbation"
    p = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    unknown = sorted(set(p) - set(PERTURBATION_KEYS))
    if unknown:
        raise ConfigError(key, f"keys among {list(PERTURBATION_KEYS)}", unknown)
    check_choice(f"{key}.attack", p.get("attack", "fgsm"), ATTACKS)
    # eps null: the attack's customary radius (8/255 L-inf, 0.5 L2)
    check_positive(f"{key}.eps", p.get("eps"), allow_zero=True, optional=True)
    check_int(f"{key}.steps", p.get("steps", 1), 1)
    check_positive(f"{key}.step_size", p.get("step_size"), optional=True)
    check_choice(f"{key}.random_kind", p.get("random_kind", "gaussian"), RANDOM_KINDS)
    check_bool(f"{key}.project", p.get("project", False))
    # 0 is meaningful: every unit listed as skipped, none projected.
    check_int(f"{key}.project_max", p.get("project_max", 4096), 0)
    return p


# analysis.solver key -> map_spectrum keyword, with the smallest value that means something
# (0 for the two shift-invert sizes: no map is factored, block Lanczos takes sigma_min).
SOLVER_KEYS: dict[str, tuple[str, int]] = {
    "dense_max": ("dense_max", 1),
    "slq_probes": ("probes", 2),  # error bars need two
    "slq_steps": ("steps", 2),  # one node per probe leaves every fraction unresolved
    "max_matvecs": ("max_matvecs", 1),
    "shift_invert_max": ("shift_invert_max", 0),
    "grid_shift_invert_max": ("grid_shift_invert_max", 0),
}


def check_tol(key: str, tol: Any) -> float:
    """``tol`` in (0, 0.5]: the zero band [0, tol) and the one band (1 - tol, 1 + tol) must
    not overlap, else a singular value counts twice and the fractions sum above 1."""
    if not (_number(tol) and 0 < tol <= 0.5):
        raise ConfigError(
            key, "a number in (0, 0.5] (|sigma - 1| < tol is one, sigma < tol zero)", tol
        )
    return tol


def check_solver(node: DictConfig | dict) -> dict[str, Any]:
    """The ``analysis.solver`` keys, checked, as keyword arguments of
    :func:`~resnet_dyn.dynamics.unit_spectra.map_spectrum` (keys left out take its defaults)."""
    key = "analysis.solver"
    s = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    known = (*SOLVER_KEYS, "lanczos_tol", "count_max_gflop", "count_route")
    unknown = sorted(set(s) - set(known))
    if unknown:
        raise ConfigError(key, f"keys among {list(known)}", unknown)
    options: dict[str, Any] = {}
    for name, (keyword, minimum) in SOLVER_KEYS.items():
        if name in s:
            options[keyword] = check_int(f"{key}.{name}", s[name], minimum)
    if "lanczos_tol" in s:
        # A relative residual: 1 or more accepts any Ritz value, converged or not.
        if not (_number(s["lanczos_tol"]) and 0 < s["lanczos_tol"] < 1):
            raise ConfigError(f"{key}.lanczos_tol", "a number in (0, 1)", s["lanczos_tol"])
        options["lanczos_tol"] = float(s["lanczos_tol"])
    if "count_max_gflop" in s:
        options["count_max_gflop"] = float(
            check_positive(f"{key}.count_max_gflop", s["count_max_gflop"])
        )
    if "count_route" in s:
        options["count_route"] = check_choice(f"{key}.count_route", s["count_route"], ROUTES)
    return options


def check_analysis_config(acfg: DictConfig | dict, num_units: int) -> dict[str, Any]:
    """Every ``analysis.*`` key, for a network of ``num_units`` residual units; returns the
    options normalised: ``maps`` and every ``units`` as lists (one index is one unit),
    ``perturbation`` checked, ``solver`` as :func:`~resnet_dyn.dynamics.unit_spectra.map_spectrum`
    keyword arguments (:func:`check_solver`)."""
    a = OmegaConf.to_container(acfg, resolve=True) if isinstance(acfg, DictConfig) else acfg
    check_int("analysis.images", a["images"], 1)
    check_units("analysis.units", a["units"], num_units)
    maps = [a["maps"]] if isinstance(a["maps"], str) else a["maps"]
    if not isinstance(maps, list) or not maps or any(m not in MAP_KINDS for m in maps):
        expected = f"a non-empty list drawn from {list(MAP_KINDS)}"
        raise ConfigError("analysis.maps", expected, a["maps"])
    check_choice("analysis.method", a["method"], METHODS)
    check_tol("analysis.tol", a["tol"])
    check_int("analysis.top_k", a["top_k"], 1)
    check_choice("analysis.dtype", a["dtype"], tuple(DTYPES))
    workers = a.get("workers", 1)  # absent from configs written before it existed
    check_int("analysis.workers", workers, 1)
    hist = a["histogram"]
    if hist["units"] != []:
        check_units("analysis.histogram.units", hist["units"], num_units)
    check_int("analysis.histogram.bins", hist["bins"], 1)
    iv = a["intervention"]
    check_positive(
        "analysis.intervention.skip_scale", iv["skip_scale"], allow_zero=True, optional=True
    )
    check_positive("analysis.intervention.weight_scale", iv["weight_scale"], optional=True)
    if iv["units"] is not None:
        check_units("analysis.intervention.units", iv["units"], num_units, allow_all=False)
    perturbation = check_perturbation(a["perturbation"])
    solver = check_solver(a.get("solver") or {})
    check_int("analysis.identity.images", a["identity"]["images"], 1)
    check_positive("analysis.identity.epsilon", a["identity"]["epsilon"])
    check_int("analysis.noise.images", a["noise"]["images"], 1)
    sigmas = a["noise"]["sigmas"]
    if not isinstance(sigmas, list) or not sigmas or not all(_number(s) and s >= 0 for s in sigmas):
        raise ConfigError("analysis.noise.sigmas", "a non-empty list of numbers >= 0", sigmas)
    # One index is one unit everywhere: the analyses and the progress bars take lists.
    units = [a["units"]] if isinstance(a["units"], int) else a["units"]
    counted = [hist["units"]] if isinstance(hist["units"], int) else hist["units"]
    changed = [iv["units"]] if isinstance(iv["units"], int) else iv["units"]
    return {
        **a,
        "maps": maps,
        "units": units,
        "histogram": {**hist, "units": counted},
        "intervention": {**iv, "units": changed},
        "perturbation": perturbation,
        "solver": solver,
        "workers": workers,
    }


# What the training module logs, and so what a checkpoint can be chosen by.
MONITORED = ("val/acc", "val/loss", "train/acc", "train/loss", "train/loss_epoch")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true",
              "64-true", "64", 16, 32, 64)  # fmt: skip


def _string(key: str, value: Any, *, optional: bool = False) -> None:
    if not (isinstance(value, str) and value) and not (optional and value is None):
        raise ConfigError(key, "a non-empty string" + (" or null" if optional else ""), value)


def _batches(key: str, value: Any) -> None:
    """Lightning's ``limit_*_batches``: a share in [0, 1] (float) or a count (int)."""
    if isinstance(value, float) and 0 <= value <= 1:
        return
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return
    raise ConfigError(key, "a fraction in [0.0, 1.0] or a number of batches >= 0", value)


def check_trainer(trainer: DictConfig) -> None:
    """The ``trainer.*`` keys of ``conf/trainer/``; other Trainer arguments are checked by
    Lightning when the Trainer is built (:func:`resnet_dyn.config.build.build`)."""
    from lightning.pytorch.strategies import StrategyRegistry

    t = trainer
    check_choice("trainer.accelerator", t.get("accelerator", "auto"), ACCELERATORS)
    devices = t.get("devices", "auto")
    if devices != "auto" and not (
        isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1
    ):
        raise ConfigError("trainer.devices", "auto or a number of devices >= 1", devices)
    check_int("trainer.max_epochs", t.get("max_epochs", 1), 1)
    check_choice("trainer.precision", t.get("precision", "32-true"), PRECISIONS)
    check_int("trainer.log_every_n_steps", t.get("log_every_n_steps", 1), 1)
    if t.get("check_val_every_n_epoch", 1) is not None:
        check_int("trainer.check_val_every_n_epoch", t.get("check_val_every_n_epoch", 1), 1)
    if t.get("deterministic", False) != "warn":
        check_bool("trainer.deterministic", t.get("deterministic", False), optional=True)
    fast = t.get("fast_dev_run", False)
    if not isinstance(fast, bool):
        check_int("trainer.fast_dev_run", fast, 0)
    for split in ("train", "val", "test"):
        _batches(f"trainer.limit_{split}_batches", t.get(f"limit_{split}_batches", 1.0))
    for flag in ("enable_model_summary", "enable_progress_bar", "sync_batchnorm"):
        check_bool(f"trainer.{flag}", t.get(flag, False))
    strategies = ("auto", *StrategyRegistry.available_strategies())
    check_choice("trainer.strategy", t.get("strategy", "auto"), strategies)


def check_job_config(cfg: DictConfig) -> None:
    """The top-level keys of a job's config (``seed``, ``resume``, ``compile``, ``tags``,
    ``task_name``, where present), ``logger.wandb.*`` and ``trainer.*`` (where present)."""
    check_int("seed", cfg.seed, 0)
    for flag in ("resume", "compile"):
        if flag in cfg:
            check_bool(flag, cfg[flag])
    tags = cfg.get("tags", [])
    tags = OmegaConf.to_container(tags, resolve=True) if OmegaConf.is_config(tags) else tags
    if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
        raise ConfigError("tags", "a list of non-empty strings, e.g. [depth_sweep]", tags)
    _string("task_name", cfg.task_name)
    wb = cfg.logger.get("wandb") if "logger" in cfg else None
    if wb:
        _string("logger.wandb.project", wb.project)
        _string("logger.wandb.entity", wb.entity, optional=True)
        check_bool("logger.wandb.offline", wb.offline)
        _string("logger.wandb.group", wb.group, optional=True)
        _string("logger.wandb.job_type", wb.job_type)
    if "trainer" in cfg:
        check_trainer(cfg.trainer)
    callbacks = cfg.get("callbacks") or {}
    ckpt = callbacks.get("model_checkpoint")
    if ckpt:
        key = "callbacks.model_checkpoint"
        check_choice(f"{key}.monitor", ckpt.monitor, MONITORED)
        check_choice(f"{key}.mode", ckpt.mode, ("max", "min"))
        check_bool(f"{key}.save_last", ckpt.save_last)
        check_bool(f"{key}.auto_insert_metric_name", ckpt.auto_insert_metric_name)
    lr = callbacks.get("lr_monitor")
    if lr:
        check_choice(
            "callbacks.lr_monitor.logging_interval", lr.logging_interval, ("step", "epoch")
        )


# hydra/launcher=slurm, slurm_cpu (conf/hydra/launcher/): key -> smallest value. The plugin's
# dataclass already refuses wrong types (a string for an int), not out-of-range numbers, which
# SLURM would otherwise refuse only at submission, or take (timeout_min=0: no time limit).
SLURM_MINIMUMS = {
    "timeout_min": 1,
    "nodes": 1,
    "tasks_per_node": 1,
    "gpus_per_node": 0,
    "cpus_per_task": 1,
    "mem_gb": 1,
    "array_parallelism": 1,
    "max_num_timeout": 0,
}
# null: no flag, the cluster's default
SLURM_OPTIONAL = ("gpus_per_node", "cpus_per_task", "mem_gb")


def check_launcher(launcher: DictConfig | dict) -> None:
    """The ``hydra.launcher.*`` keys of a sweep, before any job is launched: those of
    ``conf/hydra/launcher/`` (submitit's SLURM launcher) and joblib's ``n_jobs``, ``prefer``."""
    key = "hydra.launcher"
    # Unresolved: ${hydra.sweep.dir} and ${hydra.job.name} are the launcher's to fill in.
    node = OmegaConf.to_container(launcher) if OmegaConf.is_config(launcher) else dict(launcher)
    target = str(node.get("_target_", ""))
    if target.endswith("SlurmLauncher"):
        for name, minimum in SLURM_MINIMUMS.items():
            if not (name in SLURM_OPTIONAL and node.get(name) is None):
                check_int(f"{key}.{name}", node.get(name), minimum)
        _string(f"{key}.partition", node.get("partition"), optional=True)
        setup = node.get("setup") or []
        if not isinstance(setup, list) or not all(isinstance(s, str) and s.strip() for s in setup):
            raise ConfigError(f"{key}.setup", "a list of shell lines (non-empty strings)", setup)
        extra = node.get("additional_parameters") or {}
        dashed = [k for k in extra if str(k).startswith("-")]
        if dashed:
            raise ConfigError(
                f"{key}.additional_parameters", "sbatch options without the leading dashes", dashed
            )
        _string(f"{key}.submitit_folder", node.get("submitit_folder"))
    elif target.endswith("JoblibLauncher"):
        n_jobs = node.get("n_jobs", -1)
        if n_jobs is not None and (check_int(f"{key}.n_jobs", n_jobs) == 0):
            # joblib: -1 all cores, -2 all but one, ...; 0 is no number of processes.
            raise ConfigError(f"{key}.n_jobs", "a number of processes >= 1, or -1 (all cores)", 0)
        check_choice(f"{key}.prefer", node.get("prefer", "processes"), ("processes", "threads"))
