"""Every key a user can set refuses bad values with one line naming the key.

Each case composes the real configs with one bad override and builds the job as
``resnet-dyn`` does before training (``build_job``). ``test_every_key_has_a_bad_value_case``
keeps the table exhaustive: a new key in ``conf/`` needs a case here, or a reason in EXEMPT.
"""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import CONF, compose_config, run_cli, run_clis, selected_params
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from resnet_dyn.analysis.job import run_analysis_job
from resnet_dyn.config.checks import check_launcher
from resnet_dyn.errors import UserError
from resnet_dyn.training.job import build_job

DENSE = ["model=dense_resnet", "data=circles"]
MLP = ["model=mlp", "data=circles"]
DEEP = ["model=deep_resnet"]
TV = ["model=torchvision_resnet"]
CIRCLES = ["model=dense_resnet", "data=circles"]
CIFAR = ["data=cifar10"]
MNIST = ["data=mnist"]
FOLDER = ["data=image_folder", "data.root=images"]

# (overrides, the key the message must name)
CASES: list[tuple[list[str], str]] = [
    # model=cifar_resnet
    (["model.depth=21"], "model.depth"),
    (["model.depth=-4"], "model.depth"),
    (["model.depth=deep"], "model.depth"),
    (["model.width=0"], "model.width"),
    (["model.width=-2"], "model.width"),
    (["model.shortcut=C"], "model.shortcut"),
    (["model.preact=maybe"], "model.preact"),
    (["model.skip_scale=-1"], "model.skip_scale"),
    (["model.skip_scale=big"], "model.skip_scale"),
    (["model.weight_scale=0"], "model.weight_scale"),
    (["model.weight_scale=-0.5"], "model.weight_scale"),
    # model=dense_resnet, mlp, deep_resnet
    ([*DENSE, "model.depth=0"], "model.depth"),
    ([*DENSE, "model.width=0"], "model.width"),
    ([*DENSE, "model.activation=gelu"], "model.activation"),
    ([*DENSE, "model.tied=maybe"], "model.tied"),
    ([*DENSE, "model.skip_scale=-1"], "model.skip_scale"),
    ([*DENSE, "model.weight_scale=0"], "model.weight_scale"),
    ([*DENSE, "model.input_projection=rotate"], "model.input_projection"),
    ([*MLP, "model.depth=0"], "model.depth"),
    ([*MLP, "model.width=-1"], "model.width"),
    ([*MLP, "model.activation=swish"], "model.activation"),
    ([*MLP, "model.tied=2"], "model.tied"),
    ([*MLP, "model.weight_scale=0"], "model.weight_scale"),
    ([*MLP, "model.input_projection=rotate"], "model.input_projection"),
    ([*DEEP, "model.depth=0"], "model.depth"),
    ([*DEEP, "model.width=0"], "model.width"),
    ([*DEEP, "model.block=attn"], "model.block"),
    ([*DEEP, "model.batch_norm=maybe"], "model.batch_norm"),
    ([*DEEP, "model.activation=gelu"], "model.activation"),
    ([*DEEP, "model.final_activation=softmax"], "model.final_activation"),
    ([*DEEP, "model.skip_scale=-1"], "model.skip_scale"),
    ([*DEEP, "model.weight_scale=0"], "model.weight_scale"),
    ([*TV, "model.arch=resnet19"], "model.arch"),
    ([*TV, "model.arch=vgg16"], "model.arch"),
    ([*TV, "model.stem=tiny"], "model.stem"),
    ([*TV, "model.num_classes=0"], "model.num_classes"),
    ([*TV, "model.num_classes=ten"], "model.num_classes"),
    ([*TV, "model.num_classes=1000"], "model.num_classes"),  # training: the data's 10
    ([*TV, "model.skip_scale=-1"], "model.skip_scale"),
    ([*TV, "model.weight_scale=0"], "model.weight_scale"),
    ([*TV, "model.weights=missing.pth"], "model.weights"),
    ([*TV, "model.weights=''"], "model.weights"),
    # data: the keys every datamodule shares (digits), then each dataset's own
    (["data.batch_size=0"], "data.batch_size"),
    (["data.batch_size=100000"], "data.batch_size"),  # more than the training examples
    (["data.batch_size=1.5"], "data.batch_size"),
    (["data.num_workers=-1"], "data.num_workers"),
    (["data.fraction=0"], "data.fraction"),
    (["data.fraction=1.5"], "data.fraction"),
    (["data.fraction=-0.1"], "data.fraction"),
    (["data.seed=abc"], "data.seed"),
    (["data.mean=[0.1,0.2]"], "data.mean"),
    (["data.std=[0]"], "data.std"),
    (["data.std=[-1]"], "data.std"),
    (["data.augment=maybe"], "data.augment"),
    (["data.loader=dali"], "data.loader"),
    ([*CIFAR, "data.val_size=0"], "data.val_size"),
    ([*CIFAR, "data.download=maybe"], "data.download"),
    ([*CIFAR, "data.data_dir=null"], "data.data_dir"),
    ([*CIFAR, "data.mean=[0.5]"], "data.mean"),
    ([*CIFAR, "data.loader=gpu"], "data.loader"),
    ([*MNIST, "data.val_size=-5"], "data.val_size"),
    ([*CIRCLES, "data.n_train=0"], "data.n_train"),
    ([*CIRCLES, "data.n_val=0"], "data.n_val"),
    ([*CIRCLES, "data.n_test=0"], "data.n_test"),
    ([*CIRCLES, "data.noise=-0.1"], "data.noise"),
    ([*CIRCLES, "data.augment=true"], "data.augment"),
    ([*CIRCLES, "data.batch_size=5000"], "data.batch_size"),
    (["data=image_folder", "data.root=null"], "data.root"),
    ([*FOLDER, "data.channels=2"], "data.channels"),
    ([*FOLDER, "data.image_size=0"], "data.image_size"),
    ([*FOLDER, "data.classes=[a,a]"], "data.classes"),
    ([*FOLDER, "data.convert=maybe"], "data.convert"),
    # optim
    (["optim.lr=0"], "optim.lr"),
    (["optim.lr=-0.1"], "optim.lr"),
    (["optim.lr=fast"], "optim.lr"),
    (["optim.weight_decay=-1"], "optim.weight_decay"),
    (["optim.lr_scaling=cubic"], "optim.lr_scaling"),
    (["optim.base_batch_size=0"], "optim.base_batch_size"),
    (["optim.schedule.name=exponential"], "optim.schedule.name"),
    (["optim.schedule.milestones=[1.5]"], "optim.schedule.milestones"),
    (["optim.schedule.milestones=[0]"], "optim.schedule.milestones"),
    (["optim.schedule.gamma=0"], "optim.schedule.gamma"),
    (["optim.schedule.warmup_steps=-1"], "optim.schedule.warmup_steps"),
    (["optim.schedule.warmup_start_factor=0"], "optim.schedule.warmup_start_factor"),
    (["optim.schedule.warmup_start_factor=2"], "optim.schedule.warmup_start_factor"),
    (["optim.optimizer.momentum=-1"], "optim.optimizer"),
    (["optim.optimizer.nesterov=true", "optim.optimizer.momentum=0"], "optim.optimizer"),
    (["optim=adamw", "optim.optimizer.betas=[1.5,0.999]"], "optim.optimizer"),
    (["optim=adamw", "optim.optimizer.eps=-1"], "optim.optimizer"),
    # analysis
    (["analysis.images=0"], "analysis.images"),
    (["analysis.units=[9]"], "analysis.units"),  # ResNet-20 has units 0..8
    (["analysis.units=[-1]"], "analysis.units"),
    (["analysis.units=some"], "analysis.units"),
    (["analysis.maps=[sum,jacobian]"], "analysis.maps"),
    (["analysis.maps=[]"], "analysis.maps"),
    (["analysis.method=qr"], "analysis.method"),
    (["analysis.tol=0"], "analysis.tol"),
    (["analysis.top_k=0"], "analysis.top_k"),
    (["analysis.dtype=float16"], "analysis.dtype"),
    (["analysis.workers=0"], "analysis.workers"),
    (["analysis.workers=two"], "analysis.workers"),
    (["analysis.histogram.units=[12]"], "analysis.histogram.units"),
    (["analysis.histogram.bins=0"], "analysis.histogram.bins"),
    (["analysis.intervention.skip_scale=-1"], "analysis.intervention.skip_scale"),
    (["analysis.intervention.weight_scale=0"], "analysis.intervention.weight_scale"),
    (["analysis.intervention.units=[42]"], "analysis.intervention.units"),
    (["analysis.perturbation.attack=cw"], "analysis.perturbation.attack"),
    (["analysis.perturbation.eps=-0.1"], "analysis.perturbation.eps"),
    (["analysis.perturbation.steps=0"], "analysis.perturbation.steps"),
    (["analysis.perturbation.step_size=0"], "analysis.perturbation.step_size"),
    (["analysis.perturbation.random_kind=uniform"], "analysis.perturbation.random_kind"),
    (["analysis.perturbation.project=maybe"], "analysis.perturbation.project"),
    (["analysis.identity.images=0"], "analysis.identity.images"),
    (["analysis.identity.epsilon=-0.1"], "analysis.identity.epsilon"),
    (["analysis.noise.images=0"], "analysis.noise.images"),
    (["analysis.noise.sigmas=[0.1,-1]"], "analysis.noise.sigmas"),
    (["analysis.noise.sigmas=[]"], "analysis.noise.sigmas"),
    (["analysis.images=1.5"], "analysis.images"),
    (["analysis.units=[]"], "analysis.units"),
    (["analysis.units=[0,0.5]"], "analysis.units"),
    (["analysis.maps=jacobian"], "analysis.maps"),
    (["analysis.tol=1.5"], "analysis.tol"),  # the one band would swallow the zero band
    (["analysis.tol=0.6"], "analysis.tol"),  # the bands overlap: fractions sum above 1
    (["analysis.tol=-0.1"], "analysis.tol"),
    (["analysis.tol=small"], "analysis.tol"),
    (["analysis.top_k=1.5"], "analysis.top_k"),
    (["analysis.dtype=32"], "analysis.dtype"),
    (["analysis.histogram.units=some"], "analysis.histogram.units"),
    (["analysis.histogram.bins=1.5"], "analysis.histogram.bins"),
    (["analysis.intervention.skip_scale=big"], "analysis.intervention.skip_scale"),
    (["analysis.intervention.weight_scale=-1"], "analysis.intervention.weight_scale"),
    (["analysis.intervention.units=all"], "analysis.intervention.units"),  # a list, or null
    (["analysis.perturbation.eps=big"], "analysis.perturbation.eps"),
    (["analysis.perturbation.steps=1.5"], "analysis.perturbation.steps"),
    (["analysis.perturbation.step_size=-0.1"], "analysis.perturbation.step_size"),
    (["analysis.perturbation.project_max=-1"], "analysis.perturbation.project_max"),
    (["analysis.perturbation.project_max=1e3"], "analysis.perturbation.project_max"),
    (["analysis.identity.images=1.5"], "analysis.identity.images"),
    (["analysis.identity.epsilon=0"], "analysis.identity.epsilon"),
    (["analysis.noise.images=-1"], "analysis.noise.images"),
    (["analysis.noise.sigmas=0.1"], "analysis.noise.sigmas"),
    (["analysis.solver.dense_max=0"], "analysis.solver.dense_max"),
    (["analysis.solver.dense_max=1e3"], "analysis.solver.dense_max"),
    (["analysis.solver.slq_probes=1"], "analysis.solver.slq_probes"),  # no error bars
    (["analysis.solver.slq_steps=1"], "analysis.solver.slq_steps"),
    (["analysis.solver.lanczos_tol=0"], "analysis.solver.lanczos_tol"),
    (["analysis.solver.lanczos_tol=1"], "analysis.solver.lanczos_tol"),
    (["analysis.solver.max_matvecs=0"], "analysis.solver.max_matvecs"),
    (["analysis.solver.count_max_gflop=0"], "analysis.solver.count_max_gflop"),
    (["analysis.solver.count_max_gflop=lots"], "analysis.solver.count_max_gflop"),
    (["analysis.solver.shift_invert_max=-1"], "analysis.solver.shift_invert_max"),
    (["analysis.solver.grid_shift_invert_max=-1"], "analysis.solver.grid_shift_invert_max"),
    (["analysis.solver.count_route=fast"], "analysis.solver.count_route"),
    (["+analysis.solver.probes=4"], "analysis.solver"),  # an unknown key: not forwarded
    # more probe images than the test split (digits: 540) holds, for the callbacks that use them
    (["callbacks=spectrum", "analysis.images=100000"], "analysis.images"),
    (["callbacks=perturbation", "analysis.images=541"], "analysis.images"),
    # top-level keys
    (["seed=abc"], "seed"),
    (["seed=-1"], "seed"),
    (["resume=maybe"], "resume"),
    (["compile=1"], "compile"),
    (["tags=depth"], "tags"),
    (["tags=[1]"], "tags"),
    (["task_name=''"], "task_name"),
    # trainer
    (["trainer.accelerator=quantum"], "trainer.accelerator"),
    (["trainer.devices=0"], "trainer.devices"),
    (["trainer.max_epochs=-1"], "trainer.max_epochs"),
    (["trainer.max_epochs=ten"], "trainer.max_epochs"),
    (["trainer.precision=8"], "trainer.precision"),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch"),
    (["trainer.deterministic=perhaps"], "trainer.deterministic"),
    (["trainer.fast_dev_run=-1"], "trainer.fast_dev_run"),
    (["trainer.limit_train_batches=1.5"], "trainer.limit_train_batches"),
    (["trainer.limit_val_batches=-1"], "trainer.limit_val_batches"),
    (["trainer.limit_test_batches=half"], "trainer.limit_test_batches"),
    (["trainer.enable_model_summary=2"], "trainer.enable_model_summary"),
    (["trainer.enable_progress_bar=sometimes"], "trainer.enable_progress_bar"),
    (["trainer=ddp", "trainer.strategy=nonsense"], "trainer.strategy"),
    (["trainer=ddp", "trainer.sync_batchnorm=often"], "trainer.sync_batchnorm"),
    (["+trainer.max_steps=many"], "trainer"),  # any other Trainer argument: Lightning checks
    # logger
    (["logger.wandb.project=''"], "logger.wandb.project"),
    (["logger.wandb.entity=''"], "logger.wandb.entity"),
    (["logger.wandb.offline=perhaps"], "logger.wandb.offline"),
    (["logger.wandb.group=7"], "logger.wandb.group"),
    (["logger.wandb.job_type=''"], "logger.wandb.job_type"),
    # callbacks
    (["callbacks.model_checkpoint.monitor=val/f1"], "callbacks.model_checkpoint.monitor"),
    (["callbacks.model_checkpoint.mode=maximal"], "callbacks.model_checkpoint.mode"),
    (["callbacks.model_checkpoint.save_last=often"], "callbacks.model_checkpoint.save_last"),
    (
        ["callbacks.model_checkpoint.auto_insert_metric_name=3"],
        "callbacks.model_checkpoint.auto_insert_metric_name",
    ),  # fmt: skip
    (["callbacks.lr_monitor.logging_interval=hour"], "callbacks.lr_monitor.logging_interval"),
    (
        ["callbacks=spectrum", "callbacks.spectrum.every_n_epochs=-1"],
        "callbacks.spectrum.every_n_epochs",
    ),  # fmt: skip
    (
        ["callbacks=perturbation", "callbacks.perturbation.every_n_epochs=-1"],
        "callbacks.perturbation.every_n_epochs",
    ),  # fmt: skip
    (
        ["callbacks=identity", "callbacks.identity.every_n_epochs=-1"],
        "callbacks.identity.every_n_epochs",
    ),  # fmt: skip
    ([*CIRCLES, "callbacks=lagzi", "callbacks.lagzi.threshold=-1"], "callbacks.lagzi.threshold"),
    ([*CIRCLES, "callbacks=lagzi", "callbacks.lagzi.prune=perhaps"], "callbacks.lagzi.prune"),
    ([*CIRCLES, "callbacks=lagzi", "callbacks.lagzi.min_depth=0"], "callbacks.lagzi.min_depth"),
    ([*CIRCLES, "callbacks=lagzi", "callbacks.lagzi.images=0"], "callbacks.lagzi.images"),
    (
        [*CIRCLES, "callbacks=lagzi", "callbacks.lagzi.trajectory_depth=0"],
        "callbacks.lagzi.trajectory_depth",
    ),  # fmt: skip
    ([*DENSE, "model.embed=rotate"], "model.embed"),
    ([*DENSE, "model.embed=zero_pad", "model.input_projection=true"], "model.input_projection"),
    (["model=dense_resnet", "model.embed=zero_pad"], "model.embed"),  # 64 pixels, 3 neurons
    ([*DENSE, "model.init=xavier"], "model.init"),
    ([*MLP, "model.embed=rotate"], "model.embed"),
    ([*MLP, "model.init=xavier"], "model.init"),
]

