"""resnet-dyn-report on a real sweep made with the CLI, on synthetic job folders written in the
documented summary.json format, its pure k(m)/s(m) and identity-scaling math, and the page as
headless Chromium renders it."""

from __future__ import annotations

import csv
import html
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import NASTY_TAG, run_cli
from PIL import Image

from resnet_dyn.cli.report import main
from resnet_dyn.report import common as report_common
from resnet_dyn.report.batch import (
    batch_replicates,
    batch_results,
    batch_scaling,
    iterations_to_loss,
)
from resnet_dyn.report.build import build_report
from resnet_dyn.report.figures import UNTRAINED_ACC, axes_data, identity_scaling, noise_data
from resnet_dyn.report.sweep import alpha_beta, load_sweep, table
from resnet_dyn.report.units import (
    alpha_beta_figures,
    alpha_beta_grid,
    projection_figures,
    projection_stats,
    unit_figures,
    unit_statistics_by_configuration,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def sweep(analysed_sweep) -> tuple[Path, subprocess.CompletedProcess]:
    """2 x 2 jobs with every analysis of a CIFAR ResNet; model.depth=21 fails both of its jobs
    (conftest's sweep, shared with the secrets scan of test_faults), and its report."""
    root, report, _ = analysed_sweep
    return root, report


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def image_sources(page: str) -> list[str]:
    return [part.split('"', 1)[0] for part in page.split('<img src="')[1:]]


def nested(overrides: list[str]) -> dict:
    """``["model.depth=8"]`` -> ``{"model": {"depth": 8}}``, the config a job would resolve."""
    config: dict = {}
    for item in overrides:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return config


def make_job(
    root: Path,
    name: str,
    overrides: list[str],
    summary: dict | None = None,
    losses: list[float] | None = None,
) -> Path:
    """A job folder as the CLI leaves it; ``summary`` None: a job still running."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if summary is not None:
        full = {"status": "completed", "config": nested(overrides), "metrics": {}, **summary}
        (job / "summary.json").write_text(json.dumps(full))
    if losses is not None:
        (job / "csv").mkdir()
        lines = ["step,train/loss,val/acc"] + [f"{s},{v}," for s, v in enumerate(losses)]
        (job / "csv" / "metrics.csv").write_text("\n".join([*lines, f"{len(losses)},,0.5"]))
    return job


def test_real_sweep_table_keeps_failed_jobs(sweep):
    root, result = sweep
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"report: 4 jobs (2 completed, 2 failed) -> {root}/report.html"
    rows = read_csv(root / "summary.csv")
    assert [r["job"] for r in rows] == ["0", "1", "2", "3"]
    assert [(r["model.depth"], r["data.batch_size"]) for r in rows] == [
        ("8", "16"),
        ("8", "32"),
        ("21", "16"),
        ("21", "32"),
    ]
    assert "tags" not in rows[0]  # the same in every job: not a swept column
    for r in rows[:2]:
        assert r["status"] == "completed" and r["error"] == ""
        # Each cell is the job's own summary.json value (the spectrum: the mean over the
        # analysed units, here unit 0 alone), not merely a plausible number.
        summary = json.loads((root / r["job"] / "summary.json").read_text())
        analysis = summary["analysis"]
        expected = {
            "test/acc": summary["metrics"]["test/acc"],
            "spectrum/sum/frac_one": np.mean([u["sum"]["frac_one"] for u in analysis["units"]]),
            "identity/scaled_mean": analysis["identity"]["scaled_mean"],
            "perturbation/final_ratio": analysis["perturbation"]["final_ratio"],
        }
        for column, value in expected.items():
            assert float(r[column]) == pytest.approx(value, rel=1e-12), column
        assert int(r["batch/k"]) >= 1  # iterations to the loss level: its math is tested below
    for r in rows[2:]:
        assert r["status"] == "failed" and r["test/acc"] == ""
        assert "model.depth: expected 6n+2" in r["error"]


def test_real_sweep_figures_and_page(sweep):
    root, _ = sweep
    expected = {
        "report_axis1.png",
        "report_units0.png",  # analysis.units=[0]: one point per batch size
        "report_spectra0.png",
        "report_spectra1.png",
        "report_perturbation.png",
        "report_identity.png",
        "report_batch.png",
    }
    assert {p.name for p in root.glob("report_*.png")} == expected  # depth: one value completed
    for name in expected:
        with Image.open(root / name) as image:
            image.verify()
        assert (root / name).read_bytes().startswith(PNG_MAGIC)
    page = (root / "report.html").read_text()
    assert sorted(image_sources(page)) == sorted(expected)
    assert NASTY_TAG not in page and html.escape(NASTY_TAG) in page
    assert "No data in this sweep for: Residual transients and pruning (Lagzi)." in page
    assert "Noise" not in page  # no noise data: that section is left out quietly
    assert "http://" not in page and "https://" not in page  # self-contained
    assert page.count('class="text st-failed">failed</td>') == 2


def test_missing_folder_is_one_line_error(tmp_path):
    missing = tmp_path / "no-such-sweep"
    result = run_cli([str(missing)], cwd=tmp_path, module="resnet_dyn.cli.report")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {missing}: no such folder"
    assert result.stdout == ""


def test_folder_without_jobs_is_one_line_error(tmp_path, capsys):
    (tmp_path / "notes").mkdir()  # a folder, but not a job folder
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path}: no job folders")
    assert not (tmp_path / "report.html").exists()


def test_a_read_only_sweep_is_one_line_error(tmpfs, tmp_path):
    """A sweep on a file system mounted read-only (EROFS, which even root cannot write):
    the real command prints one line naming the folder and the reason, and writes nothing."""
    root = tmpfs("share", size="4m")
    make_job(root, "0", ["model.depth=8"], {"metrics": {"test/acc": 0.5}})
    make_job(root, "1", ["model.depth=14"], {"metrics": {"test/acc": 0.6}})
    remount = subprocess.run(["mount", "-o", "remount,ro", str(root)], capture_output=True)
    assert remount.returncode == 0, remount.stderr
    result = run_cli([str(root)], cwd=tmp_path, module="resnet_dyn.cli.report")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith(f"error: {root}: cannot write the report there (read-only")
    assert result.stderr.count("\n") == 1
    assert sorted(p.name for p in root.iterdir()) == ["0", "1"]


def test_a_folder_that_is_not_a_sweep_is_refused_and_left_untouched(tmp_path, capsys):
    """What a scratch folder holds: empty folders, another tool's summary.json, files."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text('{"loss": 0.1}')
    (tmp_path / "notes.txt").write_text("not a job")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a resnet-dyn sweep" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_one_job_folder_is_refused_with_a_hint(tmp_path, capsys):
    job = make_job(tmp_path, "job", ["model.depth=8"], {"metrics": {}})
    with pytest.raises(SystemExit) as stop:
        main([str(job)])
    assert stop.value.code == 2
    assert "one job's folder, not a sweep" in capsys.readouterr().err
    assert not (job / "report.html").exists()


def test_unfinished_and_unreadable_jobs_and_escaped_names(tmp_path, capsys):
    odd = '7"><img src=x onerror=alert(1)>'  # no slash: a valid folder name
    make_job(tmp_path, "0", ["model.depth=8", "seed=0"], {"metrics": {"test/acc": 0.5}})
    make_job(tmp_path, "1", ["model.depth=14", "seed=0"])  # running or killed
    make_job(tmp_path, "2", ["model.depth=20", "seed=0"], {})
    (tmp_path / "2" / "summary.json").write_text("{")  # e.g. a disk that filled up
    make_job(
        tmp_path,
        odd,
        [f"model.depth={NASTY_TAG}", "seed=0"],
        {"status": "diverged", "error": "loss is <nan>"},
    )
    main([str(tmp_path)])
    assert capsys.readouterr().out.startswith("report: 4 jobs (1 completed, 2 failed, 1 missing)")
    rows = {r["job"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert [rows[j]["status"] for j in ("0", "1", "2", odd)] == [
        "completed",
        "missing",
        "unreadable",
        "diverged",
    ]
    assert rows["2"]["error"].startswith("summary.json: ") and rows[odd]["model.depth"] == NASTY_TAG
    page = (tmp_path / "report.html").read_text()
    for raw in (odd, NASTY_TAG, "<nan>"):
        assert raw not in page and html.escape(raw) in page
    assert 'class="text st-missing">missing</td>' in page


def test_iterations_to_loss_counts_iterations_to_the_first_hit():
    steps = np.array([0, 5, 10, 15])
    assert iterations_to_loss(steps, np.array([0.9, 0.5, 0.1, 0.05]), 0.5) == 6
    assert iterations_to_loss(steps, np.array([0.4, 0.5, 0.1, 0.05]), 0.5) == 1
    assert iterations_to_loss(steps, np.array([0.9, np.nan, 0.8, 0.7]), 0.5) is None


def step_curve(k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A loss of 1 that drops to 0.1 at iteration k (logged step k - 1) and stays there."""
    steps = np.arange(n)
    return steps, np.where(steps < k - 1, 1.0, 0.1)


def test_batch_scaling_known_answer():
    curves = {
        16: step_curve(80, 100),
        32: step_curve(40, 60),
        64: step_curve(30, 50),
        128: step_curve(29, 40),  # 12 of 40 losses at 0.1: the lower quartile is 0.1
        256: (np.arange(10), np.full(10, np.nan)),
    }  # 256 diverged
    r = batch_scaling(curves)
    assert r["epsilon"] == pytest.approx(0.1)
    assert r["m0"] == 16 and r["m"] == [16, 32, 64, 128, 256]
    assert r["k"] == [80, 40, 30, 29, None]
    assert r["speedup"] == pytest.approx([1.0, 2.0, 80 / 30, 80 / 29, None])
    assert r["ideal"] == [1, 2, 4, 8, 16]
    # local log-log slopes of s: 1, log2(4/3) = 0.42, log2(30/29) = 0.05; 256 never gets there
    assert r["regime"] == ["linear", "linear", "diminishing returns", "stagnation", "stagnation"]


def test_batch_sweep_one_curve_per_lr_scaling(tmp_path, drawn):
    k = {"none": {16: 40, 32: 20, 64: 18}, "linear": {16: 40, 32: 21, 64: 11}}
    for i, (scaling, m) in enumerate((s, m) for s in k for m in k[s]):
        losses = step_curve(k[scaling][m], 60)[1].tolist()
        overrides = [f"data.batch_size={m}", f"optim.lr_scaling={scaling}"]
        make_job(tmp_path, str(i), overrides, {}, losses)
    # Still running at m = 128: its loss has not reached epsilon yet, which is no verdict.
    running = make_job(tmp_path, "6", ["data.batch_size=128", "optim.lr_scaling=none"], None, [1.0])
    (running / ".hydra" / "config.yaml").write_text("data:\n  batch_size: 128\n")
    results = {r["label"]: r for r in batch_results(load_sweep(tmp_path))}
    assert set(results) == {"optim.lr_scaling=none", "optim.lr_scaling=linear"}
    assert results["optim.lr_scaling=none"]["m"] == [16, 32, 64]
    assert results["optim.lr_scaling=none"]["k"] == [40, 20, 18]
    assert results["optim.lr_scaling=linear"]["regime"] == ["linear"] * 3
    build_report(tmp_path)
    rows = read_csv(tmp_path / "summary.csv")
    assert [r["batch/k"] for r in rows] == ["40", "20", "18", "40", "21", "11", ""]
    assert rows[6]["status"] == "missing"
    assert float(rows[2]["batch/speedup"]) == pytest.approx(40 / 18)
    assert (tmp_path / "report_batch.png").read_bytes().startswith(PNG_MAGIC)
    # The figure's k(m) panel draws each scaling's k against m (the running m = 128: none).
    _, k_ax, _ = drawn["report_batch.png"].axes
    lines = sorted((x.tolist(), y.tolist()) for x, y in plotted(k_ax))
    assert lines == [([16, 32, 64], [40, 20, 18]), ([16, 32, 64], [40, 21, 11])]
    assert "optim.lr_scaling=linear: eps=0.1, m=16 linear" in (tmp_path / "report.html").read_text()


def identity_summary(blocks: int, scale: float) -> dict:
    scaled, absolute = [scale / blocks] * blocks, [10 / blocks**0.5] * blocks
    return {
        "analysis": {
            "identity": {
                "scaled": scaled,
                "abs": absolute,
                "scaled_mean": scale / blocks,
                "abs_mean": 10 / blocks**0.5,
                "epsilon": 0.3,
            }
        }
    }


def test_identity_slope_and_stopping_rule_on_synthetic_summaries(tmp_path):
    (tmp_path / "report_old.png").write_bytes(PNG_MAGIC)  # from an earlier report
    for i, (alpha, blocks) in enumerate((a, b) for a in (1.0, 0.5) for b in (4, 8, 16, 32)):
        overrides = [
            "model._target_=DeepResNet",
            f"model.depth={blocks}",
            f"model.skip_scale={alpha}",
        ]
        make_job(tmp_path, str(i), overrides, identity_summary(blocks, 2 / alpha))
    data = {g["label"]: g for g in identity_scaling(load_sweep(tmp_path))}
    assert set(data) == {"model.skip_scale=1.0", "model.skip_scale=0.5"}
    g = data["model.skip_scale=1.0"]
    assert g["blocks"] == [4, 8, 16, 32] and g["scaled"] == pytest.approx(
        [0.5, 0.25, 0.125, 1 / 16]
    )
    assert g["slope_scaled"] == pytest.approx(-1.0) and g["slope_abs"] == pytest.approx(-0.5)
    assert g["stop"][0] is None and g["stop"][-1] == 4  # below and above every magnitude
    for eps, depth in zip(g["epsilon"], g["stop"], strict=True):
        assert depth == min((b for b in g["blocks"] if 2 / b < eps), default=None)
    build_report(tmp_path)
    assert not (tmp_path / "report_old.png").exists()
    assert (tmp_path / "report_identity.png").read_bytes().startswith(PNG_MAGIC)
    page = (tmp_path / "report.html").read_text()
    assert "model.skip_scale=1.0: -1.00; model.skip_scale=0.5: -1.00" in page


@pytest.fixture
def drawn(monkeypatch) -> dict[str, object]:
    """The matplotlib figures the report saves, by file name: what each PNG draws, read
    from the figure itself (its lines' data) rather than from the pixels."""
    figures: dict[str, object] = {}
    save = report_common._save

    def keep(fig, path):
        figures[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(report_common, "_save", keep)
    return figures


def plotted(ax) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (x, y) data of an axes' drawn lines (legend-only handles, with no data, left out)."""
    lines = [
        (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
        for line in ax.get_lines()
    ]
    return [(x, y) for x, y in lines if x.size]


def test_transients_and_noise_on_synthetic_summaries(tmp_path, drawn):
    rng = np.random.default_rng(0)
    jobs = (("DenseResNet", 5), ("MLP", 5), ("DenseResNet", 10))
    means = {}
    for i, (model, depth) in enumerate(jobs):
        transient = {
            "initial_depth": depth,
            "depth_per_epoch": [depth, depth - 1],
            "final_depth": depth - 1,
            "trajectory_file": "transient_trajectories.npz",
        }
        noise = {  # every job its own numbers, so that a figure mixing them up fails
            "sigmas": [0.0, 0.5],
            "relative": [[0.0] * depth, [0.1] * (depth - 1) + [0.1 * (i + 1)]],
            "distance": [[0.0] * depth, [0.2] * depth],
            "accuracy": [1.0, 0.8 - 0.1 * i],
        }
        overrides = [f"model._target_=resnet_dyn.models.{model}", f"model.depth={depth}"]
        job = make_job(
            tmp_path,
            str(i),
            overrides,
            {"final_depth": depth - 1, "analysis": {"transient": transient, "noise": noise}},
        )
        (job / "analysis").mkdir()
        means[i] = rng.random((2, depth - 1, 3))
        np.savez(
            job / "analysis" / "transient_trajectories.npz",
            mean=means[i],
            classes=np.array([0, 1]),
        )
    build_report(tmp_path)
    for name in ("transients", "depth", "noise"):
        assert (tmp_path / f"report_{name}.png").read_bytes().startswith(PNG_MAGIC)
    # One panel per job: a line per class and neuron, the class mean against the layer.
    panels = drawn["report_transients.png"].axes
    for i, (_, depth) in enumerate(jobs):
        lines = plotted(panels[i])
        assert len(lines) == 2 * 3
        for (x, y), (c, n) in zip(lines, [(c, n) for c in range(2) for n in range(3)], strict=True):
            assert x.tolist() == list(range(1, depth)) and y == pytest.approx(means[i][c, :, n])
    # Depth: the initial depth, then after each epoch, per configuration (one seed each).
    (ax,) = drawn["report_depth.png"].axes
    assert [y.tolist() for _, y in plotted(ax)] == [[d, d, d - 1] for _, d in jobs]
    # Noise: the last layer's relative size (left) and the accuracy (right) against sigma.
    left, right = drawn["report_noise.png"].axes
    for ax, expected in ((left, [[0.0, 0.1 * (i + 1)] for i in range(3)]),
                         (right, [[1.0, 0.8 - 0.1 * i] for i in range(3)])):  # fmt: skip
        lines = plotted(ax)
        assert all(x.tolist() == [0.0, 0.5] for x, _ in lines)
        np.testing.assert_allclose([y for _, y in lines], expected)
    assert [r["final_depth"] for r in read_csv(tmp_path / "summary.csv")] == ["4.0", "4.0", "9.0"]
    page = (tmp_path / "report.html").read_text()
    assert "Noise: ResNet vs MLP" in page and "Batch size and iterations" in page  # no data


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser; skips (before the sweep is built) where there is none, fails under CI."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is not installed (Debian: apt-get install -y chromium)")
    pytest.skip("chromium is not installed (Debian: apt-get install -y chromium); CI needs it")


def test_page_renders_in_headless_chromium(chromium, sweep, tmp_path):
    root, _ = sweep
    url = (root / "report.html").as_uri()
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,2000",
    ]
    shot = tmp_path / "shot.png"
    run = dict(capture_output=True, text=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], **run)
    subprocess.run([*base, f"--screenshot={shot}", url], **run)
    n = len(image_sources((root / "report.html").read_text()))
    assert n == 7 and f'data-images-loaded="{n}/{n}"' in dom.stdout, dom.stderr[-2000:]
    with Image.open(shot) as image:
        grey = np.asarray(image.convert("L"), dtype=float)
    assert grey.shape == (2000, 1200)
    assert (grey < 200).mean() > 0.02 and grey.std() > 10  # text, table and figures, not blank


def seeded_sweep(root: Path) -> dict[str, dict[int, np.ndarray]]:
    """model.depth=8,14 x seed=0,1,2, completed, plus a failed and an unfinished depth-14 job;
    returns each column's values per depth, in seed order."""
    rng = np.random.default_rng(7)
    values = {
        c: {d: rng.uniform(0.5, 1.0, 3) for d in (8, 14)}
        for c in ("test/acc", "wall_s", "perturbation/final_ratio")
    }
    for i, (depth, seed) in enumerate((d, s) for d in (8, 14) for s in range(3)):
        summary = {
            "metrics": {"test/acc": values["test/acc"][depth][seed]},
            "wall_s": values["wall_s"][depth][seed],
            "analysis": {
                "perturbation": {"final_ratio": values["perturbation/final_ratio"][depth][seed]}
            },
        }
        make_job(root, str(i), [f"model.depth={depth}", f"seed={seed}"], summary)
    failed = {"status": "failed", "error": "boom", "metrics": {"test/acc": 0.01}}
    make_job(root, "6", ["model.depth=14", "seed=3"], failed)  # counted, in no statistic
    make_job(root, "7", ["model.depth=14", "seed=4"])  # still running
    return values


def test_summary_by_config_has_one_row_per_configuration(tmp_path):
    values = seeded_sweep(tmp_path)
    build_report(tmp_path)
    assert len(read_csv(tmp_path / "summary.csv")) == 8  # still one row per job
    rows = read_csv(tmp_path / "summary_by_config.csv")
    assert [r["model.depth"] for r in rows] == ["8", "14"] and "seed" not in rows[0]
    assert [(r["n_seeds"], r["n_failed"], r["n_missing"]) for r in rows] == [
        ("3", "0", "0"),
        ("3", "1", "1"),
    ]
    assert [r["seeds"] for r in rows] == ["0 1 2", "0 1 2"]
    for row, depth in zip(rows, (8, 14), strict=True):
        for column, per_depth in values.items():
            assert float(row[f"{column}_mean"]) == pytest.approx(np.mean(per_depth[depth]))
            assert float(row[f"{column}_std"]) == pytest.approx(np.std(per_depth[depth], ddof=1))
        assert row["batch/k_mean"] == "" and row["incomplete"] == ""
    page = (tmp_path / "report.html").read_text()
    acc = values["test/acc"][8]
    assert 'href="summary_by_config.csv"' in page
    assert f"{np.mean(acc):.4g} ± {np.std(acc, ddof=1):.4g}" in page


def test_axis_figure_draws_the_mean_and_std_over_seeds(tmp_path):
    values = seeded_sweep(tmp_path)
    data = axes_data(load_sweep(tmp_path))
    assert list(data) == ["model.depth"]  # the seed is no axis of its own
    for column in ("test/acc", "perturbation/final_ratio"):  # wall_s is not plotted
        lines = data["model.depth"]["columns"][column]
        assert list(lines) == ["all jobs"]  # one line: the seeds are not lines
        line = lines["all jobs"]
        assert line["x"] == ["8", "14"] and line["n"] == [3, 3]
        assert line["mean"] == pytest.approx([np.mean(values[column][d]) for d in (8, 14)])
        assert line["std"] == pytest.approx([np.std(values[column][d], ddof=1) for d in (8, 14)])


def test_identity_slope_spread_from_per_seed_fits(tmp_path):
    powers = {"0": 0.8, "1": 1.0, "2": 1.3}  # each seed's magnitude falls as 1 / L^p
    for i, (seed, blocks) in enumerate((s, b) for s in powers for b in (4, 8, 16, 32)):
        scaled = 2 / blocks ** powers[seed]
        ident = {"scaled": [scaled] * blocks, "abs": [1.0] * blocks, "scaled_mean": scaled}
        ident.update(abs_mean=1.0, epsilon=0.1)
        make_job(
            tmp_path,
            str(i),
            [f"model.depth={blocks}", f"seed={seed}"],
            {"analysis": {"identity": ident}},
        )
    (g,) = identity_scaling(load_sweep(tmp_path))
    slopes = [-p for p in powers.values()]
    assert g["label"] == "all jobs" and g["blocks"] == [4, 8, 16, 32] and g["n"] == [3] * 4
    assert g["seed_slopes"] == pytest.approx(dict(zip(powers, slopes, strict=True)))
    assert g["seed_slope_mean"] == pytest.approx(np.mean(slopes))
    assert g["seed_slope_std"] == pytest.approx(np.std(slopes, ddof=1))
    assert g["scaled_std"][0] == pytest.approx(np.std([2 / 4**p for p in powers.values()], ddof=1))
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert f"(per-seed fits {np.mean(slopes):.2f} +- {np.std(slopes, ddof=1):.2f}, 3 seeds)" in page


def test_batch_regimes_per_seed_and_their_agreement(tmp_path):
    k = {
        "0": {16: 40, 32: 20, 64: 10},
        "1": {16: 40, 32: 20, 64: 10},
        "2": {16: 40, 32: 20, 64: 18},
    }
    for i, (seed, m) in enumerate((s, m) for s in k for m in k[s]):
        losses = step_curve(k[seed][m], 60)[1].tolist()
        make_job(tmp_path, str(i), [f"data.batch_size={m}", f"seed={seed}"], {}, losses)
    results = batch_results(load_sweep(tmp_path))
    assert [(r["label"], r["seed"], r["k"]) for r in results] == [
        ("all jobs", seed, list(k[seed].values())) for seed in k
    ]
    (s,) = batch_replicates(results)
    assert s["m"] == [16, 32, 64] and s["seeds"] == ["0", "1", "2"]
    assert s["k_mean"] == pytest.approx([40, 20, np.mean([10, 10, 18])])
    assert s["k_std"][2] == pytest.approx(np.std([10, 10, 18], ddof=1)) and s["k_std"][0] == 0
    # seed 2: s(64) = 40/18 is only 11% above s(32) = 2, a local slope of 0.15
    assert s["regimes"][2] == ["linear", "linear", "diminishing returns"]
    assert s["regime"] == ["linear"] * 3 and s["agreement"] == pytest.approx([1, 1, 2 / 3])
    build_report(tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "m=16 linear (3 seeds)" in page and "m=64 linear 2/3, diminishing returns 1/3" in page
    by_m = read_csv(tmp_path / "summary_by_config.csv")  # one row per batch size
    assert [float(r["batch/k_mean"]) for r in by_m] == pytest.approx(s["k_mean"])


def unit_entries(shift: float) -> list[dict]:
    """analysis.units of four units in two stages; every statistic moves with ``shift``."""

    def stats(base: float) -> dict:
        return {
            "frac_one": base,
            "frac_one_std": 0.01,
            "frac_gt_one": base / 2,
            "frac_gt_one_std": 0.02,
            "sigma_max": 1 + base,
            "sigma_max_std": 0.03,
        }

    return [
        {"index": k, "stage": k // 2, "sum": stats(0.5 + shift + 0.1 * k), "unit": stats(shift)}
        for k in range(4)
    ]


def projection_entry(shift: float) -> dict:
    return {
        "map": "unit",
        "units": [1, 3],
        "adversarial": {
            "expanding": [0.3 + shift, 0.6 + shift],
            "neutral": [0.5, 0.3],
            "contracting": [0.2 - shift, 0.1 - shift],
            "outside": [0.0, 0.0],
        },
        "random": {
            "expanding": [0.1, 0.1],
            "neutral": [0.8, 0.8],
            "contracting": [0.1, 0.1],
            "outside": [0.0, 0.0],
        },
        "skipped": [],
    }


def test_unit_grid_and_projection_figures_drawn_with_their_data(tmp_path):
    """A resnet-dyn-analyze sweep over intervention alpha x beta x seed."""
    grid = [(a, b, s) for a in (0.5, 1.0) for b in (0.5, 1.0) for s in (0, 1)]
    shift = {(a, b, s): 0.1 * a * b + 0.05 * s for a, b, s in grid}
    for i, (a, b, s) in enumerate(grid):
        overrides = [
            f"analysis.intervention.skip_scale={a}",
            f"analysis.intervention.weight_scale={b}",
            f"seed={s}",
        ]
        analysis = {
            "intervention": {"skip_scale": a, "weight_scale": b, "units": None},
            "units": unit_entries(shift[a, b, s]),
            "perturbation": {"final_ratio": 1 + a + s, "projection": projection_entry(s / 10)},
            "identity": {"scaled_mean": a * b, "abs_mean": 1.0},
        }
        make_job(tmp_path, str(i), overrides, {"analysis": analysis})
    sweep = load_sweep(tmp_path)
    label = "analysis.intervention.skip_scale=1.0, analysis.intervention.weight_scale=0.5"
    # per unit: mean and std over the two seeds
    d = unit_statistics_by_configuration(sweep)[label][("sum", "frac_one")]
    seeds = [0.5 + shift[1.0, 0.5, s] + 0.1 * np.arange(4) for s in (0, 1)]
    assert d["index"] == [0, 1, 2, 3] and d["stage"] == [0, 0, 1, 1] and d["over"] == "seeds"
    assert d["mean"] == pytest.approx(np.mean(seeds, axis=0))
    assert d["spread"] == pytest.approx(np.std(seeds, axis=0, ddof=1))
    # the grid: against alpha, one line per beta
    (g,) = alpha_beta_grid(sweep)
    assert g["x"] == "alpha" and set(g["lines"]) == {
        *(
            f"spectrum/{m}/{s}"
            for m in ("sum", "unit")
            for s in ("frac_one", "frac_gt_one", "sigma_max")
        ),
        "perturbation/final_ratio",
        "identity/scaled_mean",
    }
    ratio = g["lines"]["perturbation/final_ratio"]
    assert list(ratio) == [0.5, 1.0] and ratio[0.5]["x"] == [0.5, 1.0]
    assert ratio[0.5]["mean"] == pytest.approx([1.5 + a for a in (0.5, 1.0)])
    assert ratio[0.5]["std"] == pytest.approx([np.std([0, 1], ddof=1)] * 2)
    frac = g["lines"]["spectrum/unit/frac_one"][1.0]
    assert frac["mean"] == pytest.approx(
        [np.mean([shift[a, 1.0, s] for s in (0, 1)]) for a in (0.5, 1.0)]
    )
    # the projection: shares per unit, mean and std over the seeds
    p = projection_stats(sweep)[label]
    assert p["units"] == [1, 3] and p["n"] == 2 and p["map"] == "unit"
    mean, std = p["adversarial"]["expanding"]
    assert mean == pytest.approx([0.35, 0.65]) and std == pytest.approx(
        [np.std([0, 0.1], ddof=1)] * 2
    )
    assert p["random"]["neutral"][0] == pytest.approx([0.8, 0.8])
    figures = [*unit_figures(sweep), *alpha_beta_figures(sweep), *projection_figures(sweep)]
    files = ["report_units0.png", "report_alphabeta0.png", "report_projection0.png"]
    assert [f.file for f in figures] == files
    for name in files:
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    assert "mean over its seeds; band: the sample std over its seeds" in figures[0].caption
    assert "against alpha, one line per beta" in figures[1].caption
    assert "adversarial (left) vs random (right)" in figures[2].caption
    columns, rows = table(sweep, {})
    assert rows[0]["projection/adversarial_expanding"] == pytest.approx(0.45)
    assert rows[0]["projection/random_expanding"] == pytest.approx(0.1)


def test_unit_grid_and_projection_figures_absent_without_their_data(tmp_path):
    bare, units = tmp_path / "bare", tmp_path / "units"
    bare.mkdir()
    units.mkdir()
    (bare / "summary_by_config.csv").write_text("stale\n")  # from a sweep with seeds
    for i, depth in enumerate((8, 14)):
        make_job(bare, str(i), [f"model.depth={depth}"], {"metrics": {"test/acc": 0.9}})
        # one seed, one alpha (and beta) for all, no projection: only the per-unit figure
        overrides = [f"model.depth={depth}", "model.skip_scale=1.0"]
        make_job(units, str(i), overrides, {"analysis": {"units": unit_entries(0.1 * i)}})
    build_report(bare)
    assert not list(bare.glob("report_units*.png")) and not list(bare.glob("report_alphabeta*"))
    assert not list(bare.glob("report_projection*.png"))
    assert not (bare / "summary_by_config.csv").exists()  # no seeds, no stale table
    assert "summary_by_config" not in (bare / "report.html").read_text()
    sweep = load_sweep(units)
    assert alpha_beta_grid(sweep) == [] and projection_stats(sweep) == {}
    d = unit_statistics_by_configuration(sweep)["model.depth=14"][("unit", "sigma_max")]
    assert d["over"] == "images" and d["spread"] == [0.03] * 4  # one seed: std over images
    build_report(units)
    assert {p.name for p in units.glob("report_*.png")} == {"report_axis0.png", "report_units0.png"}
    assert "the std over the probe images (one seed)" in (units / "report.html").read_text()


def test_noise_figure_leaves_out_an_untrained_model(tmp_path, drawn):
    noise = {
        "sigmas": [0.0, 0.5],
        "relative": [[0.0] * 5, [0.1] * 5],
        "distance": [[0.0] * 5, [0.2] * 5],
        "accuracy": [1.0, 0.8],
    }
    models = (("DenseResNet", 0.93), ("MLP", 0.12), ("DenseResNet", UNTRAINED_ACC))
    for i, (model, acc) in enumerate(models):
        overrides = [f"model._target_=resnet_dyn.models.{model}", f"model.depth={5 + i}"]
        make_job(
            tmp_path,
            str(i),
            overrides,
            {"metrics": {"test/acc": acc}, "analysis": {"noise": noise}},
        )
    lines, dropped = noise_data(load_sweep(tmp_path))
    assert [j.name for j in dropped] == ["1"]
    assert len(lines) == 2 and not any("MLP" in name for name in lines)  # 0.5 itself is kept
    build_report(tmp_path)
    assert (tmp_path / "report_noise.png").read_bytes().startswith(PNG_MAGIC)
    for ax in drawn["report_noise.png"].axes:  # the two trained models' lines, no more
        assert len(plotted(ax)) == 2
    page = (tmp_path / "report.html").read_text()
    assert (
        "Not drawn: models that did not train (test/acc below 0.5): MLP "
        "#1 model._target_=resnet_dyn.models.MLP, model.depth=6 (test/acc 0.120)."
    ) in page


def test_alpha_beta_is_the_analysed_networks_own(tmp_path):
    # A resnet-dyn-analyze job's config holds analyze.yaml's model group (alpha = beta = 1),
    # its summary the checkpoint's settings (0.5, 0.5): those are what it analysed. A post-hoc
    # intervention sets alpha and multiplies beta; a training job's config is its model.
    trained = {"model": {"name": "cifar_resnet", "skip_scale": 0.5, "weight_scale": 0.5}}
    cases = {
        "0": (["model.skip_scale=1.0"], {}, (0.5, 0.5)),
        "1": ([], {"weight_scale": 2.0}, (0.5, 1.0)),
        "2": ([], {"skip_scale": 1.0}, (1.0, 0.5)),
    }
    for name, (overrides, iv, _) in cases.items():
        make_job(
            tmp_path / "analyze", name, overrides, {**trained, "analysis": {"intervention": iv}}
        )
    make_job(tmp_path / "train", "0", ["model.skip_scale=0.7", "model.weight_scale=0.3"], {})
    jobs = {j.name: j for j in load_sweep(tmp_path / "analyze").jobs}
    assert {name: alpha_beta(jobs[name]) for name in cases} == {
        name: expected for name, (_, _, expected) in cases.items()
    }
    (job,) = load_sweep(tmp_path / "train").jobs
    assert alpha_beta(job) == (0.7, 0.3)
