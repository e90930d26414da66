"""Performance benchmarks: each one times ours against a fixed baseline in the same process.

    python bench/run.py                       # all benchmarks
    python bench/run.py jacobian_stage3 data  # a subset, by name
    python bench/run.py --reps 5 train_overhead

Each benchmark prints one ``RESULT <name> ratio=<baseline/ours> ours_s=... baseline_s=...``
line (medians over repetitions) with its accuracy figures; a ``TARGET`` line per target
follows at the end, PASS or FAIL. See bench/README.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2


@dataclass
class Target:
    """One checked target: its description and whether it holds (None: not measured)."""

    name: str
    text: str
    passed: bool | None


@dataclass
class Bench:
    """Shared state of a run: repetitions and the targets collected so far."""

    reps: int
    targets: list[Target] = field(default_factory=list)

    def check(self, name: str, text: str, passed: bool | None) -> None:
        self.targets.append(Target(name, text, passed))


def timed(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    """Median wall seconds of ``reps`` calls of ``fn`` and the last call's result."""
    times, out = [], None
    for _ in range(reps):
        # Free the previous result first, as a caller going from unit to unit does: a
        # 1 GiB Jacobian still alive makes the next one's fresh pages 3x as slow to fault.
        out = None
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def result(name: str, ours: float, base: float, **extra: object) -> None:
    """Print the one RESULT line of a benchmark."""
    fields = " ".join(f"{k}={_fmt(v)}" for k, v in extra.items())
    print(
        f"RESULT {name} ratio={base / ours:.3g} ours_s={ours:.4g} baseline_s={base:.4g} {fields}",
        flush=True,
    )


