"""Every key a user can set refuses bad values with one line naming the key.

Each case composes the real configs with one bad override and builds the job as
``resnet-dyn`` does before training (``build_job``). ``test_every_key_has_a_bad_value_case``
keeps the table exhaustive: a new key in ``conf/`` needs a case here, or a reason in EXEMPT.
"""

from __future__ import annotations

import pytest
import yaml
from conftest import CONF, compose_config, run_cli

from resnet_dyn.errors import UserError
from resnet_dyn.training.job import build_job

DENSE = ["model=dense_resnet", "data=circles"]
MLP = ["model=mlp", "data=circles"]
DEEP = ["model=deep_resnet"]
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
    """Every key a user can set: the groups' keys and the top-level keys of train.yaml."""
    keys: set[str] = set()
    groups = ("model", "data", "optim", "analysis", "trainer", "logger", "callbacks", "paths")
    for group in groups:
        for path in (CONF / group).glob("*.yaml"):
            keys |= _leaf_keys(yaml.safe_load(path.read_text()) or {}, group)
    top = yaml.safe_load((CONF / "train.yaml").read_text())
    keys |= {k for k in top if k != "defaults"}
    assert {"seed", "trainer.max_epochs", "callbacks.lagzi.threshold"} <= keys
    tested = {key for _, key in CASES}
    exempt = {k for k in keys if k in EXEMPT or k.rsplit(".", 1)[0] + ".*" in EXEMPT}
    missing = sorted(k for k in keys - tested - exempt if not k.startswith("data.seed"))
    assert not missing, f"keys with no bad-value case: {missing}"


@pytest.mark.parametrize(
    "override, key",
    [
        ("analysis.perturbation.eps=-1", "analysis.perturbation.eps"),
        ("data.fraction=2", "data.fraction"),
        ("seed=abc", "seed"),
        ("trainer.max_epochs=-1", "trainer.max_epochs"),
    ],
)
def test_the_cli_prints_one_line_and_exits_2(override, key, tmp_path):
    result = run_cli([override, "logger=none"], cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("*.ckpt"))