# resnet-dyn-analyze (conf/analyze.yaml): run as the command does (run_analysis_job), which
# checks every key before it analyses anything; the analysis group is the same as above, a few
# for the path.
ANALYZE_CASES: list[tuple[list[str], str]] = [
    (["checkpoint.path=missing.ckpt"], "checkpoint.path"),
    (["checkpoint.path=''"], "checkpoint.path"),
    (["checkpoint.format=onnx"], "checkpoint.format"),
    ([*TV, "model.num_classes=5"], "model.num_classes"),  # fewer outputs than the data's labels
    ([*TV, "checkpoint.path=x.pth", "model.weights=y.pth"], "model.weights"),  # one or the other
    (["device=tpu"], "device"),
    (["device=cuda:99"], "device"),  # no such device (none at all on a CPU machine)
    (["task_name=''"], "task_name"),
    (["seed=-1"], "seed"),
    (["tags=analyze"], "tags"),
    (["analysis.tol=1.5"], "analysis.tol"),
    (["analysis.units=[9]"], "analysis.units"),
    (["analysis.solver.dense_max=0"], "analysis.solver.dense_max"),
    (["analysis.perturbation.project_max=-1"], "analysis.perturbation.project_max"),
]

# hydra/launcher=slurm and slurm_cpu (conf/hydra/launcher/), and joblib's n_jobs and prefer:
# checked when a sweep starts (config.hydra_callbacks.CheckLauncher), before any job runs.
SLURM = ["hydra/launcher=slurm"]
LAUNCHER_CASES: list[tuple[list[str], str]] = [
    ([*SLURM, "hydra.launcher.partition=''"], "hydra.launcher.partition"),
    ([*SLURM, "hydra.launcher.timeout_min=0"], "hydra.launcher.timeout_min"),
    ([*SLURM, "hydra.launcher.nodes=0"], "hydra.launcher.nodes"),
    ([*SLURM, "hydra.launcher.tasks_per_node=0"], "hydra.launcher.tasks_per_node"),
    ([*SLURM, "hydra.launcher.gpus_per_node=-1"], "hydra.launcher.gpus_per_node"),
    ([*SLURM, "hydra.launcher.cpus_per_task=0"], "hydra.launcher.cpus_per_task"),
    ([*SLURM, "hydra.launcher.mem_gb=0"], "hydra.launcher.mem_gb"),
    ([*SLURM, "hydra.launcher.array_parallelism=0"], "hydra.launcher.array_parallelism"),
    ([*SLURM, "hydra.launcher.max_num_timeout=-1"], "hydra.launcher.max_num_timeout"),
    ([*SLURM, "hydra.launcher.setup=['']"], "hydra.launcher.setup"),
    ([*SLURM, "hydra.launcher.submitit_folder=''"], "hydra.launcher.submitit_folder"),
    (["hydra/launcher=slurm_cpu", "hydra.launcher.mem_gb=-2"], "hydra.launcher.mem_gb"),
    (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs"),
    (["hydra/launcher=joblib", "hydra.launcher.prefer=forks"], "hydra.launcher.prefer"),
]

# Keys with no invalid value to test here, and why.
EXEMPT = {
    "data.data_dir": "any path; a missing dataset is its own one-line error (test_data.py)",
    "data.root": "any path; empty or bad image folders are their own errors (test_data.py)",
    "data.mean": "covered above on digits and cifar10",
    "optim.optimizer.*": "passed to the torch optimizer, which checks them (cases above)",
    "paths.*": "any folder; an unwritable one is its own one-line error (test_faults.py)",
    "trainer.default_root_dir": "the job folder (paths.output_dir)",
    "callbacks.model_checkpoint.dirpath": "a folder below the job folder",
    "callbacks.model_checkpoint.filename": "any file name template",
    "callbacks.identity.output_dir": "the job folder",
    "callbacks.lagzi.output_dir": "the job folder",
    "callbacks.noise.output_dir": "the job folder",
    "callbacks.perturbation.output_dir": "the job folder",
    "callbacks.spectrum.output_dir": "the job folder",
    "callbacks.identity.identity": "${analysis.identity}: the analysis cases above",
    "callbacks.noise.noise": "${analysis.noise}: the analysis cases above",
    "callbacks.perturbation.perturbation": "${analysis.perturbation}: the cases above",
    "callbacks.perturbation.images": "${analysis.images}: the cases above",
    "callbacks.perturbation.units": "${analysis.units}: the cases above",
    "callbacks.perturbation.tol": "${analysis.tol}: the cases above",
    "callbacks.spectrum.analysis": "${analysis}: the cases above",
    "callbacks.spectrum.seed": "${seed}: the seed cases above",
    "callbacks.perturbation.seed": "${seed}: the seed cases above",
    "callbacks.noise.seed": "${seed}: the seed cases above",
    "logger.wandb": "the W&B logger itself; logger=none drops it",
}


@pytest.mark.parametrize(
    "overrides, key", CASES, ids=[" ".join(o).replace("/", "|") for o, _ in CASES]
)
def test_a_bad_value_is_one_line_naming_the_key(overrides, key, tmp_path):
    # No W&B run is started by build_job; logger=none keeps a stray one from starting.
    quiet = [] if any(o.startswith("logger.") for o in overrides) else ["logger=none"]
    cfg = compose_config("train", [*overrides, *quiet], tmp_path)
    with pytest.raises(UserError) as info:
        build_job(cfg)
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message


@pytest.mark.parametrize(
    "overrides, key", ANALYZE_CASES, ids=[" ".join(o) for o, _ in ANALYZE_CASES]
)
def test_a_bad_analyze_value_is_one_line_naming_the_key(overrides, key, tmp_path):
    small = [] if any(o.startswith("model=") for o in overrides) else ["model.depth=8"]
    cfg = compose_config("analyze", [*overrides, *small, "logger=none"], tmp_path)
    with pytest.raises(UserError) as info:
        run_analysis_job(cfg)
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message
    # Refused before anything was analysed: no spectra, no figures.
    assert not (tmp_path / "analysis").exists()


def _launcher(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True).hydra.launcher


@pytest.mark.parametrize(
    "overrides, key", LAUNCHER_CASES, ids=[" ".join(o) for o, _ in LAUNCHER_CASES]
)
def test_a_bad_launcher_value_is_one_line_naming_the_key(overrides, key):
    with pytest.raises(UserError) as info:
        check_launcher(_launcher(overrides))
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message


def test_sbatch_options_with_dashes_are_one_line():
    # Written in a launcher yaml (an override cannot spell a key that starts with dashes).
    launcher = _launcher(SLURM)
    launcher.additional_parameters = {"--mail-type": "END"}
    with pytest.raises(UserError, match=r"^hydra.launcher.additional_parameters: expected"):
        check_launcher(launcher)


@pytest.mark.parametrize("launcher", ["slurm", "slurm_cpu", "joblib", "basic"])
def test_the_shipped_launchers_pass_their_check(launcher):
    check_launcher(_launcher([f"hydra/launcher={launcher}"]))


def _leaf_keys(node: object, prefix: str) -> set[str]:
    if not isinstance(node, dict):
        return {prefix}
    keys: set[str] = set()
    for name, value in node.items():
        if name in ("_target_", "_partial_", "defaults"):
            continue
        keys |= _leaf_keys(value, f"{prefix}.{name}")
    return keys


def test_every_key_has_a_bad_value_case():
    """Every key a user can set: the groups' keys, the top-level keys of train.yaml, every
    key of analyze.yaml and the launcher settings of conf/hydra/launcher/."""
    keys: set[str] = set()
    groups = ("model", "data", "optim", "analysis", "trainer", "logger", "callbacks", "paths")
    groups += ("hydra/launcher",)
    for group in groups:
        for path in (CONF / group).glob("*.yaml"):
            prefix = group.replace("/", ".")
            keys |= _leaf_keys(yaml.safe_load(path.read_text()) or {}, prefix)
    top = yaml.safe_load((CONF / "train.yaml").read_text())
    keys |= {k for k in top if k != "defaults"}
    analyze_keys = yaml.safe_load((CONF / "analyze.yaml").read_text())
    keys |= {k.lstrip(".") for k in _leaf_keys(analyze_keys, "")}
    expected = {"seed", "trainer.max_epochs", "callbacks.lagzi.threshold", "checkpoint.format",
                "device", "analysis.solver.dense_max", "hydra.launcher.timeout_min"}  # fmt: skip
    assert expected <= keys
    tested = {key for _, key in CASES + ANALYZE_CASES + LAUNCHER_CASES}
    exempt = {k for k in keys if k in EXEMPT or k.rsplit(".", 1)[0] + ".*" in EXEMPT}
    missing = sorted(k for k in keys - tested - exempt if not k.startswith("data.seed"))
    assert not missing, f"keys with no bad-value case: {missing}"


# The real command on each bad value: every test below asserts on its own process. The
# selected ones start together from one fixture, two at a time (conftest.run_clis): their
# seconds each are imports on one core, and a CI runner has two.
CLI_ARGS = {
    "test_the_cli_prints_one_line_and_exits_2": lambda p, where: [p["override"], "logger=none"],
    "test_a_bad_analysis_value_stops_the_cli_before_training": lambda p, where: [
        p["override"], "callbacks=all_analyses", "logger=none", f"hydra.run.dir={where / 'job'}"
    ],
    "test_a_bad_launcher_value_stops_the_sweep_before_any_job": lambda p, where: [
        "-m", *p["overrides"], "model.depth=8,14", "logger=none",
        f"hydra.sweep.dir={where / 'sweep'}",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def cli_runs(request, tmp_path_factory) -> dict:
    """``(test, key): (CompletedProcess, the folder it ran in)`` for every selected CLI case."""
    cases, folders = {}, {}
    for function, args in CLI_ARGS.items():
        for params in selected_params(request, function):
            where = folders[function, params["key"]] = tmp_path_factory.mktemp("cli")
            cases[function, params["key"]] = (args(params, where), where, {})
    results = run_clis(cases)
    return {case: (results[case], folders[case]) for case in cases}


@pytest.mark.parametrize(
    "override, key",
    [
        ("analysis.perturbation.eps=-1", "analysis.perturbation.eps"),
        ("data.fraction=2", "data.fraction"),
        ("seed=abc", "seed"),
        ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ],
)
def test_the_cli_prints_one_line_and_exits_2(override, key, cli_runs):
    result, tmp_path = cli_runs["test_the_cli_prints_one_line_and_exits_2", key]
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))


@pytest.mark.parametrize(
    "override, key",
    [
        ("analysis.tol=1.5", "analysis.tol"),  # checked as the job is built
        ("analysis.images=100000", "analysis.images"),  # checked against the test split
    ],
)
def test_a_bad_analysis_value_stops_the_cli_before_training(override, key, cli_runs):
    result, tmp_path = cli_runs["test_a_bad_analysis_value_stops_the_cli_before_training", key]
    job = tmp_path / "job"
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    value = override.split("=", 1)[1]
    assert errors[0].startswith(f"error: {key}: expected ") and errors[0].endswith(f"got {value}")
    assert "Traceback" not in result.stderr
    # Nothing trained, analysed or checkpointed; at most Hydra's config and the failed summary.
    for written in ("checkpoints", "analysis", "csv", "wandb"):
        assert not (job / written).exists(), written
    assert not list(tmp_path.rglob("*.ckpt"))


def test_one_unit_index_is_one_unit_end_to_end(tmp_path):
    """``analysis.units=3`` (no list) reads as [3] in every analysis that takes units."""
    job = tmp_path / "job"
    args = ["analysis.units=3", "analysis.histogram.units=3", "analysis.intervention.units=3",
            "analysis.intervention.skip_scale=0.5", "analysis.perturbation.project=true",
            "callbacks=all_analyses", "analysis.images=1", "analysis.maps=[sum]",
            "analysis.identity.images=8", "debug=fast_dev_run", "logger=none",
            f"hydra.run.dir={job}"]  # fmt: skip
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed"
    analysis = summary["analysis"]
    assert [u["index"] for u in analysis["units"]] == [3]
    assert analysis["intervention"]["units"] == [3]
    assert analysis["perturbation"]["projection"]["units"] == [3]
    assert (job / "analysis" / "spectra_epoch001.npz").is_file()


@pytest.mark.parametrize(
    "overrides, key",
    [
        (
            ["hydra/launcher=slurm_cpu", "hydra.launcher.timeout_min=0"],
            "hydra.launcher.timeout_min",
        ),
        (["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs"),
    ],
)
def test_a_bad_launcher_value_stops_the_sweep_before_any_job(overrides, key, cli_runs):
    result, where = cli_runs["test_a_bad_launcher_value_stops_the_sweep_before_any_job", key]
    sweep = where / "sweep"
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {key}: expected"), result.stderr
    assert "Traceback" not in result.stderr
    assert not sweep.exists()  # no job folder, nothing submitted