def _fmt(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def machine() -> str:
    """nproc, CPU model and library versions, for the header of the output."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import lightning

    return (
        f"machine: nproc={os.cpu_count()} cpu='{cpu}' torch={torch.__version__} "
        f"lightning={lightning.__version__} threads={torch.get_num_threads()} "
        f"python={platform.python_version()} date={time.strftime('%Y-%m-%d')}"
    )


# ----------------------------------------------------------------------------------- data


def bench_data(b: Bench) -> None:
    """One epoch of 50,000 CIFAR-shaped uint8 images, pad-4 crop + flip + normalise, batch 128.

    Ours: ``ResidentLoader`` on the CPU (the uint8 tensor is handed over before the clock
    starts; each epoch draws its order and augmentation, gathers, crops, flips and normalises
    batch by batch). Baseline: ``TensorImages`` with per-sample torchvision v2 transforms in a
    ``DataLoader(num_workers=2)`` (worker start-up included, as in a real epoch). The two are
    timed alternately; the accuracy figures compare the pixel statistics of 50 batches of each
    (mean, std, share of padded pixels), which should agree up to sampling noise.
    """
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    from resnet_dyn.data.base import TensorImages
    from resnet_dyn.data.resident import ResidentLoader

    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (50_000,), generator=g)
    tf = v2.Compose(
        [
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    loader = DataLoader(TensorImages(x, y, tf), batch_size=128, shuffle=True, num_workers=2)
    ours_loader = ResidentLoader(x, y, batch_size=128, mean=mean, std=std, shuffle=True,
                                 padding=4, flip=True, seed=0, device="cpu")  # fmt: skip

    def epoch(batches: object) -> int:
        return sum(xb.shape[0] for xb, _ in batches)  # type: ignore[attr-defined]

    ours_t, base_t, n_ours, n_base = [], [], 0, 0
    for _ in range(b.reps):
        t0 = time.perf_counter()
        n_ours = epoch(ours_loader)
        ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        n_base = epoch(loader)
        base_t.append(time.perf_counter() - t0)
    ours, base = statistics.median(ours_t), statistics.median(base_t)

    def stats(batches: object) -> tuple[float, float, float]:
        pad = (-torch.tensor(mean) / torch.tensor(std)).view(1, 3, 1, 1)
        xs = []
        for i, (xb, _) in enumerate(batches):  # type: ignore[call-overload]
            if i == 50:
                break
            xs.append(xb)
        xs = torch.cat(xs).double()
        padded = (xs - pad).abs().lt(1e-6).double().mean()  # random pixels are 0 with p=1/256
        return float(xs.mean()), float(xs.std()), float(padded)

    (m_o, s_o, p_o), (m_b, s_b, p_b) = stats(ours_loader), stats(loader)
    ratio = base / ours
    result("data", ours, base, images=n_ours, baseline_images=n_base,
           mean_ours=m_o, mean_base=m_b, std_ours=s_o, std_base=s_b,
           padded_ours=p_o, padded_base=p_b)  # fmt: skip
    b.check("data", f"ratio {ratio:.3g} >= 5", ratio >= 5)


# ------------------------------------------------------------------------- train_overhead


def bare_trainer(root: str, max_steps: int, **kwargs: object) -> object:
    """A ``lightning.Trainer`` that only trains: no logger, checkpoints, progress bar, model
    summary or validation; files (if any) under ``root``; ``kwargs`` add or override."""
    import lightning as L

    return L.Trainer(
        **{
            "default_root_dir": root,
            "max_steps": max_steps,
            "accelerator": "cpu",
            "devices": 1,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "limit_val_batches": 0,
        }
        | kwargs
    )


def bench_train_overhead(b: Bench, steps: int = 30, batch: int = 128) -> None:
    """ResNet-20 steps through ClassificationModule + Lightning vs a plain PyTorch loop."""
    import warnings

    import torch.nn.functional as F
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, TensorDataset

    from resnet_dyn.models import CifarResNet
    from resnet_dyn.training.module import ClassificationModule, lr_factor

    optim = OmegaConf.load(ROOT / "conf" / "optim" / "sgd.yaml")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(steps * batch, 3, 32, 32, generator=g),
        torch.randint(0, 10, (steps * batch,), generator=g),
    )
    loader = DataLoader(data, batch_size=batch, shuffle=False)
    losses: dict[str, float] = {}

    root = tempfile.mkdtemp(prefix="bench_train_")  # Lightning writes nothing into the repo

    def ours() -> None:
        torch.manual_seed(0)
        module = ClassificationModule(CifarResNet(depth=20), optim, batch, 10)
        trainer = bare_trainer(root, steps)
        trainer.fit(module, train_dataloaders=loader)
        losses["ours"] = float(trainer.callback_metrics["train/loss"])

    def plain() -> None:
        torch.manual_seed(0)
        net = CifarResNet(depth=20)
        net.train()
        opt = instantiate(optim.optimizer)(
            net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay
        )
        schedule = dict(optim.schedule)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, schedule))
        loss = torch.zeros(())
        for xb, yb in loader:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            opt.step()
            sched.step()
        losses["plain"] = float(loss)

    for name in ("lightning.pytorch", "lightning.fabric"):  # no GPU/TPU banners per fit
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    plain()  # warm-up: thread pools, allocator
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(b.reps):  # interleaved, so that drift hits both alike
        for key, fn in (("plain", plain), ("ours", ours)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    shutil.rmtree(root, ignore_errors=True)
    o, p = statistics.median(times["ours"]), statistics.median(times["plain"])
    result(
        "train_overhead",
        o,
        p,
        steps=steps,
        batch=batch,
        best_ratio=min(times["plain"]) / min(times["ours"]),
        loss_ours=losses["ours"],
        loss_plain=losses["plain"],
    )
    b.check("train_overhead", f"ratio {p / o:.3g} >= 0.91", p / o >= 0.91)


# ------------------------------------------------------------------------------ jacobians


def analysis_net(depth: int = 20, seed: int = 0) -> torch.nn.Module:
    """A CIFAR ResNet in eval mode whose BatchNorm running statistics were warmed up."""
    from resnet_dyn.models import CifarResNet

    torch.manual_seed(seed)
    net = CifarResNet(depth=depth)
    net.train()
    with torch.no_grad():
        for _ in range(10):
            net(torch.randn(64, 3, 32, 32) * 1.5 + 0.2)
    return net.eval()


def bench_jacobian(b: Bench, name: str, unit: int, target: float) -> None:
    """Full Jacobian of one unit's sum map: ``jacobian(f, "auto")`` vs ``torch.func.jacfwd``."""
    from resnet_dyn.dynamics import jacobian, unit_map, unit_states

    net = analysis_net()
    x = unit_states(net, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    f = unit_map(net, unit, x[unit][0], "sum")

    def baseline() -> torch.Tensor:
        with torch.no_grad():
            return torch.func.jacfwd(f)(f.x).reshape(f.dim_out, f.dim_in)

    jacobian(f, "auto")  # warm-up
    ours, jac = timed(lambda: jacobian(f, "auto"), b.reps)
    base, J = timed(baseline, b.reps)
    err = (jac.matrix - J).abs().max().item()
    result(
        name,
        ours,
        base,
        max_abs_err=f"{err:.2e}",
        method=jac.method,
        probes=jac.probes,
        shape=f"{tuple(f.in_shape)}",
    )
    b.check(name, f"ratio {base / ours:.3g} >= {target:g}", base / ours >= target)
    b.check(name, f"max_abs_err {err:.2e} <= 1e-5", err <= 1e-5)


def bench_jacobian_stage1(b: Bench) -> None:
    bench_jacobian(b, "jacobian_stage1", 1, 20.0)


def bench_jacobian_stage3(b: Bench) -> None:
    bench_jacobian(b, "jacobian_stage3", 7, 2.0)


# ------------------------------------------------------------------------------- spectrum


def spectrum_map() -> object:
    """The sum map of unit 7 (64x8x8, n = 4096) of a ResNet-20 whose first BN of that unit
    is shifted so that most of its ReLUs are off: J = I + (low rank), clustered at 1."""
    from resnet_dyn.dynamics import unit_map, unit_states

    net = analysis_net()
    with torch.no_grad():
        net.units[7].branch[1].bias -= 1.0
    x = unit_states(net, torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    return unit_map(net, 7, x[7][0], "sum")


def bench_spectrum(b: Bench) -> None:
    """Top/bottom-16 singular values by ``extreme_singular_values`` (defaults: block Lanczos
    on the float32 Gram operator for the top, shift-invert through a nested-dissection LU
    of the colored J for the bottom, J's formation included) vs dense svdvals."""
    from resnet_dyn.dynamics import extreme_singular_values, jacobian

    f = spectrum_map()
    J = jacobian(f, "auto").matrix  # the fastest J (coloring); not part of the baseline time
    base, sigma = timed(lambda: torch.linalg.svdvals(J), b.reps)
    sigma = sigma.to(torch.float64)
    for end, name, target in (
        ("largest", "spectrum_top", 10.0),
        ("smallest", "spectrum_bottom", 2.0),
    ):
        extreme_singular_values(f, 16, end)  # warm-up, as for the Jacobians
        # A tenth of a second is at the mercy of this machine's noise: median of >= 5.
        ours, ext = timed(lambda end=end: extreme_singular_values(f, 16, end)[end], max(b.reps, 5))
        ref = sigma[:16] if end == "largest" else sigma.flip(0)[:16]
        rel = ((ext.values - ref).abs() / ref.abs().clamp_min(1e-12)).max().item()
        result(
            name,
            ours,
            base,
            rel_err=f"{rel:.2e}",
            matvecs=ext.matvecs,
            converged=ext.converged,
            method=ext.method,
            sigma_end=f"{ref[0].item():.6g}",
            baseline="svdvals_of_J_by_coloring",
        )
        b.check(name, f"ratio {base / ours:.3g} >= {target:g}", base / ours >= target)
        b.check(name, f"rel_err {rel:.2e} <= 1e-4", rel <= 1e-4)


# --------------------------------------------------------------------------- exact_counts


def trained_resnet(
    depth: int = 20, steps: int = 150, seed: int = 0
) -> tuple[torch.nn.Module, torch.Tensor]:
    """A CIFAR ResNet trained for ``steps`` SGD steps on scikit-learn's digits, upsampled to
    CIFAR's 3x32x32, and a held-out probe image: real-shaped units with the continuous
    mass near sigma = 1 of a trained network (a random one has far less of it)."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from resnet_dyn.models import CifarResNet

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16
    x = F.interpolate(x, size=32, mode="bilinear").repeat(1, 3, 1, 1)
    x, y = (x - x.mean()) / x.std(), torch.tensor(digits.target)
    torch.manual_seed(seed)
    net = CifarResNet(depth=depth)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x) - 1, (64,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval(), x[-1:]


def bench_exact_counts(b: Bench, unit: int = 4) -> None:
    """frac_one, frac_gt_one, frac_zero of both maps of unit 4 (32x16x16, n = 8192) of a
    trained ResNet-20: counted (``map_spectrum(method="count")``: J's local kernels by
    coloring, G = J J^T as local kernels, three nested-dissection LDL^T inertia counts) vs
    all singular values from the dense J in float64 (``J @ J.T`` and ``eigvalsh``; forming J
    is not in the baseline time; ``svdvals`` of a float64 J this size takes ~2 minutes
    here); SLQ (16 probes x 80 steps) with its error bar against the same truth."""
    from resnet_dyn.dynamics import map_spectrum, unit_map, unit_states
    from resnet_dyn.dynamics.jacobian import local_jacobian
    from resnet_dyn.dynamics.stats import spectrum_stats

    t0 = time.perf_counter()
    net, image = trained_resnet(20)
    print(f"# trained ResNet-20 on digits in {time.perf_counter() - t0:.1f} s", flush=True)
    x = unit_states(net, image)[unit][0]
    keys = ("frac_one", "frac_gt_one", "frac_zero")
    total_ours = total_base = 0.0
    for kind in ("sum", "unit"):
        f = unit_map(net, unit, x, kind)
        J = local_jacobian(f).dense().double()
        base, lam = timed(lambda J=J: torch.linalg.eigvalsh(J @ J.T), 1)
        sigma = lam.clamp_min(0).sqrt()
        del J
        exact = spectrum_stats(sigma, 1e-3)
        ours, counted = timed(lambda f=f: map_spectrum(f, method="count").stats, 1)
        t_slq, slq = timed(lambda f=f: map_spectrum(f, method="slq").stats, 1)
        total_ours, total_base = total_ours + ours, total_base + base
        agree = all(abs(counted[k] - exact[k]) < 0.5 / sigma.numel() for k in keys)
        covered = all(abs(slq[k] - exact[k]) <= slq[f"{k}_err"] for k in keys)
        near = int(((sigma - 1).abs() < 0.05).sum())
        result(
            f"exact_counts_{kind}",
            ours,
            base,
            n=sigma.numel(),
            agree=agree,
            **{k: f"{counted[k]:.4f}/{exact[k]:.4f}" for k in keys},
            slq_s=t_slq,
            **{f"slq_{k}": f"{slq[k]:.4f}+-{slq[k + '_err']:.4f}" for k in keys},
            slq_covers=covered,
            sigma_within_0_05_of_1=near,
            baseline="float64_eigvalsh_of_dense_J_J^T",
        )
        b.check(f"exact_counts_{kind}", "counted fractions == dense SVD fractions", agree)
        b.check(f"exact_counts_{kind}", "SLQ error bar covers the exact fractions", covered)
    ratio = total_base / total_ours
    b.check("exact_counts", f"ratio {ratio:.3g} >= 1 (both maps)", ratio >= 1)


def bench_exact_counts_resnet56(b: Bench, units: tuple[int, ...] = (1, 10)) -> None:
    """Units 1 (16x32x32, n = 16,384) and 10 (32x16x16, n = 8192) of a ResNet-56 trained on
    digits, both maps, as ``analyze_units`` (``method="auto"``) reports them, against all
    singular values from a dense float64 eigvalsh of J J^T (several minutes: run by name)."""
    from resnet_dyn.dynamics import analyze_units, unit_map, unit_states
    from resnet_dyn.dynamics.jacobian import local_jacobian
    from resnet_dyn.dynamics.stats import spectrum_stats

    net, image = trained_resnet(56)
    states = unit_states(net, image)
    keys = ("frac_one", "frac_gt_one", "frac_zero")
    for k in units:
        ours, res = timed(lambda k=k: analyze_units(net, image, [k]), 1)
        for kind in ("sum", "unit"):
            J = local_jacobian(unit_map(net, k, states[k][0], kind)).dense().double()
            t0 = time.perf_counter()
            G = J @ J.T
            del J
            sigma = torch.linalg.eigvalsh(G).clamp_min(0).sqrt()
            base = time.perf_counter() - t0
            del G
            exact, got = spectrum_stats(sigma, 1e-3), res[0][kind]
            agree = all(abs(got[key] - exact[key]) < 0.5 / sigma.numel() for key in keys)
            result(f"exact_counts_resnet56_unit{k}_{kind}", ours, base, n=sigma.numel(),
                   method=got["method"], route=got.get("count_route"),
                   fractions=got["fractions"], agree=agree,
                   **{key: f"{got[key]:.4f}/{exact[key]:.4f}" for key in keys},
                   baseline="float64_eigvalsh_of_dense_J_J^T")  # fmt: skip
            b.check(f"exact_counts_resnet56_unit{k}_{kind}", "fractions == dense", agree)


# ---------------------------------------------------------------------- resnet56_all_units


def dense_jacobian(f: Callable[[torch.Tensor], torch.Tensor], chunk: int = 512) -> torch.Tensor:
    """J of a map (``f.x``, ``f.dim_in``, ``f.dim_out``) from ``torch.func.jvp`` with every
    basis vector, ``chunk`` at a time: the oracle's J, independent of our coloring."""
    x = f.x  # type: ignore[attr-defined]
    cols = []
    with torch.no_grad():
        for i in range(0, x.numel(), chunk):
            basis = torch.zeros(min(chunk, x.numel() - i), x.numel(), dtype=x.dtype)
            basis[:, i : i + basis.shape[0]].fill_diagonal_(1)
            jvp = torch.func.vmap(lambda v: torch.func.jvp(f, (x,), (v.view_as(x),))[1])
            cols.append(jvp(basis).reshape(basis.shape[0], -1))
    return torch.cat(cols).T


# The maps checked against the dense oracle: a stage opener (unit 9, 32x16x16 <- 16x32x32;
# its sum map has 8,192 singular values), a counted unit of stage 1 (both maps) and a unit
# of stage 2, computed in full (4,096).
ORACLE_SAMPLE = ((9, "sum"), (9, "unit"), (10, "sum"), (10, "unit"), (19, "unit"))


def bench_resnet56_all_units(
    b: Bench,
    budget: float = 60.0,
    sample: tuple[tuple[int, str], ...] = ORACLE_SAMPLE,
    workers: int = 2,
) -> None:
    """All 27 units of a ResNet-56 (random init, BN stats warmed, eval), sum and unit maps,
    ``method="auto"``, one image: every map's fractions must be exact (a full spectrum or
    certified counts). Against the truth in the same run: the maps of ``sample`` (unit,
    map), one of every kind (a stage-opening unit's maps, sum and unit maps counted, sum
    and unit maps computed in full), must have counts equal to those of a dense float64
    oracle (``eigvalsh`` of J J^T from ``jacfwd`` of the float64 map). Prints seconds per
    stage and per map kind, each map's route and certification, and the GFLOP of one
    count per route at each stage's first identity-shortcut unit. ratio: the oracle's
    seconds over ours on the sampled maps. ``workers``: maps side by side (two cores)."""
    from collections import Counter

    from resnet_dyn.dynamics import analyze_units, unit_map, unit_states
    from resnet_dyn.dynamics.inertia import _gram_reach, _one_thread, count_flops
    from resnet_dyn.dynamics.reduced import low_rank_split, reduced_flops
    from resnet_dyn.dynamics.stats import spectrum_stats
    from resnet_dyn.dynamics.window import local_window

    net = analysis_net(depth=56)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    stamps: list[float] = []

    def progress(done: int, total: int) -> None:
        stamps.append(time.perf_counter())
        print(f"# {done}/{total} units, {stamps[-1] - t0:.1f} s", flush=True)

    t0 = time.perf_counter()
    res = analyze_units(net, image, "all", maps=("sum", "unit"), workers=workers,
                        progress=progress)  # fmt: skip
    ours = time.perf_counter() - t0
    # Each map's own seconds (with two workers, two maps run at once: they overlap).
    per_map = {(r["index"], m): sum(r["raw"][m]["seconds"]) for r in res for m in ("sum", "unit")}
    per_stage: dict[int, float] = {}
    for r, start, stop in zip(res, [t0, *stamps[:-1]], stamps, strict=True):
        per_stage[r["stage"]] = per_stage.get(r["stage"], 0.0) + stop - start
    print("seconds per stage: " + " ".join(f"stage{s}={t:.1f}" for s, t in per_stage.items()),
          flush=True)  # fmt: skip
    # Map kinds: stage openers (units whose shortcut is not the identity), counted sum and
    # unit maps, and maps whose spectrum was computed in full.
    openers = {r["index"] for r in res if r["dim_in"] != r["dim_out"]}

    def kind_of(r: dict, m: str) -> str:
        if r["index"] in openers:
            return f"opener_{m}"
        return f"{m}_{'counted' if r[m]['method'].startswith('count') else 'full'}"

    kinds: dict[str, float] = {}
    for r in res:
        for m in ("sum", "unit"):
            kinds[kind_of(r, m)] = kinds.get(kind_of(r, m), 0.0) + per_map[(r["index"], m)]
    print("seconds per map kind (each map's own): "
          + " ".join(f"{k}={t:.1f}" for k, t in sorted(kinds.items())), flush=True)  # fmt: skip
    for r in res:
        cells = [f"{m}: {r[m]['fractions']} {r[m].get('count_route', r[m]['method'])} "
                 f"{per_map[(r['index'], m)]:.1f}s" for m in ("sum", "unit")]  # fmt: skip
        print(f"unit {r['index']:2d} " + " | ".join(cells), flush=True)
    states = unit_states(net, image)
    for s in range(3):
        k = next(k for k in net.stage_units(s) if k not in openers)
        f = unit_map(net, k, states[k][0], "sum")
        split = low_rank_split(f)
        gram = count_flops(f.out_shape, _gram_reach(local_window(f))) / 1e9
        print(f"GFLOP per shift, stage {s} (unit {k} sum map, f = {split.rank / f.dim_in:.3f}): "
              f"gram {gram:.1f}, reduced {reduced_flops(split) / 1e9:.1f}", flush=True)  # fmt: skip
    keys = ("frac_one", "frac_gt_one", "frac_zero")
    base = ours_sample = 0.0
    wrong: list[str] = []
    for k, m in sample:
        f = unit_map(net, k, states[k][0], m).to(torch.float64)
        t1 = time.perf_counter()
        J = dense_jacobian(f)
        G = J @ J.T if f.dim_out <= f.dim_in else J.T @ J
        del J
        with _one_thread():  # as ours: LAPACK on two shared cores is far slower
            sigma = torch.linalg.eigvalsh(G).clamp_min(0).sqrt()
        del G
        base += time.perf_counter() - t1
        ours_sample += per_map[(k, m)]
        exact, got = spectrum_stats(sigma, 1e-3), res[k][m]
        half = 0.5 / sigma.numel()
        if got["fractions"] == "exact":
            agree = all(abs(got[key] - exact[key]) < half for key in keys)
        else:  # flagged: its interval must hold the oracle's fraction
            agree = all(got[f"{key}_lo"] - half < exact[key] < got[f"{key}_hi"] + half
                        for key in keys)  # fmt: skip
        print(f"oracle unit {k} {m} ({kind_of(res[k], m)}, n = {sigma.numel()}, "
              f"{got['fractions']}): "
              + " ".join(f"{key} {got[key]:.6f}/{exact[key]:.6f}" for key in keys)
              + f" {'agrees' if agree else 'DIFFERENT'}", flush=True)  # fmt: skip
        if not agree:
            wrong.append(f"{k}/{m}")
    methods = Counter(r[m]["method"] for r in res for m in ("sum", "unit"))
    routes = Counter(r[m].get("count_route", "none") for r in res for m in ("sum", "unit"))
    status = Counter(r[m]["fractions"] for r in res for m in ("sum", "unit"))
    unconverged = [
        f"{r['index']}/{m}" for r in res for m in ("sum", "unit") if not r[m].get("converged", True)
    ]
    print(f"not converged (sigma_max or sigma_min): {unconverged}", flush=True)
    result(
        "resnet56_all_units",
        ours_sample,
        base,
        total_s=ours,
        units=len(res),
        fractions="|".join(f"{k}x{v}" for k, v in sorted(status.items())),
        methods="|".join(f"{k}x{v}" for k, v in sorted(methods.items())),
        count_routes="|".join(f"{k}x{v}" for k, v in sorted(routes.items())),
        oracle_maps=len(sample),
        baseline="dense_float64_eigvalsh_of_the_sampled_maps",
    )
    exact = status == Counter({"exact": 2 * len(res)})
    flagged = [f"{r['index']}/{m}" for r in res for m in ("sum", "unit")
               if r[m]["fractions"] != "exact"]  # fmt: skip
    b.check("resnet56_all_units", f"fractions: exact (certified) on every map (flagged: {flagged})",
            exact)  # fmt: skip
    b.check("resnet56_all_units", f"on {len(sample)} maps of every kind, certified fractions equal "
            f"to the dense oracle's, flagged ones an interval holding them (not: {wrong})",
            not wrong)  # fmt: skip
    b.check("resnet56_all_units", f"{ours:.1f} s <= {budget:g} s", ours <= budget)


def bench_gram_route_units_2_4(b: Bench, units: tuple[int, ...] = (2, 4)) -> None:
    """The sum maps of units 2 and 4 (16x32x32, n = 16,384) of the ``resnet56_all_units``
    network forced onto the gram route, where uncertified counts lost up to 20 of 16,384,
    and on the default route, against a dense float64 oracle (``eigvalsh`` of J J^T, J from
    ``jacfwd`` of the float64 map; minutes each: run by name). Target: every count equal to
    the oracle's, or flagged uncertain with an interval that holds it."""
    from resnet_dyn.dynamics import unit_map, unit_states
    from resnet_dyn.dynamics.inertia import _one_thread, certified_counts

    net = analysis_net(depth=56)
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    states = unit_states(net, image)
    thresholds = [1e-3, 1 - 1e-3, 1 + 1e-3]
    for k in units:
        f = unit_map(net, k, states[k][0], "sum")
        g = f.to(torch.float64)
        t0 = time.perf_counter()
        J = dense_jacobian(g)
        G = J @ J.T
        del J
        with _one_thread():
            lam = torch.linalg.eigvalsh(G)
        del G
        base = time.perf_counter() - t0
        truth = [int((lam < c * c).sum()) for c in thresholds]
        gap = [f"{float((lam - c * c).abs().min()):.1e}" for c in thresholds]
        for route in ("gram", "auto"):
            ours, res = timed(
                lambda f=f, route=route: certified_counts(f, thresholds, route=route), 1
            )
            held = all(lo <= t <= hi for lo, t, hi in zip(res.lo, truth, res.hi, strict=True))
            result(f"gram_route_unit{k}_{route}", ours, base, lo=res.lo, hi=res.hi,
                   oracle=truth, nearest_sigma2_minus_c2=gap, route=res.route.replace(" ", "_"),
                   baseline="dense_float64_eigvalsh_of_J_J^T")  # fmt: skip
            b.check(f"gram_route_unit{k}_{route}",
                    "counts equal to the oracle's or flagged with an interval holding them",
                    held)  # fmt: skip


def bench_slq_coverage_make_run(b: Bench, images: int = 4) -> None:
    """SLQ's error bars on the model ``make run`` trains (``resnet-dyn`` with its defaults,
    run here as a subprocess into a temporary folder): every unit, sum and unit maps, at
    ``images`` test images, SLQ (16 probes x 80 steps) against the exact fractions of the
    dense SVD. Reports how many (map, image, fraction) bars cover the truth, the mean
    half-width of the bars, and how many have more than 0.05 of unresolved weight."""
    import numpy as np

    from resnet_dyn.data import DigitsDataModule
    from resnet_dyn.dynamics import map_spectrum, unit_map, unit_states
    from resnet_dyn.models.checkpoints import load_model

    keys = ("frac_one", "frac_gt_one", "frac_zero")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "resnet_dyn", "logger=none", f"hydra.run.dir={tmp}",
             "trainer.enable_progress_bar=false"],
            check=True, capture_output=True, cwd=tmp,
        )  # fmt: skip
        print(f"# make run's model trained in {time.perf_counter() - t0:.1f} s", flush=True)
        net, _ = load_model(next(Path(tmp).glob("checkpoints/best*.ckpt")))
    dm = DigitsDataModule()
    dm.setup("test")
    x, _ = dm.probe_batch(images)
    states = unit_states(net, x)
    covered = total = unresolved = 0
    widths: list[float] = []
    t_slq = t_exact = 0.0
    for k in range(len(net.units)):
        for kind in ("sum", "unit"):
            for i in range(images):
                f = unit_map(net, k, states[k][i], kind)
                dt, est = timed(lambda f=f: map_spectrum(f, method="slq").stats, 1)
                de, exact = timed(lambda f=f: map_spectrum(f, method="dense").stats, 1)
                t_slq, t_exact = t_slq + dt, t_exact + de
                for key in keys:
                    total += 1
                    covered += abs(est[key] - exact[key]) <= est[f"{key}_err"]
                    unresolved += est[f"{key}_unresolved"] > 0.05
                    widths.append(est[f"{key}_err"])
    result(
        "slq_coverage_make_run",
        t_slq,
        t_exact,
        covered=f"{covered}/{total}",
        mean_half_width=f"{np.mean(widths):.4f}",
        unresolved_over_0_05=unresolved,
        baseline="dense_svd_of_every_map",
    )
    b.check("slq_coverage_make_run", f"SLQ bars cover the exact fractions ({covered}/{total})",
            covered == total)  # fmt: skip


# -------------------------------------------------------------------------- sweep_overhead


def bench_sweep_overhead(b: Bench, jobs: int = 20, target: float = 3.0) -> None:
    """Per-job wall time of a multirun of ``jobs`` trivial jobs (basic launcher) against the
    wall time of the same job run on its own (process start, imports, config, one batch)."""
    common = [
        "debug=fast_dev_run",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "model.depth=8",
        "callbacks=default",
    ]
    env = dict(os.environ, WANDB_MODE="disabled", PYTHONWARNINGS="ignore")

    def run(args: list[str]) -> float:
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "resnet_dyn", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout)[-2000:]
            raise RuntimeError(f"resnet_dyn exited with {proc.returncode}:\n{tail}")
        return wall

    with tempfile.TemporaryDirectory() as tmp:
        single = run([*common, f"hydra.run.dir={tmp}/single"])
        seeds = ",".join(str(s) for s in range(jobs))
        total = run(["-m", f"seed={seeds}", *common, f"hydra.sweep.dir={tmp}/sweep"])
        done = len([p for p in Path(tmp, "sweep").iterdir() if p.is_dir()])
    per_job = total / jobs
    ratio = single / per_job
    result("sweep_overhead", per_job, single, total_s=total, jobs=jobs, job_dirs=done,
           baseline="one_job_on_its_own")  # fmt: skip
    b.check("sweep_overhead", f"ratio {ratio:.3g} >= {target:g}", ratio >= target)


