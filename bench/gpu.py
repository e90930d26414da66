"""GPU check: training throughput, the all-units analysis, dense SVD and exact counts, on CUDA.

    make bench-gpu                          # all four, on the first CUDA device
    python bench/gpu.py train analysis      # a subset
    python bench/gpu.py --smoke --device cpu  # tiny sizes, any machine: checks the script runs

Prints one ``RESULT`` line per measurement, like bench/run.py:

* ``train``: ResNet-56 steps on CIFAR-shaped data (50,000 random uint8 3x32x32 images held
  on the device by ``ResidentLoader``, crop + flip), batch 128, bf16 autocast and
  channels_last: ours (``ClassificationModule`` + ``lightning.Trainer``, precision
  ``bf16-mixed``, as ``trainer=gpu`` trains) against a plain PyTorch loop on the same
  loader; images/s of each after a warm-up.
* ``analysis``: ``analyze_units`` of all 27 units of a ResNet-56 (BN statistics warmed),
  both maps, one image, on the device; every map's fractions must be exact.
* ``svd``: ``svdvals`` of the dense 16,384 x 16,384 J of a first-stage unit on the device
  (float32 and float64) against the CPU (float32, all its cores).
* ``counts``: the exact counts of a first-stage sum map (16x32x32) at c = 1e-3, 1 -+ 1e-3
  on the device, by the reduced route (``ldl_factor``: cuSOLVER's Bunch-Kaufman ``sytrf``
  in float64) against the gram route on the device and against the reduced route on the
  CPU; the counts of all three must be equal.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from run import analysis_net, bare_trainer, machine  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def result(name: str, **fields: object) -> None:
    text = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
    )
    print(f"RESULT {name} {text}", flush=True)


def bench_train(device: torch.device, smoke: bool) -> None:
    import torch.nn.functional as F
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from resnet_dyn.data.resident import ResidentLoader
    from resnet_dyn.models import CifarResNet
    from resnet_dyn.training.module import ClassificationModule

    n, batch, steps, depth = (512, 32, 4, 8) if smoke else (50_000, 128, 200, 56)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

    def loader() -> ResidentLoader:
        return ResidentLoader(x, y, batch_size=batch, mean=mean, std=std, shuffle=True,
                              padding=4, flip=True, seed=0, device=device)  # fmt: skip

    optim = OmegaConf.load(ROOT / "conf" / "optim" / "sgd.yaml")
    cuda = device.type == "cuda"
    root = tempfile.mkdtemp(prefix="bench_gpu_")  # Lightning writes nothing into the repo

    def ours(max_steps: int) -> float:
        torch.manual_seed(0)
        module = ClassificationModule(CifarResNet(depth=depth), optim, batch, 10)
        accelerator = "gpu" if cuda else "cpu"
        trainer = bare_trainer(root, max_steps, accelerator=accelerator, precision="bf16-mixed")
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader())
        sync(device)
        return time.perf_counter() - t0

    def plain(max_steps: int) -> float:
        torch.manual_seed(0)
        net = CifarResNet(depth=depth).to(device)
        if cuda:
            net = net.to(memory_format=torch.channels_last)
        opt = instantiate(optim.optimizer)(
            net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay
        )
        t0, done = time.perf_counter(), 0
        while done < max_steps:
            for xb, yb in loader():
                if cuda:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = F.cross_entropy(net(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                if done == max_steps:
                    break
        sync(device)
        return time.perf_counter() - t0

    warm = 2 if smoke else 20
    ours(warm)
    plain(warm)
    t_ours, t_plain = ours(steps), plain(steps)
    shutil.rmtree(root, ignore_errors=True)
    result("train", ours_images_s=steps * batch / t_ours, plain_images_s=steps * batch / t_plain,
           ratio=t_plain / t_ours, steps=steps, batch=batch, depth=depth)  # fmt: skip


def bench_analysis(device: torch.device, smoke: bool) -> None:
    from collections import Counter

    from resnet_dyn.dynamics import analyze_units

    net, size = analysis_net(depth=8 if smoke else 56).to(device), 12 if smoke else 32
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
    analyze_units(net, image, [0])  # warm-up: CUDA context, cuSOLVER handles
    sync(device)
    t0 = time.perf_counter()
    res = analyze_units(net, image, "all", maps=("sum", "unit"))
    sync(device)
    wall = time.perf_counter() - t0
    methods = Counter(r[m]["method"] for r in res for m in ("sum", "unit"))
    exact = all(r[m]["fractions"] == "exact" for r in res for m in ("sum", "unit"))
    result("analysis", seconds=wall, units=len(res), all_exact=exact,
           methods="|".join(f"{k}x{v}" for k, v in sorted(methods.items())))  # fmt: skip


def bench_svd(device: torch.device, smoke: bool) -> None:
    from resnet_dyn.dynamics import unit_map, unit_states
    from resnet_dyn.dynamics.jacobian import local_jacobian

    size = 8 if smoke else 32
    net = analysis_net(depth=20)
    x = unit_states(net, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)))
    J = local_jacobian(unit_map(net, 1, x[1][0], "sum")).dense()
    times: dict[str, float] = {}
    for name, dev, dtype in (
        ("device_float32", device, torch.float32),
        ("device_float64", device, torch.float64),
        ("cpu_float32", torch.device("cpu"), torch.float32),
    ):
        A = J.to(device=dev, dtype=dtype)
        torch.linalg.svdvals(A[:64, :64])  # warm-up
        sync(dev)
        t = []
        for _ in range(1 if dev.type == "cpu" else 2):
            t0 = time.perf_counter()
            torch.linalg.svdvals(A)
            sync(dev)
            t.append(time.perf_counter() - t0)
        times[name] = statistics.median(t)
    result("svd", n=J.shape[0], **{f"{k}_s": v for k, v in times.items()},
           ratio_cpu_over_device=times["cpu_float32"] / times["device_float32"])  # fmt: skip


def bench_counts(device: torch.device, smoke: bool) -> None:
    from resnet_dyn.dynamics import unit_map, unit_states
    from resnet_dyn.dynamics.inertia import certified_counts

    size = 12 if smoke else 32
    net = analysis_net(depth=8 if smoke else 56)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    thresholds = [1e-3, 1 - 1e-3, 1 + 1e-3]
    times: dict[str, float] = {}
    counts: dict[str, tuple[list[int], list[int]]] = {}  # certified bounds: lo == hi
    for name, dev, route in (
        ("device_reduced", device, "reduced"),
        ("device_gram", device, "gram"),
        ("cpu_reduced", torch.device("cpu"), "reduced"),
    ):
        moved = net.to(dev)
        x = unit_states(moved, image.to(dev))[0][0]
        f = unit_map(moved, 0, x, "sum")
        certified_counts(unit_map(moved, 0, x, "sum"), thresholds[:1], route=route)  # warm-up
        sync(dev)
        t0 = time.perf_counter()
        res = certified_counts(f, thresholds, route=route)
        counts[name] = (res.lo, res.hi)
        sync(dev)
        times[name] = time.perf_counter() - t0
    agree = len({tuple(c[0] + c[1]) for c in counts.values()}) == 1
    result("counts", counts=counts["device_reduced"], all_equal=agree,
           **{f"{k}_s": v for k, v in times.items()},
           ratio_gram_over_reduced=times["device_gram"] / times["device_reduced"],
           ratio_cpu_over_device=times["cpu_reduced"] / times["device_reduced"])  # fmt: skip
    if not agree:
        raise AssertionError(f"counts differ between routes and devices: {counts}")


BENCHMARKS = {
    "train": bench_train,
    "analysis": bench_analysis,
    "svd": bench_svd,
    "counts": bench_counts,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=" | ".join(BENCHMARKS))
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script runs")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device here (bench/gpu.py --smoke --device cpu checks the script)")
        return 2
    print(machine(), flush=True)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}", flush=True)
    failed = False
    for name in args.names or BENCHMARKS:
        t0 = time.perf_counter()
        try:
            BENCHMARKS[name](device, args.smoke)
        except Exception as e:  # one broken measurement must not hide the others
            print(f"RESULT {name} error={type(e).__name__}: {' '.join(str(e).split())[:300]}")
            failed = True
        print(f"# {name} took {time.perf_counter() - t0:.1f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
