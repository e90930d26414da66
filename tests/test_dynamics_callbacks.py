"""The perturbation, identity and Lagzi callbacks inside real training runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import compose_config, run_cli
from wandb_records import OfflineRun

from resnet_dyn.config.build import build
from resnet_dyn.dynamics.identity import identity_magnitudes
from resnet_dyn.dynamics.perturbation import perturbation_analysis, to_pixels
from resnet_dyn.errors import ConfigError
from resnet_dyn.models.checkpoints import load_model
from resnet_dyn.training.job import run_job

QUIET = ["debug=tiny", "trainer.enable_progress_bar=false"]
CIRCLES = ["model=dense_resnet", "data=circles", "callbacks=lagzi", "logger=none"]


def metric_rows(job, key: str) -> list[float]:
    with open(job / "csv" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def final_model_and_probe(job, cfg, n: int):
    """The trained net from last.ckpt (saved after the last epoch) and the callbacks' probe."""
    net, _ = load_model(job / "checkpoints" / "last.ckpt")
    dm = build(cfg.data)
    return net, dm, *dm.probe_batch(n)


def test_perturbation_callback_curves_figure_and_wandb(tmp_path):
    overrides = ["model.depth=8", "callbacks=perturbation", "analysis.images=16"]
    cfg = compose_config("train", QUIET + overrides, tmp_path)
    summary = run_job(cfg)
    p = summary["analysis"]["perturbation"]
    assert (p["attack"], p["images"]) == ("fgsm", 16)
    for curve in ("adversarial_rel", "random_rel", "adversarial_abs", "random_abs"):
        assert len(p[curve]) == 3 + 1  # the input of each of the 3 units and the output
    assert p["final_ratio"] == pytest.approx(p["adversarial_rel"][-1] / p["random_rel"][-1])
    # The callback attacks the final model on the probe images in pixel space.
    net, dm, images, labels = final_model_and_probe(tmp_path, cfg, 16)
    # Both accuracies by hand: FGSM is clip(pixels + eps sign(grad of the cross-entropy)) in
    # [0, 1] pixels, the model seeing the normalised image.
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (dm.mean, dm.std))
    pixels = (images * std + mean).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(net((pixels - mean) / std), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, pixels)
    attacked = (pixels + 0.0313725 * grad.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        for key, x in (("clean_accuracy", images), ("attacked_accuracy", (attacked - mean) / std)):
            assert p[key] == (net(x).argmax(1) == labels).double().mean().item(), key
    assert p["attacked_accuracy"] <= p["clean_accuracy"]
    # The attack's size (the accuracies alone miss a wrong eps on this barely trained model).
    size = (attacked - pixels).detach().flatten(1).norm(dim=1).mean().item()
    assert p["perturbation_l2"] == pytest.approx(size, rel=1e-5)
    pixels = to_pixels(images, dm.mean, dm.std)
    direct = perturbation_analysis(net, pixels, labels, dm.mean, dm.std, "fgsm", eps=0.0313725)
    assert p["adversarial_rel"] == pytest.approx(direct["adversarial_rel"], rel=1e-4)
    assert p["attacked_accuracy"] == direct["attacked_accuracy"]
    assert (tmp_path / "analysis" / p["figure"]).stat().st_size > 1000
    assert p["figure"] == "perturbation_epoch002.png"
    on_disk = json.loads((tmp_path / "summary.json").read_text())["analysis"]["perturbation"]
    assert on_disk["random_abs"] == p["random_abs"]
    assert metric_rows(tmp_path, "perturbation/final_ratio") == [pytest.approx(p["final_ratio"])]
    run = OfflineRun.read(next((tmp_path / "wandb").glob("offline-run-*")))
    (row,) = [r for r in run.history if "perturbation/rel_table" in r]
    assert "perturbation/abs_table" in row and row["epoch"] == 2
    assert run.summary["perturbation/final_ratio"] == pytest.approx(p["final_ratio"])
    # resnet-dyn-analyze on the same network and images: the same fields and values.
    job = tmp_path / "analyze"
    result = run_cli(
        [f"checkpoint.path={tmp_path / 'checkpoints' / 'last.ckpt'}", "analysis.images=16",
         "analysis.units=[0]", "analysis.maps=[sum]", "logger=none", f"hydra.run.dir={job}"],
        cwd=tmp_path, module="resnet_dyn.cli.analyze",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    analysed = json.loads((job / "summary.json").read_text())["analysis"]["perturbation"]
    assert sorted(analysed) == sorted(on_disk)
    for key, value in on_disk.items():
        if key == "figure":
            assert analysed[key] == "perturbation_final.png"
        elif isinstance(value, (float, list)):
            assert analysed[key] == pytest.approx(value, rel=1e-5), key
        else:
            assert analysed[key] == value, key


def test_identity_callback_every_epoch_and_summary(tmp_path):
    overrides = ["model.depth=14", "callbacks=identity", "analysis.identity.images=32",
                 "analysis.identity.epsilon=0.9", "logger=none"]  # fmt: skip
    cfg = compose_config("train", QUIET + overrides, tmp_path)
    ident = run_job(cfg)["analysis"]["identity"]
    assert len(ident["abs"]) == len(ident["scaled"]) == 6  # (14 - 2) / 2 blocks
    assert ident["scaled_mean"] == pytest.approx(np.mean(ident["scaled"]))
    assert [h["epoch"] for h in ident["history"]] == [1, 2]
    assert metric_rows(tmp_path, "identity/scaled_mean") == pytest.approx(
        [h["scaled_mean"] for h in ident["history"]]
    )
    # Hauser's stopping rule per epoch (0.9 lies between the two epochs' values at seed 0).
    below = [h["scaled_mean"] < 0.9 for h in ident["history"]]
    assert [h["below_epsilon"] for h in ident["history"]] == below
    assert metric_rows(tmp_path, "identity/below_epsilon") == [float(b) for b in below]
    assert ident["first_epoch_below"] == (below.index(True) + 1 if any(below) else None)
    net, _, images, _ = final_model_and_probe(tmp_path, cfg, 32)
    assert ident["abs"] == pytest.approx(identity_magnitudes(net, images)["abs"], rel=1e-4)
    assert (tmp_path / "analysis" / "identity_epoch002.png").is_file()


@pytest.mark.parametrize(
    ("tied", "depth", "epochs", "min_depth", "expected"),
    [
        ("true", 6, 3, 3, [5, 4, 4]),  # no layer is dropped after the last epoch
        ("false", 4, 4, 2, [3, 2, 2, 2]),  # nor below min_depth; untied: stale optimizer params
    ],
)
def test_lagzi_prunes_one_layer_per_epoch(tmp_path, tied, depth, epochs, min_depth, expected):
    overrides = [f"model.tied={tied}", f"model.depth={depth}", f"trainer.max_epochs={epochs}",
                 "callbacks.lagzi.threshold=10.0", f"callbacks.lagzi.min_depth={min_depth}",
                 "callbacks.lagzi.images=64"]  # fmt: skip
    summary = run_job(compose_config("train", QUIET + CIRCLES + overrides, tmp_path))
    t = summary["analysis"]["transient"]
    assert t["depth_per_epoch"] == expected and t["initial_depth"] == depth
    assert summary["final_depth"] == t["final_depth"] == expected[-1]
    assert summary["epochs"] == epochs and "test/acc" in summary["metrics"]
    assert metric_rows(tmp_path, "lagzi/depth") == expected
    # Checkpoints carry the pruned depth, so the analysis can rebuild the model.
    net, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert len(net.units) == expected[-1]
    arrays = np.load(tmp_path / "analysis" / t["trajectory_file"])
    assert arrays["mean"].shape == arrays["std"].shape == (2, expected[-1], 3)


def test_lagzi_threshold_zero_keeps_depth_and_unrolls_trajectories(tmp_path):
    overrides = ["model.depth=5", "callbacks.lagzi.threshold=0",
                 "callbacks.lagzi.trajectory_depth=12", "callbacks.lagzi.images=64"]  # fmt: skip
    cfg = compose_config("train", QUIET + CIRCLES + overrides, tmp_path)
    summary = run_job(cfg)
    t = summary["analysis"]["transient"]
    assert t["depth_per_epoch"] == [5, 5] and summary["final_depth"] == 5
    assert len(t["convergence"]) == 2 and all(c > 0 for c in t["convergence"])
    assert metric_rows(tmp_path, "lagzi/convergence") == pytest.approx(t["convergence"])
    arrays = np.load(tmp_path / "analysis" / "transient_trajectories.npz")
    assert arrays["mean"].shape == (2, 12, 3) and arrays["convergence"].shape == (11,)
    # The first 5 unrolled layers are the trained ones: class 0's mean residuals, by hand.
    net, _, x, y = final_model_and_probe(tmp_path, cfg, 64)
    W, b = net.units[0].branch[0].weight, net.units[0].branch[0].bias
    state, means = net.stem(x), []
    with torch.no_grad():
        for _ in range(5):
            residual = torch.sigmoid(state @ W.T + b)
            means.append(residual[y == 0].mean(0))
            state = state + residual
    assert np.allclose(arrays["mean"][0, :5], torch.stack(means).numpy(), atol=1e-5)
    for name in (t["figure"], t["depth_figure"]):
        assert (tmp_path / "analysis" / name).stat().st_size > 1000


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["callbacks=identity", "model=mlp", "data=circles"], "callbacks.identity"),
        (["callbacks=lagzi", "model.depth=8"], "model"),  # a CIFAR ResNet changes shape
        (CIRCLES + ["model.tied=false", "callbacks.lagzi.trajectory_depth=50"],
         "callbacks.lagzi.trajectory_depth"),
        (["callbacks=perturbation", "analysis.perturbation.attack=cw"],
         "analysis.perturbation.attack"),
    ],
)  # fmt: skip
def test_unsuitable_models_and_settings_fail_before_training(tmp_path, overrides, key):
    cfg = compose_config("train", QUIET + ["logger=none"] + overrides, tmp_path)
    with pytest.raises(ConfigError) as err:
        run_job(cfg)
    assert err.value.key == key
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "epochs" not in summary