# ------------------------------------------------------------------------- imagenet scale


def bench_torchvision_resnet18_224(
    b: Bench, budget_s: float = 600.0, budget_gib: float = 8.0
) -> None:
    """torchvision's ResNet-18 at 224x224, all 8 units, sum and unit maps, one image
    (bench/imagenet_scale.py, in its own process for its own peak memory). No baseline can
    run at this size (a dense J of 200,704 dimensions is 300 GiB): the targets are the
    wall time, the peak resident memory, and a method and fractions kind on every map."""
    import json
    from collections import Counter

    script = ROOT / "bench" / "imagenet_scale.py"
    out = None
    with subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    ) as proc:
        for line in proc.stdout:  # one line per map as it finishes
            if line.startswith("JSON "):
                out = json.loads(line[5:])
            else:
                print(line, end="", flush=True)
    if proc.returncode != 0 or out is None:
        raise RuntimeError(f"bench/imagenet_scale.py exited with {proc.returncode}")
    maps = out["maps"]
    methods = Counter(m["method"] for m in maps)
    fractions = Counter(m["fractions"] for m in maps)
    result(
        "torchvision_resnet18_224", out["wall_s"], float("nan"), peak_gib=out["peak_gib"],
        maps=len(maps), methods="|".join(f"{k}x{v}" for k, v in sorted(methods.items())),
        fractions="|".join(f"{k}x{v}" for k, v in sorted(fractions.items())),
        solver="|".join(f"{k}={v}" for k, v in out["solver"].items()), baseline="none_can_run",
    )  # fmt: skip
    named = all(m["fractions"] in ("exact", "estimated") and m["method"] for m in maps)
    b.check("torchvision_resnet18_224", "16 maps, each with a method and fractions",
            len(maps) == 16 and named)  # fmt: skip
    wall, peak = out["wall_s"], out["peak_gib"]
    b.check("torchvision_resnet18_224", f"{wall:.0f} s <= {budget_s:g} s", wall <= budget_s)
    b.check("torchvision_resnet18_224", f"peak {peak:.2f} GiB <= {budget_gib:g} GiB",
            peak <= budget_gib)  # fmt: skip


