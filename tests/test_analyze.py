"""The spectrum callback in training, and resnet-dyn-analyze on checkpoints and image folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import compose_config, make_image_folder, run_cli
from hydra.utils import instantiate
from scipy.sparse.linalg import LinearOperator, svds
from test_checkpoints import akamaster_state
from torch.func import jacfwd, jvp, vjp
from torch.nn import functional as F
from wandb_records import OfflineRun

from resnet_dyn.data import ImageFolderDataModule
from resnet_dyn.models.checkpoints import load_model
from resnet_dyn.training.job import run_job

CIFAR10 = "[airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck]"
TOL = 1e-3  # analysis.tol: |sigma - 1| < TOL counts as one, sigma < TOL as zero


def dense_sigma(f, x: torch.Tensor) -> np.ndarray:
    """All singular values of the map ``f`` of one sample at ``x``: its dense Jacobian by
    ``jacfwd`` (out x in), then ``svdvals``; the oracle the analyses are checked against."""
    J = jacfwd(lambda v: f(v[None])[0])(x).reshape(-1, x.numel()).detach()
    return torch.linalg.svdvals(J).numpy()


def assert_fractions_match(stats: dict, sigma: np.ndarray) -> None:
    """The summary's fractions (means over images) against the oracle's: equal up to the
    oracle's values within rounding (1e-5) of a threshold, which either side may count
    (the intervals are open: stats.sigma_intervals)."""
    n = sigma.shape[1]
    close = (np.abs(np.abs(sigma - 1) - TOL) < 1e-5) | (np.abs(sigma - TOL) < 1e-5)
    slack = close.sum(1).max() / n + 1e-12
    oracle = {
        "frac_one": (np.abs(sigma - 1) < TOL).mean(1).mean(),
        "frac_gt_one": (sigma > 1 + TOL).mean(1).mean(),
        "frac_zero": (sigma < TOL).mean(1).mean(),
    }
    for key, value in oracle.items():
        assert abs(stats[key] - value) <= slack, (key, stats[key], value)


def test_spectrum_callback_logs_saves_and_summarises(tmp_path):
    cfg = compose_config(
        "train",
        [
            "debug=tiny",
            "model.depth=8",
            "callbacks=spectrum",
            "analysis.units=[0,2]",
            "analysis.images=2",
            "trainer.enable_progress_bar=false",
        ],  # fmt: skip
        tmp_path,
    )
    summary = run_job(cfg)
    analysis = summary["analysis"]
    assert [u["index"] for u in analysis["units"]] == [0, 2]
    unit0 = analysis["units"][0]
    assert (unit0["dim_in"], unit0["dim_out"]) == (16 * 64, 16 * 64)
    assert (analysis["units"][1]["dim_in"], analysis["units"][1]["dim_out"]) == (512, 256)
    # The dense oracle on the weights analysed (the last epoch's, as last.ckpt holds them;
    # in float64) at the analysed images (the first test images): every singular value of
    # each unit's sum and unit maps, and the summary's statistics over the two images.
    net, _ = load_model(tmp_path / "checkpoints" / "last.ckpt")
    net = net.double().eval()
    images = instantiate(cfg.data).probe_batch(2)[0].double()
    with torch.no_grad():
        states = [net.stem(images)]
        for block in net.units:
            states.append(block(states[-1]))
    arrays = np.load(tmp_path / "analysis" / "spectra_epoch002.npz")
    for entry in analysis["units"]:
        k = entry["index"]
        for kind in ("sum", "unit"):
            block = net.units[k]
            f = block.sum_map if kind == "sum" else block
            sigma = np.stack([dense_sigma(f, x) for x in states[k]])
            top = sigma.max()
            np.testing.assert_allclose(arrays[f"unit{k:02d}_{kind}_sigma"], sigma, atol=1e-5 * top)
            stats = entry[kind]
            assert stats["sigma_max"] == pytest.approx(sigma[:, 0].mean(), abs=1e-5 * top)
            assert stats["sigma_min"] == pytest.approx(sigma[:, -1].mean(), abs=1e-5 * top)
            assert_fractions_match(stats, sigma)
    # The post-activation unit's ReLU zeroes singular values that the sum map does not have.
    assert unit0["unit"]["frac_zero"] > unit0["sum"]["frac_zero"]
    assert (tmp_path / "analysis" / "spectra_hist_epoch002.png").stat().st_size > 1000
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["analysis"]["units"][1]["index"] == 2
    metrics = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "spectrum/unit_02/unit/frac_one" in metrics
    run = OfflineRun.read(next((tmp_path / "wandb").glob("offline-run-*")))
    (row,) = [r for r in run.history if "spectrum/unit_00/sum/hist" in r]
    assert row["spectrum/unit_00/sum/hist"]["_type"] == "histogram" and row["epoch"] == 2
    (scalars,) = [r for r in run.history if "spectrum/unit_02/unit/frac_one" in r]
    assert scalars["spectrum/unit_02/unit/frac_one"] == analysis["units"][1]["unit"]["frac_one"]
    assert scalars["epoch"] == 2


class Akamaster:
    """akamaster's CIFAR ResNet (option A shortcuts) written out from its state dict, in
    float64: an oracle for the checkpoint as resnet-dyn-analyze reads it that shares none of
    this project's model or mapping code. Unit k is layer{k // n + 1}.{k % n}."""

    def __init__(self, state: dict[str, torch.Tensor], depth: int) -> None:
        self.s = {k.removeprefix("module."): v.double() for k, v in state.items()}
        self.n = (depth - 2) // 6

    def _bn(self, x: torch.Tensor, p: str) -> torch.Tensor:
        s = self.s
        mean, var = s[f"{p}.running_mean"], s[f"{p}.running_var"]
        return F.batch_norm(x, mean, var, s[f"{p}.weight"], s[f"{p}.bias"], training=False)

    def _stride(self, k: int) -> int:
        return 2 if k % self.n == 0 and k > 0 else 1

    def branch(self, k: int, x: torch.Tensor) -> torch.Tensor:
        p = f"layer{k // self.n + 1}.{k % self.n}"
        h = F.conv2d(x, self.s[f"{p}.conv1.weight"], stride=self._stride(k), padding=1)
        h = F.relu(self._bn(h, f"{p}.bn1"))
        return self._bn(F.conv2d(h, self.s[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")

    def sum_map(self, k: int, x: torch.Tensor) -> torch.Tensor:
        if self._stride(k) == 1:
            return x + self.branch(k, x)
        pad = x.shape[1] // 2  # planes // 4 zero channels on each side
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad)) + self.branch(k, x)

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input of every unit, then the last unit's output."""
        h = F.relu(self._bn(F.conv2d(x.double(), self.s["conv1.weight"], padding=1), "bn1"))
        out = [h]
        for k in range(3 * self.n):
            out.append(F.relu(self.sum_map(k, out[-1])))
        return out

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h = self.states(x)[-1].mean((2, 3))
        return F.linear(h, self.s["linear.weight"], self.s["linear.bias"])


def top_sigma(f, x: torch.Tensor) -> float:
    """sigma_max of the map ``f`` at ``x`` (one sample, batch dim kept) by ARPACK on its
    jvp and vjp: the oracle where a dense SVD (4096 x 4096) would take too long."""
    y, pullback = vjp(f, x)

    def matvec(v: np.ndarray) -> np.ndarray:
        return jvp(f, (x,), (torch.from_numpy(v.ravel()).reshape(x.shape),))[1].flatten().numpy()

    def rmatvec(u: np.ndarray) -> np.ndarray:
        return pullback(torch.from_numpy(u.ravel()).reshape(y.shape))[0].flatten().numpy()

    op = LinearOperator((y.numel(), x.numel()), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
    v0 = np.ones(min(op.shape))
    return float(svds(op, k=1, tol=1e-10, v0=v0, return_singular_vectors=False)[0])


@pytest.mark.slow  # a ResNet-20 analysed by the CLI, then by ARPACK oracles (not in test-fast)
def test_analyze_akamaster_checkpoint_on_an_image_folder(tmp_path):
    path = tmp_path / "resnet20.th"
    state = akamaster_state(20)
    torch.save({"state_dict": state, "best_prec1": 91.0}, path)
    # "deer": the class this random network predicts for the analysed image (accuracy 1).
    imgs = make_image_folder(tmp_path / "imgs", classes=("deer", "ship"), per_class=2)
    result = run_cli(
        [
            "model.depth=20",
            f"checkpoint.path={path}",
            "checkpoint.format=akamaster",
            "data=image_folder",
            f"data.root={imgs}",
            f"data.classes={CIFAR10}",
            "data.batch_size=4",
            "data.mean=[0.485,0.456,0.406]",
            "data.std=[0.229,0.224,0.225]",
            "analysis.units=[7,8]",
            "analysis.images=1",
            "analysis.maps=[sum,unit]",
            # Full spectra (4,096 values a map): counted fractions through the CLI are
            # test_analysis_solver's; here the checkpoint format and the folder's images.
            "analysis.method=auto",
            "analysis.perturbation.attack=fgsm",
            "analysis.perturbation.eps=0.00392",
            f"hydra.run.dir={tmp_path / 'job'}",
        ],  # fmt: skip
        cwd=tmp_path,
        module="resnet_dyn.cli.analyze",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["status"] == "completed"
    units = summary["analysis"]["units"]
    assert [u["index"] for u in units] == [7, 8] and units[0]["stage"] == 2
    assert units[0]["dim_in"] == 64 * 8 * 8
    assert units[0]["sum"]["method"] == units[1]["unit"]["method"] == "coloring+gram"
    assert units[0]["sum"]["fractions"] == units[1]["unit"]["fractions"] == "exact"
    # The oracle: akamaster's network written out from the state dict saved, on the
    # images the datamodule serves (the first test image analysed; all 4 for identity).
    ref = Akamaster(state, 20)
    dm = ImageFolderDataModule(
        imgs,
        classes=CIFAR10.strip("[]").split(","),
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
    )
    images, labels = dm.probe_batch(4)
    states = ref.states(images)
    with torch.no_grad():
        right = (ref.logits(images[:1]).argmax(1) == labels[:1]).double().mean().item()
    assert summary["analysis"]["accuracy"] == right == 1.0
    arrays = np.load(tmp_path / "job" / "analysis" / "spectra_final.npz")
    for entry in units:
        k = entry["index"]
        for kind in ("sum", "unit"):
            f = (
                (lambda v, k=k: ref.sum_map(k, v))
                if kind == "sum"
                else (lambda v, k=k: F.relu(ref.sum_map(k, v)))
            )
            top = top_sigma(f, states[k][:1])
            assert entry[kind]["sigma_max"] == pytest.approx(top, rel=1e-5), (k, kind)
            assert arrays[f"unit{k:02d}_{kind}_largest"][0, 0] == pytest.approx(top, rel=1e-5)
    pert = summary["analysis"]["perturbation"]
    assert pert["attack"] == "fgsm" and pert["eps"] == 0.00392
    for curve in ("adversarial_rel", "random_rel", "adversarial_abs", "random_abs"):
        assert len(pert[curve]) == 10  # the input of each of 9 units, and the output
    assert pert["clean_accuracy"] == right
    # identity.py's definition: per block, the mean over images of ||F(x_l)|| and of
    # ||F(x_l)|| / ||x_l|| (norms over each whole sample).
    identity = summary["analysis"]["identity"]
    with torch.no_grad():
        norms = [ref.branch(k, states[k]).flatten(1).norm(dim=1) for k in range(9)]
    scaled = [
        (f / x.flatten(1).norm(dim=1)).mean().item() for f, x in zip(norms, states[:9], strict=True)
    ]
    np.testing.assert_allclose(identity["abs"], [f.mean().item() for f in norms], rtol=1e-4)
    np.testing.assert_allclose(identity["scaled"], scaled, rtol=1e-4)
    assert identity["scaled_mean"] == pytest.approx(np.mean(scaled), rel=1e-4)
    job = tmp_path / "job"
    assert (job / "analysis" / "perturbation_final.png").is_file()
    arrays = np.load(job / "analysis" / "spectra_final.npz")
    for entry in units:  # full spectra: every singular value, largest first
        for kind in ("sum", "unit"):
            sigma = arrays[f"unit{entry['index']:02d}_{kind}_sigma"]
            assert sigma.shape == (1, 4096) and (np.diff(sigma[0]) <= 0).all()
            assert sigma[0, 0] == pytest.approx(entry[kind]["sigma_max"], rel=1e-6)
    assert (job / "analysis" / "spectra_hist_final.png").is_file()
    assert list((job / "wandb").glob("offline-run-*"))


def test_analyze_bad_unit_index_is_one_line(tmp_path):
    result = run_cli(
        ["analysis.units=[99]", "logger=none", f"hydra.run.dir={tmp_path / 'job'}"],
        cwd=tmp_path,
        module="resnet_dyn.cli.analyze",
    )
    assert result.returncode == 2
    assert "analysis.units" in result.stderr and "Traceback" not in result.stderr