def test_noise_callback_measures_growth_per_layer(tmp_path):
    cfg = compose_config(
        "train",
        [
            "model=mlp",
            "data=circles",
            "callbacks=noise",
            "model.depth=4",
            "debug=tiny",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "analysis.noise.sigmas=[0.0,0.5]",
            "analysis.noise.images=64",
        ],  # fmt: skip
        tmp_path,
    )
    noise = run_job(cfg)["analysis"]["noise"]
    assert noise["sigmas"] == [0.0, 0.5]
    assert [len(d) for d in noise["distance"]] == [5, 5]  # the input of 4 layers and the output
    assert noise["distance"][0] == [0.0] * 5 and noise["distance"][1][0] > 0
    # By hand on the final model and the 64 probe inputs, as noise_evolution documents it:
    # one standard-normal draw (a generator seeded 0) scaled by each sigma; per layer the
    # mean over inputs of ||x_t(noisy) - x_t(clean)||; the accuracy on the noisy inputs.
    net, _, x, y = final_model_and_probe(tmp_path, cfg, 64)
    draw = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))

    def layers(inputs: torch.Tensor) -> list[torch.Tensor]:
        states = [net.stem(inputs)]
        for unit in net.units:
            states.append(unit(states[-1]))
        return states

    with torch.no_grad():
        clean = layers(x)
        for k, sigma in enumerate((0.0, 0.5)):
            noisy = layers(x + sigma * draw)
            dist = [(a - b).flatten(1).norm(dim=1) for a, b in zip(noisy, clean, strict=True)]
            assert noise["distance"][k] == pytest.approx([d.mean().item() for d in dist], rel=1e-5)
            rel = [
                (d / b.flatten(1).norm(dim=1)).mean().item()
                for d, b in zip(dist, clean, strict=True)
            ]
            assert noise["relative"][k] == pytest.approx(rel, rel=1e-5)
            right = (net.head(noisy[-1]).argmax(1) == y).double().mean().item()
            assert noise["accuracy"][k] == right, (sigma, noise["accuracy"])
    assert noise["accuracy"][0] > noise["accuracy"][1]  # the noise costs something here
    assert (tmp_path / "analysis" / noise["figure"]).is_file()