# ----------------------------------------------------------------------------------- main

BENCHMARKS: dict[str, Callable[[Bench], None]] = {
    "data": bench_data,
    "train_overhead": bench_train_overhead,
    "jacobian_stage1": bench_jacobian_stage1,
    "jacobian_stage3": bench_jacobian_stage3,
    "spectrum": bench_spectrum,
    "exact_counts": bench_exact_counts,
    "resnet56_all_units": bench_resnet56_all_units,
    "sweep_overhead": bench_sweep_overhead,
    "torchvision_resnet18_224": bench_torchvision_resnet18_224,
}
# Run only when named: they take several minutes each.
OPTIONAL: dict[str, Callable[[Bench], None]] = {
    "exact_counts_resnet56": bench_exact_counts_resnet56,
    "gram_route_units_2_4": bench_gram_route_units_2_4,
    "slq_coverage_make_run": bench_slq_coverage_make_run,
}
ALIASES = {"spectrum_top": "spectrum", "spectrum_bottom": "spectrum"}


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (all by default); exit status 1 if any target fails."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = [*BENCHMARKS, *OPTIONAL, *ALIASES]
    parser.add_argument("names", nargs="*", metavar="NAME", help=" | ".join(names))
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {names}")
    torch.set_num_threads(THREADS)
    chosen = dict.fromkeys(ALIASES.get(n, n) for n in (args.names or BENCHMARKS))
    print(machine(), flush=True)
    b = Bench(reps=max(1, args.reps))
    for name in chosen:
        t0 = time.perf_counter()
        try:
            (BENCHMARKS | OPTIONAL)[name](b)
        except Exception as e:  # one broken benchmark must not hide the others
            msg = " ".join(str(e).split())[:300]
            print(f"RESULT {name} error={type(e).__name__}: {msg}", flush=True)
            b.check(name, "ran", False)
        print(f"# {name} took {time.perf_counter() - t0:.1f} s", flush=True)
    for t in b.targets:
        verdict = "SKIP" if t.passed is None else ("PASS" if t.passed else "FAIL")
        print(f"TARGET {t.name} {verdict} {t.text}")
    return 1 if any(t.passed is False for t in b.targets) else 0


if __name__ == "__main__":
    sys.exit(main())
