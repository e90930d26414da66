"""torchvision's ResNet-18 at ImageNet scale: all 8 units, sum and unit maps, one 224x224 image.

    python bench/imagenet_scale.py            # one line per map, then a JSON summary line
    python bench/run.py torchvision_resnet18_224   # the same, with its targets

The network is ``model=torchvision_resnet model.arch=resnet18`` (ImageNet stem, 1000 classes)
at torchvision's initialisation, its BatchNorm statistics warmed on crops of scikit-learn's
two sample photographs (torchvision's pre-trained weights cannot be downloaded here); the
image analysed is a 224x224 centre crop of one of them. Every map goes through
``map_spectrum`` with ``method="auto"`` and the solver settings in ``SOLVER``: exact where a
count fits ``count_max_gflop`` (at 224x224 none does; the line says why), SLQ estimates with
their error bars elsewhere, sigma_max and sigma_min by block Lanczos. Run as its own process
by ``bench/run.py`` so that its peak resident memory is its own.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import torch
from torch.nn import functional as F

# ImageNet-scale settings (analysis.solver.*): 8 probes x 40 Lanczos steps and 128 Gram
# products for each extreme keep a map of 200,704 dimensions under a minute on 2 cores;
# with 64, sigma_max of the unit maps stopped short of its residual test (2.8e-4 against
# 1.4e-5 on unit 7), although its value had 9 digits right.
SOLVER = {"probes": 8, "steps": 40, "max_matvecs": 128}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photographs(
    size: int = 224, crops: int = 16, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised random crops (for BatchNorm statistics) and one centre crop (analysed) of
    scikit-learn's sample photographs, resized so that their short side is ``size * 8 / 7``."""
    from sklearn.datasets import load_sample_images

    gen = torch.Generator().manual_seed(seed)
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    pictures = []
    for img in load_sample_images().images:
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255
        short = size * 8 // 7
        scale = short / min(x.shape[-2:])
        x = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True)[0]
        pictures.append((x - mean) / std)
    batch = []
    for i in range(crops):
        x = pictures[i % len(pictures)]
        top = int(torch.randint(0, x.shape[1] - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, x.shape[2] - size + 1, (1,), generator=gen))
        crop = x[:, top : top + size, left : left + size]
        batch.append(crop.flip(-1) if i % 2 else crop)
    x = pictures[0]
    top, left = (x.shape[1] - size) // 2, (x.shape[2] - size) // 2
    return torch.stack(batch), x[None, :, top : top + size, left : left + size]


def main() -> dict:
    from resnet_dyn.dynamics import map_spectrum, unit_map, unit_states
    from resnet_dyn.dynamics.inertia import countable
    from resnet_dyn.models import TorchvisionResNet

    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = TorchvisionResNet("resnet18", (3, 224, 224), 1000)
    warm, image = photographs()
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(warm)
    net.eval()
    start = time.perf_counter()
    states = unit_states(net, image)
    maps = []
    for k in range(len(net.units)):
        for kind in ("sum", "unit"):
            t0 = time.perf_counter()
            f = unit_map(net, k, states[k][0], kind)
            stats = map_spectrum(f, **SOLVER).stats
            seconds = time.perf_counter() - t0
            why = countable(f)[1] or "counted"
            row = {
                "unit": k, "map": kind, "dim_in": f.dim_in, "dim_out": f.dim_out,
                "method": stats["method"], "fractions": stats["fractions"],
                "frac_one": stats["frac_one"], "frac_one_err": stats.get("frac_one_err", 0.0),
                "frac_gt_one": stats["frac_gt_one"],
                "frac_gt_one_err": stats.get("frac_gt_one_err", 0.0),
                "sigma_max": stats["sigma_max"], "sigma_min": stats["sigma_min"],
                "sigma_min_bound": stats["sigma_min_bound"], "seconds": seconds,
                "no_count": why,
            }  # fmt: skip
            maps.append(row)
            print(
                f"unit {k} {kind}: {f.dim_in}->{f.dim_out} {row['method']} ({row['fractions']}) "
                f"frac_one {row['frac_one']:.3f} +- {row['frac_one_err']:.3f}, frac_gt_one "
                f"{row['frac_gt_one']:.3f} +- {row['frac_gt_one_err']:.3f}, sigma_max "
                f"{row['sigma_max']:.4g}, sigma_min {row['sigma_min']:.4g} (bound "
                f"{row['sigma_min_bound']:.4g}), {seconds:.1f} s; count: {why}",
                flush=True,
            )
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"wall_s": wall, "peak_gib": peak, "maps": maps, "solver": SOLVER}


if __name__ == "__main__":
    print("JSON " + json.dumps(main()), flush=True)
    sys.exit(0)
