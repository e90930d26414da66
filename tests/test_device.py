"""Device discipline of the spectral analysis: every tensor it creates lives on the device of
the model and images it was given. Without a GPU, a ``TorchFunctionMode`` watches the
factory calls made from this package's code: a call that names another device, or none
(the process default, which is the CPU even when the model is on a GPU), or draws from a
generator on another device, is an error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import resnet_dyn
from resnet_dyn.dynamics import analyze_stages, analyze_units
from resnet_dyn.models import CifarResNet

PACKAGE = str(Path(resnet_dyn.__file__).parent)
FACTORIES = {
    torch.zeros,
    torch.ones,
    torch.empty,
    torch.full,
    torch.arange,
    torch.randn,
    torch.rand,
    torch.randint,
    torch.randperm,
    torch.eye,
    torch.linspace,
    torch.tensor,
    torch.as_tensor,
}


class DeviceGuard(TorchFunctionMode):
    """Records factory calls from ``resnet_dyn`` code whose device is not ``device``."""

    def __init__(self, device: torch.device | str) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.violations: list[str] = []

    def _same(self, dev: torch.device | str | None) -> bool:
        if dev is None:
            return False
        dev = torch.device(dev)
        return dev.type == self.device.type and (dev.index or 0) == (self.device.index or 0)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if func in FACTORIES:
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(PACKAGE):
                where = f"{caller.f_code.co_filename}:{caller.f_lineno} {func.__name__}"
                from_tensor = func in (torch.tensor, torch.as_tensor) and isinstance(
                    args[0] if args else kwargs.get("data"), torch.Tensor
                )
                if not from_tensor and not self._same(kwargs.get("device")):
                    self.violations.append(f"{where}(device={kwargs.get('device')})")
                gen = kwargs.get("generator")
                if gen is not None and not self._same(gen.device):
                    self.violations.append(f"{where}(generator on {gen.device})")
        return func(*args, **kwargs)


def small_net() -> CifarResNet:
    torch.manual_seed(0)
    net = CifarResNet(depth=8, input_shape=(3, 8, 8))
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 3, 8, 8))
    return net.eval()


@pytest.mark.parametrize(
    "options",
    [
        {"method": "auto", "dense_max": 256},  # counts, shift-invert (nested-dissection LU)
        {"method": "slq", "top_k": 2},  # quadrature, block Lanczos on the Gram operator
        {"method": "auto"},  # all singular values from the colored J
    ],
)
def test_spectral_analysis_creates_tensors_only_on_the_models_device(options: dict) -> None:
    net, images = small_net(), torch.randn(1, 3, 8, 8)
    with DeviceGuard("cpu") as guard:
        res = analyze_units(net, images, maps=("sum", "unit"), **options)
        analyze_stages(net, images, method="lanczos")  # block Lanczos alone
    assert guard.violations == []
    assert all(r["sum"]["sigma_max"] > 0 for r in res)


def test_device_guard_catches_a_factory_call_on_another_device() -> None:
    """The guard fails on what a GPU run would fail on: a tensor made on the default device
    or on another one, by code of this package."""
    code = "torch.zeros(3)\ntorch.zeros(3, device='meta')\ntorch.zeros(3, device='cpu')\n"
    with DeviceGuard("cpu") as guard:
        exec(compile(code, f"{PACKAGE}/dynamics/example.py", "exec"), {"torch": torch})
    assert len(guard.violations) == 2
    assert "example.py:1 zeros(device=None)" in guard.violations[0]
    assert "example.py:2 zeros(device=meta)" in guard.violations[1]


def test_the_other_analyses_create_tensors_only_on_the_models_device() -> None:
    """The other analyses under the same guard: perturbations (FGSM and PGD, projected on
    unit 0's directions), the identity magnitudes (their sums stay on the model's device),
    and the transient analyses of a tied dense ResNet (trajectories, class statistics,
    convergence, fixed points, the continuous-time residuals, noise, pruning)."""
    from resnet_dyn.dynamics.identity import identity_magnitudes
    from resnet_dyn.dynamics.perturbation import perturbation_analysis
    from resnet_dyn.dynamics.transient import (
        class_statistics,
        continuous_trajectory,
        convergence,
        fixed_points,
        last_layer_converged,
        noise_evolution,
        trajectory,
    )
    from resnet_dyn.models import DenseResNet

    net, images = small_net(), torch.rand(4, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    dense = DenseResNet(depth=4, input_shape=(2,), width=3, tied=True).eval()
    x2, y2 = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1])
    with DeviceGuard("cpu") as guard:
        for attack in ("fgsm", "pgd_l2"):
            perturbation_analysis(
                net, images, labels, [0.5] * 3, [0.25] * 3, attack=attack, steps=2,
                project_units=[0],
            )  # fmt: skip
        magnitudes = identity_magnitudes(net, [(images, labels), (images, labels)])
        traj = trajectory(dense, x2)
        class_statistics(traj.residuals, y2)
        convergence(traj.residuals)
        fixed_points(dense, x2, max_layers=50)
        continuous_trajectory(dense, x2)
        noise_evolution(dense, x2, y2, [0.1, 0.5])
        last_layer_converged(dense, x2)
    assert guard.violations == []
    assert len(magnitudes["abs"]) == len(net.units) and magnitudes["abs_mean"] > 0
